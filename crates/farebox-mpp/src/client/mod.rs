//! [`MppWallet`] (feature `client`): pays MPP `Payment` challenges, for `farebox-client`'s
//! middleware: the `charge` intent, and sessions.
//!
//! - `method="lightning"`: pays the BOLT11 invoice of the request with a Lightning backend,
//!   checks the preimage against the payment hash, and answers
//!   `{"challenge": <echo>, "payload": {"preimage": "…"}}`.
//! - `method="evm"` (credential type `authorization`): signs an EIP-3009
//!   `TransferWithAuthorization` in the token's EIP-712 domain with the challenge-bound nonce
//!   `keccak256(id ‖ realm)`, `validAfter = 0`, `validBefore = expires`. Nothing moves until the
//!   server settles.
//!
//! The proof is `Authorization: Payment <b64url credential>`, good for one request.
//!
//! With [`MppWallet::evm_sessions`] / [`MppWallet::lightning_sessions`] the wallet also pays
//! `intent="session"` challenges, and prefers them to charges: one deposit, many requests (see
//! [`session`]). [`MppWallet::sessions`] is a handle to close them.

pub mod session;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::evm::charge::{self as evm_charge, EvmChargeRequest, TokenName};
use crate::evm::session::{self as evm_session, EvmSessionRequest, SessionPayload};
use crate::lightning::charge::{self as lightning_charge, LightningChargeRequest};
use crate::lightning::session::{
    self as lightning_session, LightningSessionRequest, SessionPayload as LightningSessionPayload,
};
use crate::{Challenge, Credential, ProblemType};
use async_trait::async_trait;
use farebox_core::{Asset, Money, Token};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, PrivateKeySigner, U256};
use farebox_lightning::{LightningBackend, PaymentHash, Preimage, bolt11};
use http::{HeaderMap, HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest::Url;

use self::session::{
    ClosedSession, EvmSessionPolicy, LightningSessionPolicy, OpenSession, Plan, SessionBook,
    SessionKind, SharedBook, receipt_spent,
};
use crate::evm::escrow::EscrowRpc;
use farebox_wallet::{ClientError, Overclaim};
use farebox_wallet::{Funding, Offer, PaymentRequired, Proof, Wallet};

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
        }
    }
}

