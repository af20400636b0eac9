//! The HTTP/JSON plumbing the node backends ([`crate::lnd`], [`crate::cln`], [`crate::lnbits`])
//! share: where a node is ([`Endpoint`]), which certificate to trust ([`TlsTrust`]), how long to
//! wait ([`Timeouts`]), credentials that never print ([`Secret`]), and, inside the crate, bounded
//! body and line readers and the mapping of transport failures onto [`LightningError`].
//!
//! Two rules hold for everything here:
//!
//! * **No secret leaves in text.** The URL (it may carry a key or a private host), the macaroon,
//!   the rune and the API key never appear in an error message or in `Debug` output; reqwest's
//!   own errors are not shown (they name the URL), only a fixed description of what failed.
//!   Messages a node sends back are cut to [`MAX_NODE_MESSAGE`] characters and have the
//!   backend's own secret blanked out before they reach an error, because callers put backend
//!   errors into HTTP problem bodies.
//! * **Every read is bounded** in size ([`MAX_BODY`], [`MAX_LINE`]) and in time ([`Timeouts`]).
//!   Whether a failure is `Unavailable` or `OutcomeUnknown` depends on whether a payment
//!   request may have reached the node: a refused connection sent nothing, anything later may
//!   have.

// `rest` on its own (without a node feature) compiles the plumbing for nothing.
#![cfg_attr(not(any(feature = "lnd", feature = "cln", feature = "lnbits")), allow(dead_code))]

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
#[cfg(feature = "lnd")]
use tokio::time::Instant;

#[cfg(doc)]
use crate::backend::LightningBackend;
use crate::backend::{CreatedInvoice, InvoiceState, LightningError, PaymentHash, PaymentOutcome};
use crate::bolt11::{MAX_DESCRIPTION_LEN, ParsedInvoice, parse_invoice};
use crate::preimage_matches;

/// Largest response body read from a node (a JSON answer), in bytes. A node's answers for one
/// invoice or one payment are a few kilobytes.
pub const MAX_BODY: usize = 1 << 20;
/// Largest single line of a streamed (newline-delimited JSON) answer, in bytes.
pub const MAX_LINE: usize = 1 << 20;
/// Longest node-supplied message kept in an error, in characters.
pub const MAX_NODE_MESSAGE: usize = 200;

/// Why a backend could not be configured. Displayed text never contains the URL or a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not an absolute `http://` or `https://` URL (or it carries a query or fragment).
    #[error("the node URL is not an absolute http(s) URL without query or fragment")]
    InvalidUrl,
    /// Plain `http://` to a host that is not loopback would send the credential in clear text.
    #[error("plain http is only allowed to a loopback address (use https, or allow_plain_http)")]
    PlainHttp,
    /// An `https://` URL needs this crate's `tls` feature.
    #[error("https needs farebox-lightning's `tls` feature")]
    TlsNotEnabled,
    /// A credential or certificate file could not be read.
    #[error("cannot read the {what} file {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A credential is empty or has bytes an HTTP header cannot carry.
    #[error("invalid {0}")]
    InvalidCredential(&'static str),
    /// A PEM file held no certificate, or one that cannot be parsed.
    #[error("no usable certificate in the PEM data")]
    NoCertificate,
    /// The HTTP client could not be built (a TLS configuration the provider refuses).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// How long to wait for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection (TCP and TLS).
    pub connect: Duration,
    /// One read or invoice creation, from sending the request to the end of the answer. A
    /// slower node is `Unavailable`.
    pub request: Duration,
    /// How long a payment may take. Passed to the node as its own payment timeout (LND
    /// `timeout_seconds`, CLN `retry_for`); farebox waits this long plus [`Self::request`] for
    /// the node's final answer, then looks the payment up; a payment still unresolved is
    /// `OutcomeUnknown`.
    pub payment: Duration,
}

