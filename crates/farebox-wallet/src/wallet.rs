//! The [`Wallet`] trait: the client side of a rail.
//!
//! A wallet reads a 402 response, says which of its offers it could pay ([`Offer`]), and pays one
//! into a proof: the headers to retry the request with. Choosing among offers, the budget and
//! the ledger are the middleware's job, so a new rail's wallet only speaks its protocol.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use farebox_core::Money;
use farebox_core::auth::AuthChallenge;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::error::ClientError;

/// A 402 response as wallets see it.
#[derive(Debug)]
pub struct PaymentRequired {
    /// The URL that answered 402.
    pub url: reqwest::Url,
    /// Every `WWW-Authenticate` challenge, parsed (unparseable fields are skipped).
    pub challenges: Vec<AuthChallenge>,
    /// All response headers.
    pub headers: HeaderMap,
    /// The body, when it was JSON.
    pub body: Option<serde_json::Value>,
}

/// How an offer is funded, which decides what the budget counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Funding {
    /// The price (plus fees) leaves the wallet with this payment: it counts against both the
    /// per-request limit and the total.
    PerRequest,
    /// The price is drawn from a session deposit the budget has already counted; it only has
    /// to fit the per-request limit. `deposit` is what this payment puts up now (opening the
    /// session or topping it up), counted against the total and given back, as far as it is
    /// refunded, when the session closes.
    Session { deposit: Option<Money> },
}

/// Something a wallet can pay.
pub struct Offer {
    pub rail: &'static str,
    /// The price asked.
    pub price: Money,
    /// The most the wallet may spend on top of `price` (e.g. Lightning routing fees).
    pub max_fee: Money,
    /// Paid per request, or drawn from a session deposit.
    pub funding: Funding,
    /// A line for people: what is being paid for and how.
    pub summary: String,
    /// Who is paid, as the challenge names them (a node's public key, an address), when it does.
    pub payee: Option<String>,
    /// What the price buys, as the challenge says (the route and lifetime a token is good for,
    /// the resource, a session's deposit), for people to consent to.
    pub buys: Option<String>,
    /// Wallet-private data needed to pay (the invoice, the requirements…).
    pub details: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offer")
            .field("rail", &self.rail)
            .field("price", &self.price)
            .field("max_fee", &self.max_fee)
            .field("funding", &self.funding)
            .field("summary", &self.summary)
            .field("payee", &self.payee)
            .field("buys", &self.buys)
            .finish_non_exhaustive()
    }
}

/// A payment made: what to retry with and what it cost. `Debug` leaves the headers out: they
/// are bearer secrets.
#[derive(Clone)]
pub struct Proof {
    /// Headers to add to the retried request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Fees actually paid on top of the price.
    pub fee: Money,
    /// The rail's reference (payment hash, …).
    pub reference: String,
    /// Whether the proof may be reused for later requests to the same origin (an L402 token).
    pub reusable: bool,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof")
            .field("headers", &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("fee", &self.fee)
            .field("reference", &self.reference)
            .field("reusable", &self.reusable)
            .finish()
    }
}

/// Money that came back to the wallet: a session's refund, evidenced by the wallet itself (its
/// node, the chain), never on the server's word.
#[derive(Debug, Clone)]
pub struct Refund {
    /// The session it closes (a channel or session id).
    pub session: String,
    /// The URL the session paid for.
    pub url: String,
    pub rail: &'static str,
    /// What came back.
    pub amount: Money,
    /// The evidence (a transaction hash, a payment hash).
    pub reference: String,
}

/// The books a wallet pays under, kept by the middleware: the budget and the ledger.
pub trait Accounts: Send + Sync + 'static {
    /// Gives `refund` back to the budget (off the session's deposits) and records it in the
    /// ledger, in one step.
    fn refund_session(&self, refund: &Refund);
}

/// The client side of a rail.
#[async_trait]
pub trait Wallet: Send + Sync + 'static {
    fn rail(&self) -> &'static str;

    /// The offers in `response` this wallet can pay. Invalid challenges for this rail are an
    /// error (a server bug worth reporting), challenges of other rails are ignored.
    fn offers(&self, response: &PaymentRequired) -> Result<Vec<Offer>, ClientError>;

    /// Pays `offer`.
    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError>;

    /// An offer this wallet can pay for a `method` request to `url` before the server asks:
    /// a session's next request, under a challenge of an earlier 402 for the same path that is
    /// still live, so the request goes out with its proof and costs one round trip. `None`
    /// (the default) when it has none. The middleware treats it as any offer (the policy and
    /// the budget decide; it is reserved before it is paid, committed once the server accepts
    /// it, released if the server refuses it, and then the 402 is paid the usual way).
    fn up_front(&self, _method: &http::Method, _url: &reqwest::Url) -> Option<Offer> {
        None
    }

    /// Called once when the wallet is added to a payment middleware: the accounts it pays
    /// under (a session wallet credits refunds back to them).
    fn attach(&self, _accounts: Arc<dyn Accounts>) {}

    /// The server's answer to a request retried with this wallet's proof for `offer`: status,
    /// headers (e.g. a receipt naming what a session has spent) and, for a 402, its problem
    /// body. An error (a server claiming what the wallet can disprove) is what the caller gets
    /// instead of the response.
    async fn answered(
        &self,
        _offer: &Offer,
        _status: StatusCode,
        _headers: &HeaderMap,
        _problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        Ok(())
    }
}

/// A boxed wallet is a wallet: what a [`WalletPlugin`](crate::WalletPlugin) builds.
#[async_trait]
impl Wallet for Box<dyn Wallet> {
    fn rail(&self) -> &'static str {
        (**self).rail()
    }

    fn offers(&self, response: &PaymentRequired) -> Result<Vec<Offer>, ClientError> {
        (**self).offers(response)
    }

    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError> {
        (**self).pay(offer).await
    }

    fn up_front(&self, method: &http::Method, url: &reqwest::Url) -> Option<Offer> {
        (**self).up_front(method, url)
    }

    fn attach(&self, accounts: Arc<dyn Accounts>) {
        (**self).attach(accounts)
    }

    async fn answered(
        &self,
        offer: &Offer,
        status: StatusCode,
        headers: &HeaderMap,
        problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        (**self).answered(offer, status, headers, problem).await
    }
}
