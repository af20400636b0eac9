//! The server side of Lightning sessions (`method="lightning", intent="session"`): a prepaid
//! balance, paid once by a deposit invoice and drawn on with the deposit's preimage as a bearer
//! secret.
//!
//! **Accounting.** One [`SessionRecord`] per session (namespace [`NAMESPACE`], key the deposit's
//! payment hash in hex): `deposit` (= `accepted`) is what was paid in, in msat; `spent` what
//! served requests consumed; `settled` what the server kept at close. Changes are
//! compare-and-swaps, debits are persisted before the handler runs and credited back when it
//! fails.
//!
//! **Verification**, per action (the envelope's id and realm already checked):
//! - `open`: the challenge is unexpired (`lightning/challenge-expired`) and unused — it is
//!   reserved in the [`ReplayStore`](farebox_core::ReplayStore) (`lightning/unknown-challenge`
//!   once used); `sha256(preimage)` is the challenge's payment hash (`lightning/invalid-preimage`);
//!   the return invoice is an amountless BOLT11 on the deposit's network that outlives the idle
//!   timeout (`lightning/invalid-return-invoice`). The session is created with the challenge's
//!   `depositAmount` and this request's price is debited.
//! - `bearer`: `sha256(preimage)` is the session id, the session is open and not idle past its
//!   timeout (an idle session is closed and refunded first: `lightning/session-closed`), and the
//!   balance covers the price (`lightning/insufficient-balance` with `sessionId`, `balanceSpent`
//!   and `balanceRequired`; the fresh 402 carries a deposit invoice to top up with). The
//!   challenge echoed may have expired: a bearer's proof is the preimage.
//! - `topUp`: a fresh, unused challenge whose payment hash is `sha256(topUpPreimage)`; its
//!   deposit is added. Answered `200 {"status":"ok"}` without the handler.
//! - `close`: `sha256(preimage)` is the session id; the session is marked closing, what is left
//!   is paid once to the return invoice, and the answer is `200 {"status":"closed",
//!   "refundSats":N,"refundStatus":…}` without the handler.
//!
//! [`crate::MppRail::close_idle_sessions`] closes and refunds sessions idle past the timeout, and
//! finishes closes interrupted before their refund was claimed.
//!
//! **A refund is paid at most once.** Closes race: the client's close (twice, say, on a retry),
//! the idle close of a bearer request, the upkeep tick, on any number of instances sharing the
//! store. Whoever moves the record from "no refund" to `refundStatus: pending` (one
//! compare-and-swap, which also marks the session closing and fixes the amount) is the only one
//! who pays; the others wait briefly for its outcome and report it. The intent is recorded before
//! the payment, so a crash between paying and recording cannot lead to a second payment: the
//! backend cannot look outgoing payments up, so a claim whose outcome was never recorded is
//! marked `unknown` by the upkeep after [`LightningSessionConfig::refund_claim_timeout`] and
//! left to the operator (logged as an error), never paid again. A payment whose outcome the
//! backend reports as unknown is recorded the same way. `pending` and `unknown` are farebox's
//! `refundStatus` values beside the draft's `succeeded`, `failed` and `skipped`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use farebox_core::store::{Update, update_session};
use farebox_core::{
    ControlAnswer, Money, PaymentError, SessionRecord, SessionStatus, SessionStore,
};
use farebox_lightning::{InvoiceRequest, LightningError, PaymentHash, bolt11, preimage_matches};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::lightning::node::LightningNode;
use crate::lightning::session::{
    self as lightning_session, LightningSessionRequest, RefundStatus, SessionPayload, closed_body,
};
use crate::problem::ProblemType;
use crate::rail::envelope::{Envelope, receipt_header, unexpired};
use crate::rail::intent::{Approved, Intent, Settles};
use crate::receipt::PaymentReceipt;
use crate::time;

/// The session-store namespace of Lightning sessions.
pub const NAMESPACE: &str = "mpp-lightning-session";
/// The replay namespace of used open / top-up challenges.
const CHALLENGES: &str = "mpp-lightning-session-challenge";

