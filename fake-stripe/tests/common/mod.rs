//! A minimal HTTP client for the tests: real requests over loopback, as
//! licensync's Stripe client would send them.

#![allow(dead_code)] // each test binary uses a different part

use fake_stripe::FakeStripe;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

/// An answer read whole: status, headers, text and its JSON (`Null` when not JSON).
async fn read_reply(resp: hyper::Response<hyper::body::Incoming>) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        body,
    }
}

/// GET with an explicit `Authorization` header value (or none).
pub async fn get_with_auth(
    base: &str,
    auth: Option<&str>,
    path: &str,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    get_with_headers(base, &headers, path).await
}

/// GET with exactly these request headers.
pub async fn get_with_headers(
    base: &str,
    headers: &[(&str, &str)],
    path: &str,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = hyper::Request::get(format!("{base}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client.request(req.body(Empty::new()).unwrap()).await?;
    Ok(read_reply(resp).await)
}

/// GET as licensync's client reaches the fake's account: its key and, for
/// a connected account, its `Stripe-Account` header; panics on transport errors.
pub async fn try_get(fake: &FakeStripe, path: &str) -> Reply {
    let auth = format!("Bearer {}", fake.api_key());
    let account = fake.account_id();
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(account) = &account {
        headers.push(("stripe-account", account.as_str()));
    }
    get_with_headers(&fake.base_url(), &headers, path)
        .await
        .expect("request reaches the fake")
}

/// GET with the fake's key, expecting 200; returns the JSON body.
pub async fn get(fake: &FakeStripe, path: &str) -> Value {
    let reply = try_get(fake, path).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text);
    reply.body
}

/// The ids of a list response's `data`, in order.
pub fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// POST a form body with exactly these request headers.
pub async fn post_with_headers(
    base: &str,
    headers: &[(&str, &str)],
    path: &str,
    body: &str,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req =
        hyper::Request::post(format!("{base}{path}")).header("content-type", "application/x-www-form-urlencoded");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await?;
    Ok(read_reply(resp).await)
}

/// POST a form body as licensync's client reaches the fake's account (its
/// key and, for a connected account, `Stripe-Account`), with an optional
/// `Idempotency-Key`; panics on transport errors.
pub async fn try_post(fake: &FakeStripe, path: &str, body: &str, idempotency_key: Option<&str>) -> Reply {
    let auth = format!("Bearer {}", fake.api_key());
    let account = fake.account_id();
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(account) = &account {
        headers.push(("stripe-account", account.as_str()));
    }
    if let Some(key) = idempotency_key {
        headers.push(("idempotency-key", key));
    }
    post_with_headers(&fake.base_url(), &headers, path, body)
        .await
        .expect("request reaches the fake")
}
