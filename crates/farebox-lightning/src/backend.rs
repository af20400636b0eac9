//! The [`LightningBackend`] trait: what farebox needs from a Lightning node.
//!
//! Receiving (create an invoice, learn whether it is paid) serves the server-side rails; paying
//! serves the client's wallet. A node that only receives returns
//! [`LightningError::Unsupported`] from [`LightningBackend::pay`].
//!
//! Five methods have default implementations, so a backend only writes what its node can do:
//!
//! * [`LightningBackend::wait_for_settlement`] polls [`LightningBackend::invoice_state`] with a
//!   short backoff; a backend with push notifications (LND's invoice subscription, the dev
//!   node's in-process signal) overrides it to answer as soon as the invoice settles.
//! * [`LightningBackend::create_amountless_invoice`] and [`LightningBackend::pay_amount`] are
//!   for "any amount" invoices, which MPP Lightning sessions use to refund a balance to a
//!   client's return invoice. They default to [`LightningError::Unsupported`].
//! * [`LightningBackend::balance`] and [`LightningBackend::info`] (a wallet's spendable balance
//!   and what it says about itself) default to [`LightningError::Unsupported`] too.

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
    /// The node refused farebox's credentials (an LND macaroon, a Core Lightning rune, an
    /// LNbits API key, an NWC connection no wallet knows: NIP-47 `UNAUTHORIZED`) or they lack a
    /// permission the call needs. Retrying does not help: the
    /// operator must fix the configuration. Callers fail closed, as for `Unavailable`.
    #[error("lightning backend refused the credentials: {0}")]
    AuthRefused(String),
    /// The node answered, but not as its API documents: not JSON, over the size bound, fields
    /// missing, or inconsistent with what was asked (an invoice for another hash or amount, a
    /// preimage that does not hash to the payment hash). Callers fail closed. After a payment
    /// was sent, an unreadable answer is [`LightningError::OutcomeUnknown`] instead.
    #[error("lightning backend answered malformed data: {0}")]
    InvalidResponse(String),

    // Refusals by a wallet that enforces policy for its user (NIP-47 error codes; other
    // backends may use them too). In each case nothing was sent.
    /// A spending limit the wallet enforces for this connection (a budget, a quota) would be
    /// exceeded (NIP-47 `QUOTA_EXCEEDED`). An agent's budget logic treats it as "spent up",
    /// unlike [`LightningError::InsufficientBalance`].
    #[error("spending quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The wallet's balance does not cover the amount and its fee reserve (NIP-47
    /// `INSUFFICIENT_BALANCE`).
    #[error("insufficient balance: {0}")]
    InsufficientBalance(String),
    /// The wallet is throttling this client; retry after a pause (NIP-47 `RATE_LIMITED`).
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The credentials are accepted but not allowed this operation (NIP-47 `RESTRICTED`).
    #[error("restricted: {0}")]
    Restricted(String),
}

