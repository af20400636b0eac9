//! The [`Rail`] trait: how a payment rail plugs into farebox.
//!
//! A rail is a value that turns a price into challenges, recognises and verifies its own
//! credentials, and settles verified payments into receipts. The server layer owns everything
//! rail-neutral: it asks *every* configured rail for its challenges and answers one 402 carrying
//! all of them; on a retry it finds which rail owns the presented credential (by auth scheme or
//! by dedicated header, both declared here) and hands it to that rail alone.
//!
//! The life of a paid request:
//!
//! ```text
//!  request ──► credential_of (core, using Rail::auth_schemes / credential_headers)
//!                 │ none                          │ one                    │ several
//!                 ▼                               ▼                        ▼
//!  402 + Rail::challenge() of every rail    Rail::verify()                400
//!                                                 │ Ok(Verified)  Err(e) ──► e.kind decides:
//!                                                 ▼                          402 + fresh challenges
//!                                           inner service                   (each rail told of the
//!                                                 │                          Refusal), 503 + …
//!                                                 │ status < 400    (status ≥ 400:
//!                                                 ▼                  Verified::release())
//!                                           Verified::settle() ──► Receipt headers on the response
//! ```
//!
//! What `verify` hands on is a [`Verified`] payment whose [`Settlement`] is an object of the rail
//! that verified it: the rail's private data and the code that settles or releases it, consumed
//! by either. No other rail can be handed it, and nothing is downcast.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::auth::{self, AuthCredential};
use crate::error::PaymentError;
use crate::money::Money;
use crate::resource::Resource;

/// Largest credential header value any rail is handed; larger ones are refused unread.
pub const MAX_CREDENTIAL_LEN: usize = 16 * 1024;

/// What a rail offers in a 402 response.
#[derive(Debug, Clone, Default)]
pub struct Challenge {
    /// `WWW-Authenticate` field values, in the order they must be sent (one field line each).
    pub www_authenticate: Vec<HeaderValue>,
    /// Other headers this rail needs on the 402 (e.g. x402 v2's `PAYMENT-REQUIRED`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Members merged into the 402's problem+json body (e.g. x402 v1's `accepts`). A rail should
    /// use names unlikely to collide with other rails'.
    pub body_members: Vec<(String, Value)>,
}

/// A credential as found in a request, before its rail has parsed it. Its `Debug` output
/// names the header and scheme only: the value is a bearer secret.
#[derive(Clone)]
pub struct PresentedCredential {
    /// The header it came in (`authorization`, or a rail's dedicated header).
    pub header: HeaderName,
    /// For `Authorization`: the parsed scheme and parameters.
    pub auth: Option<AuthCredential>,
    /// The whole header field value, as sent.
    pub value: String,
}

impl fmt::Debug for PresentedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedCredential")
            .field("header", &self.header)
            .field("scheme", &self.auth.as_ref().map(|a| a.scheme.as_str()))
            .field("value", &format_args!("<{} bytes redacted>", self.value.len()))
            .finish()
    }
}

/// A payment a rail has verified, to be settled once the request has been served
/// ([`Verified::settle`]) or given back when it is not ([`Verified::release`]).
pub struct Verified {
    /// What was paid.
    pub amount: Money,
    /// Who paid, when the rail knows (an address; `None` for bearer proofs such as L402).
    pub payer: Option<String>,
    /// The rail's reference for this payment (payment hash, authorization nonce, …).
    pub reference: String,
    /// The verifying rail's own object: what it needs to settle, and how.
    settlement: Box<dyn Settlement>,
}

impl Verified {
    /// A payment for the request, settled or released by `settlement`.
    pub fn new(
        amount: Money,
        payer: Option<String>,
        reference: impl Into<String>,
        settlement: impl Settlement,
    ) -> Self {
        Verified { amount, payer, reference: reference.into(), settlement: Box::new(settlement) }
    }

    /// This payment as a payment-control message ([`Verdict::Control`]).
    pub fn control(self) -> Verdict {
        Verdict::Control(self)
    }

    /// Settles the payment (see [`Settlement::settle`]).
    pub async fn settle(self, resource: &Resource) -> Result<Receipt, PaymentError> {
        let Verified { amount, reference, settlement, .. } = self;
        settlement.settle(resource, amount, reference).await
    }

    /// Gives back what verifying reserved: the request was not served (see
    /// [`Settlement::release`]).
    pub async fn release(self, resource: &Resource) {
        self.settlement.release(resource).await
    }
}

