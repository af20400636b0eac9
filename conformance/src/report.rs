//! What a run found: one result per check, as a table for people, JSON and JUnit XML for CI.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::check::{Check, Level};

/// How a check went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail(String),
    /// The check has no meaning here (a rail the server does not offer, an attack a rail has
    /// no form of): nothing is missing from the verdict.
    Skip(String),
    /// The check could have run but did not, for want of something the tester can add (a
    /// wallet, a higher `--max-price`): what it says is unknown, so a MUST of this kind makes
    /// the verdict incomplete.
    NotRun(String),
    /// The check ran, or would have, but its prerequisite failed (a `replay` after a failed
    /// `paid`): its answer proves nothing either way.
    Inconclusive(String),
}

/// What a run concludes, and the exit status that says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every MUST (with `--strict`, every SHOULD) ran and passed. Exit status 0.
    Pass,
    /// A MUST (with `--strict`, a SHOULD) failed. Exit status 1.
    Fail,
    /// The suite could not run at all: the URL does not answer 402, the server is unreachable,
    /// a rail asked for is not offered. Exit status 2 (as for a usage error).
    Error,
    /// Nothing failed, but a MUST (with `--strict`, a SHOULD) did not run or was
    /// inconclusive. Exit status 3.
    Incomplete,
}

impl Verdict {
    /// The process exit status of this verdict.
    pub fn exit_status(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Error => 2,
            Verdict::Incomplete => 3,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub id: String,
    pub rail: String,
    pub level: Level,
    pub spec: String,
    pub title: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The requests the check sent and the answers it got, secrets redacted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<Trace>,
    /// The reason the server stated in its answer, as it stated it (x402 `error`, a problem
    /// type or code), when it stated one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub millis: u64,
}

impl CheckResult {
    pub fn new(check: &Check, outcome: Outcome, took: Duration) -> Self {
        CheckResult {
            id: check.id.clone(),
            rail: check.rail.clone(),
            level: check.level,
            spec: check.spec.clone(),
            title: check.title.clone(),
            outcome,
            exchanges: Vec::new(),
            reason: None,
            millis: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The result with the exchanges it made.
    pub fn with_exchanges(mut self, exchanges: Vec<Trace>) -> Self {
        self.exchanges = exchanges;
        self
    }

    /// The result with the reason the server stated.
    pub fn with_reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }
}

/// One request of a check and the answer to it, as the report shows them: credentials and
/// cookies redacted (their scheme and length kept), bodies cut at [`TRACE_BODY`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub method: String,
    pub url: String,
    pub request_headers: Vec<(String, String)>,
    /// `None` when the server did not answer (see the check's detail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
}

/// How much of a response body a trace keeps.
pub const TRACE_BODY: usize = 4096;

/// Headers whose values are secrets: a paid credential is a bearer token, a cookie may be one.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "payment-signature",
    "x-payment",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

impl Trace {
    /// The trace of a GET of `url` with `headers`, answered by `answer` (if it was).
    pub fn new(
        url: &str,
        headers: &[(http::HeaderName, http::HeaderValue)],
        answer: Option<&crate::Exchange>,
    ) -> Self {
        let request_headers = headers.iter().map(|(n, v)| redacted(n.as_str(), v)).collect();
        let (status, response_headers, response_body) = match answer {
            None => (None, Vec::new(), String::new()),
            Some(a) => {
                let headers = a.headers.iter().map(|(n, v)| redacted(n.as_str(), v)).collect();
                let cut = &a.body[..a.body.len().min(TRACE_BODY)];
                let mut body = String::from_utf8_lossy(cut).into_owned();
                if a.body.len() > TRACE_BODY {
                    let _ = write!(body, "… ({} bytes in all)", a.body.len());
                }
                (Some(a.status.as_u16()), headers, body)
            }
        };
        Trace {
            method: "GET".into(),
            url: url.into(),
            request_headers,
            status,
            response_headers,
            response_body,
        }
    }
}

/// A header for the report: a secret one as its scheme (if any) and its length only.
fn redacted(name: &str, value: &http::HeaderValue) -> (String, String) {
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    if !SECRET_HEADERS.contains(&name) {
        return (name.into(), text);
    }
    let scheme = match text.split_once(' ') {
        Some((scheme, _)) if name.ends_with("authorization") => format!("{scheme} "),
        _ => String::new(),
    };
    (name.into(), format!("{scheme}<redacted, {} bytes>", text.len()))
}

/// How many checks ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
    pub not_run: usize,
    pub inconclusive: usize,
}

