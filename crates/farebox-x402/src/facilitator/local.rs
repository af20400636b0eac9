//! [`LocalFacilitator`]: verifies and settles `exact` EIP-3009 payments against EVM nodes,
//! in-process.
//!
//! **Verify** = the off-chain checks of [`crate::exact_evm`] and EIP-712 recovery of the signer
//! (must be `authorization.from`), together [`OfflineVerifier`], then ONE `eth_call` simulating
//! `transferWithAuthorization` from the facilitator's address. The simulation covers at once what other facilitators ask in
//! separate calls (nonce unused, balance, the token's own signature and time checks), so a valid
//! payment costs one RPC round trip; a failed one is explained from the revert string, with a
//! second look (`authorizationState`, `balanceOf`) only when the string is not one of
//! FiatToken's.
//!
//! **Settle** = the same checks without the simulation, then a replay-store reservation of the
//! authorization (concurrent `/settle` calls of one payment: exactly one sends a transaction;
//! the others are told its state), then the transfer, then the receipt. A transfer refused at
//! gas estimation was never broadcast: its reservation is released and the answer names the
//! reason with an empty `transaction`. A receipt that does not
//! arrive in time leaves the record `Pending` with its transaction hash and answers
//! `settlement_pending`; [`LocalFacilitator::reconcile`] resolves pending records later from the
//! chain's own ground truth, `authorizationState(from, nonce)`.
//!
//! **Whom it settles for.** A facilitator pays gas for every settlement, so it takes a
//! [`FacilitatorPolicy`]: the networks, tokens and payees it verifies and settles for. Anything
//! else is refused before its signature is even checked, in the spec's shape (`200`,
//! `isValid: false` / `success: false`): `invalid_network` for a network, and
//! `invalid_payment_requirements` for a token or a payee it does not serve. Nothing a caller
//! sends makes it keep state: the EIP-712 domain-separator cache holds at most
//! [`MAX_CACHED_DOMAINS`] entries (others are computed each time).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use farebox_core::time::unix_now;

use async_trait::async_trait;
use farebox_core::{ProofState, ReplayStore};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, EvmError, EvmRpc, PrivateKeySigner, ReceiptOutcome, U256};

use super::chain::mined_authorization_state;
use super::{Facilitator, FacilitatorError};
use crate::exact_evm::{self, CheckedPayment};
use crate::facilitator_api::{
    SettleResponse, SupportedKind, SupportedResponse, VerifyResponse, VersionedPayment,
};
use crate::{Reason, network};

/// Replay-store namespace of the facilitator's settlements.
pub const NAMESPACE: &str = "x402-facilitator";

/// One chain the facilitator settles on: its node and the key that pays gas.
pub struct ChainAccess {
    pub rpc: EvmRpc,
    pub signer: PrivateKeySigner,
}

/// The in-process facilitator. See the module docs.
pub struct LocalFacilitator {
    chains: HashMap<String, ChainAccess>,
    store: Arc<dyn ReplayStore>,
    receipt_timeout: Duration,
    offline: OfflineVerifier,
    policy: FacilitatorPolicy,
}

/// The networks, tokens and payees a [`LocalFacilitator`] verifies and settles for. Each list is
/// an allowlist when given; `None` allows all (of the networks it has a node for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FacilitatorPolicy {
    /// CAIP-2 networks (`eip155:8453`).
    pub networks: Option<HashSet<String>>,
    /// Token contracts, each on one CAIP-2 network.
    pub assets: Option<HashSet<(String, Address)>>,
    /// Payees (`payTo`).
    pub payees: Option<HashSet<Address>>,
}

impl FacilitatorPolicy {
    /// Why `requirement` is not served, if it is not.
    fn refuses(&self, requirement: &exact_evm::RequirementView) -> Option<Reason> {
        if !allowed(&self.networks, &requirement.network) {
            return Some(Reason::InvalidNetwork);
        }
        let asset = (requirement.network.clone(), requirement.asset);
        if !allowed(&self.assets, &asset) || !allowed(&self.payees, &requirement.pay_to) {
            return Some(Reason::InvalidPaymentRequirements);
        }
        None
    }
}

/// Whether `item` is on `list`, when there is one.
fn allowed<T: std::hash::Hash + Eq>(list: &Option<HashSet<T>>, item: &T) -> bool {
    list.as_ref().is_none_or(|l| l.contains(item))
}