impl Default for Timeouts {
    /// 5 s to connect, 15 s per read, 60 s per payment.
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(15),
            payment: Duration::from_secs(60),
        }
    }
}

/// Which server certificates to trust for an `https://` node.
#[cfg(feature = "tls")]
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsTrust {
    /// The platform's trust store (rustls-platform-verifier): a node behind a publicly trusted
    /// certificate, e.g. a hosted LNbits.
    #[default]
    PublicRoots,
    /// Only these CA certificates (DER) as roots, with the usual chain and hostname checks:
    /// Core Lightning's CLNRest `ca.pem`, reached at a name or IP its `server.pem` lists.
    Roots(Vec<Vec<u8>>),
    /// Exactly these certificates (DER) and nothing else: no CA roots, no chain, no hostname
    /// check, the server must present one of them and prove it holds its key. This is how LND's
    /// `tls.cert` is trusted: it is self-signed and marked as a CA, which ordinary (webpki)
    /// verification refuses as a server certificate, and nodes are often reached at an address
    /// the certificate does not name. Also fits CLNRest's `server.pem`.
    Pinned(Vec<Vec<u8>>),
}

#[cfg(feature = "tls")]
impl TlsTrust {
    /// [`TlsTrust::Pinned`] to the certificate(s) in a PEM file, e.g. LND's `tls.cert`.
    pub fn pinned_pem_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Ok(TlsTrust::Pinned(pem_certificates(&read_file(path.as_ref(), "certificate")?)?))
    }

    /// [`TlsTrust::Pinned`] to the certificate(s) in PEM text.
    pub fn pinned_pem(pem: &[u8]) -> Result<Self, ConfigError> {
        Ok(TlsTrust::Pinned(pem_certificates(pem)?))
    }

    /// [`TlsTrust::Roots`] from a PEM file, e.g. CLNRest's `ca.pem`.
    pub fn roots_pem_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Ok(TlsTrust::Roots(pem_certificates(&read_file(path.as_ref(), "certificate")?)?))
    }

    /// [`TlsTrust::Roots`] from PEM text.
    pub fn roots_pem(pem: &[u8]) -> Result<Self, ConfigError> {
        Ok(TlsTrust::Roots(pem_certificates(pem)?))
    }
}

#[cfg(feature = "tls")]
impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsTrust::PublicRoots => f.write_str("PublicRoots"),
            TlsTrust::Roots(certs) => write!(f, "Roots({} certificates)", certs.len()),
            TlsTrust::Pinned(certs) => write!(f, "Pinned({} certificates)", certs.len()),
        }
    }
}

#[cfg(feature = "tls")]
fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ConfigError::NoCertificate)?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificate);
    }
    Ok(certs)
}

pub(crate) fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Where a node's REST API is and how to reach it. `Debug` shows the scheme only.
#[derive(Clone)]
pub struct Endpoint {
    url: Url,
    #[cfg(feature = "tls")]
    tls: TlsTrust,
    timeouts: Timeouts,
    allow_plain_http: bool,
}

impl Endpoint {
    /// The node's base URL, e.g. `https://127.0.0.1:8080` (LND), `https://127.0.0.1:3010`
    /// (CLNRest) or `https://lnbits.example.com` (LNbits, possibly under a path prefix). Plain
    /// `http://` is accepted for loopback hosts only, unless [`Self::allow_plain_http`].
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let mut url = Url::parse(url).map_err(|_| ConfigError::InvalidUrl)?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(ConfigError::InvalidUrl);
        }
        // `join` replaces the last path segment unless the base ends with a slash.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Endpoint {
            url,
            #[cfg(feature = "tls")]
            tls: TlsTrust::default(),
            timeouts: Timeouts::default(),
            allow_plain_http: false,
        })
    }

    /// Which certificates to trust for `https://` (default: [`TlsTrust::PublicRoots`]).
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: TlsTrust) -> Self {
        self.tls = tls;
        self
    }

    /// How long to wait (default: [`Timeouts::default`]).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Allows plain `http://` to a host that is not loopback (e.g. a private container network).
    /// The credential then crosses that network in clear text.
    pub fn allow_plain_http(mut self) -> Self {
        self.allow_plain_http = true;
        self
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn is_loopback(&self) -> bool {
        let Some(host) = self.url.host_str() else { return false };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Endpoint");
        s.field("scheme", &self.url.scheme());
        #[cfg(feature = "tls")]
        s.field("tls", &self.tls);
        s.field("timeouts", &self.timeouts).finish_non_exhaustive()
    }
}

