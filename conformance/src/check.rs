//! Checks as data: what to send, what to expect, and where the requirement comes from.
//!
//! The suite is the JSON files in `conformance/checks/` (one per rail), compiled in. A check:
//!
//! ```json
//! {"id": "x402.reject.wrong_recipient", "rail": "x402", "level": "MUST",
//!  "spec": "x402 v2 §6.1 (exact EVM verification: `to` is `payTo`)",
//!  "title": "an authorization paying someone else is refused with a fresh challenge",
//!  "send": "wrong_recipient",
//!  "expect": {"status": [402], "challenge": true, "no_receipt": true}}
//! ```
//!
//! `send` names what the rail's [`Probe`](crate::probe::Probe) puts in the request (see
//! [`Attempt`]); `expect` is evaluated by [`crate::expect`], generically, except `assert`, which
//! names a rail-specific assertion of the probe. Checks run in file order, so that `replay`
//! follows the `paid` whose proof it sends again.

use serde::{Deserialize, Serialize};

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

/// What a check sends. Which of these a rail supports is up to its probe; the others are
/// skipped with the reason the probe gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attempt {
    /// No credential: the request a client sends first.
    None,
    /// A credential of the rail's scheme that is not its encoding (bad base64, bad JSON).
    Malformed,
    /// Valid base64 of JSON that is not a credential object (an array, a number).
    NotAnObject,
    /// A well-formed credential cut in half.
    Truncated,
    /// A credential of 32 KiB.
    Oversized,
    /// A credential whose proof is signed by someone else (or a preimage that is not).
    Forged,
    /// A credential bound to the challenge but with an altered binding (tampered id or MAC).
    Tampered,
    /// A challenge echoed with its request altered (another amount).
    TamperedRequest,
    /// A proof for less than the price.
    WrongAmount,
    /// A proof for more than the price (x402 `exact` is exact).
    Overpay,
    /// A proof paying another recipient.
    WrongRecipient,
    /// A proof on another network.
    WrongNetwork,
    /// A proof whose validity ended.
    Expired,
    /// A proof not valid yet.
    NotYetValid,
    /// A protocol version the server does not speak.
    UnknownVersion,
    /// A credential for a method / intent the server does not offer.
    UnknownMethod,
    /// Two credentials of the rail in one request.
    TwoCredentials,
    /// A real payment (needs a wallet); its proof is kept for `replay` and `reuse`.
    Paid,
    /// The proof of the last `paid` check, sent again.
    Replay,
    /// A real payment made for this check alone, answering a fresh 402 (not kept for
    /// `replay`): what a flow check sends to another route or several times at once.
    Fresh,
    /// A real payment like `fresh`, its addresses written in lowercase hex rather than
    /// EIP-55 (as some clients send them).
    LowercaseHex,
    /// A challenge echoed with another realm (the proof otherwise as `forged`'s).
    OtherRealm,
    /// No credential, with an `Accept-Payment` preference for one of the offers (MPP).
    AcceptPayment,
    /// No credential: `GET /openapi.json` at the server's origin, the discovery document.
    DiscoveryDocument,
    /// Opens a payment channel of the tester's own on chain (a deposit of two requests) and
    /// pays the first request with its first voucher (an MPP `session`).
    SessionOpen,
    /// The session's next voucher: what was signed plus the price.
    SessionVoucher,
    /// A voucher for what was already signed: it adds nothing.
    SessionVoucherEqual,
    /// A voucher for less than was already signed.
    SessionVoucherLower,
    /// A voucher for more than the channel holds.
    SessionVoucherAboveDeposit,
    /// A voucher, validly signed by the payer, for a channel that was never opened.
    SessionOtherChannel,
    /// Adds two requests' worth to the channel on chain and tells the server.
    SessionTopUp,
    /// Closes the session with a voucher for what was signed; the remainder must come back
    /// on chain.
    SessionClose,
    /// A voucher on the channel after it was closed.
    SessionClosedChannel,
}

impl Attempt {
    /// Whether the attempt spends the tester's money (at most once each).
    pub fn pays(self) -> bool {
        matches!(
            self,
            Attempt::Paid
                | Attempt::Fresh
                | Attempt::LowercaseHex
                | Attempt::SessionOpen
                | Attempt::SessionTopUp
        )
    }

    /// Whether the credential answers a 402 of its own rather than the run's first: a
    /// challenge may be good for one payment only.
    pub fn answers_a_fresh_challenge(self) -> bool {
        matches!(self, Attempt::Fresh) || self.is_session()
    }

    /// Whether the attempt is a step of the run's own payment session.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            Attempt::SessionOpen
                | Attempt::SessionVoucher
                | Attempt::SessionVoucherEqual
                | Attempt::SessionVoucherLower
                | Attempt::SessionVoucherAboveDeposit
                | Attempt::SessionOtherChannel
                | Attempt::SessionTopUp
                | Attempt::SessionClose
                | Attempt::SessionClosedChannel
        )
    }
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

/// The suite's check files, compiled in.
const FILES: &[(&str, &str)] = &[
    ("l402.json", include_str!("../checks/l402.json")),
    ("x402.json", include_str!("../checks/x402.json")),
    ("mpp.json", include_str!("../checks/mpp.json")),
];

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

/// Every check of the suite, in file order.
pub fn all() -> Vec<Check> {
    FILES
        .iter()
        .flat_map(|(file, text)| {
            parse(file, text).unwrap_or_else(|e| panic!("the compiled-in suite is broken: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_parses_and_every_rail_has_its_basics() {
        let checks = all();
        for rail in ["l402", "x402", "mpp"] {
            let of: Vec<&Check> = checks.iter().filter(|c| c.rail == rail).collect();
            assert!(of.iter().any(|c| c.send == Attempt::None && c.level == Level::MUST), "{rail}");
            assert!(of.iter().any(|c| c.send == Attempt::Paid), "{rail} has a paid check");
            assert!(of.iter().any(|c| c.send == Attempt::Malformed), "{rail} rejects garbage");
            assert!(of.iter().all(|c| !c.spec.is_empty() && !c.title.is_empty()));
        }
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
