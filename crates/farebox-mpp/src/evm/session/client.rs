//! The client side of EVM sessions (`method="evm", intent="session"`): the first request
//! approves and opens a channel in the server's escrow, and pays with a first voucher for one
//! request. Every later request signs a voucher for `signed + price`; when that would pass the
//! deposit the wallet tops the channel up on chain first (the server re-reads the deposit).
//! While the challenge a path was last paid under is live, the next request to it carries its
//! voucher up front under that challenge (one HTTP round trip instead of two; a top-up still
//! waits for a 402); if the server refuses it (expired, restarted with another key), its 402 is
//! paid as usual. Vouchers never leave the budget: the deposit and top-ups do, and the part the
//! server did not spend comes back at close.
//!
//! What the server cannot decide: where the deposit goes (only to an escrow the
//! [`EvmSessionPolicy`] pins, and the channel is read back from the wallet's own node before a
//! voucher is signed), how much one channel holds (the policy's cap), what was spent (a claim
//! above what the wallet signed is [`ClientError::Overclaimed`] and closes the channel), and
//! what came back (the close transaction's `ChannelClosed` event, read from the wallet's node).

use std::sync::OnceLock;

use async_trait::async_trait;
use farebox_core::{Asset, Money};
use farebox_evm::{Address, B256, EvmError, EvmRpc, PrivateKeySigner, TxHash};
use farebox_wallet::{ClientError, Funding, Offer, Overclaim, PaymentRequired, Proof};
use http::{HeaderMap, StatusCode};
use reqwest::Url;

use super::{
    CREDENTIAL_HASH, EvmSessionRequest, INTENT, METHOD, OpenPayload, SessionPayload, SignedVoucher,
};
use crate::client::session::{
    ClosedSession, OpenSession, SessionBook, SessionKind, SharedBook, close_amount, receipt_member,
    receipt_spent, rejected,
};
use crate::client::{Details, Payer, buys, details_of, origin_of, sensitive};
use crate::evm::escrow::EscrowRpc;
use crate::evm::voucher::VoucherDomain;
use crate::{Challenge, Credential, ProblemType};

/// How long the wallet's node may lag behind the server's before a close transaction the server
/// names counts as missing.
const CLOSE_RECEIPT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How the wallet opens and refills EVM sessions: which escrows it trusts on its chain and how
/// much one channel may hold.
#[derive(Clone)]
pub struct EvmSessionPolicy {
    rpc: EvmRpc,
    /// The escrow contracts deposits may go to, on `rpc`'s chain.
    escrows: Vec<Address>,
    /// The most one channel holds (deposit plus top-ups), in token base units.
    max_deposit: u128,
    deposit: Option<u128>,
    top_up: Option<u128>,
    symbol: String,
}

impl EvmSessionPolicy {
    /// Channels in `escrow` (a contract you trust, on the chain of `rpc`, which is also the node
    /// every channel is checked against), holding at most `max_deposit` token base units each.
    /// A new channel gets the server's `suggestedDeposit`, capped.
    pub fn new(rpc: EvmRpc, escrow: Address, max_deposit: u128) -> Self {
        EvmSessionPolicy {
            rpc,
            escrows: vec![escrow],
            max_deposit,
            deposit: None,
            top_up: None,
            symbol: "USDC".into(),
        }
    }

    /// Also allows `escrow` (on the same chain).
    pub fn allow_escrow(mut self, escrow: Address) -> Self {
        self.escrows.push(escrow);
        self
    }

    /// Deposits `amount` base units in a new channel (at most the cap, at least one request)
    /// instead of what the server suggests.
    pub fn deposit(mut self, amount: u128) -> Self {
        self.deposit = Some(amount);
        self
    }

    /// Adds `amount` when a channel runs out (at most what the cap leaves); default: the
    /// opening deposit again.
    pub fn top_up(mut self, amount: u128) -> Self {
        self.top_up = Some(amount);
        self
    }

    /// The token's ticker, for people (default `USDC`).
    pub fn symbol(mut self, symbol: impl Into<String>) -> Self {
        self.symbol = symbol.into();
        self
    }

    pub(crate) fn rpc(&self) -> &EvmRpc {
        &self.rpc
    }

    pub(crate) fn ticker(&self) -> &str {
        &self.symbol
    }

