//! The L402 probe: `WWW-Authenticate: L402` / `LSAT` challenges (macaroon + BOLT11 invoice),
//! credentials `Authorization: L402 <macaroon>:<preimage hex>`.
//!
//! Forgeries need no wallet: the challenge's own macaroon with a preimage that did not pay it, a
//! macaroon with an altered signature. A paid token (one payment of the discovery invoice,
//! made once and kept) serves `paid` and `reuse`, and makes the tampered-macaroon check sharp:
//! it carries the right preimage, so only the HMAC chain can refuse it.

use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine as _;
use farebox_core::auth::AuthChallenge;
use farebox_lightning::bolt11;
use http::header::AUTHORIZATION;

use super::builtin::{Attempt, Wallets};
use super::{
    Artifact, Credential, Probe, Quote, Schema, Unable, oversized, params_artifact, value,
};
use crate::Exchange;
use crate::check::{self, AttemptKind};

/// The L402 probe. Pays with the Lightning wallet; keeps the token it paid for.
pub struct L402Probe {
    wallets: Wallets,
    paid: Mutex<Option<(String, [u8; 32])>>,
}

/// The L402 schemas.
const SCHEMAS: &[Schema] = &[
    ("l402/caveats", include_str!("../../../specs/schemas/l402/caveats.json")),
    ("l402/challenge", include_str!("../../../specs/schemas/l402/challenge.json")),
    ("l402/receipt", include_str!("../../../specs/schemas/l402/receipt.json")),
];

fn challenges(exchange: &Exchange) -> Vec<AuthChallenge> {
    super::auth_challenges(exchange, &["L402", "LSAT"])
}

fn first(exchange: &Exchange) -> Result<farebox_l402::L402Challenge, Unable> {
    let c = challenges(exchange);
    let c = c.first().ok_or_else(|| Unable::Fail("no L402 challenge to answer".into()))?;
    farebox_l402::parse_challenge(c).map_err(|e| Unable::Fail(format!("the L402 challenge: {e}")))
}

fn bearer(macaroon: &str, preimage: &[u8; 32]) -> Result<Credential, Unable> {
    Ok(vec![(AUTHORIZATION, value(&farebox_l402::format_credential(macaroon, preimage))?)])
}

fn raw(text: &str) -> Result<Credential, Unable> {
    Ok(vec![(AUTHORIZATION, value(text)?)])
}

impl L402Probe {
    /// A probe paying with `wallets.lightning`, within `wallets.max_price`.
    pub fn new(wallets: Wallets) -> Self {
        L402Probe { wallets, paid: Mutex::default() }
    }

    /// Pays the discovery invoice once and keeps the token.
    async fn paid(&self, discovery: &Exchange) -> Result<(String, [u8; 32]), Unable> {
        let wallets = &self.wallets;
        if let Some(token) = self.paid.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(token);
        }
        let Some(wallet) = &wallets.lightning else {
            return Err(Unable::NotRun(
                "needs a Lightning wallet (--wallet lightning=<dev wallet URL>)".into(),
            ));
        };
        let c = first(discovery)?;
        let quote = self
            .quote(&check::Attempt::new("paid"), discovery)
            .ok_or_else(|| Unable::Fail("the L402 invoice is not BOLT11 with an amount".into()))?;
        quote.allowed(&wallets.max_price)?;
        let paid = wallet
            .pay(&c.invoice, 10_000)
            .await
            .map_err(|e| super::builtin::lightning_payment_failed("the L402 invoice", e))?;
        let token = (c.macaroon, paid.preimage);
        *self.paid.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        Ok(token)
    }
}

/// The attempts this probe makes: a check file naming another does not load.
const MAKES: &[Attempt] = &[
    Attempt::Malformed,
    Attempt::Truncated,
    Attempt::Oversized,
    Attempt::Forged,
    Attempt::Tampered,
    Attempt::Paid,
    Attempt::Replay,
];

