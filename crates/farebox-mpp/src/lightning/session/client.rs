//! The client side of Lightning sessions (`method="lightning", intent="session"`): the first
//! request pays the deposit invoice and opens the session with an amountless return invoice of
//! the wallet's own; the deposit's preimage is then a bearer proof, sent up front with every
//! later request (a reusable proof). When the balance runs out, the wallet pays the fresh
//! deposit invoice of the 402, sends a `topUp` itself, and carries on.
//!
//! What the server cannot decide: how much one session holds (the policy's cap; a top-up that
//! would pass it closes the session and opens a new one) and what came back (only what the
//! wallet's own node shows received on the return invoice is counted).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::Money;
use farebox_lightning::{InvoiceState, LightningBackend, PaymentHash, Preimage, bolt11};
use farebox_wallet::{ClientError, Funding, Offer, PaymentRequired, Proof};
use http::{HeaderMap, StatusCode};
use reqwest::Url;

use super::{INTENT, LightningSessionRequest, METHOD, SessionPayload};
use crate::client::session::{
    ClosedSession, OpenSession, SessionBook, SessionKind, SharedBook, receipt_spent, rejected,
};
use crate::client::{Details, Payer, buys, details_of, origin_of, sensitive};
use crate::{Challenge, Credential, ProblemType};

/// How the wallet opens Lightning sessions.
#[derive(Debug, Clone)]
pub struct LightningSessionPolicy {
    /// The most one session holds, deposit plus top-ups: a deposit invoice above it is refused,
    /// and a top-up that would pass it closes the session and opens a new one instead.
    pub max_deposit_sat: u64,
    /// How long the return invoice (for the refund) stays payable.
    pub return_invoice_expiry: Duration,
    /// How long, after a server says it paid the refund, the wallet's node may take to show it
    /// received; a refund it does not show by then is not counted.
    pub refund_wait: Duration,
}

impl Default for LightningSessionPolicy {
    fn default() -> Self {
        LightningSessionPolicy {
            max_deposit_sat: 100_000,
            return_invoice_expiry: Duration::from_secs(30 * 86_400),
            refund_wait: Duration::from_secs(10),
        }
    }
}

/// Pays `lightning` session challenges through `node`, under `policy`, keeping sessions in
/// `book`.
pub(crate) struct LightningSessionPayer {
    pub policy: LightningSessionPolicy,
    pub node: Arc<dyn LightningBackend>,
    pub max_fee_msat: u64,
    pub book: SharedBook,
}

/// What a `lightning` session offer carries to its payment.
struct SessionOffer {
    challenge: Challenge,
    request: LightningSessionRequest,
    url: Url,
    origin: String,
}

impl LightningSessionPayer {
    /// The Lightning session open at `origin` (not halted): its id and preimage, deposit and
    /// spent (msat).
    fn session(&self, origin: &str) -> Option<((PaymentHash, Preimage), u128, u128)> {
        let open = self.book.lock();
        open.iter().find_map(|s| match &s.kind {
            SessionKind::Lightning { id, preimage, .. } if s.origin == origin && !s.halted => {
                Some(((*id, *preimage), s.deposit.amount, s.spent))
            }
            _ => None,
        })
    }

