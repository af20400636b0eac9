//! LNbits through its wallet API (`/api/v1/payments`, the key in `X-Api-Key`).
//!
//! | what | call | answer (fields read) |
//! |---|---|---|
//! | create an invoice (invoice key) | `POST /api/v1/payments` `{"out": false, "amount": <sats>, "unit": "sat", "memo", "expiry"}` | 201: `payment_hash`, `bolt11` (v1) or `payment_request` (both in v1, only the latter before) |
//! | look one up | `GET /api/v1/payments/{payment_hash}` | `{"paid", "status"?, "preimage", "details": Payment}` |
//! | fee bound | `GET /api/v1/payments/fee-reserve?invoice=<bolt11>` | `{"fee_reserve": <msat>}` |
//! | pay (admin key) | `POST /api/v1/payments` `{"out": true, "bolt11"}` | 201: the outgoing `Payment` (`status` `success`/`pending`/`failed`, `preimage`, `amount` and `fee` negative msat) |
//!
//! Errors are `{"detail": …}`: 401 no key, 404 "Wallet not found." for a key that matches no
//! wallet, 403 an invoice key where the admin key is needed, 400 bad input, 520 a payment or
//! invoice error (`{"detail", "status"}`, `status` saying whether the payment is `failed` or
//! still `pending`).
//!
//! Facts that shape this backend (lnbits `core/views/payment_api.py`, `core/services/payments.py`):
//!
//! * **Amounts are whole sats.** An msat amount that is not a whole number of sats is refused
//!   ([`LightningError::InvalidRequest`]), never rounded.
//! * **The status endpoint does not check the key.** With a key that is not the wallet's it
//!   still answers, without `details`; so an answer without `details` is treated as a refused
//!   key ([`LightningError::AuthRefused`]), and with the right key another wallet's payment is
//!   404 (unknown).
//! * **It also hands out preimages of unpaid invoices** (LNbits generates and stores them at
//!   creation and `GET /api/v1/payments/{hash}` returns them to anyone). So `preimage` is never
//!   taken as a sign of payment: only `paid` (and `status: success`) with a preimage that hashes
//!   to the payment hash is `Settled`. An L402 server whose payers can reach its LNbits must
//!   therefore confirm settlement with the backend rather than accept a preimage alone.
//! * **No per-payment fee limit.** LNbits lets its funding source spend up to its fee reserve
//!   (`max(reserve_fee_min, reserve_fee_percent × amount)`), so a payment is refused before it
//!   is sent when that reserve is over `max_fee_msat`.
//! * **Amountless invoices** cannot be created or paid through this API.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderName;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::InvoiceRequest;
use crate::backend::{
    CreatedInvoice, InvoiceState, LightningBackend, LightningError, PaymentHash, PaymentOutcome,
};
use crate::bolt11::parse_invoice;
use crate::rest::{
    ConfigError, Endpoint, Lookup, RestClient, Secret, Unresolved, ceil_secs,
    check_created_invoice, check_invoice_request, check_payable, decode, hex32, proven_payment,
    proven_settlement, sensitive_header, settle_unresolved,
};

/// Which LNbits wallet key the backend holds.
#[derive(Debug, Clone)]
pub enum LnbitsKey {
    /// The invoice (read) key: create invoices and watch them; paying is refused.
    Invoice(Secret),
    /// The admin key: also pay.
    Admin(Secret),
}

/// A [`LightningBackend`] on one LNbits wallet.
///
/// ```no_run
/// # fn main() -> Result<(), farebox_lightning::rest::ConfigError> {
/// use farebox_lightning::lnbits::{LnbitsBackend, LnbitsKey};
/// use farebox_lightning::rest::{Endpoint, Secret};
///
/// let endpoint = Endpoint::new("https://lnbits.example.com")?;
/// let key = LnbitsKey::Invoice(Secret::from_file("/etc/farebox/lnbits-invoice.key")?);
/// let lnbits = LnbitsBackend::new(endpoint, key)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LnbitsBackend {
    rest: RestClient,
    can_pay: bool,
}

/// How often a pending payment is looked at again.
const PENDING_POLL: Duration = Duration::from_millis(250);

impl LnbitsBackend {
    /// A backend for the LNbits wallet that `key` belongs to, at `endpoint`.
    pub fn new(endpoint: Endpoint, key: LnbitsKey) -> Result<Self, ConfigError> {
        let (secret, can_pay) = match &key {
            LnbitsKey::Invoice(secret) => (secret, false),
            LnbitsKey::Admin(secret) => (secret, true),
        };
        let auth = (HeaderName::from_static("x-api-key"), sensitive_header(secret.expose())?);
        let rest = RestClient::new(&endpoint, auth, vec![secret.expose().to_string()])?;
        Ok(LnbitsBackend { rest, can_pay })
    }