/// Most EIP-712 domain separators an [`OfflineVerifier`] keeps: the domains it serves are few,
/// and a caller choosing new `extra.name` values must not grow its memory.
pub const MAX_CACHED_DOMAINS: usize = 64;

/// The facilitator's checks that need no chain: every field check of
/// [`exact_evm::check_request`], then the EIP-712 digest of the authorization and the recovery
/// of its signer, which must be `authorization.from`.
///
/// [`LocalFacilitator`] runs exactly this before it asks its node anything; it is public so that
/// its cost can be measured (`benches/verify.rs`) and so that a server can run it itself. Domain
/// separators are computed once per token domain (name, version, chain id, contract) and
/// cached.
#[derive(Debug, Default)]
pub struct OfflineVerifier {
    domains: RwLock<HashMap<(String, String, u64, Address), B256>>,
}

impl OfflineVerifier {
    /// A verifier with an empty domain-separator cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `request` as of `now_unix`. On success: the checked payment and the EIP-3009
    /// message that was signed (what a transfer submits); otherwise the reason, with the payer
    /// when the payload could be read.
    pub fn check(
        &self,
        request: &VersionedPayment,
        now_unix: u64,
    ) -> Result<(CheckedPayment, TransferWithAuthorization), exact_evm::Rejection> {
        self.check_signature(exact_evm::check_request(request, now_unix)?)
    }

    /// The second half of [`Self::check`]: the EIP-712 recovery of a payment whose fields
    /// passed [`exact_evm::check_request`].
    pub fn check_signature(
        &self,
        checked: CheckedPayment,
    ) -> Result<(CheckedPayment, TransferWithAuthorization), exact_evm::Rejection> {
        let req = &checked.requirement;
        let auth = &checked.payload.authorization;
        let payer = Some(auth.from);
        let reject = |reason| exact_evm::Rejection { reason, payer };
        let (Some(name), Some(version)) = (&req.eip712_name, &req.eip712_version) else {
            return Err(reject(Reason::MissingEip712Domain));
        };
        let message = TransferWithAuthorization {
            from: auth.from,
            to: auth.to,
            value: auth.value,
            validAfter: U256::from(auth.valid_after),
            validBefore: U256::from(auth.valid_before),
            nonce: auth.nonce,
        };
        let digest = eip3009::signing_hash(
            &self.separator(name, version, req.chain_id, req.asset),
            &message,
        );
        match eip3009::recover(&digest, &checked.payload.signature) {
            Ok(signer) if signer == auth.from => Ok((checked, message)),
            _ => Err(reject(Reason::InvalidSignature)),
        }
    }

