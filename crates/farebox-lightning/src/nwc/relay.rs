//! An in-process Nostr relay (rust-nostr's relay builder) for tests, benchmarks and the demo:
//! the same websocket protocol a public relay speaks, on loopback.

use std::net::{IpAddr, Ipv4Addr};

use nostr_relay_builder::prelude::{LocalRelay, RateLimit, RelayBuilder};

use crate::backend::LightningError;

/// A relay builder on 127.0.0.1 (a free port unless `port` is given) with rate limits far above
/// NWC traffic: the builder's default of 60 events a minute per connection is a public relay's
/// spam guard, and one wallet service answering many clients passes it in seconds.
pub fn loopback_relay_builder(port: Option<u16>) -> RelayBuilder {
    let builder = RelayBuilder::default()
        .addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .rate_limit(RateLimit { max_reqs: 500, notes_per_minute: 1_000_000 });
    match port {
        Some(port) => builder.port(port),
        None => builder,
    }
}

/// Starts `builder`'s relay; it stops when the last clone of the returned handle is dropped
/// (or on [`LocalRelay::shutdown`]). Its URL is [`LocalRelay::url`].
pub async fn run_relay(builder: RelayBuilder) -> Result<LocalRelay, LightningError> {
    let relay = LocalRelay::new(builder);
    relay
        .run()
        .await
        .map_err(|e| LightningError::Unavailable(format!("cannot start the local relay: {e}")))?;
    Ok(relay)
}
