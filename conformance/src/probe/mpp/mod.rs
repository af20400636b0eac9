//! The MPP probe: `WWW-Authenticate: Payment` challenges, `Authorization: Payment <base64url
//! JSON>` credentials, `Payment-Receipt`.
//!
//! Attacks are aimed at a `charge` challenge (single use, so that `replay` means something),
//! preferably one the wallets can pay: `lightning` with a Lightning wallet, `evm` with an EVM
//! key. Forged proofs need no wallet (a preimage that did not pay, an EIP-3009 authorization by
//! a key that holds nothing); `paid` pays for real and `replay` sends that credential again.

mod evm_session;

use std::sync::Mutex;

use async_trait::async_trait;
use farebox_evm::U256;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_mpp::evm::charge::{self as evm_charge, EvmChargeRequest};
use farebox_mpp::lightning::charge::{self as lightning_charge, LightningChargeRequest};
use farebox_mpp::{Challenge, Credential as MppCredential, jcs, time};
use http::header::AUTHORIZATION;
use serde_json::{Map, Value, json};

use super::builtin::{Attempt, Wallets};
use super::x402::random_key;
use super::{
    Artifact, Credential, Probe, Quote, Schema, Unable, oversized, value, www_authenticate,
};
use crate::Exchange;
use crate::check::{self, AttemptKind};

/// The MPP probe. Pays with the Lightning wallet or the EVM key; keeps the credential it paid
/// with, for `replay`, and the preference it sent in `Accept-Payment`, to judge the answer.
pub struct MppProbe {
    wallets: Wallets,
    paid: Mutex<Option<Credential>>,
    preferred: Mutex<Option<(String, String)>>,
    /// The payment session the run opened, for its later steps.
    session: Mutex<Option<evm_session::Session>>,
}

fn challenges(exchange: &Exchange) -> Vec<Challenge> {
    let values = www_authenticate(&exchange.headers);
    // One unparseable challenge must not hide the others: parse field by field.
    values.iter().filter_map(|v| farebox_mpp::parse_www_authenticate([*v]).ok()).flatten().collect()
}

/// The MPP schemas.
const SCHEMAS: &[Schema] = &[
    ("mpp/challenge", include_str!("../../../../specs/schemas/mpp/challenge.json")),
    ("mpp/credential", include_str!("../../../../specs/schemas/mpp/credential.json")),
    (
        "mpp/payload/evm-charge",
        include_str!("../../../../specs/schemas/mpp/payload/evm-charge.json"),
    ),
    (
        "mpp/payload/evm-session",
        include_str!("../../../../specs/schemas/mpp/payload/evm-session.json"),
    ),
    (
        "mpp/payload/lightning-charge",
        include_str!("../../../../specs/schemas/mpp/payload/lightning-charge.json"),
    ),
    (
        "mpp/payload/lightning-session",
        include_str!("../../../../specs/schemas/mpp/payload/lightning-session.json"),
    ),
    ("mpp/receipt", include_str!("../../../../specs/schemas/mpp/receipt.json")),
    (
        "mpp/request/evm-charge",
        include_str!("../../../../specs/schemas/mpp/request/evm-charge.json"),
    ),
    (
        "mpp/request/evm-session",
        include_str!("../../../../specs/schemas/mpp/request/evm-session.json"),
    ),
    (
        "mpp/request/lightning-charge",
        include_str!("../../../../specs/schemas/mpp/request/lightning-charge.json"),
    ),
    (
        "mpp/request/lightning-session",
        include_str!("../../../../specs/schemas/mpp/request/lightning-session.json"),
    ),
];

/// The schema of a method / intent's request and payload, if the suite has one.
fn schema_name(c: &Challenge) -> Option<String> {
    let name = format!("{}-{}", c.method, c.intent);
    let path = format!("mpp/request/{name}");
    SCHEMAS.iter().any(|(p, _)| *p == path).then_some(name)
}

/// Whether the wallets can pay `c`.
fn payable(c: &Challenge, wallets: &Wallets) -> bool {
    c.intent == "charge"
        && ((c.method == "lightning" && wallets.lightning.is_some())
            || (c.method == "evm" && wallets.evm.is_some()))
}

