//! The `lightning` payment method: what each of its intents carries on the wire.
//!
//! | module | for |
//! |---|---|
//! | [`charge`] | the `charge` request (a BOLT11 invoice) and the `preimage` payload |
//! | [`session`] | the `session` request (a prepaid balance) and the `open` / `bearer` / `topUp` / `close` payloads |
//!
//! The server side of both intents is in [`crate::rail`].

pub mod charge;
pub mod session;