/// A credential (a Core Lightning rune, an LNbits API key) that never shows in `Debug` output
/// or in an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// `value`, which must be non-empty visible ASCII (what an HTTP header can carry).
    pub fn new(value: impl Into<String>) -> Result<Self, ConfigError> {
        let value = value.into();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::InvalidCredential("credential: empty or not visible ASCII"));
        }
        Ok(Secret(value))
    }

    /// Reads the credential from a file; surrounding whitespace (a trailing newline) is dropped.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let bytes = read_file(path.as_ref(), "credential")?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ConfigError::InvalidCredential("credential: not UTF-8"))?;
        Secret::new(text.trim())
    }

    #[cfg(any(feature = "cln", feature = "lnbits"))]
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A header value marked sensitive, so that reqwest and hyper never log it.
pub(crate) fn sensitive_header(value: &str) -> Result<HeaderValue, ConfigError> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| ConfigError::InvalidCredential("credential: not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Why an HTTP exchange with a node failed, without the URL or anything the node said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Nothing reached the node: the connection or the TLS handshake failed.
    NotSent(&'static str),
    /// No (complete) answer in time. The request may have reached the node.
    Timeout(Duration),
    /// The connection broke after the request was sent.
    Broken,
    /// The answer (or one line of it) is over the size bound.
    TooLarge,
}

impl Transport {
    /// Whether the node may have acted on the request.
    pub(crate) fn may_have_reached_node(&self) -> bool {
        !matches!(self, Transport::NotSent(_))
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Transport::NotSent(why) => (*why).to_string(),
            Transport::Timeout(limit) => {
                format!("no answer within {} ms", limit.as_millis())
            }
            Transport::Broken => "the connection broke before the answer was complete".into(),
            Transport::TooLarge => "the answer is over the size limit".into(),
        }
    }

    /// The error for a read or an invoice creation: the node is `Unavailable`, or, for an
    /// oversized answer, answered something unusable.
    pub(crate) fn read_error(&self) -> LightningError {
        match self {
            Transport::TooLarge => LightningError::InvalidResponse(self.describe()),
            _ => LightningError::Unavailable(self.describe()),
        }
    }

    /// The error for a payment request: nothing sent is `Unavailable` (safe to retry); anything
    /// else may have moved money and is `OutcomeUnknown`.
    pub(crate) fn payment_error(&self) -> LightningError {
        if self.may_have_reached_node() {
            LightningError::OutcomeUnknown(self.describe())
        } else {
            LightningError::Unavailable(self.describe())
        }
    }
}

/// Classifies a reqwest error without ever displaying it (its text names the URL).
fn classify(error: &reqwest::Error, limit: Duration) -> Transport {
    if error.is_timeout() {
        Transport::Timeout(limit)
    } else if error.is_connect() || error.is_builder() {
        Transport::NotSent(connect_failure(error))
    } else {
        Transport::Broken
    }
}

fn connect_failure(error: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut next = Some(error);
    while let Some(e) = next {
        #[cfg(feature = "tls")]
        if tls_error(e).is_some() {
            return "TLS handshake refused: the node's certificate is not the trusted one";
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused",
                std::io::ErrorKind::TimedOut => return "connecting timed out",
                _ => {}
            }
        }
        next = e.source();
    }
    "cannot connect to the node"
}