/// What a node or wallet says about itself ([`LightningBackend::info`]). Every field is the
/// backend's own word, for display and diagnostics; nothing about money rests on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Human name of the node or wallet.
    pub alias: Option<String>,
    /// The node's public key, when it reveals one.
    pub pubkey: Option<bitcoin::secp256k1::PublicKey>,
    /// The chain it runs on.
    pub network: Option<crate::bolt11::Currency>,
    /// Height of the chain tip it last saw.
    pub block_height: Option<u32>,
    /// Operations these credentials may use, in the backend's own names (NWC: `pay_invoice`,
    /// `make_invoice`…); empty when the backend does not say.
    pub methods: Vec<String>,
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

    /// Pays `bolt11`, spending at most `max_fee_msat` on routing. Amountless invoices are refused
    /// (pay those with [`LightningBackend::pay_amount`]).
    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError>;

    /// Waits until the invoice `payment_hash` is settled or expired, or `timeout` has passed, and
    /// returns its state then.
    ///
    /// * `Settled` and `Expired` are returned as soon as they are seen.
    /// * `Unknown` is returned at once: a node that does not know the invoice will not settle it.
    /// * When `timeout` passes first, the last state seen is returned (`Open`).
    /// * An error of [`LightningBackend::invoice_state`] (the node is down) is returned at once,
    ///   so callers fail closed instead of waiting out the timeout.
    ///
    /// The default polls [`LightningBackend::invoice_state`] every 10 ms at first, backing off to
    /// every 250 ms; the state is always read at least once, even with a zero `timeout`.
    async fn wait_for_settlement(
        &self,
        payment_hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceState, LightningError> {
        poll_for_settlement(timeout, || self.invoice_state(payment_hash)).await
    }

    /// Creates and signs an invoice without an amount: the payer chooses how much to send (see
    /// [`LightningBackend::pay_amount`]). `memo` is the BOLT11 `d` field (at most 639 bytes);
    /// `expiry` must be greater than zero. The default returns [`LightningError::Unsupported`].
    async fn create_amountless_invoice(
        &self,
        memo: String,
        expiry: Duration,
    ) -> Result<CreatedInvoice, LightningError> {
        let _ = (memo, expiry);
        Err(LightningError::Unsupported("amountless invoices"))
    }

    /// Pays `amount_msat` to an amountless `bolt11` invoice, spending at most `max_fee_msat` on
    /// routing. A zero amount is refused, and so is an invoice that names an amount, unless it
    /// is exactly `amount_msat` (then this is [`LightningBackend::pay`]); both refusals are
    /// [`LightningError::InvalidRequest`] and nothing is sent. The default returns
    /// [`LightningError::Unsupported`].
    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        let _ = (bolt11, amount_msat, max_fee_msat);
        Err(LightningError::Unsupported("paying amountless invoices"))
    }

    /// The balance these credentials may spend, in msat (NWC `get_balance`). The default
    /// returns [`LightningError::Unsupported`].
    async fn balance(&self) -> Result<u64, LightningError> {
        Err(LightningError::Unsupported("balance"))
    }

    /// What the node or wallet says about itself (NWC `get_info`). The default returns
    /// [`LightningError::Unsupported`].
    async fn info(&self) -> Result<NodeInfo, LightningError> {
        Err(LightningError::Unsupported("node info"))
    }

    /// Whether holding the preimage of one of this backend's invoices proves it was paid. True
    /// when only the payer can learn it (the node reveals it by settling). False for a backend
    /// that hands preimages of unpaid invoices to whoever asks (LNbits): rails then confirm
    /// settlement with the backend ([`confirm_paid`]) before serving.
    fn preimage_proves_payment(&self) -> bool {
        true
    }
}

/// Whether a presented preimage proves that an invoice of `backend` was paid
/// ([`confirm_paid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentProof {
    /// Paid: serve.
    Proven,
    /// `sha256(preimage)` is not the payment hash.
    WrongPreimage,
    /// The preimage is right, but the backend (one that leaks preimages) does not report the
    /// invoice settled: unpaid, expired or unknown.
    NotSettled,
}

/// The one rule for accepting a Lightning preimage as payment, used by the L402 rail and MPP's
/// Lightning charge and session: the preimage must hash to the payment hash and, when
/// `backend` can reveal preimages of unpaid invoices
/// ([`LightningBackend::preimage_proves_payment`] is false), the backend must report the
/// invoice settled with that preimage. A backend that cannot answer is the error: callers fail
/// closed (503), never serve on the preimage alone.
pub async fn confirm_paid(
    backend: &dyn LightningBackend,
    preimage: &Preimage,
    payment_hash: &PaymentHash,
) -> Result<PaymentProof, LightningError> {
    if !crate::preimage_matches(preimage, payment_hash) {
        return Ok(PaymentProof::WrongPreimage);
    }
    Ok(if confirm_settled(backend, payment_hash).await? {
        PaymentProof::Proven
    } else {
        PaymentProof::NotSettled
    })
}

