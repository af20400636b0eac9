//! L402 behind farebox-server's paywall, over HTTP semantics: what a client sees when its token
//! is refused (a fresh 402 it can pay, and a problem+json body saying why), and the receipt
//! when it is accepted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine as _;
use common::hex_field;
use farebox_core::auth::parse_challenges;
use farebox_core::time::unix_now;
use farebox_core::{Money, Price};
use farebox_l402::macaroon::decode_base64;
use farebox_l402::{
    DerivedRootKeys, L402Config, L402Rail, L402Receipt, format_credential, parse_challenge,
};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend, parse_invoice};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

const MASTER: [u8; 32] = [0x42; 32];
const PATH: &str = "/v1/weather/today";

struct Fixture {
    app: Router,
    rail: Arc<L402Rail>,
    paywall: Arc<Paywall>,
    wallet: DevNode,
    served: Arc<AtomicUsize>,
}

fn l402_rail(service: &str, node: &DevNode) -> Arc<L402Rail> {
    let config = L402Config::new(service, Arc::new(DerivedRootKeys::new(&MASTER).unwrap()));
    Arc::new(L402Rail::new(config, Arc::new(node.clone())).unwrap())
}

fn fixture() -> Fixture {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 1_000_000);
    let rail = l402_rail("weather", &server);
    let paywall = Arc::new(
        Paywall::builder()
            .shared_rail(rail.clone())
            .route(
                PricedRoute::new(Some(Method::GET), "/v1/weather/*", Price::one(Money::sats(10)))
                    .unwrap(),
            )
            .build()
            .unwrap(),
    );
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let app = Router::new()
        .route(
            PATH,
            get(move || {
                count.fetch_add(1, Ordering::SeqCst);
                async { "sunny" }
            }),
        )
        .layer(PaywallLayer::shared(paywall.clone()));
    Fixture { app, rail, paywall, wallet, served }
}

async fn send(app: &Router, auth: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::get(PATH);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
    (parts.status, parts.headers, bytes)
}

/// The macaroon and invoice of a 402, after checking it has the `LSAT` and `L402` lines with
/// the same token and invoice.
fn challenge_of(headers: &HeaderMap) -> (String, String) {
    let lines: Vec<&str> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("LSAT macaroon=\""), "{}", lines[0]);
    assert!(lines[1].starts_with("L402 macaroon=\""), "{}", lines[1]);
    let parsed = parse_challenges(lines.iter().copied()).unwrap();
    let (lsat, l402) = (parse_challenge(&parsed[0]).unwrap(), parse_challenge(&parsed[1]).unwrap());
    assert_eq!(lsat, l402);
    // The invoice pays the route's price and is the one the macaroon commits to.
    let invoice = parse_invoice(&l402.invoice).unwrap();
    assert_eq!(invoice.amount_msat, Some(10_000));
    assert_eq!(invoice.payment_hash, l402.payment_hash);
    (l402.macaroon, l402.invoice)
}

/// Pays the first 402 and returns a valid token and its preimage.
async fn paid_token(f: &Fixture) -> (String, [u8; 32]) {
    let (status, headers, _) = send(&f.app, None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let (macaroon, invoice) = challenge_of(&headers);
    let paid = f.wallet.pay(&invoice, 0).await.unwrap();
    (macaroon, paid.preimage)
}

/// Sends `credential` and checks the refusal a client gets: 402, fresh `LSAT` and `L402`
/// challenges (not the token that was refused), problem+json with `code`.
async fn refused_with(f: &Fixture, credential: &str, refused_token: &str, code: &str) {
    let (status, headers, body) = send(&f.app, Some(credential)).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{code}: {}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/problem+json", "{code}");
    assert_eq!(headers["cache-control"], "no-store", "{code}");
    assert!(headers.get("l402-receipt").is_none(), "{code}");
    let (fresh, _) = challenge_of(&headers);
    assert_ne!(fresh, refused_token, "{code}: the 402 must carry a fresh token");
    let problem: Value = serde_json::from_slice(&body).expect("problem+json body");
    assert_eq!(problem["status"], 402, "{code}");
    assert_eq!(problem["code"], code, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{problem}");
}

#[tokio::test]
async fn refused_tokens_get_a_fresh_402_saying_why() {
    let f = fixture();
    let (token, preimage) = paid_token(&f).await;
    let hash = farebox_lightning::sha256(&preimage);
    let resource = f.paywall.resource_for(&Method::GET, PATH).unwrap();

    // Expired: minted two hours ago with the default one-hour lifetime, for a paid invoice.
    let expired =
        f.rail.verifier().mint_token(hash, 10_000, &resource, unix_now().unwrap() - 7200).unwrap();
    let expired = expired.to_base64();
    refused_with(&f, &format_credential(&expired, &preimage), &expired, "expired").await;

    // Tampered: one bit of the signature flipped.
    let mut bytes = decode_base64(&token).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    let tampered = base64::engine::general_purpose::STANDARD.encode(&bytes);
    refused_with(&f, &format_credential(&tampered, &preimage), &tampered, "invalid_signature")
        .await;

    // Wrong service: a token another service signed with the same keys, for a paid invoice.
    let other = l402_rail("maps", &f.wallet);
    let foreign = other.verifier().mint_token(hash, 10_000, &resource, unix_now().unwrap());
    let foreign = foreign.unwrap().to_base64();
    refused_with(&f, &format_credential(&foreign, &preimage), &foreign, "wrong_service").await;

    // Wrong preimage: the real token with a preimage that is not the invoice's.
    refused_with(&f, &format_credential(&token, &[0x21; 32]), &token, "invalid_preimage").await;

    // The legacy scheme name is refused the same way.
    let lsat = format!("LSAT {tampered}:{}", hex::encode(preimage));
    refused_with(&f, &lsat, &tampered, "invalid_signature").await;

    assert_eq!(f.served.load(Ordering::SeqCst), 0, "no refused request reached the handler");

    // The real token and preimage are served, with a receipt the client can read.
    let (status, headers, body) = send(&f.app, Some(&format_credential(&token, &preimage))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"sunny");
    assert_eq!(f.served.load(Ordering::SeqCst), 1);
    let receipt = L402Receipt::decode(headers["l402-receipt"].to_str().unwrap()).unwrap();
    assert_eq!(receipt.payment_hash, hash);
    assert_eq!(receipt.amount_msat, 10_000);
    assert_eq!(receipt.service, "weather");
    // Browser clients may read it.
    let exposed = headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.split(", ").any(|h| h == "l402-receipt"), "{exposed}");
}

#[tokio::test]
async fn malformed_credential_is_a_402_too() {
    let f = fixture();
    let pre = hex_field(&common::vectors(), "preimage");
    for (credential, code) in [
        (format!("L402 AAAA:{}", hex::encode(&pre)), "malformed_credential"),
        ("L402 not-even-a-colon".to_string(), "malformed_credential"),
    ] {
        refused_with(&f, &credential, "AAAA", code).await;
    }
    assert_eq!(f.served.load(Ordering::SeqCst), 0);
}
