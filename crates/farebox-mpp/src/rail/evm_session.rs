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
//! request names this server's token, payee, chain and escrow):
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
//!   channel `Closing` (no more service) and is finished by [`MppRail::close_idle_sessions`] or
//!   a retried close.
//!
//! Unknown channels answer 410 `session/channel-not-found`, closed ones 410
//! `session/channel-finalized`. A channel that exists on chain but not in the store (another
//! instance's store was lost, or the client opened elsewhere) is adopted from chain state with
//! `spent = settled`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use farebox_core::store::{Update, update_session};
use farebox_core::{
    Asset, ControlAnswer, Money, PaymentError, SessionRecord, SessionStatus, SessionStore, Token,
    Verified,
};
use farebox_evm::escrow::{self, Channel};
use farebox_evm::voucher::{self, Voucher, VoucherDomain};
use farebox_evm::{Address, B256, EvmError, EvmRpc, PrivateKeySigner, U256};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{BACKEND_RETRY_AFTER, MppRail};
use crate::evm_session::{
    self, CREDENTIAL_HASH, EvmSessionRequest, OpenPayload, SessionPayload, SignedVoucher,
    TopUpPayload, UNIT_REQUEST,
};
use crate::problem::{self, ProblemType};
use crate::receipt::PaymentReceipt;
use crate::time;

/// The session-store namespace of EVM channels.
pub const NAMESPACE: &str = "mpp-evm-session";
/// The shortest forced-close grace period the server accepts an escrow with (the draft: 10 min).
pub const MIN_GRACE_PERIOD: u64 = 600;

/// The `evm` session method: the escrow and token channels are opened in, the payee key that
/// closes them, and the node to read them from.
#[derive(Clone)]
pub struct EvmSessionConfig {
    pub rpc: EvmRpc,
    /// The payee: channels must pay this address, and it signs the closing transactions.
    pub payee: PrivateKeySigner,
    pub escrow: Address,
    /// The ERC-20 token channels hold.
    pub token: Address,
    /// Its symbol and decimals (for the farebox asset and for wallets' display).
    pub symbol: String,
    pub decimals: u8,
    /// What the challenge suggests depositing; `None`: 100 units of the route's price.
    pub suggested_deposit: Option<u128>,
    /// Smallest increase of a voucher over the last accepted one.
    pub min_voucher_delta: u128,
    /// How long chain state read for a channel is trusted before it is read again.
    pub state_ttl: Duration,
    /// How long an `open` or `topUp` transaction may take to be mined before the answer is 503.
    pub receipt_timeout: Duration,
}

impl EvmSessionConfig {
    /// Channels in `token` on `escrow`, paying `payee`, with a 60 s state TTL.
    pub fn new(
        rpc: EvmRpc,
        payee: PrivateKeySigner,
        escrow: Address,
        token: Address,
        symbol: impl Into<String>,
        decimals: u8,
    ) -> Self {
        EvmSessionConfig {
            rpc,
            payee,
            escrow,
            token,
            symbol: symbol.into(),
            decimals,
            suggested_deposit: None,
            min_voucher_delta: 0,
            state_ttl: Duration::from_secs(60),
            receipt_timeout: Duration::from_secs(20),
        }
    }

