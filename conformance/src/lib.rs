//! # farebox-conformance
//!
//! A conformance suite for servers that charge for HTTP with `402 Payment Required`, in the
//! manner of h2spec: point it at a URL and it tells, check by check, whether the server speaks
//! its rails (L402, x402, MPP, or any rail with a probe) correctly, with the requirement level
//! and the spec each check comes from.
//!
//! ```text
//!  probes ──► run(target, probes) ──► for each check of a probe whose rail the server offers:
//!  (checks,                             probe builds the request (send) ──► server
//!   schemas,                            expect (status, challenge, problem+json, headers,
//!   attempts,                                   receipt, the probe's schemas and assertions)
//!   wallet)                 ──► Report ──► table · JSON · JUnit XML
//! ```
//!
//! | module | for |
//! |---|---|
//! | [`check`] | checks as data: id, rail, level, spec, what is sent, what is expected |
//! | [`probe`] | the [`Probe`] trait and the built-in probes ([`probe::builtin::probes`]: [`probe::l402`], [`probe::x402`], [`probe::mpp`]) |
//! | [`expect`] | evaluating expectations on an answer |
//! | [`schema`] | JSON Schemas, compiled in, and validation |
//! | [`report`] | results as a table for people, JSON and JUnit XML for CI |
//! | [`misbehave`] | a reference server that misbehaves in controlled ways, to test clients |
//!
//! The runner keeps no list of rails: a [`Probe`] brings its rail's check file, its schemas,
//! the attempts it makes (what each `send` of its checks is, and whether it pays) and its
//! wallet, given when it is made. A rail outside this crate adds a probe in its own crate and
//! passes it to [`run`]; `examples/rail-prepaid/src/conformance.rs` is the worked example.
//!
//! Checks that need money (`paid`, `replay`) run only when the probe has a wallet (the
//! built-in probes' [`probe::builtin::Wallets`]: a Lightning backend and/or an EVM key funded on the
//! server's chain). Without one they do not run, and the verdict is incomplete, not a pass
//! ([`Verdict`]); a check whose prerequisite failed (`replay` after `paid`) is inconclusive. A
//! rail the server does not offer is skipped as a whole, unless it was asked for; a URL that
//! does not answer 402 is an error, not a green run. Nothing in the suite needs more than the
//! URL and, for paid checks, the wallet: it runs against any implementation.

#![forbid(unsafe_code)]

pub mod check;
pub mod clients;
pub mod expect;
pub mod misbehave;
pub mod probe;
pub mod report;
pub mod schema;

use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};

pub use check::{Check, Level};
pub use probe::Probe;
pub use report::{CheckResult, Outcome, Report, Tally, Trace, Verdict};

/// Largest response body the runner reads.
pub const MAX_BODY: usize = 256 * 1024;

/// Why the server under test gave no answer.
#[derive(Debug, Clone)]
pub enum NoAnswer {
    /// Nothing came back within the request timeout.
    TimedOut(String),
    /// The connection failed or was closed before a status line came back.
    Broke(String),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::TimedOut(why) | NoAnswer::Broke(why) => f.write_str(why),
        }
    }
}

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

/// What to run against.
#[derive(Clone)]
pub struct Target {
    /// A priced URL (it must answer 402 without a credential).
    pub url: reqwest::Url,
    /// Only the probes of these rails (`l402`, `x402`, `mpp`, …); all when empty.
    pub rails: Vec<String>,
    /// Timeout of each request.
    pub timeout: Duration,
    /// Another priced route of the same server, for the cross-route checks. Without it the
    /// runner looks for one in the server's discovery document (`/openapi.json`).
    pub other_url: Option<reqwest::Url>,
}

impl Target {
    pub fn new(url: reqwest::Url) -> Self {
        Target { url, rails: Vec::new(), timeout: Duration::from_secs(20), other_url: None }
    }
}

