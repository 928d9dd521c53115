//! Licensing-rules §2: metadata decides which prices are licensed.

use super::*;
use crate::tests::fixtures::{one_time_price, product, recurring_price};

fn terms_of(catalog: &Catalog, price: &str) -> LicenseTerms {
    match catalog.resolve(price, "prod_x") {
        Licensing::Licensed { terms, .. } => terms,
        other => panic!("{price} should be licensed, got {other:?}"),
    }
}

fn misconfiguration(catalog: &Catalog, price: &str) -> Misconfiguration {
    match catalog.resolve(price, "prod_x") {
        Licensing::Misconfigured(bad) => bad,
        other => panic!("{price} should be misconfigured, got {other:?}"),
    }
}

/// A catalog of product `prod_x` with `product` metadata and one one-time
/// price `price_x` with `price` metadata.
fn single(product_meta: &[(&str, &str)], price_meta: &[(&str, &str)]) -> Catalog {
    Catalog::new(
        [product("prod_x", product_meta)],
        [one_time_price("price_x", "prod_x", price_meta)],
    )
}

#[test]
fn a_product_with_a_product_id_is_licensed_with_its_limits() {
    let catalog = single(&[("product_id", "pro"), ("ip_limit", "5"), ("hwid_limit", "2")], &[]);
    assert_eq!(
        terms_of(&catalog, "price_x"),
        LicenseTerms {
            product_ids: vec!["pro".into()],
            ip_limit: Some(5),
            hwid_limit: Some(2),
            expiration_days: None,
            expiration_start: None
        }
    );
}

#[test]
fn a_product_without_a_product_id_is_not_licensed() {
    let catalog = single(&[("ip_limit", "5")], &[]);
    assert_eq!(catalog.resolve("price_x", "prod_x"), Licensing::NotLicensed);
}

#[test]
fn an_empty_product_id_counts_as_absent() {
    for empty in ["", "   "] {
        let catalog = single(&[("product_id", empty)], &[]);
        assert_eq!(
            catalog.resolve("price_x", "prod_x"),
            Licensing::NotLicensed,
            "{empty:?}"
        );
    }
}

#[test]
fn malformed_limits_of_an_unlicensed_product_do_not_matter() {
    let catalog = single(&[("ip_limit", "lots")], &[]);
    assert_eq!(catalog.resolve("price_x", "prod_x"), Licensing::NotLicensed);
}

#[test]
fn price_metadata_overrides_product_metadata_key_by_key() {
    let catalog = Catalog::new(
        [product(
            "prod_x",
            &[("product_id", "pro"), ("ip_limit", "5"), ("hwid_limit", "2")],
        )],
        [
            recurring_price("price_monthly", "prod_x", &[]),
            recurring_price("price_yearly", "prod_x", &[("hwid_limit", "10")]),
        ],
    );
    assert_eq!(terms_of(&catalog, "price_monthly").hwid_limit, Some(2));
    let yearly = terms_of(&catalog, "price_yearly");
    assert_eq!(yearly.hwid_limit, Some(10));
    assert_eq!(
        yearly.ip_limit,
        Some(5),
        "keys the price does not set come from the product"
    );
}

#[test]
fn a_price_can_license_a_product_that_has_no_product_id() {
    let catalog = single(&[], &[("product_id", "addon")]);
    assert_eq!(terms_of(&catalog, "price_x").product_ids, vec!["addon".to_string()]);
}

#[test]
fn an_empty_price_value_does_not_hide_the_product_value() {
    let catalog = single(
        &[("product_id", "pro"), ("ip_limit", "5")],
        &[("ip_limit", ""), ("product_id", " ")],
    );
    let terms = terms_of(&catalog, "price_x");
    assert_eq!(terms.ip_limit, Some(5));
    assert_eq!(terms.product_ids, vec!["pro".to_string()]);
}

