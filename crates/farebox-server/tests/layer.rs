//! The paywall layer's HTTP behaviour, driven through a test rail so that every outcome a rail
//! can report (paid, refused, backend down, settlement failure) is exercised deterministically.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use farebox_core::auth::AuthChallenge;
use farebox_core::{
    Asset, Challenge, ControlAnswer, Money, PaymentError, PresentedCredential, Price, Rail,
    Receipt, Refusal, Resource, SettleTiming, Settlement, Token, Verdict, Verified,
};
use farebox_server::{MaintenanceError, Paid, Paywall, PaywallLayer, PricedRoute};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

/// A rail whose credential is `<Scheme> paid` and whose backend can be switched off.
#[derive(Clone)]
struct TestRail {
    name: &'static str,
    schemes: &'static [&'static str],
    asset: Asset,
    up: Arc<AtomicBool>,
    settle_ok: Arc<AtomicBool>,
    settled: Arc<AtomicUsize>,
    released: Arc<AtomicUsize>,
    maintained: Arc<AtomicUsize>,
}

impl TestRail {
    fn new(name: &'static str, schemes: &'static [&'static str], asset: Asset) -> Self {
        TestRail {
            name,
            schemes,
            asset,
            up: Arc::new(AtomicBool::new(true)),
            settle_ok: Arc::new(AtomicBool::new(true)),
            settled: Arc::default(),
            released: Arc::default(),
            maintained: Arc::default(),
        }
    }
    fn down(&self) -> PaymentError {
        PaymentError::unavailable(
            "test_backend_down",
            "the test backend is off",
            Duration::from_secs(7),
        )
    }
}

#[async_trait]
impl Rail for TestRail {
    fn name(&self) -> &'static str {
        self.name
    }
    fn auth_schemes(&self) -> &'static [&'static str] {
        self.schemes
    }
    /// Says which of its own refusals it answers in `x-refused: <rail>:<code>`.
    async fn challenge(
        &self,
        r: &Resource,
        refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError> {
        let Some(price) = r.price.in_asset(&self.asset) else {
            return Ok(None);
        };
        if !self.up.load(Ordering::SeqCst) {
            return Err(self.down());
        }
        let line = AuthChallenge::new(self.schemes[0]).param("amount", price.amount.to_string());
        let mut headers =
            vec![(HeaderName::from_static("x-test-rail"), HeaderValue::from_static(self.name))];
        if let Some(e) = Refusal::of(refusal, self.name) {
            let why = HeaderValue::from_str(&format!("{}:{}", self.name, e.code)).unwrap();
            headers.push((HeaderName::from_static("x-refused"), why));
        }
        Ok(Some(Challenge {
            www_authenticate: vec![line.to_header_value().unwrap()],
            headers,
            body_members: vec![(
                format!("{}_amount", self.name),
                Value::from(price.amount.to_string()),
            )],
        }))
    }
    async fn verify(
        self: Arc<Self>,
        r: &Resource,
        c: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(self.down());
        }
        let amount = r.price.in_asset(&self.asset).unwrap().clone();
        let paid = TestPaid((*self).clone());
        match c.auth.as_ref().and_then(|a| a.token.as_deref()) {
            Some("paid") => {
                Ok(Verdict::Payment(Verified::new(amount, Some("tester".into()), "ref-1", paid)))
            }
            Some(message @ ("close" | "topup")) => {
                Ok(Verified::new(amount, Some("tester".into()), message, paid).control())
            }
            _ => Err(PaymentError::invalid("test_bad_proof", "the proof is not 'paid'")),
        }
    }
    async fn maintain(&self) -> Result<(), PaymentError> {
        self.maintained.fetch_add(1, Ordering::SeqCst);
        if self.up.load(Ordering::SeqCst) { Ok(()) } else { Err(self.down()) }
    }
}

fn usdc() -> Asset {
    Asset::Token(Token {
        network: "eip155:31337".into(),
        address: "0x0000000000000000000000000000000000000001".into(),
        symbol: "USDC".into(),
        decimals: 6,
    })
}

struct Fixture {
    app: Router,
    sats: TestRail,
    usd: TestRail,
    handler_calls: Arc<AtomicUsize>,
}

