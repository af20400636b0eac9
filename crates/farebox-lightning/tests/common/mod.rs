//! What the node-backend tests (`lnd.rs`, `cln.rs`, `lnbits.rs`) share besides the loopback
//! servers themselves (in `farebox_lightning::testing`): the scenarios every backend must pass,
//! an invoice request, and short timeouts.
#![allow(dead_code)]

pub mod scenarios;

use std::time::Duration;

/// An invoice request for `amount_msat`, ten minutes to pay.
pub fn request(amount_msat: u64) -> farebox_lightning::InvoiceRequest {
    farebox_lightning::InvoiceRequest {
        amount_msat,
        memo: "GET /weather".into(),
        expiry: Duration::from_secs(600),
    }
}

/// Shortens a test: timeouts small enough that "slow" is a second, not a minute.
pub fn quick_timeouts() -> farebox_lightning::rest::Timeouts {
    farebox_lightning::rest::Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_millis(700),
        payment: Duration::from_secs(1),
    }
}