#[test]
fn archived_products_and_prices_still_resolve() {
    let mut archived_product = product("prod_x", &[("product_id", "legacy")]);
    archived_product.active = false;
    let mut archived_price = recurring_price("price_x", "prod_x", &[]);
    archived_price.active = false;
    let catalog = Catalog::new([archived_product], [archived_price]);
    assert_eq!(terms_of(&catalog, "price_x").product_ids, vec!["legacy".to_string()]);
}

#[test]
fn a_comma_separated_product_id_is_trimmed_deduplicated_and_keeps_its_order() {
    let catalog = single(&[("product_id", " pro , team,pro ,  addon.v2:x-1 ,")], &[]);
    assert_eq!(
        terms_of(&catalog, "price_x").product_ids,
        vec!["pro", "team", "addon.v2:x-1"]
    );
}

#[test]
fn a_product_id_list_without_any_id_is_misconfigured() {
    let bad = misconfiguration(&single(&[("product_id", " , ,")], &[]), "price_x");
    assert_eq!((bad.stripe_object.as_str(), bad.key.as_str()), ("prod_x", "product_id"));
    assert!(bad.why.contains("no product id"), "{}", bad.why);
}

#[test]
fn product_ids_must_match_the_id_grammar() {
    let longest = "a".repeat(128);
    let too_long = "a".repeat(129);
    for good in ["a", "Z9", "9lives", "pro_plan.v2:eu-1", longest.as_str()] {
        assert!(is_valid_id(good), "{good} should be valid");
    }
    for bad in [
        "",
        "_pro",
        "-pro",
        ".pro",
        "pro plan",
        "pro/plan",
        "pröd",
        "pro!",
        too_long.as_str(),
    ] {
        assert!(!is_valid_id(bad), "{bad:?} should be invalid");
    }
}

#[test]
fn an_invalid_product_id_is_misconfigured_naming_the_id_and_the_fix() {
    let bad = misconfiguration(&single(&[("product_id", "pro, my plan")], &[]), "price_x");
    assert_eq!(bad.stripe_object, "prod_x");
    assert_eq!(bad.product, "prod_x");
    assert_eq!(bad.key, "product_id");
    assert!(
        bad.why.contains("`my plan`") && bad.why.contains("letters, digits"),
        "{}",
        bad.why
    );
}

#[test]
fn a_limit_that_is_not_a_whole_number_is_misconfigured_naming_product_and_key() {
    for (key, value) in [
        ("ip_limit", "abc"),
        ("ip_limit", "-1"),
        ("hwid_limit", "2.5"),
        ("hwid_limit", "+3"),
    ] {
        let bad = misconfiguration(&single(&[("product_id", "pro"), (key, value)], &[]), "price_x");
        assert_eq!(bad.stripe_object, "prod_x", "{key}={value}");
        assert_eq!(bad.product, "prod_x");
        assert_eq!(bad.key, key);
        assert!(
            bad.why.contains(&format!("`{value}`")) && bad.why.contains("whole number >= 0"),
            "{}",
            bad.why
        );
        assert!(
            bad.why.contains("remove the key"),
            "the why says how to fix it: {}",
            bad.why
        );
    }
}

#[test]
fn a_limit_too_large_for_the_table_is_misconfigured() {
    let bad = misconfiguration(
        &single(&[("product_id", "pro"), ("hwid_limit", "99999999999")], &[]),
        "price_x",
    );
    assert_eq!(bad.key, "hwid_limit");
}

#[test]
fn zero_is_a_valid_limit() {
    let terms = terms_of(
        &single(&[("product_id", "pro"), ("ip_limit", "0"), ("hwid_limit", " 0 ")], &[]),
        "price_x",
    );
    assert_eq!((terms.ip_limit, terms.hwid_limit), (Some(0), Some(0)));
}

