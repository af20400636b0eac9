//! Core Lightning through CLNRest (`POST /v1/<rpc method>` with the method's named parameters
//! as a JSON body, the rune in a `Rune` header; built into lightningd since v23.08).
//!
//! | what | method | answer (fields read) |
//! |---|---|---|
//! | create an invoice | `invoice` `{amount_msat, label, description, expiry}` | `bolt11`, `payment_hash` |
//! | look one up | `listinvoices` `{payment_hash}` | `invoices[]`: `label`, `status` `unpaid`/`paid`/`expired`, `payment_preimage`, `amount_received_msat` |
//! | wait for settlement | `waitinvoice` `{label}` | the invoice once `paid`; error 903 when it expires |
//! | pay | `pay` `{bolt11, maxfee, retry_for, amount_msat?}` | `payment_preimage`, `amount_msat`, `amount_sent_msat`, `status` `complete`/`pending`/`failed` |
//! | look a payment up | `listpays` `{payment_hash}` | `pays[]`: `status`, `preimage`, `amount_msat`, `amount_sent_msat` |
//!
//! Shapes follow lightningd's `doc/schemas/*.json`. Success is HTTP 201 with the method's
//! result; a failed call is HTTP 500 with the JSON-RPC error `{"code", "message", "data"}`
//! (pay: 201 already paid differently, 203 permanent failure, 205 no route, 206 route too
//! expensive, 207 invoice expired, 210 timed out; -32602 bad parameters); a missing rune is 403
//! (code 1501) and an invalid one 401 (1502 or the `checkrune` error). Amounts are integer msat
//! (older nodes wrote `"1000msat"`, also accepted).
//!
//! TLS: CLNRest generates its own CA (`ca.pem`) and a server certificate (`server.pem`) naming
//! `localhost`, `cln` and its IP. Trust either the CA
//! ([`TlsTrust::roots_pem_file`](crate::rest::TlsTrust::roots_pem_file), reaching the node at a
//! name the certificate lists) or exactly the server certificate
//! ([`TlsTrust::pinned_pem_file`](crate::rest::TlsTrust::pinned_pem_file)).
//!
//! Payments: `pay` blocks until it completes or gives up after `retry_for`. An error with one of
//! `pay`'s documented failure codes is final. Anything else (a timeout, a broken connection, an
//! unreadable answer, `pending`, an error without a code) is looked up with `listpays`, never
//! paid again.

use std::time::Duration;

use async_trait::async_trait;
use rand::RngCore;
use reqwest::StatusCode;
use reqwest::header::HeaderName;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::InvoiceRequest;
use crate::backend::{
    CreatedInvoice, InvoiceState, LightningBackend, LightningError, PaymentHash, PaymentOutcome,
    poll_for_settlement,
};
use crate::rest::{
    ConfigError, Endpoint, Lookup, RestClient, Secret, Transport, Unresolved, ceil_secs,
    check_created_invoice, check_invoice_request, check_payable, decode, hex32, lenient_u64,
    passed, proven_payment, proven_settlement, sensitive_header, settle_unresolved,
};

/// `pay` error codes that mean the payment is over and did not happen (lightning-pay(7)).
const FINAL_PAY_FAILURES: &[i64] = &[201, 203, 205, 206, 207, 210];
/// `waitinvoice`: the invoice expired before it was paid.
const WAIT_EXPIRED: i64 = 903;
/// JSON-RPC "invalid params".
const INVALID_PARAMS: i64 = -32602;

/// A [`LightningBackend`] on Core Lightning's CLNRest.
///
/// ```no_run
/// # fn main() -> Result<(), farebox_lightning::rest::ConfigError> {
/// use farebox_lightning::cln::ClnBackend;
/// use farebox_lightning::rest::{Endpoint, Secret, TlsTrust};
///
/// let endpoint = Endpoint::new("https://127.0.0.1:3010")?
///     .with_tls(TlsTrust::pinned_pem_file("/home/cln/.lightning/bitcoin/server.pem")?);
/// let cln = ClnBackend::new(endpoint, Secret::from_file("/etc/farebox/cln.rune")?)?;
/// # Ok(()) }
/// ```
///
/// The rune needs `invoice`, `listinvoices` and `waitinvoice` to receive, and `pay` and
/// `listpays` to pay.
#[derive(Debug)]
pub struct ClnBackend {
    rest: RestClient,
}

