//! The client side of MPP sessions: the sessions an [`MppWallet`](super::MppWallet) has open,
//! how each request is paid from them, and how they are closed.
//!
//! - **EVM** (`method="evm", intent="session"`): the first request approves and opens a channel
//!   in the server's escrow, and pays with a first voucher for one request. Every later request
//!   signs a voucher for `signed + price`; when that would pass the deposit the wallet tops the
//!   channel up on chain first (the server re-reads the deposit). While the challenge a path
//!   was last paid under is live, the next request to it carries its voucher up front under
//!   that challenge (one HTTP round trip instead of two; a top-up still waits for a 402); if
//!   the server refuses it (expired, restarted with another key), its 402 is paid as usual. Vouchers never leave the
//!   budget: the deposit and top-ups do, and the part the server did not spend comes back at
//!   close.
//! - **Lightning** (`method="lightning", intent="session"`): the first request pays the deposit
//!   invoice and opens the session with an amountless return invoice of the wallet's own; the
//!   deposit's preimage is then a bearer proof, sent up front with every later request (a
//!   reusable proof). When the balance runs out, the wallet pays the fresh deposit invoice of
//!   the 402, sends a `topUp` itself, and carries on.
//!
//! **What the server cannot decide** (its word about money is checked, never taken):
//! - *Where the money goes.* An EVM deposit goes only to an escrow the [`EvmSessionPolicy`]
//!   pins for its chain, refused before any `approve`; after `open` the wallet reads the channel
//!   back from its own node (payer, payee = the challenge's recipient, token = its currency,
//!   deposit = what was sent) before it signs a voucher.
//! - *How much.* One channel or session holds at most the policy's cap, deposit plus top-ups
//!   (`suggestedDeposit` is only a suggestion); one that would pass it is closed and a new one
//!   opened.
//! - *What was spent.* The wallet keeps the highest cumulative amount it signed per channel. A
//!   receipt or a 402 claiming more is [`ClientError::Overclaimed`], and the channel is closed
//!   at once with a voucher for what was signed; any close signs `min(claimed spent, signed)`.
//! - *What came back.* An EVM refund is the `ChannelClosed` event of the close transaction, read
//!   from the wallet's node; a Lightning refund is what the wallet's node shows received on the
//!   return invoice. Only that is credited to the budget, and the ledger records the transaction
//!   or payment hash.
//!
//! [`Sessions::close_all`](super::Sessions::close_all) closes every session. Dropping the wallet
//! closes what is still open (blocking for at most [`DROP_CLOSE_TIMEOUT`] where the runtime
//! allows, else in the background); servers also close idle sessions on their own and refund
//! the rest, so a client that vanishes loses nothing but the requests it was served.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::evm::session::{
    self as evm_session, EvmSessionRequest, OpenPayload, SessionPayload, SignedVoucher,
};
use crate::evm::voucher::{self, Voucher, VoucherDomain};
use crate::lightning::session::{
    self as lightning_session, LightningSessionRequest, SessionPayload as LnPayload,
};
use crate::rail::OPAQUE_HTTP_METHOD;
use crate::{Challenge, Credential, PaymentReceipt, ProblemType};
use farebox_core::{Asset, Money};
use farebox_evm::{Address, B256, EvmError, EvmRpc, PrivateKeySigner, TxHash};
use farebox_lightning::{InvoiceState, LightningBackend, PaymentHash, Preimage};
use http::{HeaderMap, HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest::Url;

use crate::evm::escrow::EscrowRpc;
use farebox_wallet::ClientError;

/// How long dropping a wallet may block to close its sessions.
pub const DROP_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control message (top-up, close) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the wallet's node may lag behind the server's before a close transaction the server
/// names counts as missing.
const CLOSE_RECEIPT_WAIT: Duration = Duration::from_secs(10);

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

/// A session the wallet has open.
pub(crate) struct OpenSession {
    pub origin: String,
    /// The last URL paid through it (control messages go there).
    pub url: Url,
    /// The last challenge it was paid under (echoed by control messages).
    pub challenge: Challenge,
    /// What was put up, and what the server last said was spent (never more than was signed).
    pub deposit: Money,
    pub spent: u128,
    /// Pays nothing more: it waits to be closed (a close after an overclaim failed).
    pub halted: bool,
    pub kind: SessionKind,
}

pub(crate) enum SessionKind {
    Evm {
        channel: B256,
        escrow: Address,
        payee: Address,
        token: Address,
        domain: VoucherDomain,
        /// Boxed: a key is large next to a Lightning session's two hashes.
        signer: Box<PrivateKeySigner>,
        /// The wallet's own node, where the close is checked.
        rpc: EvmRpc,
        /// The highest cumulative amount signed so far.
        signed: u128,
        /// The challenge each path was last paid under, newest last: the next request to the
        /// path sends its voucher up front under it while it is live ([`live_for`]).
        live: Vec<(String, Challenge)>,
    },
    Lightning {
        id: PaymentHash,
        preimage: Preimage,
        /// The payment hash of the return invoice, and the node that issued it.
        refund: PaymentHash,
        node: Arc<dyn LightningBackend>,
        refund_wait: Duration,
    },
}

impl OpenSession {
    /// The channel id or the session id, as text.
    pub fn reference(&self) -> String {
        match &self.kind {
            SessionKind::Evm { channel, .. } => format!("{channel:#x}"),
            SessionKind::Lightning { id, .. } => hex::encode(id),
        }
    }

    pub fn method(&self) -> &'static str {
        match self.kind {
            SessionKind::Evm { .. } => evm_session::METHOD,
            SessionKind::Lightning { .. } => lightning_session::METHOD,
        }
    }
}

