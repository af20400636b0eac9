//! Rail probes: the rail-specific half of the suite.
//!
//! The runner is rail-neutral: it sends requests, evaluates expectations, and reports. What a
//! rail's checks are, what its challenge looks like, how each [`Attempt`] is built from it, what
//! its receipt is and which schema each artifact is checked against is a [`Probe`]'s job. A new
//! rail brings a probe, in this crate or its own (the prepaid example rail's is in
//! `examples/rail-prepaid/src/conformance.rs`); the runner does not change.

pub mod builtin;
pub mod l402;
pub mod mpp;
pub mod x402;

use async_trait::async_trait;
use http::HeaderMap;
use serde_json::Value;

use farebox_core::auth::{self, AuthChallenge};
use farebox_evm::{Address, U256};

use crate::Exchange;
use crate::check::{Attempt, AttemptKind};

/// What a probe could not do for a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unable {
    /// The check does not apply (a send this rail has no meaning for, no offer of the kind it
    /// needs): reported as skipped with the reason.
    Skip(String),
    /// The check applies but the tester did not give what it needs (a wallet for a paid
    /// check): reported as not run, saying what to add.
    NotRun(String),
    /// The server's answer made the check impossible where it should have been possible
    /// (no challenge to attack): reported as failed.
    Fail(String),
    /// The tester's wallet could not pay (its node refused, it holds too little): reported
    /// as inconclusive, saying so, since it says nothing of the server.
    WalletCause(String),
}

/// What a paid check would pay, read from what the payment itself commits to (the BOLT11
/// invoice's amount, the amount of the authorization to sign), never from a server's prose.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quote {
    /// The check that pays.
    pub check: String,
    /// The amount, in millisatoshi for Lightning, in base units for a token.
    pub amount: u128,
    /// `msat`, or the token as `<CAIP-2 chain>/<address>`.
    pub unit: String,
}

impl Quote {
    /// A Lightning payment of `msat`.
    pub fn msat(check: &str, msat: u64) -> Self {
        Quote { check: check.into(), amount: u128::from(msat), unit: "msat".into() }
    }

    /// A payment of `units` of the token `address` on chain `chain_id`.
    pub fn token(check: &str, units: U256, chain_id: u64, address: Address) -> Self {
        Quote {
            check: check.into(),
            amount: u128::try_from(units).unwrap_or(u128::MAX),
            unit: format!("eip155:{chain_id}/{address:#x}"),
        }
    }

    /// Whether the cap lets the paid check make this payment.
    pub fn within(&self, max: &MaxPrice) -> bool {
        if self.unit == "msat" {
            self.amount <= u128::from(max.sats) * 1000
        } else {
            self.amount <= max.token_units
        }
    }

    /// The amount for people: `10 sat`, `10000 token units (0.01 at 6 decimals) of …`.
    pub fn describe(&self) -> String {
        if self.unit == "msat" {
            let (sat, msat) = (self.amount / 1000, self.amount % 1000);
            return if msat == 0 { format!("{sat} sat") } else { format!("{sat}.{msat:03} sat") };
        }
        format!("{} base units ({} at 6 decimals) of {}", self.amount, six(self.amount), self.unit)
    }

    /// `Ok` when within `max`; otherwise the check does not run, saying how to let it.
    pub fn allowed(&self, max: &MaxPrice) -> Result<(), Unable> {
        if self.within(max) {
            return Ok(());
        }
        Err(Unable::NotRun(format!(
            "would pay {}, more than --max-price allows ({}); raise --max-price to run it",
            self.describe(),
            max.describe()
        )))
    }
}

/// `units` at 6 decimals (USDC), for people.
fn six(units: u128) -> String {
    let (whole, frac) = (units / 1_000_000, units % 1_000_000);
    let frac = format!("{frac:06}");
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() { whole.to_string() } else { format!("{whole}.{frac}") }
}

/// The most one payment of a paid check may cost. Token amounts are capped in base units, read
/// as USDC's 6 decimals on the command line (`0.05usdc` is 50000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MaxPrice {
    pub sats: u64,
    pub token_units: u128,
}

impl Default for MaxPrice {
    /// 100 sat and 0.05 USDC: enough for a test price, little to lose.
    fn default() -> Self {
        MaxPrice { sats: 100, token_units: 50_000 }
    }
}

impl MaxPrice {
    /// The cap for people.
    pub fn describe(&self) -> String {
        format!(
            "{} sat, {} token base units ({} USDC)",
            self.sats,
            self.token_units,
            six(self.token_units)
        )
    }

    /// Applies one `--max-price` value: `<whole>sat` or `<decimal>usdc` (case-insensitive).
    pub fn set(&mut self, text: &str) -> Result<(), String> {
        let t = text.trim().to_ascii_lowercase();
        let bad = || format!("--max-price {text}: expected e.g. 100sat or 0.05usdc");
        if let Some(n) = t.strip_suffix("sats").or_else(|| t.strip_suffix("sat")) {
            self.sats = n.trim().parse().map_err(|_| bad())?;
        } else if let Some(n) = t.strip_suffix("usdc") {
            let token = farebox_core::Token {
                network: String::new(),
                address: String::new(),
                symbol: String::new(),
                decimals: 6,
            };
            let money = farebox_core::Money::parse_token(n, token).map_err(|_| bad())?;
            self.token_units = money.amount;
        } else {
            return Err(bad());
        }
        Ok(())
    }
}

/// Headers a probe wants on a request.
pub type Credential = Vec<(http::HeaderName, http::HeaderValue)>;

/// An artifact to check against a schema: the schema's path under `specs/schemas` (without
/// `.json`) and the value.
pub type Artifact = (String, Value);

