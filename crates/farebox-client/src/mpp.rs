//! [`MppWallet`]: pays MPP `Payment` challenges with the `charge` intent.
//!
//! - `method="lightning"`: pays the BOLT11 invoice of the request with a Lightning backend,
//!   checks the preimage against the payment hash, and answers
//!   `{"challenge": <echo>, "payload": {"preimage": "…"}}`.
//! - `method="evm"` (credential type `authorization`): signs an EIP-3009
//!   `TransferWithAuthorization` in the token's EIP-712 domain with the challenge-bound nonce
//!   `keccak256(id ‖ realm)`, `validAfter = 0`, `validBefore = expires`. Nothing moves until the
//!   server settles.
//!
//! The proof is `Authorization: Payment <b64url credential>`, good for one request.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use farebox_core::{Asset, Money, Token};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{PrivateKeySigner, U256};
use farebox_lightning::{LightningBackend, LightningError, bolt11};
use farebox_mpp::evm_charge::{self, EvmChargeRequest};
use farebox_mpp::lightning_charge::{self, LightningChargeRequest};
use farebox_mpp::{Challenge, Credential};
use http::{HeaderValue, header::AUTHORIZATION};

use crate::error::ClientError;
use crate::wallet::{Offer, PaymentRequired, Proof, Wallet};

/// Pays MPP `charge` challenges over Lightning and/or EVM tokens.
#[derive(Default)]
pub struct MppWallet {
    lightning: Option<(Arc<dyn LightningBackend>, u64)>,
    evm: Option<PrivateKeySigner>,
}

enum MppOffer {
    Lightning { challenge: Challenge, request: LightningChargeRequest },
    Evm { challenge: Challenge, request: EvmChargeRequest, valid_before: u64 },
}

impl MppWallet {
    /// A wallet that pays nothing until a method is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pays `lightning` charges through `node`, spending at most `max_fee_msat` in routing fees.
    pub fn lightning(mut self, node: Arc<dyn LightningBackend>, max_fee_msat: u64) -> Self {
        self.lightning = Some((node, max_fee_msat));
        self
    }

    /// Pays `evm` charges by signing EIP-3009 authorizations with `signer`.
    pub fn evm(mut self, signer: PrivateKeySigner) -> Self {
        self.evm = Some(signer);
        self
    }

    fn lightning_offer(&self, challenge: Challenge) -> Result<Option<Offer>, ClientError> {
        let Some((_, max_fee_msat)) = &self.lightning else { return Ok(None) };
        let request = LightningChargeRequest::from_json(&challenge.request)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP lightning request: {e}")))?;
        let invoice = bolt11::parse_invoice(&request.invoice)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP invoice: {e}")))?;
        if invoice.is_expired(SystemTime::now()) {
            return Err(ClientError::InvalidChallenge(
                "the MPP invoice has already expired".into(),
            ));
        }
        if invoice.payment_hash != request.payment_hash {
            return Err(ClientError::InvalidChallenge(
                "the MPP paymentHash is not the invoice's".into(),
            ));
        }
        let amount_msat = request.amount_sat.saturating_mul(1000);
        if invoice.amount_msat != Some(amount_msat) {
            return Err(ClientError::InvalidChallenge(
                "the MPP invoice does not charge the request's amount".into(),
            ));
        }
        Ok(Some(Offer {
            rail: "mpp",
            price: Money::sats(request.amount_sat),
            max_fee: Money::msats(*max_fee_msat),
            summary: format!(
                "MPP Lightning charge of {} for {}",
                Money::sats(request.amount_sat),
                challenge.realm
            ),
            details: Box::new(MppOffer::Lightning { challenge, request }),
        }))
    }

    fn evm_offer(&self, challenge: Challenge) -> Result<Option<Offer>, ClientError> {
        if self.evm.is_none() {
            return Ok(None);
        }
        let request = EvmChargeRequest::from_json(&challenge.request)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP evm request: {e}")))?;
        if !request.credential_types.iter().any(|t| t == evm_charge::CREDENTIAL_AUTHORIZATION) {
            return Ok(None);
        }
        let Some(expires) = challenge.expires.as_deref() else {
            return Err(ClientError::InvalidChallenge(
                "an MPP evm challenge needs `expires` (the authorization's validBefore)".into(),
            ));
        };
        let valid_before = farebox_mpp::time::parse(expires)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP expires: {e}")))?;
        if valid_before <= farebox_mpp::time::unix_now() {
            return Err(ClientError::InvalidChallenge("the MPP challenge has expired".into()));
        }
        let amount: u128 = request
            .amount
            .try_into()
            .map_err(|_| ClientError::InvalidChallenge("MPP amount too large".into()))?;
        let token = Token {
            network: farebox_evm::network::caip2(request.chain_id),
            address: format!("{:#x}", request.currency),
            symbol: request.eip712_name.clone(),
            decimals: request.decimals,
        };
        let price = Money::new(Asset::Token(token), amount);
        Ok(Some(Offer {
            rail: "mpp",
            summary: format!("MPP EVM charge of {price} for {}", challenge.realm),
            max_fee: Money::zero(price.asset.clone()),
            price,
            details: Box::new(MppOffer::Evm { challenge, request, valid_before }),
        }))
    }
}