/// The `lightning` session method's policy.
#[derive(Debug, Clone)]
pub struct LightningSessionConfig {
    /// The deposit asked for, in satoshis; `None`: `deposit_units` times the route's price.
    pub deposit_sat: Option<u64>,
    pub deposit_units: u64,
    /// Inactivity after which the server closes a session and refunds it (the draft
    /// recommends 5 minutes).
    pub idle_timeout: Duration,
    /// The most the server spends in routing fees on a refund.
    pub max_refund_fee_msat: u64,
    /// How long after a refund was claimed the upkeep stops waiting for the claimant (which may
    /// have crashed, perhaps after paying) and records the refund as `unknown`. Longer than any
    /// payment attempt of the backend.
    pub refund_claim_timeout: Duration,
}

impl LightningSessionConfig {
    /// The field that cannot work, and why: the rail refuses to build with it.
    pub(crate) fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.deposit_sat == Some(0) {
            return Some(("deposit_sat", "must be at least one satoshi"));
        }
        if self.deposit_sat.is_none() && self.deposit_units == 0 {
            return Some(("deposit_units", "must be at least 1 (one request's worth)"));
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return Some(("idle_timeout", "must be at least one second"));
        }
        if self.refund_claim_timeout.is_zero() {
            return Some(("refund_claim_timeout", "must be longer than zero"));
        }
        None
    }
}

impl Default for LightningSessionConfig {
    fn default() -> Self {
        LightningSessionConfig {
            deposit_sat: None,
            deposit_units: 20,
            idle_timeout: Duration::from_secs(300),
            max_refund_fee_msat: 10_000,
            refund_claim_timeout: Duration::from_secs(600),
        }
    }
}