/// The challenge to aim at: a charge the wallets can pay, else any charge, else the first.
fn target(exchange: &Exchange, wallets: &Wallets) -> Result<Challenge, Unable> {
    let all = challenges(exchange);
    all.iter()
        .find(|c| payable(c, wallets))
        .or_else(|| {
            all.iter()
                .find(|c| c.intent == "charge" && (c.method == "lightning" || c.method == "evm"))
        })
        .or_else(|| all.first())
        .cloned()
        .ok_or_else(|| Unable::Fail("no Payment challenge to answer".into()))
}

fn authorization(credential: &MppCredential) -> Result<Credential, Unable> {
    Ok(vec![(AUTHORIZATION, value(&credential.to_authorization())?)])
}

/// A proof for `c` that does not pay and is wrong in that one way: a random preimage, or the
/// payer's authorization (the funded wallet key's, when there is one) signed by someone else,
/// bound to the challenge. A validly signed authorization from an empty key would be refused
/// for want of funds, which proves nothing about signature checks.
fn forged_payload(c: &Challenge, wallets: &Wallets) -> Result<Map<String, Value>, Unable> {
    match (c.method.as_str(), c.intent.as_str()) {
        ("lightning", "charge") => Ok(lightning_charge::payload(&rand::random())),
        ("evm", "charge") => {
            let request = EvmChargeRequest::from_json(&c.request)
                .map_err(|e| Unable::Fail(format!("the evm charge request: {e}")))?;
            let from = wallets.evm.as_ref().map_or_else(|| random_key().address(), |k| k.address());
            let (auth, domain) = evm_authorization(c, &request, from, wallets)?;
            Ok(evm_charge::payload(&auth, &eip3009::sign(&random_key(), &domain, &auth)))
        }
        (m, i) => Err(Unable::Skip(format!("no forgery for method {m:?} intent {i:?}"))),
    }
}

fn evm_authorization(
    c: &Challenge,
    request: &EvmChargeRequest,
    from: farebox_evm::Address,
    wallets: &Wallets,
) -> Result<(TransferWithAuthorization, TokenDomain), Unable> {
    let expires = match c.expires.as_deref().and_then(|e| time::parse(e).ok()) {
        Some(t) => t,
        None => time::unix_now().map_err(|e| Unable::NotRun(e.to_string()))? + 300,
    };
    // The challenge's domain, a configured one, or a known USDC deployment's.
    let configured = || {
        wallets
            .evm_domains
            .iter()
            .find(|(chain, token, _, _)| *chain == request.chain_id && *token == request.currency)
            .map(|(_, _, n, v)| (n.clone(), v.clone()))
    };
    let known = || {
        farebox_evm::usdc::KNOWN
            .iter()
            .find(|d| d.chain_id == request.chain_id && d.address == request.currency)
            .map(|d| (d.name.to_string(), d.version.to_string()))
    };
    let (name, version) = request
        .authorization
        .as_ref()
        .map(|named| (named.name.clone(), named.version.clone()))
        .or_else(configured)
        .or_else(known)
        .ok_or_else(|| {
            Unable::Skip(
                "the evm challenge names no EIP-712 domain for its token, and none is configured"
                    .into(),
            )
        })?;
    let domain = TokenDomain::new(name, version, request.chain_id, request.currency);
    let auth = TransferWithAuthorization {
        from,
        to: request.recipient,
        value: request.amount,
        validAfter: U256::ZERO,
        validBefore: U256::from(expires),
        nonce: evm_charge::challenge_nonce(&c.id, &c.realm),
    };
    Ok((auth, domain))
}

impl MppProbe {
    /// A probe paying with `wallets.lightning` or `wallets.evm` within `wallets.max_price`,
    /// opening its sessions through `wallets.evm_rpc`.
    pub fn new(wallets: Wallets) -> Self {
        MppProbe {
            wallets,
            paid: Mutex::default(),
            preferred: Mutex::default(),
            session: Mutex::default(),
        }
    }

