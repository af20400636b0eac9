//! The dev wallet over HTTP (feature `dev`), so that `farebox pay` in one process can pay
//! invoices of the dev node that `farebox serve` or `farebox demo --serve` runs in another:
//! [`router`] serves a [`DevNode`](crate::DevNode)'s wallet API, [`RemoteDevWallet`] is the
//! [`LightningBackend`] that pays through it.
//!
//! Only the network is simulated: the serving process owns a real dev node that signed the
//! invoice and holds the preimage; the wallet node that pays lives there too, and this API lets
//! a remote process ask it to pay (as an LNbits or NWC wallet would be asked). Bound to loopback.
//!
//! The API (JSON bodies of at most [`MAX_WALLET_REQUEST`] bytes):
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/pay` | `{"invoice", "max_fee_msat"?, "amount_msat"?}` | `{"preimage", "payment_hash", "amount_msat", "fee_msat"}` |
//! | `POST /v1/invoices/amountless` | `{"memo", "expiry_secs"}` | `{"bolt11", "payment_hash"}` |
//! | `GET /v1/balance` | | `{"balance_msat"}` |
//!
//! `amount_msat` on `/v1/pay` pays an amountless invoice that amount
//! ([`LightningBackend::pay_amount`]); without it the invoice's own amount is paid. An amountless
//! invoice is one the wallet receives on, e.g. the return invoice of an MPP Lightning session
//! that the server refunds the unspent balance to. Errors are `{"error": "…"}`: 400 for a bad
//! request (nothing was sent), 422 for a payment that failed, 503 when the wallet cannot make an
//! invoice because it is offline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::{
    CreatedInvoice, InvoiceRequest, InvoiceState, LightningBackend, LightningError, PaymentHash,
    PaymentOutcome, check_pay_amount, parse_invoice, preimage_matches,
};
use serde_json::{Value, json};

/// Largest request body the dev wallet API reads (an invoice is at most 7089 bytes).
pub const MAX_WALLET_REQUEST: usize = 16 * 1024;

/// Longest expiry `POST /v1/invoices/amountless` accepts.
const MAX_INVOICE_EXPIRY: Duration = Duration::from_secs(365 * 86_400);

/// The routes of the dev wallet API, paying from (and receiving into) `wallet`.
pub fn router(wallet: Arc<crate::DevNode>) -> Router {
    Router::new()
        .route("/v1/pay", post(pay))
        .route("/v1/invoices/amountless", post(amountless_invoice))
        .route("/v1/balance", get(balance))
        .layer(DefaultBodyLimit::max(MAX_WALLET_REQUEST))
        .with_state(wallet)
}

type Answer = (StatusCode, Json<Value>);

fn refused(status: StatusCode, why: impl std::fmt::Display) -> Answer {
    (status, Json(json!({ "error": why.to_string() })))
}

/// Status of a refused payment: 400 for a request refused before anything was sent (only
/// `amount_msat` requests have those), otherwise 422 as the API has always answered.
fn payment_status(e: &LightningError) -> StatusCode {
    match e {
        LightningError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// Status of a refused invoice request.
fn invoice_status(e: &LightningError) -> StatusCode {
    match e {
        LightningError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        LightningError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An optional non-negative integer member: absent is `None`, anything else but a `u64` is an
/// error (a typo must not turn into "pay the invoice's amount").
fn optional_u64(body: &Value, key: &str) -> Result<Option<u64>, Answer> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            refused(StatusCode::BAD_REQUEST, format!("\"{key}\" must be a non-negative integer"))
        }),
    }
}

async fn pay(State(wallet): State<Arc<crate::DevNode>>, Json(body): Json<Value>) -> Answer {
    let Some(invoice) = body.get("invoice").and_then(Value::as_str) else {
        return refused(StatusCode::BAD_REQUEST, "missing \"invoice\"");
    };
    let (max_fee, amount) =
        match (optional_u64(&body, "max_fee_msat"), optional_u64(&body, "amount_msat")) {
            (Ok(fee), Ok(amount)) => (fee.unwrap_or(0), amount),
            (Err(e), _) | (_, Err(e)) => return e,
        };
    let paid = match amount {
        Some(amount) => wallet.pay_amount(invoice, amount, max_fee).await,
        None => wallet.pay(invoice, max_fee).await,
    };
    match paid {
        Ok(p) => (
            StatusCode::OK,
            Json(json!({
                "preimage": hex::encode(p.preimage),
                "payment_hash": hex::encode(p.payment_hash),
                "amount_msat": p.amount_msat,
                "fee_msat": p.fee_msat,
            })),
        ),
        Err(e) => refused(payment_status(&e), e),
    }
}

async fn amountless_invoice(
    State(wallet): State<Arc<crate::DevNode>>,
    Json(body): Json<Value>,
) -> Answer {
    let Some(memo) = body.get("memo").and_then(Value::as_str) else {
        return refused(StatusCode::BAD_REQUEST, "missing \"memo\"");
    };
    let expiry = match optional_u64(&body, "expiry_secs") {
        Ok(Some(secs)) if secs > 0 && secs <= MAX_INVOICE_EXPIRY.as_secs() => {
            Duration::from_secs(secs)
        }
        Ok(_) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "\"expiry_secs\" must be between 1 and 31536000",
            );
        }
        Err(e) => return e,
    };
    match wallet.create_amountless_invoice(memo.to_string(), expiry).await {
        Ok(created) => (
            StatusCode::OK,
            Json(json!({
                "bolt11": created.bolt11,
                "payment_hash": hex::encode(created.payment_hash),
            })),
        ),
        Err(e) => refused(invoice_status(&e), e),
    }
}

async fn balance(State(wallet): State<Arc<crate::DevNode>>) -> Json<Value> {
    Json(json!({ "balance_msat": wallet.balance_msat() }))
}

/// A [`LightningBackend`] that pays through a remote dev wallet API, and creates amountless
/// invoices for the wallet to receive on. It does not look invoices up.
pub struct RemoteDevWallet {
    base: reqwest::Url,
    http: reqwest::Client,
}

/// Largest answer read from the dev wallet.
const MAX_WALLET_REPLY: usize = 16 * 1024;

impl RemoteDevWallet {
    /// A wallet paying through the dev wallet API at `base` (e.g. `http://127.0.0.1:8403/`).
    pub fn new(base: reqwest::Url) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        RemoteDevWallet { base, http }
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, LightningError> {
        self.base.join(path).map_err(|e| LightningError::Unavailable(e.to_string()))
    }

    /// Posts a payment request and reads the outcome. Errors after the request may have reached
    /// the wallet are [`LightningError::OutcomeUnknown`]: it may have paid.
    async fn post_payment(
        &self,
        body: Value,
        payment_hash: Option<&PaymentHash>,
    ) -> Result<PaymentOutcome, LightningError> {
        let sent = self.http.post(self.url("v1/pay")?).json(&body).send().await;
        let reply = match sent {
            Ok(reply) => reply,
            // Never connected: nothing was asked of the wallet, so nothing was paid.
            Err(e) if e.is_connect() => {
                return Err(LightningError::Unavailable(format!(
                    "dev wallet at {}: {e}",
                    self.base
                )));
            }
            // Sent, but the answer was lost: the wallet may have paid.
            Err(e) => {
                return Err(LightningError::OutcomeUnknown(format!(
                    "dev wallet at {}: {e}",
                    self.base
                )));
            }
        };
        let status = reply.status();
        let body = read_reply(reply).await.map_err(LightningError::OutcomeUnknown)?;
        if !status.is_success() {
            let why = error_text(&body);
            return Err(match status {
                StatusCode::BAD_REQUEST => LightningError::InvalidRequest(why),
                _ => LightningError::PaymentFailed(why),
            });
        }
        let preimage = hash32(&body, "preimage").map_err(LightningError::OutcomeUnknown)?;
        let answered_hash =
            hash32(&body, "payment_hash").map_err(LightningError::OutcomeUnknown)?;
        // The preimage is the proof of payment: never hand on one that does not prove it.
        if !preimage_matches(&preimage, &answered_hash)
            || payment_hash.is_some_and(|h| *h != answered_hash)
        {
            return Err(LightningError::OutcomeUnknown(
                "dev wallet answered with a preimage that does not match the invoice".into(),
            ));
        }
        Ok(PaymentOutcome {
            preimage,
            payment_hash: answered_hash,
            amount_msat: body.get("amount_msat").and_then(Value::as_u64).unwrap_or(0),
            fee_msat: body.get("fee_msat").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

/// Reads a JSON answer of at most [`MAX_WALLET_REPLY`] bytes.
async fn read_reply(mut reply: reqwest::Response) -> Result<Value, String> {
    let mut bytes = Vec::new();
    loop {
        match reply.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_WALLET_REPLY => {
                bytes.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => return Err("dev wallet reply too large".into()),
            Ok(None) => break,
            Err(e) => return Err(format!("dev wallet reply: {e}")),
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("dev wallet reply is not JSON: {e}"))
}

fn error_text(body: &Value) -> String {
    body.get("error").and_then(Value::as_str).unwrap_or("unknown error").to_string()
}

fn hash32(v: &Value, key: &str) -> Result<[u8; 32], String> {
    let text = v.get(key).and_then(Value::as_str).unwrap_or_default();
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| format!("dev wallet sent a bad {key}"))?;
    Ok(out)
}

#[async_trait]
impl LightningBackend for RemoteDevWallet {
    async fn create_invoice(&self, _: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        Err(LightningError::Unsupported("the remote dev wallet only makes amountless invoices"))
    }

    async fn invoice_state(&self, _: &PaymentHash) -> Result<InvoiceState, LightningError> {
        Err(LightningError::Unsupported("the remote dev wallet does not look invoices up"))
    }

    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError> {
        self.post_payment(json!({ "invoice": bolt11, "max_fee_msat": max_fee_msat }), None).await
    }

    async fn create_amountless_invoice(
        &self,
        memo: String,
        expiry: Duration,
    ) -> Result<CreatedInvoice, LightningError> {
        // Round a sub-second part up, as the dev node does: an expiry is never shorter than asked.
        let expiry_secs = expiry.as_secs().saturating_add(u64::from(expiry.subsec_nanos() > 0));
        let sent = self
            .http
            .post(self.url("v1/invoices/amountless")?)
            .json(&json!({ "memo": memo, "expiry_secs": expiry_secs }))
            .send()
            .await
            // No money moves when an invoice is made: any failure is just "unavailable".
            .map_err(|e| {
                LightningError::Unavailable(format!("dev wallet at {}: {e}", self.base))
            })?;
        let status = sent.status();
        let body = read_reply(sent).await.map_err(LightningError::Unavailable)?;
        if !status.is_success() {
            let why = error_text(&body);
            return Err(match status {
                StatusCode::BAD_REQUEST => LightningError::InvalidRequest(why),
                _ => LightningError::Unavailable(why),
            });
        }
        let bolt11 = body.get("bolt11").and_then(Value::as_str).unwrap_or_default();
        let payment_hash = hash32(&body, "payment_hash").map_err(LightningError::Unavailable)?;
        // A cheap guard against a misbehaving wallet: the invoice is what was asked for.
        let parsed = parse_invoice(bolt11)?;
        if parsed.payment_hash != payment_hash || parsed.amount_msat.is_some() {
            return Err(LightningError::Unavailable(
                "dev wallet answered with an invoice that is not the amountless one asked for"
                    .into(),
            ));
        }
        Ok(CreatedInvoice { bolt11: bolt11.to_string(), payment_hash })
    }

    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        // The checks that need no wallet, made before asking it (it makes them again).
        let invoice = check_pay_amount(bolt11, amount_msat)?;
        let body =
            json!({ "invoice": bolt11, "amount_msat": amount_msat, "max_fee_msat": max_fee_msat });
        self.post_payment(body, Some(&invoice.payment_hash)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DevNetwork, DevNode};

    /// A wallet node served on loopback, a server node on the same network, and a
    /// [`RemoteDevWallet`] talking to the wallet's API.
    async fn setup() -> (Arc<DevNode>, DevNode, RemoteDevWallet, reqwest::Url) {
        let network = DevNetwork::new();
        let wallet = Arc::new(DevNode::random(&network, 50_000));
        let server = DevNode::random(&network, 100_000);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let base: reqwest::Url =
            format!("http://{}/", listener.local_addr().unwrap()).parse().unwrap();
        let app = router(wallet.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (wallet, server, RemoteDevWallet::new(base.clone()), base)
    }

    #[tokio::test]
    async fn remote_wallet_receives_on_an_amountless_invoice() {
        let (wallet, server, remote, _) = setup().await;
        let refund = remote
            .create_amountless_invoice("session refund".into(), Duration::from_millis(1_500))
            .await
            .unwrap();
        let parsed = parse_invoice(&refund.bolt11).unwrap();
        assert_eq!((parsed.amount_msat, parsed.payee), (None, wallet.pubkey()));
        assert_eq!(parsed.expiry, Duration::from_secs(2));
        // The server refunds a balance to it; the wallet in the other process receives it.
        let paid = server.pay_amount(&refund.bolt11, 4_200, 0).await.unwrap();
        assert_eq!(paid.amount_msat, 4_200);
        assert_eq!(wallet.balance_msat(), 54_200);
        assert_eq!(wallet.settled_invoices()[0].amount_msat, 4_200);

        for (memo, expiry) in
            [("m".repeat(640), Duration::from_secs(60)), ("x".into(), Duration::ZERO)]
        {
            let err = remote.create_amountless_invoice(memo, expiry).await.unwrap_err();
            assert!(matches!(err, LightningError::InvalidRequest(_)), "{err}");
        }
        wallet.set_available(false);
        let err = remote.create_amountless_invoice("x".into(), Duration::from_secs(60)).await;
        assert!(matches!(err, Err(LightningError::Unavailable(_))), "{err:?}");
    }

    #[tokio::test]
    async fn remote_wallet_pays_a_chosen_amount() {
        let (wallet, server, remote, _) = setup().await;
        let any = server.create_amountless_invoice("tip".into(), Duration::from_secs(60)).await;
        let any = any.unwrap();
        let paid = remote.pay_amount(&any.bolt11, 1_234, 0).await.unwrap();
        assert_eq!((paid.amount_msat, paid.payment_hash), (1_234, any.payment_hash));
        assert!(preimage_matches(&paid.preimage, &any.payment_hash));
        assert_eq!(wallet.balance_msat(), 50_000 - 1_234);
        assert_eq!(server.balance_msat(), 100_000 + 1_234);

        // Refused locally, before the wallet is asked: zero, and an amount the invoice does not
        // name. The wallet's own checks answer the same way over HTTP.
        let fixed = server
            .create_invoice(InvoiceRequest {
                amount_msat: 500,
                memo: "fixed".into(),
                expiry: Duration::from_secs(60),
            })
            .await
            .unwrap();
        for (bolt11, amount) in [(&any.bolt11, 0), (&fixed.bolt11, 501)] {
            let err = remote.pay_amount(bolt11, amount, 0).await.unwrap_err();
            assert!(matches!(err, LightningError::InvalidRequest(_)), "{err}");
        }
        // Paid already: the wallet refuses, nothing moves.
        let err = remote.pay_amount(&any.bolt11, 1_234, 0).await.unwrap_err();
        assert!(matches!(&err, LightningError::PaymentFailed(m) if m.contains("already")), "{err}");
        // `pay` still refuses amountless invoices, through the API too.
        let other = server.create_amountless_invoice("x".into(), Duration::from_secs(60)).await;
        let err = remote.pay(&other.unwrap().bolt11, 0).await.unwrap_err();
        assert!(matches!(&err, LightningError::PaymentFailed(m) if m.contains("amountless")));
        // The fixed invoice pays its own amount either way.
        assert_eq!(remote.pay_amount(&fixed.bolt11, 500, 0).await.unwrap().amount_msat, 500);
        assert_eq!(wallet.balance_msat(), 50_000 - 1_234 - 500);
    }

    #[tokio::test]
    async fn the_api_refuses_malformed_and_oversized_requests() {
        let (wallet, server, _, base) = setup().await;
        let any = server.create_amountless_invoice("x".into(), Duration::from_secs(60)).await;
        let any = any.unwrap();
        let http = reqwest::Client::new();
        let post = |path: &str, body: String| {
            http.post(base.join(path).unwrap())
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        for (path, body) in [
            ("v1/pay", json!({ "invoice": any.bolt11, "amount_msat": "12" })),
            ("v1/pay", json!({ "invoice": any.bolt11, "amount_msat": -1 })),
            ("v1/pay", json!({ "invoice": any.bolt11, "amount_msat": 0 })),
            ("v1/pay", json!({ "amount_msat": 10 })),
            ("v1/invoices/amountless", json!({ "expiry_secs": 60 })),
            ("v1/invoices/amountless", json!({ "memo": "x", "expiry_secs": 0 })),
            ("v1/invoices/amountless", json!({ "memo": "x", "expiry_secs": 31_536_001 })),
            ("v1/invoices/amountless", json!({ "memo": "x" })),
        ] {
            let reply = post(path, body.to_string()).await.unwrap();
            assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        }
        let huge = json!({ "memo": "x".repeat(MAX_WALLET_REQUEST) }).to_string();
        let reply = post("v1/invoices/amountless", huge).await.unwrap();
        assert_eq!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(wallet.balance_msat(), 50_000);
    }
}