/// The `lightning` session, offered on `node` under `config`.
pub(crate) struct LightningSession {
    pub env: Arc<Envelope>,
    pub node: Arc<LightningNode>,
    pub config: LightningSessionConfig,
    pub sessions: Arc<dyn SessionStore>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionData {
    return_invoice: String,
    /// What the close refunds, set when the refund is claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refund_sat: Option<u64>,
    /// [`RefundStatus`]: `pending` from the claim until the outcome is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refund_status: Option<String>,
    /// Unix seconds of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refund_claimed_at: Option<u64>,
}

/// Who pays a session's refund, as the claiming compare-and-swap decided.
enum Claim {
    /// This caller: pay `.0` sat to the return invoice `.1`.
    Mine(u64, String),
    /// Nothing to pay; the session is closed.
    Done(u64, RefundStatus),
    /// Another caller claimed it (or it is closed, or not open when only open ones were asked).
    Taken,
}

/// How long a close waits for another close's refund to be recorded before answering `pending`.
const CLAIMANT_WAIT: Duration = Duration::from_secs(5);

fn data_of(record: &SessionRecord) -> Result<SessionData, PaymentError> {
    serde_json::from_str(&record.data)
        .map_err(|e| PaymentError::internal("mpp_session_state", format!("session record: {e}")))
}

fn id_of(hash: &PaymentHash) -> String {
    hex::encode(hash)
}

/// What verifying a Lightning session credential hands to its settlement.
#[derive(Debug)]
pub(crate) enum Held {
    Debit { session: PaymentHash, price_msat: u64, spent_msat: u128, deposit_msat: u128 },
    TopUp { session: PaymentHash, deposit_msat: u128 },
    Close { session: PaymentHash },
}

impl LightningSession {
    /// Verifies a Lightning session credential.
    async fn verify(
        &self,
        resource: &farebox_core::Resource,
        cred: &crate::Credential,
        now: u64,
    ) -> Result<Approved<Held>, PaymentError> {
        let ch = &cred.challenge;
        let request = crate::challenge::decode_request(&ch.request)
            .ok()
            .and_then(|r| LightningSessionRequest::from_json(&r).ok())
            .ok_or_else(|| {
                ProblemType::LightningUnknownChallenge
                    .error("the challenge request is not a Lightning session request")
            })?;
        let payload = SessionPayload::from_json(&cred.payload).map_err(|e| {
            ProblemType::LightningMalformedCredential.error(format!("session payload: {e}"))
        })?;
        let price_msat = || {
            resource.price.in_bitcoin().and_then(Money::as_msat).ok_or_else(|| {
                ProblemType::LightningUnknownChallenge.error("this route has no Lightning price")
            })
        };
        match payload {
            SessionPayload::Open { preimage, return_invoice } => {
                let price = price_msat()?;
                let expires = self.fresh_challenge(cred, now)?;
                if !self.node.paid(&preimage, &request.payment_hash).await? {
                    return Err(invalid_preimage());
                }
                let deposit_sat = request.deposit_sat.ok_or_else(|| {
                    ProblemType::LightningUnknownChallenge.error("the challenge names no deposit")
                })?;
                self.check_return_invoice(&return_invoice, request.deposit_invoice.as_deref())?;
                self.consume(cred, expires).await?;
                let deposit = u128::from(deposit_sat) * 1000;
                let data = SessionData { return_invoice, ..SessionData::default() };
                let record = SessionRecord {
                    status: SessionStatus::Open,
                    deposit,
                    accepted: deposit,
                    spent: 0,
                    settled: 0,
                    data: serde_json::to_string(&data).unwrap_or_default(),
                    updated_at: now,
                };
                let session = request.payment_hash;
                if !self.sessions.create_session(NAMESPACE, &id_of(&session), &record).await? {
                    return Err(ProblemType::LightningUnknownChallenge
                        .error("a session was already opened with this deposit"));
                }
                self.debit_session(session, price, now).await
            }
            SessionPayload::Bearer { session_id, preimage } => {
                if !preimage_matches(&preimage, &session_id) {
                    return Err(invalid_preimage());
                }
                self.debit_session(session_id, price_msat()?, now).await
            }
            SessionPayload::TopUp { session_id, top_up_preimage } => {
                let expires = self.fresh_challenge(cred, now)?;
                if !self.node.paid(&top_up_preimage, &request.payment_hash).await? {
                    return Err(invalid_preimage());
                }
                let added = request.deposit_sat.ok_or_else(|| {
                    ProblemType::LightningUnknownChallenge.error("the challenge names no deposit")
                })?;
                // The session must exist before the challenge is spent on it.
                self.open_session(&session_id, now).await?;
                self.consume(cred, expires).await?;
                let added = u128::from(added) * 1000;
                let deposit =
                    update_session(&*self.sessions, NAMESPACE, &id_of(&session_id), |r| {
                        if r.status != SessionStatus::Open {
                            return Err(session_closed(&session_id));
                        }
                        let mut next = r.clone();
                        next.deposit += added;
                        next.accepted += added;
                        next.updated_at = now;
                        Ok(Update::Write(next.clone(), next.deposit))
                    })
                    .await?
                    .ok_or_else(|| session_not_found(&session_id))?;
                Ok(Approved::control(
                    Money::new(farebox_core::Asset::Bitcoin, added),
                    None,
                    id_of(&session_id),
                    Held::TopUp { session: session_id, deposit_msat: deposit },
                ))
            }
            SessionPayload::Close { session_id, preimage } => {
                if !preimage_matches(&preimage, &session_id) {
                    return Err(invalid_preimage());
                }
                update_session(&*self.sessions, NAMESPACE, &id_of(&session_id), |r| {
                    if r.status == SessionStatus::Closed {
                        return Err(session_closed(&session_id));
                    }
                    let mut next = r.clone();
                    next.status = SessionStatus::Closing;
                    next.updated_at = now;
                    Ok(Update::Write(next, ()))
                })
                .await?
                .ok_or_else(|| session_not_found(&session_id))?;
                Ok(Approved::control(
                    Money::msats(0),
                    None,
                    id_of(&session_id),
                    Held::Close { session: session_id },
                ))
            }
        }
    }

    /// An unexpired challenge (open and top-up pay its invoice): its expiry.
    fn fresh_challenge(&self, cred: &crate::Credential, now: u64) -> Result<u64, PaymentError> {
        unexpired(&cred.challenge, now).map_err(|e| {
            if e.code == crate::problem::ProblemType::PaymentExpired.name() {
                ProblemType::LightningChallengeExpired.error(e.detail)
            } else {
                e
            }
        })
    }

