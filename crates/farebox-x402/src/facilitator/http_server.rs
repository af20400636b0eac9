//! The facilitator HTTP API over any [`Facilitator`]: `POST /verify`, `POST /settle`,
//! `GET /supported` (and `GET /health`).
//!
//! Status codes follow the TypeScript reference: an invalid payment or a failed settlement is
//! a 200 whose body says so (`isValid: false` / `success: false` with a spec reason code), and
//! that includes a payment of an unknown `x402Version` or whose payload or requirements do not
//! decode; only a body that is no payment at all (not a JSON object with `paymentPayload` and
//! `paymentRequirements`) is 400 `{"error": …}`. A facilitator that cannot answer (chain down)
//! is 503 with `Retry-After`.
//!
//! A settlement whose outcome is unknown ([`FacilitatorError::OutcomeUnknown`]: the transfer may
//! have been broadcast) is not a 503, which a client could read as "nothing happened": it is a
//! 200 settle response, `success: false`, `errorReason: "settlement_pending"`, with the
//! transaction hash when one is known, like a settlement whose receipt did not arrive in time.
//!
//! [`router_with_token`] asks every call but `/health` for `Authorization: Bearer <token>`
//! (compared in constant time, as hashes); a call without it, or with another, is `401` with
//! `WWW-Authenticate: Bearer`.

use std::sync::Arc;

use alloy_primitives::{B256, keccak256};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{Facilitator, FacilitatorError};
use crate::Reason;
use crate::exact_evm::ExactEvmPayload;
use crate::facilitator_api::{SettleResponse, VerifyResponse, VersionedPayment};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The routes, to serve or to nest under a prefix, open to any caller.
pub fn router(facilitator: Arc<dyn Facilitator>) -> Router {
    api(facilitator).merge(health())
}

/// [`router`], with every route but `/health` for holders of `token` only.
pub fn router_with_token(facilitator: Arc<dyn Facilitator>, token: ApiToken) -> Router {
    let token = Arc::new(token);
    api(facilitator)
        .layer(axum::middleware::from_fn(move |request, next| {
            let token = token.clone();
            async move { authorize(&token, request, next).await }
        }))
        .merge(health())
}

fn api(facilitator: Arc<dyn Facilitator>) -> Router {
    Router::new()
        .route("/verify", post(verify))
        .route("/settle", post(settle))
        .route("/supported", get(supported))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(facilitator)
}

fn health() -> Router {
    Router::new().route("/health", get(|| async { Json(json!({"status": "ok"})) }))
}

/// The bearer token an API asks for, kept as its hash only.
pub struct ApiToken(B256);

impl ApiToken {
    /// The token `text` (surrounding whitespace, such as a file's final newline, is not part of
    /// it). `None` for an empty one.
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| ApiToken(keccak256(text.as_bytes())))
    }

    /// Whether an `Authorization` value carries this token, compared in constant time.
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let presented = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| keccak256(token.trim().as_bytes()));
        presented.is_some_and(|p| bool::from(p.as_slice().ct_eq(self.0.as_slice())))
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

async fn authorize(
    token: &ApiToken,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if token.admits(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    let body = Json(json!({"error": "this facilitator needs its bearer token"}));
    let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"facilitator\""));
    response
}

/// The request, or the answer to a body that is not a valid one (boxed: a `Response` is large):
/// for an invalid payment, the protocol's own refusal that `refused` builds from the reason,
/// the message and the network the body claims; for a body that is no payment, a 400.
fn parse<T: serde::Serialize>(
    body: &[u8],
    refused: impl FnOnce(Reason, String, String) -> T,
) -> Result<VersionedPayment, Box<Response>> {
    VersionedPayment::from_json(body).map_err(|e| {
        if e.is_invalid_payment() {
            let network = claimed_network(body).unwrap_or_default();
            return Box::new(Json(refused(e.reason(), e.to_string(), network)).into_response());
        }
        let body = Json(json!({"error": e.to_string(), "reason": e.reason().as_str()}));
        Box::new((StatusCode::BAD_REQUEST, body).into_response())
    })
}

/// `paymentRequirements.network` of a body that did not decode, if it names one.
fn claimed_network(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("paymentRequirements")?.get("network")?.as_str()?.to_owned())
}

fn failure(e: FacilitatorError) -> Response {
    let status = match e {
        FacilitatorError::Unavailable(_) | FacilitatorError::OutcomeUnknown { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        FacilitatorError::Protocol(_) => StatusCode::BAD_GATEWAY,
    };
    let mut response = (status, Json(json!({"error": e.to_string()}))).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

async fn verify(State(f): State<Arc<dyn Facilitator>>, body: Bytes) -> Response {
    let refused = |reason, message, _network| {
        let mut answer = VerifyResponse::invalid(reason, 2, None);
        answer.invalid_message = Some(message);
        answer
    };
    let request = match parse(&body, refused) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    match f.verify(&request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => failure(e),
    }
}

async fn settle(State(f): State<Arc<dyn Facilitator>>, body: Bytes) -> Response {
    let refused = |reason, message, network| {
        let mut answer = SettleResponse::failure(reason, network, None);
        answer.error_message = Some(message);
        answer
    };
    let request = match parse(&body, refused) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    match f.settle(&request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(FacilitatorError::OutcomeUnknown { detail, transaction }) => {
            let tx = transaction.as_deref().unwrap_or("");
            tracing::warn!(%detail, tx, "settlement outcome unknown");
            Json(pending(&request, transaction, detail)).into_response()
        }
        Err(e) => failure(e),
    }
}

/// The settle response of a settlement that may have been broadcast.
fn pending(
    request: &VersionedPayment,
    transaction: Option<String>,
    detail: String,
) -> SettleResponse {
    let payload = match request {
        VersionedPayment::V1 { payment_payload, .. } => &payment_payload.payload,
        VersionedPayment::V2 { payment_payload, .. } => &payment_payload.payload,
    };
    let payer = ExactEvmPayload::from_payload(payload).ok().map(|p| format!("{:#x}", p.payer()));
    let mut answer =
        SettleResponse::failure(Reason::SettlementPending, request.network().to_string(), payer);
    answer.error_message = Some(format!("{}: {detail}", Reason::SettlementPending.message()));
    answer.transaction = transaction.unwrap_or_default();
    answer
}

async fn supported(State(f): State<Arc<dyn Facilitator>>) -> Response {
    match f.supported().await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => failure(e),
    }
}