    /// `GET /api/v1/payments/{hash}`, within `limit`: `None` when this wallet has no such
    /// payment.
    async fn status(
        &self,
        payment_hash: &PaymentHash,
        limit: Duration,
    ) -> Result<Option<Status>, LightningError> {
        let path = format!("api/v1/payments/{}", hex::encode(payment_hash));
        let answer = self
            .rest
            .call(self.rest.request(Method::GET, &path), limit)
            .await
            .map_err(|t| t.read_error())?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(self.node_error(answer.status, &answer.body).read_error());
        }
        let status: Status = decode(&answer.body).map_err(LightningError::InvalidResponse)?;
        if status.details.is_none() {
            return Err(LightningError::AuthRefused(
                "LNbits did not accept the API key for this wallet (no payment details)".into(),
            ));
        }
        Ok(Some(status))
    }

    /// Polls an outgoing payment until LNbits has a verdict or `deadline` passes; at least once,
    /// with a full request timeout, however late it is called.
    async fn follow(
        &self,
        payment_hash: &PaymentHash,
        deadline: Instant,
    ) -> Result<Lookup, LightningError> {
        loop {
            let Some(status) = self.status(payment_hash, self.rest.timeouts.request).await? else {
                return Ok(Lookup::NotFound);
            };
            if let Some(verdict) = outgoing_verdict(status, payment_hash) {
                return Ok(Lookup::Final(verdict));
            }
            if Instant::now() + PENDING_POLL >= deadline {
                return Ok(Lookup::Pending);
            }
            tokio::time::sleep(PENDING_POLL).await;
        }
    }

    fn node_error(&self, http: StatusCode, body: &[u8]) -> NodeError {
        let parsed = decode::<ErrorBody>(body).ok();
        let detail = parsed.as_ref().and_then(|b| match &b.detail {
            serde_json::Value::String(text) => Some(self.rest.node_message(text)),
            serde_json::Value::Null => None,
            // Validation errors come as a list of objects.
            other => Some(self.rest.node_message(&other.to_string())),
        });
        NodeError {
            http,
            message: detail.unwrap_or_else(|| format!("HTTP {}", http.as_u16())),
            payment_status: parsed.and_then(|b| b.status),
        }
    }
}

