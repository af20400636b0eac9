//! The embedded dev node: real invoices and preimages over a simulated, in-process network.
//!
//! A [`DevNode`] has its own secp256k1 key, signs real regtest BOLT11 invoices with it and
//! keeps a random 32-byte preimage per invoice (payment hash = sha256(preimage)). Paying goes
//! through [`parse_invoice`], so the payer checks the signature exactly as it would for a real
//! node's invoice. Only the network is fake: a [`DevNetwork`] knows every node by public key,
//! holds their balances, and "routes" a payment by moving millisatoshi from payer to payee under
//! one lock and handing back the payee's preimage.
//!
//! Everything lives behind a single `Mutex` in the [`DevNetwork`]: a payment is one critical
//! section (check invoice, check balance, move funds, settle), so two concurrent payments of the
//! same invoice settle it exactly once. The lock is never held across an `.await` nor during
//! signature work.
//!
//! Amountless ("any amount") invoices are supported both ways:
//! [`LightningBackend::create_amountless_invoice`] signs one, [`LightningBackend::pay_amount`]
//! pays one the amount the payer chooses, and the payee records what it received.
//! [`LightningBackend::wait_for_settlement`] is woken by the network itself (a settlement, a
//! clock change, an outage toggled), not by polling.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::backend::{
    CreatedInvoice, InvoiceRequest, InvoiceState, LightningBackend, LightningError, NodeInfo,
    PaymentHash, PaymentOutcome, Preimage, check_pay_amount,
};
use crate::bolt11::{
    Currency, InvoiceParams, MAX_DESCRIPTION_LEN, ParsedInvoice, parse_invoice, sign_invoice_with,
};
use crate::sha256;

/// CLTV delta written into dev invoices (LND's default for regtest invoices).
const DEV_MIN_FINAL_CLTV_EXPIRY_DELTA: u64 = 40;

/// How often [`LightningBackend::wait_for_settlement`] re-reads an open invoice even without a
/// signal: on the system clock an invoice expires without any event to wake a waiter.
const WAIT_RECHECK: Duration = Duration::from_millis(250);

/// The in-process "Lightning network": every [`DevNode`] created on it, their balances and
/// invoices, a clock, and a routing fee. Clones share the same network.
#[derive(Clone, Default)]
pub struct DevNetwork {
    state: Arc<Mutex<NetworkState>>,
    /// Signalled whenever an invoice may have changed state (a settlement, the clock moved, a
    /// node went up or down), waking [`LightningBackend::wait_for_settlement`].
    changed: Arc<Notify>,
}

#[derive(Default)]
struct NetworkState {
    nodes: HashMap<PublicKey, NodeState>,
    /// `None`: follow the system clock. `Some`: frozen at that instant (tests of expiry).
    frozen_time: Option<SystemTime>,
    fee_base_msat: u64,
    fee_proportional_millionths: u64,
}

struct NodeState {
    balance_msat: u64,
    available: bool,
    invoices: HashMap<PaymentHash, InvoiceRecord>,
    sent: Vec<PaymentOutcome>,
}

struct InvoiceRecord {
    bolt11: String,
    memo: String,
    /// `None` for an amountless invoice: any amount is accepted.
    amount_msat: Option<u64>,
    /// What the payer delivered (0 until settled).
    received_msat: u64,
    preimage: Preimage,
    payment_secret: [u8; 32],
    /// Unix seconds after which (strictly) the invoice is expired.
    expires_at: u64,
    settled_at: Option<SystemTime>,
}

impl InvoiceRecord {
    fn is_expired(&self, now: SystemTime) -> bool {
        now.duration_since(UNIX_EPOCH).is_ok_and(|now| now > Duration::from_secs(self.expires_at))
    }
}

/// An invoice a [`DevNode`] received payment for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledInvoice {
    pub payment_hash: PaymentHash,
    pub preimage: Preimage,
    /// What the payer delivered: the invoice amount, or the amount chosen for an amountless one.
    pub amount_msat: u64,
    pub bolt11: String,
    pub memo: String,
    /// Network time of settlement.
    pub settled_at: SystemTime,
}

impl DevNetwork {
    /// An empty network following the system clock, with zero routing fees.
    pub fn new() -> Self {
        Self::default()
    }

    // Poisoning only follows a panic while locked, and no code here panics; recovering the
    // guard keeps even that case from cascading.
    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The network's current time (frozen or system).
    pub fn now(&self) -> SystemTime {
        self.lock().now()
    }

