//! The server side of the `evm` charge: an EIP-3009 authorization per payment, sent on chain
//! by the server's gas key.
//!
//! **Challenge.** For a route priced in the configured token, the challenge's `request` names
//! the amount, token, recipient and chain, and the token's EIP-712 domain; its `opaque` carries
//! a salt so that each challenge, and the nonce bound to it, is unique.
//!
//! **Verify**, after the envelope: amount covers the price, the authorization's nonce is bound
//! to the challenge (`keccak256(id ‖ realm)`, or the JSON-array form other SDKs sign),
//! `to == recipient`, `value == amount`, `validAfter <= now < validBefore`, the EIP-712 signer
//! is `from` (who the payment's payer is, whatever the credential's `source` says), the
//! challenge is unused, and one `eth_call` simulates the transfer from the gas key (a node that
//! cannot answer: 503). Then the challenge id is reserved with a hold on the payer's funds
//! ([`farebox_core::store::Hold`]): a second payment of one payer while one is in flight is
//! accepted only if the payer's balance (one more `balanceOf`, only then) covers both.
//!
//! **Settle** sends `transferWithAuthorization` with the gas key and waits for its receipt:
//! success answers a `Payment-Receipt` whose `reference` is the transaction hash; a receipt that
//! does not arrive in time leaves the record `Pending` with the hash and refuses the request
//! (503) naming it. Upkeep resolves pending records later, from the chain
//! (`EvmCharge::reconcile`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::store::{Hold, HoldOutcome, reserve_funded};
use farebox_core::{Asset, Money, PaymentError, ProofState, Receipt, Resource, Verdict};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::token::TokenInfo;
use farebox_evm::{Address, EvmError, EvmRpc, PrivateKeySigner, ReceiptOutcome, TxHash, U256};
use http::HeaderValue;

use super::{
    CREDENTIAL_AUTHORIZATION, EvmChargeRequest, INTENT, METHOD, TokenName, authorization_of,
    challenge_nonces,
};
use crate::challenge::decode_request;
use crate::credential::Credential;
use crate::problem;
use crate::rail::envelope::{Envelope, live_for, receipt_header, reserved_until};
use crate::rail::intent::{Approved, Intent, Settles};
use crate::rail::{BACKEND_RETRY_AFTER, ConfigError, NAMESPACE, check_token, token_asset};
use crate::receipt::PaymentReceipt;
use crate::time;

/// The `evm` charge method: the token a route may be priced in, who is paid, and the node and
/// gas key that settle. Built and checked by [`EvmChargeConfig::builder`].
#[derive(Clone)]
pub struct EvmChargeConfig {
    pub(crate) rpc: EvmRpc,
    signer: PrivateKeySigner,
    token: Address,
    info: TokenInfo,
    recipient: Address,
    receipt_timeout: Duration,
}

impl EvmChargeConfig {
    /// A builder over the chain's node (its chain id is the challenge's `chainId`) and the key
    /// that sends `transferWithAuthorization` and pays its gas; `token`, `described_as` and
    /// `recipient` are required.
    pub fn builder(rpc: EvmRpc, signer: PrivateKeySigner) -> EvmChargeConfigBuilder {
        EvmChargeConfigBuilder {
            rpc,
            signer,
            token: None,
            info: None,
            recipient: None,
            receipt_timeout: DEFAULT_RECEIPT_TIMEOUT,
        }
    }

    /// Who is paid.
    pub fn recipient(&self) -> Address {
        self.recipient
    }

    /// The farebox asset routes are priced in for this method.
    pub fn asset(&self) -> Asset {
        token_asset(self.rpc.chain_id(), self.token, &self.info.symbol, self.info.decimals)
    }
}

/// How long settlement waits for a transfer's receipt unless told otherwise.
pub const DEFAULT_RECEIPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds an [`EvmChargeConfig`]; [`EvmChargeConfigBuilder::build`] names what is missing or
/// wrong.
#[must_use]
pub struct EvmChargeConfigBuilder {
    rpc: EvmRpc,
    signer: PrivateKeySigner,
    token: Option<Address>,
    info: Option<TokenInfo>,
    recipient: Option<Address>,
    receipt_timeout: Duration,
}

