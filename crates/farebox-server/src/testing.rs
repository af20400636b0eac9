//! The rail contract kit (feature `testing`): what every [`Rail`] must do behind the paywall,
//! checked in-process, whatever the rail.
//!
//! A rail's author describes the rail under test with a [`RailHarness`] (the rail, a price it
//! charges, how a client pays its 402, how to cut its backend off) and calls
//! [`assert_rail_contract`] from a test. The kit puts the rail behind a real [`Paywall`] in front
//! of a handler that counts what it serves, and checks each clause of the contract as a client
//! would notice it: statuses, what was served, and whether the same proof works again.
//!
//! | clause | what must hold |
//! |---|---|
//! | `challenges_when_priced` | a priced request without a credential is a 402 carrying the rail's challenge; a price in an asset the rail cannot charge is not offered |
//! | `refuses_garbage` | malformed credentials in every scheme and header the rail claims are refused with a typed error (400 or 402, problem+json), never served, never a 5xx |
//! | `pays_the_price_asked` | a proof paid for a route is refused on a route that costs twice as much, and nothing is served |
//! | `accepts_a_proof_once` | a paid proof is served; a single-use proof replayed, or raced by eight copies, is served once |
//! | `releases_on_handler_failure` | a single-use proof whose request failed in the handler buys the retry (not applicable to a reusable token, which would be served again anyway) |
//! | `never_serves_on_settle_failure` | when settling fails (the backend lost while the handler ran), the handler's answer is not delivered |
//! | `outage_is_503` | with the backend down, a new request is a 402 or a 503 with `Retry-After`, never served; a paid retry is a 503 with `Retry-After` and is not served (unless the proof is checked by math alone), and the proof still works once the backend is back |
//!
//! The same kit runs against L402, x402 and MPP in their crates' `tests/contract.rs`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use bytes::Bytes;
use farebox_core::auth::parse_credential;
use farebox_core::{Asset, ErrorKind, Money, PresentedCredential, Price, Rail, Resource, Token};
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use tower::ServiceExt as _;

use crate::{Paywall, PaywallLayer, PricedRoute};

/// What the handler answers when it serves.
const SERVED: &str = "served by the contract handler";
/// The priced route every clause requests under.
const ROUTE: &str = "/contract/*";
/// A route at twice the price, for `pays_the_price_asked`.
const DEAR_ROUTE: &str = "/dear/*";
/// How many copies of one proof race in `accepts_a_proof_once`.
const RACERS: usize = 8;

/// A response as the kit (and a client) sees it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Exchange {
    /// The response's `WWW-Authenticate` field values (those that are text), in order.
    pub fn challenge_lines(&self) -> impl Iterator<Item = &str> {
        self.headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok())
    }
}

/// A proof in one header, as [`RailHarness::pay`] returns it: `value` in `header`.
pub fn proof(header: HeaderName, value: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let value =
        HeaderValue::from_str(value).map_err(|e| format!("the proof is not a header: {e}"))?;
    Ok(vec![(header, value)])
}

/// The rail under test and what the kit cannot know about it.
#[async_trait]
pub trait RailHarness: Send + Sync + 'static {
    /// The rail, as the server holds it.
    fn rail(&self) -> Arc<dyn Rail>;

    /// A price the rail charges.
    fn price(&self) -> Price;

    /// Pays the 402 `required` that `url` answered, as a client of this rail does, and returns
    /// the headers to retry the request with.
    async fn pay(
        &self,
        url: &str,
        required: &Exchange,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String>;

    /// Whether one proof buys one request (`true`: a signed transfer, a charge) or is a token the
    /// rail honours again for the route (`false`: an L402 token).
    fn single_use(&self) -> bool {
        true
    }

    /// Whether verifying a proof needs the backend (`true`: a facilitator simulates the
    /// transfer, a node that leaks preimages confirms the invoice paid). `false` when the proof
    /// is checked by math alone (a preimage of a node that only reveals it on payment): such a
    /// proof is served through an outage, and only new challenges fail.
    fn verifies_on_backend(&self) -> bool {
        true
    }

    /// Whether settling reaches the backend (sending a transfer), so that a backend lost while
    /// the handler runs makes settlement fail. `false` for final proofs (a preimage).
    fn settles_on_backend(&self) -> bool {
        false
    }

    /// Cuts the rail's backend (its node, its facilitator) off, or restores it.
    async fn set_backend(&self, up: bool);
}

