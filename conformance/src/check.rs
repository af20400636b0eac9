//! Checks as data: what to send, what to expect, and where the requirement comes from.
//!
//! Each probe brings its rail's check file ([`Probe::checks`]; the built-in rails' are in
//! `conformance/checks/`), and [`load`] reads it. A check:
//!
//! ```json
//! {"id": "x402.reject.wrong_recipient", "rail": "x402", "level": "MUST",
//!  "spec": "x402 v2 §6.1 (exact EVM verification: `to` is `payTo`)",
//!  "title": "an authorization paying someone else is refused with a fresh challenge",
//!  "send": "wrong_recipient",
//!  "expect": {"status": [402], "challenge": true, "no_receipt": true}}
//! ```
//!
//! `send` names what the rail's [`Probe`] puts in the request, an [`Attempt`] the probe makes
//! (or the runner's own [`NONE`] and [`DISCOVERY_DOCUMENT`]); `expect` is evaluated by [`crate::expect`], generically, except `assert`, which
//! names a rail-specific assertion of the probe. Checks run in file order, so that `replay`
//! follows the `paid` whose proof it sends again.

use serde::{Deserialize, Serialize};

use crate::probe::Probe;

/// How much a requirement binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    MUST,
    SHOULD,
    MAY,
}

impl Level {
    /// The level as RFC 2119 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::MUST => "MUST",
            Level::SHOULD => "SHOULD",
            Level::MAY => "MAY",
        }
    }
}

/// What a check sends, by the name its probe gives it (`"send": "wrong_recipient"`). The
/// runner itself makes [`NONE`] and [`DISCOVERY_DOCUMENT`]; every other attempt is the probe's
/// own, and a check file may name only those its probe knows ([`Probe::attempt`]).
///
/// [`Probe::attempt`]: crate::probe::Probe::attempt
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attempt(String);

/// No credential: the request a client sends first (the runner's own attempt).
pub const NONE: &str = "none";
/// No credential: `GET /openapi.json` at the server's origin, the discovery document (the
/// runner's own attempt).
pub const DISCOVERY_DOCUMENT: &str = "discovery_document";

