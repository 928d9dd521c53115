//! Property tests of issue 11 ("bad input never stops the run or issues
//! anything wrong"), part 4: whatever metadata and purchases Stripe holds,
//! `Catalog::resolve` and `plan::plan` never panic, and every grant either
//! plans by the rules or is skipped with a reason naming a Stripe object of
//! the input. These check the rules over
//! generated input (metadata of any shape and size, absurd quantities and
//! timestamps, statuses this version does not know, hostile customer text).
//! `catalog/tests.rs` pins the rules by example.
//!
//! Case counts: each property runs the number of cases given at its block
//! (`CATALOG_CASES`, `PLAN_CASES`), or `PROPTEST_CASES` (proptest's own
//! variable) when that is set, e.g. `PROPTEST_CASES=5000 cargo test --lib
//! properties`. Failing cases are printed with their seed and not persisted
//! to `proptest-regressions/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::catalog::*;
use crate::domain::{
    CustomerInfo, ExpirationStart, GrantFact, GrantKey, License, LicenseStatus, Licensing, Misconfiguration,
    OneTimeLineFact, PaymentReversal, ReversalKind, SubscriptionItemFact, SubscriptionStatus, Timestamp,
};
use crate::plan::{Facts, Plan, PlanConfig};
use crate::tests::fixtures::{apply, day};

/// Cases per catalog property (each case is microseconds).
const CATALOG_CASES: u32 = 512;
/// Cases per planner property.
const PLAN_CASES: u32 = 256;

const KEYS: [&str; 5] = [PRODUCT_ID, IP_LIMIT, HWID_LIMIT, EXPIRATION_DAYS, EXPIRATION_START];

// ---- hostile metadata ---------------------------------------------------------

/// ASCII and Unicode white space: what `str::trim` drops.
fn padding() -> impl Strategy<Value = String> {
    "[ \t\r\n\u{a0}\u{2003}\u{3000}]{0,3}"
}

/// Padding that also holds zero-width characters, which `str::trim` keeps.
fn odd_padding() -> impl Strategy<Value = String> {
    "[ \t\r\n\u{a0}\u{feff}\u{200b}]{0,3}"
}

/// A number as people type one: signs, leading zeros, decimals, exponents.
fn typed_number() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", "", "", "+", "-", "\u{2212}"]),
        "0{0,3}",
        "[0-9]{1,12}",
        prop::option::of("[.,][0-9]{0,3}"),
        prop::option::of("[eE][+-]?[0-9]{1,3}"),
    )
        .prop_map(|(sign, zeros, digits, fraction, exponent)| {
            format!(
                "{sign}{zeros}{digits}{}{}",
                fraction.unwrap_or_default(),
                exponent.unwrap_or_default()
            )
        })
}

/// Numbers at and past every limit, and digits that are not ASCII.
fn extreme_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "00",
            "-0",
            "+0",
            "1",
            "2147483647",
            "0002147483647",
            "2147483648",
            "4294967296",
            "9223372036854775808",
            "18446744073709551616",
            "99999999999999999999999999999",
            "1e3",
            "0x10",
            "1_000",
            "1 000",
            "\u{663}",
            "\u{ff13}",
            "\u{bd}",
            "1.0",
            "30.",
            "NaN",
            "inf",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Ids that follow the grammar, and ones that almost do.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9][A-Za-z0-9_.:-]{0,12}",
        1 => "[_.:-][a-z]{0,4}",
        1 => "[a-z]{1,3}[ /!\u{e9}\u{0}][a-z]{0,3}",
        1 => ".{1,6}",
        1 => Just("a".repeat(128)),
        1 => Just("b".repeat(129)),
    ]
}

/// A comma-separated list with empty elements, padding and repeated ids;
/// `at_least_one`: some element is an id.
fn id_list(element: BoxedStrategy<String>, at_least_one: bool) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(element, 1..4),
        prop::collection::vec((any::<u8>(), padding(), padding()), 0..6),
        prop::sample::select(vec![",", ", ", " ,", ",,", " , "]),
    )
        .prop_map(move |(ids, mut picks, separator)| {
            if at_least_one {
                picks.insert(0, (0, String::new(), String::new()));
            }
            picks
                .into_iter()
                .map(|(i, before, after)| match ids.get(usize::from(i) % (ids.len() + 1)) {
                    Some(id) => format!("{before}{id}{after}"),
                    // Past the end: an empty element.
                    None => before,
                })
                .collect::<Vec<_>>()
                .join(separator)
        })
}

fn start_word() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "creation",
        "CREATION",
        "Creation",
        "activation",
        "ACTIVATION",
        "aCtIvAtIoN",
        "CREAT\u{130}ON",
        "creat\u{131}on",
        "activation\u{0}",
        "purchase",
        "CREATION,ACTIVATION",
    ])
    .prop_map(str::to_owned)
}

/// Long runs of one character (Stripe caps values at 500 characters; the
/// catalog must not rely on it).
fn huge() -> impl Strategy<Value = String> {
    (
        1_000usize..12_000,
        prop::sample::select(vec!['9', 'a', ' ', ',', '\u{e9}', '0']),
    )
        .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect())
}

/// Any value, valid or not, padded.
fn hostile_value() -> BoxedStrategy<String> {
    let core = prop_oneof![
        3 => typed_number(),
        2 => extreme_number(),
        2 => id_list(id_like().boxed(), false),
        1 => start_word(),
        1 => any::<String>(),
        1 => ".{0,40}",
        1 => "[0-9]{0,2}[\u{0}-\u{1f}\u{7f}-\u{9f}\u{200f}\u{202e}]{1,3}[0-9]{0,2}",
        1 => huge(),
        1 => Just(String::new()),
    ];
    (odd_padding(), core, odd_padding())
        .prop_map(|(before, value, after)| format!("{before}{value}{after}"))
        .boxed()
}