    /// Pays the charge of `discovery` the wallets can pay, within the cap.
    async fn pay(&self, discovery: &Exchange) -> Result<Credential, Unable> {
        let wallets = &self.wallets;
        let c = target(discovery, wallets)?;
        match self.quote_of(Attempt::Paid, discovery) {
            Some(quote) => quote.allowed(&wallets.max_price)?,
            None if payable(&c, wallets) => {
                return Err(Unable::Fail(format!(
                    "the {}/{} request does not say what it costs",
                    c.method, c.intent
                )));
            }
            None => {}
        }
        let credential = match (
            c.method.as_str(),
            c.intent.as_str(),
            &wallets.lightning,
            &wallets.evm,
        ) {
            ("lightning", "charge", Some(wallet), _) => {
                let request = LightningChargeRequest::from_json(&c.request)
                    .map_err(|e| Unable::Fail(format!("the lightning charge request: {e}")))?;
                let paid = wallet.pay(&request.invoice, 10_000).await.map_err(|e| {
                    super::builtin::lightning_payment_failed("the charge invoice", e)
                })?;
                MppCredential::new(&c, lightning_charge::payload(&paid.preimage))
            }
            ("evm", "charge", _, Some(key)) => {
                let request = EvmChargeRequest::from_json(&c.request)
                    .map_err(|e| Unable::Fail(format!("the evm charge request: {e}")))?;
                let (auth, domain) = evm_authorization(&c, &request, key.address(), wallets)?;
                let mut credential = MppCredential::new(
                    &c,
                    evm_charge::payload(&auth, &eip3009::sign(key, &domain, &auth)),
                );
                credential.source = Some(evm_charge::source(request.chain_id, key.address()));
                credential
            }
            (m, "charge", _, _) => {
                return Err(Unable::NotRun(format!(
                    "no wallet for the {m}/charge challenge (--wallet lightning=… or evm=env)"
                )));
            }
            (m, i, _, _) => {
                return Err(Unable::NotRun(format!(
                    "the server offers no charge the suite pays (it offers {m}/{i}; the mpp.session checks pay evm sessions)"
                )));
            }
        };
        authorization(&credential)
    }
}

/// The attempts this probe makes: a check file naming another does not load.
const MAKES: &[Attempt] = &[
    Attempt::Malformed,
    Attempt::NotAnObject,
    Attempt::Truncated,
    Attempt::Oversized,
    Attempt::Forged,
    Attempt::Tampered,
    Attempt::TamperedRequest,
    Attempt::UnknownMethod,
    Attempt::TwoCredentials,
    Attempt::OtherRealm,
    Attempt::AcceptPayment,
    Attempt::Paid,
    Attempt::Replay,
    Attempt::Fresh,
    Attempt::SessionOpen,
    Attempt::SessionVoucher,
    Attempt::SessionVoucherEqual,
    Attempt::SessionVoucherLower,
    Attempt::SessionVoucherAboveDeposit,
    Attempt::SessionOtherChannel,
    Attempt::SessionTopUp,
    Attempt::SessionClose,
    Attempt::SessionClosedChannel,
];