/// How long before its expiry a challenge stops being used up front: a voucher sent under one
/// about to expire would likely be refused, and cost a round trip more than asking.
pub(crate) const UP_FRONT_MARGIN: Duration = Duration::from_secs(10);
/// The most paths per channel whose challenge is kept for up-front vouchers.
const MAX_LIVE_PATHS: usize = 16;

impl SessionKind {
    /// Keeps `challenge` as the one `path` was last paid under.
    pub fn paid_under(&mut self, path: &str, challenge: &Challenge) {
        if let SessionKind::Evm { live, .. } = self {
            live.retain(|(p, _)| p != path);
            if live.len() >= MAX_LIVE_PATHS {
                live.remove(0);
            }
            live.push((path.to_string(), challenge.clone()));
        }
    }

    /// Forgets the challenge `path` was paid under if it is `id` (the server refused it).
    pub fn forget_challenge(&mut self, path: &str, id: &str) {
        if let SessionKind::Evm { live, .. } = self {
            live.retain(|(p, c)| !(p == path && c.id == id));
        }
    }

    /// The challenge a `method` request to `path` can send its voucher under up front, at
    /// `now` (Unix seconds): the one the path was last paid under, if it expires no sooner
    /// than [`UP_FRONT_MARGIN`] from now and binds this HTTP method where it names one
    /// (farebox servers do, in `opaque`). The server checks all of it again; this only saves
    /// sending what it would refuse.
    pub fn live_for(&self, method: &http::Method, path: &str, now: u64) -> Option<&Challenge> {
        let SessionKind::Evm { live, .. } = self else { return None };
        let (_, challenge) = live.iter().find(|(p, _)| p == path)?;
        let expires = challenge.expires.as_deref().and_then(|e| crate::time::parse(e).ok())?;
        let binds = challenge.opaque_map().ok()?.and_then(|mut o| o.remove(OPAQUE_HTTP_METHOD));
        let fits = binds.is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
        (expires >= now.saturating_add(UP_FRONT_MARGIN.as_secs()) && fits).then_some(challenge)
    }
}

/// A session that was closed.
#[derive(Debug, Clone)]
pub struct ClosedSession {
    pub url: String,
    /// `evm` or `lightning`.
    pub method: &'static str,
    /// The channel id or the session id.
    pub session: String,
    /// What the server kept: the deposit less the refund.
    pub spent: Money,
    /// What came back to the wallet, as the chain or the wallet's node shows it.
    pub refunded: Money,
    /// The evidence of the refund: the close transaction (EVM) or the return invoice's payment
    /// hash (Lightning).
    pub reference: String,
}

/// The sessions of one wallet, shared by its handles.
pub(crate) struct SessionBook {
    pub open: Mutex<Vec<OpenSession>>,
    /// One session payment at a time: opening or topping up must not race.
    pub paying: tokio::sync::Mutex<()>,
    accounts: OnceLock<Arc<dyn farebox_wallet::Accounts>>,
    http: reqwest::Client,
}

impl SessionBook {
    pub fn new() -> Self {
        SessionBook {
            open: Mutex::new(Vec::new()),
            paying: tokio::sync::Mutex::new(()),
            accounts: OnceLock::new(),
            http: reqwest::Client::builder()
                .timeout(CONTROL_TIMEOUT)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
        }
    }