/// A run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    /// Why the suite could not run at all (then `results` is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub results: Vec<CheckResult>,
    #[serde(serialize_with = "as_millis")]
    pub elapsed: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Report {
    /// The failures of checks at `level` or stricter.
    pub fn failures(&self, level: Level) -> impl Iterator<Item = &CheckResult> {
        self.results
            .iter()
            .filter(move |r| r.level <= level && matches!(r.outcome, Outcome::Fail(_)))
    }

    /// The checks at `level` or stricter that did not run or were inconclusive.
    pub fn unproven(&self, level: Level) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(move |r| {
            r.level <= level && matches!(r.outcome, Outcome::NotRun(_) | Outcome::Inconclusive(_))
        })
    }

    /// What the run concludes; `strict` holds SHOULDs to the standard of MUSTs.
    pub fn verdict(&self, strict: bool) -> Verdict {
        let level = if strict { Level::SHOULD } else { Level::MUST };
        if self.error.is_some() {
            Verdict::Error
        } else if self.failures(level).next().is_some() {
            Verdict::Fail
        } else if self.unproven(level).next().is_some() {
            Verdict::Incomplete
        } else {
            Verdict::Pass
        }
    }

    /// Whether the verdict is a pass: every MUST ran and passed (with `strict`, every SHOULD).
    pub fn passed(&self, strict: bool) -> bool {
        self.verdict(strict) == Verdict::Pass
    }

    /// `(pass, fail, skip)` counts; checks that did not run or were inconclusive count as
    /// skipped here (see [`Report::tally`]).
    pub fn counts(&self) -> (usize, usize, usize) {
        let t = self.tally();
        (t.pass, t.fail, t.skip + t.not_run + t.inconclusive)
    }

    /// How many checks ended each way.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for r in &self.results {
            match r.outcome {
                Outcome::Pass => t.pass += 1,
                Outcome::Fail(_) => t.fail += 1,
                Outcome::Skip(_) => t.skip += 1,
                Outcome::NotRun(_) => t.not_run += 1,
                Outcome::Inconclusive(_) => t.inconclusive += 1,
            }
        }
        t
    }

    /// The result of check `id`.
    pub fn get(&self, id: &str) -> Option<&CheckResult> {
        self.results.iter().find(|r| r.id == id)
    }

    /// A table for people: the verdict first, then one section per rail, one line per check
    /// (a rail skipped as a whole, e.g. not offered, in one line), then what to add to run
    /// the checks that did not run.
    pub fn table(&self) -> String {
        self.table_with(false)
    }

    /// [`Report::table`], with every request and answer of each check under it when `verbose`.
    pub fn table_with(&self, verbose: bool) -> String {
        let mut out = format!("farebox conformance: {}\n", self.target);
        let verdict = self.verdict(false);
        let _ = writeln!(out, "verdict: {}", verdict_line(verdict, self.error.as_deref()));
        let mut rails: Vec<&str> = Vec::new();
        for r in &self.results {
            if !rails.contains(&r.rail.as_str()) {
                rails.push(&r.rail);
            }
        }
        for rail in rails {
            let of: Vec<&CheckResult> = self.results.iter().filter(|r| r.rail == rail).collect();
            let _ = writeln!(out, "\n{}", rail.to_uppercase());
            if let Some(Outcome::Skip(why)) = of.first().map(|r| &r.outcome)
                && of.iter().all(|r| r.outcome == Outcome::Skip(why.clone()))
            {
                let _ = writeln!(out, "  skip   all {} checks ({why})", of.len());
                continue;
            }
            for r in of {
                let (mark, detail) = match &r.outcome {
                    Outcome::Pass => ("PASS", String::new()),
                    Outcome::Fail(why) => ("FAIL", format!("\n        ↳ {why}")),
                    Outcome::Skip(why) => ("skip", format!("  ({why})")),
                    Outcome::NotRun(why) => ("NOT RUN", format!("\n        ↳ {why}")),
                    Outcome::Inconclusive(why) => ("INCONCL", format!("\n        ↳ {why}")),
                };
                let said = match (&r.outcome, &r.reason) {
                    (Outcome::Pass, _) | (_, None) => String::new(),
                    (_, Some(reason)) => format!("\n        server said: {reason}"),
                };
                let _ = writeln!(
                    out,
                    "  {mark:<7} {:<6} {:<34} {}{detail}{said}\n        [{}]",
                    r.level.as_str(),
                    r.id,
                    r.title,
                    r.spec
                );
                if verbose {
                    for t in &r.exchanges {
                        trace_lines(&mut out, t);
                    }
                }
            }
        }
        let t = self.tally();
        let must = self.failures(Level::MUST).count();
        let _ = writeln!(
            out,
            "\n{} passed, {} failed ({must} MUST), {} not run, {} inconclusive, {} skipped in {:.1} s",
            t.pass,
            t.fail,
            t.not_run,
            t.inconclusive,
            t.skip,
            self.elapsed.as_secs_f64()
        );
        let mut wanted: Vec<&str> = Vec::new();
        for r in self.unproven(Level::MUST) {
            if let Outcome::NotRun(why) = &r.outcome
                && !wanted.contains(&why.as_str())
            {
                wanted.push(why);
            }
        }
        if !wanted.is_empty() {
            let _ = writeln!(out, "to run the MUST checks that did not run: {}", wanted.join("; "));
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["verdict"] = serde_json::to_value(self.verdict(false)).unwrap_or_default();
        value["verdict_strict"] = serde_json::to_value(self.verdict(true)).unwrap_or_default();
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }

    /// The report as JUnit XML: a test suite per rail, a test case per check; failures of SHOULD
    /// and MAY checks are reported as failures too (CI decides what to make of them).
    pub fn to_junit(&self) -> String {
        let mut rails: Vec<&str> = Vec::new();
        for r in &self.results {
            if !rails.contains(&r.rail.as_str()) {
                rails.push(&r.rail);
            }
        }
        let (_, fail, skip) = self.counts();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"farebox conformance\" tests=\"{}\" failures=\"{fail}\" skipped=\"{skip}\" time=\"{:.3}\">",
            self.results.len() + usize::from(self.error.is_some()),
            self.elapsed.as_secs_f64()
        );
        // A run that could not start is an error in CI, not an empty (green) suite.
        if let Some(error) = &self.error {
            let _ = writeln!(
                out,
                "  <testsuite name=\"run\" tests=\"1\" errors=\"1\">\n    <testcase classname=\"run\" name=\"the suite runs\">\n      <error message=\"{}\"/>\n    </testcase>\n  </testsuite>",
                xml(error)
            );
        }
        for rail in rails {
            let of: Vec<&CheckResult> = self.results.iter().filter(|r| r.rail == rail).collect();
            let failures = of.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).count();
            let skipped = of
                .iter()
                .filter(|r| !matches!(r.outcome, Outcome::Pass | Outcome::Fail(_)))
                .count();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
                xml(rail),
                of.len()
            );
            for r in of {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{} [{}]\" time=\"{:.3}\"",
                    xml(rail),
                    xml(&r.id),
                    r.level.as_str(),
                    r.millis as f64 / 1000.0
                );
                match &r.outcome {
                    Outcome::Pass => out.push_str("/>\n"),
                    Outcome::Fail(why) => {
                        let _ = writeln!(
                            out,
                            ">\n      <failure message=\"{}\">{}: {}</failure>\n    </testcase>",
                            xml(why),
                            xml(&r.spec),
                            xml(&r.title)
                        );
                    }
                    Outcome::Skip(why) | Outcome::NotRun(why) | Outcome::Inconclusive(why) => {
                        let _ = writeln!(
                            out,
                            ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                            xml(why)
                        );
                    }
                }
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

