//! The server's Lightning node, shared by the `lightning` intents: invoices on one network, and
//! whether a preimage proves an invoice was paid.

use std::sync::Arc;

use farebox_core::PaymentError;
use farebox_lightning::{
    CreatedInvoice, InvoiceRequest, LightningBackend, NetworkPin, PaymentHash, PaymentProof,
    Preimage,
};

use crate::rail::BACKEND_RETRY_AFTER;

/// A Lightning backend and the network its invoices are on.
pub(crate) struct LightningNode {
    pub backend: Arc<dyn LightningBackend>,
    /// The network the backend's invoices are on, pinned by the first one.
    network: NetworkPin,
}

impl LightningNode {
    pub fn new(backend: Arc<dyn LightningBackend>) -> Self {
        LightningNode { backend, network: NetworkPin::new() }
    }

    /// A checked invoice for `request`; a backend that cannot make one is a 503.
    pub async fn invoice(
        &self,
        request: InvoiceRequest,
        what: &str,
    ) -> Result<CreatedInvoice, PaymentError> {
        farebox_lightning::create_checked_invoice(&*self.backend, request, &self.network)
            .await
            .map_err(|e| {
                PaymentError::unavailable(
                    "lightning_unavailable",
                    format!("cannot create {what}: {e}"),
                    BACKEND_RETRY_AFTER,
                )
            })
    }

    /// Whether `preimage` proves the invoice `payment_hash` of this node was paid
    /// (farebox_lightning's one rule: with a backend that leaks preimages, the node must also
    /// report it settled). `Ok(false)`: refuse; a node that cannot say is a 503.
    pub async fn paid(
        &self,
        preimage: &Preimage,
        payment_hash: &PaymentHash,
    ) -> Result<bool, PaymentError> {
        let proof = farebox_lightning::confirm_paid(&*self.backend, preimage, payment_hash)
            .await
            .map_err(|e| {
            PaymentError::unavailable(
                "lightning_unavailable",
                format!("cannot confirm the payment with the Lightning node: {e}"),
                BACKEND_RETRY_AFTER,
            )
        })?;
        Ok(proof == PaymentProof::Proven)
    }
}