/// The second half of [`confirm_paid`], for a verifier that has already matched the preimage
/// with the payment hash (the L402 token check): true when `backend`'s preimages prove payment,
/// else whether it reports the invoice settled.
pub async fn confirm_settled(
    backend: &dyn LightningBackend,
    payment_hash: &PaymentHash,
) -> Result<bool, LightningError> {
    if backend.preimage_proves_payment() {
        return Ok(true);
    }
    Ok(matches!(
        backend.invoice_state(payment_hash).await?,
        InvoiceState::Settled { preimage, .. } if crate::preimage_matches(&preimage, payment_hash)
    ))
}

/// Why [`create_checked_invoice`] gave no invoice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvoiceCheckError {
    /// The backend did not create one.
    #[error(transparent)]
    Backend(#[from] LightningError),
    /// The backend created one that is not what was asked: it must not reach a client.
    #[error("the Lightning node returned an invoice that is not what was asked: {0}")]
    Mismatch(#[from] InvoiceMismatch),
}

/// How an invoice from a backend differs from what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvoiceMismatch {
    /// Not a BOLT11 string at all (empty, or characters bech32 never uses).
    #[error("it is not BOLT11 text")]
    Malformed,
    /// It does not parse, or its signature does not verify.
    #[error("it does not parse: {0}")]
    Unparseable(String),
    /// Another amount (a cheaper invoice would sell the resource for less).
    #[error("it is for {}, {asked} msat were asked", got.map_or("no amount".to_owned(), |g| format!("{g} msat")))]
    Amount { asked: u64, got: Option<u64> },
    /// Its payment hash is not the one the backend reported (the one a rail binds its proof to).
    #[error("its payment hash is not the one the node reported")]
    PaymentHash,
    /// Another network than the one the rail's invoices are on.
    #[error("it is an ln{got} invoice, the rail's invoices are ln{expected}")]
    Network { expected: crate::Currency, got: crate::Currency },
    /// It expires sooner than asked.
    #[error("it can be paid for {left} s, {asked} s were asked")]
    Expiry { asked: u64, left: u64 },
    /// Its description is not the memo that was asked for.
    #[error("its description is not the memo asked for")]
    Description,
}

/// The Bitcoin network a rail's invoices must be on: fixed by configuration, or pinned by the
/// first invoice the backend creates (so that a backend that switches networks, or is swapped
/// for one on another network, is noticed).
#[derive(Debug, Default)]
pub struct NetworkPin(std::sync::OnceLock<crate::Currency>);

impl NetworkPin {
    /// Pinned by the first invoice checked against it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fixed to `network`.
    pub fn fixed(network: crate::Currency) -> Self {
        NetworkPin(std::sync::OnceLock::from(network))
    }

    /// The network, once known.
    pub fn get(&self) -> Option<&crate::Currency> {
        self.0.get()
    }

    fn check(&self, got: &crate::Currency) -> Result<(), InvoiceMismatch> {
        let expected = self.0.get_or_init(|| got.clone());
        if expected == got {
            Ok(())
        } else {
            Err(InvoiceMismatch::Network { expected: expected.clone(), got: got.clone() })
        }
    }
}

/// How far an invoice's expiry may fall short of what was asked: BOLT11 counts whole seconds
/// from a timestamp the node took a moment earlier, on a clock that may differ a little.
const EXPIRY_SLACK_SECS: u64 = 30;

