//! The calls of `SessionEscrow` (`contracts/SessionEscrow.sol`), the ERC-20 payment-channel
//! escrow of MPP EVM sessions, as methods on [`EvmRpc`] ([`EscrowRpc`]; bring the trait into
//! scope): deploy, open, top up, settle / close with a voucher ([`super::voucher`]), request a
//! close, withdraw, and read a channel's state.
//!
//! Transactions are sent with [`EvmRpc::send_mined`] (gas is estimated first, so a call that
//! would revert is refused with [`EvmError::Reverted`] and the contract's reason, e.g.
//! `SessionEscrow: invalid voucher signer`, before anything is broadcast) and awaited for up to
//! [`MINED_WITHIN`]; a mined revert is [`EvmError::Reverted`] too, a missing receipt
//! [`EvmError::Unavailable`].
//!
//! The contract in brief (the interface of draft-evm-session-00): `open(payee, token, deposit,
//! salt, authorizedSigner)` pulls `deposit` (approved beforehand) and opens `channelId =
//! keccak256(abi.encode(payer, payee, token, salt, authorizedSigner, escrow, chainId))`
//! ([`channel_id`]; an id is used once); `settle` / `close` (payee only) pay
//! `min(cumulativeAmount, deposit) − settled`, `close` also refunds the rest and finalizes;
//! `closeWithCapture` pays only a `captureAmount` up to the voucher and refunds the rest;
//! `requestClose` (payer) starts the grace period, `withdraw` (payer, after it) refunds the
//! unsettled remainder; `topUp` (payer) raises the deposit and cancels a pending close request.
//! [`EscrowRpc::escrow_close_requests`] reads the `CloseRequested` events of a block range, which
//! is how a payee watches for forced closes it must answer before the grace period ends.

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address, B256, Bytes, TxHash};
use alloy::rpc::types::{Filter, TransactionReceipt};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use async_trait::async_trait;
use farebox_evm::contracts::{SessionEscrow, session_escrow_deploy_code};
use farebox_evm::rpc::MINED_WITHIN;
use farebox_evm::{EvmError, EvmRpc};

use super::voucher::VoucherDomain;

type Result<T> = std::result::Result<T, EvmError>;

/// A channel's on-chain state, as `getChannel` returns it.
pub type Channel = SessionEscrow::Channel;

/// The grace period the MPP drafts use between `requestClose` and `withdraw`: 15 minutes.
pub const DEFAULT_CLOSE_GRACE_PERIOD: u64 = 15 * 60;

/// `SessionEscrow`'s calls on an [`EvmRpc`].
#[async_trait]
pub trait EscrowRpc: Sync {
    /// The node to call.
    fn rpc(&self) -> &EvmRpc;

    /// Deploys a `SessionEscrow` with `close_grace_period` seconds from `signer`.
    async fn deploy_session_escrow(
        &self,
        signer: &PrivateKeySigner,
        close_grace_period: u64,
    ) -> Result<Address> {
        self.rpc()
            .deploy(signer, session_escrow_deploy_code(close_grace_period), MINED_WITHIN)
            .await
    }

    /// The voucher domain of `escrow` on this chain.
    fn voucher_domain(&self, escrow: Address) -> VoucherDomain {
        VoucherDomain::new(self.rpc().chain_id(), escrow)
    }

    /// `open(payee, token, deposit, salt, authorizedSigner)` from `signer` (the payer, who
    /// approved `deposit` to the escrow), mined: the transaction hash and the new channel's id,
    /// read from its `ChannelOpened` event.
    #[allow(clippy::too_many_arguments)]
    async fn escrow_open(
        &self,
        signer: &PrivateKeySigner,
        escrow: Address,
        payee: Address,
        token: Address,
        deposit: u128,
        salt: B256,
        authorized_signer: Option<Address>,
    ) -> Result<(TxHash, B256)> {
        let call = SessionEscrow::openCall {
            payee,
            token,
            deposit,
            salt,
            authorizedSigner: authorized_signer.unwrap_or(Address::ZERO),
        };
        let (hash, receipt) = self.rpc().send_mined(signer, escrow, &call, MINED_WITHIN).await?;
        let opened = opened_channel(&receipt, escrow)
            .ok_or_else(|| EvmError::InvalidResponse(format!("{hash}: no ChannelOpened event")))?;
        Ok((hash, opened.channelId))
    }

    /// The `ChannelOpened` event `tx` emitted from `escrow`, once mined successfully: `Ok(None)`
    /// when the transaction is unknown or not mined yet, [`EvmError::Reverted`] when it failed.
    async fn escrow_opened_by(
        &self,
        escrow: Address,
        tx: TxHash,
    ) -> Result<Option<SessionEscrow::ChannelOpened>> {
        event_of(self.rpc(), escrow, tx, |r| opened_channel(r, escrow)).await
    }

