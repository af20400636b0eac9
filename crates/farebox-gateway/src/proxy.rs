//! Forwarding one request to an upstream and its answer back, streaming both bodies.
//!
//! * **Bodies stream** in both directions, frame by frame, never held whole, with byte caps
//!   (`max_request_bytes` → 413, `max_response_bytes` → the answer is cut off). The one exception
//!   is a route that settles `after-end`: its answer is held back (up to `max_buffered_bytes`)
//!   until it is complete, so that nothing is delivered before it is paid and a body that fails
//!   half-way is a 502 that is not charged.
//! * **Hop-by-hop headers** (RFC 9110 §7.6.1) are removed in both directions: `Connection`,
//!   every field it names, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
//!   `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`; a WebSocket
//!   upgrade keeps `Connection: upgrade` and `Upgrade: websocket`, and the two connections are
//!   then spliced together.
//! * **`X-Forwarded-For` / `-Proto` / `-Host`** are written by the gateway: whatever a client
//!   sent under those names (and `Forwarded`, which the gateway does not write) is dropped,
//!   unless the peer is a configured trusted proxy, whose values are kept (`X-Forwarded-For` then
//!   gets the peer appended).
//! * **Payment credentials** (`Authorization: L402 …` / `Payment …`, `PAYMENT-SIGNATURE`,
//!   `X-PAYMENT`) stay at the gateway; the upstream's own `Authorization: Bearer …` passes.
//! * **Timeouts**: connecting (`connect_timeout_ms`) and waiting for the status line and
//!   headers (`response_timeout_ms`) each end in 504; an upstream that cannot be reached is 502.
//!
//! The upstream URL is the configured base plus the request's path and query, set as such and
//! never resolved as a relative reference, so `//other-host/x` cannot reach another host.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use farebox_core::Problem;
use farebox_core::error::{PROBLEM_BASE, PROBLEM_JSON};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::{Cidr, UpstreamSection};
use crate::connection::UpstreamConnections;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Hop-by-hop fields that are never forwarded, besides those `Connection` names.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether `name` is hop-by-hop by definition (not counting those a `Connection` names).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Where an upstream is: scheme, authority and base path, from its configured URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    authority: http::uri::Authority,
    base_path: String,
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<UpstreamTarget, String> {
        let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("https upstreams are not supported yet: use http:// (the upstream usually sits on a private network)".into());
            }
            _ => return Err("must be an http:// URL".into()),
        }
        let authority = uri.authority().cloned().ok_or("the URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("credentials in the upstream URL are not supported".into());
        }
        if uri.query().is_some() {
            return Err("the upstream URL must not carry a query".into());
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamTarget { authority, base_path })
    }

    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The host (without an IPv6 literal's brackets) and port to connect to.
    pub fn host_port(&self) -> (&str, u16) {
        let host = self.authority.host();
        (
            host.trim_start_matches('[').trim_end_matches(']'),
            self.authority.port_u16().unwrap_or(80),
        )
    }

    /// The upstream URI for a request to `path_and_query` at the gateway.
    fn uri_for(&self, original: &Uri) -> Result<Uri, http::Error> {
        let path = original.path();
        let pq = match original.query() {
            Some(q) => format!("{}{path}?{q}", self.base_path),
            None => format!("{}{path}", self.base_path),
        };
        Uri::builder().scheme("http").authority(self.authority.clone()).path_and_query(pq).build()
    }
}

/// One upstream, ready to forward to.
pub struct Upstream {
    pub name: String,
    pub target: UpstreamTarget,
    pub settings: UpstreamSection,
    /// Which upstream a client connection's kept connection goes to (unique in the process, so
    /// that one a reload replaced is never taken for its successor).
    id: u64,
    /// The shared pool: for upgrades, readiness checks and requests that come without a client
    /// connection of their own.
    client: Client<HttpConnector, Body>,
}

/// Why a request did not reach the upstream.
#[derive(Debug)]
pub enum SendError {
    /// The upstream did not accept the connection within `connect_timeout_ms`.
    ConnectTimeout,
    /// Anything else, described (with no URL: upstream URLs carry no credentials anyway).
    Unreachable(String),
}