fn fixture(timing: SettleTiming) -> Fixture {
    let sats = TestRail::new("sats", &["Sats"], Asset::Bitcoin);
    let usd = TestRail::new("usd", &["Usd"], usdc());
    let price = Price::any_of([Money::sats(10), Money::new(usdc(), 10_000)]).unwrap();
    let paywall = Paywall::builder()
        .rail(sats.clone())
        .rail(usd.clone())
        .route(PricedRoute::new(Some(Method::GET), "/paid/*", price).unwrap().settle(timing))
        .build()
        .unwrap();
    let handler_calls = Arc::new(AtomicUsize::new(0));
    let calls = handler_calls.clone();
    let calls2 = handler_calls.clone();
    let app = Router::new()
        .route("/free", get(|| async { "free" }))
        .route(
            "/paid/ok",
            get(move |Extension(paid): Extension<Paid>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { format!("paid via {} ({})", paid.rail, paid.amount) }
            }),
        )
        .route(
            "/paid/fails",
            get(move || {
                calls2.fetch_add(1, Ordering::SeqCst);
                async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }
            }),
        )
        .layer(PaywallLayer::new(paywall));
    Fixture { app, sats, usd, handler_calls }
}

async fn send(app: &Router, path: &str, auth: &[&str]) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(path);
    for a in auth {
        req = req.header("authorization", *a);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
    (parts.status, parts.headers, bytes)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("problem+json body")
}

#[tokio::test]
async fn unpriced_routes_pass_through_free() {
    let f = fixture(SettleTiming::AfterResponse);
    let (status, _, body) = send(&f.app, "/free", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"free");
}

