//! The `lightning` payment method: what each of its intents carries on the wire.
//!
//! | module | for |
//! |---|---|
//! | [`charge`] | the `charge` request (a BOLT11 invoice) and the `preimage` payload |
//! | [`session`] | the `session` request (a prepaid balance) and the `open` / `bearer` / `topUp` / `close` payloads |
//!
//! Each intent's server side is its `server` submodule (`charge::server`, `session::server`);
//! `node` is the Lightning node both share.

pub mod charge;
pub(crate) mod node;
pub mod session;
