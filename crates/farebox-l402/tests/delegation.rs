//! Delegation: a token bought on `/weather/*` is narrowed by its holder (path, method, expiry,
//! request count) and handed to a second client, which can do exactly what the caveats allow and
//! nothing more, on two server instances sharing one SQLite store; revocation by token id; and
//! what an attacker holding an attenuated token can and cannot do with its caveats.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request as AxumRequest;
use axum::http::StatusCode as AxumStatus;
use farebox_core::auth::parse_challenges;
use farebox_core::time::unix_now;
use farebox_core::{Money, Price};
use farebox_l402::identifier::Identifier;
use farebox_l402::macaroon::{Macaroon, decode_base64};
use farebox_l402::tokens::REVOCATION_STALENESS;
use farebox_l402::{
    DerivedRootKeys, L402Config, L402Rail, attenuate, caveat, format_credential, parse_challenge,
};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

const MASTER: [u8; 32] = [0x42; 32];

/// One server instance: its own rail and paywall over the shared store file, in front of the
/// shared upstream.
struct Instance {
    app: Router,
    rail: Arc<L402Rail>,
}

/// The API behind every instance: what it served (method and path), and whether
/// `/weather/flaky` has failed its first request yet.
#[derive(Default)]
struct Upstream {
    served: Mutex<Vec<(Method, String)>>,
    flaky_failed: AtomicBool,
}

/// An instance keeping its token state in `store_file` (none: no store at all).
async fn instance(store_file: Option<&Path>, node: &DevNode, upstream: &Arc<Upstream>) -> Instance {
    let mut config = L402Config::new("weather", Arc::new(DerivedRootKeys::new(&MASTER).unwrap()));
    if let Some(file) = store_file {
        config = config.with_store(Arc::new(farebox_store::SqliteStore::open(file).await.unwrap()));
    }
    let rail = Arc::new(L402Rail::new(config, Arc::new(node.clone())).unwrap());
    let paywall = Paywall::builder()
        .shared_rail(rail.clone())
        // Any method: the method caveat, not the route, is what keeps POST out.
        .route(PricedRoute::new(None, "/weather/*", Price::one(Money::sats(10))).unwrap())
        .build()
        .unwrap();
    let upstream = upstream.clone();
    let app = Router::new()
        .fallback(move |req: AxumRequest| {
            let upstream = upstream.clone();
            async move {
                let path = req.uri().path().to_string();
                // `/weather/flaky` fails the first time it is asked, then works.
                if path == "/weather/flaky" && !upstream.flaky_failed.swap(true, Ordering::SeqCst) {
                    return (AxumStatus::INTERNAL_SERVER_ERROR, "try again");
                }
                upstream.served.lock().unwrap().push((req.method().clone(), path));
                (AxumStatus::OK, "forecast")
            }
        })
        .layer(PaywallLayer::new(paywall));
    Instance { app, rail }
}

struct Fixture {
    _dir: tempfile::TempDir,
    a: Instance,
    b: Instance,
    wallet: DevNode,
    upstream: Arc<Upstream>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.sqlite");
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 1_000_000);
    let upstream = Arc::default();
    let a = instance(Some(&file), &server, &upstream).await;
    let b = instance(Some(&file), &server, &upstream).await;
    Fixture { _dir: dir, a, b, wallet, upstream }
}

async fn send(
    app: &Router,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, Option<String>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string));
    (status, code)
}

/// Buys a token on `/weather/*` (asking for `/weather/oslo`) and returns it with its preimage.
async fn buy_on(app: &Router, wallet: &DevNode) -> (String, [u8; 32]) {
    let req = Request::get("/weather/oslo").body(Body::empty()).unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    let lines: Vec<&str> =
        res.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    let challenge = parse_challenge(&parse_challenges(lines).unwrap()[1]).unwrap();
    let paid = wallet.pay(&challenge.invoice, 0).await.unwrap();
    (challenge.macaroon, paid.preimage)
}

async fn buy(f: &Fixture) -> (String, [u8; 32]) {
    buy_on(&f.a.app, &f.wallet).await
}

fn token_id(macaroon: &str) -> [u8; 32] {
    let bytes = decode_base64(macaroon).unwrap();
    Identifier::decode(Macaroon::decode(&bytes).unwrap().identifier()).unwrap().token_id
}

fn served(f: &Fixture) -> Vec<(Method, String)> {
    f.upstream.served.lock().unwrap().clone()
}

fn get(path: &str) -> (Method, String) {
    (Method::GET, path.to_string())
}