    /// Freezes the network clock at `time`: invoices are stamped with it and expiry is judged
    /// against it, by every node.
    pub fn set_time(&self, time: SystemTime) {
        self.lock().frozen_time = Some(time);
        self.changed.notify_waiters();
    }

    /// Moves the clock forward by `by` (freezing it if it was following the system clock).
    pub fn advance_time(&self, by: Duration) {
        let mut state = self.lock();
        let now = state.now();
        state.frozen_time = Some(now.checked_add(by).unwrap_or(now));
        drop(state);
        self.changed.notify_waiters();
    }

    /// Goes back to the system clock.
    pub fn use_system_time(&self) {
        self.lock().frozen_time = None;
        self.changed.notify_waiters();
    }

    /// Sets the fee the simulated route charges the payer: `base_msat + amount * ppm / 1e6`.
    /// Zero by default. The fee leaves the payer and reaches nobody (intermediate hops are not
    /// modelled); [`LightningBackend::pay`] refuses when it exceeds `max_fee_msat`.
    pub fn set_routing_fee(&self, base_msat: u64, proportional_millionths: u64) {
        let mut state = self.lock();
        state.fee_base_msat = base_msat;
        state.fee_proportional_millionths = proportional_millionths;
    }

    /// Whether a node with this key is on the network.
    pub fn contains(&self, pubkey: &PublicKey) -> bool {
        self.lock().nodes.contains_key(pubkey)
    }

    /// Number of nodes on the network.
    pub fn node_count(&self) -> usize {
        self.lock().nodes.len()
    }
}

impl fmt::Debug for DevNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("DevNetwork")
            .field("nodes", &state.nodes.len())
            .field("frozen_time", &state.frozen_time)
            .finish()
    }
}

impl NetworkState {
    fn now(&self) -> SystemTime {
        self.frozen_time.unwrap_or_else(SystemTime::now)
    }

    fn route_fee(&self, amount_msat: u64) -> u64 {
        let proportional =
            u128::from(amount_msat) * u128::from(self.fee_proportional_millionths) / 1_000_000;
        u64::try_from(proportional).unwrap_or(u64::MAX).saturating_add(self.fee_base_msat)
    }
}

/// A dev Lightning node on a [`DevNetwork`]. Cheap to clone (clones are the same node).
#[derive(Clone)]
pub struct DevNode {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    network: DevNetwork,
    secret_key: SecretKey,
    pubkey: PublicKey,
    secp: Secp256k1<All>,
}

impl fmt::Debug for DevNode {
    // Hand-written so the secret key never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevNode").field("pubkey", &self.inner.pubkey.to_string()).finish()
    }
}

impl DevNode {
    /// A node whose key is derived from `seed` (same seed, same key), joining `network` with
    /// `opening_balance_msat` to spend.
    ///
    /// If a node with the same key is already on `network`, this returns another handle to it
    /// and `opening_balance_msat` is ignored (like reconnecting to a running node).
    pub fn new(network: &DevNetwork, seed: [u8; 32], opening_balance_msat: u64) -> Self {
        let secp = Secp256k1::new();
        let secret_key = derive_secret_key(&seed);
        let pubkey = PublicKey::from_secret_key(&secp, &secret_key);
        network.lock().nodes.entry(pubkey).or_insert_with(|| NodeState {
            balance_msat: opening_balance_msat,
            available: true,
            invoices: HashMap::new(),
            sent: Vec::new(),
        });
        DevNode {
            inner: Arc::new(NodeInner { network: network.clone(), secret_key, pubkey, secp }),
        }
    }

    /// A node with a random seed.
    pub fn random(network: &DevNetwork, opening_balance_msat: u64) -> Self {
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        Self::new(network, seed, opening_balance_msat)
    }

    /// The node id: the key that signs this node's invoices.
    pub fn pubkey(&self) -> PublicKey {
        self.inner.pubkey
    }

    /// The network this node is on.
    pub fn network(&self) -> &DevNetwork {
        &self.inner.network
    }

    /// Spendable balance, msat. Works while unavailable (it is an inspection hook, not an RPC).
    pub fn balance_msat(&self) -> u64 {
        self.with_state(|_, node| node.balance_msat).unwrap_or(0)
    }

    /// Simulates an outage (`false`): every [`LightningBackend`] call on this node returns
    /// [`LightningError::Unavailable`], and payments *to* it fail as unroutable.
    pub fn set_available(&self, available: bool) {
        self.with_state(|_, node| node.available = available);
        self.inner.network.changed.notify_waiters();
    }