impl ClnBackend {
    /// A backend for the CLNRest server at `endpoint`, authenticating with `rune`.
    pub fn new(endpoint: Endpoint, rune: Secret) -> Result<Self, ConfigError> {
        let header = sensitive_header(rune.expose())?;
        let auth = (HeaderName::from_static("rune"), header);
        Ok(ClnBackend { rest: RestClient::new(&endpoint, auth, vec![rune.expose().to_string()])? })
    }

    /// Calls `method` with `params`, answering its result or the node's error.
    async fn rpc(
        &self,
        method: &str,
        params: &impl Serialize,
        limit: Duration,
    ) -> Result<Result<Vec<u8>, NodeError>, Transport> {
        let request = self.rest.post_json(&format!("v1/{method}"), params);
        let answer = self.rest.call(request, limit).await?;
        if answer.status.is_success() {
            return Ok(Ok(answer.body));
        }
        let error = decode::<RpcError>(&answer.body).ok();
        Ok(Err(NodeError {
            http: answer.status,
            code: error.as_ref().and_then(|e| e.code),
            message: match &error {
                Some(e) => self.rest.node_message(&e.message),
                None => format!("HTTP {}", answer.status.as_u16()),
            },
        }))
    }

    /// A read-only call: every failure is an error for the caller.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: &impl Serialize,
    ) -> Result<T, LightningError> {
        let body = self
            .rpc(method, params, self.rest.timeouts.request)
            .await
            .map_err(|t| t.read_error())?
            .map_err(NodeError::read_error)?;
        decode(&body).map_err(LightningError::InvalidResponse)
    }

    async fn add_invoice(
        &self,
        amount_msat: Option<u64>,
        memo: String,
        expiry: Duration,
    ) -> Result<CreatedInvoice, LightningError> {
        check_invoice_request(amount_msat, &memo, expiry)?;
        // Labels must be unique per node; 128 random bits cannot collide in practice.
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let params = InvoiceParams {
            amount_msat: match amount_msat {
                Some(msat) => serde_json::Value::from(msat),
                None => serde_json::Value::from("any"),
            },
            label: format!("farebox-{}", hex::encode(nonce)),
            description: &memo,
            expiry: ceil_secs(expiry),
        };
        let created: InvoiceAnswer = self.read("invoice", &params).await?;
        let payment_hash = hex32(&created.payment_hash).ok_or_else(|| {
            LightningError::InvalidResponse("payment_hash is not 32 hex bytes".into())
        })?;
        check_created_invoice(created.bolt11, Some(payment_hash), amount_msat)
    }

    /// The invoice for `payment_hash` and its state, if the node has it.
    async fn lookup(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<Option<(Invoice, InvoiceState)>, LightningError> {
        let params = ByHash { payment_hash: hex::encode(payment_hash) };
        let listed: ListInvoices = self.read("listinvoices", &params).await?;
        let Some(invoice) = listed
            .invoices
            .into_iter()
            .find(|i| hex32(&i.payment_hash).as_ref() == Some(payment_hash))
        else {
            return Ok(None);
        };
        let state = state_of(&invoice, payment_hash)?;
        Ok(Some((invoice, state)))
    }

    async fn send(
        &self,
        bolt11: &str,
        payment_hash: PaymentHash,
        amount_msat: u64,
        explicit_msat: Option<u64>,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        let timeouts = self.rest.timeouts;
        let params = PayParams {
            bolt11,
            amount_msat: explicit_msat,
            maxfee: max_fee_msat,
            retry_for: u16::try_from(ceil_secs(timeouts.payment).max(1)).unwrap_or(u16::MAX),
        };
        // `pay` gives up by itself after `retry_for`; allow one request timeout for its answer.
        let why = match self.rpc("pay", &params, timeouts.payment + timeouts.request).await {
            Err(t) if !t.may_have_reached_node() => return Err(t.payment_error()),
            Err(t) => Unresolved::Lost(t.describe()),
            Ok(Ok(body)) => match decode::<PayAnswer>(&body) {
                Ok(paid) if paid.status == "complete" => {
                    return proven_payment(
                        &paid.payment_preimage,
                        &payment_hash,
                        paid.amount_msat.unwrap_or(amount_msat),
                        fee(paid.amount_sent_msat, paid.amount_msat),
                    );
                }
                Ok(paid) if paid.status == "failed" => {
                    return Err(LightningError::PaymentFailed("the node reports failure".into()));
                }
                Ok(_) => Unresolved::Lost("the node reports the payment pending".into()),
                Err(e) => Unresolved::Lost(format!("an unreadable answer ({e})")),
            },
            Ok(Err(error)) => match error.kind() {
                Kind::Auth => return Err(LightningError::AuthRefused(error.message)),
                Kind::InvalidParams => return Err(LightningError::InvalidRequest(error.message)),
                Kind::Unavailable => Unresolved::Lost(error.message),
                Kind::Other => match error.code {
                    Some(code) if FINAL_PAY_FAILURES.contains(&code) => {
                        return Err(LightningError::PaymentFailed(error.message));
                    }
                    Some(_) => Unresolved::Refused(error.message),
                    // No JSON-RPC code: CLNRest itself failed, maybe after lightningd started.
                    None => Unresolved::Lost(error.message),
                },
            },
        };
        settle_unresolved(why, self.list_pays(&payment_hash).await)
    }

    /// What `listpays` says about the payment of `payment_hash`.
    async fn list_pays(&self, payment_hash: &PaymentHash) -> Result<Lookup, LightningError> {
        let params = ByHash { payment_hash: hex::encode(payment_hash) };
        let listed: ListPays = self.read("listpays", &params).await?;
        let pays: Vec<_> = listed
            .pays
            .into_iter()
            .filter(|p| hex32(&p.payment_hash).as_ref() == Some(payment_hash))
            .collect();
        if let Some(done) = pays.iter().find(|p| p.status == "complete") {
            return Ok(Lookup::Final(proven_payment(
                done.preimage.as_deref().unwrap_or_default(),
                payment_hash,
                done.amount_msat.unwrap_or(0),
                fee(done.amount_sent_msat, done.amount_msat),
            )));
        }
        Ok(match pays.first() {
            None => Lookup::NotFound,
            Some(_) if pays.iter().all(|p| p.status == "failed") => Lookup::Final(Err(
                LightningError::PaymentFailed("the node reports the payment failed".into()),
            )),
            Some(_) => Lookup::Pending,
        })
    }
}