    pub fn attach(&self, accounts: Arc<dyn farebox_wallet::Accounts>) {
        let _ = self.accounts.set(accounts);
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OpenSession>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the session `reference` (a channel or session id) out of the book and closes it;
    /// one whose close fails goes back (halted, if `halt`: it pays nothing more) so that a
    /// later close can retry it. `None`: it is no longer in the book.
    pub async fn retire(
        &self,
        reference: &str,
        halt: bool,
    ) -> Result<Option<ClosedSession>, ClientError> {
        let taken = {
            let mut open = self.lock();
            open.iter().position(|s| s.reference() == reference).map(|i| open.remove(i))
        };
        let Some(mut s) = taken else { return Ok(None) };
        match self.close(&s).await {
            Ok(closed) => Ok(Some(closed)),
            Err(e) => {
                s.halted |= halt;
                self.lock().push(s);
                Err(e)
            }
        }
    }

    /// Sends a control message (top-up, close) for a session: `credential` echoing
    /// `challenge`; a 402 (the challenge expired meanwhile) is retried once with the 402's own
    /// session challenge of the same method.
    pub async fn control(
        &self,
        url: &Url,
        method: &str,
        mut challenge: Challenge,
        payload: impl Fn(&Challenge) -> serde_json::Map<String, serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, serde_json::Value), ClientError> {
        for attempt in 0..2 {
            let credential = Credential::new(&challenge, payload(&challenge));
            let mut value =
                HeaderValue::from_str(&credential.to_authorization()).map_err(|_| {
                    ClientError::PaymentFailed("the credential is not header-safe".into())
                })?;
            value.set_sensitive(true);
            let response = self.http.get(url.clone()).header(AUTHORIZATION, value).send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if status != StatusCode::PAYMENT_REQUIRED || attempt == 1 {
                return Ok((status, headers, body));
            }
            let fresh = session_challenges(&headers).into_iter().find(|c| c.method == method);
            match fresh {
                Some(fresh) => challenge = fresh,
                None => return Ok((status, headers, body)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The refund goes back to the budget, off the session's deposits, and into the ledger
    /// with its evidence, in one step.
    fn credit(&self, closed: &ClosedSession) {
        let Some(accounts) = self.accounts.get() else { return };
        accounts.refund_session(&farebox_wallet::Refund {
            session: closed.session.clone(),
            url: closed.url.clone(),
            rail: "mpp",
            amount: closed.refunded.clone(),
            reference: closed.reference.clone(),
        });
    }

    /// Closes one session (already taken out of the book) and credits the evidenced refund.
    async fn close(&self, s: &OpenSession) -> Result<ClosedSession, ClientError> {
        let closed = match &s.kind {
            SessionKind::Evm { .. } => self.close_evm(s).await?,
            SessionKind::Lightning { .. } => self.close_lightning(s).await?,
        };
        self.credit(&closed);
        Ok(closed)
    }

    /// An EVM close: a voucher for `min(claimed spent, signed)` (the server captures that and
    /// the escrow refunds the rest), then the refund as the close transaction's `ChannelClosed`
    /// event says, read from the wallet's node.
    async fn close_evm(&self, s: &OpenSession) -> Result<ClosedSession, ClientError> {
        let SessionKind::Evm { channel, escrow, domain, signer, rpc, signed, .. } = &s.kind else {
            unreachable!("called for EVM sessions")
        };
        let amount = close_amount(s.spent, *signed);
        let payload = SessionPayload::Close(signed_voucher(signer, domain, *channel, amount));
        let payload = payload.to_json();
        let (status, headers, body) = self
            .control(&s.url, evm_session::METHOD, s.challenge.clone(), |_| payload.clone())
            .await?;
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
            method: evm_session::METHOD,
            session: s.reference(),
            spent: Money::new(asset.clone(), s.deposit.amount.saturating_sub(refunded)),
            refunded: Money::new(asset, refunded),
            reference: format!("{named:#x}"),
        })
    }

    /// A Lightning close: the refund is what the wallet's node received on the return invoice,
    /// whatever the server answers.
    async fn close_lightning(&self, s: &OpenSession) -> Result<ClosedSession, ClientError> {
        let SessionKind::Lightning { id, preimage, refund, node, refund_wait } = &s.kind else {
            unreachable!("called for Lightning sessions")
        };
        let payload = LnPayload::Close { session_id: *id, preimage: *preimage }.to_json();
        let (status, _, body) = self
            .control(&s.url, lightning_session::METHOD, s.challenge.clone(), |_| payload.clone())
            .await?;
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
            method: lightning_session::METHOD,
            session: s.reference(),
            spent: Money::new(
                s.deposit.asset.clone(),
                s.deposit.amount.saturating_sub(refunded.amount),
            ),
            refunded,
            reference: hex::encode(refund),
        })
    }

    pub async fn close_all(&self) -> Vec<Result<ClosedSession, ClientError>> {
        let open: Vec<OpenSession> = std::mem::take(&mut *self.lock());
        let mut out = Vec::with_capacity(open.len());
        for s in open {
            out.push(self.close(&s).await);
        }
        out
    }
}

impl Drop for SessionBook {
    fn drop(&mut self) {
        let open: Vec<OpenSession> = std::mem::take(&mut *self.lock());
        if open.is_empty() {
            return;
        }
        let book = SessionBook {
            open: Mutex::new(open),
            paying: tokio::sync::Mutex::new(()),
            accounts: std::mem::take(&mut self.accounts),
            http: self.http.clone(),
        };
        let job = async move {
            match tokio::time::timeout(DROP_CLOSE_TIMEOUT, book.close_all()).await {
                Ok(results) => {
                    for r in results.into_iter().filter_map(Result::err) {
                        tracing::warn!(error = %r, "could not close a session on drop");
                    }
                }
                Err(_) => tracing::warn!(
                    "closing sessions on drop timed out; the servers will close them when idle"
                ),
            }
        };
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(job));
            }
            // A single-threaded runtime cannot be blocked for this: close in the background.
            Ok(h) => drop(h.spawn(job)),
            Err(_) => {
                let closing =
                    std::thread::spawn(move || match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(job),
                        Err(e) => {
                            tracing::warn!(error = %e, "no runtime to close sessions on drop")
                        }
                    });
                let _ = closing.join();
            }
        }
    }
}

