//! The `evm` payment method: what each of its intents carries on the wire, and the chain side
//! of its sessions.
//!
//! | module | for |
//! |---|---|
//! | [`charge`] | the `charge` request and the EIP-3009 `authorization` payload |
//! | [`session`] | the `session` request and the `open` / `voucher` / `topUp` / `close` payloads |
//! | [`voucher`] | session vouchers: EIP-712 `Voucher(bytes32,uint128)`, signing, recovery |
//! | [`escrow`] | the `SessionEscrow` payment-channel contract's calls, as methods on [`farebox_evm::EvmRpc`] |
//!
//! Each intent's server side is its `server` submodule (`charge::server`, `session::server`).

pub mod charge;
pub mod escrow;
pub mod session;
pub mod voucher;