#[test]
fn a_bad_value_on_the_price_names_the_price_as_the_stripe_object() {
    let bad = misconfiguration(&single(&[("product_id", "pro")], &[("hwid_limit", "many")]), "price_x");
    assert_eq!(bad.stripe_object, "price_x");
    assert_eq!(bad.product, "prod_x");
    assert_eq!(bad.key, "hwid_limit");
}

#[test]
fn expiration_days_must_be_at_least_one() {
    for value in ["0", "thirty", "-5"] {
        let bad = misconfiguration(
            &single(&[("product_id", "pro"), ("expiration_days", value)], &[]),
            "price_x",
        );
        assert_eq!(bad.key, "expiration_days", "{value}");
        assert!(bad.why.contains(">= 1"), "{}", bad.why);
    }
}

#[test]
fn expiration_days_default_to_starting_at_creation() {
    let terms = terms_of(
        &single(&[("product_id", "pro"), ("expiration_days", "30")], &[]),
        "price_x",
    );
    assert_eq!(terms.expiration_days, Some(30));
    assert_eq!(terms.expiration_start, Some(ExpirationStart::Creation));
}

#[test]
fn expiration_start_is_case_insensitive() {
    for (value, expected) in [
        ("ACTIVATION", ExpirationStart::Activation),
        ("activation", ExpirationStart::Activation),
        ("Creation", ExpirationStart::Creation),
    ] {
        let catalog = single(
            &[
                ("product_id", "pro"),
                ("expiration_days", "7"),
                ("expiration_start", value),
            ],
            &[],
        );
        assert_eq!(
            terms_of(&catalog, "price_x").expiration_start,
            Some(expected),
            "{value}"
        );
    }
}

#[test]
fn an_unknown_expiration_start_is_misconfigured() {
    let catalog = single(
        &[
            ("product_id", "pro"),
            ("expiration_days", "7"),
            ("expiration_start", "PURCHASE"),
        ],
        &[],
    );
    let bad = misconfiguration(&catalog, "price_x");
    assert_eq!(bad.key, "expiration_start");
    assert!(
        bad.why.contains("`PURCHASE`") && bad.why.contains("ACTIVATION"),
        "{}",
        bad.why
    );
}

#[test]
fn expiration_start_without_expiration_days_is_misconfigured() {
    let catalog = single(&[("product_id", "pro")], &[("expiration_start", "ACTIVATION")]);
    let bad = misconfiguration(&catalog, "price_x");
    assert_eq!(
        (bad.stripe_object.as_str(), bad.key.as_str()),
        ("price_x", "expiration_start")
    );
    assert!(bad.why.contains("expiration_days"), "{}", bad.why);
}

#[test]
fn expiration_metadata_on_a_recurring_price_is_ignored_with_a_warning() {
    let catalog = Catalog::new(
        [product(
            "prod_x",
            &[
                ("product_id", "pro"),
                ("expiration_days", "30"),
                ("expiration_start", "bogus"),
            ],
        )],
        [recurring_price("price_x", "prod_x", &[])],
    );
    let Licensing::Licensed { terms, warnings } = catalog.resolve("price_x", "prod_x") else {
        panic!("a recurring price with expiration metadata is still licensed");
    };
    assert_eq!((terms.expiration_days, terms.expiration_start), (None, None));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("expiration_days") && warnings[0].contains("price_x"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains("expiration_start"), "{warnings:?}");
}

#[test]
fn a_recurring_price_without_expiration_metadata_has_no_warning() {
    let catalog = Catalog::new(
        [product("prod_x", &[("product_id", "pro")])],
        [recurring_price("price_x", "prod_x", &[])],
    );
    assert_eq!(
        catalog.resolve("price_x", "prod_x"),
        Licensing::Licensed {
            terms: LicenseTerms {
                product_ids: vec!["pro".into()],
                ..LicenseTerms::default()
            },
            warnings: vec![]
        }
    );
}

