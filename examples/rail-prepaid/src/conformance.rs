//! The prepaid rail's conformance probe (feature `conformance`): what `farebox-conformance`
//! needs to check any server that sells on this rail, brought by the rail itself.
//!
//! Its checks are `checks/prepaid.json`, its schemas `schemas/` (the challenge's parameters and
//! the receipt's fields, as JSON). Its wallet is an [`Issuer`]: the seller's signing key and
//! the asset its codes are in, so that it can mint the codes it sends. Without one it still
//! sends what needs no key (garbage, a code signed by someone else); the checks that spend a
//! code do not run. A code costs the tester nothing, so no attempt pays.

use std::sync::Mutex;

use async_trait::async_trait;
use ed25519_dalek::SigningKey;
use farebox_conformance::Exchange;
use farebox_conformance::check::{Attempt, AttemptKind};
use farebox_conformance::probe::{
    Artifact, Credential, Probe, Quote, Schema, Unable, auth_challenges, params_artifact,
};
use farebox_core::Asset;
use farebox_core::auth::AuthChallenge;
use http::HeaderValue;
use http::header::AUTHORIZATION;
use serde_json::{Map, Value};

use crate::code::{CreditCode, SCHEME};
use crate::rail::PREPAID_RECEIPT;

/// What the probe mints codes with: the seller's key and the asset its codes are worth.
#[derive(Clone)]
pub struct Issuer {
    pub key: SigningKey,
    pub asset: Asset,
}

/// The prepaid probe. Keeps the code its `paid` check spent, for `reuse` and `spent`.
pub struct PrepaidProbe {
    issuer: Option<Issuer>,
    paid: Mutex<Option<String>>,
}

impl PrepaidProbe {
    /// A probe minting codes with `issuer`, when given.
    pub fn new(issuer: Option<Issuer>) -> Self {
        PrepaidProbe { issuer, paid: Mutex::default() }
    }
}

/// The attempts the probe makes (none pays: the tester mints its codes).
const ATTEMPTS: &[&str] = &[
    // `Prepaid` followed by what is no code.
    "malformed",
    // A well-formed code cut in half (signed by a key of the probe's own: no seller's needed).
    "truncated",
    // 32 KiB of code.
    "oversized",
    // A code signed by another key than the seller's.
    "forged",
    // A code of the seller's that expired.
    "expired",
    // A code of the seller's, in another asset than the server sells in.
    "other_asset",
    // A code worth two requests; kept for `reuse` and `spent`.
    "paid",
    // The kept code again.
    "reuse",
    // A new code worth exactly one request, for a race of copies.
    "single",
];

/// The probe's schemas.
const SCHEMAS: &[Schema] = &[
    ("prepaid/challenge", include_str!("../schemas/challenge.json")),
    ("prepaid/receipt", include_str!("../schemas/receipt.json")),
];

/// What a credit code's expiry is when it should not expire during a run.
const HOUR: u64 = 3600;

fn challenges(exchange: &Exchange) -> Vec<AuthChallenge> {
    auth_challenges(exchange, &[SCHEME])
}

/// The price of the discovery 402's challenge, in base units.
fn price(discovery: &Exchange) -> Result<u128, Unable> {
    challenges(discovery)
        .first()
        .and_then(|c| c.get("amount")?.parse().ok())
        .ok_or_else(|| Unable::Fail("no Prepaid challenge with an integer amount".into()))
}

fn now() -> Result<u64, Unable> {
    farebox_core::time::unix_now().map_err(|e| Unable::NotRun(e.to_string()))
}

fn raw(text: &str) -> Result<Credential, Unable> {
    let value = HeaderValue::from_str(&format!("{SCHEME} {text}"))
        .map_err(|_| Unable::Fail("not a header value".into()))?;
    Ok(vec![(AUTHORIZATION, value)])
}

/// A code with a random id, worth `value`, expiring at `expires`.
fn code(value: u128, expires: u64) -> CreditCode {
    CreditCode { id: rand::random(), value, expires }
}

/// An asset that is not `asset`.
fn other_than(asset: &Asset) -> Asset {
    match asset {
        Asset::Bitcoin => Asset::Token(farebox_core::Token {
            network: "eip155:8453".into(),
            address: "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913".into(),
            symbol: "USDC".into(),
            decimals: 6,
        }),
        _ => Asset::Bitcoin,
    }
}

impl PrepaidProbe {
    /// The issuer, if it is the seller the server names.
    fn issuer(&self, discovery: &Exchange) -> Result<&Issuer, Unable> {
        let issuer = self.issuer.as_ref().ok_or_else(|| {
            Unable::NotRun("needs the seller's signing key to mint codes (an Issuer)".into())
        })?;
        let seller = challenges(discovery).first().and_then(|c| c.get("seller").map(str::to_owned));
        if seller.as_deref() != Some(hex::encode(issuer.key.verifying_key().as_bytes()).as_str()) {
            return Err(Unable::NotRun(
                "the issuer's key is not the seller the server names".into(),
            ));
        }
        Ok(issuer)
    }