impl Upstream {
    pub fn new(name: &str, settings: &UpstreamSection) -> Result<Upstream, String> {
        let target = UpstreamTarget::parse(&settings.url)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Upstream { name: name.to_string(), target, settings: settings.clone(), id, client })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Sends `request` on `via`'s kept connection, or else through the shared pool.
    async fn send(
        &self,
        request: Request<Body>,
        via: Option<&UpstreamConnections>,
    ) -> Result<Response<hyper::body::Incoming>, SendError> {
        if let Some(via) = via {
            return via.send(self, request).await;
        }
        self.client.request(request).await.map_err(|e| {
            if timed_out(&e) {
                SendError::ConnectTimeout
            } else {
                SendError::Unreachable(describe(&e))
            }
        })
    }

    /// Whether the upstream answers: its `health_path` below 500, or else a TCP connect.
    pub async fn ready(&self, within: Duration) -> Result<(), String> {
        let check = async {
            match &self.settings.health_path {
                Some(path) => {
                    let uri = self
                        .target
                        .uri_for(&path.parse::<Uri>().map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?;
                    let request = Request::get(uri)
                        .header(HOST, self.target.authority())
                        .body(Body::empty())
                        .map_err(|e| e.to_string())?;
                    let answer = self.client.request(request).await.map_err(|e| describe(&e))?;
                    if answer.status().is_server_error() {
                        return Err(format!("health check answered {}", answer.status()));
                    }
                    Ok(())
                }
                None => tokio::net::TcpStream::connect(self.target.authority())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            }
        };
        tokio::time::timeout(within, check).await.unwrap_or_else(|_| Err("timed out".into()))
    }
}

/// What the gateway decided about one request, for the forwarding step.
pub struct Forward<'a> {
    pub upstream: &'a Upstream,
    pub peer: SocketAddr,
    pub trusted: &'a [Cidr],
    /// Hold the answer back until it is complete (`settle = "after-end"`).
    pub hold_until_end: bool,
    /// Request headers that never reach the upstream (payment credentials).
    pub withhold: &'a (dyn Fn(&HeaderName, &HeaderValue) -> bool + Sync),
    /// Names the gateway writes itself (a client's values under them are dropped).
    pub reserved: &'a [HeaderName],
    /// What the gateway adds (payer, rail, amount…).
    pub add: Vec<(HeaderName, HeaderValue)>,
}

/// Whether the peer is a trusted proxy.
fn trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client's address: the peer's, or, behind trusted proxies, the right-most address in
/// `X-Forwarded-For` that is not one of them.
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, proxies: &[Cidr]) -> IpAddr {
    if !trusted(proxies, peer.ip()) {
        return peer.ip();
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        for part in value.to_str().unwrap_or("").split(',') {
            if let Ok(ip) = part.trim().parse::<IpAddr>() {
                chain.push(ip);
            }
        }
    }
    chain
        .iter()
        .rev()
        .find(|ip| !trusted(proxies, **ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer.ip())
}

/// The host a request was sent to (without port).
pub fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_string()))?;
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6).to_string(),
        None => raw.rsplit_once(':').map_or(raw.as_str(), |(h, _)| h).to_string(),
    };
    Some(host.to_ascii_lowercase())
}

/// Whether the request asks to switch to WebSocket.
fn wants_websocket(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
    connection_upgrade && websocket
}