/// How one clause came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// The clause does not apply to this rail, and why.
    NotApplicable(&'static str),
}

/// One clause of the contract and its outcome.
#[derive(Debug, Clone)]
pub struct Clause {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass => write!(f, "pass  {}", self.name),
            Outcome::Fail(why) => write!(f, "FAIL  {}: {why}", self.name),
            Outcome::NotApplicable(why) => write!(f, "n/a   {}: {why}", self.name),
        }
    }
}

/// Checks every clause against `harness` and panics, listing them all, if any failed.
pub async fn assert_rail_contract(harness: Arc<dyn RailHarness>) {
    let clauses = check_rail(harness).await;
    let report: Vec<String> = clauses.iter().map(ToString::to_string).collect();
    assert!(
        clauses.iter().all(|c| !matches!(c.outcome, Outcome::Fail(_))),
        "the rail breaks its contract:\n{}",
        report.join("\n")
    );
}

/// Checks every clause against `harness`, in order; the backend is restored after each.
pub async fn check_rail(harness: Arc<dyn RailHarness>) -> Vec<Clause> {
    let kit = Kit::new(harness);
    let mut clauses = Vec::new();
    for name in CLAUSES {
        kit.reset().await;
        let outcome = match name {
            "challenges_when_priced" => outcome(kit.check_challenges().await),
            "refuses_garbage" => outcome(kit.check_garbage().await),
            "pays_the_price_asked" => outcome(kit.check_underpayment().await),
            "accepts_a_proof_once" => outcome(kit.check_once().await),
            "releases_on_handler_failure" if !kit.harness.single_use() => Outcome::NotApplicable(
                "a reusable token is served again whether or not anything was given back",
            ),
            "releases_on_handler_failure" => outcome(kit.check_release().await),
            "never_serves_on_settle_failure" if !kit.harness.settles_on_backend() => {
                Outcome::NotApplicable("the proof is final; settling needs no backend")
            }
            "never_serves_on_settle_failure" => outcome(kit.check_settle_failure().await),
            "outage_is_503" => outcome(kit.check_outage().await),
            other => Outcome::Fail(format!("the kit has no check for the clause `{other}`")),
        };
        clauses.push(Clause { name, outcome });
    }
    kit.reset().await;
    clauses
}

/// The clauses, in the order they are checked (see the module docs).
pub const CLAUSES: [&str; 7] = [
    "challenges_when_priced",
    "refuses_garbage",
    "pays_the_price_asked",
    "accepts_a_proof_once",
    "releases_on_handler_failure",
    "never_serves_on_settle_failure",
    "outage_is_503",
];

/// What the handler does when a paid request reaches it.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Handler {
    Serve = 0,
    Fail = 1,
    /// Cuts the backend off, then serves: settlement after it meets the outage.
    CutBackendThenServe = 2,
}

struct Counter {
    served: AtomicUsize,
    mode: AtomicU8,
    harness: Arc<dyn RailHarness>,
}

struct Kit {
    harness: Arc<dyn RailHarness>,
    counter: Arc<Counter>,
    app: Router,
    /// Numbers the paths, so that each request is its own.
    next: AtomicUsize,
}

/// A clause's result: `Err` is the failure, stated for the report.
type Checked = Result<(), String>;

fn outcome(checked: Checked) -> Outcome {
    checked.map_or_else(Outcome::Fail, |()| Outcome::Pass)
}

