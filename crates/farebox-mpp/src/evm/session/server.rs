//! The server side of EVM sessions (`method="evm", intent="session"`): payment channels in a
//! `SessionEscrow`, paid per request with cumulative vouchers.
//!
//! **Accounting.** One [`SessionRecord`] per channel (namespace [`NAMESPACE`], key the
//! lowercase channel id): `deposit` and `settled` mirror the escrow, `accepted` is the highest
//! voucher accepted (its signature is kept in `data`), `spent` what served requests consumed.
//! Every change is a compare-and-swap ([`update_session`]), so concurrent requests on one
//! channel, a restart, or several instances sharing PostgreSQL never spend one voucher twice;
//! the debit is persisted before the handler runs and credited back if the handler fails.
//!
//! **Verification**, per action, after the envelope (id, realm, unexpired challenge, the
//! request names this server's token, payee, chain and escrow; for `open` and `voucher`, which
//! are billed, also a challenge issued for this route and method whose `amount` is at least the
//! route's price: `envelope::live_for`). A challenge is not used up by a voucher: a wallet
//! sends its next voucher up front with the next request, echoing the challenge it last paid
//! under while that is unexpired, and the voucher itself is what cannot be replayed (it must
//! add to what was accepted, or the unspent balance must cover the price):
//! - `open`: the transaction's receipt carries a `ChannelOpened` for the payload's channel from
//!   this escrow (reverted: 409 `session/transaction-reverted`; not mined yet: 503); the channel
//!   on chain pays this payee in this token, is not finalized, has no close pending, and holds
//!   at least one unit beyond what is settled; the id is the one the contract derives; then the
//!   first voucher as below. The escrow's grace period is checked once (at least
//!   [`MIN_GRACE_PERIOD`]). Opening a channel already known is a voucher on it.
//! - `voucher`: the EIP-712 signer (low `s`) is the channel's signer *from chain state*
//!   (`authorizedSigner`, else the payer), never from the payload; a voucher below the accepted
//!   one is refused (cumulative amounts only grow), an equal one is an idempotent retry, a larger
//!   one must grow by `minVoucherDelta` and stay within the deposit (re-read from chain once, so
//!   an on-chain top-up the server has not heard of still counts); then the price is debited
//!   from `accepted − spent`, or the answer is 402 `session/insufficient-balance` with
//!   `channelId` and `requiredTopUp`. Chain state older than `state_ttl` is re-read (a close the
//!   payer requested on chain stops the session).
//! - `topUp`: the transaction emitted `ToppedUp` for this channel and amount; the deposit is
//!   re-read. Answered `204` with a receipt, without the handler.
//! - `close`: the voucher is checked as above; the payee captures `max(spent, settled)` with
//!   `closeWithCapture` (using the close voucher, or the highest accepted one when the close
//!   voucher is lower) and the escrow refunds the rest to the payer. Answered `200` with the
//!   transaction hash, without the handler. A close whose transaction cannot be sent leaves the
//!   channel `Closing` (no more service) and is finished by [`crate::MppRail::close_idle_sessions`] or
//!   a retried close.
//!
//! Unknown channels answer 410 `session/channel-not-found`, closed ones 410
//! `session/channel-finalized`.
//!
//! **A channel on chain that the store does not know** (its record was lost, or the payer
//! opened it against another deployment) is adopted from chain state, and the voucher it comes
//! with counts as *spent*: the server cannot know what that voucher already paid for, so only a
//! larger one buys service. An `open` is fresh (its voucher buys service) only when its
//! transaction was mined less than one challenge lifetime ago in chain time, so an old `open`
//! replayed after a record loss is an adoption too; a `topUp` of an unknown channel is answered
//! without adopting it. What a lost record still exposes: a payer who kept its older vouchers
//! can present them in ascending order and be served each increment again, up to its highest
//! voucher but never below what is settled on chain; `settle_threshold` bounds that.
//!
//! **Upkeep** (`Rail::maintain`). A payer may
//! `requestClose` on chain and `withdraw` everything not settled once the escrow's grace period
//! has passed; the payee must close first. `Rail::upkeep_deadline` states the grace period, and
//! the paywall refuses to start upkeep that is not well inside it. Each tick:
//! 1. *watches*: reads the escrow's `CloseRequested` events since the last block it read (one
//!    `eth_blockNumber` and one `eth_getLogs`, the last [`REORG_DEPTH`] blocks read again so
//!    that an event moved by a reorganisation is not missed) and, for each event on a channel
//!    the store holds open, reads the channel (one `eth_call`) and ends its service
//!    (`Closing`; a top-up that cancels the request on chain later does not reopen it). The
//!    first tick after a start, a tick that finds more than [`MAX_LOG_BLOCKS`] blocks unread,
//!    or one whose `eth_getLogs` fails reads instead every channel the store holds open (one
//!    `eth_call` each, at most [`FULL_PASS_LIMIT`]).
//! 2. *closes* `Closing` channels, and channels idle for `MppConfig::evm_idle_close`, with
//!    `closeWithCapture` and the highest voucher, capturing `max(spent, settled)`: one
//!    transaction each (also [`crate::MppRail::close_idle_sessions`]).
//! 3. *settles*, when [`EvmSessionConfigBuilder::settle_threshold`] is set, channels whose served but
//!    unsettled amount reached it: one `eth_call` and one `settle` transaction each.
//!
//! So a quiet tick costs two RPC calls, whatever the number of channels.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::evm::escrow::{self, Channel, EscrowRpc};
use crate::evm::voucher::{self, Voucher, VoucherDomain};
use farebox_core::store::{Update, update_session};
use farebox_core::{
    Asset, ControlAnswer, Money, PaymentError, SessionRecord, SessionStatus, SessionStore,
};
use farebox_evm::token::TokenInfo;
use farebox_evm::{Address, B256, EvmError, EvmRpc, PrivateKeySigner, U256};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::evm::session::{
    self as evm_session, CREDENTIAL_HASH, EvmSessionRequest, OpenPayload, SessionPayload,
    SignedVoucher, TopUpPayload, UNIT_REQUEST,
};
use crate::problem::{self, ProblemType};
use crate::rail::envelope::{Envelope, live_for, receipt_header, unexpired};
use crate::rail::intent::{Approved, Intent, Settles};
use crate::rail::{BACKEND_RETRY_AFTER, ConfigError, check_token, token_asset};
use crate::receipt::PaymentReceipt;
use crate::time;

/// The session-store namespace of EVM channels.
pub const NAMESPACE: &str = "mpp-evm-session";
/// The shortest forced-close grace period the server accepts an escrow with (the draft: 10 min).
pub const MIN_GRACE_PERIOD: u64 = 600;
/// Blocks whose `CloseRequested` events each upkeep tick reads again (a reorganisation may
/// move an event into a block already read).
pub const REORG_DEPTH: u64 = 64;
/// The most blocks one upkeep tick reads events of; further behind, it reads channel state
/// instead (providers cap the range of `eth_getLogs`).
pub const MAX_LOG_BLOCKS: u64 = 2_000;
/// The most channels a full pass over the store reads.
pub const FULL_PASS_LIMIT: usize = 10_000;