/// A value the rules accept for `key`, padded.
fn good_value(key: &str) -> BoxedStrategy<String> {
    let core = match key {
        PRODUCT_ID => id_list("[A-Za-z0-9][A-Za-z0-9_.:-]{0,10}".boxed(), true).boxed(),
        IP_LIMIT | HWID_LIMIT => ("0{0,3}", prop_oneof![4 => 0i32..10, 1 => 0i32..=i32::MAX])
            .prop_map(|(zeros, n)| format!("{zeros}{n}"))
            .boxed(),
        EXPIRATION_DAYS => ("0{0,2}", prop_oneof![4 => 1i32..400, 1 => 1i32..=i32::MAX])
            .prop_map(|(zeros, n)| format!("{zeros}{n}"))
            .boxed(),
        EXPIRATION_START => start_word().boxed(),
        _ => ".{0,20}".boxed(),
    };
    (padding(), core, padding())
        .prop_map(|(before, value, after)| format!("{before}{value}{after}"))
        .boxed()
}

/// The licensing keys, near misses of them, and anything else.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "Product_ID",
            "PRODUCT_ID",
            "product_id ",
            " product_id",
            "product-id",
            "productid",
            "ip_limits",
            "hwid",
            "expiration-days",
            "expiration_start\u{0}",
            "product_id\u{200b}",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,40}",
        1 => (1usize..600).prop_map(|n| "k".repeat(n)),
    ]
}

/// Mostly keys no rule reads.
fn noise_key() -> impl Strategy<Value = String> {
    prop_oneof![1 => key(), 2 => ".{0,40}"]
}

/// One metadata entry: mostly a value that fits its key, else anything.
fn entry() -> impl Strategy<Value = (String, String)> {
    key().prop_flat_map(|key| {
        let value = prop_oneof![2 => good_value(&key), 1 => hostile_value()];
        (Just(key), value)
    })
}

/// Metadata the rules accept (padding, leading zeros and all), with a
/// `product_id` when `licensed`.
fn good_metadata(licensed: bool) -> impl Strategy<Value = BTreeMap<String, String>> {
    let entries = prop::collection::vec(
        prop::sample::select(KEYS.to_vec()).prop_flat_map(|key| (Just(key.to_owned()), good_value(key))),
        0..5,
    );
    (entries, good_value(PRODUCT_ID)).prop_map(move |(entries, product_id)| {
        let mut metadata: BTreeMap<String, String> = entries.into_iter().collect();
        if licensed {
            metadata.insert(PRODUCT_ID.to_owned(), product_id);
        }
        metadata
    })
}

/// About 500 keys no rule reads, with unicode and control characters in
/// keys and values (built from a seed: a generated map of 500 entries costs
/// seconds per case).
fn many_keys() -> impl Strategy<Value = BTreeMap<String, String>> {
    const PIECES: [&str; 8] = ["a", "\u{e9}", "\u{0}", "\u{1f980}", " ", "9", "\r\n", "\u{202e}"];
    (any::<u64>(), 400usize..=520).prop_map(|(seed, n)| {
        (0..n)
            .map(|i| {
                let piece = |k: usize| PIECES[(seed as usize).wrapping_add(i * 7 + k) % PIECES.len()];
                (
                    format!("k{i}{}", piece(0)),
                    format!("{}{}{}", piece(1), piece(2), piece(3)).repeat(i % 5),
                )
            })
            .collect()
    })
}

/// Metadata of any shape: empty, a few keys, or 500 keys.
fn metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop_oneof![
        8 => prop::collection::btree_map(noise_key(), hostile_value(), 0..4)
            .prop_flat_map(|noise| (Just(noise), prop::collection::vec(entry(), 0..6)))
            .prop_map(|(mut map, entries)| {
                map.extend(entries);
                map
            }),
        1 => (many_keys(), prop::collection::vec(entry(), 0..6)).prop_map(|(mut map, entries)| {
            map.extend(entries);
            map
        }),
    ]
}

/// Product names as customers see them: blank, control characters, 10k characters.
fn product_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z][A-Za-z ]{0,20}",
        1 => Just(String::new()),
        1 => "[ \t]{1,3}",
        1 => ".{0,30}",
        1 => "[A-Za-z]{0,3}[\u{0}\r\n\u{202e}\u{200f}][A-Za-z]{0,3}",
        1 => Just("N".repeat(10_000)),
    ]
}

prop_compose! {
    /// A product and one price of it, each with arbitrary metadata.
    fn product_and_price()(
        product_id in "prod_[A-Za-z0-9]{1,14}",
        price_id in "price_[A-Za-z0-9]{1,14}",
        name in product_name(),
        product_meta in prop_oneof![1 => good_metadata(true).boxed(), 2 => metadata().boxed()],
        price_meta in prop_oneof![
            1 => Just(BTreeMap::new()).boxed(),
            1 => good_metadata(false).boxed(),
            2 => metadata().boxed(),
        ],
        recurring in any::<bool>(),
        active in any::<(bool, bool)>(),
    ) -> (ProductRecord, PriceRecord) {
        (
            ProductRecord { id: product_id.clone(), name, active: active.0, metadata: product_meta },
            PriceRecord { id: price_id, product: product_id, active: active.1, recurring, metadata: price_meta, created: 0 },
        )
    }
}

// ---- the rules, restated independently of catalog.rs --------------------------

/// The value a key takes for a price, with the record it is read from: the
/// price's own unless blank, else the product's.
fn effective<'a>(product: &'a ProductRecord, price: &'a PriceRecord, key: &str) -> Option<(&'a str, &'a str)> {
    let read = |metadata: &'a BTreeMap<String, String>| metadata.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    read(&price.metadata)
        .map(|v| (v, price.id.as_str()))
        .or_else(|| read(&product.metadata).map(|v| (v, product.id.as_str())))
}

/// `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`, byte by byte.
fn grammar(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(b))
}

/// A whole number 0..=i32::MAX in ASCII digits (leading zeros allowed),
/// without `str::parse`.
fn whole(text: &str) -> Option<i32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = text.trim_start_matches('0');
    if digits.len() > 10 {
        return None;
    }
    let n = digits.bytes().fold(0i64, |n, b| n * 10 + i64::from(b - b'0'));
    i32::try_from(n).ok()
}

