//! LND through its REST API (the grpc-gateway in front of lnd's gRPC services).
//!
//! | what | call |
//! |---|---|
//! | create an invoice | `POST /v1/invoices` `{value_msat, memo, expiry}` → `{r_hash (base64), payment_request, add_index, payment_addr}` |
//! | look one up | `GET /v1/invoice/{r_hash_str}` (hex) → `Invoice` (`state` `OPEN`, `SETTLED`, `CANCELED`, `ACCEPTED`) |
//! | wait for settlement | `GET /v2/invoices/subscribe/{r_hash}` (base64url): one `{"result": Invoice}` per line, the current state first |
//! | pay | `POST /v2/router/send` `{payment_request, fee_limit_msat, timeout_seconds, no_inflight_updates}`: a stream of `{"result": Payment}` |
//! | look a payment up | `GET /v2/router/track/{payment_hash}` (base64url) `?no_inflight_updates=true` |
//!
//! The wire facts that matter (lnd's `lightning.swagger.json`, `router.swagger.json`,
//! `invoices.swagger.json`): int64 and uint64 fields are JSON *strings*; `bytes` fields are
//! standard base64 in bodies and URL-safe base64 in paths; errors are `{"code", "message",
//! "details"}` with a gRPC status code, or `{"error": {…}}` inside a stream. The macaroon goes
//! hex-encoded in `Grpc-Metadata-macaroon`. lnd refuses a bad macaroon with a *plain* error (gRPC
//! code 2, HTTP 500: "verification failed", "permission denied", "expected 1 macaroon"), so auth
//! refusals are recognised by their text as well as by code.
//!
//! TLS: lnd serves a self-signed `tls.cert` marked as a CA; trust it with
//! [`TlsTrust::pinned_pem_file`](crate::rest::TlsTrust::pinned_pem_file).
//!
//! Payments: farebox asks lnd for no in-flight updates, so the stream carries the final
//! `SUCCEEDED` or `FAILED`. If it breaks, times out or ends without one, the payment is looked
//! up with `track` (never sent again) and stays [`LightningError::OutcomeUnknown`] while lnd
//! cannot say. A `SUCCEEDED` whose preimage does not hash to the payment hash is not a success.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use reqwest::header::HeaderName;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::InvoiceRequest;
use crate::backend::{
    CreatedInvoice, InvoiceState, LightningBackend, LightningError, PaymentHash, PaymentOutcome,
    poll_for_settlement,
};
use crate::rest::{
    self, ConfigError, Endpoint, Lines, Lookup, RestClient, Transport, Unresolved, ceil_secs,
    check_created_invoice, check_invoice_request, check_payable, decode, lenient_u64,
    proven_payment, proven_settlement, sensitive_header, settle_unresolved,
};

/// An lnd macaroon: `invoice.macaroon` to receive, `admin.macaroon` (or one baked with
/// `offchain:write`) to pay as well. Never printed.
#[derive(Clone)]
pub struct Macaroon(Vec<u8>);

impl Macaroon {
    /// The binary macaroon (as lnd writes it to disk).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(ConfigError::InvalidCredential("macaroon: empty"));
        }
        Ok(Macaroon(bytes))
    }

    /// Reads a macaroon file: binary, as lnd writes `admin.macaroon`, or its hex text (as
    /// hosted nodes hand it out). A binary macaroon starts with a version byte that is never an
    /// ASCII hex digit, so the two cannot be confused.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let bytes = rest::read_file(path.as_ref(), "macaroon")?;
        let text = bytes.trim_ascii();
        if !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit) {
            let decoded = hex::decode(text)
                .map_err(|_| ConfigError::InvalidCredential("macaroon: odd hex"))?;
            return Macaroon::from_bytes(decoded);
        }
        Macaroon::from_bytes(bytes)
    }
}

impl fmt::Debug for Macaroon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Macaroon(..)")
    }
}

