//! [`X402Rail`]: x402 behind the farebox `Rail` trait.
//!
//! One 402 offers both wire versions: v2 in the `PAYMENT-REQUIRED` header, v1 as members of the
//! problem+json body (`x402Version`, `error`, `accepts`), which is where v1 clients read it. The
//! requirements are a pure function of the route's price and this rail's configuration, so the
//! `accepted` requirement a v2 client echoes can be compared for deep equality with the one
//! rebuilt when it comes back.
//!
//! A payment is checked off-chain here first (cheap, and it yields the nonce), then looked up in
//! the replay store (a nonce already seen is refused without asking the facilitator), then
//! verified by the facilitator, then its nonce is reserved in the replay store — so a replayed
//! or concurrent duplicate is refused before the handler runs, across restarts and instances
//! sharing the store. Settlement runs after the handler succeeded; its outcome is recorded. A
//! settlement whose outcome is unknown stays `Pending` with its transaction hash, and the client
//! is told so with the hash in `PAYMENT-RESPONSE`.
//!
//! The reservation also holds the payment's amount against its payer's funds
//! ([`farebox_core::store::Hold`]): a facilitator's simulation shows that one authorization can
//! be paid, not that twenty signed at once can. A payer's second payment while one is in flight
//! is accepted only if the payer's token balance, read through the rail's own node
//! ([`X402Rail::with_node`]), covers everything in flight; without a node (a facilitator over
//! HTTP reports no balance) each payer has at most one payment in flight. Refusals say
//! `insufficient_funds`.
//!
//! When a payment is refused, the fresh 402 says why: the reason code of the refusal in
//! `PAYMENT-REQUIRED`'s `error` and in v1's body `error` (v1 spelling), instead of the "header
//! is required" text a request without payment gets.
//!
//! [`X402Rail::reconcile`] resolves those pending records later, from the token's
//! `authorizationState` on chain, read through the facilitator when it can
//! ([`Facilitator::authorization_used`]; the in-process facilitator can) or through the rail's
//! own node ([`X402Rail::with_node`], or a [`ChainReader`] given with
//! [`X402Rail::with_chain_reader`]; for a facilitator over HTTP). [`Rail::maintain`] runs it.

use std::sync::Arc;
use std::time::Duration;

use farebox_core::time::unix_now;

use crate::config::X402Config;

use async_trait::async_trait;
use farebox_core::store::{Hold, HoldOutcome, reserve_funded};
use farebox_core::{
    Asset, Challenge, ErrorKind, Money, PaymentError, PresentedCredential, ProofState, Rail,
    Receipt, Refusal, ReplayStore, Resource, Settlement, Verdict, Verified,
};
use farebox_evm::EvmRpc;
use farebox_evm::eip3009::payer_account;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::exact_evm::{self, CheckedPayment};
use crate::facilitator::chain::ChainReader;
use crate::facilitator::local::{parse_key, replay_key};
use crate::facilitator::{Facilitator, FacilitatorError};
use crate::facilitator_api::{AnyPaymentPayload, SettleResponse, VersionedPayment};
use crate::{Amount, Reason, codec, network, v1, v2};

/// Replay-store namespace of the rail's reservations.
pub const NAMESPACE: &str = "x402";

const PAYMENT_SIGNATURE: HeaderName = HeaderName::from_static("payment-signature");
const X_PAYMENT: HeaderName = HeaderName::from_static("x-payment");
const PAYMENT_REQUIRED: HeaderName = HeaderName::from_static("payment-required");
const PAYMENT_RESPONSE: HeaderName = HeaderName::from_static("payment-response");
const X_PAYMENT_RESPONSE: HeaderName = HeaderName::from_static("x-payment-response");

/// The x402 rail. See the module docs.
pub struct X402Rail {
    config: X402Config,
    asset: Asset,
    facilitator: Arc<dyn Facilitator>,
    store: Arc<dyn ReplayStore>,
    reader: Option<ChainReader>,
    /// The rail's own node for its network: payers' balances ([`X402Rail::with_node`]).
    node: Option<EvmRpc>,
}