/// The `evm` session method: the escrow and token channels are opened in, the payee key that
/// closes them, and the node to read them from. Built and checked by
/// [`EvmSessionConfig::builder`].
#[derive(Clone)]
pub struct EvmSessionConfig {
    pub(crate) rpc: EvmRpc,
    pub(crate) payee: PrivateKeySigner,
    pub(crate) escrow: Address,
    pub(crate) token: Address,
    pub(crate) info: TokenInfo,
    pub(crate) suggested_deposit: Option<u128>,
    pub(crate) min_voucher_delta: u128,
    pub(crate) state_ttl: Duration,
    pub(crate) receipt_timeout: Duration,
    pub(crate) settle_threshold: Option<u128>,
}

impl EvmSessionConfig {
    /// A builder over the node to read channels from and the payee (channels must pay its
    /// address, and it signs the closing transactions); `escrow`, `token` and `described_as`
    /// are required.
    pub fn builder(rpc: EvmRpc, payee: PrivateKeySigner) -> EvmSessionConfigBuilder {
        EvmSessionConfigBuilder {
            rpc,
            payee,
            escrow: None,
            token: None,
            info: None,
            suggested_deposit: None,
            min_voucher_delta: 0,
            state_ttl: Duration::from_secs(60),
            receipt_timeout: Duration::from_secs(20),
            settle_threshold: None,
        }
    }

    /// The escrow contract channels are opened in.
    pub fn escrow(&self) -> Address {
        self.escrow
    }

    /// A builder holding this configuration, to change part of it (and check it again).
    pub fn to_builder(&self) -> EvmSessionConfigBuilder {
        let c = self.clone();
        EvmSessionConfigBuilder {
            rpc: c.rpc,
            payee: c.payee,
            escrow: Some(c.escrow),
            token: Some(c.token),
            info: Some(c.info),
            suggested_deposit: c.suggested_deposit,
            min_voucher_delta: c.min_voucher_delta,
            state_ttl: c.state_ttl,
            receipt_timeout: c.receipt_timeout,
            settle_threshold: c.settle_threshold,
        }
    }

    /// The farebox asset routes are priced in for this method.
    pub fn asset(&self) -> Asset {
        token_asset(self.rpc.chain_id(), self.token, &self.info.symbol, self.info.decimals)
    }
}

/// Builds an [`EvmSessionConfig`]; [`EvmSessionConfigBuilder::build`] names what is missing or
/// wrong.
#[must_use]
pub struct EvmSessionConfigBuilder {
    rpc: EvmRpc,
    payee: PrivateKeySigner,
    escrow: Option<Address>,
    token: Option<Address>,
    info: Option<TokenInfo>,
    suggested_deposit: Option<u128>,
    min_voucher_delta: u128,
    state_ttl: Duration,
    receipt_timeout: Duration,
    settle_threshold: Option<u128>,
}

impl EvmSessionConfigBuilder {
    /// The node to read channels from and send closes through.
    pub fn rpc(mut self, rpc: EvmRpc) -> Self {
        self.rpc = rpc;
        self
    }

    /// The `SessionEscrow` contract channels are opened in.
    pub fn escrow(mut self, escrow: Address) -> Self {
        self.escrow = Some(escrow);
        self
    }

    /// The ERC-20 token channels hold.
    pub fn token(mut self, token: Address) -> Self {
        self.token = Some(token);
        self
    }

    /// The token's symbol (as prices name it, and for wallets' display) and decimals:
    /// `&usdc::BASE_SEPOLIA`, or a [`TokenInfo`] (its EIP-712 domain is not used).
    pub fn described_as(mut self, info: impl Into<TokenInfo>) -> Self {
        self.info = Some(info.into());
        self
    }

    /// What the challenge suggests depositing (more than zero); unset: 100 units of the
    /// route's price.
    pub fn suggested_deposit(mut self, amount: u128) -> Self {
        self.suggested_deposit = Some(amount);
        self
    }

    /// Smallest increase of a voucher over the last accepted one (default 0).
    pub fn min_voucher_delta(mut self, delta: u128) -> Self {
        self.min_voucher_delta = delta;
        self
    }

    /// How long chain state read for a channel is trusted before it is read again (default
    /// 60 s).
    pub fn state_ttl(mut self, ttl: Duration) -> Self {
        self.state_ttl = ttl;
        self
    }

    /// How long an `open` or `topUp` transaction may take to be mined before the answer is
    /// 503 (default 20 s).
    pub fn receipt_timeout(mut self, timeout: Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    /// Settle a channel on chain (`settle`, the channel stays open) once what it served beyond
    /// what is settled reaches `amount`; unset: only closes move money. Counted on what was
    /// *spent*, not on what vouchers authorize: the server is owed what it served, and a
    /// settled amount can never go back to the payer (a close captures at least it), so it
    /// settles with the highest voucher it holds that does not exceed what was spent.
    pub fn settle_threshold(mut self, amount: u128) -> Self {
        self.settle_threshold = Some(amount);
        self
    }

    pub fn build(self) -> Result<EvmSessionConfig, ConfigError> {
        let wrong = |field, problem: &str| ConfigError::field("evm session", field, problem);
        let escrow = self.escrow.ok_or_else(|| wrong("escrow", "is required"))?;
        let token = self.token.ok_or_else(|| wrong("token", "is required"))?;
        let info = self.info.ok_or_else(|| wrong("described_as", "is required"))?;
        check_token("evm session", token, &info, false)?;
        if escrow.is_zero() || escrow == token {
            return Err(wrong("escrow", "must be the escrow contract's address"));
        }
        if self.suggested_deposit == Some(0) {
            return Err(wrong("suggested_deposit", "must be more than zero"));
        }
        if self.settle_threshold == Some(0) {
            return Err(wrong("settle_threshold", "must be more than zero"));
        }
        if self.state_ttl.is_zero() || self.receipt_timeout.is_zero() {
            return Err(wrong(
                "state_ttl",
                "state_ttl and receipt_timeout must be longer than zero",
            ));
        }
        Ok(EvmSessionConfig {
            rpc: self.rpc,
            payee: self.payee,
            escrow,
            token,
            info,
            suggested_deposit: self.suggested_deposit,
            min_voucher_delta: self.min_voucher_delta,
            state_ttl: self.state_ttl,
            receipt_timeout: self.receipt_timeout,
            settle_threshold: self.settle_threshold,
        })
    }
}

impl std::fmt::Debug for EvmSessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmSessionConfig")
            .field("chain_id", &self.rpc.chain_id())
            .field("escrow", &self.escrow)
            .field("token", &self.token)
            .field("payee", &self.payee.address())
            .finish_non_exhaustive()
    }
}

/// The `evm` session, offered under `config`.
pub(crate) struct EvmSession {
    env: std::sync::Arc<Envelope>,
    /// How long an unused channel stays open ([`crate::MppConfig::evm_idle_close`]).
    idle_close: Duration,
    pub config: EvmSessionConfig,
    pub asset: Asset,
    pub domain: VoucherDomain,
    pub sessions: std::sync::Arc<dyn SessionStore>,
    /// The escrow's grace period in seconds once read and found long enough; 0 before.
    grace: AtomicU64,
    /// The last block whose `CloseRequested` events upkeep has read; `None` until the first
    /// tick, which reads channel state instead. Held through a tick: ticks take turns.
    scanned: tokio::sync::Mutex<Option<u64>>,
    /// Channels whose served but unsettled amount reached `settle_threshold`.
    settle_due: std::sync::Mutex<HashSet<B256>>,
}

