//! Loopback LND, Core Lightning (CLNRest) and LNbits servers, for tests (feature `testing`).
//!
//! Each server follows its project's documented REST API: the paths, headers, field names and
//! types, status codes and error shapes a real node uses (sources named in each module), so
//! that a backend tested against it speaks to the real node the same way. Only the network is
//! simulated: behind each server is a [`DevNode`](crate::DevNode), whose invoices are real
//! BOLT11 signed with its key and whose preimages are the ones that node generated, and a
//! payment through one server moves balance to any node on the same
//! [`DevNetwork`](crate::DevNetwork) (another loopback server, or a dev node behind an L402
//! server in the same process).
//!
//! [`Faults`] makes a server misbehave (slow, cut, garbled, huge, lying about preimages) so
//! callers can test that they fail closed. These servers are for tests and benchmarks: they
//! keep everything in memory and accept fixed credentials.
//!
//! * [`lnd::LoopbackLnd`]: lnd's REST gateway over HTTPS with a certificate like `tls.cert`.
//! * [`cln::LoopbackCln`]: CLNRest over HTTPS with a CA and server certificate like CLNRest's.
//! * [`lnbits::LoopbackLnbits`]: LNbits' wallet API over plain HTTP, several wallets.

pub mod cln;
pub mod lnbits;
pub mod lnd;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What a misbehaving server does instead of answering normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Answer {
    #[default]
    Normal,
    /// 200 with an HTML error page (a proxy in front of a crashed node).
    NotJson,
    /// 200 with 4 MiB of JSON whitespace.
    Huge,
    /// Runs the handler (so a payment does happen), sends the head, then breaks the connection.
    Cut,
}

/// Fault switches for one server. They apply to requests whose path is `only_path` (all
/// requests when `None`), except those whose path is in `except`.
#[derive(Debug, Clone, Default)]
pub struct FaultState {
    pub only_path: Option<String>,
    pub except: Vec<String>,
    /// Delay before running the handler.
    pub slow_before: Option<Duration>,
    /// Delay after the handler ran, before answering (the node acted, its answer is late).
    pub slow_after: Option<Duration>,
    pub answer: Answer,
}

#[derive(Default)]
pub struct Faults {
    state: Mutex<FaultState>,
    /// Paths of every request that reached the server (after TLS).
    seen: Mutex<Vec<String>>,
    /// The node lies: claims settlements and payments with a wrong preimage.
    pub lie: AtomicBool,
}

impl Faults {
    pub fn set(&self, state: FaultState) {
        *self.state.lock().unwrap() = state;
    }

    pub fn clear(&self) {
        self.set(FaultState::default());
    }

    pub fn lie(&self) -> bool {
        self.lie.load(Ordering::SeqCst)
    }

    /// How many requests reached the server.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How many requests went to a path starting with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|p| p.starts_with(prefix)).count()
    }

    /// How many requests went to exactly `path`.
    pub fn requests_exact(&self, path: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|p| *p == path).count()
    }

    fn for_path(&self, path: &str) -> FaultState {
        let state = self.state.lock().unwrap().clone();
        let targeted = state.only_path.as_deref().is_none_or(|only| only == path);
        if targeted && !state.except.iter().any(|e| e == path) {
            state
        } else {
            FaultState::default()
        }
    }
}

/// The middleware that applies [`Faults`]; every loopback server's router goes through it.
pub(crate) async fn apply_faults(
    State(faults): State<Arc<Faults>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    faults.seen.lock().unwrap().push(path.clone());
    let state = faults.for_path(&path);
    if let Some(delay) = state.slow_before {
        tokio::time::sleep(delay).await;
    }
    let response = next.run(request).await;
    if let Some(delay) = state.slow_after {
        tokio::time::sleep(delay).await;
    }
    match state.answer {
        Answer::Normal => response,
        Answer::NotJson => {
            ([("content-type", "text/html")], "<html><body>502 Bad Gateway</body></html>")
                .into_response()
        }
        Answer::Huge => {
            ([("content-type", "application/json")], vec![b' '; 4 << 20]).into_response()
        }
        Answer::Cut => {
            drop(response);
            let broken = futures_util::stream::once(async {
                Err::<Vec<u8>, _>(std::io::Error::other("node crashed mid-answer"))
            });
            Response::new(Body::from_stream(broken))
        }
    }
}

/// A running loopback server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on 127.0.0.1 (HTTPS with `tls`, else plain HTTP).
pub async fn serve(router: Router, tls: Option<&NodeTls>) -> Server {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let task = match tls {
        Some(tls) => {
            let listener = TlsListener { tcp, acceptor: TlsAcceptor::from(tls.server_config()) };
            tokio::spawn(async move { axum::serve(listener, router).await.unwrap() })
        }
        None => tokio::spawn(async move { axum::serve(tcp, router).await.unwrap() }),
    };
    Server { addr, task }
}

/// A port on 127.0.0.1 where nothing listens: connections are refused.
pub async fn dead_port() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tcp.local_addr().unwrap()
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            // A client that refuses the certificate aborts the handshake: wait for the next.
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(stream)).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A node's TLS identity: what it serves, and the PEM files an operator hands to farebox.
pub struct NodeTls {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    /// The certificate the server presents, PEM (LND's `tls.cert`, CLN's `server.pem`).
    pub cert_pem: String,
    /// The CA that signed it, PEM (CLN's `ca.pem`), when there is one.
    pub ca_pem: Option<String>,
}

impl NodeTls {
    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        Arc::new(config)
    }
}

/// A certificate made the way lnd makes `tls.cert` (lnd `cert/selfsigned.go`): self-signed,
/// ECDSA P-256, marked as a CA "so can sign self", key usages key encipherment, digital
/// signature and cert sign, server auth, naming localhost and 127.0.0.1.
pub fn lnd_tls() -> NodeTls {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::OrganizationName, "lnd autogenerated cert");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    NodeTls {
        chain: vec![cert.der().clone()],
        key: key.serialize_der(),
        cert_pem: cert.pem(),
        ca_pem: None,
    }
}

/// Certificates made the way CLNRest makes them (lightning `plugins/rest-plugin/src/certs.rs`):
/// a CA for "cln Root REST CA", "cln", "localhost", and a server certificate it signs for
/// "cln rest server", "cln", "localhost" plus the REST host's IP.
pub fn cln_tls() -> NodeTls {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let mut ca_params = CertificateParams::new(vec![
        "cln Root REST CA".to_string(),
        "cln".to_string(),
        "localhost".to_string(),
    ])
    .unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    ca_params.use_authority_key_identifier_extension = true;
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let mut server_params = CertificateParams::new(vec![
        "cln rest server".to_string(),
        "cln".to_string(),
        "localhost".to_string(),
    ])
    .unwrap();
    server_params.is_ca = IsCa::NoCa;
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    server_params.use_authority_key_identifier_extension = true;
    server_params.distinguished_name = DistinguishedName::new();
    server_params.distinguished_name.push(DnType::CommonName, "cln rest server");
    server_params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    NodeTls {
        chain: vec![server_cert.der().clone()],
        key: server_key.serialize_der(),
        cert_pem: server_cert.pem(),
        ca_pem: Some(ca_cert.pem()),
    }
}