#[tokio::test]
async fn one_402_carries_every_rails_challenge() {
    let f = fixture(SettleTiming::AfterResponse);
    let (status, headers, body) = send(&f.app, "/paid/ok", &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let lines: Vec<_> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(lines, ["Sats amount=\"10000\"", "Usd amount=\"10000\""]);
    assert_eq!(headers.get_all("x-test-rail").iter().count(), 2);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["access-control-expose-headers"], "www-authenticate, x-test-rail");
    let problem = json(&body);
    assert_eq!(problem["status"], 402);
    assert_eq!(problem["code"], "payment_required");
    assert_eq!(problem["sats_amount"], "10000");
    assert_eq!(problem["usd_amount"], "10000");
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_valid_credential_is_served_settled_and_receipted() {
    let f = fixture(SettleTiming::AfterResponse);
    let (status, headers, body) = send(&f.app, "/paid/ok", &["usd paid"]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"paid via usd (0.01 USDC)");
    assert_eq!(headers["x-test-receipt"], "ok");
    assert_eq!(headers["access-control-expose-headers"], "x-test-receipt");
    assert_eq!(f.usd.settled.load(Ordering::SeqCst), 1);
    assert_eq!(f.sats.settled.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_invalid_credential_gets_a_fresh_402_saying_why() {
    let f = fixture(SettleTiming::AfterResponse);
    let (status, headers, body) = send(&f.app, "/paid/ok", &["Sats forged"]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers.get_all("www-authenticate").iter().count(), 2);
    let problem = json(&body);
    assert_eq!(problem["code"], "test_bad_proof");
    assert_eq!(problem["type"], "https://farebox.dev/problems/test_bad_proof");
    assert_eq!(problem["detail"], "the proof is not 'paid'");
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn each_rail_is_told_of_its_own_refusals_only() {
    let f = fixture(SettleTiming::AfterResponse);
    let refused = |headers: &http::HeaderMap| -> Vec<String> {
        headers.get_all("x-refused").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    };
    let (status, headers, _) = send(&f.app, "/paid/ok", &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(refused(&headers).is_empty(), "no credential, no refusal");
    let (status, headers, _) = send(&f.app, "/paid/ok", &["Usd forged"]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(refused(&headers), ["usd:test_bad_proof"]);
    assert_eq!(headers.get_all("www-authenticate").iter().count(), 2, "both rails still offer");
    // A refusal at settlement is handed over too.
    f.sats.settle_ok.store(false, Ordering::SeqCst);
    let (status, headers, _) = send(&f.app, "/paid/ok", &["Sats paid"]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(refused(&headers), ["sats:settlement_failed"]);
}

#[tokio::test]
async fn a_rail_is_told_when_its_credential_could_not_even_be_read() {
    let f = fixture(SettleTiming::AfterResponse);
    let refused = |headers: &http::HeaderMap| -> Vec<String> {
        headers.get_all("x-refused").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    };
    // Too large for any rail to parse, but in the `Sats` scheme: the sats rail says why.
    let big = format!("Sats {}", "a".repeat(20_000));
    let (status, headers, _) = send(&f.app, "/paid/ok", &[&big]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(refused(&headers), ["sats:credential_too_large"]);
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn two_credentials_are_refused_with_400() {
    let f = fixture(SettleTiming::AfterResponse);
    let (status, headers, body) = send(&f.app, "/paid/ok", &["Sats paid", "Usd paid"]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(headers.get("www-authenticate").is_none());
    assert_eq!(json(&body)["code"], "multiple_credentials");
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn foreign_authorization_schemes_are_left_to_the_upstream() {
    let f = fixture(SettleTiming::AfterResponse);
    let (status, _, body) = send(&f.app, "/paid/ok", &["Bearer upstream-key", "Sats paid"]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn a_backend_that_is_down_fails_closed_with_503() {
    let f = fixture(SettleTiming::AfterResponse);
    f.sats.up.store(false, Ordering::SeqCst);
    let (status, headers, body) = send(&f.app, "/paid/ok", &["Sats paid"]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(json(&body)["code"], "test_backend_down");
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_rail_that_cannot_challenge_leaves_the_others_offered() {
    let f = fixture(SettleTiming::AfterResponse);
    f.sats.up.store(false, Ordering::SeqCst);
    let (status, headers, _) = send(&f.app, "/paid/ok", &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let lines: Vec<_> = headers.get_all("www-authenticate").iter().collect();
    assert_eq!(lines, ["Usd amount=\"10000\""]);

    f.usd.up.store(false, Ordering::SeqCst);
    let (status, headers, _) = send(&f.app, "/paid/ok", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no rail can offer: refuse, never free");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_failed_handler_is_not_charged() {
    let f = fixture(SettleTiming::AfterResponse);
    let (status, headers, _) = send(&f.app, "/paid/fails", &["Sats paid"]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(headers.get("x-test-receipt").is_none());
    assert_eq!(f.sats.settled.load(Ordering::SeqCst), 0);
    assert_eq!(f.sats.released.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_settlement_withholds_the_content() {
    let f = fixture(SettleTiming::AfterResponse);
    f.sats.settle_ok.store(false, Ordering::SeqCst);
    let (status, _, body) = send(&f.app, "/paid/ok", &["Sats paid"]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(!String::from_utf8_lossy(&body).contains("paid via"));
    assert_eq!(json(&body)["code"], "settlement_failed");
}

#[tokio::test]
async fn settle_before_serve_never_runs_the_handler_unpaid() {
    let f = fixture(SettleTiming::BeforeServe);
    f.sats.settle_ok.store(false, Ordering::SeqCst);
    let (status, _, _) = send(&f.app, "/paid/ok", &["Sats paid"]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0);

    f.sats.settle_ok.store(true, Ordering::SeqCst);
    let (status, headers, _) = send(&f.app, "/paid/ok", &["Sats paid"]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-test-receipt"], "ok");
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 1);
}

#[test]
fn overlapping_rails_are_a_configuration_error() {
    let a = TestRail::new("a", &["Same"], Asset::Bitcoin);
    let b = TestRail::new("b", &["same"], Asset::Bitcoin);
    let err = Paywall::builder().rail(a).rail(b).build().err().unwrap();
    assert!(err.to_string().contains("both claim"), "{err}");
    assert!(Paywall::builder().build().is_err());
}

#[tokio::test]
async fn non_canonical_paths_cannot_dodge_a_price() {
    let f = fixture(SettleTiming::AfterResponse);
    // Each of these names /paid/ok to some upstream or router, but does not literally match.
    for path in [
        "/./paid/ok",
        "/paid/./ok",
        "/x/../paid/ok",
        "//paid/ok",
        "/paid//ok",
        "/%2e/paid/ok",
        "/pa%69d/ok",
        "/paid%2Fok",
        "/paid\\ok",
    ] {
        let req = Request::get(path).body(Body::empty());
        let Ok(req) = req else { continue }; // the http crate itself refuses some of these
        let res = f.app.clone().oneshot(req).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::BAD_REQUEST,
            "{path} must be refused, not served free"
        );
    }
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn head_is_priced_like_get() {
    let f = fixture(SettleTiming::AfterResponse);
    let req = Request::head("/paid/ok").body(Body::empty()).unwrap();
    let res = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test]
async fn a_trailing_slash_does_not_dodge_an_exact_route() {
    let sats = TestRail::new("sats", &["Sats"], Asset::Bitcoin);
    let paywall = Paywall::builder()
        .rail(sats)
        .route(PricedRoute::new(Some(Method::GET), "/exact", Price::one(Money::sats(1))).unwrap())
        .build()
        .unwrap();
    let app = Router::new().fallback(|| async { "content" }).layer(PaywallLayer::new(paywall));
    let (status, _, _) = send(&app, "/exact/", &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test]
async fn oversized_or_binary_foreign_authorization_is_left_alone() {
    let f = fixture(SettleTiming::AfterResponse);
    let big = format!("Bearer {}", "a".repeat(20_000));
    let (status, _, body) = send(&f.app, "/paid/ok", &[&big, "Sats paid"]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn paid_responses_are_private_to_the_payer() {
    let f = fixture(SettleTiming::AfterResponse);
    let (status, headers, _) = send(&f.app, "/paid/ok", &["Sats paid"]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "private");
}

#[tokio::test]
async fn a_reservation_is_released_when_the_handler_errors_or_is_dropped() {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A service whose every call fails at the transport level (not with an HTTP status).
    #[derive(Clone)]
    struct Failing;
    impl tower::Service<Request<Body>> for Failing {
        type Response = http::Response<Body>;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            Box::pin(async { Err(std::io::Error::other("upstream connection reset")) })
        }
    }
    let _ = std::marker::PhantomData::<Infallible>;

    let sats = TestRail::new("sats", &["Sats"], Asset::Bitcoin);
    let paywall = Paywall::builder()
        .rail(sats.clone())
        .route(PricedRoute::new(None, "/*", Price::one(Money::sats(1))).unwrap())
        .build()
        .unwrap();
    let svc = tower::Layer::layer(&PaywallLayer::new(paywall), Failing);
    let req = Request::get("/x").header("authorization", "Sats paid").body(Body::empty()).unwrap();
    assert!(svc.oneshot(req).await.is_err());
    // The release runs on a spawned task when the call is abandoned; give it a moment.
    for _ in 0..50 {
        if sats.released.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sats.released.load(Ordering::SeqCst), 1);
    assert_eq!(sats.settled.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_errors_own_headers_reach_the_client() {
    /// A rail whose settlement outcome is unknown: it refuses, but says which transaction.
    #[derive(Clone)]
    struct Pending(TestRail);
    #[async_trait]
    impl Rail for Pending {
        fn name(&self) -> &'static str {
            "pending"
        }
        fn auth_schemes(&self) -> &'static [&'static str] {
            &["Sats"]
        }
        async fn challenge(
            &self,
            r: &Resource,
            refusal: Option<&Refusal<'_>>,
        ) -> Result<Option<Challenge>, PaymentError> {
            self.0.challenge(r, refusal).await
        }
        async fn verify(
            self: Arc<Self>,
            r: &Resource,
            c: &PresentedCredential,
        ) -> Result<Verdict, PaymentError> {
            let verified = Arc::new(self.0.clone()).verify(r, c).await?.into_verified();
            let Verified { amount, payer, reference, .. } = verified;
            Ok(Verdict::Payment(Verified::new(amount, payer, reference, NeverConfirmed)))
        }
    }
    struct NeverConfirmed;
    #[async_trait]
    impl Settlement for NeverConfirmed {
        async fn settle(
            self: Box<Self>,
            _: &Resource,
            _: Money,
            _: String,
        ) -> Result<Receipt, PaymentError> {
            Err(PaymentError::invalid("settlement_pending", "not confirmed yet")
                .with_header(HeaderName::from_static("x-tx"), HeaderValue::from_static("0xabc")))
        }
    }
    let paywall = Paywall::builder()
        .rail(Pending(TestRail::new("sats", &["Sats"], Asset::Bitcoin)))
        .route(PricedRoute::new(None, "/*", Price::one(Money::sats(1))).unwrap())
        .build()
        .unwrap();
    let app = Router::new().fallback(|| async { "content" }).layer(PaywallLayer::new(paywall));
    let (status, headers, body) = send(&app, "/x", &["Sats paid"]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers["x-tx"], "0xabc");
    assert_eq!(json(&body)["code"], "settlement_pending");
}

#[tokio::test]
async fn control_messages_are_answered_without_the_handler() {
    for timing in [SettleTiming::AfterResponse, SettleTiming::BeforeServe] {
        let f = fixture(timing);
        // A top-up names no answer: 204, with the receipt.
        let (status, headers, body) = send(&f.app, "/paid/ok", &["Sats topup"]).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(body.is_empty());
        assert_eq!(headers["x-test-receipt"], "ok");
        assert_eq!(headers["cache-control"], "private");
        // A close answers the rail's status and JSON body, also on a route whose handler fails.
        let (status, headers, body) = send(&f.app, "/paid/fails", &["Sats close"]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(json(&body)["status"], "closed");
        assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0, "{timing:?}");
        assert_eq!(f.sats.settled.load(Ordering::SeqCst), 2);
        assert_eq!(f.sats.released.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn a_control_message_whose_settlement_fails_gets_a_fresh_402() {
    let f = fixture(SettleTiming::AfterResponse);
    f.sats.settle_ok.store(false, Ordering::SeqCst);
    let (status, headers, body) = send(&f.app, "/paid/ok", &["Sats close"]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(json(&body)["code"], "settlement_failed");
    assert!(headers.get("x-test-receipt").is_none());
    assert_eq!(f.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn upkeep_runs_every_rail_even_when_one_fails() {
    let sats = TestRail::new("sats", &["Sats"], Asset::Bitcoin);
    let usd = TestRail::new("usd", &["Usd"], usdc());
    let paywall =
        Arc::new(Paywall::builder().rail(sats.clone()).rail(usd.clone()).build().unwrap());
    sats.up.store(false, Ordering::SeqCst); // its upkeep fails
    paywall.maintain().await;
    assert_eq!(
        (sats.maintained.load(Ordering::SeqCst), usd.maintained.load(Ordering::SeqCst)),
        (1, 1)
    );
    let task = paywall.spawn_maintenance(Duration::from_millis(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    assert!(usd.maintained.load(Ordering::SeqCst) >= 3, "runs periodically");
}

/// A payment [`TestRail`] verified.
struct TestPaid(TestRail);

#[async_trait]
impl Settlement for TestPaid {
    async fn settle(
        self: Box<Self>,
        _r: &Resource,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError> {
        if !self.0.settle_ok.load(Ordering::SeqCst) {
            return Err(PaymentError::invalid("settlement_failed", "the test settlement failed"));
        }
        self.0.settled.fetch_add(1, Ordering::SeqCst);
        let close = reference == "close";
        let receipt = Receipt::new(
            amount,
            reference,
            vec![(HeaderName::from_static("x-test-receipt"), HeaderValue::from_static("ok"))],
        );
        Ok(if close {
            receipt.with_answer(ControlAnswer {
                status: StatusCode::OK,
                body: Some(serde_json::json!({"status": "closed"})),
            })
        } else {
            receipt
        })
    }
    async fn release(self: Box<Self>, _r: &Resource) {
        self.0.released.fetch_add(1, Ordering::SeqCst);
    }
}

/// A rail that must be maintained within `deadline` (or cannot tell, when `None`).
struct DeadlineRail {
    deadline: Option<Duration>,
}

#[async_trait]
impl Rail for DeadlineRail {
    fn name(&self) -> &'static str {
        "escrowed"
    }
    async fn challenge(
        &self,
        _r: &Resource,
        _refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError> {
        Ok(None)
    }
    async fn verify(
        self: Arc<Self>,
        _r: &Resource,
        _c: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        Err(PaymentError::invalid("test_bad_proof", "never paid"))
    }
    async fn upkeep_deadline(&self) -> Result<Option<Duration>, PaymentError> {
        self.deadline.map(Some).ok_or_else(|| {
            PaymentError::unavailable("test_backend_down", "no deadline", Duration::from_secs(1))
        })
    }
}

#[tokio::test]
async fn upkeep_slower_than_a_rail_can_live_with_is_refused_at_start() {
    let sats = TestRail::new("sats", &["Sats"], Asset::Bitcoin);
    let deadline = Duration::from_secs(900);
    let paywall = Arc::new(
        Paywall::builder()
            .rail(sats.clone())
            .rail(DeadlineRail { deadline: Some(deadline) })
            .build()
            .unwrap(),
    );
    let too_slow = paywall.spawn_maintenance(Duration::from_secs(301)).await.unwrap_err();
    assert!(matches!(too_slow, MaintenanceError::TooSlow { rail: "escrowed", .. }), "{too_slow}");
    assert_eq!(
        paywall.spawn_maintenance(Duration::ZERO).await.unwrap_err(),
        MaintenanceError::ZeroInterval
    );
    // Nothing was started by the refusals.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sats.maintained.load(Ordering::SeqCst), 0);
    // A third of the deadline is fine.
    let task = paywall.spawn_maintenance(deadline / 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    assert_eq!(sats.maintained.load(Ordering::SeqCst), 1, "the first tick runs at once");
    // A rail that cannot tell its deadline (its backend is down) keeps upkeep from starting.
    let blind = Arc::new(Paywall::builder().rail(DeadlineRail { deadline: None }).build().unwrap());
    let unknown = blind.spawn_maintenance(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(unknown, MaintenanceError::Rail { rail: "escrowed", .. }));
}

/// How a lenient upstream reads a request target: percent-decoded, cut at `?`, `#` or NUL,
/// backslashes as slashes, Unicode lower case, fullwidth forms and look-alike slashes as ASCII,
/// `;` parameters and trailing dots and spaces dropped from each segment, dot segments resolved
/// and empty ones skipped (Tomcat, Spring, IIS and friends, all at once).
fn lenient_path(target: &str) -> String {
    let mut bytes = Vec::new();
    let raw = target.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        let hex = target.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(b)) => {
                bytes.push(b);
                i += 3;
            }
            (b, _) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    // Old IIS: the overlong encoding of '/' is a '/'.
    let mut fixed = Vec::with_capacity(bytes.len());
    let mut k = 0;
    while k < bytes.len() {
        if bytes[k..].starts_with(&[0xC0, 0xAF]) {
            fixed.push(b'/');
            k += 2;
        } else {
            fixed.push(bytes[k]);
            k += 1;
        }
    }
    let bytes = fixed;
    let text = String::from_utf8_lossy(&bytes).to_lowercase();
    let text: String = text
        .split(['?', '#', '\0'])
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| match c {
            '\\' | '\u{2215}' | '\u{2044}' => '/',
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap(),
            c => c,
        })
        .collect();
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment.split(';').next().unwrap() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.trim_end_matches(['.', ' '])),
        }
    }
    format!("/{}", out.join("/"))
}

/// A service that serves `/joke` and `/api/…` to whoever asks however they spell it, counting
/// what it served without a [`Paid`] extension.
#[derive(Clone)]
struct Lenient {
    unpaid: Arc<AtomicUsize>,
    paid: Arc<AtomicUsize>,
}

impl tower::Service<Request<Body>> for Lenient {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = lenient_path(request.uri().path());
        let method = ["x-http-method-override", "x-http-method"]
            .iter()
            .find_map(|h| request.headers().get(*h))
            .map(|v| v.to_str().unwrap().trim().to_ascii_uppercase())
            .unwrap_or_else(|| request.method().as_str().to_ascii_uppercase());
        let priced = (method == "GET" && path == "/joke")
            || path == "/api"
            || path.starts_with("/api/")
            || (method == "DELETE" && path == "/account");
        if priced {
            let counter = if request.extensions().get::<Paid>().is_some() {
                &self.paid
            } else {
                &self.unpaid
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
        std::future::ready(Ok(http::Response::new(Body::from(path))))
    }
}

#[tokio::test]
async fn no_spelling_of_a_priced_path_reaches_a_lenient_upstream_unpaid() {
    let sats = TestRail::new("sats", &["Sats"], Asset::Bitcoin);
    let price = || Price::one(Money::sats(5));
    let paywall = Paywall::builder()
        .rail(sats.clone())
        .route(PricedRoute::new(Some(Method::GET), "/joke", price()).unwrap())
        .route(PricedRoute::new(None, "/api/*", price()).unwrap())
        .route(PricedRoute::new(Some(Method::DELETE), "/account", price()).unwrap())
        .build()
        .unwrap();
    let upstream = Lenient { unpaid: Arc::default(), paid: Arc::default() };
    let svc = tower::Layer::layer(&PaywallLayer::new(paywall), upstream.clone());
    let call = |method: &str, target: &str, headers: &[(&str, &str)]| {
        let svc = svc.clone();
        let mut req = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Body::empty()).expect(target);
        async move { svc.oneshot(req).await.unwrap().status() }
    };

    // Spellings that are priced as the route they name: refused unpaid, served when paid.
    let priced = [
        ("GET", "/JOKE", None),
        ("GET", "/Joke/", None),
        ("GET", "/joke;x=1", None),
        ("GET", "/joke;jsessionid=ABC/", None),
        ("GET", "/joke%3Bx=1", None),
        ("GET", "/joke%3F.css", None),
        ("GET", "/joke/", None),
        ("GET", "http://localhost/joke", None),
        ("GET", "/api;v=2/data", None),
        ("GET", "/API/data", None),
        ("get", "/joke", None),
        ("delete", "/account", None),
        ("POST", "/account", Some(("x-http-method-override", "DELETE"))),
        ("POST", "/account", Some(("x-http-method", " delete "))),
    ];
    for (method, target, header) in priced {
        let headers: Vec<_> = header.into_iter().collect();
        let status = call(method, target, &headers).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{method} {target} {headers:?}");
        let mut paid = headers.clone();
        paid.push(("authorization", "Sats paid"));
        assert_eq!(call(method, target, &paid).await, StatusCode::OK, "{method} {target}");
    }
    // Spellings that are refused outright, paid or not.
    let refused = [
        "//joke",
        "/%6Aoke",
        "/%4Aoke",
        "/joke%2F",
        "/x%2F..%2Fjoke",
        "/joke.",
        "/joke%20",
        "/joke%00",
        "/joke%00.css",
        "/x/..;/joke",
        "/x/../joke",
        "/./joke",
        "/.;/joke",
        "/%2e/joke",
        "/jo%E2%84%AAe",
        "/%EF%BD%8Aoke",
        "/x%E2%88%95..%E2%88%95joke",
        "/joke%C0%AF",
        "/api//data",
        "/api/%2e%2e/api/data",
    ];
    for target in refused {
        let reads_as = lenient_path(target);
        let priced = reads_as == "/joke" || reads_as.starts_with("/api/");
        assert!(priced, "{target} reads as {reads_as}: no way around a price to test");
        let status = call("GET", target, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target}");
    }
    assert_eq!(upstream.unpaid.load(Ordering::SeqCst), 0, "served unpaid");
    assert_eq!(upstream.paid.load(Ordering::SeqCst), priced.len());
    // What is neither priced nor refused still passes through free.
    assert_eq!(call("GET", "/jokes", &[]).await, StatusCode::OK);
    assert_eq!(call("GET", "/caf%C3%A9", &[]).await, StatusCode::OK);
}

#[tokio::test]
async fn a_case_sensitive_route_leaves_other_cases_to_the_upstream() {
    let sats = TestRail::new("sats", &["Sats"], Asset::Bitcoin);
    let route = PricedRoute::new(Some(Method::GET), "/joke", Price::one(Money::sats(5)))
        .unwrap()
        .case_sensitive(true);
    let paywall = Paywall::builder().rail(sats).route(route).build().unwrap();
    let app = Router::new().fallback(|| async { "free" }).layer(PaywallLayer::new(paywall));
    assert_eq!(send(&app, "/JOKE", &[]).await.0, StatusCode::OK);
    assert_eq!(send(&app, "/joke;x", &[]).await.0, StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test]
async fn a_post_route_settles_before_its_handler_runs() {
    let sats = TestRail::new("sats", &["Sats"], Asset::Bitcoin);
    let paywall = Paywall::builder()
        .rail(sats.clone())
        .route(PricedRoute::new(None, "/order", Price::one(Money::sats(5))).unwrap())
        .build()
        .unwrap();
    // The handler records how many settlements it saw when it ran.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (settled, log) = (sats.settled.clone(), seen.clone());
    let app = Router::new()
        .fallback(move || {
            log.lock().unwrap().push(settled.load(Ordering::SeqCst));
            async { "ordered" }
        })
        .layer(PaywallLayer::new(paywall));
    let post = |auth: &'static str| {
        let app = app.clone();
        async move {
            let req = Request::post("/order").header("authorization", auth);
            app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap().status()
        }
    };
    assert_eq!(post("Sats paid").await, StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), [1], "the money moved before the order was taken");

    sats.settle_ok.store(false, Ordering::SeqCst);
    assert_eq!(post("Sats paid").await, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(seen.lock().unwrap().len(), 1, "a failed settlement never runs the handler");

    // GET on the same method-less route still settles after a successful answer.
    sats.settle_ok.store(true, Ordering::SeqCst);
    assert_eq!(send(&app, "/order", &["Sats paid"]).await.0, StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), [1, 1], "GET ran before its settlement");
    assert_eq!(sats.settled.load(Ordering::SeqCst), 2);
}