    /// Pays a Lightning session request: from the balance, or (`deposit`) by paying the
    /// challenge's deposit invoice to open the session or top it up; a top-up that would pass
    /// the policy's cap closes the session and opens a new one instead.
    async fn pay_session(
        &self,
        deposit: bool,
        challenge: &Challenge,
        request: &LightningSessionRequest,
        url: &Url,
        origin: &str,
    ) -> Result<Proof, ClientError> {
        let (policy, node, max_fee_msat) = (&self.policy, &self.node, &self.max_fee_msat);
        let _turn = self.book.paying.lock().await;
        let mut existing = self.session(origin);
        if let (Some(((id, preimage), ..)), false) = (existing, deposit) {
            return bearer_proof(challenge, id, preimage, Money::msats(0));
        }
        let deposit_sat = lightning_deposit(policy, request)?.ok_or_else(|| {
            ClientError::InvalidChallenge("the session challenge asks no usable deposit".into())
        })?;
        if let Some(((id, _), held, _)) = existing
            && past_cap(policy, held, deposit_sat)
        {
            self.book.retire(&hex::encode(id), false).await.map_err(|e| {
                ClientError::PaymentFailed(format!("closing the session that reached its cap: {e}"))
            })?;
            existing = None;
        }
        let invoice = request.deposit_invoice.as_deref().ok_or_else(|| {
            ClientError::InvalidChallenge("the session challenge has no deposit invoice".into())
        })?;
        let parsed = bolt11::parse_invoice(invoice)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP deposit invoice: {e}")))?;
        if parsed.payment_hash != request.payment_hash
            || parsed.amount_msat != Some(deposit_sat.saturating_mul(1000))
        {
            return Err(ClientError::InvalidChallenge(
                "the deposit invoice is not the one the challenge names".into(),
            ));
        }
        let paid = node.pay(invoice, *max_fee_msat).await.map_err(ClientError::from_lightning)?;
        if !farebox_lightning::preimage_matches(&paid.preimage, &request.payment_hash) {
            return Err(ClientError::PaidWithoutProof(
                "the deposit's preimage does not match".into(),
            ));
        }
        let fee = Money::msats(paid.fee_msat);
        let (id, preimage) = match existing {
            Some(((id, preimage), ..)) => {
                // Top the open session up with the deposit just paid, then spend from it.
                let top_up =
                    SessionPayload::TopUp { session_id: id, top_up_preimage: paid.preimage };
                let payload = top_up.to_json();
                let (status, _, body) = self
                    .book
                    .control(url, METHOD, challenge.clone(), |_| payload.clone())
                    .await
                    .map_err(|e| {
                        ClientError::PaidWithoutProof(format!("sending the top-up: {e}"))
                    })?;
                if status != StatusCode::OK {
                    return Err(ClientError::PaidWithoutProof(format!(
                        "the server refused the top-up (status {status}): {}",
                        body["detail"].as_str().unwrap_or("no detail")
                    )));
                }
                let reference = hex::encode(id);
                if let Some(s) = self.book.lock().iter_mut().find(|s| s.reference() == reference) {
                    s.deposit.amount += u128::from(deposit_sat) * 1000;
                    s.url = url.clone();
                    s.challenge = challenge.clone();
                }
                (id, preimage)
            }
            None => {
                let refund = node
                    .create_amountless_invoice(
                        format!("refund of an MPP session with {}", challenge.realm),
                        policy.return_invoice_expiry,
                    )
                    .await
                    .map_err(|e| {
                        ClientError::PaidWithoutProof(format!("creating the return invoice: {e}"))
                    })?;
                let open =
                    SessionPayload::Open { preimage: paid.preimage, return_invoice: refund.bolt11 };
                self.book.lock().push(OpenSession {
                    origin: origin.to_string(),
                    url: url.clone(),
                    challenge: challenge.clone(),
                    deposit: Money::sats(deposit_sat),
                    spent: 0,
                    halted: false,
                    kind: SessionKind::Lightning {
                        id: request.payment_hash,
                        preimage: paid.preimage,
                        refund: refund.payment_hash,
                        node: node.clone(),
                        refund_wait: policy.refund_wait,
                    },
                });
                let credential = Credential::new(challenge, open.to_json());
                let headers = sensitive(&credential)
                    .map_err(|e| ClientError::PaidWithoutProof(e.to_string()))?;
                return Ok(Proof {
                    headers,
                    fee,
                    reference: hex::encode(request.payment_hash),
                    reusable: false,
                });
            }
        };
        bearer_proof(challenge, id, preimage, fee)
            .map_err(|e| ClientError::PaidWithoutProof(e.to_string()))
    }
}

#[async_trait]
impl Payer for LightningSessionPayer {
    fn names(&self) -> (&'static str, &'static str) {
        (METHOD, INTENT)
    }

    fn offer(
        &self,
        challenge: Challenge,
        response: &PaymentRequired,
    ) -> Result<Option<Offer>, ClientError> {
        let url = &response.url;
        let (policy, max_fee_msat) = (&self.policy, &self.max_fee_msat);
        let request = LightningSessionRequest::from_json(&challenge.request).map_err(|e| {
            ClientError::InvalidChallenge(format!("MPP lightning session request: {e}"))
        })?;
        let Some(deposit_sat) = lightning_deposit(policy, &request)? else {
            return Ok(None);
        };
        let origin = origin_of(url);
        let price_msat = u128::from(request.amount_sat) * 1000;
        // With a session open: spend from it while it lasts (by the receipts seen, and unless
        // the server just said it is short), else pay the 402's fresh deposit invoice to top
        // it up (or, past the cap, to open a new one). With none: pay it to open one.
        let short = response
            .body
            .as_ref()
            .and_then(|b| b["type"].as_str())
            .and_then(ProblemType::parse)
            .is_some_and(|t| t == ProblemType::LightningInsufficientBalance);
        let held = self.session(&origin).map(|(_, deposit, spent)| (deposit, spent));
        let (deposit, summary) = match held {
            Some((deposit, spent)) if deposit.saturating_sub(spent) >= price_msat && !short => (
                None,
                format!(
                    "MPP Lightning session for {}: {} from the balance",
                    challenge.realm,
                    Money::sats(request.amount_sat)
                ),
            ),
            Some((deposit, _)) if !past_cap(policy, deposit, deposit_sat) => (
                Some(Money::sats(deposit_sat)),
                format!(
                    "MPP Lightning session top-up of {} for {}",
                    Money::sats(deposit_sat),
                    challenge.realm
                ),
            ),
            _ => (
                Some(Money::sats(deposit_sat)),
                format!(
                    "MPP Lightning session for {}: {} per request from a deposit of {}",
                    challenge.realm,
                    Money::sats(request.amount_sat),
                    Money::sats(deposit_sat)
                ),
            ),
        };
        Ok(Some(Offer {
            rail: "mpp",
            price: Money::sats(request.amount_sat),
            max_fee: Money::msats(*max_fee_msat),
            payee: None,
            buys: Some(buys(&challenge, deposit.clone())),
            funding: Funding::Session { deposit },
            summary,
            details: Box::new(SessionOffer { challenge, request, url: url.clone(), origin }),
        }))
    }