/// The rail's half of a [`Verified`] payment: its private data (a signed authorization, a
/// reserved nonce, a session debit) and the code that settles or releases it. Each rail has its
/// own type and consumes it, as rustls' `ActiveKeyExchange` is consumed by completing the
/// exchange: a payment is settled or released once, by the rail that verified it.
#[async_trait]
pub trait Settlement: Send + Sync + 'static {
    /// Settles the payment of `amount` known by `reference` and returns the receipt for the
    /// response. For rails whose proof is already final (a Lightning preimage) this only builds
    /// the receipt. An error is what the client gets instead of the content.
    async fn settle(
        self: Box<Self>,
        resource: &Resource,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError>;

    /// Releases what verifying reserved when the request is not served (the handler failed), so
    /// that the same payment can be retried. Default: nothing to release.
    async fn release(self: Box<Self>, _resource: &Resource) {}
}

/// A [`Settlement`] with nothing to do but write a receipt without headers: for test rails and
/// for proofs that are final and need no receipt of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiptOnly;

#[async_trait]
impl Settlement for ReceiptOnly {
    async fn settle(
        self: Box<Self>,
        _resource: &Resource,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError> {
        Ok(Receipt::new(amount, reference, Vec::new()))
    }
}

/// What [`Rail::verify`] found a credential to be.
#[derive(Debug)]
pub enum Verdict {
    /// Payment for the request: settled around the handler, as the route's [`SettleTiming`]
    /// says.
    Payment(Verified),
    /// A payment-control message (a session top-up or close) rather than payment for the
    /// request: the server settles it and answers itself with [`Receipt::answer`]; the protected
    /// handler is not called and nothing is billed for the resource.
    Control(Verified),
}

impl Verdict {
    /// The verified payment, whatever it is for.
    pub fn into_verified(self) -> Verified {
        match self {
            Verdict::Payment(v) | Verdict::Control(v) => v,
        }
    }
}

impl From<Verified> for Verdict {
    fn from(payment: Verified) -> Self {
        Verdict::Payment(payment)
    }
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("amount", &self.amount)
            .field("payer", &self.payer)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// Proof of a settled payment, returned to the client with the response.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// What was paid.
    pub amount: Money,
    /// The rail's reference (payment hash, transaction hash, …).
    pub reference: String,
    /// Headers to add to the successful response (e.g. `Payment-Receipt`, `PAYMENT-RESPONSE`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// For a payment-control message ([`Verdict::Control`]): the answer the server sends in
    /// place of the handler's. `None` answers `204 No Content`.
    pub answer: Option<ControlAnswer>,
}

impl Receipt {
    /// A receipt carrying `headers`.
    pub fn new(
        amount: Money,
        reference: impl Into<String>,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        Receipt { amount, reference: reference.into(), headers, answer: None }
    }

    /// Sets the answer to a payment-control message.
    pub fn with_answer(mut self, answer: ControlAnswer) -> Self {
        self.answer = Some(answer);
        self
    }
}

/// What the server answers to a payment-control message (e.g. `200 {"status":"closed",…}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlAnswer {
    pub status: http::StatusCode,
    /// A JSON body, when the protocol defines one.
    pub body: Option<Value>,
}

/// Why a request is answered with fresh challenges after a credential was refused: handed to
/// every rail's [`Rail::challenge`], so that the rail whose credential it was can say why in its
/// own wire format (x402's `error` field, say), while the other rails simply offer themselves.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// The [`Rail::name`] of the rail that refused the credential (in verify or in settle).
    pub rail: &'a str,
    /// Why.
    pub error: &'a PaymentError,
}

impl<'a> Refusal<'a> {
    /// The error, if the refusal is `rail`'s own: a rail states reasons for its own refusals
    /// only.
    pub fn of(refusal: Option<&Refusal<'a>>, rail: &str) -> Option<&'a PaymentError> {
        refusal.filter(|r| r.rail == rail).map(|r| r.error)
    }
}

/// When the server layer settles a verified payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SettleTiming {
    /// After the handler answered below 400; nothing is charged for a failed request.
    #[default]
    AfterResponse,
    /// Before the handler runs; the handler is only called once the money has moved.
    BeforeServe,
}

