//! Lightning for farebox: BOLT11 invoices, the [`LightningBackend`] trait, and an embedded dev
//! node.
//!
//! # What is here
//!
//! * [`backend`]: the [`LightningBackend`] trait, the one thing the L402 rail (server side:
//!   create an invoice, poll whether it is paid) and the client wallet (pay an invoice, get the
//!   preimage) need from a Lightning node.
//! * [`bolt11`]: [`parse_invoice`] turns an untrusted BOLT11 string into a signature-checked
//!   [`ParsedInvoice`] (bounded input, never panics); [`sign_invoice`] signs new ones. Built on
//!   `lightning-invoice` 0.34.1, with the current spec's stricter field-length rule added.
//! * [`dev_node`]: [`DevNode`] and [`DevNetwork`], a node that needs no bitcoind, LND or CLN.
//!
//! # Why the dev node is honest
//!
//! Only the *network* is simulated. Each [`DevNode`] has a real secp256k1 key; its invoices are
//! real regtest BOLT11 strings any BOLT11 decoder accepts; each invoice has a random 32-byte
//! preimage whose sha256 is the payment hash. A payer verifies the invoice signature, the payee
//! checks the payment hash and payment secret, and the preimage handed back is the one the
//! payee generated, so an L402 server checking `sha256(preimage) == payment_hash` does exactly
//! the work it does in production. What is simulated: channels and routing (a payment moves
//! balance between two nodes on the same [`DevNetwork`] under one lock), fees (a configurable
//! flat + proportional route fee, zero by default), and time (the network clock can be frozen
//! and advanced to test expiry). [`DevNode::set_available`] simulates an outage so callers can
//! test that they fail closed.
//!
//! ```
//! # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # runtime.block_on(async {
//! use farebox_lightning::{DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend};
//! use std::time::Duration;
//!
//! let network = DevNetwork::new();
//! let server = DevNode::random(&network, 0);
//! let wallet = DevNode::random(&network, 100_000);
//!
//! let invoice = server
//!     .create_invoice(InvoiceRequest {
//!         amount_msat: 21_000,
//!         memo: "GET /weather".into(),
//!         expiry: Duration::from_secs(600),
//!     })
//!     .await?;
//! let paid = wallet.pay(&invoice.bolt11, 0).await?;
//! assert_eq!(farebox_lightning::sha256(&paid.preimage), invoice.payment_hash);
//! assert!(matches!(
//!     server.invoice_state(&invoice.payment_hash).await?,
//!     InvoiceState::Settled { .. }
//! ));
//! # Ok::<(), farebox_lightning::LightningError>(())
//! # }).unwrap();
//! ```
//!
//! # Implementing a backend for another node
//!
//! LND (REST), Core Lightning and LNbits backends are planned; each is a type implementing
//! [`LightningBackend`]:
//!
//! * `create_invoice`: refuse `amount_msat == 0` and memos over 639 bytes with
//!   [`LightningError::InvalidRequest`]; ask the node for an invoice (LND `POST /v1/invoices`,
//!   CLN `invoice`, LNbits `POST /api/v1/payments` with `out: false`); return its BOLT11 and
//!   payment hash. Rails take invoices through [`create_checked_invoice`], which parses the
//!   returned string and compares amount, hash, network, expiry and memo with what was asked.
//! * `invoice_state`: map the node's state (LND `OPEN/SETTLED/CANCELED`, CLN
//!   `unpaid/paid/expired`) onto [`InvoiceState`]; `Settled` must carry the preimage, and an
//!   unknown hash is [`InvoiceState::Unknown`], not an error.
//! * `pay`: [`parse_invoice`] first (refuse amountless and expired invoices before talking to the
//!   node), pass `max_fee_msat` as the node's fee limit, and verify
//!   `sha256(preimage) == payment_hash` on the answer before returning it. A receive-only
//!   backend returns [`LightningError::Unsupported`].
//! * `wait_for_settlement` (optional): the default polls `invoice_state`; override it when the
//!   node can push settlements (LND `GET /v2/invoices/subscribe/{r_hash}`).
//! * `create_amountless_invoice` and `pay_amount` (optional, default
//!   [`LightningError::Unsupported`]): an invoice without an amount (LND `value: 0`, CLN
//!   `amount_msat: "any"`) and paying one a chosen amount (LND `amt_msat`, CLN `amount_msat`).
//!   `pay_amount` refuses a zero amount and an invoice naming a different amount with
//!   [`LightningError::InvalidRequest`] before talking to the node.
//! * Timeouts, connection errors and 5xx answers are [`LightningError::Unavailable`]: callers
//!   treat it as "fail closed" (no access granted, payment not assumed). Never map an unknown
//!   outcome to success.
#![forbid(unsafe_code)]

pub mod backend;
pub mod bolt11;
pub mod dev_node;

pub use backend::{
    CreatedInvoice, InvoiceCheckError, InvoiceMismatch, InvoiceRequest, InvoiceState,
    LightningBackend, LightningError, NetworkPin, PaymentHash, PaymentOutcome, Preimage,
    create_checked_invoice, poll_for_settlement,
};
pub use bitcoin::secp256k1::{PublicKey, SecretKey};
pub use bolt11::{
    Bolt11Error, Currency, InvoiceDescription, InvoiceParams, MAX_INVOICE_LEN, ParsedInvoice,
    parse_bolt11, parse_invoice, sign_invoice,
};
pub use dev_node::{DevNetwork, DevNode, SettledInvoice};

/// sha256 of `data`: the payment hash of a preimage.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Whether `preimage` is the preimage of `payment_hash`, compared in constant time (the check
/// an L402 verifier makes; constant time because the hash may be secret-derived state).
pub fn preimage_matches(preimage: &Preimage, payment_hash: &PaymentHash) -> bool {
    let digest = sha256(preimage);
    digest.iter().zip(payment_hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