    /// The EIP-712 domain separator of a requirement, computed once per token domain while the
    /// cache has room ([`MAX_CACHED_DOMAINS`]).
    fn separator(&self, name: &str, version: &str, chain_id: u64, asset: Address) -> B256 {
        let key = (name.to_string(), version.to_string(), chain_id, asset);
        if let Some(s) = self.domains.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return *s;
        }
        let separator = TokenDomain::new(name, version, chain_id, asset).separator();
        let mut domains = self.domains.write().unwrap_or_else(|e| e.into_inner());
        if domains.len() < MAX_CACHED_DOMAINS {
            domains.insert(key, separator);
        }
        separator
    }

    /// How many domain separators are cached.
    pub fn cached_domains(&self) -> usize {
        self.domains.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl LocalFacilitator {
    /// A facilitator for the given chains (by CAIP-2 id, from each node's chain id), recording
    /// settlements in `store`.
    pub fn new(chains: Vec<ChainAccess>, store: Arc<dyn ReplayStore>) -> Self {
        let chains = chains
            .into_iter()
            .map(|c| (farebox_evm::network::caip2(c.rpc.chain_id()), c))
            .collect();
        LocalFacilitator {
            chains,
            store,
            receipt_timeout: Duration::from_secs(20),
            offline: OfflineVerifier::new(),
            policy: FacilitatorPolicy::default(),
        }
    }

    /// Serves only what `policy` allows (see the module docs).
    pub fn with_policy(mut self, policy: FacilitatorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long settlement waits for a receipt before answering `settlement_pending`.
    pub fn with_receipt_timeout(mut self, timeout: Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    fn chain(&self, network: &str) -> Result<&ChainAccess, Reason> {
        self.chains.get(network).ok_or(Reason::InvalidNetwork)
    }

    /// The checks that need no chain, at the current time, exactly as this facilitator runs them
    /// first in `/verify` and `/settle`: the fields, the policy, then [`OfflineVerifier`]'s
    /// signature check.
    pub fn check_offline(
        &self,
        request: &VersionedPayment,
    ) -> Result<(CheckedPayment, TransferWithAuthorization), exact_evm::Rejection> {
        // A clock before 1970 decides nothing: refused as an unexpected error.
        let now = unix_now().map_err(|_| exact_evm::Rejection {
            reason: crate::Reason::UnexpectedVerifyError,
            payer: None,
        })?;
        let checked = exact_evm::check_request(request, now)?;
        // Before the signature: what this facilitator does not serve costs it nothing.
        if let Some(reason) = self.policy.refuses(&checked.requirement) {
            let payer = Some(checked.payload.authorization.from);
            return Err(exact_evm::Rejection { reason, payer });
        }
        self.offline.check_signature(checked)
    }

    /// Why a simulated or sent transfer reverted, from FiatToken's revert strings.
    async fn explain_revert(&self, reason: &str, checked: &CheckedPayment, rpc: &EvmRpc) -> Reason {
        let known = [
            ("authorization is used or canceled", Reason::NonceAlreadyUsed),
            ("exceeds balance", Reason::InsufficientFunds),
            ("invalid signature", Reason::InvalidSignature),
            ("authorization is not yet valid", Reason::NotYetValid),
            ("authorization is expired", Reason::Expired),
        ];
        if let Some((_, r)) = known.iter().find(|(text, _)| reason.contains(text)) {
            return *r;
        }
        // Not one of FiatToken's strings (another token): look at the state it depends on.
        let (asset, auth) = (checked.requirement.asset, &checked.payload.authorization);
        if let Ok(true) = rpc.authorization_state(asset, auth.from, auth.nonce).await {
            return Reason::NonceAlreadyUsed;
        }
        if let Ok(balance) = rpc.balance_of(asset, auth.from).await
            && balance < auth.value
        {
            return Reason::InsufficientFunds;
        }
        Reason::SimulationFailed
    }

    fn settle_response(
        request: &VersionedPayment,
        success: bool,
        reason: Option<Reason>,
        tx: Option<String>,
        payer: Address,
    ) -> SettleResponse {
        let network = request.network().to_string();
        let payer = Some(format!("{payer:#x}"));
        let mut answer = match reason {
            None if success => SettleResponse::success(String::new(), network, payer),
            r => {
                SettleResponse::failure(r.unwrap_or(Reason::UnexpectedSettleError), network, payer)
            }
        };
        answer.transaction = tx.unwrap_or_default();
        answer
    }

    /// Resolves `Pending` records of `namespace` (this facilitator's, or a rail's sharing the
    /// store) from the chain: an authorization the token marks used was settled; one that is
    /// unused past its `validBefore` can no longer be, so it failed. Returns how many changed.
    pub async fn reconcile(&self, namespace: &str) -> Result<usize, FacilitatorError> {
        let pending = self.store.pending(namespace).await.map_err(store_unavailable)?;
        let mut changed = 0;
        for (key, record) in pending {
            let Some((network, asset, from, nonce)) = parse_key(&key) else { continue };
            let Ok(chain) = self.chain(&network) else { continue };
            let used = match mined_authorization_state(&chain.rpc, asset, from, nonce).await {
                Ok(used) => used,
                Err(e) if e.is_unavailable() => {
                    return Err(FacilitatorError::Unavailable(e.to_string()));
                }
                Err(_) => continue,
            };
            let state = if used {
                ProofState::Settled
            } else if unix_now()? > record.expires_at {
                ProofState::Failed
            } else {
                continue;
            };
            self.store.update(namespace, &key, state, None).await.map_err(store_unavailable)?;
            changed += 1;
        }
        Ok(changed)
    }
}

fn store_unavailable(e: farebox_core::StoreError) -> FacilitatorError {
    FacilitatorError::Unavailable(e.to_string())
}

/// The replay key of an authorization: `network:token:from:nonce` (the scope of an EIP-3009
/// nonce). The x402 rail uses the same form.
pub fn replay_key(checked: &CheckedPayment) -> String {
    let auth = &checked.payload.authorization;
    format!(
        "{}:{:#x}:{:#x}:{:#x}",
        checked.requirement.network, checked.requirement.asset, auth.from, auth.nonce
    )
}

/// The parts of a [`replay_key`]: network, token, payer, nonce.
pub(crate) fn parse_key(key: &str) -> Option<(String, Address, Address, B256)> {
    let mut parts = key.rsplitn(4, ':');
    let nonce = parts.next()?.parse().ok()?;
    let from = parts.next()?.parse().ok()?;
    let asset = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_string(), asset, from, nonce))
}

#[async_trait]
impl Facilitator for LocalFacilitator {
    async fn verify(&self, request: &VersionedPayment) -> Result<VerifyResponse, FacilitatorError> {
        let version = request.x402_version();
        let (checked, message) = match self.check_offline(request) {
            Ok(ok) => ok,
            Err(r) => {
                return Ok(VerifyResponse::invalid(
                    r.reason,
                    version,
                    r.payer.map(|p| format!("{p:#x}")),
                ));
            }
        };
        let payer = format!("{:#x}", message.from);
        let chain = match self.chain(&checked.requirement.network) {
            Ok(c) => c,
            Err(reason) => return Ok(VerifyResponse::invalid(reason, version, Some(payer))),
        };
        let simulated = chain
            .rpc
            .simulate_transfer_with_authorization(
                checked.requirement.asset,
                &message,
                &checked.payload.signature,
                chain.signer.address(),
            )
            .await;
        match simulated {
            Ok(()) => Ok(VerifyResponse::valid(payer)),
            Err(EvmError::Reverted { reason }) => {
                let why = self.explain_revert(&reason, &checked, &chain.rpc).await;
                Ok(VerifyResponse::invalid(why, version, Some(payer)))
            }
            Err(e) if e.is_unavailable() => Err(FacilitatorError::Unavailable(e.to_string())),
            Err(e) => {
                let mut answer =
                    VerifyResponse::invalid(Reason::SimulationFailed, version, Some(payer));
                answer.invalid_message = Some(e.to_string());
                Ok(answer)
            }
        }
    }

    async fn settle(&self, request: &VersionedPayment) -> Result<SettleResponse, FacilitatorError> {
        let (checked, message) = match self.check_offline(request) {
            Ok(ok) => ok,
            Err(r) => {
                let payer = r.payer.unwrap_or(Address::ZERO);
                return Ok(Self::settle_response(request, false, Some(r.reason), None, payer));
            }
        };
        let payer = message.from;
        let chain = match self.chain(&checked.requirement.network) {
            Ok(c) => c,
            Err(reason) => {
                return Ok(Self::settle_response(request, false, Some(reason), None, payer));
            }
        };
        let key = replay_key(&checked);
        let expires_at = checked.payload.authorization.valid_before;
        if !self.store.reserve(NAMESPACE, &key, expires_at).await.map_err(store_unavailable)? {
            // Another settlement of this authorization exists: say where it stands, never send twice.
            let record = self.store.get(NAMESPACE, &key).await.map_err(store_unavailable)?;
            let (reason, tx) = match record {
                Some(r) if r.state == ProofState::Pending || r.state == ProofState::Reserved => {
                    (Reason::SettlementPending, r.reference)
                }
                Some(r) => (Reason::NonceAlreadyUsed, r.reference),
                None => (Reason::NonceAlreadyUsed, None),
            };
            return Ok(Self::settle_response(request, false, Some(reason), tx, payer));
        }
        let sent = chain
            .rpc
            .send_transfer_with_authorization(
                &chain.signer,
                checked.requirement.asset,
                &message,
                &checked.payload.signature,
            )
            .await;
        let tx = match sent {
            Ok(tx) => tx,
            Err(EvmError::Reverted { reason }) => {
                // Refused at gas estimation: nothing was broadcast, so the authorization is as
                // usable as before (e.g. once the payer has the funds again): forget it rather
                // than marking it failed, which would refuse it for good.
                let why = self.explain_revert(&reason, &checked, &chain.rpc).await;
                self.store.release(NAMESPACE, &key).await.map_err(store_unavailable)?;
                return Ok(Self::settle_response(request, false, Some(why), None, payer));
            }
            Err(e) => {
                // The node may have taken the transaction before failing to answer: pending, to
                // be reconciled from authorizationState. Whether or not that can be recorded, the
                // caller must not take it for "nothing sent".
                let detail =
                    match self.store.update(NAMESPACE, &key, ProofState::Pending, None).await {
                        Ok(()) => e.to_string(),
                        Err(store) => format!("{e}; and recording it as pending failed: {store}"),
                    };
                return Err(FacilitatorError::outcome_unknown(detail));
            }
        };
        let tx_hex = format!("{tx:#x}");
        if let Err(e) = self.store.update(NAMESPACE, &key, ProofState::Pending, Some(&tx_hex)).await
        {
            // Broadcast, but not recorded: the money may move, so this is no "unavailable" (which
            // would let the caller release the authorization). The record stays reserved, which
            // still refuses a second settlement of it.
            tracing::error!(tx = %tx_hex, error = %e, "x402 settlement broadcast but not recorded");
            return Err(FacilitatorError::OutcomeUnknown {
                detail: format!("transfer {tx_hex} broadcast but not recorded: {e}"),
                transaction: Some(tx_hex),
            });
        }
        let outcome = chain.rpc.wait_for_receipt(tx, self.receipt_timeout).await;
        let (state, answer) = match outcome {
            Ok(ReceiptOutcome::Success { .. }) => (
                ProofState::Settled,
                Self::settle_response(request, true, None, Some(tx_hex.clone()), payer),
            ),
            Ok(ReceiptOutcome::Reverted { .. }) => (
                ProofState::Failed,
                Self::settle_response(
                    request,
                    false,
                    Some(Reason::TransactionFailed),
                    Some(tx_hex.clone()),
                    payer,
                ),
            ),
            Ok(ReceiptOutcome::Unknown) | Err(_) => (
                ProofState::Pending,
                Self::settle_response(
                    request,
                    false,
                    Some(Reason::SettlementPending),
                    Some(tx_hex.clone()),
                    payer,
                ),
            ),
        };
        if let Err(e) = self.store.update(NAMESPACE, &key, state, Some(&tx_hex)).await {
            // The outcome is known: answer it. The record stays `Pending` with its hash, and
            // `reconcile` resolves it from the chain later.
            tracing::warn!(tx = %tx_hex, error = %e, "x402 settlement outcome not recorded");
        }
        tracing::info!(tx = %tx_hex, network = %checked.requirement.network, state = state.as_str(), "x402 settlement");
        Ok(answer)
    }

    async fn authorization_used(
        &self,
        network: &str,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> Result<Option<bool>, FacilitatorError> {
        let Ok(chain) = self.chain(network) else { return Ok(None) };
        match mined_authorization_state(&chain.rpc, token, from, nonce).await {
            Ok(used) => Ok(Some(used)),
            Err(e) if e.is_unavailable() => Err(FacilitatorError::Unavailable(e.to_string())),
            Err(e) => Err(FacilitatorError::Protocol(e.to_string())),
        }
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let mut kinds = Vec::new();
        let mut signers = Vec::new();
        let served =
            |caip2: &String| self.policy.networks.as_ref().is_none_or(|n| n.contains(caip2));
        for (caip2, chain) in self.chains.iter().filter(|(caip2, _)| served(caip2)) {
            kinds.push(SupportedKind {
                x402_version: 2,
                scheme: exact_evm::SCHEME.into(),
                network: caip2.clone(),
                extra: None,
            });
            if let Some(v1_name) = network::caip2_to_v1(caip2) {
                kinds.push(SupportedKind {
                    x402_version: 1,
                    scheme: exact_evm::SCHEME.into(),
                    network: v1_name.into(),
                    extra: None,
                });
            }
            signers.push(format!("{:#x}", chain.signer.address()));
        }
        kinds.sort_by(|a, b| (a.x402_version, &a.network).cmp(&(b.x402_version, &b.network)));
        Ok(SupportedResponse {
            kinds,
            extensions: Vec::new(),
            signers: [("eip155:*".to_string(), signers)].into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_supplied_domains_do_not_grow_the_cache() {
        let verifier = OfflineVerifier::new();
        let asset = Address::repeat_byte(7);
        for i in 0..10 * MAX_CACHED_DOMAINS {
            let a = verifier.separator(&format!("name {i}"), "2", 8453, asset);
            let b = verifier.separator(&format!("name {i}"), "2", 8453, asset);
            assert_eq!(a, b, "cached or not, the same separator");
        }
        assert_eq!(verifier.cached_domains(), MAX_CACHED_DOMAINS);
    }
}
