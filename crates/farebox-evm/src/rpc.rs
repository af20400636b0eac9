//! [`EvmRpc`]: a JSON-RPC client for what a facilitator does on chain — read token state,
//! simulate a `transferWithAuthorization` in one `eth_call`, submit it with the facilitator's own
//! key paying gas, and wait for the receipt.
//!
//! Error mapping (see [`EvmError`]): connection failures, timeouts and HTTP errors are
//! [`EvmError::Unavailable`] (fail closed: answer 503); a revert is [`EvmError::Reverted`] with
//! the decoded reason (e.g. `FiatTokenV2: authorization is used or canceled`); other JSON-RPC
//! errors are [`EvmError::Rpc`]. Every request has a timeout (default 10 s).
//!
//! **The URL is a secret.** Hosted RPC URLs carry API keys in the path or the query
//! (`https://base-mainnet.g.alchemy.com/v2/<key>`), so nothing this module produces shows more of
//! it than [`redact_url`] does: errors drop the URL that reqwest puts in its messages, and the
//! body of an HTTP error answer (which may echo the path) is not kept; `Debug` of an [`EvmRpc`]
//! shows the redacted URL. Only [`EvmRpc::url`] hands the URL out.
//!
//! Transactions sent through one [`EvmRpc`] from one key are submitted one at a time (nonce
//! assignment and submission happen under that key's lock), so concurrent settlements from one
//! key do not collide on nonces; different keys do not wait for each other. Each key's signing
//! provider is built once and reused (it knows the chain id, so a send asks the node only for
//! the gas estimate, fees, the nonce, and the broadcast itself). Several processes sharing one
//! key still need separate keys or a nonce service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, TxHash, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::client::RpcClient;
use alloy::rpc::json_rpc::{RequestPacket, ResponsePacket};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Panic, Revert, SolCall, SolError};
use alloy::transports::{RpcError, TransportError, TransportErrorKind, TransportFut};

use crate::contracts::{
    FareboxUSD, TransferWithAuthorizationBytesCall, TransferWithAuthorizationVrsCall,
};
use crate::eip3009::{self, TransferWithAuthorization};
use crate::error::{EvmError, Result};

/// How long a transaction farebox sends itself (an approval, a deployment, an escrow call) is
/// waited for before its outcome counts as unknown.
pub const MINED_WITHIN: Duration = Duration::from_secs(30);

/// The default timeout of one JSON-RPC request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`EvmRpc::wait_for_receipt`] asks for the receipt.
const RECEIPT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What became of a submitted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// Mined with status 1.
    Success {
        /// The block it was mined in.
        block: u64,
    },
    /// Mined with status 0.
    Reverted {
        /// The block it was mined in.
        block: u64,
        /// The revert reason, when replaying the call against the parent block yields one.
        reason: Option<String>,
    },
    /// No receipt before the deadline (or the node could not be asked): the transaction may
    /// still be mined. The caller keeps the hash and reports a pending / unknown settlement.
    Unknown,
}

/// A JSON-RPC client for one chain. Cheap to clone.
#[derive(Clone)]
pub struct EvmRpc {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EvmRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmRpc")
            .field("url", &redact_url(&self.inner.url))
            .field("chain_id", &self.inner.chain_id)
            .finish_non_exhaustive()
    }
}

/// `url` as it may be shown in errors, logs and `Debug` output: scheme, host and port, with the
/// user info, path and query (where hosted RPCs put API keys) replaced by `…`.
pub fn redact_url(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return "<an unparsable URL>".into();
    };
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = parsed.path() != "/"
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some();
    format!(
        "{}://{}{port}/{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or(""),
        if hidden { "…" } else { "" }
    )
}

struct Inner {
    url: String,
    chain_id: u64,
    client: RpcClient,
    provider: DynProvider,
    senders: Mutex<HashMap<Address, Arc<Sender>>>,
}

/// The signing provider of one key, and the lock its submissions take.
struct Sender {
    provider: DynProvider,
    lock: tokio::sync::Mutex<()>,
}