#[async_trait]
impl LightningBackend for LnbitsBackend {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        check_invoice_request(Some(request.amount_msat), &request.memo, request.expiry)?;
        if !request.amount_msat.is_multiple_of(1000) {
            return Err(LightningError::InvalidRequest(format!(
                "LNbits invoices are in whole sats; {} msat is not",
                request.amount_msat
            )));
        }
        let body = CreateInvoice {
            out: false,
            amount: request.amount_msat / 1000,
            unit: "sat",
            memo: &request.memo,
            expiry: ceil_secs(request.expiry),
        };
        let answer = self.rest.read(self.rest.post_json("api/v1/payments", &body)).await?;
        if !answer.status.is_success() {
            return Err(self.node_error(answer.status, &answer.body).read_error());
        }
        let created: Created = decode(&answer.body).map_err(LightningError::InvalidResponse)?;
        let bolt11 = match (created.bolt11, created.payment_request) {
            (Some(a), Some(b)) if a != b => {
                return Err(LightningError::InvalidResponse(
                    "bolt11 and payment_request differ".into(),
                ));
            }
            (Some(bolt11), _) | (None, Some(bolt11)) => bolt11,
            (None, None) => {
                return Err(LightningError::InvalidResponse("no invoice in the answer".into()));
            }
        };
        let payment_hash = hex32(&created.payment_hash).ok_or_else(|| {
            LightningError::InvalidResponse("payment_hash is not 32 hex bytes".into())
        })?;
        check_created_invoice(bolt11, Some(payment_hash), Some(request.amount_msat))
    }

    async fn invoice_state(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<InvoiceState, LightningError> {
        match self.status(payment_hash, self.rest.timeouts.request).await? {
            Some(status) => incoming_state(status, payment_hash),
            None => Ok(InvoiceState::Unknown),
        }
    }

    /// LNbits hands the preimage of an unpaid invoice to anyone who asks for its status.
    fn preimage_proves_payment(&self) -> bool {
        false
    }

    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError> {
        if !self.can_pay {
            return Err(LightningError::Unsupported("paying needs the LNbits admin key"));
        }
        let (invoice, _) = check_payable(bolt11, None)?;
        let payment_hash = invoice.payment_hash;
        let timeouts = self.rest.timeouts;

        let path = format!("api/v1/payments/fee-reserve?invoice={bolt11}");
        let answer = self.rest.read(self.rest.request(Method::GET, &path)).await?;
        if !answer.status.is_success() {
            return Err(self.node_error(answer.status, &answer.body).read_error());
        }
        let reserve: FeeReserve = decode(&answer.body).map_err(LightningError::InvalidResponse)?;
        if reserve.fee_reserve > max_fee_msat {
            return Err(LightningError::PaymentFailed(format!(
                "LNbits may spend up to {} msat on routing fees, over the {max_fee_msat} msat limit",
                reserve.fee_reserve
            )));
        }

        let deadline = Instant::now() + timeouts.payment + timeouts.request;
        let body = PayInvoice { out: true, bolt11 };
        let sent = self
            .rest
            .call(
                self.rest.post_json("api/v1/payments", &body),
                timeouts.payment + timeouts.request,
            )
            .await;
        let why = match sent {
            Err(t) if !t.may_have_reached_node() => return Err(t.payment_error()),
            Err(t) => Unresolved::Lost(t.describe()),
            Ok(answer) if answer.status.is_success() => match decode::<Paid>(&answer.body) {
                Ok(paid) if hex32(&paid.payment_hash) != Some(payment_hash) => {
                    Unresolved::Lost("the answer is about another payment".into())
                }
                Ok(paid) if paid.status.as_deref() == Some("success") => {
                    let amount = invoice.amount_msat.unwrap_or(0);
                    return proven_payment(
                        paid.preimage.as_deref().unwrap_or_default(),
                        &payment_hash,
                        paid.amount.map_or(amount, i64::unsigned_abs),
                        paid.fee.map_or(0, i64::unsigned_abs),
                    );
                }
                Ok(paid) if paid.status.as_deref() == Some("failed") => {
                    return Err(LightningError::PaymentFailed("LNbits reports failure".into()));
                }
                // Pending, or an LNbits before v1 that answers with the hash only.
                Ok(_) => Unresolved::Lost("LNbits has no verdict yet".into()),
                Err(e) => Unresolved::Lost(format!("an unreadable answer ({e})")),
            },
            Ok(answer) => {
                let error = self.node_error(answer.status, &answer.body);
                match (error.http.as_u16(), error.payment_status.as_deref()) {
                    (401 | 403, _) => return Err(LightningError::AuthRefused(error.message)),
                    (404, _) if error.is_wallet_not_found() => {
                        return Err(LightningError::AuthRefused(error.message));
                    }
                    (400, _) | (520, Some("failed")) => {
                        return Err(LightningError::PaymentFailed(error.message));
                    }
                    (520, Some("success")) => Unresolved::Refused(error.message),
                    _ => Unresolved::Lost(error.message),
                }
            }
        };
        settle_unresolved(why, self.follow(&payment_hash, deadline).await)
    }

    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        let (_, explicit) = check_payable(bolt11, Some(amount_msat))?;
        if explicit.is_some() {
            return Err(LightningError::Unsupported("LNbits does not pay amountless invoices"));
        }
        self.pay(bolt11, max_fee_msat).await
    }
}

/// The state of an invoice from LNbits' status answer. Only `paid` (with `status: success`
/// where LNbits sends one) and a preimage that hashes to the payment hash is `Settled`: LNbits
/// hands out the preimage of unpaid invoices too.
fn incoming_state(
    status: Status,
    payment_hash: &PaymentHash,
) -> Result<InvoiceState, LightningError> {
    let details = status.details.unwrap_or_default();
    // A negative amount is an outgoing payment of this wallet, not an invoice it issued.
    if details.amount <= 0 {
        return Ok(InvoiceState::Unknown);
    }
    if status.paid && status.status.as_deref().is_none_or(|s| s == "success") {
        return proven_settlement(
            status.preimage.as_deref().and_then(hex32),
            payment_hash,
            details.amount.unsigned_abs(),
        );
    }
    if status.status.as_deref() == Some("failed") {
        return Ok(InvoiceState::Expired);
    }
    let expired = details
        .bolt11
        .as_deref()
        .and_then(|b| parse_invoice(b).ok())
        .is_some_and(|invoice| invoice.is_expired(std::time::SystemTime::now()));
    Ok(if expired { InvoiceState::Expired } else { InvoiceState::Open })
}

/// The verdict on an outgoing payment in LNbits' status answer, if it has one: paid, with a
/// preimage that hashes to the payment hash (amount and fee are negative msat), or failed.
fn outgoing_verdict(
    status: Status,
    payment_hash: &PaymentHash,
) -> Option<Result<PaymentOutcome, LightningError>> {
    let details = status.details.unwrap_or_default();
    if status.paid && status.status.as_deref().is_none_or(|s| s == "success") {
        return Some(proven_payment(
            status.preimage.as_deref().unwrap_or_default(),
            payment_hash,
            details.amount.unsigned_abs(),
            details.fee.unsigned_abs(),
        ));
    }
    (status.status.as_deref() == Some("failed"))
        .then(|| Err(LightningError::PaymentFailed("LNbits reports the payment failed".into())))
}