/// A trace for people, indented under its check.
fn trace_lines(out: &mut String, t: &Trace) {
    let _ = writeln!(out, "        → {} {}", t.method, t.url);
    for (name, value) in &t.request_headers {
        let _ = writeln!(out, "          {name}: {value}");
    }
    match t.status {
        None => {
            let _ = writeln!(out, "        ← no answer");
        }
        Some(status) => {
            let _ = writeln!(out, "        ← {status}");
            for (name, value) in &t.response_headers {
                let _ = writeln!(out, "          {name}: {value}");
            }
            if !t.response_body.is_empty() {
                let _ =
                    writeln!(out, "          {}", t.response_body.replace('\n', "\n          "));
            }
        }
    }
}

/// The verdict in words.
fn verdict_line(verdict: Verdict, error: Option<&str>) -> String {
    match verdict {
        Verdict::Pass => "PASS — every MUST check ran and passed".into(),
        Verdict::Fail => "FAIL — a MUST check failed".into(),
        Verdict::Incomplete => {
            "INCOMPLETE — nothing failed, but some MUST checks did not run or were inconclusive"
                .into()
        }
        Verdict::Error => format!("ERROR — {}", error.unwrap_or("the suite could not run")),
    }
}

/// Escapes text for XML attributes and content.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Attempt, Expect};

    fn check(id: &str, level: Level) -> Check {
        Check {
            id: id.into(),
            rail: "mpp".into(),
            level,
            spec: "spec <§1>".into(),
            title: "a \"title\"".into(),
            send: Attempt::new(crate::check::NONE),
            to: Default::default(),
            copies: 1,
            requires: None,
            expect: Expect::default(),
        }
    }

    #[test]
    fn the_exit_code_follows_the_musts_and_the_reports_escape() {
        let report = Report {
            target: "http://x/".into(),
            error: None,
            results: vec![
                CheckResult::new(&check("mpp.a", Level::MUST), Outcome::Pass, Duration::ZERO),
                CheckResult::new(
                    &check("mpp.b", Level::SHOULD),
                    Outcome::Fail("bad & <worse>".into()),
                    Duration::ZERO,
                ),
                CheckResult::new(
                    &check("mpp.c", Level::MUST),
                    Outcome::Skip("no wallet".into()),
                    Duration::ZERO,
                ),
            ],
            elapsed: Duration::from_millis(1500),
        };
        assert!(report.passed(false));
        assert!(!report.passed(true));
        assert_eq!(report.counts(), (1, 1, 1));
        let junit = report.to_junit();
        assert!(junit.contains("<failure message=\"bad &amp; &lt;worse&gt;\">"), "{junit}");
        assert!(junit.contains("<skipped message=\"no wallet\"/>"));
        assert!(junit.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["results"][1]["outcome"], "fail");
        assert_eq!(json["results"][1]["detail"], "bad & <worse>");
        assert_eq!(report.verdict(false), Verdict::Pass);
        assert_eq!(report.verdict(true), Verdict::Fail);
        let mut failing = report.clone();
        failing.results[0].outcome = Outcome::Fail("x".into());
        assert!(!failing.passed(false));
        assert_eq!(failing.verdict(false).exit_status(), 1);
    }

    #[test]
    fn must_checks_that_could_not_run_make_the_verdict_incomplete() {
        let mut report = Report {
            target: "http://x/".into(),
            error: None,
            results: vec![
                CheckResult::new(&check("mpp.a", Level::MUST), Outcome::Pass, Duration::ZERO),
                CheckResult::new(
                    &check("mpp.paid", Level::MUST),
                    Outcome::NotRun("needs a wallet".into()),
                    Duration::ZERO,
                ),
            ],
            elapsed: Duration::ZERO,
        };
        assert_eq!(report.verdict(false), Verdict::Incomplete);
        assert_eq!(report.verdict(false).exit_status(), 3);
        assert!(!report.passed(false));
        assert!(report.table().contains("needs a wallet"));
        // An inconclusive MUST is as unproven as one that did not run.
        report.results[1].outcome = Outcome::Inconclusive("mpp.x failed".into());
        assert_eq!(report.verdict(false), Verdict::Incomplete);
        // A failure outweighs it.
        report.results[0].outcome = Outcome::Fail("bad".into());
        assert_eq!(report.verdict(false), Verdict::Fail);
        // A SHOULD that did not run leaves a plain run complete, not a strict one.
        report.results[0].outcome = Outcome::Pass;
        report.results[1].level = Level::SHOULD;
        assert_eq!(report.verdict(false), Verdict::Pass);
        assert_eq!(report.verdict(true), Verdict::Incomplete);
        // A run that could not start is an error, whatever else.
        report.error = Some("no 402".into());
        assert_eq!(report.verdict(false).exit_status(), 2);
    }
}