    async fn pay(&self, offer: &Offer, details: &Details) -> Result<Proof, ClientError> {
        let SessionOffer { challenge, request, url, origin } = details_of(details)?;
        let top_up = matches!(&offer.funding, Funding::Session { deposit: Some(_) });
        self.pay_session(top_up, challenge, request, url, origin).await
    }

    async fn answered(
        &self,
        _offer: &Offer,
        details: &Details,
        status: StatusCode,
        headers: &HeaderMap,
        _problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        let SessionOffer { origin, .. } = details_of(details)?;
        let mut open = self.book.lock();
        if status == StatusCode::GONE {
            // Closed or unknown on the server: the next request opens a new one.
            open.retain(|s| !(s.origin == *origin && s.method() == METHOD));
            return Ok(());
        }
        if let Some(spent) = receipt_spent(headers, METHOD)
            && let Some(s) = open.iter_mut().find(|s| s.origin == *origin && s.method() == METHOD)
        {
            s.spent = s.spent.max(spent);
        }
        Ok(())
    }
}

/// A Lightning close: the refund is what the wallet's node received on the return invoice,
/// whatever the server answers.
pub(crate) async fn close(
    book: &SessionBook,
    s: &OpenSession,
) -> Result<ClosedSession, ClientError> {
    let SessionKind::Lightning { id, preimage, refund, node, refund_wait } = &s.kind else {
        unreachable!("called for Lightning sessions")
    };
    let payload = SessionPayload::Close { session_id: *id, preimage: *preimage }.to_json();
    let (status, _, body) =
        book.control(&s.url, METHOD, s.challenge.clone(), |_| payload.clone()).await?;
    let claimed_sat = body["refundSats"].as_u64().unwrap_or(0);
    let claimed = status == StatusCode::OK
        && claimed_sat > 0
        && body["refundStatus"].as_str() == Some("succeeded");
    let wait = if claimed { *refund_wait } else { Duration::ZERO };
    let received = match node.wait_for_settlement(refund, wait).await {
        Ok(InvoiceState::Settled { amount_msat, .. }) => amount_msat,
        Ok(_) => 0,
        Err(e) => {
            tracing::warn!(error = %e, "the wallet's node cannot say whether the refund arrived");
            0
        }
    };
    if received == 0 {
        if status != StatusCode::OK {
            return Err(rejected(status, &body));
        }
        if claimed {
            return Err(ClientError::RefundUnproven(format!(
                "the server says it refunded {claimed_sat} sat to the return invoice {}, which the wallet's node has not received",
                hex::encode(refund)
            )));
        }
    }
    let refunded = Money::msats(received);
    Ok(ClosedSession {
        url: s.url.to_string(),
        method: METHOD,
        session: s.reference(),
        spent: Money::new(
            s.deposit.asset.clone(),
            s.deposit.amount.saturating_sub(refunded.amount),
        ),
        refunded,
        reference: hex::encode(refund),
    })
}

/// Whether adding `deposit_sat` to a session holding `held_msat` passes the policy's cap.
fn past_cap(policy: &LightningSessionPolicy, held_msat: u128, deposit_sat: u64) -> bool {
    held_msat + u128::from(deposit_sat) * 1000 > u128::from(policy.max_deposit_sat) * 1000
}

/// The bearer proof of a Lightning session: it pays every later request too, so it is sent up
/// front until the balance runs out.
fn bearer_proof(
    challenge: &Challenge,
    id: [u8; 32],
    preimage: [u8; 32],
    fee: Money,
) -> Result<Proof, ClientError> {
    let bearer = SessionPayload::Bearer { session_id: id, preimage };
    let credential = Credential::new(challenge, bearer.to_json());
    Ok(Proof { headers: sensitive(&credential)?, fee, reference: hex::encode(id), reusable: true })
}

/// The deposit a Lightning session request asks for, if it can pay a request at all; one
/// above what a session may hold under `policy` is refused.
pub(crate) fn lightning_deposit(
    policy: &LightningSessionPolicy,
    request: &LightningSessionRequest,
) -> Result<Option<u64>, ClientError> {
    let Some(deposit) = request.deposit_sat else { return Ok(None) };
    if deposit < request.amount_sat {
        return Ok(None); // not even one request: nothing to open
    }
    if deposit > policy.max_deposit_sat {
        return Err(ClientError::SessionRefused(format!(
            "the session asks a deposit of {deposit} sat, more than the {} sat one session may hold",
            policy.max_deposit_sat
        )));
    }
    Ok(Some(deposit))
}
