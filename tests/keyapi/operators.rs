//! The operator side of the key API (key-api.md "Operators"): the real
//! binary's `licenses machines`, `licenses deactivate` and `licenses show`
//! against a real PostgreSQL database whose machine activations were
//! written the way `licensync serve` writes them.

use crate::common::{Ran, TestDb, issue_license, licensync};
use diesel::prelude::*;
use licensync_verify::sha256_hex;
use serde_json::Value;

/// A license with two activated machines, and another license with one
/// (which no command on the first may touch).
struct World {
    db: TestDb,
    id: i64,
    key: String,
    other: i64,
}

const LAPTOP: &str = "fingerprint-of-alices-laptop";
const DESKTOP: &str = "fingerprint-of-alices-desktop";
const ELSEWHERE: &str = "fingerprint-of-bobs-laptop";

impl World {
    fn new() -> World {
        let db = TestDb::new();
        let first = issue_license(&db.store, 1, Some("alice@example.test"));
        let other = issue_license(&db.store, 2, Some("bob@example.test"));
        let w = World {
            db,
            id: first.license_id,
            key: first.key,
            other: other.license_id,
        };
        w.activate(
            w.id,
            &sha256_hex(LAPTOP),
            Some("Alice's laptop"),
            "2026-11-01T09:00:00Z",
        );
        w.activate(w.id, &sha256_hex(DESKTOP), None, "2026-11-02T09:00:00Z");
        w.activate(
            w.other,
            &sha256_hex(ELSEWHERE),
            Some("Bob's laptop"),
            "2026-11-03T09:00:00Z",
        );
        w
    }

    /// What the key API's activation writes: a hash, never a fingerprint.
    fn activate(&self, license_id: i64, hash: &str, name: Option<&str>, at: &str) {
        let name = name.map_or("NULL".to_owned(), |n| format!("'{}'", n.replace('\'', "''")));
        self.db
            .store
            .batch_execute(&format!(
                "INSERT INTO machine_activations (license_id, machine_hash, name, first_seen, last_seen) \
                 VALUES ({license_id}, '{hash}', {name}, '{at}', '{at}'::timestamptz + interval '1 day')"
            ))
            .unwrap();
    }

    fn run(&self, args: &[&str]) -> Ran {
        let out = licensync()
            .args(args)
            .env("DATABASE_URL", &self.db.url)
            .output()
            .unwrap();
        Ran::new(&out)
    }

    /// The hashes of a license's machines, first activated first.
    fn hashes(&self, license_id: i64) -> Vec<String> {
        use licensync::schema::machine_activations::dsl as m;
        m::machine_activations
            .filter(m::license_id.eq(license_id))
            .order(m::id.asc())
            .select(m::machine_hash)
            .load(&mut self.db.conn())
            .unwrap()
    }

    /// The `operator_deactivate` rows of the ledger.
    fn deactivations(&self) -> Vec<Deactivation> {
        use licensync::schema::license_ledger::dsl as l;
        l::license_ledger
            .filter(l::action.eq("operator_deactivate"))
            .order(l::id.asc())
            .select((l::license_id, l::reason, l::operator, l::before, l::after))
            .load(&mut self.db.conn())
            .unwrap()
    }

    fn ledger_rows(&self) -> i64 {
        use licensync::schema::license_ledger::dsl as l;
        l::license_ledger.count().get_result(&mut self.db.conn()).unwrap()
    }
}

/// An `operator_deactivate` ledger row: license, reason, operator, before, after.
type Deactivation = (i64, Option<String>, Option<String>, Option<Value>, Value);

fn prefix(fingerprint: &str) -> String {
    sha256_hex(fingerprint)[..12].to_owned()
}

/// Whether `text` holds any 64-hex-digit run (a whole hash).
fn has_whole_hash(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 64 {
            return true;
        }
    }
    false
}

fn machine_prefixes(machines: &Value) -> Vec<&str> {
    machines
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {machines}"))
        .iter()
        .map(|m| m["machine"].as_str().unwrap())
        .collect()
}