/// A rustls error in `e`, looking inside `io::Error` (whose `source` skips its payload).
#[cfg(feature = "tls")]
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

/// A complete, bounded answer.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
}

/// The HTTP client of one backend: its base URL, credential header and timeouts.
pub(crate) struct RestClient {
    http: reqwest::Client,
    base: Url,
    auth: (HeaderName, HeaderValue),
    /// Strings blanked out of node messages (the credential in the forms the node saw it).
    redact: Vec<String>,
    pub(crate) timeouts: Timeouts,
}

impl RestClient {
    pub(crate) fn new(
        endpoint: &Endpoint,
        auth: (HeaderName, HeaderValue),
        redact: Vec<String>,
    ) -> Result<Self, ConfigError> {
        let https = endpoint.url.scheme() == "https";
        if !https && !endpoint.allow_plain_http && !endpoint.is_loopback() {
            return Err(ConfigError::PlainHttp);
        }
        let builder = reqwest::Client::builder()
            .connect_timeout(endpoint.timeouts.connect)
            // A redirect would carry the credential somewhere the operator did not configure.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("farebox-lightning/", env!("CARGO_PKG_VERSION")));
        let builder = if https { with_tls(builder, endpoint)? } else { builder };
        let http = builder.build().map_err(|e| {
            ConfigError::Client(
                if e.is_builder() { "invalid TLS settings" } else { "unknown" }.into(),
            )
        })?;
        Ok(RestClient {
            http,
            base: endpoint.url.clone(),
            auth,
            redact,
            timeouts: endpoint.timeouts,
        })
    }

    /// A request to `path` (relative to the base URL, no leading slash) with the credential.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        // The base ends with '/'; `path` is built from constants, hex and base64url, so the
        // concatenation is a valid URL (if it were not, reqwest fails before connecting).
        let url = format!("{}{path}", self.base);
        self.http.request(method, url).header(self.auth.0.clone(), self.auth.1.clone())
    }

    /// A POST of `body` as JSON.
    pub(crate) fn post_json(&self, path: &str, body: &impl serde::Serialize) -> RequestBuilder {
        let body = serde_json::to_vec(body).unwrap_or_default();
        self.request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
    }

    /// Sends `request` and reads the whole answer (at most [`MAX_BODY`] bytes) within `limit`.
    pub(crate) async fn call(
        &self,
        request: RequestBuilder,
        limit: Duration,
    ) -> Result<Answer, Transport> {
        let exchange = async {
            let mut response = request.send().await.map_err(|e| classify(&e, limit))?;
            let body = read_body(&mut response, MAX_BODY, limit).await?;
            Ok(Answer { status: response.status(), body })
        };
        tokio::time::timeout(limit, exchange).await.unwrap_or(Err(Transport::Timeout(limit)))
    }

    /// [`Self::call`] for a read or an invoice creation, within one request timeout; transport
    /// failures already mapped with [`Transport::read_error`].
    pub(crate) async fn read(&self, request: RequestBuilder) -> Result<Answer, LightningError> {
        self.call(request, self.timeouts.request).await.map_err(|t| t.read_error())
    }

    /// Sends `request` and returns as soon as the answer's head arrives, before `deadline`
    /// (for streamed answers: only lnd streams).
    #[cfg(feature = "lnd")]
    pub(crate) async fn open(
        &self,
        request: RequestBuilder,
        deadline: Instant,
    ) -> Result<Response, Transport> {
        let limit = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_) => Err(Transport::Timeout(limit)),
            Ok(Err(e)) => Err(classify(&e, limit)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// The body of an error answer, at most [`MAX_BODY`] bytes; empty if it cannot be read in
    /// one request timeout.
    #[cfg(feature = "lnd")]
    pub(crate) async fn error_body(&self, mut response: Response) -> Vec<u8> {
        let limit = self.timeouts.request;
        tokio::time::timeout(limit, read_body(&mut response, MAX_BODY, limit))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// A message the node sent, fit for an error: this backend's credential blanked out,
    /// control characters replaced, at most [`MAX_NODE_MESSAGE`] characters.
    pub(crate) fn node_message(&self, raw: &str) -> String {
        sanitize(raw, &self.redact)
    }
}

/// `builder` trusting what `endpoint` says for `https://`.
#[cfg(feature = "tls")]
fn with_tls(
    builder: reqwest::ClientBuilder,
    endpoint: &Endpoint,
) -> Result<reqwest::ClientBuilder, ConfigError> {
    Ok(match &endpoint.tls {
        TlsTrust::PublicRoots => builder.tls_backend_rustls(),
        TlsTrust::Roots(certs) => {
            let roots = certs
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ConfigError::NoCertificate)?;
            builder.tls_backend_rustls().tls_certs_only(roots)
        }
        TlsTrust::Pinned(certs) => builder.tls_backend_preconfigured(pinned::client_config(certs)?),
    })
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    _builder: reqwest::ClientBuilder,
    _endpoint: &Endpoint,
) -> Result<reqwest::ClientBuilder, ConfigError> {
    Err(ConfigError::TlsNotEnabled)
}