/// An error LNbits answered with.
struct NodeError {
    http: StatusCode,
    /// Sanitised `detail`.
    message: String,
    /// The payment's state in a 520 answer.
    payment_status: Option<String>,
}

impl NodeError {
    /// LNbits answers 404 "Wallet not found." to a key that matches no wallet.
    fn is_wallet_not_found(&self) -> bool {
        self.message.to_ascii_lowercase().contains("wallet not found")
    }

    fn read_error(self) -> LightningError {
        match self.http.as_u16() {
            401 | 403 => LightningError::AuthRefused(self.message),
            404 if self.is_wallet_not_found() => LightningError::AuthRefused(self.message),
            400 => LightningError::InvalidRequest(self.message),
            _ => LightningError::Unavailable(self.message),
        }
    }
}

#[derive(Serialize)]
struct CreateInvoice<'a> {
    out: bool,
    amount: u64,
    unit: &'a str,
    memo: &'a str,
    expiry: u64,
}

#[derive(Deserialize)]
struct Created {
    payment_hash: String,
    #[serde(default)]
    bolt11: Option<String>,
    #[serde(default)]
    payment_request: Option<String>,
}

#[derive(Serialize)]
struct PayInvoice<'a> {
    out: bool,
    bolt11: &'a str,
}

#[derive(Deserialize)]
struct Paid {
    payment_hash: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    preimage: Option<String>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    fee: Option<i64>,
}

#[derive(Deserialize)]
struct FeeReserve {
    fee_reserve: u64,
}

/// The answer of `GET /api/v1/payments/{hash}`.
#[derive(Deserialize)]
struct Status {
    paid: bool,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    preimage: Option<String>,
    #[serde(default)]
    details: Option<Details>,
}

/// The fields of LNbits' `Payment` read here: msat, negative for outgoing payments.
#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    amount: i64,
    #[serde(default)]
    fee: i64,
    #[serde(default)]
    bolt11: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    detail: serde_json::Value,
    #[serde(default)]
    status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status(paid: bool, state: &str, preimage: &[u8; 32], amount: i64) -> Status {
        decode(
            format!(
                r#"{{"paid":{paid},"status":"{state}","preimage":"{}","details":{{"amount":{amount},"fee":0}}}}"#,
                hex::encode(preimage)
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_preimage_handed_out_for_an_unpaid_invoice_is_not_payment() {
        let preimage = [5u8; 32];
        let hash = crate::sha256(&preimage);
        // LNbits answers the right preimage for a pending invoice: still open.
        assert_eq!(
            incoming_state(status(false, "pending", &preimage, 21_000), &hash).unwrap(),
            InvoiceState::Open
        );
        assert_eq!(
            incoming_state(status(true, "success", &preimage, 21_000), &hash).unwrap(),
            InvoiceState::Settled { preimage, amount_msat: 21_000 }
        );
        // "paid" with a preimage of something else is not believed.
        assert!(matches!(
            incoming_state(status(true, "success", &[6; 32], 21_000), &hash),
            Err(LightningError::InvalidResponse(_))
        ));
        // An outgoing payment of the wallet is not an invoice it issued.
        assert_eq!(
            incoming_state(status(true, "success", &preimage, -21_000), &hash).unwrap(),
            InvoiceState::Unknown
        );
        assert_eq!(
            incoming_state(status(false, "failed", &preimage, 21_000), &hash).unwrap(),
            InvoiceState::Expired
        );
    }

    proptest! {
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(status) = decode::<Status>(&bytes) {
                let _ = incoming_state(status, &[7; 32]);
            }
            if let Ok(status) = decode::<Status>(&bytes) {
                let _ = outgoing_verdict(status, &[7; 32]);
            }
            let _ = decode::<Created>(&bytes);
            let _ = decode::<Paid>(&bytes);
            let _ = decode::<FeeReserve>(&bytes);
            let _ = decode::<ErrorBody>(&bytes);
        }

        #[test]
        fn arbitrary_json_shaped_statuses_never_panic(
            paid in any::<bool>(),
            status in "[a-z]{0,8}",
            preimage in "[0-9a-fx]{0,66}",
            amount in any::<i64>(),
        ) {
            let text = format!(
                r#"{{"paid":{paid},"status":"{status}","preimage":"{preimage}","details":{{"amount":{amount},"fee":{amount},"bolt11":"lnbc1"}}}}"#
            );
            if let Ok(status) = decode::<Status>(text.as_bytes()) {
                let _ = incoming_state(status, &[7; 32]);
            }
            if let Ok(status) = decode::<Status>(text.as_bytes()) {
                let _ = outgoing_verdict(status, &[7; 32]);
            }
        }
    }
}
