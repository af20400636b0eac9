//! The plug-in point of the MPP rail: one [`Intent`] per payment method × intent (`lightning`
//! charge, `evm` session, …), each in its method's folder (`lightning/charge/server.rs`, …).
//! The rail decodes a credential and checks its envelope once, then hands it to the intent its
//! challenge names; what the intent approved comes back as a [`Verdict`] whose settlement holds
//! the intent ([`Settles`]), so a payment can only be settled by the intent that verified it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::{Money, PaymentError, Receipt, Resource, Settlement, Verdict, Verified};
use http::HeaderValue;

use crate::credential::Credential;
use crate::problem;

/// One payment method × intent the rail offers.
#[async_trait]
pub(crate) trait Intent: Send + Sync + 'static {
    /// `(method, intent)`, as challenges and credentials name them.
    fn names(&self) -> (&'static str, &'static str);

    /// This intent's challenge line for `resource`; `None` when it cannot charge the route's
    /// price (another asset, an amount it cannot express).
    async fn challenge(&self, resource: &Resource) -> Result<Option<HeaderValue>, PaymentError>;

    /// Verifies a credential for this intent whose challenge id and realm the rail has
    /// checked, at `now` (Unix seconds).
    async fn approve(
        self: Arc<Self>,
        resource: &Resource,
        cred: &Credential,
        now: u64,
    ) -> Result<Verdict, PaymentError>;

    /// The checks of a one-off charge that need no backend (no replay reservation, no chain):
    /// what [`crate::MppRail::check_credential`] answers. Sessions are not charges.
    fn check(
        &self,
        _resource: &Resource,
        _cred: &Credential,
        _now: u64,
    ) -> Result<Money, PaymentError> {
        Err(problem::method_unsupported("a session credential is not a charge"))
    }

    /// Upkeep ([`farebox_core::Rail::maintain`]): reconciling, watching, closing, settling.
    async fn maintain(&self) -> Result<(), PaymentError> {
        Ok(())
    }

    /// Closes this intent's sessions idle for `idle` (or past their own idle timeout) and
    /// finishes interrupted closes: how many were closed.
    async fn close_idle(&self, _idle: Duration) -> Result<usize, PaymentError> {
        Ok(0)
    }

    /// How soon upkeep must run for this intent's money to be safe, if it matters.
    async fn upkeep_deadline(&self) -> Result<Option<Duration>, PaymentError> {
        Ok(None)
    }
}

/// The typed half of an intent: how what it verified (`Held`) is settled or given back.
#[async_trait]
pub(crate) trait Settles: Send + Sync + 'static {
    /// What verification hands to settlement.
    type Held: Send + Sync + 'static;

    async fn settle(
        &self,
        held: Self::Held,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError>;

    /// The request was not served: give back what verification took.
    async fn release(&self, held: Self::Held);
}

/// A credential an intent accepted: what it pays, and what its settlement needs.
pub(crate) struct Approved<H> {
    amount: Money,
    payer: Option<String>,
    reference: String,
    held: H,
    /// A payment-control message (a session top-up or close), answered without the handler.
    control: bool,
}

impl<H: Send + Sync + 'static> Approved<H> {
    /// Payment for the request.
    pub fn payment(amount: Money, payer: Option<String>, reference: String, held: H) -> Self {
        Approved { amount, payer, reference, held, control: false }
    }

    /// A payment-control message (a session top-up or close).
    pub fn control(amount: Money, payer: Option<String>, reference: String, held: H) -> Self {
        Approved { amount, payer, reference, held, control: true }
    }

    /// The verdict, settled or released by `intent`.
    pub fn into_verdict<I: Settles<Held = H>>(self, intent: Arc<I>) -> Verdict {
        let settling = Settling { intent, held: self.held };
        let verified = Verified::new(self.amount, self.payer, self.reference, settling);
        if self.control { Verdict::Control(verified) } else { Verdict::Payment(verified) }
    }
}

/// A payment verified by an intent, owned by the server until it settles or releases it.
struct Settling<I: Settles> {
    intent: Arc<I>,
    held: I::Held,
}

#[async_trait]
impl<I: Settles> Settlement for Settling<I> {
    async fn settle(
        self: Box<Self>,
        _resource: &Resource,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError> {
        self.intent.settle(self.held, amount, reference).await
    }

    async fn release(self: Box<Self>, _resource: &Resource) {
        self.intent.release(self.held).await
    }
}