impl Attempt {
    pub fn new(name: impl Into<String>) -> Self {
        Attempt(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the runner makes this attempt itself, without the probe.
    pub fn is_the_runners(&self) -> bool {
        self == NONE || self == DISCOVERY_DOCUMENT
    }
}

impl PartialEq<str> for Attempt {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Attempt {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the runner must know of a probe's attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptKind {
    /// The attempt spends the tester's money (at most once each): its check is quoted before
    /// the run, and a failure may be the wallet's.
    pub pays: bool,
    /// The credential answers a 402 of its own rather than the run's first: a challenge may
    /// be good for one payment only.
    pub fresh_challenge: bool,
}

/// Where a check sends its credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// The URL under test.
    #[default]
    Same,
    /// The URL under test with its query string changed.
    ChangedQuery,
    /// Another priced route of the server (`--other-url`, or one its discovery document
    /// lists); skipped when the server has none to offer.
    OtherRoute,
}

/// What the answer must show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The status is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<u16>,
    /// The answer carries (true) or does not carry (false) a challenge of the rail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<bool>,
    /// The body is RFC 9457 problem+json (content type and `type`/`title`/`status` members).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub problem_json: bool,
    /// The problem `type` ends with one of these (e.g. `malformed-credential`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problem_type: Vec<String>,
    /// A header whose value contains a token (case-insensitive): `[name, token]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_contains: Option<(String, String)>,
    /// No payment receipt of the rail on the answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_receipt: bool,
    /// A payment receipt of the rail is on the answer and valid against its schema.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receipt: bool,
    /// The rail's artifacts of this kind (e.g. `challenge`, `request`) are each valid against
    /// their JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The reason codes a specification or a reference implementation names for this refusal
    /// (x402 `invalidReason` codes): a refusal whose stated reason is another code was refused
    /// for something else than the rule under test, and fails; one refused for want of funds
    /// proves nothing, and is inconclusive. A reason that is not a code is only reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reason: Vec<String>,
    /// A rail-specific assertion of the probe, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assert: Option<String>,
    /// Of the check's concurrent copies, exactly one is served; every other is refused
    /// without a receipt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub served_once: bool,
    /// A connection the server closes or resets before answering also refuses the request
    /// (an oversized one: nothing was served); a timeout still fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused_by_closing: bool,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub id: String,
    pub rail: String,
    pub level: Level,
    /// The specification and section the requirement comes from.
    pub spec: String,
    pub title: String,
    pub send: Attempt,
    /// Where the credential goes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub to: Destination,
    /// How many copies of the request are sent at once (a race for one payment); 1 when
    /// absent, at most [`MAX_COPIES`].
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub copies: u8,
    /// The id of a check this one builds on (`replay` sends what `paid` paid): unless that
    /// check passed, this one is inconclusive rather than run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<String>,
    pub expect: Expect,
}

/// The most copies a check may send at once.
pub const MAX_COPIES: u8 = 16;

fn one() -> u8 {
    1
}

fn is_one(n: &u8) -> bool {
    *n == 1
}

fn is_default(to: &Destination) -> bool {
    *to == Destination::Same
}

/// A check file that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {error}")]
pub struct CheckFileError {
    pub file: String,
    pub error: String,
}

/// Reads a check file (a JSON array of checks); ids must be unique and start with the rail.
pub fn parse(file: &str, text: &str) -> Result<Vec<Check>, CheckFileError> {
    let err = |error: String| CheckFileError { file: file.into(), error };
    let checks: Vec<Check> = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    for c in &checks {
        if !seen.insert(c.id.as_str()) {
            return Err(err(format!("duplicate check id {:?}", c.id)));
        }
        if !c.id.starts_with(&format!("{}.", c.rail)) {
            return Err(err(format!("check {:?} does not start with its rail {:?}", c.id, c.rail)));
        }
        if c.copies == 0 || c.copies > MAX_COPIES {
            return Err(err(format!("check {:?}: copies must be 1 to {MAX_COPIES}", c.id)));
        }
        if (c.copies > 1) != c.expect.served_once {
            return Err(err(format!(
                "check {:?}: several copies go with served_once, and only they",
                c.id
            )));
        }
        if let Some(before) = &c.requires
            && !seen.contains(before.as_str())
        {
            return Err(err(format!("check {:?} requires {before:?}, not before it", c.id)));
        }
    }
    Ok(checks)
}

/// Reads `probe`'s check file ([`parse`]) and its schemas: every check is of its rail and
/// sends an attempt the runner or the probe makes, and every schema compiles.
pub fn load(probe: &dyn Probe) -> Result<Vec<Check>, CheckFileError> {
    let (file, text) = probe.checks();
    let err = |error: String| CheckFileError { file: file.into(), error };
    let rail = probe.rail();
    // Ids are `<rail>.<name>`: a rail with a dot could own another rail's ids.
    if rail.is_empty() || !rail.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(err(format!("rail name {rail:?}: use letters, digits, '_' or '-'")));
    }
    let checks = parse(file, text)?;
    if checks.is_empty() {
        return Err(err("no checks: a probe that checks nothing would pass any server".into()));
    }
    for c in &checks {
        if c.rail != probe.rail() {
            return Err(err(format!(
                "check {:?} is of rail {:?}, its probe's is {:?}",
                c.id,
                c.rail,
                probe.rail()
            )));
        }
        if !c.send.is_the_runners() && probe.attempt(&c.send).is_none() {
            return Err(err(format!(
                "check {:?} sends {:?}, which the {} probe does not make",
                c.id,
                c.send.as_str(),
                probe.rail()
            )));
        }
    }
    crate::schema::compile(probe.schemas()).map_err(err)?;
    Ok(checks)
}

