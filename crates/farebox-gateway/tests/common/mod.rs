//! A gateway on loopback in front of a recording test upstream, both on real TCP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::{any, get};
use bytes::Bytes;
use farebox_client::{Budget, PaymentMiddleware};
use farebox_core::Money;
use farebox_gateway::{Config, Gateway, GatewayOptions};
use farebox_l402::client::L402Wallet;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// Whether every byte was the one [`chunk`] puts at its offset.
    pub body_is_pattern: bool,
}

/// The test upstream's shared state: what it saw, and the gates of its streaming routes.
#[derive(Clone)]
pub struct Upstream {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Bytes of the request body `/upload` has read so far.
    pub uploaded: watch::Sender<u64>,
    /// Bytes of `/download` the test has received so far (the upstream waits on it).
    pub downloaded: watch::Sender<u64>,
    /// SSE events the test has received so far (the upstream waits on it).
    pub events_received: watch::Sender<u64>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            seen: Arc::default(),
            uploaded: watch::channel(0).0,
            downloaded: watch::channel(0).0,
            events_received: watch::channel(0).0,
        }
    }
}

impl Upstream {
    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the upstream saw a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

pub const MIB: u64 = 1024 * 1024;
/// Size of the large-body tests.
pub const LARGE: u64 = 64 * MIB;

/// Deterministic bytes for chunk `i` of the large bodies.
pub fn chunk(i: u64) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; MIB as usize])
}

/// Checks pieces of a body, as they arrive, against the [`chunk`] pattern.
pub struct PatternCheck {
    offset: u64,
    current: (u64, Bytes),
    pub ok: bool,
}

impl Default for PatternCheck {
    fn default() -> Self {
        PatternCheck { offset: 0, current: (0, chunk(0)), ok: true }
    }
}

impl PatternCheck {
    pub fn feed(&mut self, mut piece: &[u8]) {
        while !piece.is_empty() {
            let (i, off) = (self.offset / MIB, (self.offset % MIB) as usize);
            if self.current.0 != i {
                self.current = (i, chunk(i));
            }
            let k = piece.len().min(MIB as usize - off);
            self.ok &= piece[..k] == self.current.1[off..off + k];
            piece = &piece[k..];
            self.offset += k as u64;
        }
    }

    pub fn len(&self) -> u64 {
        self.offset
    }
}

async fn record(state: &Upstream, path: String, headers: HeaderMap, body: Body) -> Seen {
    let mut stream = body.into_data_stream();
    let mut check = PatternCheck::default();
    while let Some(Ok(bytes)) = stream.next().await {
        check.feed(&bytes);
        state.uploaded.send_replace(check.len());
    }
    let seen = Seen { path, headers, body_len: check.len(), body_is_pattern: check.ok };
    state.seen.lock().unwrap().push(seen.clone());
    seen
}

pub fn upstream_router(state: Upstream) -> Router {
    Router::new()
        .route("/download", get(download))
        .route("/sse", get(sse))
        .route("/slow", get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "too late"
        }))
        .route("/hop", get(|| async {
            let mut r = http::Response::new(Body::from("hop"));
            r.headers_mut().insert("connection", "x-up-hop".parse().unwrap());
            r.headers_mut().insert("x-up-hop", "secret".parse().unwrap());
            r.headers_mut().insert("x-end-to-end", "kept".parse().unwrap());
            r
        }))
        .route("/status/{code}", get(|Path(code): Path<u16>| async move {
            (StatusCode::from_u16(code).unwrap(), "status")
        }))
        .fallback(any(
            |State(state): State<Upstream>, uri: http::Uri, headers: HeaderMap, body: Body| async move {
                let seen = record(&state, uri.path().to_string(), headers, body).await;
                axum::Json(serde_json::json!({
                    "path": seen.path,
                    "body_len": seen.body_len,
                }))
            },
        ))
        .with_state(state)
}