    /// The farebox asset routes are priced in for this method.
    pub fn asset(&self) -> Asset {
        Asset::Token(Token {
            network: farebox_evm::network::caip2(self.rpc.chain_id()),
            address: format!("{:#x}", self.token),
            symbol: self.symbol.clone(),
            decimals: self.decimals,
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

/// The enabled method.
pub(crate) struct Method {
    pub config: EvmSessionConfig,
    pub asset: Asset,
    pub domain: VoucherDomain,
    pub sessions: std::sync::Arc<dyn SessionStore>,
    /// Whether the escrow's grace period has been checked.
    grace_ok: AtomicBool,
}

impl Method {
    pub fn new(config: EvmSessionConfig, sessions: std::sync::Arc<dyn SessionStore>) -> Self {
        Method {
            asset: config.asset(),
            domain: config.rpc.voucher_domain(config.escrow),
            config,
            sessions,
            grace_ok: AtomicBool::new(false),
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

fn with_data(record: &SessionRecord, data: &ChannelData) -> SessionRecord {
    SessionRecord {
        data: serde_json::to_string(data).unwrap_or_default(),
        updated_at: time::unix_now(),
        ..record.clone()
    }
}

fn key(channel: &B256) -> String {
    format!("{channel:#x}")
}

/// What [`MppRail::verify`] hands on for an EVM session credential.
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

impl MppRail {
    fn evm_session_method(&self) -> Result<&Method, PaymentError> {
        self.evm_session
            .as_ref()
            .ok_or_else(|| problem::method_unsupported("EVM sessions are not enabled"))
    }

    /// The `evm` session challenge line for `resource`, if it is priced in the channel token.
    pub(crate) fn evm_session_challenge(
        &self,
        resource: &farebox_core::Resource,
    ) -> Result<Option<http::HeaderValue>, PaymentError> {
        let Some(m) = &self.evm_session else { return Ok(None) };
        let Some(price) = resource.price.in_asset(&m.asset).filter(|p| p.amount > 0) else {
            return Ok(None);
        };
        let cfg = &m.config;
        let request = EvmSessionRequest {
            amount: U256::from(price.amount),
            unit_type: Some(UNIT_REQUEST.into()),
            suggested_deposit: Some(U256::from(
                cfg.suggested_deposit.unwrap_or(price.amount.saturating_mul(100)),
            )),
            currency: cfg.token,
            recipient: m.payee(),
            chain_id: cfg.rpc.chain_id(),
            escrow: cfg.escrow,
            channel_id: None,
            min_voucher_delta: U256::from(cfg.min_voucher_delta),
            credential_types: vec![CREDENTIAL_HASH.into()],
            decimals: Some(cfg.decimals),
            description: resource.description.as_deref().map(str::to_owned),
        };
        self.issue(resource, evm_session::METHOD, evm_session::INTENT, request.to_json(), None)
            .map(Some)
    }

    /// Verifies an EVM session credential (the envelope's id and realm already checked).
    pub(crate) async fn verify_evm_session(
        &self,
        resource: &farebox_core::Resource,
        cred: &crate::Credential,
        now: u64,
    ) -> Result<Verified, PaymentError> {
        let m = self.evm_session_method()?;
        let ch = &cred.challenge;
        Self::unexpired(ch, now)?;
        let request = crate::challenge::decode_request(&ch.request)
            .ok()
            .and_then(|r| EvmSessionRequest::from_json(&r).ok())
            .ok_or_else(|| {
                problem::invalid_challenge("the challenge request is not an EVM session request")
            })?;
        let cfg = &m.config;
        if request.currency != cfg.token
            || request.recipient != m.payee()
            || request.chain_id != cfg.rpc.chain_id()
            || request.escrow != cfg.escrow
        {
            return Err(problem::invalid_challenge(
                "the challenge names another token, payee, chain or escrow than this server's",
            ));
        }
        let payload = SessionPayload::from_json(&cred.payload)
            .map_err(|e| problem::malformed(format!("session payload: {e}")))?;
        let price = || {
            resource.price.in_asset(&m.asset).map(|p| p.amount).ok_or_else(|| {
                problem::invalid_challenge("this route has no price in the channel's token")
            })
        };
        let id = ch.id.clone();
        match payload {
            SessionPayload::Open(open) => {
                let price = price()?;
                self.open_channel(m, &open, price).await?;
                self.debit(m, &open.voucher, price, id, cred.source.clone()).await
            }
            SessionPayload::Voucher(v) => {
                self.debit(m, &v, price()?, id, cred.source.clone()).await
            }
            SessionPayload::TopUp(t) => self.top_up(m, &t, id).await,
            SessionPayload::Close(v) => self.begin_close(m, &v, id).await,
        }
    }

    /// Checks an `open` and records the channel (unless it is known already).
    async fn open_channel(
        &self,
        m: &Method,
        open: &OpenPayload,
        price: u128,
    ) -> Result<(), PaymentError> {
        let channel = open.voucher.channel_id;
        if m.sessions.load_session(NAMESPACE, &key(&channel)).await?.is_some() {
            return Ok(()); // a retried open: the voucher path does the rest
        }
        self.check_grace_period(m).await?;
        let rpc = &m.config.rpc;
        let mut event = rpc
            .escrow_opened_by(m.config.escrow, open.hash)
            .await
            .map_err(|e| chain_error(e, "the open transaction"))?;
        if event.is_none() {
            rpc.wait_for_receipt(open.hash, m.config.receipt_timeout)
                .await
                .map_err(|e| chain_error(e, "the open transaction"))?;
            event = rpc
                .escrow_opened_by(m.config.escrow, open.hash)
                .await
                .map_err(|e| chain_error(e, "the open transaction"))?;
        }
        let Some(event) = event else {
            return Err(PaymentError::unavailable(
                "mpp_open_pending",
                format!("the open transaction {:#x} is not mined yet", open.hash),
                BACKEND_RETRY_AFTER,
            ));
        };
        if event.channelId != channel {
            return Err(problem::verification_failed(
                "the open transaction opened another channel than the payload names",
            ));
        }
        let state = self.read_channel(m, channel).await?;
        if state.payee != m.payee() || state.token != m.config.token {
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
            m.config.escrow,
            m.config.rpc.chain_id(),
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
        let record = record_from_chain(&state, None)?;
        // A concurrent open of the same channel may have won: either way it is recorded.
        m.sessions.create_session(NAMESPACE, &key(&channel), &record).await?;
        Ok(())
    }

    /// The escrow's forced-close grace period is long enough for the payee to close first.
    async fn check_grace_period(&self, m: &Method) -> Result<(), PaymentError> {
        if m.grace_ok.load(Ordering::Relaxed) {
            return Ok(());
        }
        let grace = m
            .config
            .rpc
            .escrow_close_grace_period(m.config.escrow)
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
        m.grace_ok.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn read_channel(&self, m: &Method, channel: B256) -> Result<Channel, PaymentError> {
        let state = m
            .config
            .rpc
            .escrow_channel(m.config.escrow, channel)
            .await
            .map_err(|e| chain_error(e, "the channel"))?;
        if state.payer == Address::ZERO {
            return Err(ProblemType::SessionChannelNotFound
                .error("no such channel in this server's escrow")
                .with_member("channelId", key(&channel)));
        }
        Ok(state)
    }

    /// The channel's record, adopted from chain state when the store does not know it, and
    /// refreshed from chain state when it is older than the TTL or `refresh` asks.
    async fn channel_record(
        &self,
        m: &Method,
        channel: B256,
        refresh: bool,
    ) -> Result<SessionRecord, PaymentError> {
        let id = key(&channel);
        let Some(current) = m.sessions.load_session(NAMESPACE, &id).await? else {
            let state = self.read_channel(m, channel).await?;
            if state.payee != m.payee() || state.token != m.config.token {
                return Err(ProblemType::SessionChannelNotFound
                    .error("the channel does not pay this server in its token")
                    .with_member("channelId", id));
            }
            let record = record_from_chain(&state, None)?;
            m.sessions.create_session(NAMESPACE, &id, &record).await?;
            return Ok(m
                .sessions
                .load_session(NAMESPACE, &id)
                .await?
                .map(|v| v.value)
                .unwrap_or(record));
        };
        let data = data_of(&current.value)?;
        let stale = time::unix_now().saturating_sub(data.checked_at) > m.config.state_ttl.as_secs();
        if current.value.status != SessionStatus::Open || !(refresh || stale) {
            return Ok(current.value);
        }
        let state = self.read_channel(m, channel).await?;
        let now = time::unix_now();
        let updated = update_session(&*m.sessions, NAMESPACE, &id, |r| {
            let mut data = data_of(r)?;
            data.checked_at = now;
            let mut next = with_data(r, &data);
            next.deposit = state.deposit;
            next.settled = next.settled.max(state.settled);
            next.spent = next.spent.max(next.settled);
            next.accepted = next.accepted.max(next.spent);
            if state.finalized || state.closeRequestedAt != 0 {
                // Finalized on chain, or the payer asked for a forced close: no more service.
                next.status =
                    if state.finalized { SessionStatus::Closed } else { SessionStatus::Closing };
            }
            Ok::<_, PaymentError>(Update::Write(next.clone(), next))
        })
        .await?;
        updated
            .ok_or_else(|| PaymentError::internal("mpp_session_state", "channel record vanished"))
    }

    /// Accepts `v` (if it adds to what was accepted) and debits `price`, persisted.
    async fn debit(
        &self,
        m: &Method,
        v: &SignedVoucher,
        price: u128,
        challenge_id: String,
        payer: Option<String>,
    ) -> Result<Verified, PaymentError> {
        let channel = v.channel_id;
        let _turn = self.session_locks.turn(&key(&channel)).await;
        let mut record = self.channel_record(m, channel, false).await?;
        refuse_unless_open(&record, &channel)?;
        if v.cumulative_amount > record.deposit {
            // Perhaps topped up on chain since we last looked.
            record = self.channel_record(m, channel, true).await?;
            refuse_unless_open(&record, &channel)?;
        }
        check_signature(m, v, &data_of(&record)?)?;
        let min_delta = m.config.min_voucher_delta;
        let outcome = update_session(&*m.sessions, NAMESPACE, &key(&channel), |r| {
            apply_voucher(r, v, price, min_delta)
        })
        .await?
        .ok_or_else(|| channel_gone(&channel))?;
        let (accepted, spent) = outcome?;
        Ok(Verified::new(
            Money::new(m.asset.clone(), price),
            payer,
            key(&channel),
            super::Held::EvmSession(Held::Debit { channel, challenge_id, price, accepted, spent }),
        ))
    }

    /// Takes an on-chain top-up into account.
    async fn top_up(
        &self,
        m: &Method,
        t: &TopUpPayload,
        challenge_id: String,
    ) -> Result<Verified, PaymentError> {
        let rpc = &m.config.rpc;
        let mut event = rpc
            .escrow_topped_up_by(m.config.escrow, t.hash)
            .await
            .map_err(|e| chain_error(e, "the top-up transaction"))?;
        if event.is_none() {
            rpc.wait_for_receipt(t.hash, m.config.receipt_timeout)
                .await
                .map_err(|e| chain_error(e, "the top-up transaction"))?;
            event = rpc
                .escrow_topped_up_by(m.config.escrow, t.hash)
                .await
                .map_err(|e| chain_error(e, "the top-up transaction"))?;
        }
        let Some(event) = event else {
            return Err(PaymentError::unavailable(
                "mpp_top_up_pending",
                format!("the top-up transaction {:#x} is not mined yet", t.hash),
                BACKEND_RETRY_AFTER,
            ));
        };
        if event.channelId != t.channel_id || event.amount != t.additional_deposit {
            return Err(problem::verification_failed(
                "the top-up transaction added another amount or to another channel",
            ));
        }
        let record = self.channel_record(m, t.channel_id, true).await?;
        refuse_unless_open(&record, &t.channel_id)?;
        Ok(Verified::new(
            Money::zero(m.asset.clone()),
            None,
            key(&t.channel_id),
            super::Held::EvmSession(Held::TopUp {
                channel: t.channel_id,
                challenge_id,
                deposit: record.deposit,
            }),
        )
        .control())
    }

    /// Checks a close voucher and marks the channel `Closing` (no more service).
    async fn begin_close(
        &self,
        m: &Method,
        v: &SignedVoucher,
        challenge_id: String,
    ) -> Result<Verified, PaymentError> {
        let channel = v.channel_id;
        let record = self.channel_record(m, channel, false).await?;
        if record.status == SessionStatus::Closed {
            return Err(channel_gone(&channel));
        }
        check_signature(m, v, &data_of(&record)?)?;
        let signature = crate::fields::hex0x(&v.signature);
        update_session(&*m.sessions, NAMESPACE, &key(&channel), |r| {
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
            let mut next = with_data(r, &data);
            next.status = SessionStatus::Closing;
            Ok(Update::Write(next, ()))
        })
        .await?
        .ok_or_else(|| channel_gone(&channel))?;
        Ok(Verified::new(
            Money::zero(m.asset.clone()),
            None,
            key(&channel),
            super::Held::EvmSession(Held::Close { channel, challenge_id }),
        )
        .control())
    }

    /// Settles what [`Self::verify_evm_session`] held.
    pub(crate) async fn settle_evm_session(
        &self,
        held: &Held,
        amount: Money,
    ) -> Result<farebox_core::Receipt, PaymentError> {
        let m = self.evm_session_method()?;
        let chain_id = m.config.rpc.chain_id();
        let now = time::format(time::unix_now());
        match held {
            Held::Debit { channel, challenge_id, accepted, spent, .. } => {
                let receipt = session_receipt(now, channel, challenge_id, chain_id)
                    .with("acceptedCumulative", accepted.to_string())
                    .with("spent", spent.to_string());
                Ok(farebox_core::Receipt::new(
                    amount,
                    key(channel),
                    vec![super::receipt_header(&receipt)?],
                ))
            }
            Held::TopUp { channel, challenge_id, deposit } => {
                let receipt = session_receipt(now, channel, challenge_id, chain_id)
                    .with("deposit", deposit.to_string());
                Ok(farebox_core::Receipt::new(
                    amount,
                    key(channel),
                    vec![super::receipt_header(&receipt)?],
                ))
            }
            Held::Close { channel, challenge_id } => {
                let closed = self.finish_close(m, *channel).await?;
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
                Ok(farebox_core::Receipt::new(
                    amount,
                    closed.tx,
                    vec![super::receipt_header(&receipt)?],
                )
                .with_answer(answer))
            }
        }
    }

    /// Gives back the debit of a request that was not served.
    pub(crate) async fn release_evm_session(&self, held: &Held) {
        let (Ok(m), Held::Debit { channel, price, .. }) = (self.evm_session_method(), held) else {
            return;
        };
        let released = update_session(&*m.sessions, NAMESPACE, &key(channel), |r| {
            let mut next = r.clone();
            next.spent = next.spent.saturating_sub(*price).max(next.settled);
            next.updated_at = time::unix_now();
            Ok::<_, PaymentError>(Update::Write(next, ()))
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, channel = %key(channel), "could not credit back an unserved request");
        }
    }

    /// Sends the close recorded on `channel` and records the outcome.
    async fn finish_close(&self, m: &Method, channel: B256) -> Result<Closed, PaymentError> {
        let id = key(&channel);
        let record = m
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
        let cfg = &m.config;
        let sent = cfg
            .rpc
            .escrow_close_with_capture(&cfg.payee, cfg.escrow, channel, amount, capture, &signature)
            .await;
        let tx = match sent {
            Ok(tx) => format!("{tx:#x}"),
            Err(EvmError::Reverted { reason }) => {
                // Perhaps finalized meanwhile (the payer withdrew, another instance closed).
                let state = self.read_channel(m, channel).await?;
                if state.finalized {
                    self.mark_closed(m, &id, state.settled, None).await?;
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
        self.mark_closed(m, &id, capture, Some(tx.clone())).await?;
        Ok(Closed {
            accepted: record.accepted,
            captured: capture,
            refunded: record.deposit.saturating_sub(capture),
            tx,
        })
    }

    async fn mark_closed(
        &self,
        m: &Method,
        id: &str,
        settled: u128,
        tx: Option<String>,
    ) -> Result<(), PaymentError> {
        update_session(&*m.sessions, NAMESPACE, id, |r| {
            let mut data = data_of(r)?;
            if let (Some(close), Some(tx)) = (data.close.as_mut(), &tx) {
                close.tx = Some(tx.clone());
            }
            let mut next = with_data(r, &data);
            next.status = SessionStatus::Closed;
            next.settled = next.settled.max(settled);
            Ok::<_, PaymentError>(Update::Write(next, ()))
        })
        .await?;
        Ok(())
    }

    /// Closes channels idle since before `idle_before` (Unix seconds) and finishes closes that
    /// were left half done, capturing `max(spent, settled)` of each with its highest voucher.
    /// Returns how many channels were closed.
    pub(crate) async fn close_idle_evm_sessions(
        &self,
        idle_before: u64,
    ) -> Result<usize, PaymentError> {
        let Some(m) = &self.evm_session else { return Ok(0) };
        let mut closed = 0;
        let closing =
            m.sessions.idle_sessions(NAMESPACE, SessionStatus::Closing, u64::MAX, 100).await?;
        let idle =
            m.sessions.idle_sessions(NAMESPACE, SessionStatus::Open, idle_before, 100).await?;
        for (id, current) in closing.into_iter().chain(idle) {
            let Some(channel) = crate::fields::parse_b256(&id) else { continue };
            let r = &current.value;
            let data = data_of(r)?;
            if data.close.is_none() {
                let capture = r.spent.max(r.settled);
                let Some(sig) =
                    data.voucher_signature.clone().filter(|_| r.accepted >= capture && capture > 0)
                else {
                    continue; // nothing earned, or no voucher to close with
                };
                let intent = CloseIntent {
                    amount: r.accepted.to_string(),
                    signature: sig,
                    capture: capture.to_string(),
                    tx: None,
                };
                let wrote = update_session(&*m.sessions, NAMESPACE, &id, |now| {
                    // Open and idle, or closing because the payer asked on chain: close it
                    // before the payer's grace period ends.
                    let mut d = data_of(now)?;
                    if now.status == SessionStatus::Closed || d.close.is_some() {
                        return Ok::<_, PaymentError>(Update::Keep(false));
                    }
                    d.close = Some(intent.clone());
                    let mut next = with_data(now, &d);
                    next.status = SessionStatus::Closing;
                    Ok(Update::Write(next, true))
                })
                .await?;
                if wrote != Some(true) {
                    continue;
                }
            }
            match self.finish_close(m, channel).await {
                Ok(_) => closed += 1,
                Err(e) => {
                    tracing::warn!(channel = %id, code = e.code, detail = %e.detail, "could not close an idle channel")
                }
            }
        }
        Ok(closed)
    }
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

fn check_signature(m: &Method, v: &SignedVoucher, data: &ChannelData) -> Result<(), PaymentError> {
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
        return Err(ProblemType::SessionAmountExceedsDeposit
            .error(format!(
                "the voucher for {} exceeds the channel's deposit of {}",
                v.cumulative_amount, r.deposit
            ))
            .with_member("channelId", key(&channel))
            .with_member("requiredTopUp", (v.cumulative_amount - r.deposit).to_string()));
    }
    let mut next = r.clone();
    if grows {
        let mut data = data_of(r)?;
        data.voucher_signature = Some(crate::fields::hex0x(&v.signature));
        next = with_data(r, &data);
        next.accepted = v.cumulative_amount;
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
        return Ok(if grows { Update::Write(next, Err(short)) } else { Update::Keep(Err(short)) });
    }
    next.spent += price;
    next.updated_at = time::unix_now();
    let spent = (next.accepted, next.spent);
    Ok(Update::Write(next, Ok(spent)))
}

/// A record for a channel as the chain has it (what the server starts from when it adopts a
/// channel): nothing accepted beyond what is settled, `signature` the voucher for `accepted`
/// if one is known.
pub fn record_from_chain(
    state: &Channel,
    signature: Option<String>,
) -> Result<SessionRecord, PaymentError> {
    let signer =
        if state.authorizedSigner == Address::ZERO { state.payer } else { state.authorizedSigner };
    let data = ChannelData {
        payer: format!("{:#x}", state.payer),
        signer: format!("{signer:#x}"),
        voucher_signature: signature,
        checked_at: time::unix_now(),
        close: None,
    };
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
        accepted: state.settled,
        spent: state.settled,
        settled: state.settled,
        data: serde_json::to_string(&data)
            .map_err(|e| PaymentError::internal("mpp_session_state", e.to_string()))?,
        updated_at: time::unix_now(),
    })
}