#[async_trait]
impl Probe for L402Probe {
    fn rail(&self) -> &'static str {
        "l402"
    }

    fn checks(&self) -> (&str, &str) {
        ("l402.json", include_str!("../../checks/l402.json"))
    }

    fn schemas(&self) -> &'static [Schema] {
        SCHEMAS
    }

    fn attempt(&self, send: &check::Attempt) -> Option<AttemptKind> {
        Attempt::made_by(send, MAKES)
    }

    fn has_challenge(&self, exchange: &Exchange) -> bool {
        !challenges(exchange).is_empty()
    }

    fn quote(&self, _send: &check::Attempt, discovery: &Exchange) -> Option<Quote> {
        self.wallets.lightning.as_ref()?;
        let invoice = bolt11::parse_invoice(&first(discovery).ok()?.invoice).ok()?;
        Some(Quote::msat("l402.paid", invoice.amount_msat?))
    }

    fn stated_reason(&self, exchange: &Exchange) -> Option<String> {
        super::body_reason(exchange)
    }

    fn artifacts(&self, exchange: &Exchange, kind: &str) -> Result<Vec<Artifact>, String> {
        if kind != "challenge" {
            return Err(format!("no L402 artifact {kind:?}"));
        }
        Ok(challenges(exchange).into_iter().map(|c| params_artifact("l402/challenge", c)).collect())
    }

    fn receipt(&self, exchange: &Exchange) -> Option<Result<Artifact, String>> {
        super::b64url_json_header(exchange, "l402-receipt", "l402/receipt")
    }

    fn assert(&self, name: &str, exchange: &Exchange) -> Result<(), String> {
        match name {
            "invoice_matches_macaroon" => {
                let c = first(exchange).map_err(|e| format!("{e:?}"))?;
                let invoice = bolt11::parse_invoice(&c.invoice)
                    .map_err(|e| format!("the invoice is not valid BOLT11: {e}"))?;
                if invoice.amount_msat.is_none() {
                    return Err("the invoice names no amount".into());
                }
                if invoice.payment_hash != c.payment_hash {
                    return Err(
                        "the macaroon's identifier names another payment hash than the invoice"
                            .into(),
                    );
                }
                Ok(())
            }
            "lsat_and_l402" => {
                let schemes: Vec<String> =
                    challenges(exchange).iter().map(|c| c.scheme.to_ascii_uppercase()).collect();
                if schemes.iter().any(|s| s == "LSAT") && schemes.iter().any(|s| s == "L402") {
                    Ok(())
                } else {
                    Err(format!("challenge schemes {schemes:?}, expected both LSAT and L402"))
                }
            }
            other => Err(format!("no L402 assertion {other:?}")),
        }
    }

    async fn credential(
        &self,
        send: &check::Attempt,
        discovery: &Exchange,
    ) -> Result<Credential, Unable> {
        match Attempt::parse(send)? {
            Attempt::Malformed => raw("L402 !!not-a-macaroon!!:zz"),
            Attempt::Truncated => {
                let c = first(discovery)?;
                raw(&format!("L402 {}:{}", &c.macaroon[..c.macaroon.len() / 2], "00".repeat(32)))
            }
            Attempt::Oversized => raw(&format!("L402 {}:{}", oversized(""), "00".repeat(32))),
            Attempt::Forged => bearer(&first(discovery)?.macaroon, &rand::random()),
            Attempt::Tampered => {
                // The paid token with its macaroon altered: without a payment the preimage
                // would be wrong too, and a refusal would not show the macaroon is checked.
                let (macaroon, preimage) = self.paid(discovery).await?;
                let mut bytes = farebox_l402::macaroon::decode_base64(&macaroon)
                    .map_err(|e| Unable::Fail(format!("the challenge macaroon: {e}")))?;
                // The signature is the last field of a V2 macaroon.
                if let Some(last) = bytes.last_mut() {
                    *last ^= 0x01;
                }
                bearer(&base64::engine::general_purpose::STANDARD.encode(&bytes), &preimage)
            }
            Attempt::Paid | Attempt::Replay => {
                let (macaroon, preimage) = self.paid(discovery).await?;
                bearer(&macaroon, &preimage)
            }
            other => Err(Unable::Skip(format!("{other:?} has no meaning for L402"))),
        }
    }
}
