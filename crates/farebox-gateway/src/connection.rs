//! One client connection, served in one task together with the upstream connections its
//! requests go out on.
//!
//! HTTP/1.1 requests on a connection come one after the other, so one upstream connection per
//! upstream serves all of a client connection's requests: it is opened at the first request
//! forwarded there and kept, idle, between requests. Its driver runs in the client connection's
//! task, so a request, its upstream exchange and the answer written back never hop to another
//! task or through a shared pool; that is what keeps the gateway's added latency close to a plain
//! reverse proxy's. An upstream connection ends with its client connection, or earlier when the
//! upstream closes it (a request that had not gone out on it then goes out on a new one).
//! WebSocket upgrades and readiness checks use the upstream's shared pool instead.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use axum::body::Body;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::proxy::{SendError, Upstream, describe};

/// Upstream connections idle at most per client connection (one per upstream it used, bounded
/// for a client that walks through many upstreams, or through reloads that replaced them).
const MAX_IDLE: usize = 4;

/// The upstream connections of one client connection.
#[derive(Default)]
pub struct UpstreamConnections {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Connections between two requests, by [`Upstream::id`].
    idle: Vec<(u64, client::SendRequest<Body>)>,
    /// The connections' drivers, polled by the client connection's task.
    drivers: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// That task, woken when a driver is added.
    task: Option<Waker>,
}

impl UpstreamConnections {
    /// Sends `request` (with an absolute URI) to `up` on this client connection's upstream
    /// connection, opening one when there is none or the last one closed.
    pub async fn send(
        &self,
        up: &Upstream,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        *request.uri_mut() = origin_form(request.uri());
        let idle = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let at = state.idle.iter().position(|(id, _)| *id == up.id());
            at.map(|at| state.idle.swap_remove(at).1)
        };
        if let Some(mut sender) = idle
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(request).await {
                Ok(answer) => {
                    self.keep(up.id(), sender);
                    return Ok(answer);
                }
                // Closed by the upstream before the request went out: a new connection.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Unreachable(describe(e.error()))),
                },
            }
        }
        let mut sender = self.connect(up).await?;
        let answer =
            sender.send_request(request).await.map_err(|e| SendError::Unreachable(describe(&e)))?;
        self.keep(up.id(), sender);
        Ok(answer)
    }

    async fn connect(&self, up: &Upstream) -> Result<client::SendRequest<Body>, SendError> {
        let within = Duration::from_millis(up.settings.connect_timeout_ms);
        let (host, port) = up.target.host_port();
        let stream = match tokio::time::timeout(within, TcpStream::connect((host, port))).await {
            Err(_) => return Err(SendError::ConnectTimeout),
            Ok(Err(e)) => return Err(SendError::Unreachable(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (sender, driver) = client::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Unreachable(describe(&e)))?;
        let name = up.name.clone();
        let driver = async move {
            if let Err(e) = driver.await {
                tracing::debug!(upstream = %name, error = %describe(&e), "upstream connection ended");
            }
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.drivers.push(Box::pin(driver));
        if let Some(task) = &state.task {
            task.wake_by_ref();
        }
        Ok(sender)
    }

    /// Keeps `sender` for the client connection's next request (it is ready again once this
    /// answer's body has been read).
    fn keep(&self, id: u64, sender: client::SendRequest<Body>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.idle.len() >= MAX_IDLE {
            state.idle.remove(0);
        }
        state.idle.push((id, sender));
    }

    /// Polls every upstream connection's driver, dropping those that ended.
    fn drive(&self, cx: &mut Context<'_>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.task = Some(cx.waker().clone());
        }
        state.drivers.retain_mut(|driver| driver.as_mut().poll(cx).is_pending());
    }
}

/// `http://host/path?query` as the request line of a direct connection writes it: `/path?query`.
fn origin_form(uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query =
        Some(uri.path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/")));
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// What the main listener does with each request.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        peer: SocketAddr,
        request: Request<Body>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// The threads that serve the main listener, each a single-threaded tokio runtime. A connection
/// is handed to the worker with the fewest open connections and stays there, so it and
/// everything its requests do run on one thread (as in nginx's worker processes) instead of
/// being woken across a work-stealing pool. Backends the requests use (the store, the rails, the
/// payment log) are shared with the rest of the process. The threads end when this is dropped,
/// so keep it until whatever the requests left behind (the payment log, settlements) is written.
pub struct Workers {
    threads: Vec<Worker>,
}

struct Worker {
    runtime: tokio::runtime::Handle,
    /// Its open connections.
    open: Arc<AtomicUsize>,
    /// Dropped to end the thread (and cancel what is left on its runtime).
    _exit: tokio::sync::oneshot::Sender<()>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut threads = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let (exit, exited) = tokio::sync::oneshot::channel::<()>();
            let (started, runtime) = std::sync::mpsc::channel();
            std::thread::Builder::new().name(format!("farebox-worker-{i}")).spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                let _ = started.send(Ok(runtime.handle().clone()));
                runtime.block_on(async move {
                    let _ = exited.await;
                });
            })?;
            let runtime = runtime.recv().map_err(|_| {
                std::io::Error::other("a worker thread ended before its runtime started")
            })??;
            threads.push(Worker { runtime, open: Arc::default(), _exit: exit });
        }
        Ok(Workers { threads })
    }

    /// Accepts connections on `listener` until `stopped` turns true, then asks each open
    /// connection to close after its request in flight and returns once all have.
    pub async fn serve(
        &self,
        listener: TcpListener,
        handler: impl Handler,
        mut stopped: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        // Every connection holds a sender; `recv` returns once all of them are gone.
        let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.wait_for(|stop| *stop) => break,
            };
            let (mut stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            crate::gateway::no_delay(&mut stream);
            // Handed over as a plain socket: the worker registers it with its own runtime.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "a connection could not be handed to a worker");
                    continue;
                }
            };
            let Some(worker) = self.threads.iter().min_by_key(|w| w.open.load(Ordering::Relaxed))
            else {
                continue;
            };
            let counted = Counted::new(&worker.open);
            let (handler, open, stopped) = (handler.clone(), open.clone(), stopped.clone());
            worker.runtime.spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve_connection(stream, peer, handler, stopped).await,
                    Err(e) => tracing::warn!(error = %e, "a worker could not take a connection"),
                }
                drop((counted, open));
            });
        }
        drop((listener, open));
        let _ = all_closed.recv().await;
        Ok(())
    }
}