impl Kit {
    fn new(harness: Arc<dyn RailHarness>) -> Self {
        let price = harness.price();
        let dear = Price::any_of(
            price.offers().iter().map(|m| Money::new(m.asset.clone(), m.amount.saturating_mul(2))),
        )
        .expect("a price has an amount");
        let paywall = Paywall::builder()
            .shared_rail(harness.rail())
            .route(PricedRoute::new(None, ROUTE, price).expect("the contract route is valid"))
            .route(PricedRoute::new(None, DEAR_ROUTE, dear).expect("the dear route is valid"))
            .build()
            .expect("a paywall of one rail and two routes");
        let counter = Arc::new(Counter {
            served: AtomicUsize::new(0),
            mode: AtomicU8::new(Handler::Serve as u8),
            harness: harness.clone(),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(counter.clone())
            .layer(PaywallLayer::new(paywall));
        Kit { harness, counter, app, next: AtomicUsize::new(0) }
    }

    async fn reset(&self) {
        self.harness.set_backend(true).await;
        self.handler(Handler::Serve);
    }

    fn handler(&self, mode: Handler) {
        self.counter.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn served(&self) -> usize {
        self.counter.served.load(Ordering::SeqCst)
    }

    fn path(&self) -> String {
        format!("/contract/{}", self.next.fetch_add(1, Ordering::SeqCst))
    }

    fn resource(&self, price: Price) -> Resource {
        Resource {
            method: Method::GET,
            path: "/contract/direct".into(),
            route: ROUTE.into(),
            price,
            description: None,
            accept_payment: None,
        }
    }

    async fn send(&self, path: &str, headers: &[(HeaderName, HeaderValue)]) -> Exchange {
        send(self.app.clone(), path, headers).await
    }

    /// A 402 for a fresh path, paid: the path and the proof's headers.
    async fn paid(&self) -> Result<(String, Vec<(HeaderName, HeaderValue)>), String> {
        let path = self.path();
        let required = self.send(&path, &[]).await;
        if required.status != StatusCode::PAYMENT_REQUIRED {
            return Err(format!("{path} without a credential answered {}", required.status));
        }
        let proof = self
            .harness
            .pay(&format!("http://contract.test{path}"), &required)
            .await
            .map_err(|e| format!("the harness could not pay the 402 of {path}: {e}"))?;
        Ok((path, proof))
    }

    async fn check_challenges(&self) -> Checked {
        let answer = self.send(&self.path(), &[]).await;
        if answer.status != StatusCode::PAYMENT_REQUIRED {
            return Err(format!("a priced request without a credential got {}", answer.status));
        }
        if self.served() != 0 {
            return Err("the handler ran for a request without a credential".into());
        }
        is_problem(&answer)?;
        let rail = self.harness.rail();
        let resource = self.resource(self.harness.price());
        let own = rail
            .challenge(&resource, None)
            .await
            .map_err(|e| format!("the rail's own challenge failed: {e}"))?
            .ok_or("the rail offers nothing for the harness's price")?;
        let schemes: Vec<String> =
            answer.challenge_lines().map(|v| scheme_of(v).to_ascii_lowercase()).collect();
        for line in &own.www_authenticate {
            let scheme = scheme_of(line.to_str().unwrap_or_default()).to_ascii_lowercase();
            if !schemes.contains(&scheme) {
                return Err(format!("the 402 carries no `{scheme}` WWW-Authenticate line"));
            }
        }
        for (name, _) in &own.headers {
            if !answer.headers.contains_key(name) {
                return Err(format!("the 402 lacks the rail's `{name}` header"));
            }
        }
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        for (member, _) in &own.body_members {
            if body.get(member).is_none() {
                return Err(format!("the 402's body lacks the rail's `{member}` member"));
            }
        }
        let foreign = Price::one(Money::new(Asset::Token(foreign_token()), 1));
        match rail.challenge(&self.resource(foreign), None).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("the rail offers to charge an asset it cannot settle".into()),
            Err(e) => Err(format!("a price in a foreign asset is an error, not `None`: {e}")),
        }
    }

    async fn check_garbage(&self) -> Checked {
        let rail = self.harness.rail();
        let oversized = "A".repeat(farebox_core::rail::MAX_CREDENTIAL_LEN + 1);
        let mut cases: Vec<(HeaderName, String)> = Vec::new();
        for scheme in rail.auth_schemes() {
            for junk in ["", "x", "AAAA:BBBB", "eyJ9", "=,=,=", oversized.as_str()] {
                cases.push((AUTHORIZATION, format!("{scheme} {junk}").trim_end().to_string()));
            }
        }
        for header in rail.credential_headers() {
            for junk in ["x", "eyJ9", "e30", "AAAA:BBBB", oversized.as_str()] {
                cases.push((header.clone(), junk.to_string()));
            }
        }
        if cases.is_empty() {
            return Err("the rail claims no auth scheme and no credential header".into());
        }
        let resource = self.resource(self.harness.price());
        for (header, value) in cases {
            let shown = format!("{header}: {}", shorten(&value));
            let Ok(header_value) = HeaderValue::from_str(&value) else { continue };
            let before = self.served();
            let answer = self.send(&self.path(), &[(header.clone(), header_value)]).await;
            if self.served() != before {
                return Err(format!("`{shown}` was served"));
            }
            if ![StatusCode::BAD_REQUEST, StatusCode::PAYMENT_REQUIRED].contains(&answer.status) {
                return Err(format!("`{shown}` got {}, not 400 or 402", answer.status));
            }
            is_problem(&answer).map_err(|e| format!("`{shown}`: {e}"))?;
            if value.len() > farebox_core::rail::MAX_CREDENTIAL_LEN {
                continue; // the core refuses it before the rail sees it
            }
            let presented = PresentedCredential {
                auth: (header == AUTHORIZATION).then(|| parse_credential(&value).ok()).flatten(),
                header,
                value,
            };
            match rail.clone().verify(&resource, &presented).await {
                Ok(_) => return Err(format!("`{shown}` verified")),
                Err(e)
                    if matches!(e.kind, ErrorKind::InvalidCredential | ErrorKind::BadRequest) => {}
                Err(e) => {
                    return Err(format!(
                        "`{shown}` refused as {:?} ({}), not invalid",
                        e.kind, e.code
                    ));
                }
            }
        }
        Ok(())
    }

    async fn check_underpayment(&self) -> Checked {
        let (path, proof) = self.paid().await?;
        let dear = path.replacen("/contract/", "/dear/", 1);
        let before = self.served();
        let answer = self.send(&dear, &proof).await;
        if answer.status.is_success() || self.served() != before {
            return Err(format!(
                "a proof paid for {path} was served on {dear}, at twice the price ({})",
                answer.status
            ));
        }
        Ok(())
    }

    async fn check_once(&self) -> Checked {
        let (path, proof) = self.paid().await?;
        let before = self.served();
        let first = self.send(&path, &proof).await;
        if first.status != StatusCode::OK || first.body != SERVED {
            return Err(format!("a paid request got {} {}", first.status, text(&first.body)));
        }
        if self.served() != before + 1 {
            return Err("a paid request ran the handler other than once".into());
        }
        let again = self.send(&path, &proof).await;
        if !self.harness.single_use() {
            return match again.status {
                StatusCode::OK => Ok(()),
                status => Err(format!("a reusable token was refused the second time: {status}")),
            };
        }
        if again.status.is_success() || self.served() != before + 1 {
            return Err(format!("a replayed proof was served ({})", again.status));
        }
        let (path, proof) = self.paid().await?;
        let before = self.served();
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let (app, path, proof) = (self.app.clone(), path.clone(), proof.clone());
                tokio::spawn(async move { send(app, &path, &proof).await })
            })
            .collect();
        let mut ok = 0;
        for racer in racers {
            let answer = racer.await.map_err(|e| format!("a racing request panicked: {e}"))?;
            ok += usize::from(answer.status.is_success());
        }
        let served = self.served() - before;
        if ok != 1 || served != 1 {
            return Err(format!(
                "{RACERS} racing copies of one proof: {ok} succeeded, the handler ran {served} times"
            ));
        }
        Ok(())
    }