/// The ids of a `product_id` list, or the text the error must quote.
fn ids_of(text: &str) -> Result<Vec<String>, String> {
    let mut ids: Vec<String> = Vec::new();
    for id in text.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        if !grammar(id) {
            return Err(id.to_owned());
        }
        if !ids.iter().any(|seen| seen == id) {
            ids.push(id.to_owned());
        }
    }
    if ids.is_empty() { Err(text.to_owned()) } else { Ok(ids) }
}

fn start_of(text: &str) -> Option<ExpirationStart> {
    match text.to_ascii_lowercase().as_str() {
        "creation" => Some(ExpirationStart::Creation),
        "activation" => Some(ExpirationStart::Activation),
        _ => None,
    }
}

/// `(key, record, text the reason must quote)` for every effective value the
/// rules reject.
fn rejected<'a>(product: &'a ProductRecord, price: &'a PriceRecord) -> Vec<(&'static str, &'a str, String)> {
    let value = |key| effective(product, price, key);
    let mut wrong = Vec::new();
    if let Some((text, from)) = value(PRODUCT_ID)
        && let Err(quoted) = ids_of(text)
    {
        wrong.push((PRODUCT_ID, from, quoted));
    }
    for key in [IP_LIMIT, HWID_LIMIT] {
        if let Some((text, from)) = value(key)
            && whole(text).is_none()
        {
            wrong.push((key, from, text.to_owned()));
        }
    }
    if !price.recurring {
        let days = value(EXPIRATION_DAYS);
        if let Some((text, from)) = days
            && whole(text).is_none_or(|n| n < 1)
        {
            wrong.push((EXPIRATION_DAYS, from, text.to_owned()));
        }
        if let Some((text, from)) = value(EXPIRATION_START) {
            if start_of(text).is_none() {
                wrong.push((EXPIRATION_START, from, text.to_owned()));
            } else if days.is_none() {
                wrong.push((EXPIRATION_START, from, EXPIRATION_DAYS.to_owned()));
            }
        }
    }
    wrong
}

/// What `resolve` must say of a price whose product is in the catalog.
fn check_resolution(product: &ProductRecord, price: &PriceRecord, got: &Licensing) -> Result<(), TestCaseError> {
    let value = |key| effective(product, price, key);
    let Some((ids_text, _)) = value(PRODUCT_ID) else {
        prop_assert_eq!(got, &Licensing::NotLicensed, "no product_id, so not licensed");
        return Ok(());
    };
    let wrong = rejected(product, price);
    match got {
        Licensing::NotLicensed => {
            prop_assert!(false, "not licensed although product_id is {:?}", ids_text);
        }
        Licensing::Misconfigured(bad) => {
            prop_assert!(
                !wrong.is_empty(),
                "misconfigured although every value is valid: {:?}",
                bad
            );
            prop_assert_eq!(&bad.product, &product.id, "names the price's product");
            let named = wrong
                .iter()
                .find(|(key, from, _)| bad.key == *key && bad.stripe_object == *from);
            prop_assert!(
                named.is_some(),
                "{:?} names no rejected value; rejected: {:?}",
                bad,
                wrong
            );
            let (_, _, quoted) = named.unwrap();
            prop_assert!(
                bad.why.contains(quoted.as_str()),
                "the why quotes {:?}: {}",
                quoted,
                bad.why
            );
        }
        Licensing::Licensed { terms, warnings } => {
            prop_assert!(wrong.is_empty(), "licensed although {:?} is rejected", wrong);
            let ids = ids_of(ids_text).unwrap();
            prop_assert_eq!(&terms.product_ids, &ids, "trimmed, de-duplicated, in order");
            for id in &terms.product_ids {
                prop_assert!(is_valid_id(id) && id.trim() == id, "{:?}", id);
            }
            prop_assert_eq!(terms.ip_limit, value(IP_LIMIT).and_then(|(t, _)| whole(t)));
            prop_assert_eq!(terms.hwid_limit, value(HWID_LIMIT).and_then(|(t, _)| whole(t)));
            prop_assert!(terms.ip_limit.unwrap_or(0) >= 0 && terms.hwid_limit.unwrap_or(0) >= 0);
            let days = value(EXPIRATION_DAYS);
            let start = value(EXPIRATION_START);
            if price.recurring {
                prop_assert_eq!((terms.expiration_days, terms.expiration_start), (None, None));
                let present: Vec<&str> = [(EXPIRATION_DAYS, days), (EXPIRATION_START, start)]
                    .into_iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| k)
                    .collect();
                prop_assert_eq!(warnings.len(), present.len(), "{:?}", warnings);
                for (warning, key) in warnings.iter().zip(present) {
                    prop_assert!(warning.contains(key) && warning.contains(&price.id), "{}", warning);
                }
            } else {
                prop_assert!(warnings.is_empty(), "{:?}", warnings);
                prop_assert_eq!(terms.expiration_days, days.and_then(|(t, _)| whole(t)));
                prop_assert!(terms.expiration_days.is_none_or(|d| d >= 1));
                let expected_start = match (start, terms.expiration_days) {
                    (_, None) => None,
                    (None, Some(_)) => Some(ExpirationStart::Creation),
                    (Some((t, _)), Some(_)) => start_of(t),
                };
                prop_assert_eq!(terms.expiration_start, expected_start);
            }
        }
    }
    Ok(())
}

/// The product's metadata with the price's non-blank values on top.
fn merged(product: &ProductRecord, price: &PriceRecord) -> BTreeMap<String, String> {
    let mut metadata = product.metadata.clone();
    for (key, value) in &price.metadata {
        if !value.trim().is_empty() {
            metadata.insert(key.clone(), value.clone());
        }
    }
    metadata
}

/// A `Licensing` without the names of the records (what a move of metadata
/// between price and product may change).
fn anonymous(licensing: Licensing) -> Licensing {
    match licensing {
        Licensing::Licensed { terms, warnings } => Licensing::Licensed {
            terms,
            warnings: vec![String::new(); warnings.len()],
        },
        Licensing::Misconfigured(bad) => Licensing::Misconfigured(Misconfiguration {
            stripe_object: String::new(),
            ..bad
        }),
        other => other,
    }
}

