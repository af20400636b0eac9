//! An in-process Nostr relay (rust-nostr's relay builder) for tests, benchmarks and the demo:
//! the same websocket protocol a public relay speaks, on loopback.
//!
//! [`LoopbackRelay`] accepts the TCP connections itself, with `TCP_NODELAY`, performs the
//! RFC 6455 opening handshake and hands the upgraded stream to the relay builder's
//! [`LocalRelay`]. The builder's own listener leaves Nagle's algorithm on, and a relay answers
//! in bursts (`OK`, then the forwarded event): the second write then waits for the peer's
//! delayed ACK, 40 ms on Linux, which would be measured as NWC latency. Public relays
//! (strfry and others) disable Nagle too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine;
use nostr::RelayUrl;
use nostr_relay_builder::prelude::{LocalRelay, RateLimit, RelayBuilder};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::backend::LightningError;

/// Longest opening handshake request read.
const MAX_HANDSHAKE_LEN: usize = 8 * 1024;
/// RFC 6455 §1.3: the GUID appended to `Sec-WebSocket-Key`.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A relay builder with rate limits far above NWC traffic: the builder's default of 60 events a
/// minute per connection is a public relay's spam guard, and one wallet service answering many
/// clients passes it in seconds. Add policies to it before [`LoopbackRelay::start`].
pub fn relay_builder() -> RelayBuilder {
    RelayBuilder::default().rate_limit(RateLimit { max_reqs: 500, notes_per_minute: 1_000_000 })
}

/// A running relay on 127.0.0.1. It stops when dropped.
pub struct LoopbackRelay {
    relay: LocalRelay,
    url: RelayUrl,
    accept: JoinHandle<()>,
}

impl LoopbackRelay {
    /// Starts `builder`'s relay on 127.0.0.1, on `port` or a free one.
    pub async fn start(builder: RelayBuilder, port: Option<u16>) -> Result<Self, LightningError> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port.unwrap_or(0));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| LightningError::Unavailable(format!("cannot bind the relay: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| LightningError::Unavailable(format!("relay address: {e}")))?;
        let url = RelayUrl::parse(&format!("ws://{local}"))
            .map_err(|e| LightningError::Unavailable(format!("relay URL: {e}")))?;
        let relay = LocalRelay::new(builder);
        let serving = relay.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let relay = serving.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut stream = stream;
                    if upgrade(&mut stream).await.is_ok() {
                        let _ = relay.take_connection(stream, peer).await;
                    }
                });
            }
        });
        Ok(Self { relay, url, accept })
    }

    /// Its `ws://127.0.0.1:port` URL.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }
}

impl Drop for LoopbackRelay {
    fn drop(&mut self) {
        self.accept.abort();
        self.relay.shutdown();
    }
}

/// Answers a websocket opening handshake (RFC 6455 §4.2) on `stream`.
async fn upgrade(stream: &mut TcpStream) -> std::io::Result<()> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(invalid("connection closed during the handshake"));
        }
        request.extend_from_slice(&chunk[..read]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if request.len() > MAX_HANDSHAKE_LEN {
            return Err(invalid("handshake too long"));
        }
    };
    // A client sends nothing before the server's answer; bytes past the request are refused.
    if end + 4 != request.len() {
        return Err(invalid("data before the handshake completed"));
    }
    let text = std::str::from_utf8(&request[..end]).map_err(|_| invalid("handshake not UTF-8"))?;
    let key = text
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, value)| value.trim())
        .ok_or_else(|| invalid("no Sec-WebSocket-Key"))?;
    let accept = accept_value(key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
fn accept_value(key: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(Sha1::new().chain_update(key).chain_update(WEBSOCKET_GUID).finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_rfc_6455s_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_value("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