impl fmt::Debug for RestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestClient")
            .field("scheme", &self.base.scheme())
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// `raw` with each of `secrets` replaced, control characters turned into spaces and cut to
/// [`MAX_NODE_MESSAGE`] characters.
pub(crate) fn sanitize(raw: &str, secrets: &[String]) -> String {
    let mut text = raw.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret.as_str(), "[redacted]");
    }
    let mut out: String =
        text.chars().take(MAX_NODE_MESSAGE).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().count() > MAX_NODE_MESSAGE {
        out.push('…');
    }
    out
}

/// Reads a whole body of at most `max` bytes.
async fn read_body(
    response: &mut Response,
    max: usize,
    limit: Duration,
) -> Result<Vec<u8>, Transport> {
    if response.content_length().is_some_and(|len| len > max as u64) {
        return Err(Transport::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e, limit))? {
        if body.len() + chunk.len() > max {
            return Err(Transport::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The lines of a streamed answer (lnd's grpc-gateway writes one JSON object per line), each at
/// most [`MAX_LINE`] bytes. Blank lines are skipped.
#[cfg(feature = "lnd")]
pub(crate) struct Lines {
    response: Response,
    buffer: Vec<u8>,
    done: bool,
}

#[cfg(feature = "lnd")]
impl Lines {
    pub(crate) fn new(response: Response) -> Self {
        Lines { response, buffer: Vec::new(), done: false }
    }

    /// The next line, `None` at the end of the stream; an error if `deadline` passes first.
    pub(crate) async fn next(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, Transport> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.buffer.len() > MAX_LINE {
                return Err(Transport::TooLarge);
            }
            if self.done {
                let rest = std::mem::take(&mut self.buffer);
                return Ok((!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest));
            }
            let limit = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return Err(Transport::Timeout(limit)),
                Ok(Err(e)) => return Err(classify(&e, limit)),
                Ok(Ok(None)) => self.done = true,
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
            }
        }
    }
}

/// Decodes a JSON answer. The error says where the shape broke but never echoes content.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Data => "unexpected JSON shape",
            serde_json::error::Category::Eof => "truncated JSON",
            _ => "not JSON",
        };
        format!("{kind} at line {} column {}", e.line(), e.column())
    })
}

/// Refuses what no node should be asked for: a zero amount (`Some(0)`; `None` is an
/// amountless invoice), a memo over BOLT11's 639-byte description, a zero expiry.
pub(crate) fn check_invoice_request(
    amount_msat: Option<u64>,
    memo: &str,
    expiry: Duration,
) -> Result<(), LightningError> {
    if amount_msat == Some(0) {
        return Err(LightningError::InvalidRequest("amount must be greater than zero".into()));
    }
    if memo.len() > MAX_DESCRIPTION_LEN {
        return Err(LightningError::InvalidRequest(format!(
            "memo is {} bytes, over the {MAX_DESCRIPTION_LEN}-byte limit",
            memo.len()
        )));
    }
    if expiry.is_zero() {
        return Err(LightningError::InvalidRequest("expiry must be greater than zero".into()));
    }
    Ok(())
}

