//! [`RemoteFacilitator`]: a [`Facilitator`] reached over the facilitator HTTP API.
//!
//! What an answer means depends on whether money can have moved:
//!
//! - A connection that cannot be made at all (refused, connect timeout) means the request was
//!   never sent: [`FacilitatorError::Unavailable`], for every call.
//! - `/verify` and `/supported` move no money: any other failure (a lost answer, a 5xx that is
//!   not a response body) is also [`FacilitatorError::Unavailable`].
//! - `/settle` may have broadcast a transfer once the request went out: a lost answer, or a 5xx
//!   that does not report a successful settlement, is [`FacilitatorError::OutcomeUnknown`],
//!   carrying the transaction hash when the 5xx body names one. The caller keeps the
//!   authorization reserved as pending; it never releases it.
//!
//! A non-2xx answer below 500 that still carries a verify/settle body (x402-rs answers 400 for
//! invalid payments) is read as that body.
//!
//! A facilitator that asks for one (`farebox facilitator --token-file`) gets a bearer token on
//! every call ([`RemoteFacilitator::with_bearer_token`]). The base URL may carry a key too, so
//! neither it nor the token appears in errors or `Debug` output (reqwest's messages are taken
//! without their URL).

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::{Facilitator, FacilitatorError};
use crate::facilitator_api::{SettleResponse, SupportedResponse, VerifyResponse, VersionedPayment};

/// Largest response body read.
const MAX_RESPONSE: usize = 256 * 1024;

/// A facilitator at `base` (e.g. `http://127.0.0.1:8404/`).
#[derive(Clone)]
pub struct RemoteFacilitator {
    base: reqwest::Url,
    http: reqwest::Client,
    /// `Authorization: Bearer …`, marked sensitive.
    bearer: Option<reqwest::header::HeaderValue>,
}

impl std::fmt::Debug for RemoteFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFacilitator")
            .field("base", &farebox_evm::rpc::redact_url(self.base.as_str()))
            .field("bearer", &self.bearer.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

/// An answer as it arrived: its status and body.
struct Answer {
    status: reqwest::StatusCode,
    body: Vec<u8>,
}

/// Why no answer arrived.
enum NoAnswer {
    /// The request never left: nothing can have happened.
    NotSent(String),
    /// The request went out (or may have), but the answer was lost.
    Lost(String),
    /// The answer is unusable whatever the call (too large).
    Protocol(String),
}

impl RemoteFacilitator {
    /// A client with a 5 s connect timeout and a 30 s overall timeout (settlement waits for a
    /// block).
    pub fn new(base: reqwest::Url) -> Result<Self, FacilitatorError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| FacilitatorError::Protocol(e.without_url().to_string()))?;
        Ok(Self::with_client(base, http))
    }

    /// With a client of your own (timeouts, proxies, auth headers as default headers).
    pub fn with_client(mut base: reqwest::Url, http: reqwest::Client) -> Self {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        RemoteFacilitator { base, http, bearer: None }
    }

    /// Sends `Authorization: Bearer <token>` on every call, for a facilitator whose API needs it.
    /// A token that cannot be a header value (control characters) is refused.
    pub fn with_bearer_token(mut self, token: &str) -> Result<Self, FacilitatorError> {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| {
                FacilitatorError::Protocol("the bearer token is not header text".into())
            })?;
        value.set_sensitive(true);
        self.bearer = Some(value);
        Ok(self)
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, FacilitatorError> {
        self.base.join(path).map_err(|e| FacilitatorError::Protocol(e.to_string()))
    }

    async fn exchange(&self, mut request: reqwest::RequestBuilder) -> Result<Answer, NoAnswer> {
        if let Some(bearer) = &self.bearer {
            request = request.header(reqwest::header::AUTHORIZATION, bearer.clone());
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            // Never sent: nothing can have happened.
            Err(e) if e.is_connect() || e.is_builder() => {
                return Err(NoAnswer::NotSent(e.without_url().to_string()));
            }
            Err(e) => return Err(NoAnswer::Lost(e.without_url().to_string())),
        };
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_RESPONSE => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => return Err(NoAnswer::Protocol("response too large".into())),
                Ok(None) => break,
                Err(e) => {
                    return Err(NoAnswer::Lost(format!("reading the answer: {}", e.without_url())));
                }
            }
        }
        Ok(Answer { status, body })
    }

    /// A call that moves no money: every failure to get an answer is unavailability.
    async fn harmless<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, FacilitatorError> {
        let answer = self.exchange(request).await.map_err(|e| match e {
            NoAnswer::NotSent(why) | NoAnswer::Lost(why) => FacilitatorError::Unavailable(why),
            NoAnswer::Protocol(why) => FacilitatorError::Protocol(why),
        })?;
        match serde_json::from_slice::<T>(&answer.body) {
            Ok(decoded) => Ok(decoded),
            Err(_) if answer.status.is_server_error() => Err(FacilitatorError::Unavailable(
                format!("facilitator answered {}", answer.status),
            )),
            Err(e) => Err(FacilitatorError::Protocol(format!("{}: {e}", answer.status))),
        }
    }
}

#[async_trait]
impl Facilitator for RemoteFacilitator {
    async fn verify(&self, request: &VersionedPayment) -> Result<VerifyResponse, FacilitatorError> {
        self.harmless(self.http.post(self.url("verify")?).json(request)).await
    }

    async fn settle(&self, request: &VersionedPayment) -> Result<SettleResponse, FacilitatorError> {
        let answer = match self.exchange(self.http.post(self.url("settle")?).json(request)).await {
            Ok(answer) => answer,
            Err(NoAnswer::NotSent(why)) => return Err(FacilitatorError::Unavailable(why)),
            Err(NoAnswer::Lost(why)) => {
                return Err(FacilitatorError::outcome_unknown(format!(
                    "the settlement was sent but its answer was lost: {why}"
                )));
            }
            Err(NoAnswer::Protocol(why)) => return Err(FacilitatorError::Protocol(why)),
        };
        let decoded = serde_json::from_slice::<SettleResponse>(&answer.body);
        if answer.status.is_server_error() {
            // The facilitator failed while settling: only a body that reports success is
            // trusted; anything else may hide a broadcast transfer.
            return match decoded {
                Ok(settled) if settled.success => Ok(settled),
                Ok(failed) => Err(FacilitatorError::OutcomeUnknown {
                    detail: format!(
                        "facilitator answered {} ({})",
                        answer.status,
                        failed.error_reason.as_deref().unwrap_or("no reason")
                    ),
                    transaction: (!failed.transaction.is_empty()).then_some(failed.transaction),
                }),
                Err(_) => Err(FacilitatorError::outcome_unknown(format!(
                    "facilitator answered {}",
                    answer.status
                ))),
            };
        }
        decoded.map_err(|e| FacilitatorError::Protocol(format!("{}: {e}", answer.status)))
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        self.harmless(self.http.get(self.url("supported")?)).await
    }
}