    /// Spends an open / top-up challenge: each deposit counts once.
    async fn consume(&self, cred: &crate::Credential, expires: u64) -> Result<(), PaymentError> {
        if !self
            .env
            .store
            .reserve(CHALLENGES, &cred.challenge.id, expires.saturating_add(1))
            .await?
        {
            return Err(ProblemType::LightningUnknownChallenge
                .error("this challenge has already been used; request a new one"));
        }
        Ok(())
    }

    fn check_return_invoice(
        &self,
        invoice: &str,
        deposit_invoice: Option<&str>,
    ) -> Result<(), PaymentError> {
        let bad = |why: &str| {
            ProblemType::LightningInvalidReturnInvoice.error(format!("the return invoice {why}"))
        };
        let parsed =
            bolt11::parse_invoice(invoice).map_err(|e| bad(&format!("is not valid: {e}")))?;
        if parsed.amount_msat.is_some_and(|a| a > 0) {
            return Err(bad("must not name an amount (the refund's is the balance left)"));
        }
        if let Some(deposit) = deposit_invoice.and_then(|d| bolt11::parse_invoice(d).ok())
            && deposit.currency != parsed.currency
        {
            return Err(bad("is for another network than the deposit"));
        }
        let outlives = SystemTime::now() + self.config.idle_timeout;
        if parsed.is_expired(outlives) {
            return Err(bad("expires before the session's idle timeout"));
        }
        Ok(())
    }

    /// The session, which must be open; one idle past its timeout is closed (and refunded) now.
    async fn open_session(
        &self,
        session: &PaymentHash,
        now: u64,
    ) -> Result<SessionRecord, PaymentError> {
        let record = load(self, session).await?;
        if record.status != SessionStatus::Open {
            return Err(session_closed(session));
        }
        if now.saturating_sub(record.updated_at) > self.config.idle_timeout.as_secs() {
            if let Err(e) = self.close_lightning_session(session, now, true).await {
                tracing::warn!(code = e.code, detail = %e.detail, "could not close an idle session");
            }
            return Err(session_closed(session));
        }
        Ok(record)
    }

    async fn debit_session(
        &self,
        session: PaymentHash,
        price_msat: u64,
        now: u64,
    ) -> Result<Approved<Held>, PaymentError> {
        let _turn = self.env.locks.turn(&id_of(&session)).await;
        self.open_session(&session, now).await?;
        let price = u128::from(price_msat);
        let (spent, deposit) = update_session(&*self.sessions, NAMESPACE, &id_of(&session), |r| {
            if r.status != SessionStatus::Open {
                return Err(session_closed(&session));
            }
            if r.available() < price {
                return Err(ProblemType::LightningInsufficientBalance
                    .error(format!(
                        "the session has {} sat left, this request costs {} sat: top up",
                        r.available() / 1000,
                        price / 1000
                    ))
                    .with_member("sessionId", id_of(&session))
                    .with_member("balanceSpent", sats(r.spent))
                    .with_member("balanceRequired", sats(price)));
            }
            let mut next = r.clone();
            next.spent += price;
            next.updated_at = now;
            Ok(Update::Write(next.clone(), (next.spent, next.deposit)))
        })
        .await?
        .ok_or_else(|| session_not_found(&session))?;
        Ok(Approved::payment(
            Money::msats(price_msat),
            None,
            id_of(&session),
            Held::Debit { session, price_msat, spent_msat: spent, deposit_msat: deposit },
        ))
    }