/// The invoice a node says it created, checked: a signed BOLT11 string for the payment hash the
/// node named (when it named one) and for exactly the amount asked (`None`: amountless). A node
/// that answers otherwise is not trusted with the challenge.
pub(crate) fn check_created_invoice(
    bolt11: String,
    payment_hash: Option<PaymentHash>,
    amount_msat: Option<u64>,
) -> Result<CreatedInvoice, LightningError> {
    let parsed = parse_invoice(&bolt11).map_err(|e| {
        LightningError::InvalidResponse(format!("the node returned an unusable invoice: {e}"))
    })?;
    if payment_hash.is_some_and(|hash| hash != parsed.payment_hash) {
        return Err(LightningError::InvalidResponse(
            "the node's invoice is for another payment hash than it reported".into(),
        ));
    }
    if parsed.amount_msat != amount_msat {
        return Err(LightningError::InvalidResponse(
            "the node's invoice is for another amount than asked".into(),
        ));
    }
    Ok(CreatedInvoice { bolt11, payment_hash: parsed.payment_hash })
}

/// Checks `bolt11` before any payment is sent and returns it parsed, with the amount to name
/// explicitly (`Some` only for an amountless invoice paid `amount_msat`).
///
/// * `amount_msat: None` ([`LightningBackend::pay`]): the invoice must name an amount.
/// * `Some(amount)` ([`LightningBackend::pay_amount`]): not zero, and an invoice that names an
///   amount must name exactly this one.
/// * An expired invoice (by this machine's clock) is refused: no node would pay it.
pub(crate) fn check_payable(
    bolt11: &str,
    amount_msat: Option<u64>,
) -> Result<(ParsedInvoice, Option<u64>), LightningError> {
    if amount_msat == Some(0) {
        return Err(LightningError::InvalidRequest("amount must be greater than zero".into()));
    }
    let invoice = parse_invoice(bolt11)?;
    if invoice.is_expired(std::time::SystemTime::now()) {
        return Err(LightningError::InvalidInvoice("invoice has expired".into()));
    }
    let explicit = match (invoice.amount_msat, amount_msat) {
        (Some(_), None) => None,
        (None, None) => {
            return Err(LightningError::InvalidInvoice(
                "amountless invoices are refused (pay them with pay_amount)".into(),
            ));
        }
        (Some(asked), Some(amount)) if asked == amount => None,
        (Some(asked), Some(amount)) => {
            return Err(LightningError::InvalidRequest(format!(
                "the invoice asks for {asked} msat, not {amount} msat"
            )));
        }
        (None, Some(amount)) => Some(amount),
    };
    Ok((invoice, explicit))
}

/// A payment the node reports as done, accepted only with its proof: a preimage (hex) that
/// hashes to the payment hash. Without it money has most likely left but cannot be used, which
/// is [`LightningError::OutcomeUnknown`].
pub(crate) fn proven_payment(
    preimage_hex: &str,
    payment_hash: &PaymentHash,
    amount_msat: u64,
    fee_msat: u64,
) -> Result<PaymentOutcome, LightningError> {
    match hex32(preimage_hex).filter(|p| preimage_matches(p, payment_hash)) {
        Some(preimage) => {
            Ok(PaymentOutcome { preimage, payment_hash: *payment_hash, amount_msat, fee_msat })
        }
        None => Err(LightningError::OutcomeUnknown(
            "the node reported success with a preimage that does not match the payment hash".into(),
        )),
    }
}

