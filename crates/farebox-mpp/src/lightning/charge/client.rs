//! The client side of the `lightning` charge: pays the challenge's BOLT11 invoice with the
//! wallet's node, checks the preimage against the payment hash, and answers
//! `{"challenge": <echo>, "payload": {"preimage": "…"}}`, good for one request.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use farebox_core::Money;
use farebox_lightning::{LightningBackend, bolt11};
use farebox_wallet::{ClientError, Funding, Offer, PaymentRequired, Proof};

use super::{INTENT, LightningChargeRequest, METHOD, payload};
use crate::client::{Details, Payer, buys, details_of, proof};
use crate::{Challenge, Credential};

/// Pays `lightning` charges through `node`, spending at most `max_fee_msat` in routing fees.
pub(crate) struct LightningChargePayer {
    pub node: Arc<dyn LightningBackend>,
    pub max_fee_msat: u64,
}

/// What a `lightning` charge offer carries to its payment.
struct ChargeOffer {
    challenge: Challenge,
    request: LightningChargeRequest,
}

#[async_trait]
impl Payer for LightningChargePayer {
    fn names(&self) -> (&'static str, &'static str) {
        (METHOD, INTENT)
    }

    fn offer(
        &self,
        challenge: Challenge,
        _response: &PaymentRequired,
    ) -> Result<Option<Offer>, ClientError> {
        let max_fee_msat = &self.max_fee_msat;
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
            funding: Funding::PerRequest,
            summary: format!(
                "MPP Lightning charge of {} for {}",
                Money::sats(request.amount_sat),
                challenge.realm
            ),
            payee: Some(invoice.payee.to_string()),
            buys: Some(buys(&challenge, None)),
            details: Box::new(ChargeOffer { challenge, request }),
        }))
    }

    async fn pay(&self, _offer: &Offer, details: &Details) -> Result<Proof, ClientError> {
        let ChargeOffer { challenge, request } = details_of(details)?;
        let paid = self
            .node
            .pay(&request.invoice, self.max_fee_msat)
            .await
            .map_err(ClientError::from_lightning)?;
        if !farebox_lightning::preimage_matches(&paid.preimage, &request.payment_hash) {
            return Err(ClientError::PaidWithoutProof(
                "the wallet returned a preimage that does not match the invoice's payment hash"
                    .into(),
            ));
        }
        let credential = Credential::new(challenge, payload(&paid.preimage));
        proof(&credential, Money::msats(paid.fee_msat), hex::encode(request.payment_hash))
            .map_err(|e| ClientError::PaidWithoutProof(e.to_string()))
    }
}
