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
    Skip(String),
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
            millis: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
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

    /// Whether every MUST passed (with `strict`, every SHOULD too). What the exit code says.
    pub fn passed(&self, strict: bool) -> bool {
        let level = if strict { Level::SHOULD } else { Level::MUST };
        self.failures(level).next().is_none()
    }

    /// `(pass, fail, skip)` counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.results.iter().fold((0, 0, 0), |(p, f, s), r| match r.outcome {
            Outcome::Pass => (p + 1, f, s),
            Outcome::Fail(_) => (p, f + 1, s),
            Outcome::Skip(_) => (p, f, s + 1),
        })
    }

    /// The result of check `id`.
    pub fn get(&self, id: &str) -> Option<&CheckResult> {
        self.results.iter().find(|r| r.id == id)
    }

    /// A table for people: one section per rail, one line per check.
    pub fn table(&self) -> String {
        let mut out = format!("farebox conformance: {}\n", self.target);
        let mut rail = "";
        for r in &self.results {
            if r.rail != rail {
                rail = &r.rail;
                let _ = writeln!(out, "\n{}", rail.to_uppercase());
            }
            let (mark, detail) = match &r.outcome {
                Outcome::Pass => ("PASS", String::new()),
                Outcome::Fail(why) => ("FAIL", format!("\n        ↳ {why}")),
                Outcome::Skip(why) => ("skip", format!("  ({why})")),
            };
            let _ = writeln!(
                out,
                "  {mark}  {:<6} {:<34} {}{detail}\n        [{}]",
                format!("{:?}", r.level),
                r.id,
                r.title,
                r.spec
            );
        }
        let (pass, fail, skip) = self.counts();
        let must = self.failures(Level::MUST).count();
        let _ = writeln!(
            out,
            "\n{pass} passed, {fail} failed ({must} MUST), {skip} skipped in {:.1} s",
            self.elapsed.as_secs_f64()
        );
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
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
            self.results.len(),
            self.elapsed.as_secs_f64()
        );
        for rail in rails {
            let of: Vec<&CheckResult> = self.results.iter().filter(|r| r.rail == rail).collect();
            let failures = of.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).count();
            let skipped = of.iter().filter(|r| matches!(r.outcome, Outcome::Skip(_))).count();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
                xml(rail),
                of.len()
            );
            for r in of {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{} [{:?}]\" time=\"{:.3}\"",
                    xml(rail),
                    xml(&r.id),
                    r.level,
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
                    Outcome::Skip(why) => {
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
            send: Attempt::None,
            expect: Expect::default(),
        }
    }

    #[test]
    fn the_exit_code_follows_the_musts_and_the_reports_escape() {
        let report = Report {
            target: "http://x/".into(),
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
        let table = report.table();
        assert!(table.contains("FAIL  SHOULD"), "{table}");
        assert!(table.contains("1 passed, 1 failed (0 MUST), 1 skipped"));
        let mut failing = report.clone();
        failing.results[0].outcome = Outcome::Fail("x".into());
        assert!(!failing.passed(false));
    }
}