impl EvmSession {
    pub fn new(
        env: std::sync::Arc<Envelope>,
        idle_close: Duration,
        config: EvmSessionConfig,
        sessions: std::sync::Arc<dyn SessionStore>,
    ) -> Self {
        EvmSession {
            env,
            idle_close,
            asset: config.asset(),
            domain: config.rpc.voucher_domain(config.escrow),
            config,
            sessions,
            grace: AtomicU64::new(0),
            scanned: tokio::sync::Mutex::new(None),
            settle_due: std::sync::Mutex::default(),
        }
    }

    /// Notes `channel` for settlement if what it served beyond `settled` reached the threshold.
    fn note_unsettled(&self, channel: B256, spent: u128, settled: u128) {
        if self.config.settle_threshold.is_some_and(|t| spent.saturating_sub(settled) >= t) {
            self.settle_due.lock().unwrap_or_else(|e| e.into_inner()).insert(channel);
        }
    }

    fn payee(&self) -> Address {
        self.config.payee.address()
    }
}

/// What the channel record's `data` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChannelData {
    payer: String,
    /// Who signs vouchers (the authorized signer, else the payer), from chain state.
    signer: String,
    /// The signature of the voucher for `accepted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    voucher_signature: Option<String>,
    /// When chain state was last read (Unix seconds).
    checked_at: u64,
    /// The close being settled, once one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    close: Option<CloseIntent>,
    /// The highest voucher held whose whole amount was spent: what settlement may redeem
    /// without taking money for requests not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spent_voucher: Option<HeldVoucher>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeldVoucher {
    amount: String,
    signature: String,
}