proptest! {
    #![proptest_config(crate::tests::proptest_config(CATALOG_CASES))]

    /// Never a panic; `NotLicensed` exactly when no `product_id` is set;
    /// `Misconfigured` names the record and key of a value the rules reject
    /// and quotes it; `Licensed` terms follow every rule of §2.
    #[test]
    fn any_metadata_resolves_by_the_rules((product, price) in product_and_price()) {
        let catalog = Catalog::new([product.clone()], [price.clone()]);
        let got = catalog.resolve(&price.id, "prod_reported");
        check_resolution(&product, &price, &got)?;
    }

    /// Price metadata overrides product metadata key by key: the same keys
    /// all on the product give the same terms (or the same complaint).
    #[test]
    fn price_metadata_overrides_product_metadata_key_by_key((product, price) in product_and_price()) {
        let split = Catalog::new([product.clone()], [price.clone()]).resolve(&price.id, &product.id);
        let all_on_product = ProductRecord { metadata: merged(&product, &price), ..product.clone() };
        let bare_price = PriceRecord { metadata: BTreeMap::new(), ..price.clone() };
        let joined = Catalog::new([all_on_product], [bare_price]).resolve(&price.id, &product.id);
        prop_assert_eq!(anonymous(split), anonymous(joined));
    }

    /// Keys other than the five of §2 (near misses included) change nothing.
    #[test]
    fn unknown_metadata_keys_change_nothing(
        (product, price) in product_and_price(),
        extra_product in prop::collection::btree_map(key(), hostile_value(), 0..20),
        extra_price in prop::collection::btree_map(key(), hostile_value(), 0..20),
    ) {
        let before = Catalog::new([product.clone()], [price.clone()]).resolve(&price.id, &product.id);
        let mut noisy_product = product.clone();
        let mut noisy_price = price.clone();
        for (extra, record) in [(extra_product, &mut noisy_product.metadata), (extra_price, &mut noisy_price.metadata)] {
            for (k, v) in extra {
                if !KEYS.contains(&k.as_str()) {
                    record.insert(k, v);
                }
            }
        }
        let after = Catalog::new([noisy_product], [noisy_price]).resolve(&price.id, &product.id);
        prop_assert_eq!(before, after);
    }

    /// `is_valid_id` is the grammar `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`.
    #[test]
    fn is_valid_id_is_the_id_grammar(id in prop_oneof![id_like(), any::<String>(), huge()]) {
        prop_assert_eq!(is_valid_id(&id), grammar(&id), "{:?}", id);
    }

    /// Looking up any price in any catalog (duplicate ids, prices of missing
    /// products, ids that are not there) never panics: a missing price or
    /// product is `Misconfigured` naming it with key `price`/`product`, the
    /// last record of an id wins, and everything else resolves by the rules.
    #[test]
    fn any_lookup_in_any_catalog_is_answered(
        records in prop::collection::vec(
            (0u8..4, 0u8..5, product_name(), metadata(), metadata(), any::<bool>(), 0u8..6),
            0..6,
        ),
        asked_price in 0u8..7,
        reported in ".{0,12}",
    ) {
        let mut products = Vec::new();
        let mut prices = Vec::new();
        for (product_no, owner_no, name, product_meta, price_meta, recurring, price_no) in records {
            // prod_4 is never created: its prices belong to a missing product.
            if product_no < 4 {
                products.push(ProductRecord {
                    id: format!("prod_{product_no}"),
                    name,
                    active: true,
                    metadata: product_meta,
                });
            }
            prices.push(PriceRecord {
                id: format!("price_{price_no}"),
                product: format!("prod_{owner_no}"),
                active: true,
                recurring,
                metadata: price_meta,
                created: 0,
            });
        }
        let catalog = Catalog::new(products.clone(), prices.clone());
        let price_id = format!("price_{asked_price}");
        let got = catalog.resolve(&price_id, &reported);
        let price = prices.iter().rev().find(|p| p.id == price_id);
        let product = price.and_then(|price| products.iter().rev().find(|p| p.id == price.product));
        match (price, product) {
            (None, _) => {
                let Licensing::Misconfigured(bad) = got else {
                    return Err(TestCaseError::fail(format!("unknown price: {got:?}")));
                };
                prop_assert_eq!((bad.stripe_object.as_str(), bad.key.as_str()), (price_id.as_str(), "price"));
                prop_assert_eq!(&bad.product, &reported);
            }
            (Some(price), None) => {
                let Licensing::Misconfigured(bad) = got else {
                    return Err(TestCaseError::fail(format!("unknown product: {got:?}")));
                };
                prop_assert_eq!((bad.stripe_object.as_str(), bad.key.as_str()), (price.product.as_str(), "product"));
                prop_assert!(bad.why.contains(&price.id), "{}", bad.why);
            }
            (Some(price), Some(product)) => check_resolution(product, price, &got)?,
        }
    }
}

// ---- the planner over hostile facts ---------------------------------------------
//
// `plan/tests/properties.rs` checks idempotence over well-formed states of
// the fixture catalog; these feed arbitrary catalogs and facts with absurd
// quantities, timestamps at chrono's limits, unknown statuses and hostile
// customer text.

/// The catalog holds `price_0..=price_5` of products `prod_0..=prod_3`
/// (or of `prod_4`, which it does not hold); grants also name `price_6`,
/// which it does not hold either.
const PRICES: u8 = 7;

fn catalog() -> impl Strategy<Value = Catalog> {
    let product = (
        product_name(),
        prop_oneof![
            3 => good_metadata(true).boxed(),
            1 => good_metadata(false).boxed(),
            1 => metadata().boxed(),
        ],
    );
    let price = (
        prop_oneof![8 => 0u8..4, 1 => Just(4u8)],
        any::<bool>(),
        prop_oneof![
            3 => Just(BTreeMap::new()).boxed(),
            1 => good_metadata(false).boxed(),
            1 => metadata().boxed(),
        ],
    );
    (prop::collection::vec(product, 4), prop::collection::vec(price, 6)).prop_map(|(products, prices)| {
        Catalog::new(
            products
                .into_iter()
                .enumerate()
                .map(|(n, (name, metadata))| ProductRecord {
                    id: format!("prod_{n}"),
                    name,
                    active: true,
                    metadata,
                }),
            prices
                .into_iter()
                .enumerate()
                .map(|(n, (owner, recurring, metadata))| PriceRecord {
                    id: format!("price_{n}"),
                    product: format!("prod_{owner}"),
                    active: n % 2 == 0,
                    recurring,
                    metadata,
                    created: 0,
                }),
        )
    })
}

