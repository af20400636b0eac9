//! # farebox-conformance
//!
//! A conformance suite for servers that charge for HTTP with `402 Payment Required`, in the
//! manner of h2spec: point it at a URL and it tells, check by check, whether the server speaks
//! L402, x402 and MPP correctly, with the requirement level and the spec each check comes from.
//!
//! ```text
//!  checks/*.json ──► run() ──► for each check of a rail the server offers:
//!                               probe builds the request (send) ──► server
//!                               expect (status, challenge, problem+json, headers, receipt,
//!                                       schemas in specs/schemas, probe assertions)
//!                  ──► Report ──► table · JSON · JUnit XML
//! ```
//!
//! | module | for |
//! |---|---|
//! | [`check`] | checks as data: id, rail, level, spec, what is sent, what is expected |
//! | [`probe`] | the [`Probe`](probe::Probe) trait and one probe per rail ([`probe::l402`], [`probe::x402`], [`probe::mpp`]) |
//! | [`expect`] | evaluating expectations on an answer |
//! | [`schema`] | the JSON Schemas of `specs/schemas/`, compiled in |
//! | [`report`] | results as a table for people, JSON and JUnit XML for CI |
//! | [`misbehave`] | a reference server that misbehaves in controlled ways, to test clients |
//!
//! Checks that need money (`paid`, `replay`) run only with a wallet ([`Wallets`]): a Lightning
//! backend (the dev wallet of `farebox demo --serve`, or any node) and/or an EVM key funded on
//! the server's chain. Without one they are skipped, with the reason. A rail the server does not
//! offer is skipped as a whole. Nothing in the suite needs more than the URL and, for paid
//! checks, the wallet: it runs against any implementation.

#![forbid(unsafe_code)]

pub mod check;
pub mod expect;
pub mod misbehave;
pub mod probe;
pub mod report;
pub mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use farebox_evm::PrivateKeySigner;
use farebox_lightning::LightningBackend;
use http::{HeaderMap, StatusCode};

pub use check::{Check, Level};
pub use report::{CheckResult, Outcome, Report};

/// Largest response body the runner reads.
pub const MAX_BODY: usize = 256 * 1024;

/// An answer from the server under test.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Exchange {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What the runner may pay with.
#[derive(Clone, Default)]
pub struct Wallets {
    /// Pays Lightning invoices (L402, MPP `lightning` charge).
    pub lightning: Option<Arc<dyn LightningBackend>>,
    /// Signs EIP-3009 authorizations (x402 `exact`, MPP `evm` charge); must be funded on the
    /// server's chain.
    pub evm: Option<PrivateKeySigner>,
    /// EIP-712 domains (`name`, `version`) of EIP-3009 tokens, by chain id and address, for MPP
    /// `evm` challenges that do not name theirs (mppx's); known USDC deployments need none.
    pub evm_domains: Vec<(u64, farebox_evm::Address, String, String)>,
}

/// What to run against.
#[derive(Clone)]
pub struct Target {
    /// A priced URL (it must answer 402 without a credential).
    pub url: reqwest::Url,
    /// Only these rails (`l402`, `x402`, `mpp`); all when empty.
    pub rails: Vec<String>,
    pub wallets: Wallets,
    /// Timeout of each request.
    pub timeout: Duration,
}

impl Target {
    pub fn new(url: reqwest::Url) -> Self {
        Target {
            url,
            rails: Vec::new(),
            wallets: Wallets::default(),
            timeout: Duration::from_secs(20),
        }
    }
}

/// The probes of the suite, one per rail.
pub fn probes() -> Vec<Box<dyn probe::Probe>> {
    vec![
        Box::new(probe::l402::L402Probe::default()),
        Box::new(probe::x402::X402Probe::default()),
        Box::new(probe::mpp::MppProbe::default()),
    ]
}

/// Runs every check of the suite against `target`.
pub async fn run(target: &Target) -> Report {
    run_checks(target, &check::all(), &probes()).await
}

/// Runs `checks` with `probes` against `target`.
pub async fn run_checks(
    target: &Target,
    checks: &[Check],
    probes: &[Box<dyn probe::Probe>],
) -> Report {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(target.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let mut results = Vec::with_capacity(checks.len());
    let discovery = send(&http, &target.url, &[]).await;
    for probe in probes {
        let rail = probe.rail();
        let mine: Vec<&Check> = checks.iter().filter(|c| c.rail == rail).collect();
        if !target.rails.is_empty() && !target.rails.iter().any(|r| r == rail) {
            continue;
        }
        let offered = discovery.as_ref().is_ok_and(|d| probe.has_challenge(d));
        for check in mine {
            let started = Instant::now();
            let outcome = match &discovery {
                Err(e) => Outcome::Fail(format!("the server did not answer: {e}")),
                Ok(_) if !offered => {
                    Outcome::Skip(format!("the server offers no {rail} challenge"))
                }
                Ok(d) => {
                    run_one(&http, &target.url, check, probe.as_ref(), d, &target.wallets).await
                }
            };
            results.push(CheckResult::new(check, outcome, started.elapsed()));
        }
    }
    Report { target: target.url.to_string(), results, elapsed: started.elapsed() }
}

async fn run_one(
    http: &reqwest::Client,
    url: &reqwest::Url,
    check: &Check,
    probe: &dyn probe::Probe,
    discovery: &Exchange,
    wallets: &Wallets,
) -> Outcome {
    let exchange = if check.send == check::Attempt::None {
        discovery.clone()
    } else {
        let credential = match probe.credential(check.send, discovery, wallets).await {
            Ok(c) => c,
            Err(probe::Unable::Skip(why)) => return Outcome::Skip(why),
            Err(probe::Unable::Fail(why)) => return Outcome::Fail(why),
        };
        match send(http, url, &credential).await {
            Ok(e) => e,
            Err(e) => return Outcome::Fail(format!("the server did not answer: {e}")),
        }
    };
    match expect::evaluate(&check.expect, probe, &exchange) {
        Ok(()) => Outcome::Pass,
        Err(why) => Outcome::Fail(why),
    }
}

/// GETs `url` with `headers`; the body is read up to [`MAX_BODY`].
pub async fn send(
    http: &reqwest::Client,
    url: &reqwest::Url,
    headers: &[(http::HeaderName, http::HeaderValue)],
) -> Result<Exchange, String> {
    let mut req = http.get(url.clone());
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let mut res = req.send().await.map_err(|e| e.to_string())?;
    let (status, headers) = (res.status(), res.headers().clone());
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_BODY {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Exchange { status, headers, body })
}