    /// Whether the node is up (see [`Self::set_available`]).
    pub fn is_available(&self) -> bool {
        self.with_state(|_, node| node.available).unwrap_or(false)
    }

    /// The preimage of one of this node's invoices, paid or not: an inspection hook (like
    /// [`Self::balance_msat`]) for mocking nodes that hand preimages of unpaid invoices to whoever
    /// asks, as LNbits does.
    pub fn leaked_preimage(&self, payment_hash: &PaymentHash) -> Option<Preimage> {
        self.with_state(|_, node| node.invoices.get(payment_hash).map(|rec| rec.preimage)).flatten()
    }

    /// Invoices this node has been paid, oldest first.
    pub fn settled_invoices(&self) -> Vec<SettledInvoice> {
        let mut settled = self
            .with_state(|_, node| {
                node.invoices
                    .iter()
                    .filter_map(|(hash, rec)| {
                        rec.settled_at.map(|settled_at| SettledInvoice {
                            payment_hash: *hash,
                            preimage: rec.preimage,
                            amount_msat: rec.received_msat,
                            bolt11: rec.bolt11.clone(),
                            memo: rec.memo.clone(),
                            settled_at,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        settled.sort_by_key(|s| s.settled_at);
        settled
    }

    /// Payments this node has made, in order.
    pub fn sent_payments(&self) -> Vec<PaymentOutcome> {
        self.with_state(|_, node| node.sent.clone()).unwrap_or_default()
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut NetworkState, &mut NodeState) -> R) -> Option<R> {
        let mut guard = self.inner.network.lock();
        let state = &mut *guard;
        // Take the node out so `f` can see both it and the rest of the network state.
        let mut node = state.nodes.remove(&self.inner.pubkey)?;
        let result = f(state, &mut node);
        state.nodes.insert(self.inner.pubkey, node);
        Some(result)
    }

    fn ensure_available(&self) -> Result<(), LightningError> {
        if self.is_available() { Ok(()) } else { Err(unavailable()) }
    }

    /// Signs and records an invoice; `amount_msat: None` makes it amountless.
    fn create(
        &self,
        amount_msat: Option<u64>,
        memo: String,
        expiry: Duration,
    ) -> Result<CreatedInvoice, LightningError> {
        self.ensure_available()?;
        if amount_msat == Some(0) {
            return Err(LightningError::InvalidRequest("amount must be greater than zero".into()));
        }
        if memo.len() > MAX_DESCRIPTION_LEN {
            return Err(LightningError::InvalidRequest(format!(
                "memo is {} bytes, over the {MAX_DESCRIPTION_LEN}-byte limit",
                memo.len()
            )));
        }
        if expiry.is_zero() {
            return Err(LightningError::InvalidRequest("expiry must be greater than zero".into()));
        }

        let mut rng = rand::thread_rng();
        let mut preimage = [0u8; 32];
        rng.fill_bytes(&mut preimage);
        let mut payment_secret = [0u8; 32];
        rng.fill_bytes(&mut payment_secret);
        let payment_hash = sha256(&preimage);
        let now = self.inner.network.now();

        let params = InvoiceParams {
            currency: Currency::Regtest,
            payment_hash,
            amount_msat,
            description: memo.clone(),
            expiry,
            min_final_cltv_expiry_delta: DEV_MIN_FINAL_CLTV_EXPIRY_DELTA,
            payment_secret,
            timestamp: now,
        };
        // Sign outside the lock: it is the expensive part.
        let bolt11 = sign_invoice_with(&self.inner.secp, &params, &self.inner.secret_key)?;

        let created_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let expiry_secs = expiry.as_secs().saturating_add(u64::from(expiry.subsec_nanos() > 0));
        let record = InvoiceRecord {
            bolt11: bolt11.clone(),
            memo,
            amount_msat,
            received_msat: 0,
            preimage,
            payment_secret,
            expires_at: created_secs.saturating_add(expiry_secs),
            settled_at: None,
        };
        self.with_state(|_, node| {
            if !node.available {
                return Err(unavailable());
            }
            // 2^-256 odds, but a silent overwrite would lose a preimage; refuse instead.
            if node.invoices.contains_key(&payment_hash) {
                return Err(LightningError::Unavailable("payment hash collision, retry".into()));
            }
            node.invoices.insert(payment_hash, record);
            Ok(())
        })
        .unwrap_or_else(|| Err(unavailable()))?;

        Ok(CreatedInvoice { bolt11, payment_hash })
    }

    /// Parses `bolt11` and checks it is for the dev network's chain (signature recovery happens
    /// here, outside the lock).
    fn parse_regtest(bolt11: &str) -> Result<ParsedInvoice, LightningError> {
        let invoice = parse_invoice(bolt11)?;
        Self::ensure_regtest(&invoice)?;
        Ok(invoice)
    }

    fn ensure_regtest(invoice: &ParsedInvoice) -> Result<(), LightningError> {
        if invoice.currency != Currency::Regtest {
            return Err(LightningError::InvalidInvoice(format!(
                "invoice is an ln{} invoice, the dev network is regtest (lnbcrt)",
                invoice.currency
            )));
        }
        Ok(())
    }

    /// Sends `amount_msat` for `invoice` (already parsed and checked against its own amount):
    /// one critical section that checks everything, then moves the funds and settles.
    fn send(
        &self,
        invoice: &ParsedInvoice,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        let payee_key = invoice.payee;
        if payee_key == self.inner.pubkey {
            return Err(LightningError::PaymentFailed("refusing to pay own invoice".into()));
        }

        let mut guard = self.inner.network.lock();
        let state = &mut *guard;
        let now = state.now();
        if invoice.is_expired(now) {
            return Err(LightningError::InvalidInvoice("invoice has expired".into()));
        }
        let fee_msat = state.route_fee(amount_msat);
        if fee_msat > max_fee_msat {
            return Err(LightningError::PaymentFailed(format!(
                "route fee {fee_msat} msat exceeds max_fee_msat {max_fee_msat}"
            )));
        }
        let total = amount_msat
            .checked_add(fee_msat)
            .ok_or_else(|| LightningError::PaymentFailed("amount plus fee overflows".into()))?;

        // Validate everything before mutating anything, so a refusal leaves no trace.
        match state.nodes.get(&self.inner.pubkey) {
            Some(payer) if payer.available => {
                if payer.balance_msat < total {
                    return Err(LightningError::PaymentFailed(format!(
                        "insufficient balance: have {} msat, need {total} msat",
                        payer.balance_msat
                    )));
                }
            }
            _ => return Err(unavailable()),
        }
        let payee = match state.nodes.get(&payee_key) {
            Some(payee) if payee.available => payee,
            Some(_) => return Err(LightningError::PaymentFailed("payee is offline".into())),
            None => {
                return Err(LightningError::PaymentFailed(format!(
                    "no route to payee {payee_key}: not on this dev network"
                )));
            }
        };
        // The checks a real payee makes on the incoming HTLC.
        let record = match payee.invoices.get(&invoice.payment_hash) {
            Some(rec) if rec.payment_secret == invoice.payment_secret => rec,
            _ => {
                return Err(LightningError::PaymentFailed(
                    "payee rejected the payment: unknown payment hash or secret".into(),
                ));
            }
        };
        if record.settled_at.is_some() {
            return Err(LightningError::PaymentFailed("invoice already paid".into()));
        }
        if record.is_expired(now) {
            return Err(LightningError::PaymentFailed(
                "payee rejected the payment: invoice expired".into(),
            ));
        }
        // An amountless record accepts any (non-zero) amount; otherwise at least the amount.
        if record.amount_msat.is_some_and(|asked| amount_msat < asked) {
            return Err(LightningError::PaymentFailed(
                "payee rejected the payment: amount too low".into(),
            ));
        }
        let preimage = record.preimage;
        if payee.balance_msat.checked_add(amount_msat).is_none() {
            return Err(LightningError::PaymentFailed("payee balance would overflow".into()));
        }

        // Commit: all checks passed under this same lock, so none of these can fail.
        let outcome =
            PaymentOutcome { preimage, payment_hash: invoice.payment_hash, amount_msat, fee_msat };
        if let Some(payee) = state.nodes.get_mut(&payee_key) {
            payee.balance_msat = payee.balance_msat.saturating_add(amount_msat);
            if let Some(rec) = payee.invoices.get_mut(&invoice.payment_hash) {
                rec.settled_at = Some(now);
                rec.received_msat = amount_msat;
            }
        }
        if let Some(payer) = state.nodes.get_mut(&self.inner.pubkey) {
            payer.balance_msat = payer.balance_msat.saturating_sub(total);
            payer.sent.push(outcome.clone());
        }
        drop(guard);
        self.inner.network.changed.notify_waiters();
        Ok(outcome)
    }
}

fn unavailable() -> LightningError {
    LightningError::Unavailable("dev node is offline (set_available(false))".into())
}

/// sha256(domain || seed || counter), retried in the (~2^-128) case the hash is not a valid
/// secp256k1 scalar, so any seed — including all zeros — gives a key without panicking.
fn derive_secret_key(seed: &[u8; 32]) -> SecretKey {
    let mut counter: u32 = 0;
    loop {
        let digest = Sha256::new()
            .chain_update(b"farebox dev node key")
            .chain_update(seed)
            .chain_update(counter.to_be_bytes())
            .finalize();
        if let Ok(key) = SecretKey::from_slice(&digest) {
            return key;
        }
        counter = counter.wrapping_add(1);
    }
}

#[async_trait]
impl LightningBackend for DevNode {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        self.create(Some(request.amount_msat), request.memo, request.expiry)
    }

    async fn invoice_state(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<InvoiceState, LightningError> {
        self.with_state(|network, node| {
            if !node.available {
                return Err(unavailable());
            }
            Ok(match node.invoices.get(payment_hash) {
                None => InvoiceState::Unknown,
                Some(rec) if rec.settled_at.is_some() => {
                    InvoiceState::Settled { preimage: rec.preimage, amount_msat: rec.received_msat }
                }
                Some(rec) if rec.is_expired(network.now()) => InvoiceState::Expired,
                Some(_) => InvoiceState::Open,
            })
        })
        .unwrap_or_else(|| Err(unavailable()))
    }

    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError> {
        self.ensure_available()?;
        let invoice = Self::parse_regtest(bolt11)?;
        let Some(amount_msat) = invoice.amount_msat else {
            return Err(LightningError::InvalidInvoice("amountless invoices are refused".into()));
        };
        self.send(&invoice, amount_msat, max_fee_msat)
    }

    async fn wait_for_settlement(
        &self,
        payment_hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceState, LightningError> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            // Registered before the state is read, so a settlement in between still wakes us.
            let mut changed = std::pin::pin!(self.inner.network.changed.notified());
            changed.as_mut().enable();
            let current = self.invoice_state(payment_hash).await?;
            if !matches!(current, InvoiceState::Open) {
                return Ok(current);
            }
            let pause = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Ok(current);
                    }
                    left.min(WAIT_RECHECK)
                }
                None => WAIT_RECHECK,
            };
            // Woken or not, read the state again.
            let _ = tokio::time::timeout(pause, changed).await;
        }
    }

    async fn create_amountless_invoice(
        &self,
        memo: String,
        expiry: Duration,
    ) -> Result<CreatedInvoice, LightningError> {
        self.create(None, memo, expiry)
    }

    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        self.ensure_available()?;
        let invoice = check_pay_amount(bolt11, amount_msat)?;
        Self::ensure_regtest(&invoice)?;
        self.send(&invoice, amount_msat, max_fee_msat)
    }