/// A price of the catalog, or now and then one it does not hold.
fn price_no() -> impl Strategy<Value = u8> {
    prop_oneof![8 => 0..PRICES - 1, 1 => Just(PRICES - 1)]
}

/// Around the fixtures' day 0, or anywhere chrono can go, in whole seconds
/// as Stripe sends them (chrono's own last instant has nanoseconds no
/// Stripe timestamp can carry).
fn instant() -> impl Strategy<Value = Timestamp> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    prop_oneof![
        6 => (-400i64..400).prop_map(day),
        1 => prop::sample::select(vec![
            DateTime::from_timestamp(min, 0).unwrap(),
            DateTime::from_timestamp(max, 0).unwrap(),
            DateTime::<Utc>::UNIX_EPOCH,
            DateTime::from_timestamp(-1, 0).unwrap(),
            DateTime::from_timestamp(253_402_300_799, 0).unwrap(),
            DateTime::from_timestamp(-62_135_596_800, 0).unwrap(),
        ]),
        1 => (min..=max).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
    ]
}

/// Quantities as Stripe's `u64` reaches the planner (saturated into `i64`)
/// and past it.
fn quantity() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 1i64..5,
        2 => prop::sample::select(vec![
            0,
            -1,
            i64::MIN,
            i64::MAX,
            i64::from(i32::MAX),
            i64::from(i32::MAX) + 1,
            i64::from(u32::MAX),
            1 << 40,
            1 << 30,
        ]),
        1 => any::<i64>(),
    ]
}

fn status() -> impl Strategy<Value = SubscriptionStatus> {
    use SubscriptionStatus as S;
    prop_oneof![
        6 => prop::sample::select(vec![
            S::Incomplete,
            S::IncompleteExpired,
            S::Trialing,
            S::Active,
            S::PastDue,
            S::Canceled,
            S::Unpaid,
            S::Paused,
        ]),
        2 => prop_oneof![
            prop::sample::select(vec!["on_hold", "", "ACTIVE", "active ", "past-due", "\u{0}"]).prop_map(str::to_owned),
            ".{0,20}",
        ]
        .prop_map(|s| SubscriptionStatus::parse(&s)),
    ]
}

/// Customer text with CR/LF, NUL, bidi marks, emoji, or blank.
fn customer_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        3 => "[a-z]{1,8}@example\\.test",
        1 => "[a-z]{1,3}[\r\n\u{0}\u{202e}\u{200f}\u{1f980}][a-z@. ]{0,8}",
        1 => "\u{fc}[a-z]{1,4}@\u{e9}xample\\.test\r\nBcc: [a-z]{1,4}@evil\\.test",
        1 => "[ \t]{0,2}",
        1 => ".{0,30}",
    ])
}

fn customer() -> impl Strategy<Value = CustomerInfo> {
    (prop::option::of(0u8..3), customer_text(), customer_text()).prop_map(|(id, email, name)| CustomerInfo {
        id: id.map(|n| format!("cus_{n}")),
        email,
        name,
    })
}

prop_compose! {
    /// An item `si_N` always belongs to `sub_{N % 3}`, as in Stripe.
    fn subscription_item()(
        item in 0u8..6,
        status in status(),
        customer in customer(),
        price in price_no(),
        product in 0u8..5,
        quantity in quantity(),
        current_period_start in instant(),
        current_period_end in instant(),
        trial_end in prop::option::of(instant()),
        cancel_at_period_end in any::<bool>(),
        cancel_at in prop::option::of(instant()),
        ended_at in prop::option::of(instant()),
        paid_through in prop::option::of(instant()),
        created in instant(),
        livemode in any::<bool>(),
    ) -> GrantFact {
        GrantFact::Subscription(SubscriptionItemFact {
            item_id: format!("si_{item}"),
            subscription_id: format!("sub_{}", item % 3),
            status,
            customer,
            price_id: format!("price_{price}"),
            product_id: format!("prod_{product}"),
            quantity,
            current_period_start,
            current_period_end,
            trial_end,
            cancel_at_period_end,
            cancel_at,
            ended_at,
            paid_through,
            created,
            livemode,
        })
    }
}

prop_compose! {
    fn one_time_line()(
        invoice in any::<bool>(),
        purchase in 0u8..3,
        line in 0u8..2,
        customer in customer(),
        price in price_no(),
        product in 0u8..5,
        quantity in quantity(),
        purchased_at in instant(),
        paid in prop::bool::weighted(0.8),
        payment_intent in prop::option::of(0u8..3),
        livemode in any::<bool>(),
    ) -> GrantFact {
        let (purchase_id, key) = if invoice {
            let id = format!("in_{purchase}");
            let key = GrantKey::invoice_line(&id, &format!("il_{line}"));
            (id, key)
        } else {
            let id = format!("cs_{purchase}");
            let key = GrantKey::checkout_line(&id, &format!("li_{line}"));
            (id, key)
        };
        GrantFact::OneTime(OneTimeLineFact {
            key,
            purchase_id,
            customer,
            price_id: format!("price_{price}"),
            product_id: format!("prod_{product}"),
            quantity,
            purchased_at,
            paid,
            payment_intent: payment_intent.map(|n| format!("pi_{n}")),
            livemode,
        })
    }
}

fn reversal() -> impl Strategy<Value = PaymentReversal> {
    (
        0u8..3,
        prop::sample::select(vec![
            ReversalKind::FullRefund,
            ReversalKind::PartialRefund,
            ReversalKind::DisputeLost,
        ]),
        0u8..4,
    )
        .prop_map(|(pi, kind, n)| PaymentReversal {
            payment_intent: format!("pi_{pi}"),
            kind,
            stripe_object: match kind {
                ReversalKind::DisputeLost => format!("dp_{n}"),
                _ => format!("re_{n}"),
            },
        })
}