/// The cumulative amount a close voucher signs: what the server last claimed spent, never
/// more than the wallet signed; with no claim seen, what was signed.
pub(crate) fn close_amount(claimed_spent: u128, signed: u128) -> u128 {
    if claimed_spent == 0 { signed } else { claimed_spent.min(signed) }
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

fn rejected(status: StatusCode, body: &serde_json::Value) -> ClientError {
    ClientError::ProofRejected {
        status: status.as_u16(),
        detail: body["detail"].as_str().unwrap_or("no detail given").to_string(),
    }
}

/// The session challenges of a response.
pub(crate) fn session_challenges(headers: &HeaderMap) -> Vec<Challenge> {
    crate::read_www_authenticate_from(headers)
        .challenges
        .into_iter()
        .filter(|c| c.intent == "session")
        .collect()
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
        voucher: signed_voucher(signer, domain, channel, amount),
    })
}

pub(crate) fn signed_voucher(
    signer: &PrivateKeySigner,
    domain: &VoucherDomain,
    channel: B256,
    amount: u128,
) -> SignedVoucher {
    let v = Voucher { channelId: channel, cumulativeAmount: amount };
    SignedVoucher {
        channel_id: channel,
        cumulative_amount: amount,
        signature: voucher::sign(signer, domain, &v).to_vec(),
    }
}

/// A member of the response's `Payment-Receipt`, as text.
fn receipt_member(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get("payment-receipt")?.to_str().ok()?;
    let receipt = PaymentReceipt::decode(value).ok()?;
    match receipt.extensions.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What a session receipt says was spent, in base units (EVM: a decimal string; Lightning: sats).
pub(crate) fn receipt_spent(headers: &HeaderMap, method: &str) -> Option<u128> {
    let spent = receipt_member(headers, "spent")?;
    match method {
        evm_session::METHOD => spent.parse().ok(),
        _ => spent.parse::<u64>().ok().map(|sat| u128::from(sat) * 1000),
    }
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

pub(crate) type SharedBook = Arc<SessionBook>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_never_signs_more_than_was_signed() {
        assert_eq!(close_amount(0, 5_000), 5_000, "no claim seen: what was signed");
        assert_eq!(close_amount(3_000, 5_000), 3_000, "less claimed: the claim");
        assert_eq!(close_amount(9_000, 5_000), 5_000, "more claimed: what was signed");
    }

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