#[test]
fn a_price_missing_from_the_catalog_is_misconfigured_not_a_panic() {
    let catalog = single(&[("product_id", "pro")], &[]);
    let bad = match catalog.resolve("price_gone", "prod_x") {
        Licensing::Misconfigured(bad) => bad,
        other => panic!("{other:?}"),
    };
    assert_eq!(bad.stripe_object, "price_gone");
    assert_eq!(bad.product, "prod_x");
    assert_eq!(bad.key, "price");
    assert!(bad.why.contains("price not found in the catalog"), "{}", bad.why);
}

#[test]
fn a_price_whose_product_is_missing_is_misconfigured() {
    let catalog = Catalog::new([], [one_time_price("price_x", "prod_gone", &[])]);
    let bad = misconfiguration(&catalog, "price_x");
    assert_eq!((bad.stripe_object.as_str(), bad.key.as_str()), ("prod_gone", "product"));
}

#[test]
fn the_price_decides_which_product_metadata_applies() {
    let catalog = Catalog::new(
        [
            product("prod_a", &[("product_id", "a")]),
            product("prod_b", &[("product_id", "b")]),
        ],
        [one_time_price("price_a", "prod_a", &[])],
    );
    match catalog.resolve("price_a", "prod_b") {
        Licensing::Licensed { terms, .. } => assert_eq!(terms.product_ids, vec!["a".to_string()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_metadata_keys_are_ignored() {
    let catalog = single(&[("product_id", "pro"), ("color", "blue"), ("Product_ID", "x y")], &[]);
    assert_eq!(terms_of(&catalog, "price_x").product_ids, vec!["pro".to_string()]);
}

#[test]
fn the_catalog_reports_its_size_and_product_names() {
    assert!(Catalog::default().is_empty());
    let mut catalog = single(&[("product_id", "pro")], &[]);
    assert!(!catalog.is_empty());
    assert_eq!((catalog.len(), catalog.product_count()), (1, 1));
    assert_eq!(catalog.product_name("prod_x"), Some("prod_x name"));
    assert_eq!(catalog.product_name("prod_y"), None);
    catalog.extend([], [one_time_price("price_y", "prod_x", &[])]);
    assert!(catalog.contains_price("price_y") && catalog.contains_product("prod_x"));
    assert_eq!(catalog.len(), 2);
}

#[test]
fn only_one_time_prices_of_licensed_or_misconfigured_products_can_grant_a_one_off_purchase() {
    let catalog = Catalog::new(
        [
            product("prod_lic", &[("product_id", "pro")]),
            product("prod_bad", &[("product_id", "pro"), ("ip_limit", "many")]),
            product("prod_free", &[]),
        ],
        [
            one_time_price("price_lic_once", "prod_lic", &[]),
            recurring_price("price_lic_monthly", "prod_lic", &[]),
            one_time_price("price_bad_once", "prod_bad", &[]),
            one_time_price("price_free_once", "prod_free", &[]),
            // A licensed price of an unlicensed product.
            one_time_price("price_meta_once", "prod_free", &[("product_id", "addon")]),
        ],
    );
    let grant: Vec<String> = catalog.one_time_prices_that_grant().into_iter().collect();
    assert_eq!(grant, ["price_bad_once", "price_lic_once", "price_meta_once"]);

    let subscriptions_only = Catalog::new(
        [product("prod_lic", &[("product_id", "pro")])],
        [recurring_price("price_lic_monthly", "prod_lic", &[])],
    );
    assert!(subscriptions_only.one_time_prices_that_grant().is_empty());
}

#[test]
fn the_oldest_price_bounds_every_purchase() {
    let mut old = one_time_price("price_old", "prod_x", &[]);
    old.created = 1_500_000_000;
    let mut new = one_time_price("price_new", "prod_x", &[]);
    new.created = 1_700_000_000;
    let catalog = Catalog::new([product("prod_x", &[])], [new, old]);
    assert_eq!(catalog.oldest_price(), Some(1_500_000_000));
    assert_eq!(Catalog::default().oldest_price(), None);
}