    /// A code of the seller's worth `requests` requests, in `asset` (the issuer's by default).
    fn minted(
        &self,
        discovery: &Exchange,
        requests: u128,
        asset: Option<Asset>,
        expires: u64,
    ) -> Result<String, Unable> {
        let issuer = self.issuer(discovery)?;
        let value = price(discovery)?.saturating_mul(requests);
        Ok(code(value, expires).sign(&issuer.key, &asset.unwrap_or_else(|| issuer.asset.clone())))
    }
}

#[async_trait]
impl Probe for PrepaidProbe {
    fn rail(&self) -> &'static str {
        "prepaid"
    }

    fn checks(&self) -> (&str, &str) {
        ("examples/rail-prepaid/checks/prepaid.json", include_str!("../checks/prepaid.json"))
    }

    fn schemas(&self) -> &'static [Schema] {
        SCHEMAS
    }

    fn attempt(&self, send: &Attempt) -> Option<AttemptKind> {
        ATTEMPTS.contains(&send.as_str()).then_some(AttemptKind::default())
    }

    fn has_challenge(&self, exchange: &Exchange) -> bool {
        !challenges(exchange).is_empty()
    }

    fn artifacts(&self, exchange: &Exchange, kind: &str) -> Result<Vec<Artifact>, String> {
        if kind != "challenge" {
            return Err(format!("no prepaid artifact {kind:?}"));
        }
        Ok(challenges(exchange)
            .into_iter()
            .map(|c| params_artifact("prepaid/challenge", c))
            .collect())
    }

    /// `Prepaid-Receipt: code=<id> spent=<n> left=<n>`, as a JSON object of its fields.
    fn receipt(&self, exchange: &Exchange) -> Option<Result<Artifact, String>> {
        let header = exchange.headers.get(&PREPAID_RECEIPT)?;
        let Ok(text) = header.to_str() else {
            return Some(Err("Prepaid-Receipt is not visible ASCII".into()));
        };
        let fields: Option<Map<String, Value>> = text
            .split_whitespace()
            .map(|field| field.split_once('=').map(|(k, v)| (k.into(), Value::String(v.into()))))
            .collect();
        Some(
            fields
                .map(|f| ("prepaid/receipt".to_string(), Value::Object(f)))
                .ok_or_else(|| format!("Prepaid-Receipt {text:?} is not `name=value` fields")),
        )
    }

    fn assert(&self, name: &str, _exchange: &Exchange) -> Result<(), String> {
        Err(format!("no prepaid assertion {name:?}"))
    }

    fn quote(&self, _send: &Attempt, _discovery: &Exchange) -> Option<Quote> {
        None
    }

    /// The problem `type` or `code` of a JSON body.
    fn stated_reason(&self, exchange: &Exchange) -> Option<String> {
        let body = exchange.json()?;
        ["code", "type"].iter().find_map(|k| body.get(*k)?.as_str().map(str::to_owned))
    }

    async fn credential(&self, send: &Attempt, discovery: &Exchange) -> Result<Credential, Unable> {
        let now = now()?;
        match send.as_str() {
            "malformed" => raw("!!not-a-code!!"),
            "truncated" => {
                // Any well-formed code will do: one signed by a key of the probe's own.
                let whole = code(price(discovery)?, now + HOUR)
                    .sign(&SigningKey::from_bytes(&rand::random()), &Asset::Bitcoin);
                raw(&whole[..whole.len() / 2])
            }
            "oversized" => raw(&"A".repeat(32 * 1024)),
            "forged" => {
                let asset = self.issuer.as_ref().map_or(Asset::Bitcoin, |i| i.asset.clone());
                let forger = SigningKey::from_bytes(&rand::random());
                raw(&code(price(discovery)?, now + HOUR).sign(&forger, &asset))
            }
            "expired" => raw(&self.minted(discovery, 1, None, now.saturating_sub(60))?),
            "other_asset" => {
                let other = self.issuer.as_ref().map(|i| other_than(&i.asset));
                raw(&self.minted(discovery, 1, other, now + HOUR)?)
            }
            "paid" | "reuse" => {
                let mut kept = self.paid.lock().unwrap_or_else(|e| e.into_inner());
                let code = match (kept.as_ref(), send.as_str()) {
                    (Some(code), _) => code.clone(),
                    (None, "reuse") => {
                        return Err(Unable::Skip("no code was spent to reuse".into()));
                    }
                    (None, _) => kept.insert(self.minted(discovery, 2, None, now + HOUR)?).clone(),
                };
                raw(&code)
            }
            "single" => raw(&self.minted(discovery, 1, None, now + HOUR)?),
            other => Err(Unable::Skip(format!("{other:?} has no meaning for prepaid"))),
        }
    }
}