/// One open connection of a worker, for as long as it lives (however its task ends).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: &Arc<AtomicUsize>) -> Counted {
        open.fetch_add(1, Ordering::Relaxed);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection: hyper's HTTP/1.1 server and the upstream connections of its requests,
/// polled together.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: impl Handler,
    mut stopped: watch::Receiver<bool>,
) {
    let upstreams = Arc::new(UpstreamConnections::default());
    let service = {
        let upstreams = upstreams.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let (handler, upstreams) = (handler.clone(), upstreams.clone());
            async move {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(upstreams);
                Ok::<_, Infallible>(handler.handle(peer, request).await)
            }
        })
    };
    // The timer enables hyper's header read timeout (30 s): a client that trickles its headers,
    // or sits idle between requests, is let go, and its upstream connections with it.
    let connection = server::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = pin!(connection);
    let mut stop = pin!(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let mut stopping = false;
    let served = poll_fn(|cx| {
        if !stopping && stop.as_mut().poll(cx).is_ready() {
            stopping = true;
            connection.as_mut().graceful_shutdown();
        }
        let served = connection.as_mut().poll(cx);
        upstreams.drive(cx);
        served
    })
    .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "client connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_connection_writes_the_path_and_query_only() {
        let uri: Uri = "http://upstream:8080/base/x?y=1".parse().unwrap();
        assert_eq!(origin_form(&uri), "/base/x?y=1");
        let bare: Uri = "http://upstream:8080".parse().unwrap();
        assert_eq!(origin_form(&bare), "/");
    }
}
