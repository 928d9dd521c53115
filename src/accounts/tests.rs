use super::*;
use crate::mail::MailUrl;

fn mail() -> MailSettings {
    MailSettings::new(MailUrl::None, parse_from("licenses@vendor.example").unwrap())
}

fn key() -> ApiKey {
    ApiKey::parse("sk_test_platform0123456789").unwrap()
}

#[test]
fn account_ids_table() {
    let cases = [
        ("acct_1Abc", Ok(Some("acct_1Abc"))),
        (" acct_1Abc ", Ok(Some("acct_1Abc"))),
        ("self", Ok(None)),
        ("acct_", Err(())),
        ("acct_1-2", Err(())),
        ("1Abc", Err(())),
        ("", Err(())),
    ];
    for (input, expected) in cases {
        let got = account_arg(input).map(|a| a.0).map_err(|_| ());
        assert_eq!(got, expected.map(|o| o.map(str::to_owned)), "{input:?}");
    }
}

#[test]
fn shards_table() {
    let ok = |i, n| Ok(Shard { index: i, count: n });
    let cases = [
        ("0/3", ok(0, 3)),
        ("2/3", ok(2, 3)),
        (" 1 / 2 ", ok(1, 2)),
        ("3/3", Err(())),
        ("0/0", Err(())),
        ("1", Err(())),
        ("-1/3", Err(())),
        ("a/b", Err(())),
    ];
    for (input, expected) in cases {
        assert_eq!(input.parse::<Shard>().map_err(|_| ()), expected, "{input:?}");
    }
    assert!("3/3".parse::<Shard>().unwrap_err().contains("JOB_COMPLETION_INDEX"));
}

#[test]
fn every_account_is_in_exactly_one_shard() {
    let ids: Vec<Option<String>> = std::iter::once(None)
        .chain((0..200).map(|i| Some(format!("acct_{i:016}"))))
        .collect();
    for count in 1..=7 {
        for id in &ids {
            let shards = (0..count)
                .filter(|&index| Shard { index, count }.contains(id.as_deref()))
                .count();
            assert_eq!(shards, 1, "{id:?} of {count}");
        }
        if count > 1 {
            // Spread: no shard is empty among 201 accounts.
            for index in 0..count {
                assert!(ids.iter().any(|id| Shard { index, count }.contains(id.as_deref())));
            }
        }
    }
    // Stable across versions: this value is part of the deployment contract.
    assert_eq!(stable_hash(Some("acct_1")), 0x4780_9e46_6c8e_1222_u64);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn nothing_configured_is_the_keys_own_account() {
    let accounts = AccountSettings::default().resolve(Some(&key()), &mail()).unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].stripe_account, None);
    assert!(!accounts[0].connect);
    let err = AccountSettings::default().resolve(None, &mail()).unwrap_err();
    assert!(err.to_string().contains("STRIPE_API_KEY"), "{err}");
}

#[test]
fn connected_accounts_use_the_platform_key_and_self_is_the_own_account() {
    let settings = AccountSettings {
        connected: vec![account_arg("acct_A1").unwrap(), account_arg("self").unwrap()],
        file: None,
    };
    let accounts = settings.resolve(Some(&key()), &mail()).unwrap();
    let got: Vec<(Option<&str>, bool)> = accounts
        .iter()
        .map(|a| (a.stripe_account.as_deref(), a.connect))
        .collect();
    assert_eq!(got, [(Some("acct_A1"), true), (None, false)]);
    let twice = AccountSettings {
        connected: vec![account_arg("acct_A1").unwrap(), account_arg("acct_A1").unwrap()],
        file: None,
    };
    let err = twice.resolve(Some(&key()), &mail()).unwrap_err();
    assert!(err.to_string().contains("acct_A1 is configured twice"), "{err}");
}

#[test]
fn paths_in_the_file_are_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "brand-b.key", "sk_test_brandb0123454321\n");
    let file = write(
        dir.path(),
        "accounts.toml",
        r#"
[[account]]
name = "Brand B"
stripe_account = "acct_B2"
stripe_api_key_file = "brand-b.key"
mail_from = "Brand B <licenses@brand-b.example>"
mail_templates = "brand-b-templates"

[[account]]
name = "Seller C"
stripe_account = "acct_C3"
"#,
    );
    let settings = AccountSettings {
        connected: vec![],
        file: Some(file),
    };
    let accounts = settings.resolve(Some(&key()), &mail()).unwrap();
    assert_eq!(accounts.len(), 2);
    let b = &accounts[0];
    assert_eq!(
        (b.name.as_str(), b.stripe_account.as_deref(), b.connect),
        ("Brand B", Some("acct_B2"), false)
    );
    assert_ne!(b.api_key.masked(), key().masked(), "its own key, not the platform's");
    assert_eq!(b.mail.from.email.to_string(), "licenses@brand-b.example");
    assert_eq!(
        b.mail.templates_dir.as_deref(),
        Some(dir.path().join("brand-b-templates").as_path())
    );
    let c = &accounts[1];
    assert_eq!((c.stripe_account.as_deref(), c.connect), (Some("acct_C3"), true));
    assert_eq!(c.mail.from.email.to_string(), "licenses@vendor.example");
}

#[test]
fn two_own_accounts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.key", "sk_test_branda0123456789");
    write(dir.path(), "b.key", "sk_test_brandb0123456789");
    let file = write(
        dir.path(),
        "accounts.toml",
        "[[account]]\nname = \"A\"\nstripe_api_key_file = \"a.key\"\n\n[[account]]\nname = \"B\"\nstripe_api_key_file = \"b.key\"\n",
    );
    let err = AccountSettings {
        connected: vec![],
        file: Some(file),
    }
    .resolve(None, &mail())
    .unwrap_err();
    assert!(
        err.to_string().contains("`A` is already the key's own account"),
        "{err}"
    );
}

#[test]
fn bad_files_name_the_entry_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", "has no [[account]] table"),
        ("[[account]]\nname = \"X\"\n", "#1 `X`: give it a stripe_api_key_file"),
        (
            "[[account]]\nname = \"X\"\nstripe_account = \"cus_1\"\n",
            "is not a Stripe account id",
        ),
        (
            "[[account]]\nname = \"X\"\nstripe_account = \"acct_1\"\nkey = \"sk\"\n",
            "unknown field `key`",
        ),
        (
            "[[account]]\nname = \"X\"\nstripe_api_key_file = \"missing.key\"\n",
            "cannot read stripe_api_key_file",
        ),
        ("[[account]\n", "is not a valid accounts file"),
    ];
    for (text, expected) in cases {
        let file = write(dir.path(), "accounts.toml", text);
        let err = AccountSettings {
            connected: vec![],
            file: Some(file),
        }
        .resolve(Some(&key()), &mail())
        .unwrap_err();
        assert!(format!("{err:#}").contains(expected), "{text:?}: {err:#}");
    }
}
