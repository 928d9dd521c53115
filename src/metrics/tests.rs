//! The metrics file's text: families, labels, and what a refused run leaves out.

use super::*;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

fn snapshot(last_run: LastRun) -> Snapshot {
    Snapshot {
        now: at(1_800_000_000),
        last_run,
        last_success: Some(at(1_799_999_000)),
        licenses: [("active", 2), ("expired", 0), ("revoked", 1), ("suspended", 0)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        emails: OutboxCounts {
            pending: 3,
            sent: 5,
            failed: 1,
            no_recipient: 0,
            skipped: 2,
        },
        oldest_pending_email: Some(at(1_800_000_000 - 125)),
        stripe_writes: WriteCounts::default(),
    }
}

fn ran() -> RunMetrics {
    RunMetrics {
        succeeded: true,
        duration_seconds: 1.25,
        actions: [("issued", 2), ("skipped", 1), ("unchanged", 7)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        stripe_requests: 12,
        stripe_rate_limited: 3,
    }
}

#[test]
fn metrics_of_a_run_keep_their_names_types_and_integer_values() {
    let text = encode(&snapshot(LastRun::Ran(ran())));
    for line in [
        "# TYPE licensync_last_run_timestamp_seconds gauge",
        "licensync_last_run_timestamp_seconds 1800000000",
        "licensync_last_run_success 1",
        "licensync_last_run_refused{reason=\"mode_mismatch\"} 0",
        "licensync_last_success_timestamp_seconds 1799999000",
        "licensync_run_duration_seconds 1.25",
        "licensync_run_actions{action=\"issued\"} 2",
        "licensync_run_actions{action=\"skipped\"} 1",
        "licensync_run_stripe_requests 12",
        "licensync_run_stripe_rate_limited 3",
        "licensync_emails{status=\"failed\"} 1",
        "licensync_emails{status=\"skipped\"} 2",
        "licensync_email_oldest_pending_age_seconds 125",
        "licensync_licenses{status=\"active\"} 2",
        "# HELP licensync_licenses Licenses by status.",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains("_total"), "gauges keep their names:\n{text}");
    assert!(!text.contains("# EOF"), "the text format, not OpenMetrics:\n{text}");
    assert_eq!(
        text,
        encode(&snapshot(LastRun::Ran(ran()))),
        "the same state, the same file"
    );
}

#[test]
fn a_refused_run_says_why_and_describes_no_run() {
    let text = encode(&snapshot(LastRun::Refused(Refusal::ModeMismatch)));
    assert!(
        text.contains("licensync_last_run_refused{reason=\"mode_mismatch\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("licensync_last_run_success 0\n"), "{text}");
    assert!(text.contains("licensync_licenses{status=\"active\"} 2\n"), "{text}");
    assert!(!text.contains("licensync_run_"), "{text}");
}

#[test]
fn write_back_is_counted_by_status_once_it_queued_anything() {
    let mut s = snapshot(LastRun::Ran(ran()));
    assert!(!encode(&s).contains("licensync_stripe_writes"), "write-back never used");
    s.stripe_writes = WriteCounts {
        pending: 3,
        sent: 40,
        refused: 1,
        last_error: None,
    };
    let text = encode(&s);
    for line in [
        "licensync_stripe_writes{status=\"pending\"} 3",
        "licensync_stripe_writes{status=\"sent\"} 40",
        "licensync_stripe_writes{status=\"refused\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
}

#[test]
fn no_pending_email_is_age_zero_and_no_success_yet_leaves_the_timestamp_out() {
    let mut s = snapshot(LastRun::Ran(RunMetrics::default()));
    s.oldest_pending_email = None;
    s.last_success = None;
    let text = encode(&s);
    assert!(
        text.contains("licensync_email_oldest_pending_age_seconds 0\n"),
        "{text}"
    );
    assert!(!text.contains("licensync_last_success_timestamp_seconds"), "{text}");
    assert!(text.contains("licensync_last_run_success 0\n"), "{text}");
}

#[test]
fn several_accounts_share_each_family_and_label_every_sample_with_their_account() {
    let mut other = snapshot(LastRun::Ran(RunMetrics::default()));
    other.licenses.insert("active".into(), 9);
    other.last_success = None;
    let text = encode_all(vec![
        (Some("own".into()), snapshot(LastRun::Ran(ran()))),
        (Some("acct_B".into()), other),
    ]);
    for line in [
        "licensync_last_run_success{stripe_account=\"own\"} 1",
        "licensync_last_run_success{stripe_account=\"acct_B\"} 0",
        "licensync_licenses{stripe_account=\"own\",status=\"active\"} 2",
        "licensync_licenses{stripe_account=\"acct_B\",status=\"active\"} 9",
        "licensync_last_success_timestamp_seconds{stripe_account=\"own\"} 1799999000",
        "licensync_run_actions{stripe_account=\"own\",action=\"issued\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
    // One HELP and TYPE per family: a second one would make the whole file unreadable.
    for family in ["licensync_licenses", "licensync_last_run_success", "licensync_emails"] {
        let help = text
            .lines()
            .filter(|l| l.starts_with(&format!("# HELP {family} ")))
            .count();
        assert_eq!(help, 1, "{family}:\n{text}");
    }
    assert!(!text.contains("licensync_last_success_timestamp_seconds{stripe_account=\"acct_B\"}"));
}