/// What the paid checks of a run of `probes` against `target` would pay (one payment per
/// paying check of a probe with a wallet), read from the server's 402, to say before the run;
/// an error when the suite could not run at all. A quote over the probe's cap is not paid: its
/// check does not run.
pub async fn plan(target: &Target, probes: &[Box<dyn Probe>]) -> Result<Vec<probe::Quote>, String> {
    let checks = check::load_all(probes).map_err(|e| e.to_string())?;
    let http = client(target);
    let discovery = discover(&http, target, probes).await?;
    let server = Server::learn(&http, target).await;
    // A check sent to another route runs only when there is one.
    let checks: Vec<Check> = checks
        .into_iter()
        .filter(|c| c.to != check::Destination::OtherRoute || server.other_route.is_some())
        .collect();
    Ok(probes
        .iter()
        .filter(|p| target.rails.is_empty() || target.rails.iter().any(|r| r == p.rail()))
        .filter(|p| p.has_challenge(&discovery))
        .flat_map(|p| {
            // Each paying check pays at most once: the copies of a race answer one payment.
            let paying = checks.iter().filter(|c| c.rail == p.rail() && kind(p.as_ref(), c).pays);
            paying.filter_map(|c| {
                let quote = p.quote(&c.send, &discovery)?;
                Some(probe::Quote { check: c.id.clone(), ..quote })
            })
        })
        .collect())
}

/// Runs every check of `probes` against `target`. A check file that does not load is the
/// run's error.
pub async fn run(target: &Target, probes: &[Box<dyn Probe>]) -> Report {
    match check::load_all(probes) {
        Ok(checks) => run_checks(target, &checks, probes).await,
        Err(e) => Report {
            target: target.url.to_string(),
            error: Some(e.to_string()),
            results: Vec::new(),
            elapsed: Duration::ZERO,
        },
    }
}

/// What the runner must know of the attempt `check` sends (nothing of its own ones).
fn kind(probe: &dyn Probe, check: &Check) -> check::AttemptKind {
    probe.attempt(&check.send).unwrap_or_default()
}