impl EvmRpc {
    /// Connects to `url` (http or https) with the default timeout and reads the chain id.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_timeout(url, DEFAULT_TIMEOUT).await
    }

    /// Connects to `url` with a per-request `timeout` and reads the chain id.
    pub async fn connect_with_timeout(url: &str, timeout: Duration) -> Result<Self> {
        let invalid =
            |reason: &str| EvmError::InvalidUrl { url: redact_url(url), reason: reason.to_owned() };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        let http = reqwest::Client::builder().timeout(timeout).build().map_err(|e| {
            EvmError::Unavailable(format!("building the HTTP client: {}", e.without_url()))
        })?;
        let client = RpcClient::new(QuietHttp { http, url: parsed }, false);
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_client(client.clone())
            .erased();
        let chain_id = provider.get_chain_id().await.map_err(map_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                chain_id,
                client,
                provider,
                senders: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The RPC URL, which may carry an API key: show [`redact_url`] of it instead.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The chain id read at connection.
    pub fn chain_id(&self) -> u64 {
        self.inner.chain_id
    }

    /// The underlying alloy provider (no fillers, no wallet), for calls this type does not wrap.
    pub fn provider(&self) -> &DynProvider {
        &self.inner.provider
    }

    /// A raw JSON-RPC request, e.g. `("evm_mine", ())`.
    pub async fn request<P, R>(&self, method: &'static str, params: P) -> Result<R>
    where
        P: serde::Serialize + Clone + std::fmt::Debug + Send + Sync + Unpin + 'static,
        R: serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + Unpin + 'static,
    {
        self.inner.provider.raw_request(method.into(), params).await.map_err(map_err)
    }

    /// The timestamp of the latest block.
    pub async fn block_timestamp(&self) -> Result<u64> {
        let block = self
            .inner
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(map_err)?
            .ok_or_else(|| EvmError::InvalidResponse("no latest block".into()))?;
        Ok(block.header.timestamp)
    }

    /// The latest block number.
    pub async fn block_number(&self) -> Result<u64> {
        self.inner.provider.get_block_number().await.map_err(map_err)
    }

    /// `eth_call` of `call` on `to` (from the zero address unless `from` is given), decoded.
    pub async fn call<C: SolCall>(
        &self,
        to: Address,
        call: &C,
        from: Option<Address>,
    ) -> Result<C::Return> {
        let mut tx = TransactionRequest::default().with_to(to).with_input(call.abi_encode());
        if let Some(from) = from {
            tx = tx.with_from(from);
        }
        let out = self.inner.provider.call(tx).await.map_err(map_err)?;
        C::abi_decode_returns(&out)
            .map_err(|e| EvmError::InvalidResponse(format!("decoding the result: {e}")))
    }

    /// `balanceOf(owner)` of an ERC-20 token.
    pub async fn balance_of(&self, token: Address, owner: Address) -> Result<U256> {
        self.call(token, &FareboxUSD::balanceOfCall { account: owner }, None).await
    }

    /// `authorizationState(authorizer, nonce)` of an EIP-3009 token: whether the nonce is used
    /// or canceled. A token without EIP-3009 reverts ([`EvmError::Reverted`]).
    pub async fn authorization_state(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool> {
        self.call(token, &FareboxUSD::authorizationStateCall { authorizer, nonce }, None).await
    }

    /// [`authorization_state`](Self::authorization_state) as of the latest *mined* block. Without
    /// a block tag a node may answer from its pending state (anvil does), where a transfer still
    /// in the mempool already reads as used: what reconciling a settlement must not trust.
    pub async fn mined_authorization_state(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool> {
        let call = FareboxUSD::authorizationStateCall { authorizer, nonce };
        let tx = TransactionRequest::default().with_to(token).with_input(call.abi_encode());
        let out = self
            .inner
            .provider
            .call(tx)
            .block(BlockNumberOrTag::Latest.into())
            .await
            .map_err(map_err)?;
        FareboxUSD::authorizationStateCall::abi_decode_returns(&out)
            .map_err(|e| EvmError::InvalidResponse(format!("decoding the result: {e}")))
    }

    /// The token's `name()` (its EIP-712 domain name for FiatToken).
    pub async fn token_name(&self, token: Address) -> Result<String> {
        self.call(token, &FareboxUSD::nameCall {}, None).await
    }

    /// The token's `version()` (its EIP-712 domain version for FiatToken).
    pub async fn token_version(&self, token: Address) -> Result<String> {
        self.call(token, &FareboxUSD::versionCall {}, None).await
    }

    /// Simulates `transferWithAuthorization` with one `eth_call` from `from` (the facilitator)
    /// against the latest block. `Ok(())` means it would succeed now; a revert is
    /// [`EvmError::Reverted`] with FiatToken's reason. A 65-byte signature goes through the
    /// `(v, r, s)` overload (`v` normalized to 27 / 28; a malformed or high-`s` signature is
    /// refused locally with [`EvmError::Signature`]); any other length through the `bytes`
    /// overload (ERC-1271 wallets).
    pub async fn simulate_transfer_with_authorization(
        &self,
        token: Address,
        auth: &TransferWithAuthorization,
        signature: &[u8],
        from: Address,
    ) -> Result<()> {
        let input = transfer_with_authorization_input(auth, signature)?;
        let tx = TransactionRequest::default().with_from(from).with_to(token).with_input(input);
        self.inner.provider.call(tx).await.map_err(map_err)?;
        Ok(())
    }

    /// Submits `transferWithAuthorization` (overload chosen as in
    /// [`simulate_transfer_with_authorization`](Self::simulate_transfer_with_authorization)),
    /// signed and paid for by `signer`. Gas is estimated first, so a transfer that would revert
    /// now is refused with [`EvmError::Reverted`] before anything is broadcast. Returns the hash
    /// once the node has accepted the transaction; see [`wait_for_receipt`](Self::wait_for_receipt).
    pub async fn send_transfer_with_authorization(
        &self,
        signer: &PrivateKeySigner,
        token: Address,
        auth: &TransferWithAuthorization,
        signature: &[u8],
    ) -> Result<TxHash> {
        let input = transfer_with_authorization_input(auth, signature)?;
        self.send(signer, TransactionRequest::default().with_to(token).with_input(input)).await
    }

    /// Sends `call` to `to` as a transaction signed by `signer`; returns its hash.
    pub async fn send_call<C: SolCall>(
        &self,
        signer: &PrivateKeySigner,
        to: Address,
        call: &C,
    ) -> Result<TxHash> {
        self.send(signer, TransactionRequest::default().with_to(to).with_input(call.abi_encode()))
            .await
    }

    /// Sends `call` to `to` from `signer` and waits up to `timeout` for a successful receipt:
    /// a mined revert is [`EvmError::Reverted`] with the contract's reason, no receipt in time
    /// [`EvmError::Unavailable`].
    pub async fn send_mined<C: SolCall>(
        &self,
        signer: &PrivateKeySigner,
        to: Address,
        call: &C,
        timeout: Duration,
    ) -> Result<(TxHash, TransactionReceipt)> {
        let hash = self.send_call(signer, to, call).await?;
        match self.wait_for_receipt(hash, timeout).await? {
            ReceiptOutcome::Success { .. } => {}
            ReceiptOutcome::Reverted { reason, .. } => {
                return Err(EvmError::Reverted {
                    reason: reason.unwrap_or_else(|| format!("{hash} reverted")),
                });
            }
            ReceiptOutcome::Unknown => {
                return Err(EvmError::Unavailable(format!("no receipt for {hash}")));
            }
        }
        let receipt: Option<TransactionReceipt> =
            self.request("eth_getTransactionReceipt", (hash,)).await?;
        let receipt = receipt
            .ok_or_else(|| EvmError::InvalidResponse(format!("receipt of {hash} disappeared")))?;
        Ok((hash, receipt))
    }

    /// ERC-20 `approve(spender, amount)` from `signer`, mined (within [`MINED_WITHIN`]).
    pub async fn erc20_approve(
        &self,
        signer: &PrivateKeySigner,
        token: Address,
        spender: Address,
        amount: u128,
    ) -> Result<TxHash> {
        let call = FareboxUSD::approveCall { spender, value: U256::from(amount) };
        self.send_mined(signer, token, &call, MINED_WITHIN).await.map(|(hash, _)| hash)
    }

    /// Deploys a contract (`init_code` = creation bytecode followed by the ABI-encoded
    /// constructor arguments) from `signer`, waits up to `timeout` for the receipt and returns
    /// the contract's address.
    pub async fn deploy(
        &self,
        signer: &PrivateKeySigner,
        init_code: Bytes,
        timeout: Duration,
    ) -> Result<Address> {
        let hash =
            self.send(signer, TransactionRequest::default().with_deploy_code(init_code)).await?;
        match self.wait_for_receipt(hash, timeout).await? {
            ReceiptOutcome::Success { .. } => {}
            ReceiptOutcome::Reverted { reason, .. } => {
                return Err(EvmError::Deploy(format!(
                    "{hash} reverted: {}",
                    reason.unwrap_or_default()
                )));
            }
            ReceiptOutcome::Unknown => {
                return Err(EvmError::Deploy(format!("no receipt for {hash}")));
            }
        }
        let receipt = self
            .inner
            .provider
            .get_transaction_receipt(hash)
            .await
            .map_err(map_err)?
            .ok_or_else(|| EvmError::Deploy(format!("receipt of {hash} disappeared")))?;
        receipt
            .contract_address
            .ok_or_else(|| EvmError::Deploy(format!("{hash} created no contract")))
    }

    /// Fills (gas, fees, nonce, chain id), signs and submits `tx` from `signer`.
    async fn send(&self, signer: &PrivateKeySigner, tx: TransactionRequest) -> Result<TxHash> {
        let sender = self.sender(signer);
        let tx = tx.with_from(signer.address());
        let _guard = sender.lock.lock().await;
        let pending = sender.provider.send_transaction(tx).await.map_err(map_err)?;
        Ok(*pending.tx_hash())
    }

    /// The signing provider of `signer`, built on first use. The nonce is asked of the node for
    /// every transaction (never cached), so a transaction refused before broadcast (a gas
    /// estimate that reverts) leaves no gap; the chain id is the one read at connection.
    fn sender(&self, signer: &PrivateKeySigner) -> Arc<Sender> {
        let mut senders = self.inner.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders
            .entry(signer.address())
            .or_insert_with(|| {
                let provider = ProviderBuilder::new()
                    .disable_recommended_fillers()
                    .with_gas_estimation()
                    .with_simple_nonce_management()
                    .with_chain_id(self.inner.chain_id)
                    .wallet(EthereumWallet::from(signer.clone()))
                    .connect_client(self.inner.client.clone())
                    .erased();
                Arc::new(Sender { provider, lock: tokio::sync::Mutex::new(()) })
            })
            .clone()
    }

    /// Waits up to `timeout` for the receipt of `tx`. Never fails because of the wait itself:
    /// on timeout, or if the node stays unreachable, the outcome is [`ReceiptOutcome::Unknown`]
    /// and the caller still has the hash.
    pub async fn wait_for_receipt(&self, tx: TxHash, timeout: Duration) -> Result<ReceiptOutcome> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(receipt)) = self.inner.provider.get_transaction_receipt(tx).await {
                let block = receipt.block_number.unwrap_or_default();
                if receipt.status() {
                    return Ok(ReceiptOutcome::Success { block });
                }
                let reason = self.replay_revert_reason(tx, block).await;
                return Ok(ReceiptOutcome::Reverted { block, reason });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(ReceiptOutcome::Unknown);
            }
            tokio::time::sleep(RECEIPT_POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// Best effort: replays a reverted transaction as an `eth_call` against its parent block.
    async fn replay_revert_reason(&self, tx: TxHash, block: u64) -> Option<String> {
        let original = self.inner.provider.get_transaction_by_hash(tx).await.ok()??;
        let request: TransactionRequest = original.into_request();
        let parent = BlockNumberOrTag::Number(block.saturating_sub(1));
        match self.inner.provider.call(request).block(parent.into()).await {
            Err(e) => match map_err(e) {
                EvmError::Reverted { reason } => Some(reason),
                _ => None,
            },
            Ok(_) => None,
        }
    }
}

/// The calldata of `transferWithAuthorization` for `signature`: the `(v, r, s)` overload for 65
/// bytes, the `bytes` overload otherwise.
pub fn transfer_with_authorization_input(
    auth: &TransferWithAuthorization,
    signature: &[u8],
) -> Result<Bytes> {
    let a = auth;
    let input = if signature.len() == 65 {
        let (v, r, s) = eip3009::to_vrs(signature)?;
        TransferWithAuthorizationVrsCall {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: a.validAfter,
            validBefore: a.validBefore,
            nonce: a.nonce,
            v,
            r,
            s,
        }
        .abi_encode()
    } else {
        TransferWithAuthorizationBytesCall {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: a.validAfter,
            validBefore: a.validBefore,
            nonce: a.nonce,
            signature: Bytes::copy_from_slice(signature),
        }
        .abi_encode()
    };
    Ok(input.into())
}

/// Maps an alloy transport result error onto [`EvmError`], without the URL (see the module
/// docs).
pub(crate) fn map_err(e: RpcError<TransportErrorKind>) -> EvmError {
    match e {
        RpcError::ErrorResp(payload) => {
            map_error_response(payload.code, payload.message.to_string(), payload.as_revert_data())
        }
        RpcError::Transport(kind) => EvmError::Unavailable(transport_error(kind)),
        RpcError::NullResp => EvmError::InvalidResponse("null response".into()),
        RpcError::DeserError { err, .. } => EvmError::InvalidResponse(err.to_string()),
        other => EvmError::Rpc { code: 0, message: without_urls(&other.to_string()) },
    }
}

/// JSON-RPC over HTTP, as alloy's own reqwest transport does it but without the span that
/// transport opens around every call with the full URL as a field (any debug-level log line
/// inside it would print the key).
#[derive(Clone)]
struct QuietHttp {
    http: reqwest::Client,
    url: reqwest::Url,
}

impl tower::Service<RequestPacket> for QuietHttp {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RequestPacket) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let body = serde_json::to_vec(&request).map_err(TransportError::ser_err)?;
            let reply = this
                .http
                .post(this.url)
                .headers(request.headers())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| TransportErrorKind::custom(e.without_url()))?;
            let status = reply.status();
            let body =
                reply.bytes().await.map_err(|e| TransportErrorKind::custom(e.without_url()))?;
            let answer = serde_json::from_slice::<ResponsePacket>(&body);
            match answer {
                Ok(answer) => Ok(answer),
                // A JSON-RPC answer under an HTTP error status is still the node's answer; any
                // other body of an error status is not kept (it may echo the URL).
                Err(_) if !status.is_success() => {
                    Err(TransportErrorKind::http_error(status.as_u16(), String::new()))
                }
                Err(e) => Err(TransportError::deser_err(e, String::from_utf8_lossy(&body))),
            }
        })
    }
}

