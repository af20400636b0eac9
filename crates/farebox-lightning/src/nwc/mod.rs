//! Nostr Wallet Connect (NIP-47), both sides (feature `nwc`).
//!
//! * [`NwcClient`]: a [`crate::LightningBackend`] that pays, issues and watches invoices
//!   through a wallet reached over Nostr relays (Alby Hub, or the service below). Agents pay
//!   with it; a server can issue and check its invoices with it.
//! * [`WalletService`]: any backend (the embedded dev node in tests and the demo) as a NIP-47
//!   wallet, with per-connection budgets and method lists enforced by the service.
//! * [`ConnectionUri`]: the `nostr+walletconnect://` string that joins the two; its secret is
//!   never printed.
//! * [`relay`]: an in-process relay, so all of this runs over a real websocket on loopback.
//! * [`wire`]: the event kinds, payloads, encryption negotiation (NIP-44 v2 preferred, NIP-04
//!   for wallets that offer only it) and error codes both sides share.
//!
//! Versions: rust-nostr's 0.44 line (`nostr` 0.44.8, `nostr-relay-pool` 0.44.3,
//! `nostr-relay-builder` 0.44.1). The `nwc` crate is not used: it speaks NIP-04 only and is a
//! client only; requests, responses and notifications are built here on `nostr`'s NIP-44 and
//! NIP-04 primitives.
//!
//! ```
//! # let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
//! # runtime.block_on(async {
//! use std::sync::Arc;
//! use farebox_lightning::nwc::{relay, ConnectionSettings, NwcClient, ServiceOptions, WalletService};
//! use farebox_lightning::{DevNetwork, DevNode, InvoiceRequest, LightningBackend};
//!
//! // A relay, a shop's node, and an agent's wallet node behind a wallet service.
//! let relay = relay::LoopbackRelay::start(relay::relay_builder(), None).await?;
//! let network = DevNetwork::new();
//! let shop = DevNode::random(&network, 0);
//! let wallet_node = DevNode::random(&network, 1_000_000);
//! let service =
//!     WalletService::start(Arc::new(wallet_node), vec![relay.url().clone()], ServiceOptions::default())
//!         .await?;
//!
//! // The agent holds only the connection URI.
//! let uri = service.create_connection(ConnectionSettings::unrestricted("agent")).await?;
//! let wallet = NwcClient::new(&uri);
//! let invoice = shop
//!     .create_invoice(InvoiceRequest {
//!         amount_msat: 21_000,
//!         memo: "GET /weather".into(),
//!         expiry: std::time::Duration::from_secs(600),
//!     })
//!     .await?;
//! let paid = wallet.pay(&invoice.bolt11, 1_000).await?;
//! assert_eq!(farebox_lightning::sha256(&paid.preimage), invoice.payment_hash);
//! assert_eq!(wallet.balance().await?, 1_000_000 - 21_000);
//! # Ok::<(), farebox_lightning::LightningError>(())
//! # }).unwrap();
//! ```

pub mod client;
pub mod relay;
pub mod service;
pub mod uri;
pub mod wire;

pub use client::{NwcClient, NwcOptions};
pub use service::{Budget, BudgetRenewal, ConnectionSettings, ServiceOptions, WalletService};
pub use uri::{ConnectionUri, UriError};
pub use wire::{Encryption, ErrorCode, Method, WalletInfo};

/// rust-nostr's protocol crate, as used here (keys, events, relay URLs).
pub use nostr;
/// rust-nostr's relay builder, for relays with custom policies in tests.
pub use nostr_relay_builder;
