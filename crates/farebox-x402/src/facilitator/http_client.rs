//! [`RemoteFacilitator`]: a [`Facilitator`] reached over the facilitator HTTP API.
//!
//! A connection that cannot be made, a timeout before sending, or a 5xx is
//! [`FacilitatorError::Unavailable`]; a `/settle` whose answer was lost after the request went
//! out is [`FacilitatorError::OutcomeUnknown`] (the transfer may have been sent). A non-2xx
//! answer that still carries a verify/settle body (x402-rs answers 400 for invalid payments) is
//! read as that body.

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::{Facilitator, FacilitatorError};
use crate::facilitator_api::{SettleResponse, SupportedResponse, VerifyResponse, VersionedPayment};

/// Largest response body read.
const MAX_RESPONSE: usize = 256 * 1024;

/// A facilitator at `base` (e.g. `http://127.0.0.1:8404/`).
#[derive(Debug, Clone)]
pub struct RemoteFacilitator {
    base: reqwest::Url,
    http: reqwest::Client,
}

impl RemoteFacilitator {
    /// A client with a 5 s connect timeout and a 30 s overall timeout (settlement waits for a
    /// block).
    pub fn new(base: reqwest::Url) -> Result<Self, FacilitatorError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| FacilitatorError::Protocol(e.to_string()))?;
        Ok(Self::with_client(base, http))
    }

    /// With a client of your own (timeouts, proxies, auth headers as default headers).
    pub fn with_client(mut base: reqwest::Url, http: reqwest::Client) -> Self {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        RemoteFacilitator { base, http }
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, FacilitatorError> {
        self.base.join(path).map_err(|e| FacilitatorError::Protocol(e.to_string()))
    }

    async fn read<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        lost: fn(String) -> FacilitatorError,
    ) -> Result<T, FacilitatorError> {
        let status = response.status();
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_RESPONSE => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => return Err(FacilitatorError::Protocol("response too large".into())),
                Ok(None) => break,
                Err(e) => return Err(lost(format!("reading the answer: {e}"))),
            }
        }
        match serde_json::from_slice::<T>(&body) {
            Ok(answer) => Ok(answer),
            Err(_) if status.is_server_error() => {
                Err(FacilitatorError::Unavailable(format!("facilitator answered {status}")))
            }
            Err(e) => Err(FacilitatorError::Protocol(format!("{status}: {e}"))),
        }
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        request: &VersionedPayment,
        lost: fn(String) -> FacilitatorError,
    ) -> Result<T, FacilitatorError> {
        let sent = self.http.post(self.url(path)?).json(request).send().await;
        match sent {
            Ok(response) => self.read(response, lost).await,
            // Never sent: nothing can have happened.
            Err(e) if e.is_connect() || e.is_builder() => {
                Err(FacilitatorError::Unavailable(e.to_string()))
            }
            Err(e) => Err(lost(e.to_string())),
        }
    }
}

#[async_trait]
impl Facilitator for RemoteFacilitator {
    async fn verify(&self, request: &VersionedPayment) -> Result<VerifyResponse, FacilitatorError> {
        // Nothing moves money at /verify: a lost answer is just unavailability.
        self.post("verify", request, FacilitatorError::Unavailable).await
    }

    async fn settle(&self, request: &VersionedPayment) -> Result<SettleResponse, FacilitatorError> {
        self.post("settle", request, FacilitatorError::OutcomeUnknown).await
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let response = self
            .http
            .get(self.url("supported")?)
            .send()
            .await
            .map_err(|e| FacilitatorError::Unavailable(e.to_string()))?;
        self.read(response, FacilitatorError::Unavailable).await
    }
}