/// [`LightningBackend::create_invoice`], then the invoice checked against what was asked before
/// anyone sees it: BOLT11 text a challenge header can carry, a valid signature, the amount asked,
/// the payment hash the backend reported, the rail's `network`, an expiry no shorter than asked
/// (less a small slack) from now, and the memo as its description when one was given. A backend
/// that answers anything else (broken, compromised, or a man in the middle of its API) is an
/// [`InvoiceCheckError::Mismatch`]: the caller fails closed and offers no such invoice.
pub async fn create_checked_invoice(
    backend: &dyn LightningBackend,
    request: InvoiceRequest,
    network: &NetworkPin,
) -> Result<CreatedInvoice, InvoiceCheckError> {
    let (asked_msat, asked_expiry) = (request.amount_msat, request.expiry.as_secs());
    let memo_hash = (!request.memo.is_empty()).then(|| crate::sha256(request.memo.as_bytes()));
    let memo = request.memo.clone();
    let invoice = backend.create_invoice(request).await?;
    // Before parsing: nothing else may reach a header, where it could break the grammar.
    if invoice.bolt11.is_empty() || !invoice.bolt11.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(InvoiceMismatch::Malformed.into());
    }
    let parsed = crate::bolt11::parse_bolt11(&invoice.bolt11)
        .map_err(|e| InvoiceMismatch::Unparseable(e.to_string()))?;
    if parsed.amount_msat != Some(asked_msat) {
        return Err(InvoiceMismatch::Amount { asked: asked_msat, got: parsed.amount_msat }.into());
    }
    if parsed.payment_hash != invoice.payment_hash {
        return Err(InvoiceMismatch::PaymentHash.into());
    }
    network.check(&parsed.currency)?;
    // A clock before 1970 cannot tell how long the invoice lasts: it is not handed out.
    let now =
        farebox_core::time::unix_now().map_err(|e| LightningError::Unavailable(e.to_string()))?;
    let left = parsed.expires_at().saturating_sub(now);
    if left.saturating_add(EXPIRY_SLACK_SECS) < asked_expiry {
        return Err(InvoiceMismatch::Expiry { asked: asked_expiry, left }.into());
    }
    if let Some(memo_hash) = memo_hash {
        let same = match &parsed.description {
            crate::InvoiceDescription::Direct(d) => *d == memo,
            crate::InvoiceDescription::Hash(h) => *h == memo_hash,
        };
        if !same {
            return Err(InvoiceMismatch::Description.into());
        }
    }
    Ok(invoice)
}

/// What [`LightningBackend::pay_amount`] checks before anything is sent: a non-zero amount, and
/// an invoice that names no amount or exactly this one. Returns the parsed invoice.
pub fn check_pay_amount(
    bolt11: &str,
    amount_msat: u64,
) -> Result<crate::bolt11::ParsedInvoice, LightningError> {
    if amount_msat == 0 {
        return Err(LightningError::InvalidRequest("amount must be greater than zero".into()));
    }
    let invoice = crate::bolt11::parse_invoice(bolt11)?;
    if let Some(asked) = invoice.amount_msat
        && asked != amount_msat
    {
        return Err(LightningError::InvalidRequest(format!(
            "the invoice asks for {asked} msat, not {amount_msat} msat"
        )));
    }
    Ok(invoice)
}

/// First delay of [`poll_for_settlement`].
const POLL_FIRST: Duration = Duration::from_millis(10);
/// Longest delay between two polls of [`poll_for_settlement`].
const POLL_MAX: Duration = Duration::from_millis(250);

/// The default [`LightningBackend::wait_for_settlement`]: calls `state` until it answers
/// `Settled`, `Expired` or `Unknown`, fails, or `timeout` has passed; doubling the delay between
/// calls from 10 ms up to 250 ms.
pub async fn poll_for_settlement<F, Fut>(
    timeout: Duration,
    mut state: F,
) -> Result<InvoiceState, LightningError>
where
    F: FnMut() -> Fut + Send,
    Fut: std::future::Future<Output = Result<InvoiceState, LightningError>> + Send,
{
    // A timeout too large to add to the clock means "no deadline".
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    let mut delay = POLL_FIRST;
    loop {
        let current = state().await?;
        if !matches!(current, InvoiceState::Open) {
            return Ok(current);
        }
        let pause = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(current);
                }
                delay.min(left)
            }
            None => delay,
        };
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts reach logs and refusals: no Rust formatting (`Some(…)`, variant names).
    #[test]
    fn invoice_mismatches_read_without_rust_formatting() {
        let texts = [
            InvoiceMismatch::Amount { asked: 10_000, got: Some(9_000) }.to_string(),
            InvoiceMismatch::Amount { asked: 10_000, got: None }.to_string(),
            InvoiceMismatch::Network {
                expected: crate::Currency::Bitcoin,
                got: crate::Currency::Regtest,
            }
            .to_string(),
        ];
        for text in texts {
            for rust in ["Some(", "None", "Bitcoin", "Regtest"] {
                assert!(!text.contains(rust), "{text}");
            }
        }
    }
}