    /// Closes the session and pays what is left to its return invoice, at most once across
    /// concurrent closes, upkeep ticks and instances (see the module docs): the refund is claimed
    /// by one compare-and-swap before anything is paid, and only the claimant pays. Another
    /// caller waits a moment for the claimant's outcome and reports it (or `pending`).
    async fn close_lightning_session(
        &self,
        session: &PaymentHash,
        now: u64,
        only_if_open: bool,
    ) -> Result<(u64, RefundStatus), PaymentError> {
        let id = id_of(session);
        let claim = update_session(&*self.sessions, NAMESPACE, &id, |r| {
            let data = data_of(r)?;
            if r.status == SessionStatus::Closed || data.refund_status.is_some() {
                return Ok(Update::Keep(Claim::Taken));
            }
            if only_if_open && r.status != SessionStatus::Open {
                return Ok(Update::Keep(Claim::Taken));
            }
            let refund_sat = u64::try_from(r.available() / 1000).unwrap_or(u64::MAX);
            let mut next = r.clone();
            next.updated_at = now;
            let mut data = data;
            data.refund_sat = Some(refund_sat);
            data.refund_claimed_at = Some(now);
            if refund_sat == 0 {
                // Nothing to pay: closed in the same step.
                data.refund_status = Some(RefundStatus::Skipped.as_str().into());
                next.status = SessionStatus::Closed;
                next.settled = next.deposit;
                next.data = serde_json::to_string(&data).unwrap_or_default();
                return Ok(Update::Write(next, Claim::Done(0, RefundStatus::Skipped)));
            }
            // Closing first (no request may draw on a balance being refunded), and the intent to
            // pay recorded before paying: whoever writes this is the only one who pays.
            data.refund_status = Some(RefundStatus::Pending.as_str().into());
            let invoice = data.return_invoice.clone();
            next.status = SessionStatus::Closing;
            next.data = serde_json::to_string(&data).unwrap_or_default();
            Ok::<_, PaymentError>(Update::Write(next, Claim::Mine(refund_sat, invoice)))
        })
        .await?
        .ok_or_else(|| session_not_found(session))?;
        let (refund_sat, invoice) = match claim {
            Claim::Mine(refund_sat, invoice) => (refund_sat, invoice),
            Claim::Done(sat, status) => return Ok((sat, status)),
            Claim::Taken => return self.refund_outcome(session).await,
        };
        let status = self.pay_refund(&id, &invoice, refund_sat).await;
        let refunded =
            if status == RefundStatus::Failed { 0 } else { u128::from(refund_sat) * 1000 };
        update_session(&*self.sessions, NAMESPACE, &id, |r| {
            let mut data = data_of(r)?;
            data.refund_status = Some(status.as_str().into());
            let mut next = r.clone();
            next.data = serde_json::to_string(&data).unwrap_or_default();
            next.status = SessionStatus::Closed;
            // What the server keeps: everything when the refund failed; when its outcome is
            // unknown, what was left counts as gone.
            next.settled = next.deposit - refunded;
            Ok::<_, PaymentError>(Update::Write(next, ()))
        })
        .await?;
        tracing::info!(session = %id, refund_sat, status = status.as_str(), "Lightning session closed");
        Ok((refund_sat, status))
    }

    /// Pays a claimed refund, once: whatever happens, it is never tried again.
    async fn pay_refund(&self, id: &str, invoice: &str, refund_sat: u64) -> RefundStatus {
        let backend = &self.node.backend;
        match backend.pay_amount(invoice, refund_sat * 1000, self.config.max_refund_fee_msat).await
        {
            Ok(_) => RefundStatus::Succeeded,
            // The money may have left: recorded as such, and never paid again automatically.
            Err(e @ LightningError::OutcomeUnknown(_)) => {
                tracing::error!(session = %id, refund_sat, error = %e, "session refund outcome unknown; not retried");
                RefundStatus::Unknown
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "session refund failed");
                RefundStatus::Failed
            }
        }
    }