enum MppOffer {
    Lightning {
        challenge: Challenge,
        request: LightningChargeRequest,
    },
    Evm {
        challenge: Challenge,
        request: EvmChargeRequest,
        valid_before: u64,
        domain: TokenName,
    },
    EvmSession {
        challenge: Challenge,
        request: EvmSessionRequest,
        url: Url,
        origin: String,
        /// The channel and the cumulative amount the payment signed, once paid.
        sent: OnceLock<(B256, u128)>,
    },
    LightningSession {
        challenge: Challenge,
        request: LightningSessionRequest,
        url: Url,
        origin: String,
    },
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
        self
    }

    /// Pays Lightning `session` challenges (needs [`Self::lightning`]'s node).
    pub fn lightning_sessions(mut self, policy: LightningSessionPolicy) -> Self {
        self.lightning_sessions = Some(policy);
        self
    }

    /// A handle to close this wallet's sessions (they are also closed when the wallet drops).
    pub fn sessions(&self) -> Sessions {
        Sessions { book: self.book.clone() }
    }

    /// Pays `lightning` charges through `node`, spending at most `max_fee_msat` in routing fees.
    pub fn lightning(mut self, node: Arc<dyn LightningBackend>, max_fee_msat: u64) -> Self {
        self.lightning = Some((node, max_fee_msat));
        self
    }

    /// Pays `evm` charges by signing EIP-3009 authorizations with `signer`.
    pub fn evm(mut self, signer: PrivateKeySigner) -> Self {
        self.evm = Some(signer);
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
        self
    }

    /// The EIP-712 domain to sign `request`'s authorization in: the challenge's, a configured
    /// one, or a known USDC deployment's.
    fn token_name(&self, request: &EvmChargeRequest) -> Option<TokenName> {
        if let Some(named) = &request.authorization {
            return Some(named.clone());
        }
        if let Some((_, _, name)) =
            self.domains.iter().find(|(c, t, _)| *c == request.chain_id && *t == request.currency)
        {
            return Some(name.clone());
        }
        farebox_evm::usdc::KNOWN
            .iter()
            .find(|d| d.chain_id == request.chain_id && d.address == request.currency)
            .map(|d| TokenName { name: d.name.into(), version: d.version.into() })
    }

    fn lightning_offer(&self, challenge: Challenge) -> Result<Option<Offer>, ClientError> {
        let Some((_, max_fee_msat)) = &self.lightning else { return Ok(None) };
        let request = LightningChargeRequest::from_json(&challenge.request)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP lightning request: {e}")))?;
        let invoice = bolt11::parse_invoice(&request.invoice)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP invoice: {e}")))?;
        if invoice.is_expired(SystemTime::now()) {
            return Err(ClientError::InvalidChallenge(
                "the MPP invoice has already expired".into(),
            ));
        }
        if invoice.payment_hash != request.payment_hash {
            return Err(ClientError::InvalidChallenge(
                "the MPP paymentHash is not the invoice's".into(),
            ));
        }
        let amount_msat = request.amount_sat.saturating_mul(1000);
        if invoice.amount_msat != Some(amount_msat) {
            return Err(ClientError::InvalidChallenge(
                "the MPP invoice does not charge the request's amount".into(),
            ));
        }
        Ok(Some(Offer {
            rail: "mpp",
            price: Money::sats(request.amount_sat),
            max_fee: Money::msats(*max_fee_msat),
            funding: Funding::PerRequest,
            summary: format!(
                "MPP Lightning charge of {} for {}",
                Money::sats(request.amount_sat),
                challenge.realm
            ),
            payee: Some(invoice.payee.to_string()),
            buys: Some(buys(&challenge, None)),
            details: Box::new(MppOffer::Lightning { challenge, request }),
        }))
    }

    fn evm_offer(&self, challenge: Challenge) -> Result<Option<Offer>, ClientError> {
        if self.evm.is_none() {
            return Ok(None);
        }
        let request = EvmChargeRequest::from_json(&challenge.request)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP evm request: {e}")))?;
        if !request.credential_types.iter().any(|t| t == evm_charge::CREDENTIAL_AUTHORIZATION) {
            return Ok(None);
        }
        let Some(expires) = challenge.expires.as_deref() else {
            return Err(ClientError::InvalidChallenge(
                "an MPP evm challenge needs `expires` (the authorization's validBefore)".into(),
            ));
        };
        let valid_before = crate::time::parse(expires)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP expires: {e}")))?;
        if valid_before <= crate::time::unix_now()? {
            return Err(ClientError::InvalidChallenge("the MPP challenge has expired".into()));
        }
        let amount: u128 = request
            .amount
            .try_into()
            .map_err(|_| ClientError::InvalidChallenge("MPP amount too large".into()))?;
        let Some(domain) = self.token_name(&request) else {
            tracing::warn!(
                token = %request.currency,
                chain_id = request.chain_id,
                "the MPP evm challenge names no EIP-712 domain for its token and none is configured (MppWallet::evm_domain)"
            );
            return Ok(None);
        };
        let token = Token {
            network: farebox_evm::network::caip2(request.chain_id),
            address: format!("{:#x}", request.currency),
            symbol: domain.name.clone(),
            decimals: request.decimals,
        };
        let price = Money::new(Asset::Token(token), amount);
        Ok(Some(Offer {
            rail: "mpp",
            summary: format!("MPP EVM charge of {price} for {}", challenge.realm),
            max_fee: Money::zero(price.asset.clone()),
            funding: Funding::PerRequest,
            price,
            payee: Some(format!("{:#x}", request.recipient)),
            buys: Some(buys(&challenge, None)),
            details: Box::new(MppOffer::Evm { challenge, request, valid_before, domain }),
        }))
    }
}

