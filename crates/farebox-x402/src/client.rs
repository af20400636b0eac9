//! [`X402Wallet`] (feature `client`): pays x402 `exact` requirements by signing EIP-3009
//! authorizations, for `farebox-client`'s middleware.
//!
//! It reads v2 requirements from the `PAYMENT-REQUIRED` header and, only when there is none,
//! v1 requirements from the JSON body (as the reference clients do), offers every `exact`
//! requirement on an `eip155` chain that names its EIP-712 domain, and pays by signing
//! `TransferWithAuthorization` (validAfter = now − 600 s, validBefore = now + maxTimeoutSeconds,
//! a random 32-byte nonce). Nothing moves until the server's facilitator settles; the signature
//! is the proof, sent once in `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1).

use crate::{Payload, codec, exact_evm, network, v1, v2};
use async_trait::async_trait;
use farebox_core::{Asset, Money, Token};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, PrivateKeySigner, U256};
use http::{HeaderName, HeaderValue};
use serde_json::json;

use farebox_wallet::{ClientError, Funding, Offer, PaymentRequired, Proof, Wallet};

/// Signs x402 `exact` payments with an EVM key.
pub struct X402Wallet {
    signer: PrivateKeySigner,
}

enum Requirement {
    V1(v1::PaymentRequirements),
    V2 { requirement: v2::PaymentRequirements, resource: v2::ResourceInfo },
}

/// What the wallet needs from either version's requirement.
struct Terms {
    chain_id: u64,
    network: String,
    asset: Address,
    pay_to: Address,
    amount: U256,
    name: String,
    version: String,
    max_timeout: u64,
}

impl X402Wallet {
    pub fn new(signer: PrivateKeySigner) -> Self {
        X402Wallet { signer }
    }

    /// The paying address.
    pub fn address(&self) -> Address {
        self.signer.address()
    }
}

fn terms(r: &Requirement) -> Option<Terms> {
    let (scheme, network, amount, asset, pay_to, extra, max_timeout) = match r {
        Requirement::V2 { requirement: q, .. } => (
            &q.scheme,
            q.network.clone(),
            q.amount.to_u256()?,
            &q.asset,
            &q.pay_to,
            q.extra.as_ref(),
            q.max_timeout_seconds,
        ),
        Requirement::V1(q) => (
            &q.scheme,
            network::v1_to_caip2(&q.network)?.to_string(),
            q.max_amount_required.to_u256()?,
            &q.asset,
            &q.pay_to,
            q.extra.as_ref(),
            q.max_timeout_seconds,
        ),
    };
    if scheme != exact_evm::SCHEME {
        return None;
    }
    let extra = extra?;
    let method =
        extra.get("assetTransferMethod").and_then(|m| m.as_str()).unwrap_or(exact_evm::EIP3009);
    if method != exact_evm::EIP3009 {
        return None;
    }
    Some(Terms {
        chain_id: network::eip155_chain_id(&network)?,
        network,
        asset: exact_evm::parse_address(asset).ok()?,
        pay_to: exact_evm::parse_address(pay_to).ok()?,
        amount,
        name: extra.get("name")?.as_str()?.to_string(),
        version: extra.get("version")?.as_str()?.to_string(),
        max_timeout: max_timeout.clamp(1, 3600),
    })
}

fn requirements(response: &PaymentRequired) -> Result<Vec<Requirement>, ClientError> {
    if let Some(header) = response.headers.get("payment-required") {
        let text = header
            .to_str()
            .map_err(|_| ClientError::InvalidChallenge("PAYMENT-REQUIRED is not ASCII".into()))?;
        let required: v2::PaymentRequired = codec::decode_header(text)
            .map_err(|e| ClientError::InvalidChallenge(format!("PAYMENT-REQUIRED: {e}")))?;
        let resource = required.resource;
        return Ok(required
            .accepts
            .into_iter()
            .map(|requirement| Requirement::V2 { requirement, resource: resource.clone() })
            .collect());
    }
    let Some(body) = &response.body else { return Ok(Vec::new()) };
    if body.get("x402Version").and_then(|v| v.as_u64()) != Some(1) {
        return Ok(Vec::new());
    }
    let accepts: Vec<v1::PaymentRequirements> = serde_json::from_value(body["accepts"].clone())
        .map_err(|e| ClientError::InvalidChallenge(format!("x402 v1 accepts: {e}")))?;
    Ok(accepts.into_iter().map(Requirement::V1).collect())
}

