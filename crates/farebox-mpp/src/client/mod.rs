//! [`MppWallet`] (feature `client`): pays MPP `Payment` challenges, for `farebox-client`'s
//! middleware. Each method × intent is paid by its own `Payer`, next to its wire module:
//!
//! | pair | paid by |
//! |---|---|
//! | `lightning` / `charge` | `lightning/charge/client.rs`: the invoice, with the wallet's node |
//! | `evm` / `charge` | `evm/charge/client.rs`: an EIP-3009 authorization, signed |
//! | `evm` / `session` | `evm/session/client.rs`: a payment channel and its vouchers |
//! | `lightning` / `session` | `lightning/session/client.rs`: a prepaid balance and its bearer proof |
//!
//! The proof is `Authorization: Payment <b64url credential>`. With
//! [`MppWallet::evm_sessions`] / [`MppWallet::lightning_sessions`] the wallet also pays
//! `intent="session"` challenges, and prefers them to charges: one deposit, many requests (see
//! [`session`]). [`MppWallet::sessions`] is a handle to close them.

pub mod session;

use std::any::Any;
use std::sync::{Arc, OnceLock};

use crate::evm::charge::TokenName;
use crate::evm::charge::client::EvmChargePayer;
use crate::evm::session::client::EvmSessionPayer;
use crate::lightning::charge::client::LightningChargePayer;
use crate::lightning::session::client::LightningSessionPayer;
use crate::{Challenge, Credential};
use async_trait::async_trait;
use farebox_core::Money;
use farebox_evm::{Address, PrivateKeySigner};
use farebox_lightning::LightningBackend;
use http::{HeaderMap, HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest::Url;

use self::session::{
    ClosedSession, EvmSessionPolicy, LightningSessionPolicy, SessionBook, SharedBook,
};
use farebox_wallet::ClientError;
use farebox_wallet::{Offer, PaymentRequired, Proof, Wallet};

/// Pays MPP `charge` challenges over Lightning and/or EVM tokens, and `session` challenges
/// when sessions are enabled.
pub struct MppWallet {
    lightning: Option<(Arc<dyn LightningBackend>, u64)>,
    evm: Option<PrivateKeySigner>,
    evm_sessions: Option<EvmSessionPolicy>,
    lightning_sessions: Option<LightningSessionPolicy>,
    /// EIP-712 domains of tokens whose challenges do not name theirs.
    domains: Vec<(u64, Address, TokenName)>,
    book: SharedBook,
    /// The payers of what was configured, made on first use; each builder method drops them,
    /// so that they are made again from the configuration as it then is.
    payers: OnceLock<Vec<Box<dyn Payer>>>,
}

impl Default for MppWallet {
    fn default() -> Self {
        MppWallet {
            lightning: None,
            evm: None,
            evm_sessions: None,
            lightning_sessions: None,
            domains: Vec::new(),
            book: Arc::new(SessionBook::new()),
            payers: OnceLock::new(),
        }
    }
}

/// The intent every method's sessions share: offered before charges (one deposit, many
/// requests).
const SESSION: &str = "session";

/// What a payer's offer carries to its payment (the payer's own type, downcast by it).
pub(crate) type Details = dyn Any + Send + Sync;

/// The downcast of an offer's details by the payer that made it.
pub(crate) fn details_of<T: 'static>(details: &Details) -> Result<&T, ClientError> {
    details
        .downcast_ref::<T>()
        .ok_or_else(|| ClientError::PaymentFailed("the offer was made by another MPP payer".into()))
}

/// The client side of one method × intent.
#[async_trait]
pub(crate) trait Payer: Send + Sync {
    /// `(method, intent)`, as challenges name them.
    fn names(&self) -> (&'static str, &'static str);

    /// The offer for `challenge` of `response`; `None` when this payer cannot pay it.
    fn offer(
        &self,
        challenge: Challenge,
        response: &PaymentRequired,
    ) -> Result<Option<Offer>, ClientError>;

    /// Pays an offer this payer made; `details` are its own.
    async fn pay(&self, offer: &Offer, details: &Details) -> Result<Proof, ClientError>;

    /// What the server answered a request paid under `offer`.
    async fn answered(
        &self,
        _offer: &Offer,
        _details: &Details,
        _status: StatusCode,
        _headers: &HeaderMap,
        _problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        Ok(())
    }

    /// An offer to pay a `method` request to `url` before the server asks.
    fn up_front(&self, _method: &http::Method, _url: &Url) -> Option<Offer> {
        None
    }
}

/// [`Offer::details`] of the MPP wallet: which payer made the offer, and that payer's details.
struct Tagged {
    by: (&'static str, &'static str),
    details: Box<Details>,
}

/// `offer` as the wallet hands it out: tagged with the payer that made it.
fn tagged(by: (&'static str, &'static str), mut offer: Offer) -> Offer {
    let details = std::mem::replace(&mut offer.details, Box::new(()));
    offer.details = Box::new(Tagged { by, details });
    offer
}

