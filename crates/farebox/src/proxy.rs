//! A minimal forwarding proxy: the paid server of `farebox demo` and `farebox serve-demo` puts
//! the paywall in front of it. (The full gateway, with TOML config, lives in its own crate.)

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderName, StatusCode};

/// Request bodies forwarded upstream are capped; a larger one is refused with 413.
const MAX_FORWARD_BODY: usize = 2 * 1024 * 1024;

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
    /// `Authorization` schemes that belong to the paywall's rails: stripped before forwarding,
    /// while the upstream's own schemes (e.g. `Bearer`) pass through.
    pub payment_schemes: Vec<&'static str>,
}

impl Upstream {
    fn forwards(&self, name: &HeaderName, value: &http::HeaderValue) -> bool {
        if is_hop_by_hop(name) {
            return false;
        }
        if name != http::header::AUTHORIZATION {
            return true;
        }
        let scheme = value
            .to_str()
            .ok()
            .and_then(farebox_core::auth::scheme_of)
            .unwrap_or("");
        !self
            .payment_schemes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
    }
}

pub async fn forward(State(up): State<Upstream>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_FORWARD_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(url) = up.base.join(path_and_query) else {
        return (StatusCode::BAD_REQUEST, "bad request path\n").into_response();
    };
    let mut outbound = up.client.request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if up.forwards(name, value) {
            outbound = outbound.header(name, value);
        }
    }
    match outbound.send().await {
        Ok(reply) => {
            let mut response = Response::builder().status(reply.status());
            for (name, value) in reply.headers() {
                if !is_hop_by_hop(name) {
                    response = response.header(name, value);
                }
            }
            let bytes = reply.bytes().await.unwrap_or_default();
            response
                .body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            (StatusCode::BAD_GATEWAY, "upstream unreachable\n").into_response()
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}