fn grace() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => prop::sample::select(vec![Duration::from_secs(24 * 3600), Duration::from_secs(7 * 24 * 3600)]),
        1 => prop::sample::select(vec![Duration::ZERO, Duration::MAX, Duration::from_secs(u64::MAX / 2)]),
        1 => any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn plan_config() -> impl Strategy<Value = PlanConfig> {
    (grace(), grace(), prop::option::of(instant())).prop_map(|(grace, past_due_grace, mail_since)| PlanConfig {
        grace,
        past_due_grace,
        mail_since,
    })
}

/// Everything one planner call reads, owned.
#[derive(Debug, Clone)]
struct Input {
    catalog: Catalog,
    grants: Vec<GrantFact>,
    reversals: Vec<PaymentReversal>,
    complete_subscriptions: Vec<String>,
}

impl Input {
    fn facts(&self) -> Facts<'_> {
        Facts {
            catalog: &self.catalog,
            grants: &self.grants,
            reversals: &self.reversals,
            complete_subscriptions: &self.complete_subscriptions,
        }
    }

    /// Every Stripe id the input holds: what a skip may name.
    fn objects(&self, products: &[String]) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = products.iter().cloned().collect();
        for n in 0..PRICES {
            let price = format!("price_{n}");
            if self.catalog.contains_price(&price) {
                ids.insert(price);
            }
        }
        for grant in &self.grants {
            match grant {
                GrantFact::Subscription(s) => {
                    ids.extend([
                        s.item_id.clone(),
                        s.subscription_id.clone(),
                        s.price_id.clone(),
                        s.product_id.clone(),
                    ]);
                }
                GrantFact::OneTime(o) => {
                    ids.extend([o.purchase_id.clone(), o.price_id.clone(), o.product_id.clone()]);
                }
            }
        }
        ids.extend(self.reversals.iter().map(|r| r.stripe_object.clone()));
        ids.extend(self.complete_subscriptions.iter().cloned());
        ids
    }
}

prop_compose! {
    fn input()(
        catalog in catalog(),
        subscriptions in prop::collection::vec(subscription_item(), 0..8),
        one_times in prop::collection::vec(one_time_line(), 0..6),
        reversals in prop::collection::vec(reversal(), 0..3),
        complete in prop::collection::btree_set(0u8..3, 0..3),
        interleave in any::<bool>(),
    ) -> Input {
        let mut grants = subscriptions;
        if interleave {
            grants.splice(0..0, one_times);
        } else {
            grants.extend(one_times);
        }
        Input {
            catalog,
            grants,
            reversals,
            complete_subscriptions: complete.into_iter().map(|n| format!("sub_{n}")).collect(),
        }
    }
}

/// The ids of the products the catalog holds (what `price.product` of a
/// catalog price may name besides them).
fn catalog_objects(catalog: &Catalog) -> Vec<String> {
    let mut ids: Vec<String> = (0..5)
        .map(|n| format!("prod_{n}"))
        .filter(|id| catalog.contains_product(id))
        .collect();
    // A price's product is an object of the input even when it is missing.
    for n in 0..PRICES {
        let price = format!("price_{n}");
        if let Licensing::Misconfigured(bad) = catalog.resolve(&price, "")
            && bad.key == "product"
        {
            ids.push(bad.stripe_object);
        }
    }
    ids
}

/// The last fact of each grant (as the planner reads a grant listed twice).
fn latest(grants: &[GrantFact]) -> BTreeMap<GrantKey, &GrantFact> {
    grants.iter().map(|g| (g.key(), g)).collect()
}

/// What every plan over `input` must satisfy, whatever the input.
fn check_plan(input: &Input, current: &[License], plan: &Plan, now: Timestamp) -> Result<(), TestCaseError> {
    let objects = input.objects(&catalog_objects(&input.catalog));
    let facts = latest(&input.grants);
    let licensed: BTreeSet<GrantKey> = current.iter().map(License::grant_key).collect();
    for skip in &plan.skipped {
        prop_assert!(
            objects.contains(&skip.stripe_object),
            "the skip names {:?}, which is not in the input: {:?}",
            skip.stripe_object,
            skip
        );
        prop_assert!(!skip.reason.trim().is_empty());
        if let Some(grant) = &skip.grant {
            prop_assert!(
                facts.contains_key(grant) || licensed.contains(grant),
                "skip of a grant neither in the input nor in the table: {:?}",
                skip
            );
        }
    }
    let mut acted = BTreeSet::new();
    for action in &plan.actions {
        prop_assert!(acted.insert(action.grant.clone()), "two actions for {:?}", action.grant);
        prop_assert!(!action.cause.is_empty());
        let after = &action.after;
        // Every license a plan writes fits the table and grants seats.
        prop_assert!(after.quantity >= 1, "quantity {} written", after.quantity);
        prop_assert!(after.hwid_limit.is_none_or(|h| h >= 0) && after.ip_limit.is_none_or(|i| i >= 0));
        prop_assert!(after.expiration_days.is_none_or(|d| d >= 1));
        prop_assert!(!after.product_ids.is_empty() && after.product_ids.iter().all(|id| is_valid_id(id)));
        // The report and the ledger serialize it.
        let _ = action.changes();
        if action.before.is_some() {
            continue;
        }
        // An issue: a usable key for a licensed grant of the input, by the rules.
        prop_assert!(!licensed.contains(&action.grant), "issued over an existing license");
        prop_assert_eq!(after.status, LicenseStatus::Active, "issued keys are usable");
        prop_assert!(
            after.expires_at.is_none_or(|at| at > now),
            "issued already expired: {:?}",
            after
        );
        let Some(fact) = facts.get(&action.grant) else {
            return Err(TestCaseError::fail(format!(
                "issue for a grant not in the input: {action:?}"
            )));
        };
        let (price_id, product_id, quantity, customer, cause) = match fact {
            GrantFact::Subscription(s) => (&s.price_id, &s.product_id, s.quantity, &s.customer, &s.subscription_id),
            GrantFact::OneTime(o) => (&o.price_id, &o.product_id, o.quantity, &o.customer, &o.purchase_id),
        };
        let Licensing::Licensed { terms, .. } = input.catalog.resolve(price_id, product_id) else {
            return Err(TestCaseError::fail(format!(
                "issued for an unlicensed price: {action:?}"
            )));
        };
        prop_assert_eq!(i64::from(after.quantity), quantity);
        prop_assert_eq!(
            after.hwid_limit.map(i64::from),
            terms.hwid_limit.map(|h| i64::from(h) * quantity),
            "hwid_limit is the per-unit limit x quantity"
        );
        prop_assert_eq!(&after.product_ids, &terms.product_ids);
        prop_assert_eq!(after.ip_limit, terms.ip_limit);
        prop_assert_eq!(&after.customer_email, &customer.email);
        prop_assert_eq!(&after.customer_name, &customer.name);
        prop_assert_eq!(&after.stripe_customer_id, &customer.id);
        prop_assert_eq!(&action.cause, cause);
    }
    Ok(())
}