/// The checks of every probe ([`load`]), in probe order and each probe's file order; a rail
/// has one probe, and a check id one check.
pub fn load_all(probes: &[Box<dyn Probe>]) -> Result<Vec<Check>, CheckFileError> {
    let mut all: Vec<Check> = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        let file = || probe.checks().0.to_string();
        if probes[..i].iter().any(|p| p.rail() == probe.rail()) {
            let error = format!("a second probe of rail {:?}", probe.rail());
            return Err(CheckFileError { file: file(), error });
        }
        for check in load(probe.as_ref())? {
            if all.iter().any(|c| c.id == check.id) {
                let error = format!("check id {:?} is another probe's", check.id);
                return Err(CheckFileError { file: file(), error });
            }
            all.push(check);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Artifact;

    #[test]
    fn the_suite_loads_and_every_rail_has_its_basics() {
        let builtin = crate::probe::builtin::probes(&Default::default());
        // 13 L402, 22 x402 and 37 MPP checks, as the README and the findings files count them.
        assert_eq!(load_all(&builtin).unwrap().len(), 72);
        for probe in builtin {
            let (rail, of) = (probe.rail(), load(probe.as_ref()).unwrap());
            assert!(of.iter().any(|c| c.send == NONE && c.level == Level::MUST), "{rail}");
            assert!(of.iter().any(|c| c.send == "paid"), "{rail} has a paid check");
            assert!(of.iter().any(|c| c.send == "malformed"), "{rail} rejects garbage");
            assert!(of.iter().all(|c| !c.spec.is_empty() && !c.title.is_empty()));
        }
        // Each probe makes only its own attempts: an x402 one in the L402 file would not load.
        let builtin = crate::probe::builtin::probes(&Default::default());
        let wrong_network = Attempt::new("wrong_network");
        let makes: Vec<bool> =
            builtin.iter().map(|p| p.attempt(&wrong_network).is_some()).collect();
        assert_eq!(makes, [false, true, false], "l402, x402, mpp");
    }

    /// A probe of rail `.0` whose check file is `.1`, making only `forged`.
    struct Files(&'static str, String);

    #[async_trait::async_trait]
    impl Probe for Files {
        fn rail(&self) -> &'static str {
            self.0
        }
        fn checks(&self) -> (&str, &str) {
            ("x.json", &self.1)
        }
        fn attempt(&self, send: &Attempt) -> Option<AttemptKind> {
            (send == "forged").then_some(AttemptKind::default())
        }
        fn has_challenge(&self, _: &crate::Exchange) -> bool {
            false
        }
        fn artifacts(&self, _: &crate::Exchange, _: &str) -> Result<Vec<Artifact>, String> {
            Ok(Vec::new())
        }
        fn receipt(&self, _: &crate::Exchange) -> Option<Result<Artifact, String>> {
            None
        }
        fn assert(&self, _: &str, _: &crate::Exchange) -> Result<(), String> {
            Ok(())
        }
        fn quote(&self, _: &Attempt, _: &crate::Exchange) -> Option<crate::probe::Quote> {
            None
        }
        fn stated_reason(&self, _: &crate::Exchange) -> Option<String> {
            None
        }
        async fn credential(
            &self,
            _: &Attempt,
            _: &crate::Exchange,
        ) -> Result<crate::probe::Credential, crate::probe::Unable> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_check_file_names_only_its_rail_and_the_attempts_its_probe_makes() {
        let check = |rail: &str, send: &str| {
            format!(
                r#"[{{"id":"{rail}.a","rail":"{rail}","level":"MUST","spec":"s","title":"t","send":"{send}","expect":{{}}}}]"#
            )
        };
        let load_text = |text: String| load(&Files("x", text));
        assert_eq!(load_text(check("x", "forged")).unwrap()[0].send, "forged");
        assert_eq!(load_text(check("x", NONE)).unwrap()[0].send, NONE);
        assert_eq!(load_text(check("x", DISCOVERY_DOCUMENT)).unwrap()[0].send, DISCOVERY_DOCUMENT);
        let unknown = load_text(check("x", "wrong_recipient")).unwrap_err();
        assert!(unknown.error.contains("does not make"), "{unknown}");
        let other_rail = load_text(check("y", "forged")).unwrap_err();
        assert!(other_rail.error.contains("its probe's is"), "{other_rail}");
        let twice: Vec<Box<dyn Probe>> = vec![
            Box::new(Files("x", check("x", "forged"))),
            Box::new(Files("x", check("x", NONE))),
        ];
        assert!(load_all(&twice).unwrap_err().error.contains("a second probe of rail"));
        assert_eq!(load_all(&twice[..1]).unwrap().len(), 1);
        // A probe that checks nothing would pass any server.
        assert!(load_text("[]".into()).unwrap_err().error.contains("no checks"));
        // `x.y`'s ids would be `x.y.…`, which rail `x` may own too.
        let dotted = load(&Files("x.y", check("x.y", "forged"))).unwrap_err();
        assert!(dotted.error.contains("rail name"), "{dotted}");
    }

    #[test]
    fn bad_files_are_refused() {
        let one = r#"{"id":"x.a","rail":"x","level":"MUST","spec":"s","title":"t","send":"none","expect":{}}"#;
        assert!(parse("f", &format!("[{one},{one}]")).unwrap_err().error.contains("duplicate"));
        let wrong = one.replace("\"x.a\"", "\"y.a\"");
        assert!(parse("f", &format!("[{wrong}]")).is_err());
        let unknown = one.replace("\"expect\":{}", "\"expect\":{\"colour\":1}");
        assert!(parse("f", &format!("[{unknown}]")).is_err(), "unknown expectations are refused");
    }
}