/// Removes the hop-by-hop fields of `headers`, including those its `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// A problem+json answer the gateway writes itself.
pub fn problem(status: StatusCode, code: &str, detail: impl Into<String>) -> Response<Body> {
    let title = status.canonical_reason().unwrap_or("Error");
    let mut problem =
        Problem::new(status, title).with_type(format!("{PROBLEM_BASE}{code}")).with_detail(detail);
    problem.extensions.insert("code".into(), serde_json::Value::String(code.into()));
    let mut response = Response::new(Body::from(problem.to_json()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// How long the upstream took to answer with its headers (a response extension, for metrics).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLatency(pub Duration);

/// Forwards `request` as `f` says and returns what goes back to the client.
pub async fn forward(f: Forward<'_>, mut request: Request<Body>) -> Response<Body> {
    let up = f.upstream;
    let websocket = wants_websocket(request.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();

    let max_request = up.settings.max_request_bytes;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_request) {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("request bodies are limited to {max_request} bytes"),
        );
    }

    // The request as the upstream gets it.
    let original_host = parts.headers.get(HOST).cloned();
    let peer_trusted = trusted(f.trusted, f.peer.ip());
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    let credentials: Vec<HeaderName> =
        headers.iter().filter(|(n, v)| (f.withhold)(n, v)).map(|(n, _)| n.clone()).collect();
    for name in credentials.iter().chain(f.reserved) {
        headers.remove(name);
    }
    if !peer_trusted {
        for name in [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, FORWARDED] {
            headers.remove(name);
        }
    }
    let prior_for: Vec<String> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    headers.remove(X_FORWARDED_FOR);
    let mut chain = prior_for.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&f.peer.ip().to_string());
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(X_FORWARDED_HOST)
        && let Some(h) = &original_host
    {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
    match (&original_host, up.settings.preserve_host) {
        (Some(h), true) => {
            headers.insert(HOST, h.clone());
        }
        _ => {
            if let Ok(v) = HeaderValue::from_str(up.target.authority()) {
                headers.insert(HOST, v);
            }
        }
    }
    for (name, value) in f.add {
        headers.insert(name, value);
    }
    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    parts.headers = headers;
    parts.uri = match up.target.uri_for(&parts.uri) {
        Ok(uri) => uri,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad_target", e.to_string()),
    };
    parts.version = http::Version::HTTP_11;
    // The client connection's own upstream connection, except for an upgrade (the upgraded
    // connection outlives the request and is handed over from the shared pool).
    let via = if websocket { None } else { parts.extensions.remove::<Arc<UpstreamConnections>>() };
    let too_large = Arc::new(AtomicBool::new(false));
    // The response timeout runs from when the request body has been sent (an upload takes as
    // long as the client takes), or from when the upstream answers early. A request without a
    // body has nothing to wait for.
    let (outbound, body_sent) = if http_body::Body::is_end_stream(&body) {
        (Request::from_parts(parts, Body::empty()), None)
    } else {
        let (sent, body_sent) = tokio::sync::watch::channel(false);
        let mut capped = Capped::new(body, max_request, Some(too_large.clone()));
        capped.sent = Some(sent);
        (Request::from_parts(parts, Body::new(capped)), Some(body_sent))
    };

    let started = Instant::now();
    let timeout = Duration::from_millis(up.settings.response_timeout_ms);
    let exchange = up.send(outbound, via.as_deref());
    tokio::pin!(exchange);
    let early = match body_sent {
        Some(mut body_sent) => tokio::select! {
            answer = &mut exchange => Some(answer),
            _ = body_sent.wait_for(|sent| *sent) => None,
        },
        None => None,
    };
    let answer = match early {
        Some(answer) => Ok(answer),
        None => tokio::time::timeout(timeout, exchange).await,
    };
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            if too_large.load(Ordering::Relaxed) {
                return problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    format!("request bodies are limited to {max_request} bytes"),
                );
            }
            match e {
                SendError::ConnectTimeout => {
                    tracing::warn!(upstream = %up.name, "upstream connect timed out");
                    return problem(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream_timeout",
                        format!("upstream {} did not accept the connection in time", up.name),
                    );
                }
                SendError::Unreachable(why) => {
                    tracing::warn!(upstream = %up.name, error = %why, "upstream unreachable");
                    return problem(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unreachable",
                        format!("upstream {} cannot be reached", up.name),
                    );
                }
            }
        }
        Err(_) => {
            tracing::warn!(upstream = %up.name, "upstream response timed out");
            return problem(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "upstream {} did not answer within {} ms",
                    up.name, up.settings.response_timeout_ms
                ),
            );
        }
    };
    let latency = UpstreamLatency(started.elapsed());

    let (mut parts, body) = answer.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut parts.headers);
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return problem(
                StatusCode::BAD_GATEWAY,
                "unexpected_upgrade",
                "the upstream switched protocols unasked",
            );
        };
        parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let Some(upstream_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return problem(
                StatusCode::BAD_GATEWAY,
                "upgrade_failed",
                "the upstream's connection cannot be upgraded",
            );
        };
        let name = up.name.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        tracing::debug!(upstream = %name, error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::warn!(upstream = %name, error = %e, "upgrade failed"),
            }
        });
        let mut response = Response::from_parts(parts, Body::empty());
        response.extensions_mut().insert(latency);
        return response;
    }
    // The upstream's body was answered on this request only: never reuse an upgrade future.
    drop(client_upgrade);

    let max_response = up.settings.max_response_bytes;
    let mut response = if f.hold_until_end {
        let cap = up.settings.max_buffered_bytes;
        match collect(body, cap).await {
            Ok(bytes) => {
                parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(why) => {
                tracing::warn!(upstream = %up.name, why, "upstream body not delivered");
                return problem(
                    StatusCode::BAD_GATEWAY,
                    "upstream_body_failed",
                    format!("the upstream's answer {why}; nothing was charged"),
                );
            }
        }
    } else {
        Response::from_parts(parts, Body::new(Capped::new(body, max_response, None)))
    };
    response.extensions_mut().insert(latency);
    response
}