impl EvmChargeConfigBuilder {
    /// The EIP-3009 token contract.
    pub fn token(mut self, token: Address) -> Self {
        self.token = Some(token);
        self
    }

    /// The token's symbol, decimals and EIP-712 domain (which payers sign under):
    /// `&usdc::BASE_SEPOLIA`, or a [`TokenInfo`].
    pub fn described_as(mut self, info: impl Into<TokenInfo>) -> Self {
        self.info = Some(info.into());
        self
    }

    /// Who is paid: not the zero address.
    pub fn recipient(mut self, recipient: Address) -> Self {
        self.recipient = Some(recipient);
        self
    }

    /// How long settlement waits for the transfer's receipt before answering pending.
    pub fn receipt_timeout(mut self, timeout: Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    pub fn build(self) -> Result<EvmChargeConfig, ConfigError> {
        let wrong = |field, problem: &str| ConfigError::field("evm charge", field, problem);
        let token = self.token.ok_or_else(|| wrong("token", "is required"))?;
        let info = self.info.ok_or_else(|| wrong("described_as", "is required"))?;
        let recipient = self.recipient.ok_or_else(|| wrong("recipient", "is required"))?;
        check_token("evm charge", token, &info, true)?;
        if recipient.is_zero() {
            return Err(wrong("recipient", "is the zero address: what is paid to it is burnt"));
        }
        if self.receipt_timeout.is_zero() {
            return Err(wrong("receipt_timeout", "must be longer than zero"));
        }
        Ok(EvmChargeConfig {
            rpc: self.rpc,
            signer: self.signer,
            token,
            info,
            recipient,
            receipt_timeout: self.receipt_timeout,
        })
    }
}

impl std::fmt::Debug for EvmChargeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmChargeConfig")
            .field("chain_id", &self.rpc.chain_id())
            .field("token", &self.token)
            .field("recipient", &self.recipient)
            .finish_non_exhaustive()
    }
}

/// The `evm` charge, offered under `config`.
pub(crate) struct EvmCharge {
    env: Arc<Envelope>,
    config: EvmChargeConfig,
    asset: Asset,
    domain: TokenDomain,
}

impl EvmCharge {
    pub fn new(env: Arc<Envelope>, config: EvmChargeConfig) -> Self {
        let domain = TokenDomain::new(
            config.info.eip712_name.clone(),
            config.info.eip712_version.clone(),
            config.rpc.chain_id(),
            config.token,
        );
        EvmCharge { env, asset: config.asset(), domain, config }
    }

    /// Everything but the chain and the reservation: the challenge is live for the route, the
    /// request is ours, covers the price, and
    /// the authorization pays exactly it, bound to this challenge, signed by its `from`.
    fn checked(
        &self,
        resource: &Resource,
        cred: &Credential,
        now_unix: u64,
    ) -> Result<(Money, TransferWithAuthorization, Vec<u8>), PaymentError> {
        let ch = &cred.challenge;
        live_for(ch, resource, now_unix)?;
        let bad = |e: &dyn std::fmt::Display| {
            problem::invalid_challenge(format!("challenge request: {e}"))
        };
        let request = decode_request(&ch.request).map_err(|e| bad(&e))?;
        let request = EvmChargeRequest::from_json(&request).map_err(|e| bad(&e))?;
        let cfg = &self.config;
        if request.currency != cfg.token
            || request.recipient != cfg.recipient
            || request.chain_id != cfg.rpc.chain_id()
        {
            return Err(problem::invalid_challenge(
                "the challenge names another token, recipient or chain than this server's",
            ));
        }
        let price = resource
            .price
            .in_asset(&self.asset)
            .ok_or_else(|| problem::invalid_challenge("this route has no price in this token"))?;
        if request.amount < U256::from(price.amount) {
            return Err(problem::insufficient(format!(
                "the challenge charges {} base units, this route costs {price}",
                request.amount
            )));
        }
        let (auth, signature) =
            authorization_of(&cred.payload).map_err(|e| problem::malformed(e.to_string()))?;
        if !challenge_nonces(&ch.id, &ch.realm).contains(&auth.nonce) {
            return Err(problem::verification_failed(
                "the authorization's nonce is not bound to this challenge: expected \
                 keccak256(challenge.id ‖ challenge.realm)",
            ));
        }
        if auth.to != cfg.recipient {
            return Err(problem::verification_failed("the authorization pays another recipient"));
        }
        if auth.value != request.amount {
            return Err(problem::verification_failed(format!(
                "the authorization transfers {}, the challenge charges {}",
                auth.value, request.amount
            )));
        }
        let now = U256::from(now_unix);
        if auth.validBefore <= now {
            return Err(problem::expired("the authorization has expired"));
        }
        if auth.validAfter > now {
            return Err(problem::verification_failed("the authorization is not valid yet"));
        }
        let digest = eip3009::signing_hash(&self.domain.separator(), &auth);
        match eip3009::recover(&digest, &signature) {
            Ok(signer) if signer == auth.from => {}
            _ => {
                return Err(problem::verification_failed(
                    "the authorization is not signed by its `from`",
                ));
            }
        }
        let amount: u128 = request
            .amount
            .try_into()
            .map_err(|_| problem::invalid_challenge("challenge amount out of range"))?;
        Ok((Money::new(self.asset.clone(), amount), auth, signature))
    }