    /// The `ToppedUp` event `tx` emitted from `escrow` (as [`Self::escrow_opened_by`]).
    async fn escrow_topped_up_by(
        &self,
        escrow: Address,
        tx: TxHash,
    ) -> Result<Option<SessionEscrow::ToppedUp>> {
        event_of(self.rpc(), escrow, tx, |r| {
            escrow_logs(r, escrow)
                .find_map(|log| SessionEscrow::ToppedUp::decode_log(&log.inner).ok())
                .map(|e| e.data)
        })
        .await
    }

    /// The channels whose close the payer requested (`CloseRequested` events of `escrow`) in
    /// blocks `from..=to`, in log order (a channel may appear more than once): one
    /// `eth_getLogs`. Providers cap the range one call may cover; keep it to a few thousand
    /// blocks.
    async fn escrow_close_requests(
        &self,
        escrow: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<B256>> {
        let filter = Filter::new()
            .address(escrow)
            .event_signature(SessionEscrow::CloseRequested::SIGNATURE_HASH)
            .from_block(from)
            .to_block(to);
        let logs: Vec<alloy::rpc::types::Log> =
            self.rpc().request("eth_getLogs", (filter,)).await?;
        Ok(logs
            .iter()
            .filter(|log| log.address() == escrow)
            .filter_map(|log| SessionEscrow::CloseRequested::decode_log(&log.inner).ok())
            .map(|e| e.data.channelId)
            .collect())
    }

    /// How long ago, in chain time, `tx` was mined: the latest block's timestamp minus that of
    /// the block including it. `Ok(None)` when it is not mined (or unknown).
    async fn escrow_tx_age(&self, tx: TxHash) -> Result<Option<u64>> {
        let receipt: Option<TransactionReceipt> =
            self.rpc().request("eth_getTransactionReceipt", (tx,)).await?;
        let Some(number) = receipt.and_then(|r| r.block_number) else { return Ok(None) };
        let block: Option<alloy::rpc::types::Block> = self
            .rpc()
            .request("eth_getBlockByNumber", (BlockNumberOrTag::Number(number), false))
            .await?;
        let mined = block
            .ok_or_else(|| EvmError::InvalidResponse(format!("block {number} of {tx} is gone")))?
            .header
            .timestamp;
        Ok(Some(self.rpc().block_timestamp().await?.saturating_sub(mined)))
    }

    /// The escrow's `closeGracePeriod()` in seconds.
    async fn escrow_close_grace_period(&self, escrow: Address) -> Result<u64> {
        self.rpc().call(escrow, &SessionEscrow::closeGracePeriodCall {}, None).await
    }

    /// `topUp(channelId, amount)` from `signer` (the payer, who approved `amount`), mined.
    async fn escrow_top_up(
        &self,
        signer: &PrivateKeySigner,
        escrow: Address,
        channel_id: B256,
        amount: u128,
    ) -> Result<TxHash> {
        let call = SessionEscrow::topUpCall { channelId: channel_id, amount };
        self.rpc().send_mined(signer, escrow, &call, MINED_WITHIN).await.map(|(hash, _)| hash)
    }

    /// `settle(channelId, cumulativeAmount, signature)` from `signer` (the payee), mined.
    async fn escrow_settle(
        &self,
        signer: &PrivateKeySigner,
        escrow: Address,
        channel_id: B256,
        cumulative_amount: u128,
        signature: &[u8],
    ) -> Result<TxHash> {
        let call = SessionEscrow::settleCall {
            channelId: channel_id,
            cumulativeAmount: cumulative_amount,
            signature: Bytes::copy_from_slice(signature),
        };
        self.rpc().send_mined(signer, escrow, &call, MINED_WITHIN).await.map(|(hash, _)| hash)
    }

    /// `close(channelId, cumulativeAmount, signature)` from `signer` (the payee), mined.
    async fn escrow_close(
        &self,
        signer: &PrivateKeySigner,
        escrow: Address,
        channel_id: B256,
        cumulative_amount: u128,
        signature: &[u8],
    ) -> Result<TxHash> {
        let call = SessionEscrow::closeCall {
            channelId: channel_id,
            cumulativeAmount: cumulative_amount,
            signature: Bytes::copy_from_slice(signature),
        };
        self.rpc().send_mined(signer, escrow, &call, MINED_WITHIN).await.map(|(hash, _)| hash)
    }

    /// `closeWithCapture(channelId, cumulativeAmount, captureAmount, signature)` from `signer`
    /// (the payee), mined: pays `captureAmount − settled`, refunds the rest, finalizes.
    async fn escrow_close_with_capture(
        &self,
        signer: &PrivateKeySigner,
        escrow: Address,
        channel_id: B256,
        cumulative_amount: u128,
        capture_amount: u128,
        signature: &[u8],
    ) -> Result<TxHash> {
        let call = SessionEscrow::closeWithCaptureCall {
            channelId: channel_id,
            cumulativeAmount: cumulative_amount,
            captureAmount: capture_amount,
            signature: Bytes::copy_from_slice(signature),
        };
        self.rpc().send_mined(signer, escrow, &call, MINED_WITHIN).await.map(|(hash, _)| hash)
    }

    /// `requestClose(channelId)` from `signer` (the payer), mined.
    async fn escrow_request_close(
        &self,
        signer: &PrivateKeySigner,
        escrow: Address,
        channel_id: B256,
    ) -> Result<TxHash> {
        let call = SessionEscrow::requestCloseCall { channelId: channel_id };
        self.rpc().send_mined(signer, escrow, &call, MINED_WITHIN).await.map(|(hash, _)| hash)
    }

    /// `withdraw(channelId)` from `signer` (the payer, after the grace period), mined.
    async fn escrow_withdraw(
        &self,
        signer: &PrivateKeySigner,
        escrow: Address,
        channel_id: B256,
    ) -> Result<TxHash> {
        let call = SessionEscrow::withdrawCall { channelId: channel_id };
        self.rpc().send_mined(signer, escrow, &call, MINED_WITHIN).await.map(|(hash, _)| hash)
    }

    /// A channel's state (all zero for an unknown id).
    async fn escrow_channel(&self, escrow: Address, channel_id: B256) -> Result<Channel> {
        self.rpc()
            .call(escrow, &SessionEscrow::getChannelCall { channelId: channel_id }, None)
            .await
    }

    /// The escrow's own voucher digest (for cross-checking [`VoucherDomain::signing_hash`]).
    async fn escrow_voucher_digest(
        &self,
        escrow: Address,
        channel_id: B256,
        cumulative_amount: u128,
    ) -> Result<B256> {
        let call = SessionEscrow::voucherDigestCall {
            channelId: channel_id,
            cumulativeAmount: cumulative_amount,
        };
        self.rpc().call(escrow, &call, None).await
    }

    // What a payer reads back about its own channels.

    /// The `ChannelClosed` event `tx` emitted from `escrow` for `channel_id` (as
    /// [`Self::escrow_opened_by`]; a mined transaction without one is
    /// [`EvmError::InvalidResponse`]): what a close paid out and refunded, as the chain says it,
    /// whatever the payee's answer claimed.
    async fn escrow_closed_by(
        &self,
        escrow: Address,
        tx: TxHash,
        channel_id: B256,
    ) -> Result<Option<SessionEscrow::ChannelClosed>> {
        event_of(self.rpc(), escrow, tx, |r| {
            escrow_logs(r, escrow)
                .filter_map(|log| SessionEscrow::ChannelClosed::decode_log(&log.inner).ok())
                .map(|e| e.data)
                .find(|e| e.channelId == channel_id)
        })
        .await
    }
}

impl EscrowRpc for EvmRpc {
    fn rpc(&self) -> &EvmRpc {
        self
    }
}

/// The event `find` reads from the receipt of `tx`, once mined successfully (`Ok(None)`: not
/// mined yet or unknown).
async fn event_of<E: Send>(
    rpc: &EvmRpc,
    escrow: Address,
    tx: TxHash,
    find: impl Fn(&TransactionReceipt) -> Option<E> + Send,
) -> Result<Option<E>> {
    let receipt: Option<TransactionReceipt> =
        rpc.request("eth_getTransactionReceipt", (tx,)).await?;
    let Some(receipt) = receipt else { return Ok(None) };
    if !receipt.status() {
        return Err(EvmError::Reverted { reason: format!("{tx} reverted") });
    }
    find(&receipt).map(Some).ok_or_else(|| {
        EvmError::InvalidResponse(format!("{tx} emitted no such event from {escrow}"))
    })
}

/// The id `SessionEscrow` gives a channel: `keccak256(abi.encode(payer, payee, token, salt,
/// authorizedSigner, escrow, chainId))`, with the zero address for "the payer signs".
pub fn channel_id(
    payer: Address,
    payee: Address,
    token: Address,
    salt: B256,
    authorized_signer: Option<Address>,
    escrow: Address,
    chain_id: u64,
) -> B256 {
    let mut buf = [0u8; 7 * 32];
    let words: [[u8; 32]; 7] = [
        payer.into_word().0,
        payee.into_word().0,
        token.into_word().0,
        salt.0,
        authorized_signer.unwrap_or(Address::ZERO).into_word().0,
        escrow.into_word().0,
        alloy::primitives::U256::from(chain_id).to_be_bytes::<32>(),
    ];
    for (i, w) in words.iter().enumerate() {
        buf[i * 32..(i + 1) * 32].copy_from_slice(w);
    }
    alloy::primitives::keccak256(buf)
}

fn escrow_logs(
    receipt: &TransactionReceipt,
    escrow: Address,
) -> impl Iterator<Item = &alloy::rpc::types::Log> {
    receipt.inner.logs().iter().filter(move |log| log.address() == escrow)
}

fn opened_channel(
    receipt: &TransactionReceipt,
    escrow: Address,
) -> Option<SessionEscrow::ChannelOpened> {
    escrow_logs(receipt, escrow)
        .find_map(|log| SessionEscrow::ChannelOpened::decode_log(&log.inner).ok())
        .map(|e| e.data)
}