/// An invoice the node reports as paid, accepted only with a preimage that hashes to its
/// payment hash; otherwise the answer is [`LightningError::InvalidResponse`], never `Settled`.
pub(crate) fn proven_settlement(
    preimage: Option<[u8; 32]>,
    payment_hash: &PaymentHash,
    amount_msat: u64,
) -> Result<InvoiceState, LightningError> {
    match preimage.filter(|p| preimage_matches(p, payment_hash)) {
        Some(preimage) => Ok(InvoiceState::Settled { preimage, amount_msat }),
        None => Err(LightningError::InvalidResponse(
            "a paid invoice whose preimage does not hash to its payment hash".into(),
        )),
    }
}

/// What became of a payment request that did not end with the node's verdict.
pub(crate) enum Unresolved {
    /// The node answered with an error before reporting any payment: most likely nothing
    /// started.
    Refused(String),
    /// The answer was lost: timeout, broken connection, unreadable or missing verdict.
    Lost(String),
}

/// What a node's payment lookup said.
pub(crate) enum Lookup {
    /// Succeeded (with proof) or failed.
    Final(Result<PaymentOutcome, LightningError>),
    /// Still in flight, or no verdict before the lookup's time ran out.
    Pending,
    /// The node has no such payment.
    NotFound,
}

/// The one rule for a payment without a verdict, after looking it up (never sending it
/// again): the lookup's verdict if it has one; "failed" only if the node refused the request
/// *and* has no record of the payment; otherwise [`LightningError::OutcomeUnknown`], because
/// money may have left.
pub(crate) fn settle_unresolved(
    why: Unresolved,
    lookup: Result<Lookup, LightningError>,
) -> Result<PaymentOutcome, LightningError> {
    let (refused, message) = match why {
        Unresolved::Refused(m) => (true, m),
        Unresolved::Lost(m) => (false, m),
    };
    match lookup {
        Ok(Lookup::Final(result)) => result,
        Ok(Lookup::NotFound) if refused => Err(LightningError::PaymentFailed(message)),
        Ok(Lookup::NotFound) => Err(LightningError::OutcomeUnknown(format!(
            "{message}; the node has no record of the payment yet"
        ))),
        Ok(Lookup::Pending) => Err(LightningError::OutcomeUnknown(format!(
            "{message}; the payment is still in flight"
        ))),
        Err(e) => Err(LightningError::OutcomeUnknown(format!(
            "{message}; looking the payment up failed: {e}"
        ))),
    }
}

/// Decodes a hex string of exactly 32 bytes (a payment hash or preimage).
pub(crate) fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Seconds of `duration`, rounded up (an expiry is never shorter than asked).
pub(crate) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs().saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// Whether the clock says `deadline` has passed (a clock before 1970 says it has not, so an
/// invoice stays open: not paid, and nothing is served for it).
#[cfg(any(feature = "lnd", feature = "cln"))]
pub(crate) fn passed(deadline: u64) -> bool {
    farebox_core::time::unix_now().is_ok_and(|now| now > deadline)
}

/// Integers that nodes write either as JSON numbers or as strings (LND renders int64 and
/// uint64 as strings; CLN's msat fields were `"1000msat"` strings before v23).
#[cfg(any(feature = "lnd", feature = "cln", test))]
pub(crate) mod lenient_u64 {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<'a> {
        Number(u64),
        Text(&'a str),
        Owned(String),
    }

    fn parse(text: &str) -> Option<u64> {
        text.strip_suffix("msat").unwrap_or(text).parse().ok()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let parsed = match Raw::deserialize(d)? {
            Raw::Number(n) => Some(n),
            Raw::Text(text) => parse(text),
            Raw::Owned(text) => parse(&text),
        };
        parsed.ok_or_else(|| serde::de::Error::custom("expected an unsigned integer"))
    }

    /// The same for an optional field.
    pub(crate) mod option {
        use serde::{Deserialize, Deserializer};

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<u64>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] u64);
            Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(n)| n))
        }
    }
}