/// Reads a whole body of at most `cap` bytes.
async fn collect<B>(mut body: B, cap: u64) -> Result<Bytes, &'static str>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "failed half-way")?;
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > cap {
                return Err("is larger than max_buffered_bytes");
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

fn timed_out(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if s.to_string().contains("timed out") || s.to_string().contains("timeout") {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error and its causes on one line (no URLs with credentials: upstream URLs carry none).
pub(crate) fn describe(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A body that ends in an error once more than `left` bytes went through.
struct Capped<B> {
    inner: B,
    left: u64,
    tripped: Option<Arc<AtomicBool>>,
    /// Told when the body is done with (hyper drops a request body once it has sent it, or
    /// given up on it).
    sent: Option<tokio::sync::watch::Sender<bool>>,
}

impl<B> Capped<B> {
    fn new(inner: B, cap: u64, tripped: Option<Arc<AtomicBool>>) -> Self {
        Capped { inner, left: cap, tripped, sent: None }
    }
}

impl<B> Drop for Capped<B> {
    fn drop(&mut self) {
        if let Some(sent) = &self.sent {
            sent.send_replace(true);
        }
    }
}

impl<B> http_body::Body for Capped<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > self.left {
                    if let Some(t) = &self.tripped {
                        t.store(true, Ordering::Relaxed);
                    }
                    self.left = 0;
                    return Poll::Ready(Some(Err("body larger than allowed".into())));
                }
                self.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_fields_are_hop_by_hop_too() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-end-to-end"]);
    }

    #[test]
    fn the_upstream_url_keeps_its_host_whatever_the_path() {
        let t = UpstreamTarget::parse("http://127.0.0.1:9000/api/").unwrap();
        let uri: Uri = "//evil.example/x?y=1".parse().unwrap_or_else(|_| Uri::from_static("/"));
        let out = t.uri_for(&uri).unwrap();
        assert_eq!(out.authority().unwrap().as_str(), "127.0.0.1:9000");
        let out = t.uri_for(&Uri::from_static("/joke?x=1")).unwrap();
        assert_eq!(out.to_string(), "http://127.0.0.1:9000/api/joke?x=1");
        assert!(UpstreamTarget::parse("https://a.example").is_err());
        assert!(UpstreamTarget::parse("http://u:p@a.example").is_err());
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let proxies = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.7"));
        let behind: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(client_ip(&h, behind, &proxies), "1.2.3.4".parse::<IpAddr>().unwrap());
        let direct: SocketAddr = "8.8.8.8:5000".parse().unwrap();
        assert_eq!(
            client_ip(&h, direct, &proxies),
            direct.ip(),
            "an untrusted peer's header is ignored"
        );
    }
}