    async fn check_release(&self) -> Checked {
        let (path, proof) = self.paid().await?;
        self.handler(Handler::Fail);
        let failed = self.send(&path, &proof).await;
        if failed.status != StatusCode::INTERNAL_SERVER_ERROR {
            return Err(format!("the failing handler's 500 came back as {}", failed.status));
        }
        self.handler(Handler::Serve);
        let retried = self.send(&path, &proof).await;
        if retried.status != StatusCode::OK || retried.body != SERVED {
            return Err(format!(
                "the proof of a request that failed in the handler did not buy the retry: {} {}",
                retried.status,
                text(&retried.body)
            ));
        }
        Ok(())
    }

    async fn check_settle_failure(&self) -> Checked {
        let (path, proof) = self.paid().await?;
        self.handler(Handler::CutBackendThenServe);
        let before = self.served();
        let answer = self.send(&path, &proof).await;
        if self.served() != before + 1 {
            return Err("the handler did not run, so settlement was not tested".into());
        }
        if answer.status.is_success() || answer.body == SERVED {
            return Err(format!(
                "settlement met a dead backend and the content was delivered ({})",
                answer.status
            ));
        }
        Ok(())
    }

    async fn check_outage(&self) -> Checked {
        let (path, proof) = self.paid().await?;
        self.harness.set_backend(false).await;
        let fresh = self.send(&self.path(), &[]).await;
        match fresh.status {
            StatusCode::PAYMENT_REQUIRED => {}
            StatusCode::SERVICE_UNAVAILABLE if fresh.headers.contains_key(RETRY_AFTER) => {}
            status => return Err(format!("a new request while the backend is down got {status}")),
        }
        let before = self.served();
        let answer = self.send(&path, &proof).await;
        if !self.harness.verifies_on_backend() {
            // Checked by math alone: served through the outage, as it would be after it.
            if answer.status != StatusCode::OK || self.served() != before + 1 {
                return Err(format!(
                    "a proof that needs no backend was refused during an outage: {}",
                    answer.status
                ));
            }
            return Ok(());
        }
        if self.served() != before {
            return Err(format!("served while the backend was down ({})", answer.status));
        }
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            return Err(format!("a paid retry while the backend is down got {}", answer.status));
        }
        if !answer.headers.contains_key(RETRY_AFTER) {
            return Err("a 503 without Retry-After".into());
        }
        self.harness.set_backend(true).await;
        let later = self.send(&path, &proof).await;
        if later.status != StatusCode::OK || later.body != SERVED {
            return Err(format!(
                "the proof refused during the outage does not work once the backend is back: {} {}",
                later.status,
                text(&later.body)
            ));
        }
        Ok(())
    }
}

