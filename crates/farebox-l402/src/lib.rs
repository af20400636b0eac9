//! farebox-l402: the L402 (formerly LSAT) payment rail.
//!
//! A server answers 402 with an invoice and a macaroon that commits to the invoice's payment
//! hash; the client pays, learns the preimage, and retries with `Authorization: L402
//! <macaroon>:<preimage>`. The modules:
//!
//! * [`macaroon`]: the V2 binary codec (byte-compatible with go-macaroon, Aperture's library)
//!   and the HMAC-SHA256 signature chain with libmacaroons' key derivation;
//! * [`identifier`]: the 66-byte L402 macaroon identifier;
//! * [`caveat`]: the `condition=value` caveats farebox mints, the ones a holder appends to
//!   delegate a narrower token (path, method, expiry, request limit), and the fail-closed checker;
//! * [`root_key`]: where per-token root keys come from;
//! * [`credential`]: the header wire format, server and client side;
//! * [`rail`]: [`L402Rail`], farebox-core's `Rail` for L402, and its synchronous
//!   [`L402Verifier`];
//! * [`tokens`]: what the rail keeps per token in the server's store: revocations and request
//!   counters ([`TokenStore`]);
//! * [`receipt`]: the `L402-Receipt` response header;
//! * `client` (feature `client`): `L402Wallet`, the `farebox_wallet::Wallet` that pays L402
//!   challenges with a Lightning backend, for `farebox-client`'s middleware.
//!
//! # The receipt
//!
//! L402 defines no receipt, so a paid response would tell the client nothing about the payment.
//! [`L402Rail`] puts an `L402-Receipt` header ([`L402_RECEIPT`]) on every response it served for
//! a payment: base64url without padding of the compact JSON
//!
//! ```json
//! {"status":"success","rail":"l402","reference":"<payment hash hex>","amountMsat":10000,"service":"weather","timestamp":"2025-01-06T12:00:00Z"}
//! ```
//!
//! (`reference`: the invoice's payment hash; `amountMsat`: what the token paid; `timestamp`: the
//! settlement, RFC 3339 UTC to the second). It is unsigned: the client's proof of payment is
//! still the preimage. [`L402Receipt::decode`] reads it back, bounded and with typed errors:
//!
//! ```
//! use farebox_l402::{L402Receipt, L402_RECEIPT};
//!
//! let receipt = L402Receipt {
//!     payment_hash: [0x72; 32],
//!     amount_msat: 10_000,
//!     service: "weather".into(),
//!     timestamp: 1_736_164_800,
//! };
//! assert_eq!(L402_RECEIPT.as_str(), "l402-receipt");
//! let value = receipt.encode();
//! assert!(!value.contains('='));
//! assert_eq!(L402Receipt::decode(&value), Ok(receipt));
//! assert!(L402Receipt::decode("not a receipt").is_err());
//! ```
#![forbid(unsafe_code)]

pub mod caveat;
#[cfg(feature = "client")]
pub mod client;
pub mod credential;
pub mod identifier;
pub mod macaroon;
pub mod rail;
pub mod receipt;
pub mod root_key;
pub mod tokens;

pub use credential::{L402Challenge, attenuate, format_credential, parse_challenge};
pub use identifier::Identifier;
pub use rail::{ConfigError, L402Config, L402Rail, L402Verifier, RevokeError, VerifiedToken};
pub use receipt::{L402_RECEIPT, L402Receipt, ReceiptError};
pub use root_key::{DerivedRootKeys, RootKeys};
pub use tokens::TokenStore;