/// What one [`X402Rail::reconcile`] run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Pending settlements found settled on chain (the authorization is used).
    pub settled: usize,
    /// Pending settlements that can no longer happen (unused past `validBefore`): failed.
    pub failed: usize,
    /// Still pending: not mined yet, or the chain could not be read for them.
    pub unresolved: usize,
}

/// What `verify` hands to `settle`.
struct Accepted {
    request: VersionedPayment,
    key: String,
    payer: String,
}

impl X402Rail {
    pub fn new(
        config: X402Config,
        facilitator: Arc<dyn Facilitator>,
        store: Arc<dyn ReplayStore>,
    ) -> Self {
        let asset = Asset::Token(config.token());
        X402Rail { config, asset, facilitator, store, reader: None, node: None }
    }

    /// Reads the chain with `reader` when reconciling, instead of asking the facilitator (which
    /// cannot answer when it is reached over HTTP).
    pub fn with_chain_reader(mut self, reader: ChainReader) -> Self {
        self.reader = Some(reader);
        self
    }

    /// Gives the rail a node of its network, to read with it: a payer's token balance when
    /// another of its payments is in flight (one `balanceOf` call, only then), so a funded payer
    /// may have several payments in flight at once (without a node: one); and authorization
    /// states when reconciling ([`Self::with_chain_reader`]). A node of another chain is never
    /// asked for balances.
    pub fn with_node(self, rpc: EvmRpc) -> Self {
        let reader = ChainReader::new([rpc.clone()]);
        X402Rail { node: Some(rpc), ..self.with_chain_reader(reader) }
    }