    /// What paying one more request of `price` takes, given the channel already open (what was
    /// signed on it and its deposit), or why this policy refuses it. The one place the
    /// escrow, chain and cap rules are applied: both the offer and the payment go through it.
    pub(crate) fn plan(
        &self,
        request: &EvmSessionRequest,
        price: u128,
        channel: Option<(u128, u128)>,
    ) -> Result<Plan, ClientError> {
        if request.chain_id != self.rpc.chain_id() {
            return Err(ClientError::SessionRefused(format!(
                "the session is on chain {}, the wallet's node on {}",
                request.chain_id,
                self.rpc.chain_id()
            )));
        }
        if !self.escrows.contains(&request.escrow) {
            return Err(ClientError::SessionRefused(format!(
                "the escrow {:#x} on chain {} is not one the policy allows",
                request.escrow, request.chain_id
            )));
        }
        if price > self.max_deposit {
            return Err(ClientError::SessionRefused(format!(
                "one request costs {price}, more than the {} a channel may hold",
                self.max_deposit
            )));
        }
        let suggested = request.suggested_deposit.map(|d| u128::try_from(d).unwrap_or(u128::MAX));
        let opening = self.deposit.or(suggested).unwrap_or(price).min(self.max_deposit).max(price);
        let Some((signed, deposit)) = channel else { return Ok(Plan::Open(opening)) };
        let need = signed.saturating_add(price);
        if need <= deposit {
            return Ok(Plan::Voucher);
        }
        let room = self.max_deposit.saturating_sub(deposit);
        let amount = self.top_up.unwrap_or(opening).min(room).max(need - deposit);
        Ok(if amount <= room { Plan::TopUp(amount) } else { Plan::Reopen(opening) })
    }
}

/// What paying one more request on an EVM session takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Open a channel with this deposit.
    Open(u128),
    /// Sign a voucher on the open channel.
    Voucher,
    /// Top the open channel up by this much, then sign.
    TopUp(u128),
    /// The open channel would pass the cap: close it, open one with this deposit.
    Reopen(u128),
}

impl Plan {
    /// What the payment puts up now.
    pub fn outlay(self) -> Option<u128> {
        match self {
            Plan::Voucher => None,
            Plan::Open(d) | Plan::TopUp(d) | Plan::Reopen(d) => Some(d),
        }
    }
}

/// Pays `evm` session challenges with `signer`, under `policy`, keeping channels in `book`.
pub(crate) struct EvmSessionPayer {
    pub policy: EvmSessionPolicy,
    pub signer: PrivateKeySigner,
    pub book: SharedBook,
}

/// What an `evm` session offer carries to its payment.
struct SessionOffer {
    challenge: Challenge,
    request: EvmSessionRequest,
    url: Url,
    origin: String,
    /// The channel and the cumulative amount the payment signed, once paid.
    sent: OnceLock<(B256, u128)>,
}