impl ChannelData {
    /// Keeps `amount` (signed by `signature`) as the spent voucher if it is higher.
    fn note_spent_voucher(&mut self, amount: u128, signature: &str) {
        let held = self.spent_voucher.as_ref().and_then(|v| v.amount.parse::<u128>().ok());
        if amount > 0 && held.is_none_or(|h| h < amount) {
            self.spent_voucher =
                Some(HeldVoucher { amount: amount.to_string(), signature: signature.to_owned() });
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloseIntent {
    /// The voucher closed with.
    amount: String,
    signature: String,
    /// What the payee takes: `max(spent, settled)`.
    capture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tx: Option<String>,
}

fn data_of(record: &SessionRecord) -> Result<ChannelData, PaymentError> {
    serde_json::from_str(&record.data)
        .map_err(|e| PaymentError::internal("mpp_session_state", format!("channel record: {e}")))
}

fn with_data(record: &SessionRecord, data: &ChannelData) -> Result<SessionRecord, PaymentError> {
    let data = serde_json::to_string(data)
        .map_err(|e| PaymentError::internal("mpp_session_state", format!("channel record: {e}")))?;
    Ok(SessionRecord { data, updated_at: time::unix_now()?, ..record.clone() })
}

fn key(channel: &B256) -> String {
    format!("{channel:#x}")
}

/// What verifying an EVM session credential hands to its settlement.
#[derive(Debug)]
pub(crate) enum Held {
    /// `price` debited from `channel`; credited back on release.
    Debit { channel: B256, challenge_id: String, price: u128, accepted: u128, spent: u128 },
    /// A top-up taken into account.
    TopUp { channel: B256, challenge_id: String, deposit: u128 },
    /// A close to send on chain.
    Close { channel: B256, challenge_id: String },
}

fn chain_error(e: EvmError, what: &str) -> PaymentError {
    match e {
        EvmError::Reverted { reason } => ProblemType::SessionTransactionReverted
            .error(format!("{what}: the transaction reverted ({reason})")),
        e => PaymentError::unavailable(
            "evm_unavailable",
            format!("cannot read the chain for {what}: {e}"),
            BACKEND_RETRY_AFTER,
        ),
    }
}

impl EvmSession {
    /// Verifies an EVM session credential (the envelope's id and realm already checked).
    async fn verify(
        &self,
        resource: &farebox_core::Resource,
        cred: &crate::Credential,
        now: u64,
    ) -> Result<Approved<Held>, PaymentError> {
        let ch = &cred.challenge;
        unexpired(ch, now)?;
        let request = crate::challenge::decode_request(&ch.request)
            .ok()
            .and_then(|r| EvmSessionRequest::from_json(&r).ok())
            .ok_or_else(|| {
                problem::invalid_challenge("the challenge request is not an EVM session request")
            })?;
        let cfg = &self.config;
        if request.currency != cfg.token
            || request.recipient != self.payee()
            || request.chain_id != cfg.rpc.chain_id()
            || request.escrow != cfg.escrow
        {
            return Err(problem::invalid_challenge(
                "the challenge names another token, payee, chain or escrow than this server's",
            ));
        }
        let payload = SessionPayload::from_json(&cred.payload)
            .map_err(|e| problem::malformed(format!("session payload: {e}")))?;
        // A billed request (open, voucher) pays this route's price under a challenge issued
        // for this route at no lower a price: the same checks whether the credential answers
        // a 402 or comes up front on a later request (the wallet reuses a live challenge).
        let price = || {
            live_for(ch, resource, now)?;
            let price =
                resource.price.in_asset(&self.asset).map(|p| p.amount).ok_or_else(|| {
                    problem::invalid_challenge("this route has no price in the channel's token")
                })?;
            if request.amount < U256::from(price) {
                return Err(problem::insufficient(format!(
                    "the challenge charges {} per request, this route costs {price}",
                    request.amount
                )));
            }
            Ok(price)
        };
        let id = ch.id.clone();
        match payload {
            SessionPayload::Open(open) => {
                let price = price()?;
                self.open_channel(&open, price).await?;
                self.debit(&open.voucher, price, id).await
            }
            SessionPayload::Voucher(v) => self.debit(&v, price()?, id).await,
            SessionPayload::TopUp(t) => self.top_up(&t, id).await,
            SessionPayload::Close(v) => self.begin_close(&v, id).await,
        }
    }

    /// The event `read` finds in the transaction `tx` (`what`, in errors), waiting once for its
    /// receipt when it is not there yet; a transaction not mined by then is a 503 `pending`.
    async fn mined<T, Fut>(
        &self,
        tx: B256,
        what: &str,
        pending: &'static str,
        read: impl Fn() -> Fut,
    ) -> Result<T, PaymentError>
    where
        Fut: std::future::Future<Output = Result<Option<T>, EvmError>>,
    {
        let mut event = read().await.map_err(|e| chain_error(e, what))?;
        if event.is_none() {
            let rpc = &self.config.rpc;
            let waited = rpc.wait_for_receipt(tx, self.config.receipt_timeout).await;
            waited.map_err(|e| chain_error(e, what))?;
            event = read().await.map_err(|e| chain_error(e, what))?;
        }
        event.ok_or_else(|| {
            let detail = format!("{what} {tx:#x} is not mined yet");
            PaymentError::unavailable(pending, detail, BACKEND_RETRY_AFTER)
        })
    }

    /// Checks an `open` and records the channel (unless it is known already): a fresh one with
    /// nothing spent, an old one as an adoption (see the module docs).
    async fn open_channel(&self, open: &OpenPayload, price: u128) -> Result<(), PaymentError> {
        let channel = open.voucher.channel_id;
        if self.sessions.load_session(NAMESPACE, &key(&channel)).await?.is_some() {
            return Ok(()); // a retried open: the voucher path does the rest
        }
        self.check_grace_period().await?;
        let rpc = &self.config.rpc;
        let opened = || rpc.escrow_opened_by(self.config.escrow, open.hash);
        let event =
            self.mined(open.hash, "the open transaction", "mpp_open_pending", opened).await?;
        if event.channelId != channel {
            return Err(problem::verification_failed(
                "the open transaction opened another channel than the payload names",
            ));
        }
        let state = self.read_channel(channel).await?;
        if state.payee != self.payee() || state.token != self.config.token {
            return Err(problem::verification_failed(
                "the channel pays another payee or holds another token than this server's",
            ));
        }
        let signer = (state.authorizedSigner != Address::ZERO).then_some(state.authorizedSigner);
        let derived = escrow::channel_id(
            state.payer,
            state.payee,
            state.token,
            open.salt,
            signer,
            self.config.escrow,
            self.config.rpc.chain_id(),
        );
        if derived != channel {
            return Err(problem::verification_failed(
                "the channel id is not the one the escrow derives from its parties and salt",
            ));
        }
        if state.deposit.saturating_sub(state.settled) < price {
            return Err(ProblemType::SessionInsufficientBalance
                .error("the channel's unsettled deposit is less than one request")
                .with_member("channelId", key(&channel))
                .with_member(
                    "requiredTopUp",
                    (price - state.deposit.saturating_sub(state.settled)).to_string(),
                ));
        }
        // A payer opens after it got a challenge and pays before the challenge expires; an
        // open mined longer ago than a challenge lives is a channel this store has lost (or
        // never had), whose voucher may have paid for requests already.
        let age = rpc
            .escrow_tx_age(open.hash)
            .await
            .map_err(|e| chain_error(e, "the open transaction"))?;
        if age.is_none_or(|age| age > self.env.ttl.as_secs()) {
            self.adopt(channel, &state, &open.voucher).await?;
            return Ok(());
        }
        let record = record_from_chain(&state, None)?;
        // A concurrent open of the same channel may have won: either way it is recorded.
        self.sessions.create_session(NAMESPACE, &key(&channel), &record).await?;
        Ok(())
    }

    /// Records a channel the store does not know from its chain `state`, everything `v`
    /// authorizes counted as spent (see the module docs). Nothing is recorded unless the
    /// channel pays this server in its token and `v` is the channel signer's and within the
    /// deposit.
    async fn adopt(
        &self,
        channel: B256,
        state: &Channel,
        v: &SignedVoucher,
    ) -> Result<SessionRecord, PaymentError> {
        let id = key(&channel);
        check_ours(self, &channel, state)?;
        check_voucher_signature(&self.domain, signer_of(state), v)?;
        if v.cumulative_amount > state.deposit {
            return Err(exceeds_deposit(&channel, v.cumulative_amount, state.deposit));
        }
        let record = record_from_chain(state, Some(v))?;
        // A concurrent adoption may have won: its record is the one.
        self.sessions.create_session(NAMESPACE, &id, &record).await?;
        Ok(self.sessions.load_session(NAMESPACE, &id).await?.map(|v| v.value).unwrap_or(record))
    }

    /// The escrow's grace period in seconds, once checked to be long enough for the payee to
    /// close first (read from the chain once).
    async fn check_grace_period(&self) -> Result<u64, PaymentError> {
        let known = self.grace.load(Ordering::Relaxed);
        if known != 0 {
            return Ok(known);
        }
        let grace = self
            .config
            .rpc
            .escrow_close_grace_period(self.config.escrow)
            .await
            .map_err(|e| chain_error(e, "the escrow"))?;
        if grace < MIN_GRACE_PERIOD {
            return Err(PaymentError::internal(
                "mpp_escrow_grace",
                format!(
                    "the escrow's close grace period is {grace} s, below {MIN_GRACE_PERIOD} s: a payer could withdraw before the payee closes"
                ),
            ));
        }
        self.grace.store(grace, Ordering::Relaxed);
        Ok(grace)
    }

    async fn read_channel(&self, channel: B256) -> Result<Channel, PaymentError> {
        let state = self
            .config
            .rpc
            .escrow_channel(self.config.escrow, channel)
            .await
            .map_err(|e| chain_error(e, "the channel"))?;
        if state.payer == Address::ZERO {
            return Err(ProblemType::SessionChannelNotFound
                .error("no such channel in this server's escrow")
                .with_member("channelId", key(&channel)));
        }
        Ok(state)
    }

    /// The channel's record; a channel the store does not know is adopted with `presented`
    /// counted as spent ([`Self::adopt`]).
    async fn channel_record(
        &self,
        channel: B256,
        refresh: bool,
        presented: &SignedVoucher,
    ) -> Result<SessionRecord, PaymentError> {
        if let Some(record) = self.known_record(channel, refresh).await? {
            return Ok(record);
        }
        let state = self.read_channel(channel).await?;
        self.adopt(channel, &state, presented).await
    }

    /// The channel's record if the store has it, refreshed from chain state when it is older
    /// than the TTL or `refresh` asks.
    async fn known_record(
        &self,
        channel: B256,
        refresh: bool,
    ) -> Result<Option<SessionRecord>, PaymentError> {
        let id = key(&channel);
        let Some(current) = self.sessions.load_session(NAMESPACE, &id).await? else {
            return Ok(None);
        };
        let data = data_of(&current.value)?;
        let stale =
            time::unix_now()?.saturating_sub(data.checked_at) > self.config.state_ttl.as_secs();
        if current.value.status != SessionStatus::Open || !(refresh || stale) {
            return Ok(Some(current.value));
        }
        let state = self.read_channel(channel).await?;
        let now = time::unix_now()?;
        let updated = update_session(&*self.sessions, NAMESPACE, &id, |r| {
            let mut data = data_of(r)?;
            data.checked_at = now;
            let next = with_data(&synced(r, &state), &data)?;
            Ok::<_, PaymentError>(Update::Write(next.clone(), next))
        })
        .await?;
        updated
            .map(Some)
            .ok_or_else(|| PaymentError::internal("mpp_session_state", "channel record vanished"))
    }

    /// Accepts `v` (if it adds to what was accepted) and debits `price`, persisted.
    async fn debit(
        &self,
        v: &SignedVoucher,
        price: u128,
        challenge_id: String,
    ) -> Result<Approved<Held>, PaymentError> {
        let channel = v.channel_id;
        let _turn = self.env.locks.turn(&key(&channel)).await;
        let mut record = self.channel_record(channel, false, v).await?;
        refuse_unless_open(&record, &channel)?;
        if v.cumulative_amount > record.deposit {
            // Perhaps topped up on chain since we last looked.
            record = self.channel_record(channel, true, v).await?;
            refuse_unless_open(&record, &channel)?;
        }
        let data = data_of(&record)?;
        check_signature(self, v, &data)?;
        let min_delta = self.config.min_voucher_delta;
        let outcome = update_session(&*self.sessions, NAMESPACE, &key(&channel), |r| {
            apply_voucher(r, v, price, min_delta)
        })
        .await?
        .ok_or_else(|| channel_gone(&channel))?;
        let (accepted, spent) = outcome?;
        self.note_unsettled(channel, spent, record.settled);
        // Who paid is who the chain says owns the channel, never what the credential claims.
        Ok(Approved::payment(
            Money::new(self.asset.clone(), price),
            Some(data.payer),
            key(&channel),
            Held::Debit { channel, challenge_id, price, accepted, spent },
        ))
    }

    /// Takes an on-chain top-up into account.
    async fn top_up(
        &self,
        t: &TopUpPayload,
        challenge_id: String,
    ) -> Result<Approved<Held>, PaymentError> {
        let rpc = &self.config.rpc;
        let topped_up = || rpc.escrow_topped_up_by(self.config.escrow, t.hash);
        let what = "the top-up transaction";
        let event = self.mined(t.hash, what, "mpp_top_up_pending", topped_up).await?;
        if event.channelId != t.channel_id || event.amount != t.additional_deposit {
            return Err(problem::verification_failed(
                "the top-up transaction added another amount or to another channel",
            ));
        }
        let deposit = match self.known_record(t.channel_id, true).await? {
            Some(record) => {
                refuse_unless_open(&record, &t.channel_id)?;
                record.deposit
            }
            None => {
                // Not adopted: only a voucher can say how much may have been spent already.
                let state = self.read_channel(t.channel_id).await?;
                check_ours(self, &t.channel_id, &state)?;
                if state.finalized || state.closeRequestedAt != 0 {
                    return Err(channel_gone(&t.channel_id));
                }
                state.deposit
            }
        };
        Ok(Approved::control(
            Money::zero(self.asset.clone()),
            None,
            key(&t.channel_id),
            Held::TopUp { channel: t.channel_id, challenge_id, deposit },
        ))
    }

    /// Checks a close voucher and marks the channel `Closing` (no more service).
    async fn begin_close(
        &self,
        v: &SignedVoucher,
        challenge_id: String,
    ) -> Result<Approved<Held>, PaymentError> {
        let channel = v.channel_id;
        let record = self.channel_record(channel, false, v).await?;
        if record.status == SessionStatus::Closed {
            return Err(channel_gone(&channel));
        }
        check_signature(self, v, &data_of(&record)?)?;
        let signature = crate::fields::hex0x(&v.signature);
        update_session(&*self.sessions, NAMESPACE, &key(&channel), |r| {
            if r.status == SessionStatus::Closed {
                return Err(channel_gone(&channel));
            }
            let capture = r.spent.max(r.settled);
            let mut data = data_of(r)?;
            let (amount, sig) = if v.cumulative_amount >= capture {
                (v.cumulative_amount, signature.clone())
            } else {
                match (&data.voucher_signature, r.accepted >= capture) {
                    (Some(sig), true) => (r.accepted, sig.clone()),
                    _ => {
                        return Err(problem::verification_failed(format!(
                            "the close voucher for {} is below the {capture} already spent",
                            v.cumulative_amount
                        )));
                    }
                }
            };
            if data.close.as_ref().is_some_and(|c| c.tx.is_some()) {
                return Ok(Update::Keep(())); // already sent; settle finishes or reports it
            }
            data.close = Some(CloseIntent {
                amount: amount.to_string(),
                signature: sig,
                capture: capture.to_string(),
                tx: None,
            });
            let mut next = with_data(r, &data)?;
            next.status = SessionStatus::Closing;
            Ok(Update::Write(next, ()))
        })
        .await?
        .ok_or_else(|| channel_gone(&channel))?;
        Ok(Approved::control(
            Money::zero(self.asset.clone()),
            None,
            key(&channel),
            Held::Close { channel, challenge_id },
        ))
    }

    /// Sends the close recorded on `channel` and records the outcome.
    async fn finish_close(&self, channel: B256) -> Result<Closed, PaymentError> {
        let id = key(&channel);
        let record = self
            .sessions
            .load_session(NAMESPACE, &id)
            .await?
            .ok_or_else(|| channel_gone(&channel))?
            .value;
        let data = data_of(&record)?;
        let intent = data.close.clone().ok_or_else(|| {
            PaymentError::internal("mpp_session_state", "a closing channel without its close")
        })?;
        let parse = |text: &str| {
            text.parse::<u128>().map_err(|_| {
                PaymentError::internal("mpp_session_state", "bad amount in channel record")
            })
        };
        let (amount, capture) = (parse(&intent.amount)?, parse(&intent.capture)?);
        if record.status == SessionStatus::Closed {
            if let Some(tx) = intent.tx {
                return Ok(Closed {
                    accepted: record.accepted,
                    captured: capture,
                    refunded: record.deposit - capture,
                    tx,
                });
            }
            return Err(channel_gone(&channel));
        }
        let signature = crate::fields::parse_blob(&intent.signature).ok_or_else(|| {
            PaymentError::internal("mpp_session_state", "bad signature in channel record")
        })?;
        let cfg = &self.config;
        let sent = cfg
            .rpc
            .escrow_close_with_capture(&cfg.payee, cfg.escrow, channel, amount, capture, &signature)
            .await;
        let tx = match sent {
            Ok(tx) => format!("{tx:#x}"),
            Err(EvmError::Reverted { reason }) => {
                // Perhaps finalized meanwhile (the payer withdrew, another instance closed).
                let state = self.read_channel(channel).await?;
                if state.finalized {
                    self.mark_closed(&id, state.settled, None).await?;
                    return Err(channel_gone(&channel));
                }
                return Err(PaymentError::unavailable(
                    "mpp_close_failed",
                    format!(
                        "the close transaction would revert ({reason}); the channel stays closing"
                    ),
                    BACKEND_RETRY_AFTER,
                ));
            }
            Err(e) => {
                return Err(PaymentError::unavailable(
                    "mpp_close_unavailable",
                    format!(
                        "cannot send the close ({e}); the channel stays closing and is retried"
                    ),
                    BACKEND_RETRY_AFTER,
                ));
            }
        };
        self.mark_closed(&id, capture, Some(tx.clone())).await?;
        Ok(Closed {
            accepted: record.accepted,
            captured: capture,
            refunded: record.deposit.saturating_sub(capture),
            tx,
        })
    }

    async fn mark_closed(
        &self,
        id: &str,
        settled: u128,
        tx: Option<String>,
    ) -> Result<(), PaymentError> {
        update_session(&*self.sessions, NAMESPACE, id, |r| {
            let mut data = data_of(r)?;
            if let (Some(close), Some(tx)) = (data.close.as_mut(), &tx) {
                close.tx = Some(tx.clone());
            }
            let mut next = with_data(r, &data)?;
            next.status = SessionStatus::Closed;
            next.settled = next.settled.max(settled);
            Ok::<_, PaymentError>(Update::Write(next, ()))
        })
        .await?;
        Ok(())
    }

    /// Closes channels whose payer asked the chain for a forced close and channels idle since
    /// before `idle_before` (Unix seconds), and finishes closes that were left half done,
    /// capturing `max(spent, settled)` of each with its highest voucher. Returns how many
    /// channels were closed.
    async fn close_idle_before(&self, idle_before: u64) -> Result<usize, PaymentError> {
        let mut closed = 0;
        let closing =
            self.sessions.idle_sessions(NAMESPACE, SessionStatus::Closing, u64::MAX, 100).await?;
        let idle =
            self.sessions.idle_sessions(NAMESPACE, SessionStatus::Open, idle_before, 100).await?;
        for (id, current) in closing.into_iter().chain(idle) {
            let Some(channel) = crate::fields::parse_b256(&id) else { continue };
            if data_of(&current.value)?.close.is_none() {
                let due = update_session(&*self.sessions, NAMESPACE, &id, |now| {
                    close_intent(now, idle_before)
                })
                .await?;
                if due != Some(true) {
                    continue;
                }
            }
            match self.finish_close(channel).await {
                Ok(_) => closed += 1,
                Err(e) => {
                    tracing::warn!(channel = %id, code = e.code, detail = %e.detail, "could not close a channel")
                }
            }
        }
        Ok(closed)
    }

    /// Upkeep's watch (see the module docs): stops the service of every channel whose payer
    /// asked the chain for a forced close, so that [`Self::close_idle_before`] closes it
    /// with its highest voucher before the grace period ends. Reads the escrow's
    /// `CloseRequested` events since the last tick, or every open channel's state on the first
    /// tick, after a long gap, or when the node does not answer `eth_getLogs`.
    async fn watch(&self) -> Result<(), PaymentError> {
        let mut scanned = self.scanned.lock().await;
        let rpc = &self.config.rpc;
        let head = rpc.block_number().await.map_err(|e| chain_error(e, "the latest block"))?;
        let logged = match *scanned {
            Some(last) if head <= last => return Ok(()),
            Some(last) if head - last <= MAX_LOG_BLOCKS => {
                let from = (last + 1).saturating_sub(REORG_DEPTH);
                match rpc.escrow_close_requests(self.config.escrow, from, head).await {
                    Ok(channels) => Some(channels),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the escrow's close requests; reading every open channel instead");
                        None
                    }
                }
            }
            _ => None,
        };
        match logged {
            Some(channels) => {
                let mut seen = HashSet::new();
                for channel in channels.into_iter().filter(|c| seen.insert(*c)) {
                    let known = self.sessions.load_session(NAMESPACE, &key(&channel)).await?;
                    if let Some(record) = known {
                        self.watch_channel(channel, &record.value).await?;
                    }
                }
            }
            None => {
                let open = self
                    .sessions
                    .idle_sessions(NAMESPACE, SessionStatus::Open, u64::MAX, FULL_PASS_LIMIT)
                    .await?;
                if open.len() == FULL_PASS_LIMIT {
                    tracing::warn!(
                        limit = FULL_PASS_LIMIT,
                        "more open channels than one pass reads; the most recently used were not checked"
                    );
                }
                for (id, record) in open {
                    let Some(channel) = crate::fields::parse_b256(&id) else { continue };
                    self.watch_channel(channel, &record.value).await?;
                }
            }
        }
        *scanned = Some(head);
        Ok(())
    }

    /// Brings an open channel's record up to date with its chain state (see
    /// [`Self::sync_channel`]) and notes what it served beyond the settled amount for
    /// settlement.
    async fn watch_channel(
        &self,
        channel: B256,
        record: &SessionRecord,
    ) -> Result<(), PaymentError> {
        if record.status != SessionStatus::Open {
            return Ok(());
        }
        self.note_unsettled(channel, record.spent, record.settled);
        let state = self
            .config
            .rpc
            .escrow_channel(self.config.escrow, channel)
            .await
            .map_err(|e| chain_error(e, "the channel"))?;
        self.sync_channel(channel, &state).await
    }

    /// Writes what the chain `state` changes in the channel's record: a close the payer
    /// requested ends its service, a deposit or settlement made elsewhere is taken in.
    async fn sync_channel(&self, channel: B256, state: &Channel) -> Result<(), PaymentError> {
        update_session(&*self.sessions, NAMESPACE, &key(&channel), |r| {
            let next = synced(r, state);
            if (next.status, next.deposit, next.settled) == (r.status, r.deposit, r.settled) {
                return Ok::<_, PaymentError>(Update::Keep(()));
            }
            Ok(Update::Write(SessionRecord { updated_at: time::unix_now()?, ..next }, ()))
        })
        .await?;
        Ok(())
    }

    /// Upkeep's settlement (with [`EvmSessionConfig::settle_threshold`]): redeems on chain,
    /// channel open, the highest wholly spent voucher of every channel whose served but
    /// unsettled amount reached the threshold. A channel that fails is tried again next tick.
    async fn settle_due_channels(&self) -> Result<(), PaymentError> {
        let Some(threshold) = self.config.settle_threshold else { return Ok(()) };
        let due: Vec<B256> =
            self.settle_due.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        let mut failed = None;
        for channel in due {
            if let Err(e) = self.settle_channel(channel, threshold).await {
                tracing::warn!(channel = %key(&channel), code = e.code, detail = %e.detail, "could not settle a channel");
                self.settle_due.lock().unwrap_or_else(|e| e.into_inner()).insert(channel);
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn settle_channel(&self, channel: B256, threshold: u128) -> Result<(), PaymentError> {
        let id = key(&channel);
        let Some(current) = self.sessions.load_session(NAMESPACE, &id).await? else {
            return Ok(());
        };
        let r = current.value;
        if r.status != SessionStatus::Open || r.spent.saturating_sub(r.settled) < threshold {
            return Ok(());
        }
        let voucher = data_of(&r)?.spent_voucher.and_then(|v| {
            let amount = v.amount.parse::<u128>().ok()?;
            Some((amount, crate::fields::parse_blob(&v.signature)?))
        });
        // Only a voucher wholly spent: a settled amount never goes back to the payer.
        let Some((amount, signature)) = voucher.filter(|(a, _)| *a <= r.spent && *a > r.settled)
        else {
            return Ok(());
        };
        let cfg = &self.config;
        let state = self.read_channel(channel).await?;
        if state.finalized || state.closeRequestedAt != 0 || state.settled >= amount {
            // Closing or settled meanwhile: the record learns it, upkeep does the rest.
            return self.sync_channel(channel, &state).await;
        }
        cfg.rpc
            .escrow_settle(&cfg.payee, cfg.escrow, channel, amount, &signature)
            .await
            .map_err(|e| chain_error(e, "the settlement"))?;
        update_session(&*self.sessions, NAMESPACE, &id, |r| {
            let mut next = r.clone();
            next.settled = next.settled.max(amount);
            next.spent = next.spent.max(next.settled);
            next.accepted = next.accepted.max(next.spent);
            next.updated_at = time::unix_now()?;
            Ok::<_, PaymentError>(Update::Write(next, ()))
        })
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Intent for EvmSession {
    fn names(&self) -> (&'static str, &'static str) {
        (evm_session::METHOD, evm_session::INTENT)
    }

    /// The challenge line for `resource`, if it is priced in the channel's token.
    async fn challenge(
        &self,
        resource: &farebox_core::Resource,
    ) -> Result<Option<http::HeaderValue>, PaymentError> {
        let Some(price) = resource.price.in_asset(&self.asset).filter(|p| p.amount > 0) else {
            return Ok(None);
        };
        let cfg = &self.config;
        let request = EvmSessionRequest {
            amount: U256::from(price.amount),
            unit_type: Some(UNIT_REQUEST.into()),
            suggested_deposit: Some(U256::from(
                cfg.suggested_deposit.unwrap_or(price.amount.saturating_mul(100)),
            )),
            currency: cfg.token,
            recipient: self.payee(),
            chain_id: cfg.rpc.chain_id(),
            escrow: cfg.escrow,
            channel_id: None,
            min_voucher_delta: U256::from(cfg.min_voucher_delta),
            credential_types: vec![CREDENTIAL_HASH.into()],
            decimals: Some(cfg.info.decimals),
            description: resource.description.as_deref().map(str::to_owned),
        };
        self.env.issue(resource, self.names(), request.to_json(), false).map(Some)
    }

    async fn approve(
        self: std::sync::Arc<Self>,
        resource: &farebox_core::Resource,
        cred: &crate::Credential,
        now: u64,
    ) -> Result<farebox_core::Verdict, PaymentError> {
        Ok(self.verify(resource, cred, now).await?.into_verdict(self))
    }

    /// Watches for forced closes, closes those and idle channels, finishes interrupted closes,
    /// and settles channels past their threshold (see the module docs). Each step runs even when
    /// an earlier one failed; the first error is reported.
    async fn maintain(&self) -> Result<(), PaymentError> {
        // Watch before closing: a forced close seen now is closed in this same tick.
        let watched = self.watch().await;
        let closed = self.close_idle(self.idle_close).await.map(|_| ());
        let settled = self.settle_due_channels().await;
        watched.and(closed).and(settled)
    }

    async fn close_idle(&self, idle: Duration) -> Result<usize, PaymentError> {
        // Idle for at least `idle`: last changed at or before `now - idle`.
        let idle_before = time::unix_now()?.saturating_sub(idle.as_secs()).saturating_add(1);
        self.close_idle_before(idle_before).await
    }

    /// The escrow's grace period: a payer who asked the chain for a forced close may withdraw
    /// once it has passed.
    async fn upkeep_deadline(&self) -> Result<Option<Duration>, PaymentError> {
        Ok(Some(Duration::from_secs(self.check_grace_period().await?)))
    }
}

#[async_trait::async_trait]
impl Settles for EvmSession {
    type Held = Held;

    /// The receipt of a debit, a top-up or a close (sent on chain first).
    async fn settle(
        &self,
        held: Held,
        amount: Money,
        _reference: String,
    ) -> Result<farebox_core::Receipt, PaymentError> {
        let chain_id = self.config.rpc.chain_id();
        let now = time::format(time::unix_now()?);
        match &held {
            Held::Debit { channel, challenge_id, accepted, spent, .. } => {
                let receipt = session_receipt(now, channel, challenge_id, chain_id)
                    .with("acceptedCumulative", accepted.to_string())
                    .with("spent", spent.to_string());
                Ok(farebox_core::Receipt::new(
                    amount,
                    key(channel),
                    vec![receipt_header(&receipt)?],
                ))
            }
            Held::TopUp { channel, challenge_id, deposit } => {
                let receipt = session_receipt(now, channel, challenge_id, chain_id)
                    .with("deposit", deposit.to_string());
                Ok(farebox_core::Receipt::new(
                    amount,
                    key(channel),
                    vec![receipt_header(&receipt)?],
                ))
            }
            Held::Close { channel, challenge_id } => {
                let closed = self.finish_close(*channel).await?;
                let receipt = session_receipt(now, channel, challenge_id, chain_id)
                    .with("acceptedCumulative", closed.accepted.to_string())
                    .with("spent", closed.captured.to_string())
                    .with("txHash", closed.tx.clone());
                let answer = ControlAnswer {
                    status: http::StatusCode::OK,
                    body: Some(json!({
                        "status": "closed",
                        "channelId": key(channel),
                        "captured": closed.captured.to_string(),
                        "refunded": closed.refunded.to_string(),
                        "txHash": closed.tx,
                    })),
                };
                Ok(farebox_core::Receipt::new(amount, closed.tx, vec![receipt_header(&receipt)?])
                    .with_answer(answer))
            }
        }
    }

    /// Gives back the debit of a request that was not served.
    async fn release(&self, held: Held) {
        let Held::Debit { channel, price, .. } = &held else {
            return;
        };
        let released = update_session(&*self.sessions, NAMESPACE, &key(channel), |r| {
            let mut next = r.clone();
            next.spent = next.spent.saturating_sub(*price).max(next.settled);
            next.updated_at = time::unix_now()?;
            Ok::<_, PaymentError>(Update::Write(next, ()))
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, channel = %key(channel), "could not credit back an unserved request");
        }
    }
}

/// What upkeep does with a channel it found closing (the payer asked on chain) or idle since
/// before `idle_before`, as a [`update_session`] step: `true` when it recorded the close to
/// send, capturing `max(spent, settled)` with the highest voucher.
fn close_intent(r: &SessionRecord, idle_before: u64) -> Result<Update<bool>, PaymentError> {
    let mut data = data_of(r)?;
    let due = match r.status {
        SessionStatus::Closing => true,
        SessionStatus::Open => r.updated_at < idle_before,
        SessionStatus::Closed => false,
    };
    if !due || data.close.is_some() {
        // Not (or no longer) due, or another instance recorded its close already.
        return Ok(Update::Keep(due && r.status == SessionStatus::Closing));
    }
    let capture = r.spent.max(r.settled);
    let signature = data.voucher_signature.clone().filter(|_| r.accepted >= capture && capture > 0);
    let Some(signature) = signature else {
        // Nothing earned, or no voucher to claim it with: nothing to send. A channel its payer
        // is closing is done with (the payer withdraws it all); an idle one goes to the back of
        // the queue, so that it does not keep the others from their turn.
        let mut next = with_data(r, &data)?;
        if r.status == SessionStatus::Closing {
            next.status = SessionStatus::Closed;
        }
        return Ok(Update::Write(next, false));
    };
    data.close = Some(CloseIntent {
        amount: r.accepted.to_string(),
        signature,
        capture: capture.to_string(),
        tx: None,
    });
    let mut next = with_data(r, &data)?;
    next.status = SessionStatus::Closing;
    Ok(Update::Write(next, true))
}

/// The outcome of a close.
struct Closed {
    accepted: u128,
    captured: u128,
    refunded: u128,
    tx: String,
}

fn session_receipt(
    timestamp: String,
    channel: &B256,
    challenge_id: &str,
    chain_id: u64,
) -> PaymentReceipt {
    PaymentReceipt::success(evm_session::METHOD, timestamp, key(channel))
        .with("intent", evm_session::INTENT)
        .with("challengeId", challenge_id)
        .with("channelId", key(channel))
        .with("chainId", chain_id)
}

fn channel_gone(channel: &B256) -> PaymentError {
    ProblemType::SessionChannelFinalized
        .error("the channel is closed (or closing); open a new one")
        .with_member("channelId", key(channel))
}

fn refuse_unless_open(record: &SessionRecord, channel: &B256) -> Result<(), PaymentError> {
    if record.status == SessionStatus::Open { Ok(()) } else { Err(channel_gone(channel)) }
}

fn check_signature(
    m: &EvmSession,
    v: &SignedVoucher,
    data: &ChannelData,
) -> Result<(), PaymentError> {
    let expected: Address = data
        .signer
        .parse()
        .map_err(|_| PaymentError::internal("mpp_session_state", "bad signer in channel record"))?;
    check_voucher_signature(&m.domain, expected, v)
}

/// The voucher is signed, with low `s`, by `expected`: the channel's signer as chain state
/// names it (never an address from the payload).
pub fn check_voucher_signature(
    domain: &VoucherDomain,
    expected: Address,
    v: &SignedVoucher,
) -> Result<(), PaymentError> {
    let digest = domain
        .signing_hash(&Voucher { channelId: v.channel_id, cumulativeAmount: v.cumulative_amount });
    match voucher::recover(&digest, &v.signature) {
        Ok(signer) if signer == expected => Ok(()),
        Ok(_) => Err(ProblemType::SessionSignerMismatch
            .error("the voucher is not signed by the channel's signer")
            .with_member("channelId", key(&v.channel_id))),
        Err(e) => Err(ProblemType::SessionInvalidSignature
            .error(format!("the voucher signature is invalid: {e}"))
            .with_member("channelId", key(&v.channel_id))),
    }
}

/// The `(accepted, spent)` after a debit, or why the request cannot be paid (while the record
/// may still be written: a larger voucher is kept).
pub type VoucherOutcome = Result<(u128, u128), PaymentError>;

/// What a (signature-checked) voucher does to a channel's record, for a request costing
/// `price`: refused (backwards, below `min_delta`, above the deposit, channel not open), or
/// accepted and `price` debited (the new record and `(accepted, spent)`), or a larger voucher
/// kept though it does not cover the price (`session/insufficient-balance`). Pure: the rail
/// applies it with a compare-and-swap.
pub fn apply_voucher(
    r: &SessionRecord,
    v: &SignedVoucher,
    price: u128,
    min_delta: u128,
) -> Result<Update<VoucherOutcome>, PaymentError> {
    let channel = v.channel_id;
    refuse_unless_open(r, &channel)?;
    let grows = v.cumulative_amount > r.accepted;
    if v.cumulative_amount < r.accepted {
        return Err(problem::verification_failed(format!(
            "the voucher goes backwards: {} is below the {} already accepted",
            v.cumulative_amount, r.accepted
        )));
    }
    if grows && v.cumulative_amount - r.accepted < min_delta {
        return Err(ProblemType::SessionDeltaTooSmall.error(format!(
            "the voucher adds {}, less than the minimum of {min_delta}",
            v.cumulative_amount - r.accepted
        )));
    }
    if v.cumulative_amount > r.deposit {
        return Err(exceeds_deposit(&channel, v.cumulative_amount, r.deposit));
    }
    let mut next = r.clone();
    // The channel data is parsed and rewritten only when a voucher is kept.
    let mut data = None;
    let mut previous = None;
    if grows {
        let mut d = data_of(r)?;
        previous = d.voucher_signature.replace(crate::fields::hex0x(&v.signature));
        next.accepted = v.cumulative_amount;
        data = Some(d);
    }
    let available = next.accepted.saturating_sub(next.spent);
    if available < price {
        let short = ProblemType::SessionInsufficientBalance
            .error(format!(
                "the channel has {available} authorized and unspent, this request costs {price}: send a larger voucher"
            ))
            .with_member("channelId", key(&channel))
            .with_member("requiredTopUp", (price - available).to_string());
        // A larger voucher that still does not cover the price is kept all the same.
        return Ok(match data {
            Some(d) => Update::Write(with_data(&next, &d)?, Err(short)),
            None => Update::Keep(Err(short)),
        });
    }
    next.spent += price;
    next.updated_at = time::unix_now()?;
    // Remember the highest voucher now wholly spent: what settlement may redeem.
    let wholly_spent = if next.accepted <= next.spent {
        Some(next.accepted)
    } else if grows && r.accepted <= next.spent {
        Some(r.accepted)
    } else {
        None
    };
    if let Some(amount) = wholly_spent {
        let mut d = match data.take() {
            Some(d) => d,
            None => data_of(r)?,
        };
        // The highest voucher's signature, or the one it replaced.
        let signature =
            if amount == next.accepted { d.voucher_signature.clone() } else { previous };
        if let Some(signature) = signature {
            d.note_spent_voucher(amount, &signature);
        }
        data = Some(d);
    }
    if let Some(d) = data {
        next = with_data(&next, &d)?;
    }
    let spent = (next.accepted, next.spent);
    Ok(Update::Write(next, Ok(spent)))
}

fn exceeds_deposit(channel: &B256, amount: u128, deposit: u128) -> PaymentError {
    ProblemType::SessionAmountExceedsDeposit
        .error(format!("the voucher for {amount} exceeds the channel's deposit of {deposit}"))
        .with_member("channelId", key(channel))
        .with_member("requiredTopUp", (amount - deposit).to_string())
}

/// A channel on chain pays this server in its token, or it is none of this server's.
fn check_ours(m: &EvmSession, channel: &B256, state: &Channel) -> Result<(), PaymentError> {
    if state.payee == m.payee() && state.token == m.config.token {
        return Ok(());
    }
    Err(ProblemType::SessionChannelNotFound
        .error("the channel does not pay this server in its token")
        .with_member("channelId", key(channel)))
}

/// Who signs the channel's vouchers: its authorized signer, else its payer.
fn signer_of(state: &Channel) -> Address {
    if state.authorizedSigner == Address::ZERO { state.payer } else { state.authorizedSigner }
}

/// `r` brought up to date with the channel's chain `state`: its deposit, what is settled, and
/// its status (finalized, or a close the payer requested: no more service).
fn synced(r: &SessionRecord, state: &Channel) -> SessionRecord {
    let mut next = r.clone();
    next.deposit = state.deposit;
    next.settled = next.settled.max(state.settled);
    next.spent = next.spent.max(next.settled);
    next.accepted = next.accepted.max(next.spent);
    if next.status == SessionStatus::Open && state.finalized {
        next.status = SessionStatus::Closed;
    } else if next.status == SessionStatus::Open && state.closeRequestedAt != 0 {
        next.status = SessionStatus::Closing;
    }
    next
}

/// A record for a channel as the chain has it: nothing accepted beyond what is settled, or,
/// when the server adopts a channel it lost track of, everything `spent` authorizes counted as
/// accepted and spent (a voucher at or below what is settled, or above the deposit, adds
/// nothing). The caller has checked `spent`'s signature against the channel's signer.
pub fn record_from_chain(
    state: &Channel,
    spent: Option<&SignedVoucher>,
) -> Result<SessionRecord, PaymentError> {
    let counted = spent
        .filter(|v| v.cumulative_amount > state.settled && v.cumulative_amount <= state.deposit);
    let signature = counted.map(|v| crate::fields::hex0x(&v.signature));
    let mut data = ChannelData {
        payer: format!("{:#x}", state.payer),
        signer: format!("{:#x}", signer_of(state)),
        voucher_signature: signature.clone(),
        checked_at: time::unix_now()?,
        close: None,
        spent_voucher: None,
    };
    if let (Some(v), Some(signature)) = (counted, &signature) {
        data.note_spent_voucher(v.cumulative_amount, signature);
    }
    let accepted = counted.map_or(state.settled, |v| v.cumulative_amount);
    let status = if state.finalized {
        SessionStatus::Closed
    } else if state.closeRequestedAt != 0 {
        SessionStatus::Closing
    } else {
        SessionStatus::Open
    };
    Ok(SessionRecord {
        status,
        deposit: state.deposit,
        accepted,
        spent: accepted,
        settled: state.settled,
        data: serde_json::to_string(&data)
            .map_err(|e| PaymentError::internal("mpp_session_state", e.to_string()))?,
        updated_at: time::unix_now()?,
    })
}
