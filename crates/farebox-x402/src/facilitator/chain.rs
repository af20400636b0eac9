//! [`ChainReader`]: the on-chain reads that reconciliation needs, for a rail whose facilitator
//! cannot answer them (one reached over HTTP).
//!
//! A settlement whose outcome is unknown is resolved from `authorizationState(from, nonce)` of
//! the token: `true` once the transfer (or a cancellation) is mined. Reads are pinned to the
//! latest *mined* block, never the node's pending state, so a transfer still in the mempool is
//! not taken for settled.

use std::collections::HashMap;

use alloy_primitives::{Address, B256};
use farebox_evm::{EvmError, EvmRpc};

use super::FacilitatorError;

/// EVM nodes by CAIP-2 network, read-only.
#[derive(Debug, Clone, Default)]
pub struct ChainReader {
    chains: HashMap<String, EvmRpc>,
}

impl ChainReader {
    /// A reader of the given nodes, each under the CAIP-2 id of its chain id.
    pub fn new(nodes: impl IntoIterator<Item = EvmRpc>) -> Self {
        let chains = nodes
            .into_iter()
            .map(|rpc| (farebox_evm::network::caip2(rpc.chain_id()), rpc))
            .collect();
        ChainReader { chains }
    }

    /// Whether the authorization is used, as [`super::Facilitator::authorization_used`] says;
    /// `Ok(None)` for a network this reader has no node for. A node that cannot be reached is
    /// [`FacilitatorError::Unavailable`].
    pub async fn authorization_used(
        &self,
        network: &str,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> Result<Option<bool>, FacilitatorError> {
        let Some(rpc) = self.chains.get(network) else { return Ok(None) };
        match mined_authorization_state(rpc, token, from, nonce).await {
            Ok(used) => Ok(Some(used)),
            Err(e) if e.is_unavailable() => Err(FacilitatorError::Unavailable(e.to_string())),
            Err(e) => Err(FacilitatorError::Protocol(e.to_string())),
        }
    }
}

/// `authorizationState(from, nonce)` as of the latest *mined* block. `EvmRpc::authorization_state`
/// sends no block tag, and a node may then answer from its pending state (anvil does): a transfer
/// still in the mempool would read as settled, and reconciliation must not trust it before it is
/// mined.
pub(crate) async fn mined_authorization_state(
    rpc: &EvmRpc,
    token: Address,
    from: Address,
    nonce: B256,
) -> Result<bool, EvmError> {
    let selector = alloy_primitives::keccak256("authorizationState(address,bytes32)");
    let mut data = Vec::with_capacity(68);
    data.extend_from_slice(&selector[..4]);
    data.extend_from_slice(from.into_word().as_slice());
    data.extend_from_slice(nonce.as_slice());
    let call = serde_json::json!({
        "to": format!("{token:#x}"),
        "data": alloy_primitives::hex::encode_prefixed(&data),
    });
    let out: farebox_evm::Bytes = rpc.request("eth_call", (call, "latest".to_string())).await?;
    match <[u8; 32]>::try_from(out.as_ref()) {
        Ok(word) if word[..31].iter().all(|b| *b == 0) && word[31] <= 1 => Ok(word[31] == 1),
        _ => Err(EvmError::InvalidResponse(format!("authorizationState returned {out}"))),
    }
}