impl EvmSessionPayer {
    fn offer_at(&self, challenge: Challenge, url: &Url) -> Result<Option<Offer>, ClientError> {
        let policy = &self.policy;
        let request = EvmSessionRequest::from_json(&challenge.request)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP evm session request: {e}")))?;
        if request.chain_id != policy.rpc().chain_id()
            || !request.credential_types.iter().any(|t| t == CREDENTIAL_HASH)
        {
            return Ok(None); // another chain, or only server-submitted opens
        }
        let price: u128 = request
            .amount
            .try_into()
            .map_err(|_| ClientError::InvalidChallenge("MPP session price too large".into()))?;
        let asset = evm_asset(&request, policy.ticker());
        let origin = origin_of(url);
        let channel = self.channel(&origin, &request).map(|(_, signed, deposit)| (signed, deposit));
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
            details: Box::new(SessionOffer {
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
    fn channel(&self, origin: &str, request: &EvmSessionRequest) -> Option<(B256, u128, u128)> {
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
    async fn check_claim(
        &self,
        channel: B256,
        voucher: u128,
        offer: &Offer,
        status: StatusCode,
        headers: &HeaderMap,
        problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        let claim = evm_claim(status, headers, problem, voucher, offer.price.amount);
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
                    if evm_challenge_refused(status, problem)
                        && *signed == voucher
                        && matches!(offer.funding, Funding::Session { deposit: None })
                    {
                        *signed = voucher.saturating_sub(offer.price.amount);
                    }
                    if status.is_success()
                        && let Some(spent) = receipt_spent(headers, METHOD)
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
}

#[async_trait]
impl Payer for EvmSessionPayer {
    fn names(&self) -> (&'static str, &'static str) {
        (METHOD, INTENT)
    }

    fn offer(
        &self,
        challenge: Challenge,
        response: &PaymentRequired,
    ) -> Result<Option<Offer>, ClientError> {
        self.offer_at(challenge, &response.url)
    }

    async fn pay(&self, offer: &Offer, details: &Details) -> Result<Proof, ClientError> {
        let SessionOffer { challenge, request, url, origin, sent } = details_of(details)?;
        let (policy, signer) = (&self.policy, &self.signer);
        let _turn = self.book.paying.lock().await;
        let price = offer.price.amount;
        let planned = match &offer.funding {
            Funding::Session { deposit } => deposit.as_ref().map(|d| d.amount),
            Funding::PerRequest => None,
        };
        // Planned again under the lock, with the policy's checks, before anything moves.
        let mut existing = self.channel(origin, request);
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
                let (tx, salt, channel) = open_channel(rpc, signer, request, deposit).await?;
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
                let open = open_payload(signer, &domain, tx, salt, channel, price);
                (open, channel, price)
            }
            (Plan::Voucher | Plan::TopUp(_), Some((channel, signed, _))) => {
                if let Plan::TopUp(amount) = plan {
                    top_up_channel(rpc, signer, request, channel, amount).await?;
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
                let voucher = SignedVoucher::sign(signer, &domain, channel, need);
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
        credential.source = Some(crate::evm::charge::source(request.chain_id, signer.address()));
        Ok(Proof {
            headers: sensitive(&credential)?,
            fee: Money::zero(offer.price.asset.clone()),
            reference: format!("{channel:#x}"),
            reusable: false,
        })
    }

    async fn answered(
        &self,
        offer: &Offer,
        details: &Details,
        status: StatusCode,
        headers: &HeaderMap,
        problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        let SessionOffer { sent, challenge, url, .. } = details_of(details)?;
        if status == StatusCode::PAYMENT_REQUIRED {
            // Refused under this challenge: the path's next request asks first.
            for s in self.book.lock().iter_mut() {
                s.kind.forget_challenge(url.path(), &challenge.id);
            }
        }
        match sent.get() {
            Some(&(channel, voucher)) => {
                self.check_claim(channel, voucher, offer, status, headers, problem).await
            }
            None => Ok(()),
        }
    }

    /// A voucher for the next request on an open channel at `url`'s origin, under the
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
        let offer = self.offer_at(challenge, url).ok().flatten()?;
        matches!(offer.funding, Funding::Session { deposit: None }).then_some(offer)
    }
}

/// An EVM close: a voucher for `min(claimed spent, signed)` (the server captures that and
/// the escrow refunds the rest), then the refund as the close transaction's `ChannelClosed`
/// event says, read from the wallet's node.
pub(crate) async fn close(
    book: &SessionBook,
    s: &OpenSession,
) -> Result<ClosedSession, ClientError> {
    let SessionKind::Evm { channel, escrow, domain, signer, rpc, signed, .. } = &s.kind else {
        unreachable!("called for EVM sessions")
    };
    let amount = close_amount(s.spent, *signed);
    let payload = SessionPayload::Close(SignedVoucher::sign(signer, domain, *channel, amount));
    let payload = payload.to_json();
    let (status, headers, body) =
        book.control(&s.url, METHOD, s.challenge.clone(), |_| payload.clone()).await?;
    if status != StatusCode::OK {
        return Err(rejected(status, &body));
    }
    let named = body["txHash"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| receipt_member(&headers, "txHash"))
        .and_then(|t| t.parse::<TxHash>().ok())
        .ok_or_else(|| {
            ClientError::RefundUnproven(format!(
                "the server closed channel {channel:#x} without naming a valid transaction"
            ))
        })?;
    let refunded = closed_on_chain(rpc, *escrow, *channel, named).await?;
    let claimed = body["refunded"].as_str().and_then(|t| t.parse::<u128>().ok());
    if claimed.is_some_and(|c| c != refunded) {
        tracing::warn!(
            channel = %format!("{channel:#x}"),
            claimed = claimed.unwrap_or_default(),
            refunded,
            "the server's close answer names another refund than the chain; counting the chain's"
        );
    }
    let asset = s.deposit.asset.clone();
    Ok(ClosedSession {
        url: s.url.to_string(),
        method: METHOD,
        session: s.reference(),
        spent: Money::new(asset.clone(), s.deposit.amount.saturating_sub(refunded)),
        refunded: Money::new(asset, refunded),
        reference: format!("{named:#x}"),
    })
}

/// The token asset of an EVM session request.
pub(crate) fn evm_asset(request: &EvmSessionRequest, symbol: &str) -> Asset {
    let decimals = request.decimals.unwrap_or(0);
    crate::rail::token_asset(request.chain_id, request.currency, symbol, decimals)
}

/// Opens a channel on chain: approve, then `open` with a random salt; then reads the channel
/// back from the wallet's node. Returns the open transaction, the salt and the channel id.
pub(crate) async fn open_channel(
    rpc: &EvmRpc,
    signer: &PrivateKeySigner,
    request: &EvmSessionRequest,
    deposit: u128,
) -> Result<(B256, B256, B256), ClientError> {
    let salt = B256::from(rand::random::<[u8; 32]>());
    rpc.erc20_approve(signer, request.currency, request.escrow, deposit)
        .await
        .map_err(|e| ClientError::PaymentFailed(format!("approving the deposit: {e}")))?;
    let (tx, channel) = rpc
        .escrow_open(
            signer,
            request.escrow,
            request.recipient,
            request.currency,
            deposit,
            salt,
            None,
        )
        .await
        .map_err(|e| chain_payment_error(e, "opening the channel"))?;
    if let Err(why) = check_opened(rpc, signer.address(), request, channel, deposit).await {
        // The deposit is in the escrow but no voucher is signed: start the payer's way out.
        let asked = rpc.escrow_request_close(signer, request.escrow, channel).await;
        if let Err(e) = asked {
            tracing::warn!(error = %e, "could not request the close of a channel that failed its check");
        }
        return Err(ClientError::PaidWithoutProof(format!(
            "the deposit went into channel {channel:#x} of escrow {:#x}, but {why}; no voucher was signed",
            request.escrow
        )));
    }
    Ok((tx, salt, channel))
}

/// Whether the channel the wallet's node shows is the one asked for: opened by `payer`, paying
/// the challenge's recipient in its currency, holding `deposit`, signed for by the payer, and
/// untouched.
async fn check_opened(
    rpc: &EvmRpc,
    payer: Address,
    request: &EvmSessionRequest,
    channel: B256,
    deposit: u128,
) -> Result<(), String> {
    let c = rpc
        .escrow_channel(request.escrow, channel)
        .await
        .map_err(|e| format!("the channel cannot be read back ({e})"))?;
    let wrong = |what: &str, found: String, asked: String| {
        Err(format!("the channel on chain has {what} {found}, not {asked}"))
    };
    if c.payer != payer {
        return wrong("payer", format!("{:#x}", c.payer), format!("{payer:#x}"));
    }
    if c.payee != request.recipient {
        return wrong("payee", format!("{:#x}", c.payee), format!("{:#x}", request.recipient));
    }
    if c.token != request.currency {
        return wrong("token", format!("{:#x}", c.token), format!("{:#x}", request.currency));
    }
    if c.deposit != deposit {
        return wrong("deposit", c.deposit.to_string(), deposit.to_string());
    }
    if c.authorizedSigner != Address::ZERO {
        return wrong("signer", format!("{:#x}", c.authorizedSigner), "the payer".into());
    }
    if c.settled != 0 || c.closeRequestedAt != 0 || c.finalized {
        return Err("the channel on chain is already settled or closing".into());
    }
    Ok(())
}

/// Adds `amount` to a channel on chain.
pub(crate) async fn top_up_channel(
    rpc: &EvmRpc,
    signer: &PrivateKeySigner,
    request: &EvmSessionRequest,
    channel: B256,
    amount: u128,
) -> Result<(), ClientError> {
    rpc.erc20_approve(signer, request.currency, request.escrow, amount)
        .await
        .map_err(|e| ClientError::PaymentFailed(format!("approving the top-up: {e}")))?;
    rpc.escrow_top_up(signer, request.escrow, channel, amount)
        .await
        .map(|_| ())
        .map_err(|e| chain_payment_error(e, "topping the channel up"))
}

/// A transaction that reverted moved nothing; one whose outcome is unknown may have.
fn chain_payment_error(e: EvmError, what: &str) -> ClientError {
    match e {
        EvmError::Reverted { reason } => ClientError::PaymentFailed(format!("{what}: {reason}")),
        e if e.is_unavailable() => ClientError::PaidWithoutProof(format!("{what}: {e}")),
        e => ClientError::PaymentFailed(format!("{what}: {e}")),
    }
}

/// An open payload paying the first request of `channel`.
pub(crate) fn open_payload(
    signer: &PrivateKeySigner,
    domain: &VoucherDomain,
    tx: B256,
    salt: B256,
    channel: B256,
    amount: u128,
) -> SessionPayload {
    SessionPayload::Open(OpenPayload {
        hash: tx,
        salt,
        authorized_signer: None,
        voucher: SignedVoucher::sign(signer, domain, channel, amount),
    })
}

/// Whether a 402 to an EVM session voucher refused its *challenge* (expired, issued for
/// another route, below the route's price): the server decides that before it looks at the
/// voucher, so the voucher authorized nothing and the next one signs the same cumulative
/// amount again instead of adding to it. A server that kept it anyway gains nothing by that.
/// Any other refusal (a `session/insufficient-balance` keeps the voucher) counts as signed.
pub(crate) fn evm_challenge_refused(
    status: StatusCode,
    problem: Option<&serde_json::Value>,
) -> bool {
    let kind = problem.and_then(|p| p["type"].as_str()).and_then(ProblemType::parse);
    status == StatusCode::PAYMENT_REQUIRED
        && matches!(
            kind,
            Some(
                ProblemType::PaymentExpired
                    | ProblemType::InvalidChallenge
                    | ProblemType::PaymentInsufficient
            )
        )
}

/// The most an EVM session answer claims the channel has consumed or been authorized for: a
/// receipt's `spent` and `acceptedCumulative`, or, for a 402 `session/insufficient-balance` to
/// a request that sent `voucher` for `price`, the spending its `requiredTopUp` implies (the
/// server has `accepted ≥ voucher` and says `accepted − spent = price − requiredTopUp`).
pub(crate) fn evm_claim(
    status: StatusCode,
    headers: &HeaderMap,
    problem: Option<&serde_json::Value>,
    voucher: u128,
    price: u128,
) -> Option<u128> {
    if status == StatusCode::PAYMENT_REQUIRED {
        let problem = problem?;
        let kind = problem["type"].as_str().and_then(ProblemType::parse);
        if kind != Some(ProblemType::SessionInsufficientBalance) {
            return None;
        }
        let short: u128 = problem["requiredTopUp"].as_str()?.parse().ok()?;
        return Some(voucher.saturating_sub(price).saturating_add(short));
    }
    let spent = receipt_member(headers, "spent").and_then(|t| t.parse::<u128>().ok());
    let accepted =
        receipt_member(headers, "acceptedCumulative").and_then(|t| t.parse::<u128>().ok());
    spent.max(accepted)
}

/// The refund of a close, as the `ChannelClosed` event of `tx` for `channel` from `escrow`
/// says, read from the wallet's own node.
async fn closed_on_chain(
    rpc: &EvmRpc,
    escrow: Address,
    channel: B256,
    tx: TxHash,
) -> Result<u128, ClientError> {
    // The server waited for its receipt; the wallet's node may be a little behind it.
    let _ = rpc.wait_for_receipt(tx, CLOSE_RECEIPT_WAIT).await;
    match rpc.escrow_closed_by(escrow, tx, channel).await {
        Ok(Some(event)) => Ok(event.refundedToPayer),
        Ok(None) => Err(ClientError::RefundUnproven(format!(
            "the close transaction {tx:#x} the server named is not on chain"
        ))),
        Err(e) => Err(ClientError::RefundUnproven(format!(
            "the transaction {tx:#x} the server named does not close channel {channel:#x}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insufficient_balance_402_implies_what_the_server_claims_spent() {
        let problem = serde_json::json!({
            "type": ProblemType::SessionInsufficientBalance.uri(),
            "requiredTopUp": "400",
        });
        let headers = HeaderMap::new();
        // A voucher for 6000 paying a 1000 request: the server has at least 6000 accepted and
        // says only 600 of it is unspent, so it claims at least 5400 spent.
        let claim = evm_claim(StatusCode::PAYMENT_REQUIRED, &headers, Some(&problem), 6_000, 1_000);
        assert_eq!(claim, Some(5_400));
        let other = serde_json::json!({"type": ProblemType::VerificationFailed.uri()});
        assert_eq!(
            evm_claim(StatusCode::PAYMENT_REQUIRED, &headers, Some(&other), 6_000, 1_000),
            None
        );
    }
}
