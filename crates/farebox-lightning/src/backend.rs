//! The [`LightningBackend`] trait: what farebox needs from a Lightning node.
//!
//! Receiving (create an invoice, learn whether it is paid) serves the server-side rails; paying
//! serves the client's wallet. A node that only receives returns
//! [`LightningError::Unsupported`] from [`LightningBackend::pay`].

use std::time::Duration;

use async_trait::async_trait;

/// A 32-byte payment hash, `sha256(preimage)`.
pub type PaymentHash = [u8; 32];
/// A 32-byte payment preimage: the proof of payment.
pub type Preimage = [u8; 32];

/// What to put in a new invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRequest {
    /// Amount in millisatoshi. Must be greater than zero.
    pub amount_msat: u64,
    /// Human description (the BOLT11 `d` field), at most 639 bytes.
    pub memo: String,
    /// How long the invoice may be paid.
    pub expiry: Duration,
}

/// An invoice the backend created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedInvoice {
    /// The BOLT11 string.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: PaymentHash,
}

/// Whether an invoice has been paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceState {
    Open,
    Settled { preimage: Preimage, amount_msat: u64 },
    Expired,
    Unknown,
}

/// The outcome of paying an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentOutcome {
    pub preimage: Preimage,
    pub payment_hash: PaymentHash,
    /// Amount delivered to the payee, msat.
    pub amount_msat: u64,
    /// Routing fee paid, msat.
    pub fee_msat: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LightningError {
    /// The node could not be reached or did not answer in time. Callers fail closed.
    #[error("lightning backend unavailable: {0}")]
    Unavailable(String),
    /// The invoice cannot be parsed or is not valid (expired, wrong network, bad signature…).
    #[error("invalid invoice: {0}")]
    InvalidInvoice(String),
    /// Payment attempted and failed (no route, rejected, already paid, …).
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    /// The payment was attempted but its outcome is not known (the node's answer was lost or
    /// unreadable). Money may have left: callers must count it, not retry blindly.
    #[error("payment outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// This backend does not do that (e.g. a receive-only node asked to pay).
    #[error("not supported by this backend: {0}")]
    Unsupported(&'static str),
    /// The request is out of range (zero amount, memo too long…).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// A Lightning node as farebox uses it.
#[async_trait]
pub trait LightningBackend: Send + Sync + 'static {
    /// Creates and signs an invoice.
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError>;

    /// Looks an invoice up by payment hash.
    async fn invoice_state(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<InvoiceState, LightningError>;

    /// Pays `bolt11`, spending at most `max_fee_msat` on routing. Amountless invoices are refused.
    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError>;
}
