//! farebox-l402: the L402 (formerly LSAT) payment rail.
//!
//! A server answers 402 with an invoice and a macaroon that commits to the invoice's payment
//! hash; the client pays, learns the preimage, and retries with `Authorization: L402
//! <macaroon>:<preimage>`. The modules:
//!
//! * [`macaroon`]: the V2 binary codec (byte-compatible with go-macaroon, Aperture's library)
//!   and the HMAC-SHA256 signature chain with libmacaroons' key derivation;
//! * [`identifier`]: the 66-byte L402 macaroon identifier;
//! * [`caveat`]: the `condition=value` caveats farebox mints and the fail-closed checker;
//! * [`root_key`]: where per-token root keys come from;
//! * [`credential`]: the header wire format, server and client side;
//! * [`rail`]: [`L402Rail`], farebox-core's `Rail` for L402, and its synchronous
//!   [`L402Verifier`].
#![forbid(unsafe_code)]

pub mod caveat;
pub mod credential;
pub mod identifier;
pub mod macaroon;
pub mod rail;
pub mod root_key;

pub use credential::{L402Challenge, attenuate, format_credential, parse_challenge};
pub use identifier::Identifier;
pub use rail::{ConfigError, L402Config, L402Rail, L402Verifier, VerifiedToken};
pub use root_key::{DerivedRootKeys, RootKeys};
