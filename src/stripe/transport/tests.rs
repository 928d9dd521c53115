use backon::BackoffBuilder;

use super::*;
use crate::stripe::ApiKey;

fn transport(max_retries: u32) -> Transport {
    let mut config = StripeConfig::new(ApiKey::parse("sk_test_0123456789abcdefghij").unwrap());
    config.max_retries = max_retries;
    config.initial_backoff = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(800);
    Transport::new(&config).unwrap()
}

#[test]
fn endpoints_are_grouped_by_their_first_path_segment() {
    assert_eq!(endpoint_of("/subscriptions"), "/v1/subscriptions");
    assert_eq!(endpoint_of("/subscriptions/sub_1"), "/v1/subscriptions");
    assert_eq!(endpoint_of("/checkout/sessions/cs_1/line_items"), "/v1/checkout");
}

#[test]
fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
    let t = transport(5);
    assert_eq!(t.backoff().build().count(), 5, "one wait per retry");
    for _ in 0..50 {
        let waits: Vec<Duration> = t.backoff().with_max_times(31).build().collect();
        let first = waits[0];
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        let third = waits[2];
        assert!(
            third >= Duration::from_millis(200) && third <= Duration::from_millis(400),
            "{third:?}"
        );
        assert!(waits[30] <= Duration::from_millis(800));
    }
}

#[test]
fn retry_after_is_read_in_seconds_and_bounded() {
    let mut headers = HeaderMap::new();
    assert_eq!(retry_after(&headers), None);
    headers.insert("retry-after", HeaderValue::from_static("2"));
    assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
    headers.insert("retry-after", HeaderValue::from_static("3600"));
    assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
    headers.insert("retry-after", HeaderValue::from_static("soon"));
    assert_eq!(retry_after(&headers), None);
}

#[test]
fn the_error_envelope_is_read_and_any_key_in_it_masked() {
    let env = parse_envelope(
        br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such key: sk_live_0123456789abcdefWXYZ"}}"#,
    );
    assert_eq!(env.error_type.as_deref(), Some("invalid_request_error"));
    assert_eq!(env.code.as_deref(), Some("resource_missing"));
    let message = env.message.unwrap();
    assert!(!message.contains("0123456789abcdef"), "{message}");
}

#[test]
fn a_2xx_body_is_used_only_when_it_is_one_json_object() {
    assert!(is_json_object(br#"{"object":"list","data":[]}"#));
    assert!(is_json_object(b" \n{\"id\":\"sub_1\"}\r\n"));
    for not in [
        &b"<!DOCTYPE html><html><body>Sign in to the network</body></html>"[..],
        b"",
        b"   ",
        b"OK",
        br#"{"object":"list","data":[{"id":"sub_1","#,
        br#"[{"id":"sub_1"}]"#,
    ] {
        assert!(!is_json_object(not), "{}", String::from_utf8_lossy(not));
    }
}