/// A handle on a wallet's open sessions (it shares them with the wallet).
#[derive(Clone)]
pub struct Sessions {
    book: SharedBook,
}

impl Sessions {
    /// Closes every open session; refunds are credited back to the budget and recorded in
    /// the ledger. One result per session.
    pub async fn close_all(&self) -> Vec<Result<ClosedSession, ClientError>> {
        self.book.close_all().await
    }

    /// How many sessions are open.
    pub fn open_count(&self) -> usize {
        self.book.lock().len()
    }
}

impl MppWallet {
    /// A wallet that pays nothing until a method is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pays EVM `session` challenges (needs [`Self::evm`]'s key): channels opened and topped up
    /// through `policy.rpc`.
    pub fn evm_sessions(mut self, policy: EvmSessionPolicy) -> Self {
        self.evm_sessions = Some(policy);
        self.payers.take();
        self
    }

    /// Pays Lightning `session` challenges (needs [`Self::lightning`]'s node).
    pub fn lightning_sessions(mut self, policy: LightningSessionPolicy) -> Self {
        self.lightning_sessions = Some(policy);
        self.payers.take();
        self
    }

    /// A handle to close this wallet's sessions (they are also closed when the wallet drops).
    pub fn sessions(&self) -> Sessions {
        Sessions { book: self.book.clone() }
    }

    /// Pays `lightning` charges through `node`, spending at most `max_fee_msat` in routing fees.
    pub fn lightning(mut self, node: Arc<dyn LightningBackend>, max_fee_msat: u64) -> Self {
        self.lightning = Some((node, max_fee_msat));
        self.payers.take();
        self
    }

    /// Pays `evm` charges by signing EIP-3009 authorizations with `signer`.
    pub fn evm(mut self, signer: PrivateKeySigner) -> Self {
        self.evm = Some(signer);
        self.payers.take();
        self
    }

    /// The EIP-712 domain (`name`, `version`) of the EIP-3009 token `token` on `chain_id`, for
    /// servers whose challenges do not name it (mppx's don't; its clients are configured the
    /// same way). Known USDC deployments need no entry.
    pub fn evm_domain(
        mut self,
        chain_id: u64,
        token: Address,
        name: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        let name = TokenName { name: name.into(), version: version.into() };
        self.domains.push((chain_id, token, name));
        self.payers.take();
        self
    }
}

/// What an MPP challenge sells: its intent in `realm`, its description, and for a session
/// the deposit this payment puts up.
pub(crate) fn buys(challenge: &Challenge, deposit: Option<Money>) -> String {
    let mut text = format!("{} {} in {}", challenge.method, challenge.intent, challenge.realm);
    if let Some(d) = challenge.description.as_deref().filter(|d| !d.is_empty()) {
        text.push_str(&format!(": {d}"));
    }
    if let Some(deposit) = deposit {
        text.push_str(&format!("; puts up a deposit of {deposit}, refunded as unspent at close"));
    }
    if let Some(expires) = &challenge.expires {
        text.push_str(&format!("; offer expires {expires}"));
    }
    text
}

pub(crate) fn proof(
    credential: &Credential,
    fee: Money,
    reference: String,
) -> Result<Proof, ClientError> {
    let mut value = HeaderValue::from_str(&credential.to_authorization())
        .map_err(|_| ClientError::PaymentFailed("the credential is not header-safe".into()))?;
    // A bearer secret: keep it out of Debug output and HTTP/2 header compression tables.
    value.set_sensitive(true);
    Ok(Proof { headers: vec![(AUTHORIZATION, value)], fee, reference, reusable: false })
}

impl MppWallet {
    /// The payers of what was configured: each pair whose key or node (and, for sessions, whose
    /// policy) was given.
    fn payers(&self) -> &[Box<dyn Payer>] {
        self.payers.get_or_init(|| {
            let mut payers: Vec<Box<dyn Payer>> = Vec::new();
            if let Some((node, max_fee_msat)) = &self.lightning {
                let node = node.clone();
                payers.push(Box::new(LightningChargePayer { node, max_fee_msat: *max_fee_msat }));
            }
            if let Some(signer) = &self.evm {
                let domains = self.domains.clone();
                payers.push(Box::new(EvmChargePayer { signer: signer.clone(), domains }));
            }
            if let (Some(policy), Some(signer)) = (&self.evm_sessions, &self.evm) {
                payers.push(Box::new(EvmSessionPayer {
                    policy: policy.clone(),
                    signer: signer.clone(),
                    book: self.book.clone(),
                }));
            }
            if let (Some(policy), Some((node, max_fee_msat))) =
                (&self.lightning_sessions, &self.lightning)
            {
                payers.push(Box::new(LightningSessionPayer {
                    policy: policy.clone(),
                    node: node.clone(),
                    max_fee_msat: *max_fee_msat,
                    book: self.book.clone(),
                }));
            }
            payers
        })
    }