    /// The refund outcome of a session someone else claimed: its status once recorded (waiting a
    /// moment for a claimant that is paying now), `pending` while the claimant is still at it.
    async fn refund_outcome(
        &self,
        session: &PaymentHash,
    ) -> Result<(u64, RefundStatus), PaymentError> {
        let mut pause = Duration::from_millis(10);
        let deadline = tokio::time::Instant::now() + CLAIMANT_WAIT;
        loop {
            let data = data_of(&load(self, session).await?)?;
            let status = data.refund_status.as_deref().and_then(RefundStatus::parse);
            match (data.refund_sat, status) {
                (Some(sat), Some(status)) if status != RefundStatus::Pending => {
                    return Ok((sat, status));
                }
                (Some(sat), Some(_)) if tokio::time::Instant::now() >= deadline => {
                    return Ok((sat, RefundStatus::Pending));
                }
                (Some(_), Some(_)) => {}
                // Only when this call asked to close open sessions only, and it is not open.
                _ => return Err(session_closed(session)),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Refunds whose claimant vanished (a crash after claiming, perhaps after paying) are
    /// recorded as `unknown` once the claim is older than the configured timeout: never paid
    /// again, left to the operator, and the session closed.
    async fn expire_refund_claim(&self, id: &str, now: u64) -> Result<bool, PaymentError> {
        let stale_before = now.saturating_sub(self.config.refund_claim_timeout.as_secs());
        let expired = update_session(&*self.sessions, NAMESPACE, id, |r| {
            let mut data = data_of(r)?;
            let pending = data.refund_status.as_deref() == Some(RefundStatus::Pending.as_str());
            if r.status != SessionStatus::Closing
                || !pending
                || data.refund_claimed_at.is_none_or(|at| at >= stale_before)
            {
                return Ok(Update::Keep(false));
            }
            data.refund_status = Some(RefundStatus::Unknown.as_str().into());
            let refunded = u128::from(data.refund_sat.unwrap_or(0)) * 1000;
            let mut next = r.clone();
            next.data = serde_json::to_string(&data).unwrap_or_default();
            next.status = SessionStatus::Closed;
            next.settled = next.deposit.saturating_sub(refunded);
            next.updated_at = now;
            Ok::<_, PaymentError>(Update::Write(next, true))
        })
        .await?;
        if expired == Some(true) {
            tracing::error!(session = %id, "a session refund was claimed but its outcome never recorded; marked unknown, not paid again");
        }
        Ok(expired == Some(true))
    }

    /// Closes and refunds Lightning sessions idle past the timeout, and finishes interrupted
    /// closes. Returns how many were closed.
    async fn close_idle_at(&self, now: u64) -> Result<usize, PaymentError> {
        let idle_before = now.saturating_sub(self.config.idle_timeout.as_secs());
        let closing =
            self.sessions.idle_sessions(NAMESPACE, SessionStatus::Closing, u64::MAX, 100).await?;
        let idle =
            self.sessions.idle_sessions(NAMESPACE, SessionStatus::Open, idle_before, 100).await?;
        let mut closed = 0;
        for (id, record) in closing.into_iter().chain(idle) {
            let Some(session) = crate::fields::parse_hash(&id) else { continue };
            let claimed = data_of(&record.value).is_ok_and(|d| d.refund_status.is_some());
            let outcome = if claimed {
                // Claimed by a close that is paying, or that crashed: never paid from here.
                self.expire_refund_claim(&id, now).await
            } else {
                self.close_lightning_session(&session, now, false).await.map(|_| true)
            };
            match outcome {
                Ok(true) => closed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(session = %id, code = e.code, "could not close an idle session")
                }
            }
        }
        Ok(closed)
    }
}

#[async_trait::async_trait]
impl Intent for LightningSession {
    fn names(&self) -> (&'static str, &'static str) {
        (lightning_session::METHOD, lightning_session::INTENT)
    }

    /// A fresh deposit invoice for `resource`, if it is priced in whole satoshis.
    async fn challenge(
        &self,
        resource: &farebox_core::Resource,
    ) -> Result<Option<http::HeaderValue>, PaymentError> {
        let Some(price_sat) = resource
            .price
            .in_bitcoin()
            .and_then(Money::as_msat)
            .filter(|m| *m > 0 && m % 1000 == 0)
            .map(|m| m / 1000)
        else {
            return Ok(None);
        };
        let deposit_sat = self
            .config
            .deposit_sat
            .unwrap_or(price_sat.saturating_mul(self.config.deposit_units))
            .max(price_sat);
        let deposit = InvoiceRequest {
            amount_msat: deposit_sat.saturating_mul(1000),
            memo: format!(
                "MPP session deposit, {}",
                farebox_lightning::bolt11::truncate_utf8(&self.env.realm, 300)
            ),
            expiry: self.env.ttl,
        };
        let invoice = self.node.invoice(deposit, "a deposit invoice").await?;
        let request = LightningSessionRequest {
            amount_sat: price_sat,
            unit_type: Some("request".into()),
            deposit_invoice: Some(invoice.bolt11),
            payment_hash: invoice.payment_hash,
            deposit_sat: Some(deposit_sat),
            idle_timeout_secs: Some(self.config.idle_timeout.as_secs()),
            description: resource.description.as_deref().map(str::to_owned),
        };
        self.env.issue(resource, self.names(), request.to_json(), false).map(Some)
    }

    async fn approve(
        self: Arc<Self>,
        resource: &farebox_core::Resource,
        cred: &crate::Credential,
        now: u64,
    ) -> Result<farebox_core::Verdict, PaymentError> {
        Ok(self.verify(resource, cred, now).await?.into_verdict(self))
    }

    /// Closes and refunds sessions idle past their timeout, and finishes interrupted closes.
    async fn maintain(&self) -> Result<(), PaymentError> {
        self.close_idle_at(time::unix_now()?).await.map(|_| ())
    }

    /// Sessions close after their own idle timeout, whatever `_idle` says.
    async fn close_idle(&self, _idle: Duration) -> Result<usize, PaymentError> {
        self.close_idle_at(time::unix_now()?).await
    }
}

#[async_trait::async_trait]
impl Settles for LightningSession {
    type Held = Held;

    /// The receipt of a debit or a top-up, or the close with its refund paid.
    async fn settle(
        &self,
        held: Held,
        amount: Money,
        _reference: String,
    ) -> Result<farebox_core::Receipt, PaymentError> {
        let now = time::format(time::unix_now()?);
        let receipt = |session: &PaymentHash| {
            PaymentReceipt::success(lightning_session::METHOD, now.clone(), id_of(session))
                .with("sessionId", id_of(session))
        };
        match &held {
            Held::Debit { session, spent_msat, deposit_msat, .. } => {
                let r = receipt(session)
                    .with("spent", sats(*spent_msat))
                    .with("balance", sats(deposit_msat - spent_msat));
                Ok(farebox_core::Receipt::new(amount, id_of(session), vec![receipt_header(&r)?]))
            }
            Held::TopUp { session, deposit_msat } => {
                let r = receipt(session).with("deposit", sats(*deposit_msat));
                Ok(farebox_core::Receipt::new(amount, id_of(session), vec![receipt_header(&r)?])
                    .with_answer(ControlAnswer {
                        status: http::StatusCode::OK,
                        body: Some(json!({"status": "ok"})),
                    }))
            }
            Held::Close { session } => {
                let (refund_sat, status) =
                    self.close_lightning_session(session, time::unix_now()?, false).await?;
                let r = receipt(session)
                    .with("refundSats", refund_sat)
                    .with("refundStatus", status.as_str());
                Ok(farebox_core::Receipt::new(amount, id_of(session), vec![receipt_header(&r)?])
                    .with_answer(ControlAnswer {
                        status: http::StatusCode::OK,
                        body: Some(closed_body(refund_sat, status)),
                    }))
            }
        }
    }

    /// Gives back the debit of a request that was not served.
    async fn release(&self, held: Held) {
        let Held::Debit { session, price_msat, .. } = &held else {
            return;
        };
        let released = update_session(&*self.sessions, NAMESPACE, &id_of(session), |r| {
            let mut next = r.clone();
            next.spent = next.spent.saturating_sub(u128::from(*price_msat));
            Ok::<_, PaymentError>(Update::Write(next, ()))
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not credit back an unserved request");
        }
    }
}

/// The record of `session`.
async fn load(m: &LightningSession, session: &PaymentHash) -> Result<SessionRecord, PaymentError> {
    let record = m.sessions.load_session(NAMESPACE, &id_of(session)).await?;
    Ok(record.ok_or_else(|| session_not_found(session))?.value)
}

fn sats(msat: u128) -> u64 {
    u64::try_from(msat / 1000).unwrap_or(u64::MAX)
}

fn invalid_preimage() -> PaymentError {
    ProblemType::LightningInvalidPreimage
        .error("sha256(preimage) does not match, or the Lightning node does not report it paid")
}

fn session_not_found(session: &PaymentHash) -> PaymentError {
    ProblemType::LightningSessionNotFound
        .error("no such session")
        .with_member("sessionId", id_of(session))
}

fn session_closed(session: &PaymentHash) -> PaymentError {
    ProblemType::LightningSessionClosed
        .error("the session is closed; open a new one")
        .with_member("sessionId", id_of(session))
}
