//! Payment credentials built by hand from a gateway's 402 (and the configuration sections of an
//! x402 rail on a test chain), for tests and load tests that must hold the credential itself: to replay it against several instances, or to pre-sign many
//! before a benchmark. (Paying clients keep their credentials to themselves.) Feature
//! `testing`; nothing here is used by the gateway.
//!
//! Every credential is real: EIP-3009 authorizations and session vouchers signed with the
//! payer's key over the domain the 402 names, MPP credentials echoing the challenge they answer.

use std::str::FromStr;

use base64::Engine as _;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, PrivateKeySigner, U256};
use farebox_mpp::evm::session::{SessionPayload, SignedVoucher};
use farebox_mpp::evm::voucher::{self, Voucher, VoucherDomain};
use farebox_mpp::{Challenge, Credential, EvmChargeRequest, evm::charge as evm_charge};
use http::HeaderMap;
use serde_json::{Value, json};

/// Why a credential could not be built from a 402.
pub type Error = String;

/// The `Payment` challenges of a 402 with method `method` and intent `intent`.
pub fn mpp_challenge(headers: &HeaderMap, method: &str, intent: &str) -> Result<Challenge, Error> {
    let values: Vec<&str> = headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    farebox_mpp::challenge::parse_www_authenticate(values)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|c| c.method == method && c.intent == intent)
        .ok_or_else(|| format!("no Payment challenge with method {method} and intent {intent}"))
}

/// The decoded `PAYMENT-REQUIRED` of an x402 v2 402.
pub fn x402_required(headers: &HeaderMap) -> Result<Value, Error> {
    let header = headers
        .get("payment-required")
        .and_then(|v| v.to_str().ok())
        .ok_or("no PAYMENT-REQUIRED header")?;
    farebox_x402::decode_header::<Value>(header).map_err(|e| e.to_string())
}

/// A `PAYMENT-SIGNATURE` value paying the first requirement of `required` (a decoded
/// `PAYMENT-REQUIRED`) with an EIP-3009 authorization signed by `payer`, with `nonce`, valid
/// from `now - 600` for `max_timeout_seconds`.
pub fn x402_payment(
    required: &Value,
    payer: &PrivateKeySigner,
    nonce: B256,
    now: u64,
) -> Result<String, Error> {
    let accepted = &required["accepts"][0];
    let field = |name: &str| accepted[name].as_str().ok_or(format!("requirement without {name}"));
    let chain_id: u64 = field("network")?
        .strip_prefix("eip155:")
        .and_then(|c| c.parse().ok())
        .ok_or("not an eip155 network")?;
    let token = Address::from_str(field("asset")?).map_err(|e| e.to_string())?;
    let pay_to = Address::from_str(field("payTo")?).map_err(|e| e.to_string())?;
    let amount = U256::from_str(field("amount")?).map_err(|e| e.to_string())?;
    let timeout = accepted["maxTimeoutSeconds"].as_u64().unwrap_or(60);
    let (name, version) = (
        accepted["extra"]["name"].as_str().ok_or("no extra.name")?,
        accepted["extra"]["version"].as_str().ok_or("no extra.version")?,
    );
    let auth = TransferWithAuthorization {
        from: payer.address(),
        to: pay_to,
        value: amount,
        validAfter: U256::from(now.saturating_sub(600)),
        validBefore: U256::from(now + timeout),
        nonce,
    };
    let signature = eip3009::sign(payer, &TokenDomain::new(name, version, chain_id, token), &auth);
    let payload = json!({
        "x402Version": 2,
        "resource": required["resource"],
        "accepted": accepted,
        "payload": {
            "signature": format!("0x{}", hex::encode(signature)),
            "authorization": {
                "from": format!("{:#x}", auth.from),
                "to": format!("{:#x}", auth.to),
                "value": auth.value.to_string(),
                "validAfter": auth.validAfter.to_string(),
                "validBefore": auth.validBefore.to_string(),
                "nonce": format!("{:#x}", auth.nonce),
            },
        },
        "extensions": required.get("extensions").cloned().unwrap_or(json!({})),
    });
    Ok(base64::engine::general_purpose::STANDARD.encode(payload.to_string()))
}

/// An `Authorization: Payment` value answering an MPP `evm`/`charge` challenge: an EIP-3009
/// authorization from `payer` with the challenge's nonce, over the token domain `name`/`version`.
pub fn mpp_evm_charge(
    challenge: &Challenge,
    payer: &PrivateKeySigner,
    name: &str,
    version: &str,
    now: u64,
) -> Result<String, Error> {
    let request = EvmChargeRequest::from_json(&challenge.request).map_err(|e| e.to_string())?;
    let auth = TransferWithAuthorization {
        from: payer.address(),
        to: request.recipient,
        value: request.amount,
        validAfter: U256::ZERO,
        validBefore: U256::from(now + 300),
        nonce: evm_charge::challenge_nonce(&challenge.id, &challenge.realm),
    };
    let domain = TokenDomain::new(name, version, request.chain_id, request.currency);
    let signature = eip3009::sign(payer, &domain, &auth);
    let mut credential = Credential::new(challenge, evm_charge::payload(&auth, &signature));
    credential.source = Some(evm_charge::source(request.chain_id, payer.address()));
    Ok(credential.to_authorization())
}

/// An `Authorization: Payment` value answering an MPP `evm`/`session` challenge with a voucher
/// for `cumulative` on the open channel `channel`, signed by `payer` for `escrow` on `chain_id`.
pub fn mpp_evm_voucher(
    challenge: &Challenge,
    payer: &PrivateKeySigner,
    chain_id: u64,
    escrow: Address,
    channel: B256,
    cumulative: u128,
) -> String {
    let domain = VoucherDomain::new(chain_id, escrow);
    let signature = voucher::sign(
        payer,
        &domain,
        &Voucher { channelId: channel, cumulativeAmount: cumulative },
    );
    let payload = SessionPayload::Voucher(SignedVoucher {
        channel_id: channel,
        cumulative_amount: cumulative,
        signature: signature.to_vec(),
    });
    let mut credential = Credential::new(challenge, payload.to_json());
    credential.source = Some(evm_charge::source(chain_id, payer.address()));
    credential.to_authorization()
}

/// The `[chains.local]`, `[assets.usdc]` and `[rails.x402]` sections of an anvil chain at `rpc`
/// with the token `token`, paying `pay_to`, settled with the key in `gas_key`.
pub fn x402_sections(
    chain_id: u64,
    rpc: &str,
    token: &str,
    pay_to: &str,
    gas_key: &std::path::Path,
) -> String {
    format!(
        r#"
[chains.local]
chain_id = {chain_id}
rpc = "{rpc}"

[assets.usdc]
chain = "local"
address = "{token}"
symbol = "USDC"
decimals = 6
eip712_name = "USDC"
eip712_version = "2"

[rails.x402]
asset = "usdc"
pay_to = "{pay_to}"
facilitator = {{ gas_key = {{ key_file = "{}" }} }}
"#,
        gas_key.display()
    )
}
