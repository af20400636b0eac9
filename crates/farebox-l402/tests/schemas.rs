//! What the L402 rail emits validates against `specs/schemas/l402` (and its problem bodies
//! against `problem-details`), so the schemas cannot drift from the code: a real 402 from the
//! paywall on the dev Lightning network, its macaroon's caveats (as minted, with capabilities,
//! and attenuated by a holder), and the `L402-Receipt` of the paid request. The schema files
//! themselves and their examples are checked here too.

#[path = "../../../specs/schemas/harness.rs"]
mod harness;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use farebox_core::auth::parse_challenges;
use farebox_core::{Money, Price};
use farebox_l402::macaroon::{Macaroon, decode_base64};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail, attenuate, caveat, format_credential};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

const PATH: &str = "/v1/weather/today";

#[test]
fn l402_schema_files_and_examples() {
    harness::check_files("l402");
    harness::check_shared_defs();
}

fn app(wallet_network: &DevNetwork, capabilities: &[&str]) -> Router {
    let server = DevNode::random(wallet_network, 0);
    let mut config =
        L402Config::new("weather", Arc::new(DerivedRootKeys::new(&[0x42; 32]).unwrap()));
    config.capabilities = capabilities.iter().map(|c| c.to_string()).collect();
    let rail = L402Rail::new(config, Arc::new(server)).unwrap();
    let route = PricedRoute::new(Some(Method::GET), "/v1/weather/*", Price::one(Money::sats(10)));
    let paywall = Paywall::builder().rail(rail).route(route.unwrap()).build().unwrap();
    Router::new()
        .route(PATH, axum::routing::get(|| async { "sunny" }))
        .layer(PaywallLayer::new(paywall))
}

async fn send(app: &Router, auth: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::get(PATH);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Every `L402`/`LSAT` challenge of a response as the schema's object (lower-case names), after
/// checking it validates.
fn challenges(headers: &HeaderMap) -> Vec<Map<String, Value>> {
    let lines: Vec<&str> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    let parsed = parse_challenges(lines).unwrap();
    assert_eq!(parsed.len(), 2, "an LSAT and an L402 line");
    parsed
        .iter()
        .map(|c| {
            let params: Map<String, Value> = c
                .params
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone())))
                .collect();
            harness::assert_valid("l402/challenge", &Value::Object(params.clone()));
            params
        })
        .collect()
}

/// The caveats of a base64 macaroon, as the schema's array of strings.
fn caveats_of(macaroon_b64: &str) -> Value {
    let bytes = decode_base64(macaroon_b64).unwrap();
    let m = Macaroon::decode(&bytes).unwrap();
    m.caveats().map(|c| Value::String(String::from_utf8(c.id.to_vec()).unwrap())).collect()
}

#[tokio::test]
async fn a_paid_request_emits_only_schema_valid_objects() {
    let network = DevNetwork::new();
    let wallet = DevNode::random(&network, 1_000_000);
    let app = app(&network, &[]);
    let (status, headers, body) = send(&app, None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    harness::assert_valid("problem-details", &body);
    let params = challenges(&headers);
    let macaroon = params[1]["macaroon"].as_str().unwrap().to_string();
    assert_eq!(params[1]["token"], params[1]["macaroon"]);
    let minted = caveats_of(&macaroon);
    harness::assert_valid("l402/caveats", &minted);

    // Paid: the receipt validates.
    let paid = wallet.pay(params[1]["invoice"].as_str().unwrap(), 0).await.unwrap();
    let (status, headers, _) =
        send(&app, Some(&format_credential(&macaroon, &paid.preimage))).await;
    assert_eq!(status, StatusCode::OK);
    let receipt = URL_SAFE_NO_PAD.decode(headers["l402-receipt"].to_str().unwrap()).unwrap();
    let receipt: Value = serde_json::from_slice(&receipt).unwrap();
    harness::assert_valid("l402/receipt", &receipt);

    // A holder's attenuation with known caveats still fits the grammar; an unknown one does
    // not, and the server refuses that token with a problem body that validates.
    let narrowed = attenuate(
        &macaroon,
        &[
            caveat::method("GET"),
            caveat::valid_until("weather", 1),
            caveat::path("/v1/weather/oslo"),
            caveat::max_requests(3),
        ],
    )
    .unwrap();
    harness::assert_valid("l402/caveats", &caveats_of(&narrowed));
    let foreign = attenuate(&macaroon, &["tier=gold"]).unwrap();
    harness::assert_invalid("l402/caveats", &caveats_of(&foreign));
    let (status, headers, body) =
        send(&app, Some(&format_credential(&foreign, &paid.preimage))).await;
    assert_eq!((status, &body["code"]), (StatusCode::PAYMENT_REQUIRED, &json!("unknown_caveat")));
    harness::assert_valid("problem-details", &body);
    challenges(&headers);
}

#[tokio::test]
async fn caveats_with_capabilities_fit_the_grammar() {
    let network = DevNetwork::new();
    let app = app(&network, &["read", "write"]);
    let (_, headers, _) = send(&app, None).await;
    let params = challenges(&headers);
    let minted = caveats_of(params[0]["macaroon"].as_str().unwrap());
    assert!(minted.as_array().unwrap().contains(&json!("weather_capabilities=read,write")));
    harness::assert_valid("l402/caveats", &minted);
}

/// The schema's path-pattern grammar and the verifier's agree, caveat for caveat.
#[test]
fn path_caveat_grammar_matches_the_verifier() {
    let base = ["services=weather:0", "farebox_amount_msat=10000"];
    for pattern in [
        "/*",
        "/",
        "/weather/oslo",
        "/weather/*",
        "/weather/oslo/",
        "/a/b/c/*",
        "/s%C3%A3o/*",
        "/a.b/c",
        "/...x",
        "/.well-known/x",
        "/a:b@c/~x!$&'()+,=",
        "",
        "a",
        "//*",
        "/a//b",
        "/a/../b",
        "/a/./b",
        "/..",
        "/.",
        "/a/..",
        "/a/../*",
        "/a?b",
        "/a#b",
        "/a;b",
        "/a*",
        "/a/*/b",
        "/a b",
        "/a\\b",
        "/a/*/",
        "/a/./",
        "/a\"b",
        "/a<b>",
        "/\u{e9}",
    ] {
        let c = caveat::path(pattern);
        let accepted = caveat::parse(c.as_bytes()).is_ok();
        assert_eq!(accepted, caveat::check_path_pattern(pattern).is_ok(), "{pattern:?}");
        let list = json!([base[0], base[1], c]);
        assert_eq!(harness::errors("l402/caveats", &list).is_empty(), accepted, "{pattern:?}");
    }
    let long = caveat::path(&format!("/{}", "a".repeat(caveat::MAX_PATTERN_LEN - 1)));
    assert!(caveat::parse(long.as_bytes()).is_ok());
    assert!(harness::errors("l402/caveats", &json!([base[0], base[1], long])).is_empty());
    let too_long = format!("{long}a");
    assert!(caveat::parse(too_long.as_bytes()).is_err());
    assert!(!harness::errors("l402/caveats", &json!([base[0], base[1], too_long])).is_empty());
    // At most four request limits.
    let limits = |n| {
        let mut v = vec![json!(base[0]), json!(base[1])];
        v.extend((0..n).map(|i| json!(caveat::max_requests(i + 1))));
        Value::Array(v)
    };
    harness::assert_valid("l402/caveats", &limits(caveat::MAX_REQUEST_LIMITS as u64));
    harness::assert_invalid("l402/caveats", &limits(caveat::MAX_REQUEST_LIMITS as u64 + 1));
}