    /// Resolves this rail's `Pending` settlements (outcome unknown: a receipt that did not arrive,
    /// an answer that was lost) from the chain: an authorization the token marks used was
    /// settled; one still unused after its `validBefore` can no longer be, so it failed; anything
    /// else stays pending. Call it periodically. A store or chain that cannot be reached is
    /// [`FacilitatorError::Unavailable`]; records already resolved in this run stay resolved.
    pub async fn reconcile(&self) -> Result<Reconciled, FacilitatorError> {
        let store_down = |e: farebox_core::StoreError| FacilitatorError::Unavailable(e.to_string());
        let mut done = Reconciled::default();
        for (key, record) in self.store.pending(NAMESPACE).await.map_err(store_down)? {
            let Some((network, token, from, nonce)) = parse_key(&key) else {
                done.unresolved += 1;
                continue;
            };
            let used = match &self.reader {
                Some(reader) => reader.authorization_used(&network, token, from, nonce).await,
                None => self.facilitator.authorization_used(&network, token, from, nonce).await,
            };
            let state = match used {
                Ok(Some(true)) => ProofState::Settled,
                Ok(Some(false)) if unix_now()? > record.expires_at => ProofState::Failed,
                Ok(_) => {
                    done.unresolved += 1;
                    continue;
                }
                Err(e @ FacilitatorError::Unavailable(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not read an x402 authorization's state");
                    done.unresolved += 1;
                    continue;
                }
            };
            self.store.update(NAMESPACE, &key, state, None).await.map_err(store_down)?;
            tracing::info!(
                key,
                state = state.as_str(),
                tx = record.reference.as_deref().unwrap_or(""),
                "x402 settlement reconciled"
            );
            match state {
                ProofState::Settled => done.settled += 1,
                _ => done.failed += 1,
            }
        }
        Ok(done)
    }

    pub fn config(&self) -> &X402Config {
        &self.config
    }

    fn extra(&self) -> Map<String, Value> {
        let mut extra = Map::new();
        extra.insert("name".into(), Value::String(self.config.eip712_name().to_string()));
        extra.insert("version".into(), Value::String(self.config.eip712_version().to_string()));
        extra
    }

    fn url(&self, resource: &Resource) -> String {
        format!("{}{}", self.config.public_url().trim_end_matches('/'), resource.path)
    }

    fn description(resource: &Resource) -> String {
        resource
            .description
            .as_deref()
            .map_or_else(|| format!("{} {}", resource.method, resource.path), str::to_string)
    }

    /// The v2 requirement for `resource`, or `None` if its price is not in this rail's asset.
    pub fn requirement_v2(&self, resource: &Resource) -> Option<v2::PaymentRequirements> {
        let price = resource.price.in_asset(&self.asset)?;
        Some(v2::PaymentRequirements {
            scheme: exact_evm::SCHEME.into(),
            network: self.config.network().to_string(),
            amount: Amount::from(price.amount),
            asset: self.config.asset().to_string(),
            pay_to: self.config.pay_to().to_string(),
            max_timeout_seconds: self.config.max_timeout_seconds(),
            extra: Some(self.extra()),
            other: Map::new(),
        })
    }

    /// The v1 requirement, when v1 is offered and the network has a v1 name.
    pub fn requirement_v1(&self, resource: &Resource) -> Option<v1::PaymentRequirements> {
        if !self.config.offer_v1() {
            return None;
        }
        let name = network::caip2_to_v1(self.config.network())?;
        let price = resource.price.in_asset(&self.asset)?;
        Some(v1::PaymentRequirements {
            scheme: exact_evm::SCHEME.into(),
            network: name.into(),
            max_amount_required: Amount::from(price.amount),
            asset: self.config.asset().to_string(),
            pay_to: self.config.pay_to().to_string(),
            resource: self.url(resource),
            description: Self::description(resource),
            mime_type: Some("application/json".into()),
            output_schema: None,
            max_timeout_seconds: self.config.max_timeout_seconds(),
            extra: Some(self.extra()),
        })
    }

    /// The facilitator request for a presented payment (`PAYMENT-SIGNATURE` or `X-PAYMENT`):
    /// the header decoded, paired with this resource's requirement of the same version, rebuilt
    /// here rather than trusted from the client. The first step of [`Rail::verify`], public so
    /// that its cost can be measured (`benches/verify.rs`). A header that does not decode is
    /// [`Reason::InvalidPayload`], a version that is unknown or does not match the header is
    /// [`Reason::InvalidX402Version`].
    pub fn payment_request(
        &self,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<VersionedPayment, PaymentError> {
        let payment = AnyPaymentPayload::from_header(&credential.value)
            .map_err(|e| invalid(e.reason(), format!("{}: {e}", credential.header)))?;
        let expects_v2 = credential.header == PAYMENT_SIGNATURE;
        match (payment, expects_v2) {
            (AnyPaymentPayload::V2(payment_payload), true) => {
                let payment_requirements = self.requirement_v2(resource).ok_or_else(not_offered)?;
                Ok(VersionedPayment::V2 { payment_payload: *payment_payload, payment_requirements })
            }
            (AnyPaymentPayload::V1(payment_payload), false) => {
                let payment_requirements = self.requirement_v1(resource).ok_or_else(not_offered)?;
                Ok(VersionedPayment::V1 { payment_payload, payment_requirements })
            }
            (p, _) => Err(invalid(
                Reason::InvalidX402Version,
                format!("an x402 v{} payment in {}", p.x402_version(), credential.header),
            )),
        }
    }

    fn settlement_header(
        &self,
        request: &VersionedPayment,
        answer: &SettleResponse,
        payer: &str,
    ) -> (HeaderName, HeaderValue) {
        let encoded = match request {
            VersionedPayment::V2 { .. } => (PAYMENT_RESPONSE, codec::encode_header(answer)),
            VersionedPayment::V1 { payment_requirements, .. } => {
                let v1_answer = v1::SettlementResponse {
                    success: answer.success,
                    error_reason: answer.error_reason.clone(),
                    transaction: answer.transaction.clone(),
                    network: payment_requirements.network.clone(),
                    payer: answer.payer.clone().unwrap_or_else(|| payer.to_string()),
                };
                (X_PAYMENT_RESPONSE, codec::encode_header(&v1_answer))
            }
        };
        // Base64 is always a valid header value.
        (
            encoded.0,
            HeaderValue::from_str(&encoded.1).unwrap_or_else(|_| HeaderValue::from_static("")),
        )
    }
}

fn invalid(reason: Reason, detail: impl Into<String>) -> PaymentError {
    PaymentError::invalid(reason.as_str(), detail)
}

fn not_offered() -> PaymentError {
    invalid(Reason::InvalidPaymentRequirements, "this route is not offered in that x402 version")
}

fn unavailable(e: FacilitatorError) -> PaymentError {
    PaymentError::unavailable("facilitator_unavailable", e.to_string(), Duration::from_secs(5))
}

#[async_trait]
impl Rail for X402Rail {
    fn name(&self) -> &'static str {
        "x402"
    }

    fn credential_headers(&self) -> &'static [HeaderName] {
        static HEADERS: [HeaderName; 2] = [PAYMENT_SIGNATURE, X_PAYMENT];
        &HEADERS
    }