/// What an MPP challenge sells: its intent in `realm`, its description, and for a session
/// the deposit this payment puts up.
fn buys(challenge: &Challenge, deposit: Option<Money>) -> String {
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

fn proof(credential: &Credential, fee: Money, reference: String) -> Result<Proof, ClientError> {
    let mut value = HeaderValue::from_str(&credential.to_authorization())
        .map_err(|_| ClientError::PaymentFailed("the credential is not header-safe".into()))?;
    // A bearer secret: keep it out of Debug output and HTTP/2 header compression tables.
    value.set_sensitive(true);
    Ok(Proof { headers: vec![(AUTHORIZATION, value)], fee, reference, reusable: false })
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
            let (offers, kind) = match (challenge.method.as_str(), challenge.intent.as_str()) {
                (lightning_charge::METHOD, lightning_charge::INTENT) => {
                    (self.lightning_offer(challenge), &mut charges)
                }
                (evm_charge::METHOD, evm_charge::INTENT) => {
                    (self.evm_offer(challenge), &mut charges)
                }
                (evm_session::METHOD, evm_session::INTENT) => {
                    (self.evm_session_offer(challenge, &response.url), &mut sessions)
                }
                (lightning_session::METHOD, lightning_session::INTENT) => {
                    (self.lightning_session_offer(challenge, response), &mut sessions)
                }
                _ => continue,
            };
            match offers {
                Ok(offer) => kind.extend(offer),
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
        let (origin, method) = match offer.details.downcast_ref::<MppOffer>() {
            Some(MppOffer::EvmSession { sent, challenge, url, .. }) => {
                if status == StatusCode::PAYMENT_REQUIRED {
                    // Refused under this challenge: the path's next request asks first.
                    for s in self.book.lock().iter_mut() {
                        s.kind.forget_challenge(url.path(), &challenge.id);
                    }
                }
                return match sent.get() {
                    Some(&(channel, voucher)) => {
                        self.evm_answered(channel, voucher, offer, status, headers, problem).await
                    }
                    None => Ok(()),
                };
            }
            Some(MppOffer::LightningSession { origin, .. }) => (origin, lightning_session::METHOD),
            _ => return Ok(()),
        };
        let mut open = self.book.lock();
        if status == StatusCode::GONE {
            // Closed or unknown on the server: the next request opens a new one.
            open.retain(|s| !(s.origin == *origin && s.method() == method));
            return Ok(());
        }
        if let Some(spent) = receipt_spent(headers, method)
            && let Some(s) = open.iter_mut().find(|s| s.origin == *origin && s.method() == method)
        {
            s.spent = s.spent.max(spent);
        }
        Ok(())
    }

    /// A voucher for the next request on an open EVM channel at `url`'s origin, under the
    /// challenge `url`'s path was last paid under while it is live; only when the channel
    /// covers it as it stands (a top-up or a new channel waits for the server's 402).
    fn up_front(&self, method: &http::Method, url: &Url) -> Option<Offer> {
        let origin = origin_of(url);
        let now = crate::time::unix_now().ok()?;
        let challenge = self.book.lock().iter().find_map(|s| {
            (s.origin == origin && !s.halted)
                .then(|| s.kind.live_for(method, url.path(), now).cloned())
                .flatten()
        })?;
        let offer = self.evm_session_offer(challenge, url).ok().flatten()?;
        matches!(offer.funding, Funding::Session { deposit: None }).then_some(offer)
    }

    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError> {
        let details = offer.details.downcast_ref::<MppOffer>().ok_or_else(|| {
            ClientError::PaymentFailed("offer was not made by the MPP wallet".into())
        })?;
        match details {
            MppOffer::EvmSession { challenge, request, url, origin, sent } => {
                self.pay_evm_session(offer, challenge, request, url, origin, sent).await
            }
            MppOffer::LightningSession { challenge, request, url, origin } => {
                let top_up = matches!(&offer.funding, Funding::Session { deposit: Some(_) });
                self.pay_lightning_session(top_up, challenge, request, url, origin).await
            }
            MppOffer::Lightning { challenge, request } => {
                let Some((node, max_fee_msat)) = &self.lightning else {
                    return Err(ClientError::PaymentFailed("no Lightning node".into()));
                };
                let paid = node
                    .pay(&request.invoice, *max_fee_msat)
                    .await
                    .map_err(ClientError::from_lightning)?;
                if !farebox_lightning::preimage_matches(&paid.preimage, &request.payment_hash) {
                    return Err(ClientError::PaidWithoutProof(
                        "the wallet returned a preimage that does not match the invoice's payment hash"
                            .into(),
                    ));
                }
                let credential =
                    Credential::new(challenge, lightning_charge::payload(&paid.preimage));
                proof(&credential, Money::msats(paid.fee_msat), hex::encode(request.payment_hash))
                    .map_err(|e| ClientError::PaidWithoutProof(e.to_string()))
            }
            MppOffer::Evm { challenge, request, valid_before, domain } => {
                let Some(signer) = &self.evm else {
                    return Err(ClientError::PaymentFailed("no EVM key".into()));
                };
                let auth = TransferWithAuthorization {
                    from: signer.address(),
                    to: request.recipient,
                    value: request.amount,
                    validAfter: U256::ZERO,
                    validBefore: U256::from(*valid_before),
                    nonce: evm_charge::challenge_nonce(&challenge.id, &challenge.realm),
                };
                let domain = TokenDomain::new(
                    domain.name.clone(),
                    domain.version.clone(),
                    request.chain_id,
                    request.currency,
                );
                let signature = eip3009::sign(signer, &domain, &auth);
                let mut credential =
                    Credential::new(challenge, evm_charge::payload(&auth, &signature));
                credential.source = Some(evm_charge::source(request.chain_id, signer.address()));
                proof(
                    &credential,
                    Money::zero(offer.price.asset.clone()),
                    format!("{:#x}", auth.nonce),
                )
            }
        }
    }
}

fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn sensitive(credential: &Credential) -> Result<Vec<(http::HeaderName, HeaderValue)>, ClientError> {
    let mut value = HeaderValue::from_str(&credential.to_authorization())
        .map_err(|_| ClientError::PaymentFailed("the credential is not header-safe".into()))?;
    value.set_sensitive(true);
    Ok(vec![(AUTHORIZATION, value)])
}

impl MppWallet {
    fn evm_session_offer(
        &self,
        challenge: Challenge,
        url: &Url,
    ) -> Result<Option<Offer>, ClientError> {
        let (Some(policy), Some(_)) = (&self.evm_sessions, &self.evm) else { return Ok(None) };
        let request = EvmSessionRequest::from_json(&challenge.request)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP evm session request: {e}")))?;
        if request.chain_id != policy.rpc().chain_id()
            || !request.credential_types.iter().any(|t| t == evm_session::CREDENTIAL_HASH)
        {
            return Ok(None); // another chain, or only server-submitted opens
        }
        let price: u128 = request
            .amount
            .try_into()
            .map_err(|_| ClientError::InvalidChallenge("MPP session price too large".into()))?;
        let asset = session::evm_asset(&request, policy.ticker());
        let origin = origin_of(url);
        let channel =
            self.evm_channel(&origin, &request).map(|(_, signed, deposit)| (signed, deposit));
        let plan = policy.plan(&request, price, channel)?;
        let per_request = Money::new(asset.clone(), price);
        let summary = match plan {
            Plan::Voucher => format!(
                "MPP EVM session voucher for {} ({per_request} per request)",
                challenge.realm
            ),
            Plan::TopUp(d) => format!(
                "MPP EVM session top-up of {} for {} ({per_request} per request)",
                Money::new(asset.clone(), d),
                challenge.realm
            ),
            Plan::Open(d) | Plan::Reopen(d) => format!(
                "MPP EVM session for {}: {per_request} per request from a deposit of {}",
                challenge.realm,
                Money::new(asset.clone(), d)
            ),
        };
        Ok(Some(Offer {
            rail: "mpp",
            price: per_request,
            max_fee: Money::zero(asset.clone()),
            payee: Some(format!("{:#x}", request.recipient)),
            buys: Some(buys(&challenge, plan.outlay().map(|d| Money::new(asset.clone(), d)))),
            funding: Funding::Session { deposit: plan.outlay().map(|d| Money::new(asset, d)) },
            summary,
            details: Box::new(MppOffer::EvmSession {
                challenge,
                request,
                url: url.clone(),
                origin,
                sent: OnceLock::new(),
            }),
        }))
    }

    /// The channel in use for `request` at `origin` (same escrow, payee and token, not halted): its
    /// id, what was signed on it and its deposit.
    fn evm_channel(&self, origin: &str, request: &EvmSessionRequest) -> Option<(B256, u128, u128)> {
        let open = self.book.lock();
        open.iter().find_map(|s| match &s.kind {
            SessionKind::Evm { channel, escrow, payee, token, signed, .. }
                if s.origin == origin
                    && !s.halted
                    && *escrow == request.escrow
                    && *payee == request.recipient
                    && *token == request.currency =>
            {
                Some((*channel, *signed, s.deposit.amount))
            }
            _ => None,
        })
    }

    /// Checks what the server answered a request paid with a voucher for `voucher` on
    /// `channel`: a claim of more spent than the wallet ever signed closes the channel at what
    /// was signed and is [`ClientError::Overclaimed`].
    async fn evm_answered(
        &self,
        channel: B256,
        voucher: u128,
        offer: &Offer,
        status: StatusCode,
        headers: &HeaderMap,
        problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        let claim = session::evm_claim(status, headers, problem, voucher, offer.price.amount);
        let signed = {
            let mut open = self.book.lock();
            let Some(i) = open.iter().position(
                |s| matches!(&s.kind, SessionKind::Evm { channel: c, .. } if *c == channel),
            ) else {
                return Ok(());
            };
            if status == StatusCode::GONE {
                // Closed or unknown on the server: the next request opens a new one.
                open.remove(i);
                return Ok(());
            }
            let s = &mut open[i];
            let SessionKind::Evm { signed, .. } = &mut s.kind else { return Ok(()) };
            match claim {
                Some(claimed) if claimed > *signed => *signed,
                _ => {
                    // A voucher whose challenge was refused (sent up front under one that went
                    // stale) authorized nothing: unless a later one was signed meanwhile, the
                    // next voucher signs its amount again. Opens and top-ups are left alone.
                    if session::evm_challenge_refused(status, problem)
                        && *signed == voucher
                        && matches!(offer.funding, Funding::Session { deposit: None })
                    {
                        *signed = voucher.saturating_sub(offer.price.amount);
                    }
                    if status.is_success()
                        && let Some(spent) = receipt_spent(headers, evm_session::METHOD)
                    {
                        s.spent = s.spent.max(spent);
                    }
                    return Ok(());
                }
            }
        };
        let claimed = claim.unwrap_or_default();
        tracing::warn!(
            channel = %format!("{channel:#x}"),
            claimed,
            signed,
            "the server claims more spent than the wallet signed; closing the channel at what was signed"
        );
        let closed = self.book.retire(&format!("{channel:#x}"), true).await;
        if let Err(e) = &closed {
            tracing::warn!(error = %e, "the close after an overclaim failed; it is retried at close_all");
        }
        let asset = offer.price.asset.clone();
        Err(ClientError::Overclaimed(Box::new(Overclaim {
            session: format!("{channel:#x}"),
            claimed: Money::new(asset.clone(), claimed),
            signed: Money::new(asset, signed),
            closed: matches!(closed, Ok(Some(_))),
        })))
    }

    fn lightning_session_offer(
        &self,
        challenge: Challenge,
        response: &PaymentRequired,
    ) -> Result<Option<Offer>, ClientError> {
        let url = &response.url;
        let (Some(policy), Some((_, max_fee_msat))) = (&self.lightning_sessions, &self.lightning)
        else {
            return Ok(None);
        };
        let request = LightningSessionRequest::from_json(&challenge.request).map_err(|e| {
            ClientError::InvalidChallenge(format!("MPP lightning session request: {e}"))
        })?;
        let Some(deposit_sat) = session::lightning_deposit(policy, &request)? else {
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
        let held = self.lightning_session(&origin).map(|(_, deposit, spent)| (deposit, spent));
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
            details: Box::new(MppOffer::LightningSession {
                challenge,
                request,
                url: url.clone(),
                origin,
            }),
        }))
    }

    /// The Lightning session open at `origin` (not halted): its id and preimage, deposit and
    /// spent (msat).
    fn lightning_session(&self, origin: &str) -> Option<((PaymentHash, Preimage), u128, u128)> {
        let open = self.book.lock();
        open.iter().find_map(|s| match &s.kind {
            SessionKind::Lightning { id, preimage, .. } if s.origin == origin && !s.halted => {
                Some(((*id, *preimage), s.deposit.amount, s.spent))
            }
            _ => None,
        })
    }

    async fn pay_evm_session(
        &self,
        offer: &Offer,
        challenge: &Challenge,
        request: &EvmSessionRequest,
        url: &Url,
        origin: &str,
        sent: &OnceLock<(B256, u128)>,
    ) -> Result<Proof, ClientError> {
        let (Some(policy), Some(signer)) = (&self.evm_sessions, &self.evm) else {
            return Err(ClientError::PaymentFailed("EVM sessions are not enabled".into()));
        };
        let _turn = self.book.paying.lock().await;
        let price = offer.price.amount;
        let planned = match &offer.funding {
            Funding::Session { deposit } => deposit.as_ref().map(|d| d.amount),
            Funding::PerRequest => None,
        };
        // Planned again under the lock, with the policy's checks, before anything moves.
        let mut existing = self.evm_channel(origin, request);
        let plan = policy.plan(request, price, existing.map(|(_, s, d)| (s, d)))?;
        if plan.outlay() != planned {
            return Err(ClientError::PaymentFailed(
                "the session changed since the offer was made; retry".into(),
            ));
        }
        let rpc = policy.rpc();
        let domain = rpc.voucher_domain(request.escrow);
        if let (Plan::Reopen(_), Some((channel, ..))) = (plan, existing) {
            // Full: closed (at what was signed at most) before a new one is opened.
            self.book.retire(&format!("{channel:#x}"), false).await.map_err(|e| {
                ClientError::PaymentFailed(format!("closing the channel that reached its cap: {e}"))
            })?;
            existing = None;
        }
        let (payload, channel, amount) = match (plan, existing) {
            (Plan::Open(deposit) | Plan::Reopen(deposit), None) => {
                let (tx, salt, channel) =
                    session::open_channel(rpc, signer, request, deposit).await?;
                self.book.lock().push(OpenSession {
                    origin: origin.to_string(),
                    url: url.clone(),
                    challenge: challenge.clone(),
                    deposit: Money::new(offer.price.asset.clone(), deposit),
                    spent: 0,
                    halted: false,
                    kind: SessionKind::Evm {
                        channel,
                        escrow: request.escrow,
                        payee: request.recipient,
                        token: request.currency,
                        domain,
                        signer: Box::new(signer.clone()),
                        rpc: rpc.clone(),
                        signed: price,
                        live: vec![(url.path().to_string(), challenge.clone())],
                    },
                });
                let open = session::open_payload(signer, &domain, tx, salt, channel, price);
                (open, channel, price)
            }
            (Plan::Voucher | Plan::TopUp(_), Some((channel, signed, _))) => {
                if let Plan::TopUp(amount) = plan {
                    session::top_up_channel(rpc, signer, request, channel, amount).await?;
                }
                let need = signed + price;
                let mut open = self.book.lock();
                let reference = format!("{channel:#x}");
                let Some(s) = open.iter_mut().find(|s| s.reference() == reference) else {
                    // Closed meanwhile (a concurrent close_all): a top-up went into it.
                    return Err(match plan {
                        Plan::TopUp(_) => ClientError::PaidWithoutProof(format!(
                            "channel {reference} was closed while it was topped up"
                        )),
                        _ => ClientError::PaymentFailed("the session closed meanwhile".into()),
                    });
                };
                s.deposit.amount += plan.outlay().unwrap_or(0);
                if let SessionKind::Evm { signed, .. } = &mut s.kind {
                    *signed = need;
                }
                s.url = url.clone();
                s.challenge = challenge.clone();
                s.kind.paid_under(url.path(), challenge);
                let voucher = session::signed_voucher(signer, &domain, channel, need);
                (SessionPayload::Voucher(voucher), channel, need)
            }
            _ => {
                return Err(ClientError::PaymentFailed(
                    "the session changed since the offer was made; retry".into(),
                ));
            }
        };
        let _ = sent.set((channel, amount));
        let mut credential = Credential::new(challenge, payload.to_json());
        credential.source = Some(evm_charge::source(request.chain_id, signer.address()));
        Ok(Proof {
            headers: sensitive(&credential)?,
            fee: Money::zero(offer.price.asset.clone()),
            reference: format!("{channel:#x}"),
            reusable: false,
        })
    }

    /// Pays a Lightning session request: from the balance, or (`deposit`) by paying the
    /// challenge's deposit invoice to open the session or top it up; a top-up that would pass
    /// the policy's cap closes the session and opens a new one instead.
    async fn pay_lightning_session(
        &self,
        deposit: bool,
        challenge: &Challenge,
        request: &LightningSessionRequest,
        url: &Url,
        origin: &str,
    ) -> Result<Proof, ClientError> {
        let (Some(policy), Some((node, max_fee_msat))) =
            (&self.lightning_sessions, &self.lightning)
        else {
            return Err(ClientError::PaymentFailed("Lightning sessions are not enabled".into()));
        };
        let _turn = self.book.paying.lock().await;
        let mut existing = self.lightning_session(origin);
        if let (Some(((id, preimage), ..)), false) = (existing, deposit) {
            return bearer_proof(challenge, id, preimage, Money::msats(0));
        }
        let deposit_sat = session::lightning_deposit(policy, request)?.ok_or_else(|| {
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
                let top_up = LightningSessionPayload::TopUp {
                    session_id: id,
                    top_up_preimage: paid.preimage,
                };
                let payload = top_up.to_json();
                let (status, _, body) = self
                    .book
                    .control(url, lightning_session::METHOD, challenge.clone(), |_| payload.clone())
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
                let open = LightningSessionPayload::Open {
                    preimage: paid.preimage,
                    return_invoice: refund.bolt11,
                };
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
    let bearer = LightningSessionPayload::Bearer { session_id: id, preimage };
    let credential = Credential::new(challenge, bearer.to_json());
    Ok(Proof { headers: sensitive(&credential)?, fee, reference: hex::encode(id), reusable: true })
}