    /// The payer that made `offer`, and its details.
    fn payer_of<'a>(
        &'a self,
        offer: &'a Offer,
    ) -> Result<(&'a dyn Payer, &'a Details), ClientError> {
        let tagged = offer.details.downcast_ref::<Tagged>().ok_or_else(|| {
            ClientError::PaymentFailed("offer was not made by the MPP wallet".into())
        })?;
        let payer = self.payers().iter().find(|p| p.names() == tagged.by).ok_or_else(|| {
            ClientError::PaymentFailed("offer was not made by this MPP wallet".into())
        })?;
        Ok((payer.as_ref(), &*tagged.details))
    }
}

#[async_trait]
impl Wallet for MppWallet {
    fn rail(&self) -> &'static str {
        "mpp"
    }

    fn offers(&self, response: &PaymentRequired) -> Result<Vec<Offer>, ClientError> {
        let (mut sessions, mut charges) = (Vec::new(), Vec::new());
        // One challenge that cannot be paid (malformed, expired, refused by the session policy)
        // does not void the others; its reason is the answer only when nothing else is payable.
        let mut refusal: Option<ClientError> = None;
        let mut skip = |e: ClientError| {
            tracing::info!(error = %e, "skipping a Payment challenge");
            refusal.get_or_insert(e);
        };
        for auth in response.challenges.iter().filter(|c| c.scheme.eq_ignore_ascii_case("Payment"))
        {
            let challenge = match Challenge::from_auth(auth) {
                Ok(challenge) => challenge,
                Err(e) => {
                    skip(ClientError::InvalidChallenge(format!("Payment challenge: {e}")));
                    continue;
                }
            };
            let named = (challenge.method.as_str(), challenge.intent.as_str());
            let Some(payer) = self.payers().iter().find(|p| p.names() == named) else { continue };
            let kind = if named.1 == SESSION { &mut sessions } else { &mut charges };
            match payer.offer(challenge, response) {
                Ok(offer) => kind.extend(offer.map(|o| tagged(payer.names(), o))),
                Err(e) => skip(e),
            }
        }
        if let (true, true, Some(refusal)) = (sessions.is_empty(), charges.is_empty(), refusal) {
            return Err(refusal);
        }
        // A session pays many requests for one deposit: preferred when one is offered.
        sessions.append(&mut charges);
        Ok(sessions)
    }

    fn attach(&self, accounts: Arc<dyn farebox_wallet::Accounts>) {
        self.book.attach(accounts);
    }

    async fn answered(
        &self,
        offer: &Offer,
        status: StatusCode,
        headers: &HeaderMap,
        problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        let Ok((payer, details)) = self.payer_of(offer) else { return Ok(()) };
        payer.answered(offer, details, status, headers, problem).await
    }

    fn up_front(&self, method: &http::Method, url: &Url) -> Option<Offer> {
        self.payers().iter().find_map(|p| p.up_front(method, url).map(|o| tagged(p.names(), o)))
    }

    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError> {
        let (payer, details) = self.payer_of(offer)?;
        payer.pay(offer, details).await
    }
}

pub(crate) fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

pub(crate) fn sensitive(
    credential: &Credential,
) -> Result<Vec<(http::HeaderName, HeaderValue)>, ClientError> {
    let mut value = HeaderValue::from_str(&credential.to_authorization())
        .map_err(|_| ClientError::PaymentFailed("the credential is not header-safe".into()))?;
    value.set_sensitive(true);
    Ok(vec![(AUTHORIZATION, value)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MppConfig, MppRail};
    use farebox_core::{Price, Rail, Resource};
    use farebox_lightning::{DevNetwork, DevNode};

    /// The 402 of an MPP server offering a Lightning charge of 21 sat.
    async fn lightning_402(network: &DevNetwork) -> PaymentRequired {
        let server = Arc::new(DevNode::random(network, 0));
        let store = Arc::new(farebox_store::MemoryStore::new());
        let rail = MppRail::new(MppConfig::new("api.example.com", [7u8; 32]), server, store)
            .expect("a valid rail");
        let resource = Resource {
            method: http::Method::GET,
            path: "/joke".into(),
            route: "/joke".into(),
            price: Price::one(Money::sats(21)),
            description: None,
            accept_payment: None,
        };
        let challenge = rail.challenge(&resource, None).await.unwrap().expect("priced");
        let lines = challenge.www_authenticate.iter().map(|v| v.to_str().unwrap());
        PaymentRequired {
            url: "http://127.0.0.1:8402/joke".parse().unwrap(),
            challenges: farebox_core::auth::parse_challenges(lines).unwrap(),
            headers: HeaderMap::new(),
            body: None,
        }
    }

    #[tokio::test]
    async fn a_method_added_after_first_use_is_offered() {
        let network = DevNetwork::new();
        let response = lightning_402(&network).await;
        let wallet = MppWallet::new().evm(PrivateKeySigner::random());
        assert!(wallet.offers(&response).unwrap().is_empty(), "no Lightning node yet");
        let node = Arc::new(DevNode::random(&network, 1_000_000));
        let wallet = wallet.lightning(node, 1_000);
        let offers = wallet.offers(&response).unwrap();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].price, Money::sats(21));
    }
}