    /// Reserves an `evm` charge's challenge id, after the chain has shown that the transfer
    /// would go through, with a hold on the payer's funds: refused when the challenge was used,
    /// or when the payer's payments in flight would take more than its balance.
    async fn reserve(
        &self,
        id: &str,
        auth: &TransferWithAuthorization,
        signature: &[u8],
        amount: &Money,
        challenge_expires_at: u64,
        now: u64,
    ) -> Result<(), PaymentError> {
        let cfg = &self.config;
        // A used challenge is refused without asking the chain.
        if self.env.store.get(NAMESPACE, id).await?.is_some() {
            return Err(problem::used_challenge());
        }
        // Read before the simulation reads the payer's balance: see `Hold`.
        let mark = self.env.store.settled_mark().await?;
        self.simulate(auth, signature).await?;
        // Kept while the challenge or the authorization can be used: reconciliation fails a
        // pending settlement only once its authorization has expired.
        let valid_before = u64::try_from(auth.validBefore).unwrap_or(u64::MAX);
        let expires_at = challenge_expires_at.max(valid_before);
        let account = eip3009::payer_account(cfg.rpc.chain_id(), cfg.token, auth.from);
        let hold = Hold {
            account: &account,
            amount: amount.amount,
            balance: None,
            mark,
            until: Hold::until(expires_at, now),
        };
        let balance = || async {
            let balance =
                cfg.rpc.balance_of(cfg.token, auth.from).await.map_err(chain_unavailable)?;
            Ok::<_, PaymentError>(Some(u128::try_from(balance).unwrap_or(u128::MAX)))
        };
        match reserve_funded(&*self.env.store, NAMESPACE, id, expires_at, hold, balance).await? {
            HoldOutcome::Reserved => Ok(()),
            HoldOutcome::Duplicate => Err(problem::used_challenge()),
            HoldOutcome::Insufficient { held } => Err(problem::verification_failed(format!(
                "the payer's other payments in flight hold {held} base units of its balance; \
                 pay again once they have settled"
            ))),
        }
    }