#[async_trait]
impl Probe for MppProbe {
    fn rail(&self) -> &'static str {
        "mpp"
    }

    fn checks(&self) -> (&str, &str) {
        ("mpp.json", include_str!("../../../checks/mpp.json"))
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

    fn quote(&self, send: &check::Attempt, discovery: &Exchange) -> Option<Quote> {
        self.quote_of(Attempt::of(send)?, discovery)
    }

    fn stated_reason(&self, exchange: &Exchange) -> Option<String> {
        super::body_reason(exchange)
    }

    fn artifacts(&self, exchange: &Exchange, kind: &str) -> Result<Vec<Artifact>, String> {
        let all = challenges(exchange);
        match kind {
            "challenge" => Ok(all
                .iter()
                .map(|c| {
                    let mut params = json!({
                        "id": c.id, "realm": c.realm, "method": c.method, "intent": c.intent,
                        "request": c.request_b64,
                    });
                    for (k, v) in [
                        ("expires", &c.expires),
                        ("description", &c.description),
                        ("digest", &c.digest),
                        ("opaque", &c.opaque),
                        ("header", &c.header),
                    ] {
                        if let Some(v) = v {
                            params[k] = json!(v);
                        }
                    }
                    ("mpp/challenge".to_string(), params)
                })
                .collect()),
            "request" => {
                let known: Vec<Artifact> = all
                    .iter()
                    .filter_map(|c| {
                        schema_name(c).map(|n| (format!("mpp/request/{n}"), c.request.clone()))
                    })
                    .collect();
                if known.is_empty() && !all.is_empty() {
                    return Err("no challenge of a method and intent the suite knows".into());
                }
                Ok(known)
            }
            // The discovery document (`GET /openapi.json`), the MPP discovery draft's.
            "discovery" => exchange
                .json()
                .map(|doc| vec![("discovery/openapi".to_string(), doc)])
                .ok_or_else(|| "/openapi.json is not JSON".to_string()),
            other => Err(format!("no MPP artifact {other:?}")),
        }
    }

    fn receipt(&self, exchange: &Exchange) -> Option<Result<Artifact, String>> {
        super::b64url_json_header(exchange, "payment-receipt", "mpp/receipt")
    }

    fn assert(&self, name: &str, exchange: &Exchange) -> Result<(), String> {
        match name {
            "expires_in_future" => {
                let now = time::unix_now().map_err(|e| e.to_string())?;
                for c in challenges(exchange) {
                    match c.expires.as_deref().map(time::parse) {
                        None => {
                            return Err(format!(
                                "the {}/{} challenge has no expires",
                                c.method, c.intent
                            ));
                        }
                        Some(Err(e)) => return Err(format!("expires is not RFC 3339: {e}")),
                        Some(Ok(t)) if t <= now => {
                            return Err(format!("the challenge expired already ({t})"));
                        }
                        Some(Ok(_)) => {}
                    }
                }
                Ok(())
            }
            "accept_payment_honoured" => {
                let Some((method, intent)) =
                    self.preferred.lock().unwrap_or_else(|e| e.into_inner()).clone()
                else {
                    return Err("no preference was sent".into());
                };
                match challenges(exchange).first() {
                    Some(c) if c.method == method && c.intent == intent => Ok(()),
                    Some(c) => Err(format!(
                        "asked for {method}/{intent} first, the first challenge is {}/{}",
                        c.method, c.intent
                    )),
                    None => Err("no Payment challenge on the answer".into()),
                }
            }
            other => Err(format!("no MPP assertion {other:?}")),
        }
    }

    async fn credential(
        &self,
        send: &check::Attempt,
        discovery: &Exchange,
    ) -> Result<Credential, Unable> {
        let (send, wallets) = (Attempt::parse(send)?, &self.wallets);
        let raw =
            |text: &str| -> Result<Credential, Unable> { Ok(vec![(AUTHORIZATION, value(text)?)]) };
        match send {
            Attempt::Malformed => raw("Payment !!not-base64url!!"),
            Attempt::NotAnObject => raw(&format!("Payment {}", jcs::b64url_encode(b"[]"))),
            Attempt::Oversized => raw(&format!("Payment {}", oversized(""))),
            Attempt::Truncated => {
                let c = target(discovery, wallets)?;
                let token = MppCredential::new(&c, forged_payload(&c, wallets).unwrap_or_default())
                    .encode();
                raw(&format!("Payment {}", &token[..token.len() / 2]))
            }
            Attempt::Tampered => {
                let mut c = target(discovery, wallets)?;
                let payload = forged_payload(&c, wallets).unwrap_or_default();
                // One character of the id changed: the binding no longer holds.
                let mut id: Vec<char> = c.id.chars().collect();
                if let Some(first) = id.first_mut() {
                    *first = if *first == 'A' { 'B' } else { 'A' };
                }
                c.id = id.into_iter().collect();
                authorization(&MppCredential::new(&c, payload))
            }
            Attempt::TamperedRequest => {
                let mut c = target(discovery, wallets)?;
                let payload = forged_payload(&c, wallets).unwrap_or_default();
                let mut request = c.request.clone();
                request["amount"] = json!("1");
                c.request_b64 = jcs::encode_b64_jcs(&request)
                    .map_err(|e| Unable::Fail(format!("re-encoding the request: {e}")))?;
                authorization(&MppCredential::new(&c, payload))
            }
            Attempt::UnknownMethod => {
                let mut c = target(discovery, wallets)?;
                c.method = "nosuchmethod".into();
                authorization(&MppCredential::new(&c, Map::new()))
            }
            Attempt::TwoCredentials => {
                let c = target(discovery, wallets)?;
                let one = authorization(&MppCredential::new(
                    &c,
                    forged_payload(&c, wallets).unwrap_or_default(),
                ))?;
                Ok(one.iter().cloned().chain(one.iter().cloned()).collect())
            }
            Attempt::Forged => {
                let c = target(discovery, wallets)?;
                authorization(&MppCredential::new(&c, forged_payload(&c, wallets)?))
            }
            Attempt::Paid | Attempt::Replay => {
                if let Some(kept) = self.paid.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                    return Ok(kept);
                }
                if send == Attempt::Replay {
                    return Err(Unable::Skip("no payment was made to replay".into()));
                }
                let credential = self.pay(discovery).await?;
                *self.paid.lock().unwrap_or_else(|e| e.into_inner()) = Some(credential.clone());
                Ok(credential)
            }
            Attempt::Fresh => self.pay(discovery).await,
            Attempt::OtherRealm => {
                let mut c = target(discovery, wallets)?;
                let payload = forged_payload(&c, wallets).unwrap_or_default();
                c.realm = format!("another.{}", c.realm);
                authorization(&MppCredential::new(&c, payload))
            }
            Attempt::AcceptPayment => {
                // The offer the server lists last: a preference that changes the order only
                // if the server honours it.
                let all = challenges(discovery);
                let kinds: Vec<(String, String)> =
                    all.iter().map(|c| (c.method.clone(), c.intent.clone())).collect();
                let first =
                    kinds.first().ok_or_else(|| Unable::Fail("no Payment challenge".into()))?;
                let preferred =
                    kinds.iter().rev().find(|k| *k != first).cloned().ok_or_else(|| {
                        Unable::Skip("the server makes one kind of offer: nothing to prefer".into())
                    })?;
                let header = format!("{}/{}", preferred.0, preferred.1);
                *self.preferred.lock().unwrap_or_else(|e| e.into_inner()) = Some(preferred);
                Ok(vec![(http::HeaderName::from_static("accept-payment"), value(&header)?)])
            }
            Attempt::SessionOpen => {
                let c = evm_session::challenge(discovery)
                    .ok_or_else(|| Unable::Skip("the server offers no evm session".into()))?;
                let (session, credential) = evm_session::open(&c, wallets).await?;
                *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
                Ok(credential)
            }
            send if send.is_session() => {
                let c = evm_session::challenge(discovery)
                    .ok_or_else(|| Unable::Skip("the server offers no evm session".into()))?;
                let Some(mut session) = self.session() else {
                    return Err(Unable::Skip("no session was opened".into()));
                };
                let credential = evm_session::step(send, &mut session, &c, wallets).await;
                *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
                credential
            }
            other => Err(Unable::Skip(format!("{other:?} has no meaning for MPP"))),
        }
    }

    async fn answered(&self, send: &check::Attempt, answers: &[Exchange]) -> Result<(), String> {
        let Some(send) = Attempt::of(send).filter(|a| a.is_session()) else { return Ok(()) };
        let Some(mut session) = self.session() else { return Ok(()) };
        let learnt = evm_session::answered(send, &mut session, answers, &self.wallets).await;
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
        learnt
    }

    async fn wallet_cause(&self, send: &check::Attempt, answering: &Exchange) -> Option<String> {
        super::builtin::evm_wallet_cause(&self.quote(send, answering)?, &self.wallets).await
    }
}

impl MppProbe {
    /// What `send` would pay with the probe's wallets.
    fn quote_of(&self, send: Attempt, discovery: &Exchange) -> Option<Quote> {
        let wallets = &self.wallets;
        if send.is_session() {
            return evm_session::quote(send, discovery, wallets);
        }
        let c = target(discovery, wallets).ok().filter(|c| payable(c, wallets))?;
        if c.method == "lightning" {
            let request = LightningChargeRequest::from_json(&c.request).ok()?;
            let invoice = farebox_lightning::bolt11::parse_invoice(&request.invoice).ok()?;
            return Some(Quote::msat("mpp.paid", invoice.amount_msat?));
        }
        let request = EvmChargeRequest::from_json(&c.request).ok()?;
        Some(Quote::token("mpp.paid", request.amount, request.chain_id, request.currency))
    }

    /// The session the run opened, if any.
    fn session(&self) -> Option<evm_session::Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