#[tokio::test]
async fn a_delegate_gets_exactly_what_the_caveats_allow() {
    let f = fixture().await;
    let (token, preimage) = buy(&f).await;
    let original = format_credential(&token, &preimage);
    let now = unix_now().unwrap();
    let narrowed = attenuate(
        &token,
        &[
            caveat::path("/weather/oslo"),
            caveat::method("GET"),
            caveat::valid_until("weather", now + 3600),
            caveat::max_requests(3),
        ],
    )
    .unwrap();
    // What the second client is handed.
    let delegate = format_credential(&narrowed, &preimage);

    // Outside the caveats: refused with a fresh 402, not served, and not counted.
    let (status, code) = send(&f.b.app, Method::GET, "/weather/rome", Some(&delegate)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("wrong_path")));
    let (status, code) = send(&f.a.app, Method::POST, "/weather/oslo", Some(&delegate)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("wrong_method")));
    let (status, _) = send(&f.a.app, Method::GET, "/weather/oslo/extra", Some(&delegate)).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(served(&f), []);

    // Inside: three requests, on either instance, then no more on any.
    for app in [&f.a.app, &f.b.app, &f.a.app] {
        let (status, _) = send(app, Method::GET, "/weather/oslo", Some(&delegate)).await;
        assert_eq!(status, StatusCode::OK);
    }
    for app in [&f.b.app, &f.a.app] {
        let (status, code) = send(app, Method::GET, "/weather/oslo", Some(&delegate)).await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::PAYMENT_REQUIRED, Some("request_limit_reached"))
        );
    }
    assert_eq!(served(&f), [get("/weather/oslo"), get("/weather/oslo"), get("/weather/oslo")]);

    // The delegate cannot reset its count by appending a looser limit of its own.
    let again = attenuate(&narrowed, &[caveat::max_requests(100)]).unwrap();
    let (status, code) =
        send(&f.b.app, Method::GET, "/weather/oslo", Some(&format_credential(&again, &preimage)))
            .await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::PAYMENT_REQUIRED, Some("request_limit_reached"))
    );

    // The holder's own token is untouched by the delegation: any path of the route, uncounted.
    for path in ["/weather/rome", "/weather/oslo", "/weather/rome", "/weather/oslo"] {
        let (status, _) = send(&f.b.app, Method::GET, path, Some(&original)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    assert_eq!(served(&f).len(), 7);
}

#[tokio::test]
async fn a_delegated_token_stops_at_its_expiry() {
    let f = fixture().await;
    let (token, preimage) = buy(&f).await;
    let until = unix_now().unwrap() + 1;
    let short =
        attenuate(&token, &[caveat::path("/weather/oslo"), caveat::valid_until("weather", until)])
            .unwrap();
    let short = format_credential(&short, &preimage);
    let (status, _) = send(&f.a.app, Method::GET, "/weather/oslo", Some(&short)).await;
    assert_eq!(status, StatusCode::OK);
    while unix_now().unwrap() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, code) = send(&f.a.app, Method::GET, "/weather/oslo", Some(&short)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("expired")));
    // The token it came from lives on (minted for an hour).
    let (status, _) =
        send(&f.a.app, Method::GET, "/weather/oslo", Some(&format_credential(&token, &preimage)))
            .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_requests_never_exceed_the_limit() {
    let f = fixture().await;
    let (token, preimage) = buy(&f).await;
    let limited = attenuate(&token, &[caveat::max_requests(3)]).unwrap();
    let limited = format_credential(&limited, &preimage);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let app = if i % 2 == 0 { f.a.app.clone() } else { f.b.app.clone() };
        let auth = limited.clone();
        tasks.push(tokio::spawn(async move {
            send(&app, Method::GET, "/weather/oslo", Some(&auth)).await.0
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::PAYMENT_REQUIRED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(served(&f).len(), 3);
}

#[tokio::test]
async fn a_request_the_upstream_fails_does_not_use_up_the_limit() {
    let f = fixture().await;
    let (token, preimage) = buy(&f).await;
    let once =
        attenuate(&token, &[caveat::path("/weather/flaky"), caveat::max_requests(1)]).unwrap();
    let once = format_credential(&once, &preimage);
    let (status, _) = send(&f.a.app, Method::GET, "/weather/flaky", Some(&once)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _) = send(&f.b.app, Method::GET, "/weather/flaky", Some(&once)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, code) = send(&f.a.app, Method::GET, "/weather/flaky", Some(&once)).await;
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::PAYMENT_REQUIRED, Some("request_limit_reached"))
    );
    assert_eq!(served(&f), [get("/weather/flaky")]);
}

#[tokio::test]
async fn a_revoked_token_id_is_refused_on_every_instance_sharing_the_store() {
    let f = fixture().await;
    let (token, preimage) = buy(&f).await;
    let original = format_credential(&token, &preimage);
    let delegated = format_credential(
        &attenuate(&token, &[caveat::path("/weather/oslo"), caveat::max_requests(5)]).unwrap(),
        &preimage,
    );
    // Instance B has seen the token recently (its cache says: not revoked).
    let (status, _) = send(&f.b.app, Method::GET, "/weather/oslo", Some(&original)).await;
    assert_eq!(status, StatusCode::OK);

    let id = token_id(&token);
    f.a.rail.revoke(&id).await.unwrap();
    assert!(f.a.rail.is_revoked(&id).await.unwrap());
    assert_eq!(f.a.rail.token_store().unwrap().revoked(10).await.unwrap(), [id]);

    // At once on the instance that revoked it, for the token and every attenuation of it; and at
    // once on B for a token B must count in the store anyway.
    for (app, credential) in [(&f.a.app, &original), (&f.a.app, &delegated), (&f.b.app, &delegated)]
    {
        let (status, code) = send(app, Method::GET, "/weather/oslo", Some(credential)).await;
        assert_eq!((status, code.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("revoked")));
    }
    // On B, from its cache, within the staleness bound.
    tokio::time::sleep(REVOCATION_STALENESS + Duration::from_millis(50)).await;
    let (status, code) = send(&f.b.app, Method::GET, "/weather/oslo", Some(&original)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("revoked")));
    assert_eq!(served(&f).len(), 1);

    // Another token bought by the same client is not affected.
    let (other, other_preimage) = buy(&f).await;
    let (status, _) = send(
        &f.b.app,
        Method::GET,
        "/weather/oslo",
        Some(&format_credential(&other, &other_preimage)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// Re-encodes `macaroon` with `edit` applied to its caveats and its signature kept.
fn tampered(
    macaroon: &str,
    edit: impl FnOnce(&mut Vec<farebox_l402::macaroon::OwnedCaveat>),
) -> String {
    let mut owned = Macaroon::decode(&decode_base64(macaroon).unwrap()).unwrap().to_owned();
    edit(&mut owned.caveats);
    owned.to_base64()
}

#[tokio::test]
async fn an_attacker_cannot_drop_reorder_or_widen_caveats() {
    let f = fixture().await;
    let (token, preimage) = buy(&f).await;
    let now = unix_now().unwrap();
    let narrowed = attenuate(
        &token,
        &[
            caveat::path("/weather/oslo"),
            caveat::max_requests(1),
            caveat::valid_until("weather", now + 600),
        ],
    )
    .unwrap();
    let n = Macaroon::decode(&decode_base64(&narrowed).unwrap()).unwrap().caveat_count();

    // Dropping the path caveat, the limit, or the last caveat; swapping two: the chain breaks.
    let dropped_path = tampered(&narrowed, |c| {
        c.remove(n - 3);
    });
    let dropped_limit = tampered(&narrowed, |c| {
        c.remove(n - 2);
    });
    let truncated = tampered(&narrowed, |c| {
        c.pop();
    });
    let reordered = tampered(&narrowed, |c| c.swap(n - 3, n - 1));
    for forged in [&dropped_path, &dropped_limit, &truncated, &reordered] {
        let (status, code) = send(
            &f.a.app,
            Method::GET,
            "/weather/rome",
            Some(&format_credential(forged, &preimage)),
        )
        .await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::PAYMENT_REQUIRED, Some("invalid_signature"))
        );
    }

    // Appending wider caveats is allowed, and widens nothing.
    let widened = attenuate(
        &narrowed,
        &[
            caveat::path("/weather/*"),
            caveat::path("/*"),
            caveat::valid_until("weather", now + 86_400),
        ],
    )
    .unwrap();
    let widened = format_credential(&widened, &preimage);
    let (status, code) = send(&f.a.app, Method::GET, "/weather/rome", Some(&widened)).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(matches!(code.as_deref(), Some("wrong_path")), "{code:?}");
    let expired = attenuate(&token, &[caveat::valid_until("weather", now - 1)]).unwrap();
    let revived = attenuate(&expired, &[caveat::valid_until("weather", now + 86_400)]).unwrap();
    let (status, code) =
        send(&f.a.app, Method::GET, "/weather/oslo", Some(&format_credential(&revived, &preimage)))
            .await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("expired")));
    // A path outside the route the token bought is refused even for a path it would match.
    let elsewhere = attenuate(&token, &[caveat::path("/*")]).unwrap();
    let (status, code) = send(
        &f.a.app,
        Method::GET,
        "/weather/oslo",
        Some(&format_credential(&elsewhere, &preimage)),
    )
    .await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("wrong_path")));
    assert_eq!(served(&f), []);
    // The narrowed token itself still serves its one request.
    let (status, _) = send(
        &f.a.app,
        Method::GET,
        "/weather/oslo",
        Some(&format_credential(&narrowed, &preimage)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_a_store_a_request_limit_is_refused_not_ignored() {
    let network = DevNetwork::new();
    let wallet = DevNode::random(&network, 1_000_000);
    let upstream = Arc::default();
    let storeless = instance(None, &DevNode::random(&network, 0), &upstream).await;
    let (token, preimage) = buy_on(&storeless.app, &wallet).await;
    let limited = attenuate(&token, &[caveat::max_requests(5)]).unwrap();
    let (status, code) = send(
        &storeless.app,
        Method::GET,
        "/weather/oslo",
        Some(&format_credential(&limited, &preimage)),
    )
    .await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYMENT_REQUIRED, Some("unknown_caveat")));
    assert!(storeless.rail.revoke(&token_id(&token)).await.is_err());
    let original = format_credential(&token, &preimage);
    let (status, _) = send(&storeless.app, Method::GET, "/weather/oslo", Some(&original)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.served.lock().unwrap().len(), 1);
}