/// Exact-certificate pinning for rustls (see [`TlsTrust::Pinned`]).
#[cfg(feature = "tls")]
mod pinned {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{
        WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
    };
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

    use super::ConfigError;

    /// Accepts a server whose end-entity certificate is byte-for-byte one of `pinned`; the
    /// handshake signature is still verified against that certificate's key, so only the
    /// holder of the pinned key can complete it.
    #[derive(Debug)]
    struct PinnedVerifier {
        pinned: Vec<Vec<u8>>,
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl ServerCertVerifier for PinnedVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if self.pinned.iter().any(|cert| cert.as_slice() == end_entity.as_ref()) {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }

    pub(super) fn client_config(pinned: &[Vec<u8>]) -> Result<rustls::ClientConfig, ConfigError> {
        if pinned.is_empty() {
            return Err(ConfigError::NoCertificate);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = PinnedVerifier {
            pinned: pinned.to_vec(),
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| {
                ConfigError::Client("the TLS provider refuses the default versions".into())
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_messages_lose_secrets_and_control_characters_and_are_bounded() {
        let secrets = vec!["0201036c6e64".to_string()];
        let text = sanitize("bad macaroon 0201036c6e64\n\u{1b}[31m", &secrets);
        assert!(!text.contains("0201036c6e64"));
        assert!(!text.chars().any(char::is_control));
        let long = sanitize(&"x".repeat(10_000), &[]);
        assert!(long.chars().count() <= MAX_NODE_MESSAGE + 1);
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for url in ["http://127.0.0.1:8080", "http://localhost:5000/lnbits", "http://[::1]:3010"] {
            let endpoint = Endpoint::new(url).unwrap();
            assert!(endpoint.is_loopback(), "{url}");
            let auth = (HeaderName::from_static("x-api-key"), HeaderValue::from_static("k"));
            RestClient::new(&endpoint, auth, vec![]).unwrap();
        }
        let endpoint = Endpoint::new("http://lnbits.example.com").unwrap();
        let auth = (HeaderName::from_static("x-api-key"), HeaderValue::from_static("k"));
        assert!(matches!(
            RestClient::new(&endpoint, auth.clone(), vec![]),
            Err(ConfigError::PlainHttp)
        ));
        RestClient::new(&endpoint.allow_plain_http(), auth, vec![]).unwrap();
    }

    #[test]
    fn urls_with_queries_or_other_schemes_are_refused_and_never_printed() {
        for url in ["ftp://host", "https://host/?api-key=k", "https://host/#x", "/relative", ""] {
            assert!(matches!(Endpoint::new(url), Err(ConfigError::InvalidUrl)), "{url}");
        }
        let endpoint = Endpoint::new("https://user:pw@node.internal:8080/prefix").unwrap();
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("node.internal") && !shown.contains("pw"), "{shown}");
        assert_eq!(endpoint.url.as_str(), "https://user:pw@node.internal:8080/prefix/");
    }

    #[test]
    fn secrets_do_not_print_and_must_be_header_safe() {
        let secret = Secret::new("rune-AAAA").unwrap();
        assert!(!format!("{secret:?}").contains("AAAA"));
        assert!(Secret::new("").is_err());
        assert!(Secret::new("two words").is_err());
        assert!(Secret::new("line\nbreak").is_err());
    }

    #[test]
    fn lenient_integers() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(with = "lenient_u64")]
            a: u64,
            #[serde(default, with = "lenient_u64::option")]
            b: Option<u64>,
        }
        let t: T = decode(br#"{"a": "21000", "b": 5}"#).unwrap();
        assert_eq!((t.a, t.b), (21_000, Some(5)));
        let t: T = decode(br#"{"a": "1000msat"}"#).unwrap();
        assert_eq!((t.a, t.b), (1_000, None));
        assert!(decode::<T>(br#"{"a": "-1"}"#).is_err());
        assert!(decode::<T>(br#"{"a": 1.5}"#).is_err());
    }
}
