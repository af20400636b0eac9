//! # farebox-core
//!
//! The rail-neutral core of farebox. It knows what a price, a challenge, a credential, a verified
//! payment and a receipt are, how failures map to HTTP, and how `WWW-Authenticate` /
//! `Authorization` fields are written and parsed. It knows no payment rail: L402, x402 and MPP
//! are separate crates that implement [`Rail`], the way rustls' protocol core is separate from
//! the `CryptoProvider`s that plug into it.
//!
//! | module | for |
//! |---|---|
//! | [`money`] | [`Money`]: an [`Asset`] plus an integer amount in base units; no floats |
//! | [`resource`] | [`Resource`] and [`Price`]: what is being sold, possibly in several assets |
//! | [`rail`] | the [`Rail`] trait, [`Challenge`], [`PresentedCredential`], [`Verified`] and its [`Settlement`], [`Receipt`], and credential routing |
//! | [`error`] | [`PaymentError`] / [`ErrorKind`] and the RFC 9457 [`Problem`] body |
//! | [`auth`] | the RFC 9110 auth-param grammar, bounded and linear-time |
//! | [`time`] | RFC 3339 timestamps (UTC, seconds) written and parsed without a date library |
//! | [`store`] | [`ReplayStore`]: single-use proofs recorded once; [`SessionStore`]: session balances; both across restarts and instances |
//!
//! ## How one 402 carries every rail
//!
//! A route has a [`Price`] with one amount per accepted asset (say 10 sat *or* 0.01 USDC). The
//! server layer asks every configured rail for a [`Challenge`]; a rail that cannot charge any of
//! the price's assets answers `Ok(None)` and is left out. The challenges are merged into one
//! response: their `WWW-Authenticate` lines in rail order, their extra headers, and their body
//! members in one problem+json object. On the retry, [`rail::credential_of`] finds the single
//! rail whose auth scheme or dedicated header the request carries and hands the credential to it
//! alone; a request carrying two credentials is refused with 400 rather than guessed at.
//!
//! ## Writing a rail
//!
//! A new rail is one crate with one type implementing [`Rail`]. Nothing else in farebox changes:
//! the server layer, the gateway and the generic conformance checks drive it through the trait.
//!
//! 1. **Name and claim your credentials.** Return a stable [`Rail::name`], and declare the
//!    `Authorization` schemes ([`Rail::auth_schemes`]) and/or dedicated request headers
//!    ([`Rail::credential_headers`]) your credentials arrive in. Routing is done by the core from
//!    these declarations, so two rails cannot both claim a request by accident.
//! 2. **Challenge.** In [`Rail::challenge`], pick the amount from
//!    [`Price::in_asset`](resource::Price::in_asset) for the asset you settle, create whatever the
//!    client must pay (an invoice, payment requirements), bind it to the resource so it cannot be
//!    replayed elsewhere, and return the header lines and body members. Use
//!    [`auth::AuthChallenge`] to write `WWW-Authenticate` values; it quotes and escapes for you.
//!    Return `Ok(None)` when your asset is not in the price. When the 402 answers a credential
//!    your rail refused, [`Refusal::of`] hands you the error, should your protocol carry a reason.
//! 3. **Verify.** [`Rail::verify`] gets the [`PresentedCredential`] (already size-bounded and,
//!    for `Authorization`, parsed into scheme and parameters). Check everything that proves
//!    payment for *this* resource: signatures, amounts, recipient, time window, scope. Compare
//!    MACs in constant time. Report failures as [`PaymentError`]s with a stable `code` and a
//!    `detail` a person can act on: [`PaymentError::invalid`] earns the client a fresh 402,
//!    [`PaymentError::unavailable`] a 503 with `Retry-After` when your backend cannot answer —
//!    never let a request through because a check could not run. If a proof could be spent twice
//!    (a nonce), reserve it here so a concurrent duplicate fails before the handler runs.
//! 4. **Settle.** A successful `verify` returns a [`Verified`] payment carrying your own
//!    [`Settlement`] object: what you need to settle (the signed authorization, the reserved
//!    nonce, a handle on your rail) and the code. [`Settlement::settle`] moves the money (or, for
//!    final proofs such as a Lightning preimage, just acknowledges it) and returns a [`Receipt`]
//!    whose headers go on the response; [`Settlement::release`] gives the reservation back when
//!    the handler fails. The server settles after a successful response by default
//!    ([`SettleTiming`]). Only the rail that verified a payment ever settles it: the object is
//!    yours, and nothing is downcast.
//! 5. **Sessions (optional).** A rail whose payer deposits once and then pays per request (a
//!    payment channel, a prepaid balance) keeps its accounting in a [`SessionStore`]: one
//!    versioned record per session, changed only through [`store::update_session`], so that
//!    concurrent requests, restarts and several instances never spend the same balance twice.
//!    Debit the request's price in `verify` (persisted before the handler runs) and credit it
//!    back in [`Settlement::release`]. Messages that only manage the session (top up, close) are verified as
//!    [`Verdict::Control`] (not [`Verdict::Payment`]): the server settles them and answers with
//!    [`Receipt::answer`] without calling the handler.
//! 6. **Test it like the built-in rails.** Exercise the trait directly with a [`Resource`], and
//!    run `farebox-server`'s rail contract kit (feature `testing`,
//!    `farebox_server::testing::assert_rail_contract`): describe your rail in a `RailHarness`
//!    (a price, how a client pays your 402, how to cut your backend off) and the kit checks,
//!    behind a real paywall, that you challenge when priced, refuse garbage with a typed error,
//!    serve a proof once, give it back when the handler fails, never serve when settlement
//!    fails, and answer a backend outage with 503. L402, x402 and MPP run it in their
//!    `tests/contract.rs`.
//!
//! **A whole rail, written from outside.** `examples/rail-prepaid` in the repository is the
//! walk-through: a fourth rail (prepaid credit codes signed by the seller with Ed25519) in its
//! own crate, which no other farebox crate knows about.
//!
//! - `src/code.rs`: the proof's bytes and its signature rules (step 3's "compare in constant
//!   time" is Ed25519's `verify_strict` here).
//! - `src/rail.rs`: steps 1 to 5. The challenge names the price, currency and seller;
//!   `verify` checks the code and debits the price from its balance in a [`SessionStore`]
//!   by compare-and-swap; its [`Settlement`] writes the receipt, or credits the price back
//!   when the handler fails.
//! - `src/wallet.rs`: the client half, a `farebox_wallet::Wallet` (the client side of the
//!   contract, behind the crate's `client` feature) that recognises the seller's challenge,
//!   pays with a code and keeps its own count of what each code has left; `WALLET_PLUGIN` lets
//!   `farebox pay` configure it from a `[rails.prepaid]` table (one line in the binary).
//! - `src/conformance.rs`, `checks/prepaid.json`, `schemas/`: the rail's conformance probe
//!   (feature `conformance`), which `farebox-conformance` runs against any server selling on
//!   it: its checks as data, the JSON Schemas of its challenge and receipt, the attempts it
//!   makes, and its wallet (here the seller's key, which mints the codes it sends).
//! - `tests/contract.rs`: step 6 with the contract kit, the store cut off for the outage
//!   clause; `tests/client.rs`: an agent behind `farebox-client`'s middleware spending a code
//!   over HTTP, its ledger and budget included; `tests/conformance.rs`: the conformance suite
//!   against the rail behind a real paywall, and against a lax server it must fail.
//!
//! A minimal rail that accepts a shared secret (for illustration only — a real rail proves
//! payment, not knowledge of a password):
//!
//! ```
//! use std::sync::Arc;
//!
//! use async_trait::async_trait;
//! use farebox_core::{auth::AuthChallenge, Challenge, PaymentError, PresentedCredential, Rail,
//!                    ReceiptOnly, Refusal, Resource, Verdict, Verified};
//!
//! struct Voucher;
//!
//! #[async_trait]
//! impl Rail for Voucher {
//!     fn name(&self) -> &'static str { "voucher" }
//!     fn auth_schemes(&self) -> &'static [&'static str] { &["Voucher"] }
//!
//!     async fn challenge(&self, r: &Resource, _: Option<&Refusal<'_>>)
//!         -> Result<Option<Challenge>, PaymentError> {
//!         let Some(price) = r.price.in_bitcoin() else { return Ok(None) };
//!         let line = AuthChallenge::new("Voucher").param("amount_msat", price.amount.to_string());
//!         let value = line.to_header_value().map_err(|e| PaymentError::internal("header", e.to_string()))?;
//!         Ok(Some(Challenge { www_authenticate: vec![value], ..Default::default() }))
//!     }
//!
//!     async fn verify(self: Arc<Self>, r: &Resource, c: &PresentedCredential)
//!         -> Result<Verdict, PaymentError> {
//!         match c.auth.as_ref().and_then(|a| a.token.as_deref()) {
//!             Some("open-sesame") => Ok(Verdict::Payment(Verified::new(
//!                 r.price.in_bitcoin().cloned().expect("challenged in bitcoin"),
//!                 None,
//!                 "voucher",
//!                 ReceiptOnly,
//!             ))),
//!             _ => Err(PaymentError::invalid("bad_voucher", "unknown voucher")),
//!         }
//!     }
//! }
//! ```
#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod money;
pub mod rail;
pub mod resource;
pub mod store;
pub mod time;

pub use error::{ErrorKind, PaymentError, Problem};
pub use money::{Asset, Money, MoneyError, Token};
pub use rail::{
    Challenge, ControlAnswer, PresentedCredential, Rail, Receipt, ReceiptOnly, Refusal,
    SettleTiming, Settlement, Verdict, Verified,
};
pub use resource::{Price, Resource};
pub use store::{
    Hold, HoldOutcome, ProofRecord, ProofState, ReplayStore, SessionRecord, SessionStatus,
    SessionStore, StoreError, Versioned,
};