    /// The 402's `error` says why this rail refused the request's payment, if it did.
    async fn challenge(
        &self,
        resource: &Resource,
        refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError> {
        let Some(v2_requirement) = self.requirement_v2(resource) else { return Ok(None) };
        let why = Refusal::of(refusal, self.name()).map(|e| e.code);
        let error = |version: u8, missing: &'static str| match why {
            Some(code) => Reason::from_code(code).map_or(code, |r| r.as_str_for(version)),
            None => missing,
        };
        let required = v2::PaymentRequired {
            x402_version: crate::Version,
            error: Some(error(2, "PAYMENT-SIGNATURE header is required").into()),
            resource: v2::ResourceInfo {
                url: self.url(resource),
                description: Some(Self::description(resource)),
                mime_type: None,
                other: Map::new(),
            },
            accepts: vec![v2_requirement],
            extensions: crate::bazaar::extensions(resource),
        };
        let header = HeaderValue::from_str(&codec::encode_header(&required))
            .map_err(|e| PaymentError::internal("x402_header", e.to_string()))?;
        let mut challenge =
            Challenge { headers: vec![(PAYMENT_REQUIRED, header)], ..Default::default() };
        if let Some(v1_requirement) = self.requirement_v1(resource) {
            let accepts = serde_json::to_value(vec![v1_requirement])
                .map_err(|e| PaymentError::internal("x402_body", e.to_string()))?;
            challenge.body_members = vec![
                ("x402Version".into(), Value::from(1)),
                ("error".into(), Value::from(error(1, "X-PAYMENT header is required"))),
                ("accepts".into(), accepts),
            ];
        }
        Ok(Some(challenge))
    }

