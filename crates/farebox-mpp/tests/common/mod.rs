//! What the MPP rail's HTTP tests share: sending a request through the app, reading receipts,
//! and re-issuing a challenge that has already expired.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use farebox_mpp::{Challenge, ChallengeKey, ChallengeParams, PaymentReceipt, time};
use http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

pub const SECRET: &[u8] = b"an-mpp-test-secret-of-at-least-32-bytes!";

/// GETs `path` with the given `Authorization` values: status, headers, and the body as JSON
/// (or as a JSON string when it is not JSON).
pub async fn get(app: &Router, path: &str, auth: &[&str]) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::get(path);
    for a in auth {
        req = req.header("authorization", *a);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (parts.status, parts.headers, json)
}

/// The `Payment-Receipt` of a response.
pub fn receipt(headers: &HeaderMap) -> PaymentReceipt {
    PaymentReceipt::decode(headers["payment-receipt"].to_str().unwrap()).unwrap()
}

/// Every `Payment` challenge of a response.
pub fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    let values: Vec<&str> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    farebox_mpp::parse_www_authenticate(values).unwrap()
}

/// `c` as this server (key [`SECRET`]) would have issued it `secs_ago` seconds in the past,
/// already expired.
pub fn expired(c: &Challenge, secs_ago: u64) -> Challenge {
    ChallengeKey::new(SECRET)
        .unwrap()
        .issue(ChallengeParams {
            realm: c.realm.clone(),
            method: c.method.clone(),
            intent: c.intent.clone(),
            request: c.request.clone(),
            expires: Some(time::format(time::unix_now().unwrap() - secs_ago)),
            description: None,
            digest: None,
            opaque: c.opaque_map().unwrap(),
            header: None,
        })
        .unwrap()
}