/// The resource a requirement prices, with its description when it has one.
fn resource_text(url: &str, description: Option<&String>) -> String {
    match description.filter(|d| !d.is_empty()) {
        Some(d) => format!("{url} ({d})"),
        None => url.to_string(),
    }
}

#[async_trait]
impl Wallet for X402Wallet {
    fn rail(&self) -> &'static str {
        "x402"
    }

    fn offers(&self, response: &PaymentRequired) -> Result<Vec<Offer>, ClientError> {
        let mut offers = Vec::new();
        for requirement in requirements(response)? {
            let Some(t) = terms(&requirement) else { continue };
            let decimals = farebox_evm::usdc::for_chain(t.chain_id)
                .filter(|u| u.address == t.asset)
                .map_or(6, |u| u.decimals);
            let token = Token {
                network: t.network.clone(),
                address: format!("{:#x}", t.asset),
                symbol: t.name.clone(),
                decimals,
            };
            let asset = Asset::Token(token);
            let amount: u128 = t
                .amount
                .try_into()
                .map_err(|_| ClientError::InvalidChallenge("amount too large".into()))?;
            let price = Money::new(asset.clone(), amount);
            let (version, buys) = match &requirement {
                Requirement::V1(q) => (1, resource_text(&q.resource, Some(&q.description))),
                Requirement::V2 { resource, .. } => {
                    (2, resource_text(&resource.url, resource.description.as_ref()))
                }
            };
            offers.push(Offer {
                rail: "x402",
                summary: format!(
                    "x402 v{version} exact: {price} on {} to {:#x}",
                    t.network, t.pay_to
                ),
                price,
                max_fee: Money::zero(asset),
                funding: Funding::PerRequest,
                payee: Some(format!("{:#x}", t.pay_to)),
                buys: Some(buys),
                details: Box::new(requirement),
            });
        }
        Ok(offers)
    }

    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError> {
        let requirement = offer.details.downcast_ref::<Requirement>().ok_or_else(|| {
            ClientError::PaymentFailed("offer was not made by the x402 wallet".into())
        })?;
        let t = terms(requirement)
            .ok_or_else(|| ClientError::InvalidChallenge("unusable x402 requirement".into()))?;
        let now = farebox_core::time::unix_now()?;
        let nonce = B256::from(rand::random::<[u8; 32]>());
        let auth = TransferWithAuthorization {
            from: self.signer.address(),
            to: t.pay_to,
            value: t.amount,
            validAfter: U256::from(now.saturating_sub(600)),
            validBefore: U256::from(now + t.max_timeout),
            nonce,
        };
        let domain = TokenDomain::new(t.name.clone(), t.version.clone(), t.chain_id, t.asset);
        let signature = eip3009::sign(&self.signer, &domain, &auth);
        let payload = Payload::from_serialize(&json!({
            "signature": format!("0x{}", hex::encode(signature)),
            "authorization": {
                "from": format!("{:#x}", auth.from),
                "to": format!("{:#x}", auth.to),
                "value": auth.value.to_string(),
                "validAfter": auth.validAfter.to_string(),
                "validBefore": auth.validBefore.to_string(),
                "nonce": format!("{nonce:#x}"),
            }
        }))
        .map_err(|e| ClientError::PaymentFailed(e.to_string()))?;
        let (name, encoded) = match requirement {
            Requirement::V2 { requirement, resource } => {
                let payment = v2::PaymentPayload {
                    x402_version: crate::Version,
                    resource: Some(resource.clone()),
                    accepted: requirement.clone(),
                    payload,
                    extensions: None,
                };
                (HeaderName::from_static("payment-signature"), codec::encode_header(&payment))
            }
            Requirement::V1(requirement) => {
                let payment = v1::PaymentPayload {
                    x402_version: crate::Version,
                    scheme: requirement.scheme.clone(),
                    network: requirement.network.clone(),
                    payload,
                };
                (HeaderName::from_static("x-payment"), codec::encode_header(&payment))
            }
        };
        let mut value = HeaderValue::from_str(&encoded)
            .map_err(|e| ClientError::PaymentFailed(e.to_string()))?;
        value.set_sensitive(true);
        Ok(Proof {
            headers: vec![(name, value)],
            fee: Money::zero(offer.price.asset.clone()),
            reference: format!("{nonce:#x}"),
            reusable: false,
        })
    }
}
