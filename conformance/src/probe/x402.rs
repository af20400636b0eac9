//! The x402 probe: v2 (`PAYMENT-REQUIRED` / `PAYMENT-SIGNATURE` / `PAYMENT-RESPONSE`) and v1
//! (the JSON body's `accepts` / `X-PAYMENT` / `X-PAYMENT-RESPONSE`), scheme `exact` on EVM.
//!
//! Every refusal check sends a payload that is well formed and signed, so that only the rule
//! under test can refuse it: the authorization is signed by the wallet key (funded on the
//! server's chain) with one field wrong — the amount, the recipient, the network, the time
//! window, the version, the signer (the payer's authorization signed by someone else). Without
//! a wallet key a throwaway key signs, and a refusal may then be for want of funds: the report
//! shows the reason the server stated, and a stated reason that is not the rule's fails the
//! check. `paid` signs with the wallet key; `replay` sends that same payload again.

use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine as _;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, PrivateKeySigner, U256};
use http::HeaderName;
use serde_json::{Value, json};

use super::builtin::{Attempt, Wallets};
use super::{Artifact, Credential, Probe, Quote, Schema, Unable, oversized, value};
use crate::Exchange;
use crate::check::{self, AttemptKind};

const PAYMENT_REQUIRED: &str = "payment-required";
const PAYMENT_SIGNATURE: HeaderName = HeaderName::from_static("payment-signature");
const X_PAYMENT: HeaderName = HeaderName::from_static("x-payment");

/// The x402 probe. Pays with the EVM key; keeps the payment it made, for `replay`.
pub struct X402Probe {
    wallets: Wallets,
    paid: Mutex<Option<Credential>>,
}

impl X402Probe {
    /// A probe paying with `wallets.evm`, within `wallets.max_price`, that reads the key's
    /// balance through `wallets.evm_rpc`.
    pub fn new(wallets: Wallets) -> Self {
        X402Probe { wallets, paid: Mutex::default() }
    }
}

/// The x402 schemas.
const SCHEMAS: &[Schema] = &[
    ("x402/exact-evm-payload", include_str!("../../../specs/schemas/x402/exact-evm-payload.json")),
    (
        "x402/facilitator/settle-request",
        include_str!("../../../specs/schemas/x402/facilitator/settle-request.json"),
    ),
    (
        "x402/facilitator/settle-response",
        include_str!("../../../specs/schemas/x402/facilitator/settle-response.json"),
    ),
    (
        "x402/facilitator/supported-response",
        include_str!("../../../specs/schemas/x402/facilitator/supported-response.json"),
    ),
    (
        "x402/facilitator/verify-request",
        include_str!("../../../specs/schemas/x402/facilitator/verify-request.json"),
    ),
    (
        "x402/facilitator/verify-response",
        include_str!("../../../specs/schemas/x402/facilitator/verify-response.json"),
    ),
    (
        "x402/v1/payment-payload",
        include_str!("../../../specs/schemas/x402/v1/payment-payload.json"),
    ),
    (
        "x402/v1/payment-required",
        include_str!("../../../specs/schemas/x402/v1/payment-required.json"),
    ),
    (
        "x402/v1/payment-requirements",
        include_str!("../../../specs/schemas/x402/v1/payment-requirements.json"),
    ),
    (
        "x402/v1/settle-response",
        include_str!("../../../specs/schemas/x402/v1/settle-response.json"),
    ),
    (
        "x402/v2/payment-payload",
        include_str!("../../../specs/schemas/x402/v2/payment-payload.json"),
    ),
    (
        "x402/v2/payment-required",
        include_str!("../../../specs/schemas/x402/v2/payment-required.json"),
    ),
    (
        "x402/v2/payment-requirements",
        include_str!("../../../specs/schemas/x402/v2/payment-requirements.json"),
    ),
    (
        "x402/v2/settle-response",
        include_str!("../../../specs/schemas/x402/v2/settle-response.json"),
    ),
];