/// A JSON Schema a probe brings: its path (`<rail>/receipt`, without `.json`), as artifacts
/// name it, and its text.
pub type Schema = (&'static str, &'static str);

/// The rail-specific half of the suite. A probe is made with whatever it pays with (its
/// wallet configuration) and keeps what one run paid for, so a run gets fresh probes.
#[async_trait]
pub trait Probe: Send + Sync {
    /// The rail, as the checks name it.
    fn rail(&self) -> &'static str;

    /// The probe's check file: its name (for errors) and its text, a JSON array of checks of
    /// [`Probe::rail`] (see [`crate::check`]).
    fn checks(&self) -> (&str, &str);

    /// The JSON Schemas the probe's artifacts and receipts are checked against, besides the
    /// runner's own ([`crate::schema::GENERIC`]).
    fn schemas(&self) -> &'static [Schema] {
        &[]
    }

    /// What the runner must know of the attempt `send`, if the probe makes it; a check file
    /// that names one it does not make does not load. [`crate::check::NONE`] and
    /// [`crate::check::DISCOVERY_DOCUMENT`] are the runner's own.
    fn attempt(&self, send: &Attempt) -> Option<AttemptKind>;

    /// Whether `exchange` carries a challenge of this rail.
    fn has_challenge(&self, exchange: &Exchange) -> bool;

    /// The artifacts of `kind` (`challenge`, `request`, …) in `exchange`, decoded for schema
    /// checks. An artifact that cannot even be decoded is an error naming it.
    fn artifacts(&self, exchange: &Exchange, kind: &str) -> Result<Vec<Artifact>, String>;

    /// The receipt on `exchange`, decoded, if there is one of this rail.
    fn receipt(&self, exchange: &Exchange) -> Option<Result<Artifact, String>>;

    /// A rail-specific assertion by name, on the 402 the discovery request got.
    fn assert(&self, name: &str, exchange: &Exchange) -> Result<(), String>;

    /// What a check sending `send` (one that [`AttemptKind::pays`]) would pay, read from the
    /// 402; `None` when the probe's wallet cannot pay any of its offers.
    fn quote(&self, send: &Attempt, discovery: &Exchange) -> Option<Quote>;

    /// The reason the server stated for refusing `exchange` (x402 `error` or code, MPP problem
    /// type, L402 problem code), as it stated it.
    fn stated_reason(&self, exchange: &Exchange) -> Option<String>;

    /// The request headers that make `send`, built from the 402 the discovery request got.
    /// `paid` proofs are kept by the probe for a later `replay`.
    async fn credential(&self, send: &Attempt, discovery: &Exchange) -> Result<Credential, Unable>;

    /// The answers the credential of `send` got, before they are judged: what the probe
    /// learns from them (which steps of a session were served) and what only the chain can
    /// show about them (`Err` fails the check: a close that returned too little).
    async fn answered(&self, _send: &Attempt, _answers: &[Exchange]) -> Result<(), String> {
        Ok(())
    }

    /// Why the tester's wallet, rather than the server, may be why the paying check `send`
    /// failed, read from the tester's own node. `None` (the default) when the wallet is not to
    /// blame, or nothing can tell.
    async fn wallet_cause(&self, _send: &Attempt, _answering: &Exchange) -> Option<String> {
        None
    }
}

/// The reason a JSON body states: its `code`, problem `type`, `error` or `invalidReason`
/// member, the first present, as a string.
pub(crate) fn body_reason(exchange: &Exchange) -> Option<String> {
    let body = exchange.json()?;
    ["code", "type", "error", "invalidReason"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .map(|s| s.chars().take(200).collect())
}

/// The `WWW-Authenticate` challenges of `exchange` in one of `schemes` (case-insensitive):
/// none when the fields do not parse.
pub fn auth_challenges(exchange: &Exchange, schemes: &[&str]) -> Vec<AuthChallenge> {
    auth::parse_challenges(www_authenticate(&exchange.headers))
        .unwrap_or_default()
        .into_iter()
        .filter(|c| schemes.iter().any(|s| c.scheme.eq_ignore_ascii_case(s)))
        .collect()
}

/// A challenge's auth-params as a JSON object of strings: the artifact the schema at `schema`
/// checks.
pub fn params_artifact(schema: &str, challenge: AuthChallenge) -> Artifact {
    let params = challenge.params.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    (schema.to_string(), Value::Object(params))
}

/// The values of every `WWW-Authenticate` field.
pub(crate) fn www_authenticate(headers: &HeaderMap) -> Vec<&str> {
    headers.get_all(http::header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// `text` repeated up to 32 KiB (the oversized credential of every rail).
pub(crate) fn oversized(prefix: &str) -> String {
    let mut s = String::with_capacity(32 * 1024 + prefix.len());
    s.push_str(prefix);
    while s.len() < 32 * 1024 {
        s.push_str("AAAAAAAAAAAAAAAA");
    }
    s
}

/// A header value from text the probe made (always visible ASCII).
pub(crate) fn value(text: &str) -> Result<http::HeaderValue, Unable> {
    http::HeaderValue::from_str(text).map_err(|_| Unable::Fail("not a header value".into()))
}

/// The header `name` decoded as base64url (padded or not) JSON, as an artifact for `schema`:
/// how the receipts of L402 (farebox's) and MPP travel. `None` when the header is absent.
pub(crate) fn b64url_json_header(
    exchange: &Exchange,
    name: &str,
    schema: &str,
) -> Option<Result<Artifact, String>> {
    use base64::Engine as _;
    let header = exchange.headers.get(name)?;
    Some(
        header
            .to_str()
            .ok()
            .and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v.trim_end_matches('='))
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .map(|v| (schema.to_string(), v))
            .ok_or_else(|| format!("{name} is not base64url JSON")),
    )
}