/// A [`LightningBackend`] on an lnd node's REST API.
///
/// ```no_run
/// # fn main() -> Result<(), farebox_lightning::rest::ConfigError> {
/// use farebox_lightning::lnd::{LndBackend, Macaroon};
/// use farebox_lightning::rest::{Endpoint, TlsTrust};
///
/// let endpoint = Endpoint::new("https://127.0.0.1:8080")?
///     .with_tls(TlsTrust::pinned_pem_file("/home/lnd/.lnd/tls.cert")?);
/// let macaroon = Macaroon::from_file("/home/lnd/.lnd/data/chain/bitcoin/mainnet/invoice.macaroon")?;
/// let lnd = LndBackend::new(endpoint, macaroon)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LndBackend {
    rest: RestClient,
}

impl LndBackend {
    /// A backend for the node at `endpoint`, authenticating with `macaroon`.
    pub fn new(endpoint: Endpoint, macaroon: Macaroon) -> Result<Self, ConfigError> {
        let macaroon_hex = hex::encode(&macaroon.0);
        let header = sensitive_header(&macaroon_hex)?;
        let name = HeaderName::from_static("grpc-metadata-macaroon");
        Ok(LndBackend { rest: RestClient::new(&endpoint, (name, header), vec![macaroon_hex])? })
    }

    async fn add_invoice(
        &self,
        amount_msat: Option<u64>,
        memo: String,
        expiry: Duration,
    ) -> Result<CreatedInvoice, LightningError> {
        check_invoice_request(amount_msat, &memo, expiry)?;
        let body = AddInvoice {
            memo: &memo,
            // Zero asks lnd for an amountless invoice.
            value_msat: amount_msat.unwrap_or(0).to_string(),
            expiry: ceil_secs(expiry).to_string(),
        };
        let request = self.rest.post_json("v1/invoices", &body);
        let answer = self.rest.read(request).await?;
        if !answer.status.is_success() {
            return Err(self.node_error(answer.status, &answer.body).read_error());
        }
        let added: AddInvoiceResponse =
            decode(&answer.body).map_err(LightningError::InvalidResponse)?;
        let r_hash = base64_32(&added.r_hash).ok_or_else(|| {
            LightningError::InvalidResponse("r_hash is not 32 base64 bytes".into())
        })?;
        check_created_invoice(added.payment_request, Some(r_hash), amount_msat)
    }

    /// Looks up a payment lnd made (`track`, waiting at most one request timeout for a final
    /// status).
    async fn track(&self, payment_hash: &PaymentHash) -> Result<Lookup, LightningError> {
        let deadline = Instant::now() + self.rest.timeouts.request;
        let path =
            format!("v2/router/track/{}?no_inflight_updates=true", URL_SAFE.encode(payment_hash));
        let request = self.rest.request(Method::GET, &path);
        let response = self.rest.open(request, deadline).await.map_err(|t| t.read_error())?;
        if !response.status().is_success() {
            let status = response.status();
            let body = self.rest.error_body(response).await;
            let error = self.node_error(status, &body);
            return match error.kind() {
                Kind::NotFound => Ok(Lookup::NotFound),
                _ => Err(error.read_error()),
            };
        }
        let mut lines = Lines::new(response);
        loop {
            match lines.next(deadline).await {
                Ok(Some(line)) => match decode::<StreamItem<Payment>>(&line) {
                    Ok(StreamItem { result: Some(payment), .. }) => {
                        if let Some(done) = payment_result(&payment, payment_hash) {
                            return Ok(Lookup::Final(done));
                        }
                    }
                    Ok(StreamItem { error: Some(status), .. }) => {
                        let error = self.stream_error(status);
                        return match error.kind() {
                            Kind::NotFound => Ok(Lookup::NotFound),
                            _ => Err(error.read_error()),
                        };
                    }
                    _ => {
                        return Err(LightningError::InvalidResponse(
                            "unreadable track line".into(),
                        ));
                    }
                },
                // In flight when the time ran out, or lnd closed the stream without a verdict.
                Ok(None) | Err(Transport::Timeout(_)) => return Ok(Lookup::Pending),
                Err(t) => return Err(t.read_error()),
            }
        }
    }

    /// Settles what a broken or refused send left open: asks lnd what became of the payment.
    async fn resolve(
        &self,
        payment_hash: &PaymentHash,
        why: Unresolved,
    ) -> Result<PaymentOutcome, LightningError> {
        settle_unresolved(why, self.track(payment_hash).await)
    }