fn proof(credential: &Credential, fee: Money, reference: String) -> Result<Proof, ClientError> {
    let mut value = HeaderValue::from_str(&credential.to_authorization())
        .map_err(|_| ClientError::PaymentFailed("the credential is not header-safe".into()))?;
    // A bearer secret: keep it out of Debug output and HTTP/2 header compression tables.
    value.set_sensitive(true);
    Ok(Proof { headers: vec![(AUTHORIZATION, value)], fee, reference, reusable: false })
}

#[async_trait]
impl Wallet for MppWallet {
    fn rail(&self) -> &'static str {
        "mpp"
    }

    fn offers(&self, response: &PaymentRequired) -> Result<Vec<Offer>, ClientError> {
        let mut offers = Vec::new();
        for auth in response.challenges.iter().filter(|c| c.scheme.eq_ignore_ascii_case("Payment"))
        {
            let challenge = Challenge::from_auth(auth)
                .map_err(|e| ClientError::InvalidChallenge(format!("Payment challenge: {e}")))?;
            let offer = match (challenge.method.as_str(), challenge.intent.as_str()) {
                (lightning_charge::METHOD, lightning_charge::INTENT) => {
                    self.lightning_offer(challenge)?
                }
                (evm_charge::METHOD, evm_charge::INTENT) => self.evm_offer(challenge)?,
                _ => None,
            };
            offers.extend(offer);
        }
        Ok(offers)
    }

    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError> {
        let details = offer.details.downcast_ref::<MppOffer>().ok_or_else(|| {
            ClientError::PaymentFailed("offer was not made by the MPP wallet".into())
        })?;
        match details {
            MppOffer::Lightning { challenge, request } => {
                let Some((node, max_fee_msat)) = &self.lightning else {
                    return Err(ClientError::PaymentFailed("no Lightning node".into()));
                };
                let paid =
                    node.pay(&request.invoice, *max_fee_msat).await.map_err(|e| match e {
                        LightningError::OutcomeUnknown(why) => ClientError::PaidWithoutProof(why),
                        other => ClientError::PaymentFailed(other.to_string()),
                    })?;
                if !farebox_lightning::preimage_matches(&paid.preimage, &request.payment_hash) {
                    return Err(ClientError::PaidWithoutProof(
                        "the wallet returned a preimage that does not match the invoice's payment hash"
                            .into(),
                    ));
                }
                let credential =
                    Credential::new(challenge, lightning_charge::payload(&paid.preimage));
                proof(&credential, Money::msats(paid.fee_msat), hex_of(&request.payment_hash))
                    .map_err(|e| ClientError::PaidWithoutProof(e.to_string()))
            }
            MppOffer::Evm { challenge, request, valid_before } => {
                let Some(signer) = &self.evm else {
                    return Err(ClientError::PaymentFailed("no EVM key".into()));
                };
                let auth = TransferWithAuthorization {
                    from: signer.address(),
                    to: request.recipient,
                    value: request.amount,
                    validAfter: U256::ZERO,
                    validBefore: U256::from(*valid_before),
                    nonce: evm_charge::challenge_nonce(&challenge.id, &challenge.realm),
                };
                let domain = TokenDomain::new(
                    request.eip712_name.clone(),
                    request.eip712_version.clone(),
                    request.chain_id,
                    request.currency,
                );
                let signature = eip3009::sign(signer, &domain, &auth);
                let mut credential =
                    Credential::new(challenge, evm_charge::payload(&auth, &signature));
                credential.source =
                    Some(format!("did:pkh:eip155:{}:{:#x}", request.chain_id, signer.address()));
                proof(
                    &credential,
                    Money::zero(offer.price.asset.clone()),
                    format!("{:#x}", auth.nonce),
                )
            }
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