    /// Resolves `evm` charges whose settlement outcome was unknown (`Pending`: a receipt that
    /// did not arrive in time, a node that failed while taking the transaction) from the chain:
    /// the transaction's receipt when its hash is known (success: settled; reverted: failed);
    /// otherwise the authorization's state as of the latest mined block (used, under either
    /// nonce form of the challenge: settled; still unused once the authorization has expired:
    /// failed). Anything else stays pending. Returns how many were resolved; a chain that cannot
    /// be reached stops the run (records resolved so far stay resolved). Upkeep
    /// runs it.
    pub async fn reconcile(&self) -> Result<usize, PaymentError> {
        let cfg = &self.config;
        let mut resolved = 0;
        for (id, record) in self.env.store.pending(NAMESPACE).await? {
            let Some((chain_id, token, payer)) =
                record.account.as_deref().and_then(eip3009::parse_payer_account)
            else {
                continue; // not an evm charge with a hold
            };
            if chain_id != cfg.rpc.chain_id() || token != cfg.token {
                continue;
            }
            let mined = match record.reference.as_deref().and_then(|r| r.parse::<TxHash>().ok()) {
                Some(tx) => cfg.rpc.wait_for_receipt(tx, Duration::ZERO).await,
                None => Ok(ReceiptOutcome::Unknown),
            };
            let state = match mined {
                Ok(ReceiptOutcome::Success { .. }) => ProofState::Settled,
                Ok(ReceiptOutcome::Reverted { .. }) => ProofState::Failed,
                _ => {
                    let mut used = false;
                    for nonce in challenge_nonces(&id, &self.env.realm) {
                        match cfg.rpc.mined_authorization_state(token, payer, nonce).await {
                            Ok(u) => used |= u,
                            Err(e) if e.is_unavailable() => return Err(chain_unavailable(e)),
                            Err(e) => {
                                tracing::warn!(challenge = %id, error = %e, "cannot read an authorization's state");
                            }
                        }
                    }
                    if used {
                        ProofState::Settled
                    } else if time::unix_now()? > record.expires_at {
                        ProofState::Failed
                    } else {
                        continue;
                    }
                }
            };
            self.env.store.update(NAMESPACE, &id, state, None).await?;
            let tx = record.reference.as_deref().unwrap_or("");
            tracing::info!(challenge = %id, state = state.as_str(), tx, "MPP evm charge reconciled");
            resolved += 1;
        }
        Ok(resolved)
    }

    /// One `eth_call` simulating the transfer from the gas key: nonce unused, balance, the
    /// token's own signature and time checks.
    async fn simulate(
        &self,
        auth: &TransferWithAuthorization,
        signature: &[u8],
    ) -> Result<(), PaymentError> {
        let cfg = &self.config;
        let simulated = cfg
            .rpc
            .simulate_transfer_with_authorization(cfg.token, auth, signature, cfg.signer.address())
            .await;
        match simulated {
            Ok(()) => Ok(()),
            Err(e) if e.is_unavailable() => Err(chain_unavailable(e)),
            Err(EvmError::Reverted { reason }) => {
                Err(problem::verification_failed(format!("the transfer would fail: {reason}")))
            }
            Err(e) => {
                Err(problem::verification_failed(format!("the transfer cannot be simulated: {e}")))
            }
        }
    }

    /// Sends an accepted `evm` authorization and waits for its receipt: the transaction hash.
    async fn send(
        &self,
        id: &str,
        auth: &TransferWithAuthorization,
        signature: &[u8],
    ) -> Result<String, PaymentError> {
        let cfg = &self.config;
        let sent =
            cfg.rpc.send_transfer_with_authorization(&cfg.signer, cfg.token, auth, signature).await;
        let tx = match sent {
            Ok(tx) => tx,
            Err(EvmError::Reverted { reason }) => {
                // Refused at gas estimation: nothing was broadcast, so nothing is spent either;
                // the challenge is given back (the same credential may be retried once its
                // cause, say a balance too low, is gone).
                self.env.store.release(NAMESPACE, id).await?;
                return Err(problem::verification_failed(format!(
                    "the transfer would revert: {reason}"
                )));
            }
            Err(e) => {
                // The node may have taken the transaction before failing to answer.
                self.env.store.update(NAMESPACE, id, ProofState::Pending, None).await?;
                return Err(PaymentError::unavailable(
                    "mpp_settlement_outcome_unknown",
                    format!("{e}; the payment is recorded as pending and will not be taken twice"),
                    BACKEND_RETRY_AFTER,
                ));
            }
        };
        let tx_hex = format!("{tx:#x}");
        self.env.store.update(NAMESPACE, id, ProofState::Pending, Some(&tx_hex)).await?;
        match cfg.rpc.wait_for_receipt(tx, cfg.receipt_timeout).await {
            Ok(ReceiptOutcome::Success { .. }) => {
                if let Err(e) =
                    self.env.store.update(NAMESPACE, id, ProofState::Settled, Some(&tx_hex)).await
                {
                    tracing::warn!(error = %e, "could not mark an MPP challenge settled");
                }
                Ok(tx_hex)
            }
            Ok(ReceiptOutcome::Reverted { .. }) => {
                self.env.store.update(NAMESPACE, id, ProofState::Failed, Some(&tx_hex)).await?;
                Err(problem::verification_failed(format!("the transfer {tx_hex} reverted")))
            }
            Ok(_) | Err(_) => Err(PaymentError::unavailable(
                "mpp_settlement_pending",
                format!(
                    "settlement sent as {tx_hex} but not yet confirmed; the payment is recorded as pending"
                ),
                BACKEND_RETRY_AFTER,
            )),
        }
    }
}