    async fn verify(
        self: Arc<Self>,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        let request = self.payment_request(resource, credential)?;
        // Off-chain checks first: cheap, and a bad payment never costs a facilitator round trip.
        let checked = exact_evm::check_request(&request, unix_now()?)
            .map_err(|r| invalid(r.reason, r.reason.message()))?;
        // A nonce this rail has already seen is refused from the store: a replay costs no
        // facilitator round trip, and is refused even while the facilitator is down. (The
        // reservation after verification below stays the atomic guard against a concurrent
        // duplicate.)
        let key = replay_key(&checked);
        if self.store.get(NAMESPACE, &key).await?.is_some() {
            return Err(self.already_used(&key).await);
        }
        // Read before the facilitator simulates (which reads the payer's balance): see `Hold`.
        let mark = self.store.settled_mark().await?;
        let answer = self.facilitator.verify(&request).await.map_err(unavailable)?;
        if !answer.is_valid {
            let reason = answer.reason().unwrap_or(Reason::UnexpectedVerifyError);
            if reason == Reason::NonceAlreadyUsed {
                // A node that simulates against its pending state sees the nonce of a transfer
                // still in the mempool as used: if that transfer is our own pending settlement,
                // say so, as when the replay store is what refuses it.
                if let Ok(Some(record)) = self.store.get(NAMESPACE, &key).await
                    && record.state == ProofState::Pending
                {
                    return Err(self.already_used(&key).await);
                }
            }
            let detail =
                answer.invalid_message.clone().unwrap_or_else(|| reason.message().to_string());
            return Err(invalid(reason, detail));
        }
        let auth = &checked.payload.authorization;
        let amount = checked.requirement.amount.to::<u128>();
        let account =
            payer_account(checked.requirement.chain_id, checked.requirement.asset, auth.from);
        let hold = Hold {
            account: &account,
            amount,
            balance: None,
            mark,
            until: Hold::until(auth.valid_before, unix_now()?),
        };
        let reserved =
            reserve_funded(&*self.store, NAMESPACE, &key, auth.valid_before, hold, || {
                self.balance(&checked)
            })
            .await?;
        match reserved {
            HoldOutcome::Reserved => {}
            HoldOutcome::Duplicate => return Err(self.already_used(&key).await),
            HoldOutcome::Insufficient { held } => {
                return Err(invalid(
                    Reason::InsufficientFunds,
                    format!(
                        "the payer's other payments in flight hold {held} base units of its \
                         balance; pay again once they have settled"
                    ),
                ));
            }
        }
        let payer = format!("{:#x}", auth.from);
        Ok(Verdict::Payment(Verified::new(
            Money::new(self.asset.clone(), amount),
            Some(payer.clone()),
            format!("{:#x}", checked.payload.authorization.nonce),
            Settling { rail: self, accepted: Accepted { request, key, payer } },
        )))
    }

    async fn maintain(&self) -> Result<(), PaymentError> {
        let done = self.reconcile().await.map_err(unavailable)?;
        if done.settled + done.failed > 0 {
            tracing::info!(
                settled = done.settled,
                failed = done.failed,
                "x402 pending settlements reconciled"
            );
        }
        Ok(())
    }
}

/// An x402 payment verified by [`X402Rail`]: its nonce reserved, its authorization to be sent
/// through the facilitator.
struct Settling {
    rail: Arc<X402Rail>,
    accepted: Accepted,
}

