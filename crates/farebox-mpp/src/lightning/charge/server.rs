//! The server side of the `lightning` charge: an invoice per challenge, a preimage per payment.
//!
//! **Challenge.** For a route priced in whole satoshis, the node creates an invoice for the
//! price and the challenge's `request` carries amount, currency, invoice, payment hash and
//! network; it expires with the challenge.
//!
//! **Verify**, after the envelope: the request's amount covers the route's current price
//! (`payment-insufficient`); `sha256(preimage) == paymentHash` in constant time, and with a
//! backend that reveals preimages the node reports it paid (`verification-failed`); finally the
//! challenge id is reserved in the replay store (namespace [`crate::rail::NAMESPACE`]) until
//! the challenge expires, so a credential is accepted once (`invalid-challenge`). A store that
//! cannot answer refuses the request (503). A preimage proves that the invoice was paid, not by
//! whom: the payer is unknown, whatever `source` says.
//!
//! **Settle** builds the `Payment-Receipt` (the preimage is final) and marks the record settled;
//! **release** forgets the reservation when the handler failed, so the same credential can be
//! retried.

use std::sync::Arc;

use async_trait::async_trait;
use farebox_core::{Money, PaymentError, ProofState, Receipt, Resource, Verdict};
use farebox_lightning::{InvoiceRequest, bolt11};
use http::HeaderValue;

use super::{INTENT, LightningChargeRequest, METHOD, network_name, preimage_of};
use crate::challenge::decode_request;
use crate::credential::Credential;
use crate::lightning::node::LightningNode;
use crate::problem;
use crate::rail::NAMESPACE;
use crate::rail::envelope::{Envelope, live_for, receipt_header, reserved_until};
use crate::rail::intent::{Approved, Intent, Settles};
use crate::receipt::PaymentReceipt;
use crate::time;

/// The `lightning` charge, offered on `node`.
pub(crate) struct LightningCharge {
    pub env: Arc<Envelope>,
    pub node: Arc<LightningNode>,
}

impl LightningCharge {
    /// Everything but asking the node and the reservation: the amount paid, and the proof.
    fn checked(
        &self,
        resource: &Resource,
        cred: &Credential,
        now: u64,
    ) -> Result<(Money, farebox_lightning::Preimage, farebox_lightning::PaymentHash), PaymentError>
    {
        let ch = &cred.challenge;
        live_for(ch, resource, now)?;
        let bad = |e: &dyn std::fmt::Display| {
            problem::invalid_challenge(format!("challenge request: {e}"))
        };
        let request = decode_request(&ch.request).map_err(|e| bad(&e))?;
        let request = LightningChargeRequest::from_json(&request).map_err(|e| bad(&e))?;
        let price_msat = resource
            .price
            .in_bitcoin()
            .and_then(Money::as_msat)
            .ok_or_else(|| problem::invalid_challenge("this route has no Lightning price"))?;
        let paid_msat = request.amount_sat.saturating_mul(1000);
        if paid_msat < price_msat {
            return Err(problem::insufficient(format!(
                "the challenge charges {} sat, this route costs {}",
                request.amount_sat,
                Money::msats(price_msat)
            )));
        }
        let preimage = preimage_of(&cred.payload).map_err(|e| problem::malformed(e.to_string()))?;
        Ok((Money::msats(paid_msat), preimage, request.payment_hash))
    }
}

#[async_trait]
impl Intent for LightningCharge {
    fn names(&self) -> (&'static str, &'static str) {
        (METHOD, INTENT)
    }

    /// An invoice for the price, if it is in whole satoshis.
    async fn challenge(&self, resource: &Resource) -> Result<Option<HeaderValue>, PaymentError> {
        let Some(price) = resource.price.in_bitcoin() else {
            return Ok(None);
        };
        let Some(amount_msat) = price.as_msat().filter(|&m| m > 0) else {
            return Err(PaymentError::internal(
                "mpp_price",
                format!("{price} is not a payable Lightning amount"),
            ));
        };
        if amount_msat % 1000 != 0 {
            // A Lightning charge is denominated in whole satoshis; a fractional-sat price
            // cannot be offered exactly, and rounding would overcharge.
            tracing::warn!(route = %resource.route, %price, "MPP lightning charge needs a whole-sat price; not offered");
            return Ok(None);
        }
        let memo = match &resource.description {
            Some(d) => bolt11::truncate_utf8(d, 639).to_string(),
            None => format!(
                "MPP {} {}",
                bolt11::truncate_utf8(&self.env.realm, 30),
                bolt11::truncate_utf8(&resource.route, 600)
            ),
        };
        let request = InvoiceRequest { amount_msat, memo, expiry: self.env.ttl };
        let invoice = self.node.invoice(request, "an invoice").await?;
        let network = bolt11::parse_invoice(&invoice.bolt11)
            .ok()
            .map(|p| network_name(&p.currency).to_string());
        let request = LightningChargeRequest {
            amount_sat: amount_msat / 1000,
            invoice: invoice.bolt11,
            payment_hash: invoice.payment_hash,
            network,
            description: resource.description.as_deref().map(str::to_owned),
        };
        self.env.issue(resource, self.names(), request.to_json(), false).map(Some)
    }

    async fn approve(
        self: Arc<Self>,
        resource: &Resource,
        cred: &Credential,
        now: u64,
    ) -> Result<Verdict, PaymentError> {
        let (amount, preimage, payment_hash) = self.checked(resource, cred, now)?;
        if !self.node.paid(&preimage, &payment_hash).await? {
            return Err(problem::verification_failed(
                "sha256(preimage) is not the challenge's payment hash, or the node does not report it paid",
            ));
        }
        let expires_at = reserved_until(&cred.challenge, now);
        let id = cred.challenge.id.clone();
        if !self.env.store.reserve(NAMESPACE, &id, expires_at).await? {
            return Err(problem::used_challenge());
        }
        let reference = hex::encode(payment_hash);
        Ok(Approved::payment(amount, None, reference, id).into_verdict(self))
    }

    fn check(
        &self,
        resource: &Resource,
        cred: &Credential,
        now: u64,
    ) -> Result<Money, PaymentError> {
        self.checked(resource, cred, now).map(|(amount, ..)| amount)
    }
}

#[async_trait]
impl Settles for LightningCharge {
    /// The challenge id reserved.
    type Held = String;

    async fn settle(
        &self,
        challenge_id: String,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError> {
        // The preimage is final; recording the settlement is bookkeeping, and a store hiccup
        // must not withhold the receipt of a payment that has happened.
        let settled =
            self.env.store.update(NAMESPACE, &challenge_id, ProofState::Settled, Some(&reference));
        if let Err(e) = settled.await {
            tracing::warn!(error = %e, "could not mark an MPP challenge settled");
        }
        let receipt =
            PaymentReceipt::success(METHOD, time::format(time::unix_now()?), reference.clone())
                .with("challengeId", challenge_id);
        Ok(Receipt::new(amount, reference, vec![receipt_header(&receipt)?]))
    }

    async fn release(&self, challenge_id: String) {
        if let Err(e) = self.env.store.release(NAMESPACE, &challenge_id).await {
            tracing::warn!(error = %e, "could not release an MPP reservation");
        }
    }
}