    async fn balance(&self) -> Result<u64, LightningError> {
        self.ensure_available()?;
        Ok(self.balance_msat())
    }

    async fn info(&self) -> Result<NodeInfo, LightningError> {
        self.ensure_available()?;
        Ok(NodeInfo {
            alias: Some("farebox dev node".into()),
            pubkey: Some(self.pubkey()),
            network: Some(Currency::Regtest),
            block_height: None,
            methods: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_key_and_zero_seed_is_fine() {
        let net = DevNetwork::new();
        let a = DevNode::new(&net, [0u8; 32], 5);
        let b = DevNode::new(&net, [0u8; 32], 99);
        assert_eq!(a.pubkey(), b.pubkey());
        assert_eq!(b.balance_msat(), 5, "second handle keeps the existing node state");
        assert_eq!(net.node_count(), 1);
        assert!(!format!("{a:?}").contains(&hex::encode(a.inner.secret_key.secret_bytes())));
    }

    #[test]
    fn route_fee_saturates() {
        let state = NetworkState {
            fee_base_msat: 10,
            fee_proportional_millionths: 1_000,
            ..NetworkState::default()
        };
        assert_eq!(state.route_fee(1_000_000), 1_010);
        let state = NetworkState {
            fee_base_msat: u64::MAX,
            fee_proportional_millionths: u64::MAX,
            ..NetworkState::default()
        };
        assert_eq!(state.route_fee(u64::MAX), u64::MAX);
    }
}