/// What the sender paid on top of the amount delivered.
fn fee(sent: Option<u64>, delivered: Option<u64>) -> u64 {
    sent.unwrap_or(0).saturating_sub(delivered.unwrap_or(0))
}

/// The state of a CLN invoice known to be for `payment_hash`.
fn state_of(invoice: &Invoice, payment_hash: &PaymentHash) -> Result<InvoiceState, LightningError> {
    match invoice.status.as_str() {
        "paid" => proven_settlement(
            invoice.payment_preimage.as_deref().and_then(hex32),
            payment_hash,
            invoice.amount_received_msat.unwrap_or(0),
        ),
        "expired" => Ok(InvoiceState::Expired),
        "unpaid" if invoice.expires_at.is_some_and(passed) => Ok(InvoiceState::Expired),
        "unpaid" => Ok(InvoiceState::Open),
        _ => Err(LightningError::InvalidResponse("unknown invoice status".into())),
    }
}

#[async_trait]
impl LightningBackend for ClnBackend {
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
        Ok(self.lookup(payment_hash).await?.map_or(InvoiceState::Unknown, |(_, state)| state))
    }

    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError> {
        let (invoice, explicit) = check_payable(bolt11, None)?;
        let amount = invoice.amount_msat.unwrap_or(0);
        self.send(bolt11, invoice.payment_hash, amount, explicit, max_fee_msat).await
    }

    /// Reads the invoice once, then blocks in `waitinvoice` (which returns when it is paid or
    /// expires) for at most `timeout`, and reads the invoice again for its proof.
    async fn wait_for_settlement(
        &self,
        payment_hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceState, LightningError> {
        let Some((invoice, state)) = self.lookup(payment_hash).await? else {
            return Ok(InvoiceState::Unknown);
        };
        if !matches!(state, InvoiceState::Open) {
            return Ok(state);
        }
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            return poll_for_settlement(timeout, || self.invoice_state(payment_hash)).await;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(state);
        }
        let params = ByLabel { label: &invoice.label };
        match self.rpc("waitinvoice", &params, left).await {
            Err(Transport::Timeout(_)) => Ok(InvoiceState::Open),
            Err(t) => Err(t.read_error()),
            Ok(Err(error)) if error.code == Some(WAIT_EXPIRED) => Ok(InvoiceState::Expired),
            Ok(Err(error)) if error.kind() != Kind::Other || error.code.is_none() => {
                Err(error.read_error())
            }
            // Paid, or deleted (-1): the listing is the authority, and carries the preimage.
            Ok(_) => {
                let left = deadline.saturating_duration_since(Instant::now());
                poll_for_settlement(left, || self.invoice_state(payment_hash)).await
            }
        }
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
        self.send(bolt11, invoice.payment_hash, amount_msat, explicit, max_fee_msat).await
    }
}

