//! A minimal forwarding proxy: the paid server of `farebox demo` puts the paywall in front of
//! it. (The full gateway, with TOML config, gets its own crate.)
//!
//! The upstream URL is the configured base plus the request's path and query, set as such,
//! never resolved as a relative reference: `//other-host/x` or `/../x` must not reach anything
//! but the configured upstream, under the path the paywall priced.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use farebox_server::Paywall;
use http::{HeaderName, StatusCode};

/// Request bodies forwarded upstream are capped; a larger one is refused with 413.
const MAX_FORWARD_BODY: usize = 2 * 1024 * 1024;
/// Upstream response bodies are capped; a larger one is a 502 (and is not charged for).
const MAX_REPLY_BODY: usize = 16 * 1024 * 1024;

/// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

#[derive(Clone)]
pub struct Upstream {
    pub base: reqwest::Url,
    pub client: reqwest::Client,
    /// Decides which request headers are payment credentials: those stay here, while the
    /// upstream's own (e.g. `Authorization: Bearer`) pass through.
    pub paywall: Arc<Paywall>,
}

impl Upstream {
    fn forwards(&self, name: &HeaderName, value: &http::HeaderValue) -> bool {
        !is_hop_by_hop(name) && !self.paywall.is_payment_credential(name, value)
    }
}

pub async fn forward(State(up): State<Upstream>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_FORWARD_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    };
    let mut outbound =
        up.client.request(parts.method, upstream_url(&up.base, &parts.uri)).body(body);
    for (name, value) in &parts.headers {
        if up.forwards(name, value) {
            outbound = outbound.header(name, value);
        }
    }
    let mut reply = match outbound.send().await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(error = %e.without_url(), "upstream unreachable");
            return (StatusCode::BAD_GATEWAY, "upstream unreachable\n").into_response();
        }
    };
    let mut response = Response::builder().status(reply.status());
    for (name, value) in reply.headers() {
        if !is_hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    // Buffered, so that a body that fails half-way is a 502 (not settled) rather than a
    // truncated 200 that the client has paid for.
    let mut bytes = Vec::new();
    loop {
        match reply.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_REPLY_BODY => {
                bytes.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                return (StatusCode::BAD_GATEWAY, "upstream response too large\n").into_response();
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "upstream body failed");
                return (StatusCode::BAD_GATEWAY, "upstream response failed\n").into_response();
            }
        }
    }
    response.body(Body::from(bytes)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// The upstream URL of a request: `base`'s path followed by the request's path, byte for byte
/// (the path the paywall priced; the paywall refused the spellings a URL parser would rewrite,
/// such as dot segments and backslashes), and the request's query.
fn upstream_url(base: &reqwest::Url, uri: &http::Uri) -> reqwest::Url {
    let mut url = base.clone();
    let path = format!("{}{}", base.path().trim_end_matches('/'), uri.path());
    url.set_path(&path);
    url.set_query(uri.query());
    url
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_gets_exactly_the_path_that_was_priced() {
        for base in ["http://127.0.0.1:9/", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1/"] {
            let base: reqwest::Url = base.parse().unwrap();
            let prefix = base.path().trim_end_matches('/').to_string();
            for target in [
                "/joke",
                "/JOKE",
                "/joke/",
                "/joke;x=1",
                "/joke;jsessionid=A/b",
                "/joke%3Bx",
                "/joke%3F.css",
                "/caf%C3%A9",
                "/caf%c3%a9",
                "/a%25b",
                "/a%20b",
                "/a%2Fb",
                "/a'b",
                "/a:b@c",
                "/%7Euser",
                "http://other.example/joke",
            ] {
                let uri: http::Uri = target.parse().unwrap();
                let url = upstream_url(&base, &uri);
                assert_eq!(url.path(), format!("{prefix}{}", uri.path()), "{base} {target}");
                assert_eq!(url.host_str(), Some("127.0.0.1"), "{target}");
                assert_eq!(url.query(), None);
            }
            let uri: http::Uri = "/joke?q=%2e%2e/x&y=;z#".parse().unwrap();
            assert_eq!(upstream_url(&base, &uri).query(), Some("q=%2e%2e/x&y=;z"));
        }
    }
}