/// Against an empty table, each grant is issued, skipped naming its object,
/// or silently not licensed, exactly as the rules decide.
fn check_each_grant(input: &Input, plan: &Plan, now: Timestamp, config: &PlanConfig) -> Result<(), TestCaseError> {
    use SubscriptionStatus as S;
    for (key, fact) in latest(&input.grants) {
        let issued = plan.actions.iter().any(|a| a.grant == key);
        let skips: Vec<_> = plan.skipped.iter().filter(|s| s.grant.as_ref() == Some(&key)).collect();
        let (issuable, price_id, product_id, quantity, object) = match fact {
            GrantFact::Subscription(s) => {
                if let S::Unknown(value) = &s.status {
                    prop_assert!(!issued, "a grant of unknown status {:?} was issued", value);
                    prop_assert!(
                        skips.iter().any(|k| k.stripe_object == s.subscription_id
                            && k.reason.contains(&s.subscription_id)
                            && k.reason.contains(&format!("`{value}`"))),
                        "unknown status {:?} of {} is not reported: {:?}",
                        value,
                        s.subscription_id,
                        skips
                    );
                    continue;
                }
                let issuable = matches!(s.status, S::Trialing | S::Active | S::PastDue);
                (issuable, &s.price_id, &s.product_id, s.quantity, &s.item_id)
            }
            GrantFact::OneTime(o) => (o.paid, &o.price_id, &o.product_id, o.quantity, &o.purchase_id),
        };
        if !issuable {
            // Nothing to issue and no license: not even looked up.
            prop_assert!(!issued && skips.is_empty(), "{:?}: {:?}", key, skips);
            continue;
        }
        match input.catalog.resolve(price_id, product_id) {
            Licensing::NotLicensed => prop_assert!(!issued && skips.is_empty(), "{:?}: {:?}", key, skips),
            Licensing::Misconfigured(bad) => {
                prop_assert!(!issued);
                prop_assert!(
                    skips
                        .iter()
                        .any(|k| k.stripe_object == bad.stripe_object && k.reason.contains(&bad.key)),
                    "misconfigured {:?} not reported for {:?}: {:?}",
                    bad,
                    key,
                    skips
                );
            }
            Licensing::Licensed { terms, .. } => {
                let seats = i32::try_from(quantity)
                    .ok()
                    .filter(|q| *q >= 1)
                    .and_then(|q| terms.hwid_limit.map_or(Some(q), |h| h.checked_mul(q).map(|_| q)));
                if seats.is_none() {
                    prop_assert!(!issued, "issued with quantity {}", quantity);
                    prop_assert!(
                        skips
                            .iter()
                            .any(|k| &k.stripe_object == object && k.reason.contains(&quantity.to_string())),
                        "quantity {} of {:?} not reported: {:?}",
                        quantity,
                        key,
                        skips
                    );
                    continue;
                }
                // Grants whose license cannot have run out must be issued.
                let must_issue = match fact {
                    GrantFact::OneTime(o) => {
                        terms.expiration_days.is_none()
                            && !input.reversals.iter().any(|r| {
                                r.kind != ReversalKind::PartialRefund
                                    && o.payment_intent.as_ref() == Some(&r.payment_intent)
                            })
                    }
                    GrantFact::Subscription(s) => {
                        s.status == S::Active
                            && !s.cancel_at_period_end
                            && s.cancel_at.is_none()
                            && config.grace >= Duration::from_secs(3600)
                            && s.current_period_end > now
                    }
                };
                if must_issue {
                    prop_assert!(issued, "{:?} should be issued: {:#?}", key, plan);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::tests::proptest_config(PLAN_CASES))]

    /// For any catalog and any facts: no panic, every skip names a Stripe
    /// object of the input, every issue is a usable license with quantity
    /// >= 1 and hwid_limit = per-unit limit x quantity, and each grant is
    /// issued, skipped with its reason, or not licensed as the rules decide.
    #[test]
    fn hostile_facts_plan_by_the_rules_or_skip_naming_an_input_object(
        input in input(),
        config in plan_config(),
        now in prop_oneof![8 => (0i64..60).prop_map(day), 1 => instant()],
    ) {
        let plan = crate::plan::plan(&input.facts(), &[], &config, now);
        check_plan(&input, &[], &plan, now)?;
        check_each_grant(&input, &plan, now, &config)?;
        prop_assert_eq!(&plan, &crate::plan::plan(&input.facts(), &[], &config, now), "deterministic");
        prop_assert!(serde_json::to_string(&plan).is_ok());
    }

    /// A table shaped by one hostile state, then another: still no panic,
    /// every change is applicable and names input objects only.
    #[test]
    fn hostile_facts_over_a_hostile_table_change_it_soundly(
        first in input(),
        second in input(),
        config in plan_config(),
        first_now in (0i64..60).prop_map(day),
        later in 0i64..400,
    ) {
        let plan = crate::plan::plan(&first.facts(), &[], &config, first_now);
        // `apply` panics (a failure) on a plan the applier could not write.
        let table = apply(&[], &plan, first_now);
        let now = first_now + chrono::Duration::days(later);
        let plan = crate::plan::plan(&second.facts(), &table, &config, now);
        check_plan(&second, &table, &plan, now)?;
        apply(&table, &plan, now);
    }

    /// Grants read in overlapping pages (a grant repeated on later pages):
    /// one license per grant, and a second run over the same pages changes
    /// nothing.
    #[test]
    fn overlapping_pages_issue_once_and_a_second_run_changes_nothing(
        input in input(),
        config in plan_config(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        repeats in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..4),
        now in (0i64..60).prop_map(day),
    ) {
        pages_converge(&input, &config, &cuts, &repeats, now, false)?;
    }

    /// The same over a table that keeps microseconds, as PostgreSQL does:
    /// an expiry past chrono's range saturates at a microsecond (it once
    /// saturated at `MAX_UTC`, whose nanoseconds the table drops, so every
    /// later run planned an `extend`). Minimal input that found it: an
    /// `active` item with `current_period_end` = `MAX_UTC`, grace 24 h.
    #[test]
    fn a_second_run_over_a_table_that_keeps_microseconds_changes_nothing(
        input in input(),
        config in plan_config(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        repeats in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..4),
        now in (0i64..60).prop_map(day),
    ) {
        pages_converge(&input, &config, &cuts, &repeats, now, true)?;
    }
}

/// Plans `input` page by page (pages cut at `cuts`, grants copied onto
/// later pages by `repeats`), applying each; then plans every page again,
/// which must change nothing. `like_postgres`: the table keeps microseconds.
fn pages_converge(
    input: &Input,
    config: &PlanConfig,
    cuts: &[prop::sample::Index],
    repeats: &[(prop::sample::Index, prop::sample::Index)],
    now: Timestamp,
    like_postgres: bool,
) -> Result<(), TestCaseError> {
    use chrono::SubsecRound;
    // One fact per grant (a second run sees the same Stripe state).
    let unique: Vec<GrantFact> = latest(&input.grants).into_values().cloned().collect();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(unique.len() + 1)).collect();
    bounds.extend([0, unique.len()]);
    bounds.sort();
    bounds.dedup();
    let mut pages: Vec<Vec<GrantFact>> = bounds.windows(2).map(|w| unique[w[0]..w[1]].to_vec()).collect();
    if pages.is_empty() {
        pages.push(Vec::new());
    }
    for (grant, page) in repeats {
        if !unique.is_empty() {
            let copy = unique[grant.index(unique.len())].clone();
            let n = pages.len();
            pages[page.index(n)].push(copy);
        }
    }
    // A page lists a subscription as complete only when all its items are on it.
    let items_of = |grants: &[GrantFact], sub: &str| -> BTreeSet<String> {
        grants
            .iter()
            .filter_map(|g| match g {
                GrantFact::Subscription(s) if s.subscription_id == sub => Some(s.item_id.clone()),
                _ => None,
            })
            .collect()
    };
    let page_inputs: Vec<Input> = pages
        .into_iter()
        .map(|grants| {
            let complete = input
                .complete_subscriptions
                .iter()
                .filter(|sub| items_of(&grants, sub) == items_of(&unique, sub))
                .cloned()
                .collect();
            Input {
                catalog: input.catalog.clone(),
                grants,
                reversals: input.reversals.clone(),
                complete_subscriptions: complete,
            }
        })
        .collect();
    let store = |mut table: Vec<License>| {
        if like_postgres {
            for license in &mut table {
                license.state.expires_at = license.state.expires_at.map(|t| t.trunc_subsecs(6));
            }
        }
        table
    };

    let mut table: Vec<License> = Vec::new();
    for page in &page_inputs {
        let plan = crate::plan::plan(&page.facts(), &table, config, now);
        check_plan(page, &table, &plan, now)?;
        table = store(apply(&table, &plan, now));
    }
    let keys: HashMap<GrantKey, usize> = table.iter().fold(HashMap::new(), |mut n, l| {
        *n.entry(l.grant_key()).or_default() += 1;
        n
    });
    prop_assert!(keys.values().all(|n| *n == 1), "a grant has two licenses: {:?}", keys);
    for page in &page_inputs {
        let again = crate::plan::plan(&page.facts(), &table, config, now);
        prop_assert!(again.is_empty(), "the second run changes {:#?}", again.actions);
    }
    Ok(())
}

/// The generators reach every outcome the properties speak of (else a
/// property could pass by never meeting its case): licensed, misconfigured
/// by each key, and not licensed prices; issued grants and each kind of
/// skip. Deterministic: a fixed seed, not `PROPTEST_CASES`.
#[test]
fn the_generators_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..500 {
        let (product, price) = product_and_price().new_tree(&mut runner).unwrap().current();
        let outcome = match Catalog::new([product], [price.clone()]).resolve(&price.id, "") {
            Licensing::NotLicensed => "not licensed".to_owned(),
            Licensing::Licensed { warnings, .. } if warnings.is_empty() => "licensed".to_owned(),
            Licensing::Licensed { .. } => "licensed with warnings".to_owned(),
            Licensing::Misconfigured(bad) => format!("misconfigured {}", bad.key),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    let mut plans: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..150 {
        let input = input().new_tree(&mut runner).unwrap().current();
        let plan = crate::plan::plan(&input.facts(), &[], &PlanConfig::default(), day(10));
        *plans.entry("issue").or_default() += plan.actions.len();
        for skip in &plan.skipped {
            let kind = if skip.reason.contains("does not know") {
                "unknown status"
            } else if skip.reason.contains("quantity") {
                "quantity"
            } else if skip.reason.contains("refund") || skip.reason.contains("took the payment back") {
                "reversal"
            } else {
                "misconfigured"
            };
            *plans.entry(kind).or_default() += 1;
        }
    }
    for outcome in [
        "not licensed",
        "licensed",
        "licensed with warnings",
        "misconfigured product_id",
        "misconfigured ip_limit",
        "misconfigured hwid_limit",
        "misconfigured expiration_days",
        "misconfigured expiration_start",
    ] {
        assert!(
            outcomes.get(outcome).copied().unwrap_or(0) >= 5,
            "{outcome}: {outcomes:#?}"
        );
    }
    for kind in ["issue", "unknown status", "quantity", "reversal", "misconfigured"] {
        assert!(plans.get(kind).copied().unwrap_or(0) >= 5, "{kind}: {plans:#?}");
    }
}