/// An error CLNRest answered with.
struct NodeError {
    http: StatusCode,
    /// The JSON-RPC error code, if the body had one.
    code: Option<i64>,
    /// Sanitised text.
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Auth,
    InvalidParams,
    Unavailable,
    Other,
}

impl NodeError {
    fn kind(&self) -> Kind {
        match (self.http.as_u16(), self.code) {
            (401 | 403, _) => Kind::Auth,
            (_, Some(INVALID_PARAMS)) => Kind::InvalidParams,
            (502..=504, _) => Kind::Unavailable,
            _ => Kind::Other,
        }
    }

    fn read_error(self) -> LightningError {
        match self.kind() {
            Kind::Auth => LightningError::AuthRefused(self.message),
            Kind::InvalidParams => LightningError::InvalidRequest(self.message),
            Kind::Unavailable | Kind::Other => LightningError::Unavailable(self.message),
        }
    }
}

#[derive(Deserialize)]
struct RpcError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

#[derive(Serialize)]
struct InvoiceParams<'a> {
    /// Integer msat, or `"any"` for an amountless invoice.
    amount_msat: serde_json::Value,
    label: String,
    description: &'a str,
    expiry: u64,
}

#[derive(Deserialize)]
struct InvoiceAnswer {
    bolt11: String,
    payment_hash: String,
}

#[derive(Serialize)]
struct ByHash {
    payment_hash: String,
}

#[derive(Serialize)]
struct ByLabel<'a> {
    label: &'a str,
}

#[derive(Deserialize)]
struct ListInvoices {
    invoices: Vec<Invoice>,
}

#[derive(Deserialize)]
struct Invoice {
    label: String,
    payment_hash: String,
    status: String,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default, with = "lenient_u64::option")]
    amount_received_msat: Option<u64>,
    #[serde(default)]
    payment_preimage: Option<String>,
}

#[derive(Serialize)]
struct PayParams<'a> {
    bolt11: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount_msat: Option<u64>,
    maxfee: u64,
    retry_for: u16,
}

#[derive(Deserialize)]
struct PayAnswer {
    #[serde(default)]
    payment_preimage: String,
    #[serde(default)]
    status: String,
    #[serde(default, with = "lenient_u64::option")]
    amount_msat: Option<u64>,
    #[serde(default, with = "lenient_u64::option")]
    amount_sent_msat: Option<u64>,
}

#[derive(Deserialize)]
struct ListPays {
    pays: Vec<Pay>,
}

#[derive(Deserialize)]
struct Pay {
    payment_hash: String,
    status: String,
    #[serde(default)]
    preimage: Option<String>,
    #[serde(default, with = "lenient_u64::option")]
    amount_msat: Option<u64>,
    #[serde(default, with = "lenient_u64::option")]
    amount_sent_msat: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let hash = [7u8; 32];
            if let Ok(listed) = decode::<ListInvoices>(&bytes) {
                for invoice in &listed.invoices {
                    let _ = state_of(invoice, &hash);
                }
            }
            if let Ok(paid) = decode::<PayAnswer>(&bytes) {
                let _ = proven_payment(&paid.payment_preimage, &hash, 0, fee(paid.amount_sent_msat, paid.amount_msat));
            }
            let _ = decode::<ListPays>(&bytes);
            let _ = decode::<InvoiceAnswer>(&bytes);
            let _ = decode::<RpcError>(&bytes);
        }

        #[test]
        fn arbitrary_json_shaped_invoices_never_panic(
            status in "[a-z]{0,8}",
            preimage in "[0-9a-fA-Fx]{0,66}",
            amount in "-?[0-9]{0,22}(msat)?",
        ) {
            let hash = [7u8; 32];
            let text = format!(
                r#"{{"invoices":[{{"label":"l","payment_hash":"{}","status":"{status}","payment_preimage":"{preimage}","amount_received_msat":"{amount}","expires_at":1}}]}}"#,
                hex::encode(hash)
            );
            if let Ok(listed) = decode::<ListInvoices>(text.as_bytes()) {
                let _ = state_of(&listed.invoices[0], &hash);
            }
        }
    }

    #[test]
    fn fee_is_what_was_sent_beyond_the_amount() {
        assert_eq!(fee(Some(1_010), Some(1_000)), 10);
        assert_eq!(fee(Some(900), Some(1_000)), 0);
        assert_eq!(fee(None, Some(1_000)), 0);
    }
}
