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
//!   `dev_wallet` (feature `dev`) serves a dev node's wallet over HTTP and pays through such a
//!   wallet in another process (`dev_wallet::RemoteDevWallet`).
//! * Real nodes, one cargo feature each so that a deployment compiles only its own:
//!   `lnd` (`lnd::LndBackend`, lnd's REST API, TLS pinned to its `tls.cert`), `cln`
//!   (`cln::ClnBackend`, Core Lightning's CLNRest with a rune) and `lnbits`
//!   (`lnbits::LnbitsBackend`, one LNbits wallet's API key). They share `rest`: the endpoint,
//!   TLS trust (`tls` feature, rustls), timeouts, credentials that never print, and bounded
//!   readers.
//! * `nwc` (feature `nwc`): Nostr Wallet Connect, a wallet client backend and a wallet service
//!   in front of any backend, over real relays.
//! * `testing` (feature `testing`): loopback LND, CLNRest and LNbits servers on dev nodes, for
//!   tests and benchmarks that pay through those nodes' REST APIs.
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
//! # What every backend promises
//!
//! The node backends hold to one contract, which callers (the L402 and MPP rails, the client's
//! wallet) rely on to fail closed:
//!
//! * `create_invoice`: refuses a zero amount, a memo over 639 bytes and a zero expiry with
//!   [`LightningError::InvalidRequest`] before asking the node, and checks the node's answer: a
//!   signed BOLT11 for the payment hash it names and exactly the amount asked, else
//!   [`LightningError::InvalidResponse`]. Rails take invoices through [`create_checked_invoice`],
//!   which parses the returned string and compares amount, hash, network, expiry and memo with
//!   what was asked.
//! * `invoice_state`: `Settled` only with a preimage that hashes to the payment hash (LNbits, for
//!   one, hands out preimages of unpaid invoices); a hash the node never issued is
//!   [`InvoiceState::Unknown`], not an error.
//! * `pay`: parses the invoice first (amountless and expired invoices are refused before
//!   anything is sent), passes `max_fee_msat` as the node's fee limit, and returns only a
//!   preimage that hashes to the payment hash. Paying an invoice the node already paid moves
//!   nothing and returns that payment's proof.
//! * Errors: a node that cannot be reached or is too slow is [`LightningError::Unavailable`]; a
//!   refused macaroon, rune or key is [`LightningError::AuthRefused`]; an unreadable or
//!   inconsistent answer is [`LightningError::InvalidResponse`]. Once a payment request may have
//!   reached the node, a lost or unreadable answer is looked up on the node, never sent again,
//!   and stays [`LightningError::OutcomeUnknown`] while the node cannot say.
//! * No URL, macaroon, rune or API key in an error message or in `Debug` output.
//!
//! A backend for another node implements [`LightningBackend`] the same way;
//! `wait_for_settlement` defaults to polling `invoice_state`, `create_amountless_invoice` and
//! `pay_amount` to [`LightningError::Unsupported`].
#![forbid(unsafe_code)]

pub mod backend;
pub mod bolt11;
#[cfg(feature = "cln")]
pub mod cln;
pub mod dev_node;
#[cfg(feature = "dev")]
pub mod dev_wallet;
#[cfg(feature = "lnbits")]
pub mod lnbits;
#[cfg(feature = "lnd")]
pub mod lnd;
#[cfg(feature = "nwc")]
pub mod nwc;
#[cfg(feature = "rest")]
pub mod rest;
#[cfg(feature = "testing")]
pub mod testing;

pub use backend::{
    CreatedInvoice, InvoiceCheckError, InvoiceMismatch, InvoiceRequest, InvoiceState,
    LightningBackend, LightningError, NetworkPin, NodeInfo, PaymentHash, PaymentOutcome,
    PaymentProof, Preimage, check_pay_amount, confirm_paid, confirm_settled,
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