    async fn send(
        &self,
        bolt11: &str,
        payment_hash: PaymentHash,
        amt_msat: Option<u64>,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        let timeouts = self.rest.timeouts;
        let body = SendPayment {
            payment_request: bolt11,
            amt_msat: amt_msat.map(|a| a.to_string()),
            fee_limit_msat: max_fee_msat.to_string(),
            timeout_seconds: i32::try_from(ceil_secs(timeouts.payment).max(1)).unwrap_or(i32::MAX),
            no_inflight_updates: true,
        };
        // lnd gives up on its own after `timeout_seconds`; allow one request timeout for the
        // verdict to arrive.
        let deadline = Instant::now() + timeouts.payment + timeouts.request;
        let response =
            match self.rest.open(self.rest.post_json("v2/router/send", &body), deadline).await {
                Ok(response) => response,
                Err(t) if !t.may_have_reached_node() => return Err(t.payment_error()),
                Err(t) => return self.resolve(&payment_hash, Unresolved::Lost(t.describe())).await,
            };
        if !response.status().is_success() {
            let status = response.status();
            let body = self.rest.error_body(response).await;
            let error = self.node_error(status, &body);
            return match error.kind() {
                Kind::Auth => Err(LightningError::AuthRefused(error.message)),
                // Refused before anything started (wallet locked, still starting).
                Kind::Unavailable => Err(LightningError::Unavailable(error.message)),
                _ => self.resolve(&payment_hash, Unresolved::Refused(error.message)).await,
            };
        }
        let mut lines = Lines::new(response);
        let mut seen_status = false;
        loop {
            let why = match lines.next(deadline).await {
                Ok(Some(line)) => match decode::<StreamItem<Payment>>(&line) {
                    Ok(StreamItem { result: Some(payment), .. }) => {
                        if let Some(done) = payment_result(&payment, &payment_hash) {
                            return done;
                        }
                        seen_status = true;
                        continue;
                    }
                    Ok(StreamItem { error: Some(status), .. }) => {
                        let error = self.stream_error(status);
                        match error.kind() {
                            Kind::Auth => return Err(LightningError::AuthRefused(error.message)),
                            _ if !seen_status => Unresolved::Refused(error.message),
                            _ => Unresolved::Lost(error.message),
                        }
                    }
                    Ok(_) => Unresolved::Lost("a stream line with neither result nor error".into()),
                    Err(e) => Unresolved::Lost(format!("an unreadable stream line ({e})")),
                },
                Ok(None) => {
                    Unresolved::Lost("the payment stream ended without a final status".into())
                }
                Err(t) => Unresolved::Lost(t.describe()),
            };
            return self.resolve(&payment_hash, why).await;
        }
    }

    /// The invoice state, from an lnd `Invoice` claimed to be for `payment_hash`.
    fn state_of(
        invoice: &Invoice,
        payment_hash: &PaymentHash,
    ) -> Result<InvoiceState, LightningError> {
        if base64_32(&invoice.r_hash).as_ref() != Some(payment_hash) {
            return Err(LightningError::InvalidResponse(
                "the node answered for another invoice".into(),
            ));
        }
        match invoice.state.as_str() {
            "SETTLED" => proven_settlement(
                base64_32(&invoice.r_preimage),
                payment_hash,
                invoice.amt_paid_msat.unwrap_or(0),
            ),
            "CANCELED" => Ok(InvoiceState::Expired),
            // Accepted: a hold invoice's HTLCs are locked in but not settled.
            "ACCEPTED" => Ok(InvoiceState::Open),
            // lnd cancels expired invoices in the background; until then, judge by the clock.
            "OPEN" => {
                let expires_at =
                    invoice.creation_date.unwrap_or(0).saturating_add(invoice.expiry.unwrap_or(0));
                if invoice.creation_date.is_some() && rest::passed(expires_at) {
                    Ok(InvoiceState::Expired)
                } else {
                    Ok(InvoiceState::Open)
                }
            }
            _ => Err(LightningError::InvalidResponse("unknown invoice state".into())),
        }
    }