#[async_trait]
impl Intent for EvmCharge {
    fn names(&self) -> (&'static str, &'static str) {
        (METHOD, INTENT)
    }

    /// The `evm` challenge line for `resource`, if it is priced in the configured token.
    async fn challenge(&self, resource: &Resource) -> Result<Option<HeaderValue>, PaymentError> {
        let Some(price) = resource.price.in_asset(&self.asset).filter(|p| p.amount > 0) else {
            return Ok(None);
        };
        let cfg = &self.config;
        let request = EvmChargeRequest {
            amount: U256::from(price.amount),
            currency: cfg.token,
            recipient: cfg.recipient,
            chain_id: cfg.rpc.chain_id(),
            decimals: cfg.info.decimals,
            credential_types: vec![CREDENTIAL_AUTHORIZATION.to_string()],
            authorization: Some(TokenName {
                name: cfg.info.eip712_name.clone(),
                version: cfg.info.eip712_version.clone(),
            }),
            description: resource.description.as_deref().map(str::to_owned),
        };
        self.env.issue(resource, self.names(), request.to_json(), true).map(Some)
    }

    async fn approve(
        self: Arc<Self>,
        resource: &Resource,
        cred: &Credential,
        now: u64,
    ) -> Result<Verdict, PaymentError> {
        let (amount, auth, signature) = self.checked(resource, cred, now)?;
        let expires_at = reserved_until(&cred.challenge, now);
        let id = cred.challenge.id.clone();
        self.reserve(&id, &auth, &signature, &amount, expires_at, now).await?;
        // The payer is who signed the authorization, whatever `source` says.
        let (payer, reference) = (format!("{:#x}", auth.from), format!("{:#x}", auth.nonce));
        Ok(Approved::payment(amount, Some(payer), reference, (id, auth, signature))
            .into_verdict(self))
    }

    fn check(
        &self,
        resource: &Resource,
        cred: &Credential,
        now: u64,
    ) -> Result<Money, PaymentError> {
        self.checked(resource, cred, now).map(|(amount, ..)| amount)
    }

    /// Resolves charges whose settlement outcome was unknown (`EvmCharge::reconcile`).
    async fn maintain(&self) -> Result<(), PaymentError> {
        self.reconcile().await.map(|_| ())
    }
}

#[async_trait]
impl Settles for EvmCharge {
    /// The challenge id reserved, the authorization and its signature.
    type Held = (String, TransferWithAuthorization, Vec<u8>);

    async fn settle(
        &self,
        (id, auth, signature): Self::Held,
        amount: Money,
        _reference: String,
    ) -> Result<Receipt, PaymentError> {
        let tx = self.send(&id, &auth, &signature).await?;
        let receipt = PaymentReceipt::success(METHOD, time::format(time::unix_now()?), tx.clone())
            .with("challengeId", id);
        Ok(Receipt::new(amount, tx, vec![receipt_header(&receipt)?]))
    }

    async fn release(&self, (id, ..): Self::Held) {
        if let Err(e) = self.env.store.release(NAMESPACE, &id).await {
            tracing::warn!(error = %e, "could not release an MPP reservation");
        }
    }
}

/// A chain that cannot answer (fail closed: 503).
fn chain_unavailable(e: EvmError) -> PaymentError {
    PaymentError::unavailable(
        "evm_unavailable",
        format!("cannot reach the chain to check the payment: {e}"),
        BACKEND_RETRY_AFTER,
    )
}