/// 64 MiB, one MiB at a time, each after the test received the previous one: a gateway that
/// buffered the body would never deliver the first MiB, and the test would time out.
async fn download(State(state): State<Upstream>) -> http::Response<Body> {
    let mut progress = state.downloaded.subscribe();
    let stream = async_stream(move |tx| async move {
        for i in 0..LARGE / MIB {
            if progress.wait_for(|got| *got >= i * MIB).await.is_err() {
                return;
            }
            if tx.send(Ok::<_, std::io::Error>(chunk(i))).await.is_err() {
                return;
            }
        }
    });
    let mut r = http::Response::new(Body::from_stream(stream));
    r.headers_mut().insert("content-length", LARGE.to_string().parse().unwrap());
    r
}

/// Five server-sent events, each sent once the test received the one before.
async fn sse(State(state): State<Upstream>) -> http::Response<Body> {
    let mut progress = state.events_received.subscribe();
    let stream = async_stream(move |tx| async move {
        for i in 0..5u64 {
            if progress.wait_for(|got| *got >= i).await.is_err() {
                return;
            }
            let event = Bytes::from(format!("id: {i}\ndata: event {i}\n\n"));
            if tx.send(Ok::<_, std::io::Error>(event)).await.is_err() {
                return;
            }
        }
    });
    let mut r = http::Response::new(Body::from_stream(stream));
    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    r.headers_mut().insert("cache-control", "no-cache".parse().unwrap());
    r
}

/// A stream fed by a task.
fn async_stream<F, Fut>(
    produce: F,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(produce(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Serves `router` on a loopback port.
pub async fn serve_router(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A running gateway and what the tests look at.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub base: String,
    pub addr: SocketAddr,
    pub upstream: Upstream,
    pub upstream_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A client paying L402 from the dev wallet, up to 1000 sat.
    pub async fn payer(&self) -> reqwest_middleware::ClientWithMiddleware {
        let wallet = self.gateway.dev_wallet().await.expect("dev lightning");
        paying(L402Wallet::new(wallet, 1_000))
    }

    /// Writes `text` as the configuration file and loads it.
    pub fn config(&self, text: &str) -> Result<Config, farebox_gateway::ConfigError> {
        write_config(self.dir.path(), text)
    }
}

/// A client paying with `wallet`, up to 1000 sat a payment and 10000 sat in all.
pub fn paying(
    wallet: impl farebox_client::Wallet + 'static,
) -> reqwest_middleware::ClientWithMiddleware {
    let budget = Budget::new().allow(Money::sats(1_000), Money::sats(10_000)).unwrap();
    farebox_client::paying_client(
        reqwest::Client::new(),
        PaymentMiddleware::new(budget).wallet(wallet),
    )
}

pub fn write_config(
    dir: &std::path::Path,
    text: &str,
) -> Result<Config, farebox_gateway::ConfigError> {
    let path: PathBuf = dir.join("farebox.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

/// The part of a configuration the tests share: the dev node, L402, the upstream at `{UP}`.
pub fn base_config(upstream: SocketAddr, extra_upstream: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
shutdown_grace_secs = 5

[lightning]
backend = "dev"

[rails.l402]
service = "test"

[upstreams.test]
url = "http://{upstream}"
{extra_upstream}
"#
    )
}

/// Starts a recording upstream and a gateway configured by `base_config` + `routes`.
pub async fn start(extra_upstream: &str, rest: &str) -> Running {
    let upstream = Upstream::default();
    let upstream_addr = serve_router(upstream_router(upstream.clone())).await;
    let text = format!("{}\n{rest}", base_config(upstream_addr, extra_upstream));
    start_with(upstream, upstream_addr, &text).await
}

/// Starts a gateway from `text` in front of an already running upstream.
pub async fn start_with(upstream: Upstream, upstream_addr: SocketAddr, text: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), text).unwrap_or_else(|e| panic!("{e}"));
    let options = GatewayOptions { demo_upstream: None, state_dir: Some(dir.path().to_path_buf()) };
    let gateway = Gateway::start(config, options).await.unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        gateway,
        base: format!("http://{addr}"),
        addr,
        upstream,
        upstream_addr,
        dir,
        stop: Some(stop),
        served,
    }
}

/// Sends `raw` (a whole HTTP/1.1 request) and reads the answer until the connection closes.
pub async fn raw_request(addr: SocketAddr, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