    fn node_error(&self, http: StatusCode, body: &[u8]) -> NodeError {
        let status = decode::<ErrorBody>(body).ok().and_then(|b| match b {
            ErrorBody { error: Some(status), .. } => Some(status),
            ErrorBody { code: Some(code), message, .. } => {
                Some(RpcStatus { code, message: message.unwrap_or_default() })
            }
            _ => None,
        });
        match status {
            Some(status) => NodeError {
                http,
                code: Some(status.code),
                message: self.rest.node_message(&status.message),
            },
            None => NodeError { http, code: None, message: format!("HTTP {}", http.as_u16()) },
        }
    }

    fn stream_error(&self, status: RpcStatus) -> NodeError {
        NodeError {
            http: StatusCode::OK,
            code: Some(status.code),
            message: self.rest.node_message(&status.message),
        }
    }
}

#[async_trait]
impl LightningBackend for LndBackend {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        self.add_invoice(Some(request.amount_msat), request.memo, request.expiry).await
    }

    async fn invoice_state(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<InvoiceState, LightningError> {
        let path = format!("v1/invoice/{}", hex::encode(payment_hash));
        let request = self.rest.request(Method::GET, &path);
        let answer = self.rest.read(request).await?;
        if !answer.status.is_success() {
            let error = self.node_error(answer.status, &answer.body);
            return match error.kind() {
                Kind::NotFound => Ok(InvoiceState::Unknown),
                _ => Err(error.read_error()),
            };
        }
        let invoice: Invoice = decode(&answer.body).map_err(LightningError::InvalidResponse)?;
        Self::state_of(&invoice, payment_hash)
    }

    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError> {
        let (invoice, explicit) = check_payable(bolt11, None)?;
        self.send(bolt11, invoice.payment_hash, explicit, max_fee_msat).await
    }

    /// Reads the state once, then follows lnd's single-invoice subscription until the invoice
    /// settles or is canceled, or `timeout` passes. If the subscription cannot be opened or
    /// breaks, it falls back to polling [`LightningBackend::invoice_state`], which reports a
    /// node that is down.
    async fn wait_for_settlement(
        &self,
        payment_hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceState, LightningError> {
        let deadline = Instant::now().checked_add(timeout);
        let current = self.invoice_state(payment_hash).await?;
        let Some(deadline) = deadline.filter(|_| matches!(current, InvoiceState::Open)) else {
            // Settled, expired or unknown; or no deadline representable: poll instead.
            return if matches!(current, InvoiceState::Open) {
                poll_for_settlement(timeout, || self.invoice_state(payment_hash)).await
            } else {
                Ok(current)
            };
        };
        let path = format!("v2/invoices/subscribe/{}", URL_SAFE.encode(payment_hash));
        let open_by = deadline.min(Instant::now() + self.rest.timeouts.request);
        let response = match self.rest.open(self.rest.request(Method::GET, &path), open_by).await {
            Ok(response) if response.status().is_success() => Some(response),
            Ok(response) => {
                let status = response.status();
                let body = self.rest.error_body(response).await;
                let error = self.node_error(status, &body);
                if error.kind() == Kind::Auth {
                    return Err(LightningError::AuthRefused(error.message));
                }
                None
            }
            Err(t @ Transport::NotSent(_)) => return Err(t.read_error()),
            Err(_) => None,
        };
        if let Some(response) = response {
            let mut lines = Lines::new(response);
            loop {
                match lines.next(deadline).await {
                    Ok(Some(line)) => match decode::<StreamItem<Invoice>>(&line) {
                        Ok(StreamItem { result: Some(invoice), .. }) => {
                            match Self::state_of(&invoice, payment_hash) {
                                Ok(InvoiceState::Open) => continue,
                                Ok(state) => return Ok(state),
                                Err(_) => break,
                            }
                        }
                        _ => break,
                    },
                    Err(Transport::Timeout(_)) => return Ok(InvoiceState::Open),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        poll_for_settlement(left, || self.invoice_state(payment_hash)).await
    }

    async fn create_amountless_invoice(
        &self,
        memo: String,
        expiry: Duration,
    ) -> Result<CreatedInvoice, LightningError> {
        self.add_invoice(None, memo, expiry).await
    }

    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        let (invoice, explicit) = check_payable(bolt11, Some(amount_msat))?;
        self.send(bolt11, invoice.payment_hash, explicit, max_fee_msat).await
    }
}

/// The verdict in an lnd `Payment`, if it has one: `SUCCEEDED` with a preimage that hashes to
/// the payment hash, or `FAILED` with lnd's reason.
fn payment_result(
    payment: &Payment,
    payment_hash: &PaymentHash,
) -> Option<Result<PaymentOutcome, LightningError>> {
    match payment.status.as_str() {
        "SUCCEEDED" => Some(proven_payment(
            &payment.payment_preimage,
            payment_hash,
            payment.value_msat.unwrap_or(0),
            payment.fee_msat.unwrap_or(0),
        )),
        "FAILED" => Some(Err(LightningError::PaymentFailed(failure_text(&payment.failure_reason)))),
        _ => None,
    }
}

fn failure_text(reason: &str) -> String {
    match reason {
        "FAILURE_REASON_TIMEOUT" => "timed out before a route succeeded",
        "FAILURE_REASON_NO_ROUTE" => "no route within the fee limit",
        "FAILURE_REASON_ERROR" => "a non-recoverable routing error",
        "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS" => "the payee rejected the payment details",
        "FAILURE_REASON_INSUFFICIENT_BALANCE" => "insufficient local balance",
        "FAILURE_REASON_CANCELED" => "canceled",
        _ => "failed",
    }
    .to_string()
}

/// An error lnd answered with.
struct NodeError {
    http: StatusCode,
    /// The gRPC status code, when the body was an lnd status.
    code: Option<i64>,
    /// Sanitised text.
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Auth,
    NotFound,
    Unavailable,
    InvalidArgument,
    Other,
}

/// lnd's macaroon checks fail with plain errors (gRPC Unknown): recognised by their text.
const AUTH_MARKERS: &[&str] =
    &["macaroon", "permission denied", "verification failed", "invalid id"];
/// lnd refuses calls while its wallet is locked or its RPC server is starting.
const NOT_READY_MARKERS: &[&str] =
    &["wallet locked", "wallet not created", "waiting to start", "in the process of starting"];

impl NodeError {
    fn kind(&self) -> Kind {
        let lower = self.message.to_ascii_lowercase();
        let code = self.code.unwrap_or(-1);
        if matches!(self.http.as_u16(), 401 | 403)
            || matches!(code, 7 | 16)
            || AUTH_MARKERS.iter().any(|m| lower.contains(m))
        {
            Kind::Auth
        } else if code == 5 {
            Kind::NotFound
        } else if matches!(code, 4 | 14)
            || matches!(self.http.as_u16(), 502..=504)
            || NOT_READY_MARKERS.iter().any(|m| lower.contains(m))
        {
            Kind::Unavailable
        } else if code == 3 {
            Kind::InvalidArgument
        } else {
            Kind::Other
        }
    }

    /// The error for a read or an invoice creation: anything but a refused credential or a bad
    /// argument means the node cannot serve now.
    fn read_error(self) -> LightningError {
        match self.kind() {
            Kind::Auth => LightningError::AuthRefused(self.message),
            Kind::InvalidArgument => LightningError::InvalidRequest(self.message),
            _ => LightningError::Unavailable(self.message),
        }
    }
}

/// 32 bytes from base64 in any of the alphabets and paddings grpc-gateway accepts.
fn base64_32(text: &str) -> Option<[u8; 32]> {
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .and_then(|bytes| bytes.try_into().ok())
}

#[derive(Serialize)]
struct AddInvoice<'a> {
    memo: &'a str,
    value_msat: String,
    expiry: String,
}

#[derive(Deserialize)]
struct AddInvoiceResponse {
    r_hash: String,
    payment_request: String,
}

#[derive(Serialize)]
struct SendPayment<'a> {
    payment_request: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    amt_msat: Option<String>,
    fee_limit_msat: String,
    timeout_seconds: i32,
    no_inflight_updates: bool,
}

/// The fields of lnd's `Invoice` farebox reads. Defaults cover lnd versions that omit
/// zero values (a missing `state` is `OPEN`, proto3's zero).
#[derive(Deserialize)]
struct Invoice {
    #[serde(default)]
    r_hash: String,
    #[serde(default)]
    r_preimage: String,
    #[serde(default = "open")]
    state: String,
    #[serde(default, with = "lenient_u64::option")]
    amt_paid_msat: Option<u64>,
    #[serde(default, with = "lenient_u64::option")]
    creation_date: Option<u64>,
    #[serde(default, with = "lenient_u64::option")]
    expiry: Option<u64>,
}

fn open() -> String {
    "OPEN".into()
}

/// The fields of lnd's `Payment` farebox reads.
#[derive(Deserialize)]
struct Payment {
    #[serde(default)]
    payment_preimage: String,
    #[serde(default)]
    status: String,
    #[serde(default, with = "lenient_u64::option")]
    value_msat: Option<u64>,
    #[serde(default, with = "lenient_u64::option")]
    fee_msat: Option<u64>,
    #[serde(default)]
    failure_reason: String,
}

/// One line of a grpc-gateway stream.
#[derive(Deserialize)]
struct StreamItem<T> {
    result: Option<T>,
    error: Option<RpcStatus>,
}

#[derive(Deserialize)]
struct RpcStatus {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// A unary error (`{code, message, details}`) or a stream error before the first message
/// (`{"error": {…}}`).
#[derive(Deserialize)]
struct ErrorBody {
    code: Option<i64>,
    message: Option<String>,
    error: Option<RpcStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let hash = [7u8; 32];
            if let Ok(invoice) = decode::<Invoice>(&bytes) {
                let _ = LndBackend::state_of(&invoice, &hash);
            }
            if let Ok(StreamItem { result: Some(payment), .. }) = decode::<StreamItem<Payment>>(&bytes) {
                let _ = payment_result(&payment, &hash);
            }
            let _ = decode::<AddInvoiceResponse>(&bytes);
            let _ = decode::<ErrorBody>(&bytes);
            let _ = base64_32(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn arbitrary_json_shaped_answers_never_panic(
            state in "[A-Z_]{0,12}",
            preimage in "[A-Za-z0-9+/=_-]{0,64}",
            amount in "-?[0-9]{0,22}",
        ) {
            let hash = [7u8; 32];
            let text = format!(
                r#"{{"r_hash":"{}","r_preimage":"{preimage}","state":"{state}","amt_paid_msat":"{amount}","creation_date":"{amount}","expiry":"{amount}"}}"#,
                STANDARD.encode(hash)
            );
            if let Ok(invoice) = decode::<Invoice>(text.as_bytes()) {
                let _ = LndBackend::state_of(&invoice, &hash);
            }
        }
    }

    #[test]
    fn macaroon_files_may_be_binary_or_hex() {
        let dir = std::env::temp_dir().join(format!("farebox-lnd-mac-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let binary = [0x02, 0x01, 0x03, b'l', b'n', b'd'];
        std::fs::write(dir.join("bin.macaroon"), binary).unwrap();
        std::fs::write(dir.join("hex.macaroon"), format!("{}\n", hex::encode(binary))).unwrap();
        for file in ["bin.macaroon", "hex.macaroon"] {
            assert_eq!(Macaroon::from_file(dir.join(file)).unwrap().0, binary, "{file}");
        }
        assert!(!format!("{:?}", Macaroon::from_bytes(binary).unwrap()).contains("02"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_settled_invoice_without_the_right_preimage_is_not_settled() {
        let preimage = [1u8; 32];
        let hash = crate::sha256(&preimage);
        let invoice = |r_preimage: &[u8]| Invoice {
            r_hash: STANDARD.encode(hash),
            r_preimage: STANDARD.encode(r_preimage),
            state: "SETTLED".into(),
            amt_paid_msat: Some(5_000),
            creation_date: Some(1),
            expiry: Some(3600),
        };
        assert_eq!(
            LndBackend::state_of(&invoice(&preimage), &hash).unwrap(),
            InvoiceState::Settled { preimage, amount_msat: 5_000 }
        );
        assert!(matches!(
            LndBackend::state_of(&invoice(&[2u8; 32]), &hash),
            Err(LightningError::InvalidResponse(_))
        ));
        // An answer about another invoice is refused too.
        assert!(matches!(
            LndBackend::state_of(&invoice(&preimage), &[9u8; 32]),
            Err(LightningError::InvalidResponse(_))
        ));
    }
}