/// Runs `checks` (loaded from `probes` by [`check::load_all`]) against `target`.
///
/// The run is an error (no results, [`Report::error`] says why) when it could check nothing:
/// the URL does not answer, answers something other than 402, or offers no challenge the suite
/// knows, or a rail asked for in [`Target::rails`] is unknown or not offered; and when a rail
/// the server offers had no check that ran (all skipped): silence is not a pass.
async fn run_checks(target: &Target, checks: &[Check], probes: &[Box<dyn probe::Probe>]) -> Report {
    let started = Instant::now();
    let http = client(target);
    let mut report = Report {
        target: target.url.to_string(),
        error: None,
        results: Vec::with_capacity(checks.len()),
        elapsed: Duration::ZERO,
    };
    let discovery = match discover(&http, target, probes).await {
        Ok(d) => d,
        Err(why) => {
            report.error = Some(why);
            report.elapsed = started.elapsed();
            return report;
        }
    };
    let server = Server::learn(&http, target).await;
    for probe in probes {
        let rail = probe.rail();
        if !target.rails.is_empty() && !target.rails.iter().any(|r| r == rail) {
            continue;
        }
        let offered = probe.has_challenge(&discovery);
        for check in checks.iter().filter(|c| c.rail == rail) {
            let started = Instant::now();
            let (outcome, reason, exchanges) = if !offered {
                (Outcome::Skip(format!("the server offers no {rail} challenge")), None, Vec::new())
            } else if let Some(outcome) = unmet(check, &report.results) {
                (outcome, None, Vec::new())
            } else {
                let run = Run { http: &http, target, server: &server, discovery: &discovery };
                run.check(check, probe.as_ref()).await
            };
            let result = CheckResult::new(check, outcome, started.elapsed());
            report.results.push(result.with_reason(reason).with_exchanges(exchanges));
        }
        let ran = report
            .results
            .iter()
            .filter(|r| r.rail == rail)
            .any(|r| !matches!(r.outcome, Outcome::Skip(_)));
        if offered && !ran && report.error.is_none() {
            report.error = Some(format!(
                "the server offers {rail}, but no {rail} check ran (every one was skipped)"
            ));
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// The runner's HTTP client: the target's timeout, no redirects followed.
fn client(target: &Target) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(target.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// The request without a credential, which must be a 402 with a challenge of every rail asked
/// for (of some rail the suite knows, when none is asked for).
async fn discover(
    http: &reqwest::Client,
    target: &Target,
    probes: &[Box<dyn probe::Probe>],
) -> Result<Exchange, String> {
    let known: Vec<&str> = probes.iter().map(|p| p.rail()).collect();
    if let Some(unknown) = target.rails.iter().find(|r| !known.contains(&r.as_str())) {
        return Err(format!("no rail {unknown:?} in the suite (it knows {})", known.join(", ")));
    }
    let discovery = send(http, &target.url, &[])
        .await
        .map_err(|e| format!("{} did not answer: {e}", target.url))?;
    if discovery.status != StatusCode::PAYMENT_REQUIRED {
        return Err(format!(
            "{} answered {} without payment, not 402 Payment Required: give the URL of a priced resource",
            target.url, discovery.status
        ));
    }
    let offered: Vec<&str> =
        probes.iter().filter(|p| p.has_challenge(&discovery)).map(|p| p.rail()).collect();
    let offered_text =
        if offered.is_empty() { "none the suite knows".to_string() } else { offered.join(", ") };
    if let Some(missing) = target.rails.iter().find(|r| !offered.contains(&r.as_str())) {
        return Err(format!(
            "the server offers no {missing} challenge at {} (it offers {offered_text})",
            target.url
        ));
    }
    if offered.is_empty() {
        return Err(format!(
            "{} answered 402 with no challenge of any rail the suite knows ({})",
            target.url,
            known.join(", ")
        ));
    }
    Ok(discovery)
}

/// The outcome of `check` when a check it builds on did not pass: skipped like it when that
/// one had no meaning for the server (a session it does not offer), else inconclusive.
fn unmet(check: &Check, so_far: &[CheckResult]) -> Option<Outcome> {
    let before = check.requires.as_deref()?;
    let outcome = so_far.iter().find(|r| r.id == before).map(|r| &r.outcome);
    Some(match outcome {
        Some(Outcome::Pass) => return None,
        Some(Outcome::Skip(why)) => Outcome::Skip(why.clone()),
        Some(Outcome::Fail(_)) => {
            Outcome::Inconclusive(format!("{before} failed, so this proves nothing"))
        }
        Some(_) | None => {
            Outcome::Inconclusive(format!("{before} did not run, so there is nothing to send"))
        }
    })
}

/// What one check found: its outcome, the reason the server stated, what was exchanged.
type Found = (Outcome, Option<String>, Vec<report::Trace>);

/// What the runner learnt of the server besides the URL under test, once per run.
struct Server {
    /// `GET /openapi.json` at the URL's origin, when it answered at all.
    openapi: Option<Exchange>,
    /// Another priced route: the one given, or the first other priced path the discovery
    /// document lists.
    other_route: Option<reqwest::Url>,
}

impl Server {
    async fn learn(http: &reqwest::Client, target: &Target) -> Server {
        let openapi = match target.url.join("/openapi.json") {
            Ok(url) => send(http, &url, &[]).await.ok(),
            Err(_) => None,
        };
        let listed = || {
            let doc = openapi.as_ref().filter(|e| e.status.is_success())?.json()?;
            let path = doc["paths"].as_object()?.iter().find_map(|(path, item)| {
                let get = item.get("get")?;
                let priced = get.get("x-payment-info").is_some()
                    || get.get("responses").and_then(|r| r.get("402")).is_some();
                (priced && !path.contains('{') && path != target.url.path()).then_some(path)
            })?;
            target.url.join(path).ok()
        };
        let other_route = target.other_url.clone().or_else(listed);
        Server { openapi, other_route }
    }
}

/// One run's context: how to reach the server and what it said first.
struct Run<'a> {
    http: &'a reqwest::Client,
    target: &'a Target,
    server: &'a Server,
    /// The 402 the request without a credential got.
    discovery: &'a Exchange,
}

/// `url` with its query string changed: a `conformance` parameter added, or changed when
/// there is one already.
fn changed_query(url: &reqwest::Url) -> reqwest::Url {
    let mut changed = url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "conformance")
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let before = url.query_pairs().find(|(k, _)| k == "conformance").map(|(_, v)| v.into_owned());
    let value = if before.as_deref() == Some("2") { "3" } else { "2" };
    changed.query_pairs_mut().clear().extend_pairs(kept).append_pair("conformance", value);
    changed
}

impl Run<'_> {
    /// Runs one check.
    async fn check(&self, check: &Check, probe: &dyn probe::Probe) -> Found {
        use check::Destination;
        let url = match check.to {
            Destination::Same => self.target.url.clone(),
            Destination::ChangedQuery => changed_query(&self.target.url),
            Destination::OtherRoute => match self.other_route(probe).await {
                Ok(url) => url,
                Err(unable) => return unable_found(unable),
            },
        };
        if check.send == check::NONE {
            return self.judge(check, probe, &url, &[], vec![self.discovery.clone()]);
        }
        if check.send == check::DISCOVERY_DOCUMENT {
            // Published means served: a 404, or a 402 of a server that prices every path, is
            // no document.
            let Some(doc) = self.server.openapi.as_ref().filter(|e| e.status.is_success()) else {
                return unable_found(probe::Unable::Skip(
                    "the server publishes no /openapi.json".into(),
                ));
            };
            let url = self.target.url.join("/openapi.json").unwrap_or(url);
            return self.judge(check, probe, &url, &[], vec![doc.clone()]);
        }
        // A fresh payment answers a fresh 402: a challenge may be good for one payment only.
        let fresh;
        let answering = if kind(probe, check).fresh_challenge {
            fresh = match send(self.http, &self.target.url, &[]).await {
                Ok(e) if probe.has_challenge(&e) => e,
                Ok(e) => {
                    let why = format!(
                        "a second request got {} without a {} challenge",
                        e.status,
                        probe.rail()
                    );
                    return unable_found(probe::Unable::Fail(why));
                }
                Err(e) => {
                    return unable_found(probe::Unable::Fail(format!(
                        "the server did not answer: {e}"
                    )));
                }
            };
            &fresh
        } else {
            self.discovery
        };
        let credential = match probe.credential(&check.send, answering).await {
            Ok(c) => c,
            Err(unable) => return unable_found(unable),
        };
        let copies = (0..check.copies).map(|_| send(self.http, &url, &credential));
        let mut answers = Vec::with_capacity(usize::from(check.copies));
        for answer in futures_util::future::join_all(copies).await {
            match answer {
                Ok(e) => answers.push(e),
                Err(e) => {
                    let trace = report::Trace::new(url.as_str(), &credential, None);
                    // Closing the connection on an oversized request refuses it as surely as
                    // a 431 does (Node resets it while the request is still being written).
                    if check.expect.refused_by_closing && matches!(e, NoAnswer::Broke(_)) {
                        return (Outcome::Pass, None, vec![trace]);
                    }
                    let why = format!("the server did not answer: {e}");
                    return (Outcome::Fail(why), None, vec![trace]);
                }
            }
        }
        let learnt = probe.answered(&check.send, &answers).await;
        let (outcome, stated, traces) =
            match (self.judge(check, probe, &url, &credential, answers), learnt) {
                ((Outcome::Pass, stated, traces), Err(why)) => (Outcome::Fail(why), stated, traces),
                (found, _) => found,
            };
        // A paid check that failed may say more of the tester's wallet than of the server.
        if kind(probe, check).pays
            && matches!(outcome, Outcome::Fail(_))
            && let Some(cause) = probe.wallet_cause(&check.send, answering).await
        {
            return (Outcome::Inconclusive(cause), stated, traces);
        }
        (outcome, stated, traces)
    }

    /// Another priced route offering this rail, or why there is none to test with.
    async fn other_route(&self, probe: &dyn probe::Probe) -> Result<reqwest::Url, probe::Unable> {
        let Some(url) = &self.server.other_route else {
            return Err(probe::Unable::Skip(
                "no other priced route known (give --other-url, or publish /openapi.json)".into(),
            ));
        };
        match send(self.http, url, &[]).await {
            Ok(e) if e.status == StatusCode::PAYMENT_REQUIRED && probe.has_challenge(&e) => {
                Ok(url.clone())
            }
            Ok(e) => Err(probe::Unable::Skip(format!(
                "the other route {url} answered {} without a {} challenge",
                e.status,
                probe.rail()
            ))),
            Err(e) => {
                Err(probe::Unable::Skip(format!("the other route {url} did not answer: {e}")))
            }
        }
    }

    /// The outcome of `check` from what its request(s) got.
    fn judge(
        &self,
        check: &Check,
        probe: &dyn probe::Probe,
        url: &reqwest::Url,
        credential: &[(http::HeaderName, http::HeaderValue)],
        answers: Vec<Exchange>,
    ) -> Found {
        let traces =
            answers.iter().map(|e| report::Trace::new(url.as_str(), credential, Some(e))).collect();
        let sent = !credential.is_empty();
        let refused: Vec<&Exchange> = answers.iter().filter(|e| !e.status.is_success()).collect();
        let stated = refused.first().copied().filter(|_| sent).and_then(|e| probe.stated_reason(e));
        let verdict = if check.expect.served_once {
            served_once(probe, &answers)
        } else {
            // One request: its answer is the one judged.
            answers
                .first()
                .map_or(Err("no answer".into()), |e| expect::evaluate(&check.expect, probe, e))
        };
        let outcome = match verdict {
            // A refusal for want of funds says nothing of the rule under test, nor of a paid check.
            _ if !refused.is_empty()
                && stated.as_deref().is_some_and(expect::for_want_of_funds) =>
            {
                Outcome::Inconclusive(if kind(probe, check).pays {
                    "the server says the payer has insufficient funds: fund the wallet's key on the server's chain and asset".into()
                } else {
                    "refused for want of funds, which proves nothing of the rule under test: give a funded wallet".into()
                })
            }
            Ok(()) => Outcome::Pass,
            Err(why) => Outcome::Fail(why),
        };
        (outcome, stated, traces)
    }
}

/// Of a race of copies of one payment, exactly one is served and none of the others carries
/// a receipt.
fn served_once(probe: &dyn probe::Probe, answers: &[Exchange]) -> Result<(), String> {
    let served = answers.iter().filter(|e| e.status.is_success()).count();
    let receipts =
        answers.iter().filter(|e| !e.status.is_success() && probe.receipt(e).is_some()).count();
    match (served, receipts) {
        (1, 0) => Ok(()),
        (1, n) => Err(format!("{n} refused copies carry a {} receipt", probe.rail())),
        (0, _) => Err(format!("none of {} copies of one payment was served", answers.len())),
        (n, _) => Err(format!("{n} of {} copies of one payment were served", answers.len())),
    }
}

/// The result of a check the probe could not make.
fn unable_found(unable: probe::Unable) -> Found {
    let outcome = match unable {
        probe::Unable::Skip(why) => Outcome::Skip(why),
        probe::Unable::NotRun(why) => Outcome::NotRun(why),
        probe::Unable::Fail(why) => Outcome::Fail(why),
        probe::Unable::WalletCause(why) => Outcome::Inconclusive(why),
    };
    (outcome, None, Vec::new())
}

/// GETs `url` with `headers`; the body is read up to [`MAX_BODY`].
pub async fn send(
    http: &reqwest::Client,
    url: &reqwest::Url,
    headers: &[(http::HeaderName, http::HeaderValue)],
) -> Result<Exchange, NoAnswer> {
    let mut req = http.get(url.clone());
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let mut res = req.send().await.map_err(|e| {
        if e.is_timeout() {
            NoAnswer::TimedOut(e.to_string())
        } else {
            NoAnswer::Broke(e.to_string())
        }
    })?;
    let (status, headers) = (res.status(), res.headers().clone());
    let mut body = Vec::new();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY => {
                body.extend_from_slice(&chunk)
            }
            Ok(_) => break,
            // The status and headers arrived, then the connection broke: a server refusing a
            // 32 KiB request often answers 431 and closes while the request is still being
            // written, and the reset cuts its body. The answer is judged on what arrived (a body
            // cut short is never evidence for a check).
            Err(e) => {
                tracing::debug!(error = %e, %status, "the answer's body was cut short");
                break;
            }
        }
    }
    Ok(Exchange { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that refuses with 431 and closes before its body is out is judged on the 431.
    #[tokio::test]
    async fn an_answer_whose_body_is_cut_is_judged_on_its_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let head =
                "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 100\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(b"cut").await.unwrap();
            // Closed with 97 bytes of the body still owed.
        });
        let url = reqwest::Url::parse(&format!("http://{addr}/paid")).unwrap();
        let answer = send(&reqwest::Client::new(), &url, &[]).await.expect("an answer");
        assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(answer.body, b"cut");
    }
}