#[async_trait]
impl Settlement for Settling {
    async fn settle(
        self: Box<Self>,
        _resource: &Resource,
        amount: Money,
        _reference: String,
    ) -> Result<Receipt, PaymentError> {
        let Settling { rail, accepted } = *self;
        let answer = match rail.facilitator.settle(&accepted.request).await {
            Ok(answer) => answer,
            Err(FacilitatorError::Unavailable(why)) => {
                // Never sent: the client keeps its authorization for a retry.
                rail.store.release(NAMESPACE, &accepted.key).await?;
                return Err(unavailable(FacilitatorError::Unavailable(why)));
            }
            Err(e) => {
                // The transfer may have been sent: the nonce stays spent, the outcome pending,
                // and the client is told whatever transaction hash is known.
                let transaction = match &e {
                    FacilitatorError::OutcomeUnknown { transaction, .. } => transaction.clone(),
                    _ => None,
                };
                rail.record(&accepted.key, ProofState::Pending, transaction.as_deref()).await;
                let mut pending = SettleResponse::failure(
                    Reason::SettlementPending,
                    accepted.request.network().to_string(),
                    Some(accepted.payer.clone()),
                );
                pending.transaction = transaction.clone().unwrap_or_default();
                let header = rail.settlement_header(&accepted.request, &pending, &accepted.payer);
                let tx = transaction.map(|t| format!(" (transaction {t})")).unwrap_or_default();
                return Err(PaymentError::unavailable(
                    "settlement_outcome_unknown",
                    format!(
                        "{e}{tx}; the payment is recorded as pending and will not be taken twice"
                    ),
                    Duration::from_secs(5),
                )
                .with_header(header.0, header.1));
            }
        };
        let header = rail.settlement_header(&accepted.request, &answer, &accepted.payer);
        let tx = (!answer.transaction.is_empty()).then_some(answer.transaction.as_str());
        if answer.success {
            // Paid: the content is delivered even if the record cannot be updated (it stays
            // reserved, which still refuses the authorization a second time).
            rail.record(&accepted.key, ProofState::Settled, tx).await;
            return Ok(Receipt::new(amount, answer.transaction.clone(), vec![header]));
        }
        let reason = answer.reason().unwrap_or(Reason::UnexpectedSettleError);
        let detail = answer.error_message.clone().unwrap_or_else(|| reason.message().to_string());
        if reason == Reason::SettlementPending {
            let detail = format!("settlement sent as {} but not yet confirmed", answer.transaction);
            rail.record(&accepted.key, ProofState::Pending, tx).await;
            return Err(invalid(reason, detail).with_header(header.0, header.1));
        }
        match tx {
            // A transaction that failed: this authorization's settlement is over.
            Some(_) => rail.record(&accepted.key, ProofState::Failed, tx).await,
            // Refused before anything was broadcast (e.g. at gas estimation, the payer's funds
            // gone since verification): the payer's authorization stays usable, so the nonce is
            // released rather than spent.
            None => {
                if let Err(e) = rail.store.release(NAMESPACE, &accepted.key).await {
                    let key = &accepted.key;
                    tracing::warn!(key, error = %e, "could not release an x402 reservation");
                }
            }
        }
        Err(invalid(reason, detail).with_header(header.0, header.1))
    }

    async fn release(self: Box<Self>, _resource: &Resource) {
        if let Err(e) = self.rail.store.release(NAMESPACE, &self.accepted.key).await {
            tracing::warn!(error = %e, "could not release an x402 reservation");
        }
    }
}

impl X402Rail {
    /// The payer's token balance, read through the rail's node (`None`: no node of this network).
    async fn balance(&self, checked: &CheckedPayment) -> Result<Option<u128>, PaymentError> {
        let Some(node) =
            self.node.as_ref().filter(|n| n.chain_id() == checked.requirement.chain_id)
        else {
            return Ok(None);
        };
        let auth = &checked.payload.authorization;
        let balance = node.balance_of(checked.requirement.asset, auth.from).await.map_err(|e| {
            PaymentError::unavailable(
                "evm_unavailable",
                format!("cannot read the payer's balance: {e}"),
                Duration::from_secs(5),
            )
        })?;
        Ok(Some(u128::try_from(balance).unwrap_or(u128::MAX)))
    }

    /// Records where a settlement stands. The facilitator's answer is what the client must be
    /// told, so a store failure here is logged rather than turned into a 503 that would hide it.
    async fn record(&self, key: &str, state: ProofState, tx: Option<&str>) {
        if let Err(e) = self.store.update(NAMESPACE, key, state, tx).await {
            let (state, tx) = (state.as_str(), tx.unwrap_or(""));
            tracing::error!(key, state, tx, error = %e, "could not record an x402 settlement");
        }
    }

    /// Why a nonce cannot be used again, with the transaction hash when its settlement is known.
    async fn already_used(&self, key: &str) -> PaymentError {
        let record = self.store.get(NAMESPACE, key).await.ok().flatten();
        let mut e = PaymentError::new(
            ErrorKind::Replayed,
            Reason::NonceAlreadyUsed.as_str(),
            "this authorization was already presented; sign a new one",
        );
        if let Some(record) = record
            && record.state == ProofState::Pending
        {
            e.code = Reason::SettlementPending.as_str();
            e.detail = format!(
                "this authorization's settlement{} is not confirmed yet; it will not be taken twice",
                record.reference.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
            );
        }
        e
    }
}