/// What went wrong reaching the node, in words that cannot carry the URL: reqwest's own message
/// without its URL, an HTTP error's status without its body.
fn transport_error(kind: TransportErrorKind) -> String {
    let text = match kind {
        TransportErrorKind::Custom(e) => match e.downcast::<reqwest::Error>() {
            Ok(e) => e.without_url().to_string(),
            Err(other) => other.to_string(),
        },
        TransportErrorKind::HttpError(e)
        | TransportErrorKind::HttpErrorWithRetryAfter { error: e, .. } => {
            format!("the EVM RPC answered HTTP {}", e.status)
        }
        other => other.to_string(),
    };
    without_urls(&text)
}

/// `text` with anything that looks like an http(s) URL redacted: a last guard for messages whose
/// origin this module does not control.
fn without_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("http://").into_iter().chain(rest.find("https://")).min() {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .map_or(rest.len(), |n| at + n);
        out.push_str(&redact_url(&rest[at..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn map_error_response(code: i64, message: String, revert_data: Option<Bytes>) -> EvmError {
    let is_revert = code == 3 || message.contains("revert");
    if !is_revert {
        return EvmError::Rpc { code, message };
    }
    let reason = revert_data.and_then(|data| decode_revert(data.as_ref())).unwrap_or_else(|| {
        message.strip_prefix("execution reverted: ").map(str::to_owned).unwrap_or(message)
    });
    EvmError::Reverted { reason }
}

/// `Error(string)` → its string; `Panic(uint256)` → `panic 0x…`; a custom error → its selector.
fn decode_revert(data: &[u8]) -> Option<String> {
    if let Ok(revert) = Revert::abi_decode(data) {
        return Some(revert.reason);
    }
    if let Ok(panic) = Panic::abi_decode(data) {
        return Some(format!("panic 0x{:x}", panic.code));
    }
    if data.len() >= 4 {
        return Some(format!("custom error 0x{}", alloy::hex::encode(&data[..4])));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anvil::{Anvil, counting_proxy};

    const WAIT: Duration = Duration::from_secs(20);

    #[test]
    fn urls_are_shown_without_what_may_carry_a_key() {
        for (url, shown) in [
            ("https://base-mainnet.g.alchemy.com/v2/KEY", "https://base-mainnet.g.alchemy.com/…"),
            ("https://rpc.example/?apikey=KEY", "https://rpc.example/…"),
            ("http://user:KEY@127.0.0.1:8545/", "http://127.0.0.1:8545/…"),
            ("http://127.0.0.1:8545/", "http://127.0.0.1:8545/"),
            ("http://127.0.0.1:8545", "http://127.0.0.1:8545/"),
            ("not a url KEY", "<an unparsable URL>"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let text = "error sending request for url (https://h.example/v2/KEY?x=KEY): refused";
        assert_eq!(
            without_urls(text),
            "error sending request for url (https://h.example/…): refused"
        );
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_reached_is_reported_without_its_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let url = format!("http://{closed}/v2/SECRET-KEY?apikey=SECRET-QUERY");
        let err = EvmRpc::connect(&url).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(!format!("{err} {err:?}").contains("SECRET"), "{err} {err:?}");
        let err = EvmRpc::connect("ftp://h/SECRET").await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains("SECRET"), "{err:?}");
    }

    #[tokio::test]
    async fn sends_from_one_key_reuse_its_provider_and_ask_the_nonce_each_time() {
        let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
        let token = anvil.deploy_token("USDC", "2").await.unwrap();
        let (url, methods) = counting_proxy(anvil.url()).await.unwrap();
        let rpc = EvmRpc::connect(&url).await.unwrap();
        let (minter, to) = (&anvil.accounts()[0].signer, anvil.accounts()[5].address);
        for _ in 0..3 {
            let mint = FareboxUSD::mintCall { to, amount: U256::from(7u64) };
            let tx = rpc.send_call(minter, token, &mint).await.unwrap();
            let outcome = rpc.wait_for_receipt(tx, WAIT).await.unwrap();
            assert!(matches!(outcome, ReceiptOutcome::Success { .. }), "{outcome:?}");
        }
        assert_eq!(rpc.balance_of(token, to).await.unwrap(), U256::from(21u64));
        let count = |m: &str| methods.lock().unwrap().iter().filter(|x| *x == m).count();
        assert_eq!(count("eth_sendRawTransaction"), 3);
        assert_eq!(count("eth_chainId"), 1, "the chain id is read once, at connection");
        assert_eq!(count("eth_getTransactionCount"), 3, "the nonce is asked for each transaction");
    }
}