/// `GET path` with `headers` through `app`, its body read whole.
async fn send(app: Router, path: &str, headers: &[(HeaderName, HeaderValue)]) -> Exchange {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(Body::empty()).expect("a valid request");
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    Exchange { status: parts.status, headers: parts.headers, body }
}

async fn handle(State(counter): State<Arc<Counter>>) -> axum::response::Response {
    counter.served.fetch_add(1, Ordering::SeqCst);
    match counter.mode.load(Ordering::SeqCst) {
        m if m == Handler::Fail as u8 => {
            (StatusCode::INTERNAL_SERVER_ERROR, "the handler failed").into_response()
        }
        m if m == Handler::CutBackendThenServe as u8 => {
            counter.harness.set_backend(false).await;
            SERVED.into_response()
        }
        _ => SERVED.into_response(),
    }
}

/// Whether `answer` is a problem+json body with a status.
fn is_problem(answer: &Exchange) -> Checked {
    let problem = answer
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    if !problem
        || body.get("status").and_then(|s| s.as_u64()) != Some(answer.status.as_u16().into())
    {
        return Err(format!("{} without a problem+json body stating it", answer.status));
    }
    Ok(())
}

fn scheme_of(line: &str) -> &str {
    line.split([' ', ',']).next().unwrap_or_default()
}

fn text(body: &[u8]) -> String {
    shorten(&String::from_utf8_lossy(body))
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A token on a chain no rail serves.
fn foreign_token() -> Token {
    Token {
        network: "eip155:999999999".into(),
        address: "0x000000000000000000000000000000000000dEaD".into(),
        symbol: "NOPE".into(),
        decimals: 6,
    }
}