/// The payment requirements of a 402, as sent.
enum Required {
    V2(Value),
    V1(Value),
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn decode_b64_json(text: &str) -> Option<Value> {
    let bytes = b64().decode(text.trim()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn required(exchange: &Exchange) -> Option<Required> {
    if let Some(h) = exchange.headers.get(PAYMENT_REQUIRED) {
        return h.to_str().ok().and_then(decode_b64_json).map(Required::V2);
    }
    let body = exchange.json()?;
    (body.get("x402Version").and_then(Value::as_u64) == Some(1) && body.get("accepts").is_some())
        .then_some(Required::V1(body))
}

/// What an `exact` EVM requirement asks for.
struct Terms {
    requirement: Value,
    chain_id: u64,
    asset: Address,
    pay_to: Address,
    amount: U256,
    name: String,
    version: String,
}

fn chain_of(network: &str) -> Option<u64> {
    farebox_x402::network::eip155_chain_id(network).or_else(|| {
        farebox_x402::network::v1_to_caip2(network).and_then(farebox_x402::network::eip155_chain_id)
    })
}

fn exact_evm(required: &Required) -> Option<Terms> {
    let (accepts, amount_key) = match required {
        Required::V2(r) => (r.get("accepts")?.as_array()?, "amount"),
        Required::V1(r) => (r.get("accepts")?.as_array()?, "maxAmountRequired"),
    };
    accepts.iter().find_map(|q| {
        if q.get("scheme")?.as_str()? != "exact" {
            return None;
        }
        let extra = q.get("extra")?;
        Some(Terms {
            requirement: q.clone(),
            chain_id: chain_of(q.get("network")?.as_str()?)?,
            asset: q.get("asset")?.as_str()?.parse().ok()?,
            pay_to: q.get("payTo")?.as_str()?.parse().ok()?,
            amount: U256::from_str_radix(q.get(amount_key)?.as_str()?, 10).ok()?,
            name: extra.get("name")?.as_str()?.to_string(),
            version: extra.get("version")?.as_str()?.to_string(),
        })
    })
}

/// A key that holds nothing (a random scalar; a zero or out-of-range one is astronomically
/// unlikely and retried).
pub(crate) fn random_key() -> PrivateKeySigner {
    loop {
        if let Ok(key) = PrivateKeySigner::from_bytes(&B256::from(rand::random::<[u8; 32]>())) {
            return key;
        }
    }
}

/// The time payments are signed at; a tester whose clock reads before 1970 cannot sign a valid
/// window, so the check is not run.
fn now() -> Result<u64, Unable> {
    farebox_core::time::unix_now().map_err(|e| Unable::NotRun(e.to_string()))
}

/// A signed `exact` payload for `terms`, valid around `t` (Unix seconds), with `tweak` applied to
/// the authorization and the requirement before signing (`from` is the signer unless the tweak
/// changes it afterwards).
fn payment(
    required: &Required,
    terms: &Terms,
    signer: &PrivateKeySigner,
    t: u64,
    tweak: impl FnOnce(&mut TransferWithAuthorization, &mut Value, &mut u64),
) -> (HeaderName, Value) {
    let mut auth = TransferWithAuthorization {
        from: signer.address(),
        to: terms.pay_to,
        value: terms.amount,
        validAfter: U256::from(t.saturating_sub(600)),
        validBefore: U256::from(t + 300),
        nonce: B256::from(rand::random::<[u8; 32]>()),
    };
    let mut requirement = terms.requirement.clone();
    let mut chain_id = terms.chain_id;
    tweak(&mut auth, &mut requirement, &mut chain_id);
    let domain = TokenDomain::new(terms.name.clone(), terms.version.clone(), chain_id, terms.asset);
    let signature = eip3009::sign(signer, &domain, &auth);
    let payload = json!({
        "signature": format!("0x{}", hex::encode(signature)),
        "authorization": {
            // EIP-55 checksummed, as the reference clients send them.
            "from": auth.from.to_checksum(None), "to": auth.to.to_checksum(None),
            "value": auth.value.to_string(), "validAfter": auth.validAfter.to_string(),
            "validBefore": auth.validBefore.to_string(), "nonce": format!("{:#x}", auth.nonce),
        }
    });
    match required {
        Required::V2(r) => {
            let mut p = json!({"x402Version": 2, "accepted": requirement, "payload": payload});
            if let Some(resource) = r.get("resource") {
                p["resource"] = resource.clone();
            }
            (PAYMENT_SIGNATURE, p)
        }
        Required::V1(_) => (
            X_PAYMENT,
            json!({"x402Version": 1, "scheme": "exact", "network": requirement["network"], "payload": payload}),
        ),
    }
}

/// Why a paying check does not run without a key.
fn no_key() -> Unable {
    Unable::NotRun(
        "needs an EVM key funded on the server's chain (--wallet evm=env with FAREBOX_CONFORMANCE_EVM_KEY)".into(),
    )
}

/// A payment of `terms` signed by the wallet key, within the cap.
fn pay(required: &Required, terms: &Terms, wallets: &Wallets) -> Result<Credential, Unable> {
    let key = wallets.evm.as_ref().ok_or_else(no_key)?;
    Quote::token("x402.paid", terms.amount, terms.chain_id, terms.asset)
        .allowed(&wallets.max_price)?;
    let (name, p) = payment(required, terms, key, now()?, |_, _, _| {});
    encode(name, &p)
}

fn header(name: HeaderName, text: &str) -> Result<Credential, Unable> {
    Ok(vec![(name, value(text)?)])
}

fn encode(name: HeaderName, payload: &Value) -> Result<Credential, Unable> {
    header(name, &b64().encode(payload.to_string()))
}

/// The attempts this probe makes: a check file naming another does not load.
const MAKES: &[Attempt] = &[
    Attempt::Malformed,
    Attempt::NotAnObject,
    Attempt::Truncated,
    Attempt::Oversized,
    Attempt::Forged,
    Attempt::WrongAmount,
    Attempt::Overpay,
    Attempt::WrongRecipient,
    Attempt::WrongNetwork,
    Attempt::Expired,
    Attempt::NotYetValid,
    Attempt::UnknownVersion,
    Attempt::Paid,
    Attempt::Replay,
    Attempt::Fresh,
    Attempt::LowercaseHex,
];

#[async_trait]
impl Probe for X402Probe {
    fn rail(&self) -> &'static str {
        "x402"
    }

    fn checks(&self) -> (&str, &str) {
        ("x402.json", include_str!("../../checks/x402.json"))
    }

    fn schemas(&self) -> &'static [Schema] {
        SCHEMAS
    }

    fn attempt(&self, send: &check::Attempt) -> Option<AttemptKind> {
        Attempt::made_by(send, MAKES)
    }

    fn has_challenge(&self, exchange: &Exchange) -> bool {
        required(exchange).is_some()
    }

    fn quote(&self, _send: &check::Attempt, discovery: &Exchange) -> Option<Quote> {
        self.wallets.evm.as_ref()?;
        let t = exact_evm(&required(discovery)?)?;
        Some(Quote::token("x402.paid", t.amount, t.chain_id, t.asset))
    }

    fn stated_reason(&self, exchange: &Exchange) -> Option<String> {
        let stated = match required(exchange) {
            Some(Required::V2(r)) | Some(Required::V1(r)) => {
                r.get("error").and_then(Value::as_str).map(str::to_owned)
            }
            None => None,
        };
        stated.or_else(|| super::body_reason(exchange))
    }

    fn artifacts(&self, exchange: &Exchange, kind: &str) -> Result<Vec<Artifact>, String> {
        if kind != "challenge" {
            return Err(format!("no x402 artifact {kind:?}"));
        }
        match required(exchange) {
            Some(Required::V2(v)) => Ok(vec![("x402/v2/payment-required".into(), v)]),
            Some(Required::V1(v)) => Ok(vec![("x402/v1/payment-required".into(), v)]),
            None => Err("PAYMENT-REQUIRED is not base64 JSON, and the body is no v1 answer".into()),
        }
    }

    fn receipt(&self, exchange: &Exchange) -> Option<Result<Artifact, String>> {
        let (name, schema) = if let Some(h) = exchange.headers.get("payment-response") {
            (h, "x402/v2/settle-response")
        } else {
            (exchange.headers.get("x-payment-response")?, "x402/v1/settle-response")
        };
        let decoded = name.to_str().ok().and_then(decode_b64_json);
        // A settlement that failed is reported in the same header (`success: false`, as the
        // TypeScript SDK answers a copy whose settlement lost a race): that is no receipt.
        if decoded.as_ref().is_some_and(|v| v.get("success") == Some(&Value::Bool(false))) {
            return None;
        }
        Some(
            decoded
                .map(|v| (schema.to_string(), v))
                .ok_or_else(|| "the settlement header is not base64 JSON".to_string()),
        )
    }

    fn assert(&self, name: &str, exchange: &Exchange) -> Result<(), String> {
        match name {
            "exact_evm_offered" => {
                let r = required(exchange).ok_or("no payment requirements")?;
                exact_evm(&r).map(|_| ()).ok_or_else(|| {
                    "no `exact` requirement on an eip155 network with extra.name and extra.version".into()
                })
            }
            other => Err(format!("no x402 assertion {other:?}")),
        }
    }

    async fn credential(
        &self,
        send: &check::Attempt,
        discovery: &Exchange,
    ) -> Result<Credential, Unable> {
        let (send, wallets) = (Attempt::parse(send)?, &self.wallets);
        let r = required(discovery)
            .ok_or_else(|| Unable::Fail("no payment requirements to answer".into()))?;
        let name = match r {
            Required::V2(_) => PAYMENT_SIGNATURE,
            Required::V1(_) => X_PAYMENT,
        };
        let terms = || {
            exact_evm(&r).ok_or_else(|| Unable::Skip("no `exact` EVM requirement to answer".into()))
        };
        // Refusals are signed by the funded key when there is one (and a wrongly accepted
        // overpayment would stay within the cap), so that only the rule under test can refuse
        // them; otherwise by a key that holds nothing.
        let funded = wallets.evm.clone().filter(|_| {
            exact_evm(&r).is_some_and(|t| {
                let over = t.amount.saturating_add(U256::from(1u8));
                Quote::token("", over, t.chain_id, t.asset).within(&wallets.max_price)
            })
        });
        let signer = funded.unwrap_or_else(random_key);
        let now = now()?;
        let signed = |tweak: &dyn Fn(&mut TransferWithAuthorization, &mut Value, &mut u64)| -> Result<Credential, Unable> {
            let (name, p) = payment(&r, &terms()?, &signer, now, |a, q, c| tweak(a, q, c));
            encode(name, &p)
        };
        match send {
            Attempt::Malformed => header(name, "!!not base64!!"),
            Attempt::NotAnObject => header(name, &b64().encode("[1,2,3]")),
            Attempt::Truncated => {
                let (name, p) = payment(&r, &terms()?, &signer, now, |_, _, _| {});
                let full = b64().encode(p.to_string());
                header(name, &full[..full.len() / 2])
            }
            Attempt::Oversized => header(name, &oversized("")),
            Attempt::UnknownVersion => {
                let (name, mut p) = payment(&r, &terms()?, &signer, now, |_, _, _| {});
                p["x402Version"] = json!(99);
                encode(name, &p)
            }
            // The payer's own authorization, signed by someone else.
            Attempt::Forged => {
                let from = signer.address();
                let (name, p) = payment(&r, &terms()?, &random_key(), now, |a, _, _| a.from = from);
                encode(name, &p)
            }
            Attempt::WrongAmount => {
                let t = terms()?;
                if t.amount <= U256::from(1u8) {
                    return Err(Unable::Skip("the price is too small to underpay".into()));
                }
                signed(&|a, _, _| a.value -= U256::from(1u8))
            }
            Attempt::Overpay => signed(&|a, _, _| a.value += U256::from(1u8)),
            Attempt::WrongRecipient => signed(&|a, _, _| a.to = Address::repeat_byte(0x5e)),
            Attempt::WrongNetwork => signed(&|_, q, chain| {
                let other = if *chain == 1 { 10 } else { 1 };
                *chain = other;
                q["network"] = if matches!(r, Required::V2(_)) {
                    json!(format!("eip155:{other}"))
                } else {
                    json!(if other == 1 { "ethereum" } else { "optimism" })
                };
            }),
            Attempt::Expired => signed(&|a, _, _| {
                a.validAfter = U256::from(now - 3600);
                a.validBefore = U256::from(now - 60);
            }),
            Attempt::NotYetValid => signed(&|a, _, _| {
                a.validAfter = U256::from(now + 3600);
                a.validBefore = U256::from(now + 7200);
            }),
            Attempt::Paid | Attempt::Replay => {
                if let Some(kept) = self.paid.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                    return Ok(kept);
                }
                if send == Attempt::Replay {
                    return Err(Unable::Skip("no payment was made to replay".into()));
                }
                let credential = pay(&r, &terms()?, wallets)?;
                *self.paid.lock().unwrap_or_else(|e| e.into_inner()) = Some(credential.clone());
                Ok(credential)
            }
            // A second payment, made for a race of copies: not kept for `replay`.
            Attempt::Fresh => pay(&r, &terms()?, wallets),
            Attempt::LowercaseHex => {
                let key = wallets.evm.as_ref().ok_or_else(no_key)?;
                let terms = terms()?;
                Quote::token("x402.paid", terms.amount, terms.chain_id, terms.asset)
                    .allowed(&wallets.max_price)?;
                let (name, mut p) = payment(&r, &terms, key, now, |_, _, _| {});
                let authorization = &mut p["payload"]["authorization"];
                for field in ["from", "to"] {
                    let lower = authorization[field].as_str().unwrap_or_default().to_lowercase();
                    authorization[field] = json!(lower);
                }
                encode(name, &p)
            }
            other => Err(Unable::Skip(format!("{other:?} has no meaning for x402"))),
        }
    }

    async fn wallet_cause(&self, send: &check::Attempt, answering: &Exchange) -> Option<String> {
        super::builtin::evm_wallet_cause(&self.quote(send, answering)?, &self.wallets).await
    }
}