#[test]
fn machines_lists_hash_prefixes_only_and_show_includes_them() {
    let w = World::new();
    let listed = w.run(&["licenses", "machines", &w.key, "--output", "json"]);
    let json = listed.ok_json();
    assert_eq!(json["license_id"], w.id, "{json:#}");
    assert_eq!(
        machine_prefixes(&json["machines"]),
        vec![prefix(LAPTOP), prefix(DESKTOP)],
        "{json:#}"
    );
    let laptop = &json["machines"][0];
    assert_eq!(laptop["name"], "Alice's laptop");
    assert_eq!(laptop["first_seen"], "2026-11-01T09:00:00Z");
    assert_eq!(laptop["last_seen"], "2026-11-02T09:00:00Z");
    assert_eq!(json["machines"][1]["name"], Value::Null);
    let mut fields: Vec<&String> = laptop.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["first_seen", "last_seen", "machine", "name"]);
    assert!(!has_whole_hash(&listed.stdout), "{}", listed.stdout);

    // By id, as text: the same machines, and never a whole hash.
    let text = w.run(&["licenses", "machines", &w.id.to_string()]);
    assert_eq!(text.code, 0, "{}", text.all());
    assert!(text.stdout.contains(&prefix(LAPTOP)), "{}", text.stdout);
    assert!(text.stdout.contains("Alice's laptop"), "{}", text.stdout);
    assert!(text.stdout.contains(&prefix(DESKTOP)), "{}", text.stdout);
    assert!(!text.stdout.contains(&prefix(ELSEWHERE)), "{}", text.stdout);
    assert!(!has_whole_hash(&text.stdout), "{}", text.stdout);

    let show = w.run(&["licenses", "show", &w.key, "--output", "json"]);
    let json = show.ok_json();
    assert_eq!(
        machine_prefixes(&json["machines"]),
        vec![prefix(LAPTOP), prefix(DESKTOP)],
        "{json:#}"
    );
    assert_eq!(json["machines"][0]["last_seen"], "2026-11-02T09:00:00Z");
    assert!(!has_whole_hash(&show.stdout), "{}", show.stdout);
    let text = w.run(&["licenses", "show", &w.key]);
    assert_eq!(text.code, 0, "{}", text.all());
    let section = text.stdout.split("Machines:").nth(1).expect("a Machines: section");
    let section = section.split("Ledger:").next().unwrap();
    assert!(
        section.contains(&prefix(LAPTOP)) && section.contains(&prefix(DESKTOP)),
        "{section}"
    );
    assert!(!has_whole_hash(&text.stdout), "{}", text.stdout);

    // A license without machines lists none.
    w.db.store
        .batch_execute(&format!("DELETE FROM machine_activations WHERE license_id = {}", w.id))
        .unwrap();
    let json = w.run(&["licenses", "machines", &w.key, "--output", "json"]).ok_json();
    assert_eq!(json["machines"], serde_json::json!([]), "{json:#}");
}

#[test]
fn deactivate_by_prefix_or_fingerprint_frees_one_seat_with_a_ledger_row() {
    let w = World::new();
    let ledger_before = w.ledger_rows();
    let laptop = sha256_hex(LAPTOP);
    let freed = w
        .run(&[
            "licenses",
            "deactivate",
            &w.key,
            "--machine",
            &laptop[..8],
            "--reason",
            "laptop stolen, ticket 4711",
            "--by",
            "alice",
            "--output",
            "json",
        ])
        .ok_json();
    assert_eq!(freed["command"], "deactivate", "{freed:#}");
    assert_eq!(freed["license_id"], w.id);
    assert_eq!(freed["by"], "alice");
    assert_eq!(freed["reason"], "laptop stolen, ticket 4711");
    assert_eq!(machine_prefixes(&freed["freed"]), vec![prefix(LAPTOP)], "{freed:#}");
    assert_eq!(freed["freed"][0]["name"], "Alice's laptop");
    assert_eq!(machine_prefixes(&freed["machines"]), vec![prefix(DESKTOP)], "{freed:#}");
    assert_eq!(w.hashes(w.id), vec![sha256_hex(DESKTOP)]);
    assert_eq!(
        w.hashes(w.other),
        vec![sha256_hex(ELSEWHERE)],
        "another license is untouched"
    );

    assert_eq!(w.ledger_rows(), ledger_before + 1);
    let rows = w.deactivations();
    let (license_id, reason, operator, before, after) = &rows[0];
    assert_eq!(*license_id, w.id);
    assert_eq!(reason.as_deref(), Some("laptop stolen, ticket 4711"));
    assert_eq!(operator.as_deref(), Some("alice"));
    assert_eq!(
        before.as_ref().unwrap()["machines"],
        serde_json::json!([prefix(LAPTOP), prefix(DESKTOP)])
    );
    assert_eq!(after["machines"], serde_json::json!([prefix(DESKTOP)]));

    // The fingerprint itself names its machine too; the operator from the environment.
    let text = {
        let out = licensync()
            .args([
                "licenses",
                "deactivate",
                &w.key,
                "--machine",
                DESKTOP,
                "--reason",
                "new desktop",
            ])
            .env("DATABASE_URL", &w.db.url)
            .env("LICENSYNC_OPERATOR", "bob")
            .output()
            .unwrap();
        Ran::new(&out)
    };
    assert_eq!(text.code, 0, "{}", text.all());
    assert!(text.stdout.contains(&prefix(DESKTOP)), "{}", text.stdout);
    assert!(
        !text.stdout.contains(DESKTOP),
        "the fingerprint is not repeated: {}",
        text.stdout
    );
    assert!(w.hashes(w.id).is_empty());
    let rows = w.deactivations();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].2.as_deref(), Some("bob"));
    assert_eq!(rows[1].1.as_deref(), Some("new desktop"));

    // `licenses show` has the ledger rows with reason and operator.
    let show = w.run(&["licenses", "show", &w.key, "--output", "json"]).ok_json();
    let ledger: Vec<&Value> = show["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "operator_deactivate")
        .collect();
    assert_eq!(ledger.len(), 2, "{show:#}");
    assert_eq!(ledger[0]["reason"], "laptop stolen, ticket 4711");
    assert_eq!(ledger[0]["operator"], "alice");
    assert_eq!(show["machines"], serde_json::json!([]));
}