/// A payment rail. See the crate docs for a walk-through of writing one.
#[async_trait]
pub trait Rail: Send + Sync + 'static {
    /// A short stable name: `l402`, `x402`, `mpp`. Used in logs, receipts and metrics.
    fn name(&self) -> &'static str;

    /// `Authorization` schemes whose credentials belong to this rail (compared
    /// case-insensitively), e.g. `["L402", "LSAT"]`.
    fn auth_schemes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Request headers other than `Authorization` that carry this rail's credentials
    /// (e.g. x402's `PAYMENT-SIGNATURE`).
    fn credential_headers(&self) -> &'static [HeaderName] {
        &[]
    }

    /// The challenges for `resource`, or `Ok(None)` when this rail cannot charge any asset in its
    /// price (the route is simply not offered on this rail). `refusal` says which rail refused
    /// the request's credential and why, when one did (`None`: no credential was presented);
    /// see [`Refusal::of`].
    async fn challenge(
        &self,
        resource: &Resource,
        refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError>;

    /// Checks that `credential` pays for `resource`. Must not have side effects that charge
    /// the client; it may reserve (e.g. a nonce) so that a concurrent duplicate is refused, and
    /// gives the reservation back in [`Settlement::release`]. Takes the rail by `Arc` so that
    /// the [`Settlement`] it hands on may hold the rail it settles through.
    async fn verify(
        self: Arc<Self>,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verdict, PaymentError>;

    /// Periodic upkeep the server runs for every rail (e.g. every 10 s): resolve settlements
    /// whose outcome was unknown, close idle sessions and refund them. Default: nothing to do.
    async fn maintain(&self) -> Result<(), PaymentError> {
        Ok(())
    }

    /// How soon [`Rail::maintain`] must react to what happens on this rail's backend before
    /// money is at risk (e.g. an escrow's grace period: a payer who asked the chain to close a
    /// channel may withdraw once it has passed, so the payee must close first). The server
    /// refuses to start upkeep at an interval that does not fit well inside it. It may read the
    /// backend; an error means the deadline is unknown, and upkeep is not started. Default: no
    /// deadline.
    async fn upkeep_deadline(&self) -> Result<Option<Duration>, PaymentError> {
        Ok(None)
    }
}

/// Which rail owns the credential in `headers`, if any.
///
/// Looks at every `Authorization` field and every rail's dedicated headers. Two credentials that
/// belong to rails (or two for one rail) make the request ambiguous: a [`PaymentError`] of kind
/// `BadRequest`. Authorization schemes no rail owns (e.g. `Bearer` for the upstream API) are left
/// alone.
pub fn credential_of<'r, R: AsRef<dyn Rail> + 'r>(
    rails: &'r [R],
    headers: &HeaderMap,
) -> Result<Option<(&'r R, PresentedCredential)>, Box<UnreadableCredential<'r, R>>> {
    let mut found: Option<(&R, PresentedCredential)> = None;
    let mut take = |rail: &'r R, cred: PresentedCredential| {
        if found.is_some() {
            return Err(Box::new(UnreadableCredential {
                rail: None,
                error: PaymentError::bad_request(
                    "multiple_credentials",
                    "the request carries more than one payment credential; send exactly one",
                ),
            }));
        }
        found = Some((rail, cred));
        Ok(())
    };
    for value in headers.get_all(http::header::AUTHORIZATION) {
        // Whose credential it is comes first: an upstream's own `Bearer …` is not ours to judge,
        // however large or oddly encoded it is.
        let scheme = auth::scheme_of_bytes(value.as_bytes());
        let Some(rail) = rails.iter().find(|r| {
            r.as_ref().auth_schemes().iter().any(|s| s.as_bytes().eq_ignore_ascii_case(scheme))
        }) else {
            continue;
        };
        let unreadable = |error| Box::new(UnreadableCredential { rail: Some(rail), error });
        let text = header_text(value).map_err(unreadable)?;
        let parsed = auth::parse_credential(text).map_err(|e| {
            unreadable(PaymentError::invalid(
                "malformed_credential",
                format!("Authorization header: {e}"),
            ))
        })?;
        take(
            rail,
            PresentedCredential {
                header: http::header::AUTHORIZATION,
                auth: Some(parsed),
                value: text.to_string(),
            },
        )?;
    }
    for rail in rails {
        for name in rail.as_ref().credential_headers() {
            for value in headers.get_all(name) {
                let text = header_text(value)
                    .map_err(|error| Box::new(UnreadableCredential { rail: Some(rail), error }))?;
                take(
                    rail,
                    PresentedCredential {
                        header: name.clone(),
                        auth: None,
                        value: text.to_string(),
                    },
                )?;
            }
        }
    }
    Ok(found)
}

/// A payment credential the request carries but that cannot be taken as it is: too large, not
/// text, not the auth grammar, or one of several.
pub struct UnreadableCredential<'r, R> {
    /// The rail whose scheme or header it came in, which the refusal's challenge should tell
    /// why (x402's `error`); `None` when the request is ambiguous (several credentials).
    pub rail: Option<&'r R>,
    pub error: PaymentError,
}

impl<R> fmt::Debug for UnreadableCredential<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnreadableCredential").field("error", &self.error).finish_non_exhaustive()
    }
}

fn header_text(value: &HeaderValue) -> Result<&str, PaymentError> {
    if value.len() > MAX_CREDENTIAL_LEN {
        return Err(PaymentError::invalid(
            "credential_too_large",
            format!("credential header larger than {MAX_CREDENTIAL_LEN} bytes"),
        ));
    }
    value.to_str().map_err(|_| {
        PaymentError::invalid("malformed_credential", "credential header is not visible ASCII")
    })
}