#[test]
fn deactivate_all_frees_every_seat_of_the_license_only() {
    let w = World::new();
    let freed = w
        .run(&[
            "licenses",
            "deactivate",
            &w.id.to_string(),
            "--all",
            "--reason",
            "customer moved every machine",
            "--by",
            "carol",
            "--output",
            "json",
        ])
        .ok_json();
    assert_eq!(
        machine_prefixes(&freed["freed"]),
        vec![prefix(LAPTOP), prefix(DESKTOP)],
        "{freed:#}"
    );
    assert_eq!(freed["machines"], serde_json::json!([]));
    assert!(w.hashes(w.id).is_empty());
    assert_eq!(w.hashes(w.other), vec![sha256_hex(ELSEWHERE)]);
    let rows = w.deactivations();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].1.as_deref(), rows[0].2.as_deref()),
        (Some("customer moved every machine"), Some("carol"))
    );
    assert_eq!(rows[0].4["machines"], serde_json::json!([]));

    // Nothing left to free: exit 0, no ledger row.
    let again = w.run(&[
        "licenses",
        "deactivate",
        &w.key,
        "--all",
        "--reason",
        "again",
        "--by",
        "carol",
    ]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stdout.contains("nothing was freed"), "{}", again.stdout);
    assert_eq!(w.deactivations().len(), 1);
}

#[test]
fn an_ambiguous_prefix_an_unknown_machine_or_license_and_bad_flags_exit_2_and_change_nothing() {
    let w = World::new();
    // Two machines whose hashes share their first 8 digits (made by hand:
    // finding two such fingerprints would take billions of hashes).
    let twin = |n: char| format!("abcdef01{}", n.to_string().repeat(56));
    w.activate(w.id, &twin('1'), Some("twin one"), "2026-11-04T09:00:00Z");
    w.activate(w.id, &twin('2'), Some("twin two"), "2026-11-05T09:00:00Z");
    let machines_before = w.hashes(w.id);
    let ledger_before = w.ledger_rows();
    let deactivate = |extra: &[&str]| {
        let mut args = vec!["licenses", "deactivate"];
        args.extend_from_slice(extra);
        w.run(&args)
    };
    let key = w.key.as_str();
    let refusals: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![key, "--machine", "abcdef01", "--reason", "r", "--by", "a"],
            "matches 2 machines",
        ),
        (
            vec![
                key,
                "--machine",
                "not-a-known-fingerprint",
                "--reason",
                "r",
                "--by",
                "a",
            ],
            "no machine",
        ),
        (
            vec![key, "--machine", "0123456789ab", "--reason", "r", "--by", "a"],
            "no machine",
        ),
        (
            vec![key, "--machine", "abcdef0", "--reason", "r", "--by", "a"],
            "too short",
        ),
        (
            vec!["AAAAA-BBBBB-CCCCC-DDDDD-EEEEE", "--all", "--reason", "r", "--by", "a"],
            "no license",
        ),
        (vec!["999999", "--all", "--reason", "r", "--by", "a"], "no license"),
        (
            vec![key, "--all", "--machine", "abcdef011", "--reason", "r", "--by", "a"],
            "cannot be used with",
        ),
        (vec![key, "--reason", "r", "--by", "a"], "required"),
        (vec![key, "--all", "--by", "a"], "--reason"),
        (vec![key, "--all", "--reason", "  ", "--by", "a"], "must not be empty"),
    ];
    for (args, says) in refusals {
        let ran = deactivate(&args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.all());
        assert!(ran.stderr.contains(says), "{args:?} should say {says:?}: {}", ran.all());
        assert!(!ran.stderr.contains("not-a-known-fingerprint"), "{}", ran.all());
        assert_eq!(w.hashes(w.id), machines_before, "{args:?} changed nothing");
        assert_eq!(w.ledger_rows(), ledger_before, "{args:?} wrote no ledger row");
    }
    let unknown = w.run(&["licenses", "machines", "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"]);
    assert_eq!(unknown.code, 2, "{}", unknown.all());
    assert!(unknown.stderr.contains("no license"), "{}", unknown.all());

    // One more digit tells the twins apart.
    let freed = w
        .run(&[
            "licenses",
            "deactivate",
            key,
            "--machine",
            "abcdef012",
            "--reason",
            "r",
            "--by",
            "a",
            "--output",
            "json",
        ])
        .ok_json();
    assert_eq!(freed["freed"][0]["name"], "twin two", "{freed:#}");
    assert_eq!(w.hashes(w.id).len(), machines_before.len() - 1);
}
