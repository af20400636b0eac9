//! An NWC wallet service in front of any [`LightningBackend`]: how the embedded dev node is
//! reached "exactly as an agent reaches Alby Hub", and how any backend farebox drives could be.
//!
//! The service connects to its relays, issues connections ([`WalletService::create_connection`]:
//! a fresh wallet key per connection, a client secret it hands out in the URI and does not keep),
//! publishes an info event per connection, and answers requests addressed to those keys.
//!
//! Per connection it enforces, as Alby Hub does:
//!
//! * the methods it may call (`RESTRICTED` otherwise);
//! * a budget: at most `max_amount_msat` of payments plus fees per renewal period (UTC day,
//!   Monday-based week, calendar month or year, or never renewed). A payment reserves its amount
//!   plus the fee reserve while in flight; over the budget is `QUOTA_EXCEEDED`;
//! * the key: a request from any key but the connection's client key, or to a revoked
//!   connection, is `UNAUTHORIZED`.
//!
//! And for every request: one answer per request id (a request arrives once per relay), no
//! answer after its `expiration` or when it is older than [`ServiceOptions::max_request_age`]
//! (replays), the request's own encryption for the answer, `UNSUPPORTED_ENCRYPTION` for a scheme
//! the service does not offer.
//!
//! Payments are idempotent by payment hash across all connections: an invoice already paid, or
//! being paid, is refused with `PAYMENT_FAILED` before the backend is asked. A backend whose
//! payment outcome is unknown leaves the payment pending (so it can be neither paid again nor
//! released from the budget) and answers `INTERNAL`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use nostr::{Event, EventId, Filter, Keys, Kind, PublicKey, RelayUrl, SubscriptionId, Tag};
use nostr_relay_pool::{
    Relay, RelayNotification, RelayOptions, RelayPool, RelayPoolNotification, RelayStatus,
    SubscribeOptions,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::uri::ConnectionUri;
use super::wire::{
    self, Direction, Encryption, ErrorCode, GetBalanceResult, GetInfoResult, KIND_REQUEST,
    KIND_RESPONSE, LookupInvoiceParams, MakeInvoiceParams, Method, PayInvoiceParams,
    PayInvoiceResult, RequestPayload, Transaction, TxState, WalletInfo,
};
use crate::backend::{InvoiceRequest, InvoiceState, LightningBackend, LightningError, PaymentHash};
use crate::bolt11::{Currency, DEFAULT_EXPIRY, MAX_DESCRIPTION_LEN, parse_bolt11, parse_invoice};

const SUBSCRIPTION: &str = "farebox-nwc-service";
/// Request ids remembered for answering each request once.
const MAX_SEEN_REQUESTS: usize = 100_000;
/// How long [`WalletService::start`] waits for a first relay.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a wallet service behaves.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Encryption schemes offered, in the info event's order. Only NIP-04 makes a legacy
    /// wallet (an info event without `encryption` tag).
    pub encryptions: Vec<Encryption>,
    /// Whether to push `payment_received` / `payment_sent` notifications.
    pub notifications: bool,
    /// Name in `get_info`.
    pub alias: String,
    /// Lightning address put in issued URIs.
    pub lud16: Option<String>,
    /// Fee reserve per payment: the larger of this…
    pub fee_reserve_min_msat: u64,
    /// …and this many millionths of the amount (Alby Hub: 10 sat or 1 %).
    pub fee_reserve_ppm: u64,
    /// Requests created longer ago than this (or that far in the future) are ignored: an old
    /// request replayed to a relay is not acted on again.
    pub max_request_age: Duration,
    /// Pause before reconnecting to a relay that dropped the connection.
    pub reconnect_interval: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            encryptions: vec![Encryption::Nip44V2, Encryption::Nip04],
            notifications: true,
            alias: "farebox dev wallet".into(),
            lud16: None,
            fee_reserve_min_msat: 10_000,
            fee_reserve_ppm: 10_000,
            max_request_age: Duration::from_secs(600),
            reconnect_interval: Duration::from_secs(2),
        }
    }
}

/// When a connection's budget starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRenewal {
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Never,
}

/// A spending limit on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most that payments plus their fees may add up to per period, msat.
    pub max_amount_msat: u64,
    pub renewal: BudgetRenewal,
}

/// What a new connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// A label for people.
    pub name: String,
    /// Methods it may call.
    pub methods: BTreeSet<Method>,
    /// Spending limit; `None` is unlimited (the wallet's balance still applies).
    pub budget: Option<Budget>,
}

impl ConnectionSettings {
    /// Every method, no budget.
    pub fn unrestricted(name: impl Into<String>) -> Self {
        Self { name: name.into(), methods: Method::ALL.into_iter().collect(), budget: None }
    }

    /// Every method within `budget`.
    pub fn with_budget(name: impl Into<String>, budget: Budget) -> Self {
        Self { budget: Some(budget), ..Self::unrestricted(name) }
    }
}

/// The dev node (or any backend) as a NIP-47 wallet service. Dropping the last clone
/// disconnects it.
#[derive(Clone)]
pub struct WalletService {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn LightningBackend>,
    relays: Vec<RelayUrl>,
    pool: RelayPool,
    opts: ServiceOptions,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By wallet public key.
    connections: HashMap<PublicKey, Connection>,
    /// Request ids answered (or being answered), with their creation time, oldest first.
    seen: HashMap<EventId, u64>,
    seen_order: VecDeque<(u64, EventId)>,
    /// Payments made, by payment hash, across connections.
    outgoing: HashMap<PaymentHash, Outgoing>,
    handled: HashMap<Method, u64>,
}

struct Connection {
    settings: ConnectionSettings,
    keys: Keys,
    client: PublicKey,
    revoked: bool,
    /// Invoices made through this connection.
    invoices: HashMap<PaymentHash, Incoming>,
}

struct Incoming {
    bolt11: String,
    description: String,
    amount_msat: u64,
    created_at: u64,
    expires_at: u64,
    settled_at: Option<u64>,
}

struct Outgoing {
    /// Wallet key of the connection that paid.
    connection: PublicKey,
    bolt11: String,
    state: TxState,
    amount_msat: u64,
    fee_msat: u64,
    /// Counted against the budget while pending: amount plus fee reserve.
    reserved_msat: u64,
    preimage: Option<[u8; 32]>,
    created_at: u64,
    settled_at: Option<u64>,
}

impl Outgoing {
    /// What this payment counts against its connection's budget.
    fn budget_msat(&self) -> u64 {
        match self.state {
            TxState::Settled => self.amount_msat.saturating_add(self.fee_msat),
            TxState::Failed | TxState::Expired => 0,
            TxState::Pending | TxState::Accepted => self.reserved_msat,
        }
    }

    fn to_transaction(&self, hash: &PaymentHash) -> Transaction {
        Transaction {
            direction: Some(Direction::Outgoing),
            state: Some(self.state),
            invoice: Some(self.bolt11.clone()),
            preimage: self.preimage.map(hex::encode),
            payment_hash: hex::encode(hash),
            amount: self.amount_msat,
            fees_paid: Some(self.fee_msat),
            created_at: Some(self.created_at),
            settled_at: self.settled_at,
            ..Transaction::default()
        }
    }
}

/// An answer to send: a result or a NIP-47 error.
type Reply = Result<Value, (ErrorCode, String)>;

fn refuse(code: ErrorCode, message: impl Into<String>) -> Reply {
    Err((code, message.into()))
}

impl fmt::Debug for WalletService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalletService")
            .field("relays", &self.inner.relays.iter().map(RelayUrl::as_str).collect::<Vec<_>>())
            .field("connections", &self.inner.state().connections.len())
            .finish_non_exhaustive()
    }
}

impl WalletService {
    /// Connects to `relays` and starts answering (no connection exists yet: see
    /// [`Self::create_connection`]).
    pub async fn start(
        backend: Arc<dyn LightningBackend>,
        relays: Vec<RelayUrl>,
        opts: ServiceOptions,
    ) -> Result<Self, LightningError> {
        if relays.is_empty() {
            return Err(LightningError::InvalidRequest("a wallet service needs a relay".into()));
        }
        if opts.encryptions.is_empty() {
            return Err(LightningError::InvalidRequest("offer at least one encryption".into()));
        }
        let inner = Arc::new(Inner {
            backend,
            relays: relays.clone(),
            pool: RelayPool::default(),
            opts,
            state: Mutex::new(State::default()),
        });
        let relay_opts = RelayOptions::default()
            .reconnect(true)
            .retry_interval(inner.opts.reconnect_interval)
            .adjust_retry_interval(false);
        for url in &relays {
            inner
                .pool
                .add_relay(url, relay_opts.clone())
                .await
                .map_err(|e| LightningError::Unavailable(format!("cannot add relay {url}: {e}")))?;
            let relay =
                inner.pool.relay(url).await.map_err(|e| {
                    LightningError::Unavailable(format!("cannot use relay {url}: {e}"))
                })?;
            tokio::spawn(watch_relay(Arc::downgrade(&inner), relay.clone(), relay.notifications()));
        }
        tokio::spawn(serve(Arc::downgrade(&inner), inner.pool.notifications()));
        inner.pool.connect().await;
        // Connections issued from here on subscribe on every connected relay at once; a relay
        // connecting later is caught up by `watch_relay`.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        while !inner.pool.relays().await.values().any(Relay::is_connected) {
            if tokio::time::Instant::now() >= deadline {
                return Err(LightningError::Unavailable(
                    "the wallet service reached none of its relays".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self { inner })
    }

    /// Issues a connection: a fresh wallet key and client secret. The returned URI is the only
    /// copy of the secret; hand it to the client ([`ConnectionUri::expose_secret`]).
    pub async fn create_connection(
        &self,
        settings: ConnectionSettings,
    ) -> Result<ConnectionUri, LightningError> {
        let keys = Keys::generate();
        let client = Keys::generate();
        let uri = ConnectionUri::new(
            keys.public_key(),
            self.inner.relays.clone(),
            client.secret_key().clone(),
            self.inner.opts.lud16.clone(),
        );
        let connection = Connection {
            settings,
            keys,
            client: client.public_key(),
            revoked: false,
            invoices: HashMap::new(),
        };
        let info = self.inner.info_event(&connection)?;
        self.inner.state().connections.insert(uri.wallet_pubkey, connection);
        let filter = self.inner.filter();
        self.inner.pool.save_subscription(SubscriptionId::new(SUBSCRIPTION), filter.clone()).await;
        // REQ then EVENT on each connection: once the info event is acknowledged, the relay
        // has the subscription too, so the client's first request cannot miss it.
        for relay in self.inner.pool.relays().await.into_values() {
            if relay.is_connected() {
                let _ = relay
                    .subscribe_with_id(
                        SubscriptionId::new(SUBSCRIPTION),
                        filter.clone(),
                        SubscribeOptions::default(),
                    )
                    .await;
            }
        }
        let reached = match self.inner.pool.send_event(&info).await {
            Ok(output) => !output.success.is_empty(),
            Err(_) => false,
        };
        if !reached {
            tracing::warn!("NWC info event reached no relay yet; it is sent again on connect");
        }
        Ok(uri)
    }

    /// Revokes the connection of `wallet_pubkey`: its requests are answered `UNAUTHORIZED`.
    pub fn revoke(&self, wallet_pubkey: &PublicKey) -> bool {
        match self.inner.state().connections.get_mut(wallet_pubkey) {
            Some(connection) => {
                connection.revoked = true;
                true
            }
            None => false,
        }
    }

    /// What the connection of `wallet_pubkey` has spent in its current budget period
    /// (amounts plus fees, in-flight payments at their reserve), msat.
    pub fn budget_used(&self, wallet_pubkey: &PublicKey) -> Option<u64> {
        let state = self.inner.state();
        let connection = state.connections.get(wallet_pubkey)?;
        let renewal = connection.settings.budget.map_or(BudgetRenewal::Never, |b| b.renewal);
        let now = farebox_core::time::unix_now().ok()?;
        Some(state.spent_since(wallet_pubkey, period_start(now, renewal)))
    }

    /// How many requests of `method` from authorized connections the service has acted on
    /// (each request once, whatever the answer), across connections.
    pub fn requests_handled(&self, method: Method) -> u64 {
        self.inner.state().handled.get(&method).copied().unwrap_or(0)
    }

    /// Disconnects from every relay.
    pub async fn shutdown(&self) {
        self.inner.pool.shutdown().await;
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while this is held; recovering keeps a poisoned lock from spreading.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Requests to any of the connections' wallet keys.
    fn filter(&self) -> Filter {
        let keys: Vec<PublicKey> = self.state().connections.keys().copied().collect();
        Filter::new().kind(Kind::Custom(KIND_REQUEST)).pubkeys(keys)
    }

    fn wallet_info(&self, connection: &Connection) -> WalletInfo {
        let mut capabilities: Vec<String> =
            connection.settings.methods.iter().map(|m| m.as_str().to_owned()).collect();
        let mut notifications = Vec::new();
        if self.opts.notifications {
            capabilities.push("notifications".into());
            notifications = vec!["payment_received".into(), "payment_sent".into()];
        }
        WalletInfo { capabilities, encryptions: self.opts.encryptions.clone(), notifications }
    }

    fn info_event(&self, connection: &Connection) -> Result<Event, LightningError> {
        self.wallet_info(connection)
            .to_event(&connection.keys)
            .map_err(|e| LightningError::Unavailable(format!("cannot sign the info event: {e}")))
    }

    /// Handles one request event end to end.
    async fn handle(self: Arc<Self>, event: Event) {
        // A clock before 1970 cannot judge expirations or budgets: no request is answered.
        let Ok(now) = farebox_core::time::unix_now() else { return };
        if event.kind != Kind::Custom(KIND_REQUEST) {
            return;
        }
        // NIP-47: a request received after its expiration is ignored.
        if let Some(expiration) = wire::tag_value(&event, "expiration") {
            match expiration.trim().parse::<u64>() {
                Ok(at) if now <= at => {}
                _ => return,
            }
        }
        let age = self.opts.max_request_age.as_secs();
        let created = event.created_at.as_secs();
        if created.saturating_add(age) < now || created > now.saturating_add(age) {
            return;
        }
        let Some((wallet, keys, authorized)) = self.route(&event, now) else { return };

        let (encryption, reply, method_name) = match wire::request_encryption(&event) {
            Some(scheme) if self.opts.encryptions.contains(&scheme) => {
                let Ok(plaintext) =
                    scheme.decrypt(keys.secret_key(), &event.pubkey, &event.content)
                else {
                    return;
                };
                match wire::parse_json::<RequestPayload>(&plaintext) {
                    Ok(request) => {
                        let name = wire::sanitize(&request.method);
                        let reply = match Method::from_name(&request.method) {
                            None => refuse(ErrorCode::NotImplemented, "unknown method"),
                            Some(_) if !authorized => refuse(
                                ErrorCode::Unauthorized,
                                "no wallet is connected to this key",
                            ),
                            Some(method) => {
                                self.state()
                                    .handled
                                    .entry(method)
                                    .and_modify(|n| *n += 1)
                                    .or_insert(1);
                                self.dispatch(&wallet, method, request.params).await
                            }
                        };
                        (scheme, reply, name)
                    }
                    Err(e) => (scheme, refuse(ErrorCode::Other, e.to_string()), String::new()),
                }
            }
            // A scheme the service does not offer: answered in the one it prefers.
            _ => (
                self.opts.encryptions[0],
                refuse(ErrorCode::UnsupportedEncryption, "use an encryption the info event lists"),
                String::new(),
            ),
        };
        let payload = match reply {
            Ok(result) => json!({ "result_type": method_name, "error": null, "result": result }),
            Err((code, message)) => json!({
                "result_type": method_name,
                "error": { "code": code.as_str(), "message": message },
                "result": null,
            }),
        };
        let response = wire::encrypted_event(
            &keys,
            KIND_RESPONSE,
            &event.pubkey,
            encryption,
            &payload.to_string(),
            vec![Tag::event(event.id)],
        );
        match response {
            Ok(response) => {
                if let Err(e) = self.pool.send_event(&response).await {
                    tracing::warn!(error = %e, "NWC response could not be published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "NWC response could not be sealed"),
        }
    }

    /// The connection a request is for, once per request id: its wallet key, keys, and whether
    /// the sender is that connection's live client.
    fn route(&self, event: &Event, now: u64) -> Option<(PublicKey, Keys, bool)> {
        let mut state = self.state();
        let wallet = *event.tags.public_keys().find(|p| state.connections.contains_key(p))?;
        if state.seen.contains_key(&event.id) {
            return None;
        }
        // Forget ids older than the replay window: such requests are refused by age anyway.
        let horizon = now.saturating_sub(self.opts.max_request_age.as_secs());
        while let Some(&(created, id)) = state.seen_order.front() {
            if created >= horizon {
                break;
            }
            state.seen_order.pop_front();
            state.seen.remove(&id);
        }
        // Bounded even under a flood within the window; a forgotten id replayed is still
        // refused by payment idempotency.
        if state.seen_order.len() >= MAX_SEEN_REQUESTS
            && let Some((_, oldest)) = state.seen_order.pop_front()
        {
            state.seen.remove(&oldest);
        }
        let created = event.created_at.as_secs();
        state.seen.insert(event.id, created);
        state.seen_order.push_back((created, event.id));
        let connection = state.connections.get(&wallet)?;
        let authorized = !connection.revoked && connection.client == event.pubkey;
        Some((wallet, connection.keys.clone(), authorized))
    }

    async fn dispatch(
        self: &Arc<Self>,
        wallet: &PublicKey,
        method: Method,
        params: Value,
    ) -> Reply {
        let allowed = self
            .state()
            .connections
            .get(wallet)
            .is_some_and(|c| c.settings.methods.contains(&method));
        if !allowed {
            return refuse(ErrorCode::Restricted, "this connection may not use this method");
        }
        match method {
            Method::PayInvoice => self.pay_invoice(wallet, params).await,
            Method::MakeInvoice => self.make_invoice(wallet, params).await,
            Method::LookupInvoice => self.lookup_invoice(wallet, params).await,
            Method::GetBalance => match self.backend.balance().await {
                Ok(balance) => Ok(json!(GetBalanceResult { balance })),
                Err(e) => refuse(ErrorCode::for_error(&e), e.to_string()),
            },
            Method::GetInfo => Ok(self.get_info(wallet).await),
        }
    }

    async fn pay_invoice(&self, wallet: &PublicKey, params: Value) -> Reply {
        let params: PayInvoiceParams = match wire::parse_result(params) {
            Ok(params) => params,
            Err(e) => return refuse(ErrorCode::Other, e.to_string()),
        };
        let invoice = match parse_invoice(&params.invoice) {
            Ok(invoice) => invoice,
            Err(e) => return refuse(ErrorCode::Other, e.to_string()),
        };
        let amount = match (invoice.amount_msat, params.amount) {
            (Some(asked), Some(given)) if asked != given => {
                return refuse(ErrorCode::Other, "amount differs from the invoice's");
            }
            (Some(asked), _) => asked,
            (None, Some(given)) if given > 0 => given,
            (None, _) => return refuse(ErrorCode::Other, "an amountless invoice needs an amount"),
        };
        let reserve = fee_reserve(&self.opts, amount);
        let needed = amount.saturating_add(reserve);
        match self.backend.balance().await {
            Ok(balance) if balance < needed => {
                return refuse(
                    ErrorCode::InsufficientBalance,
                    format!(
                        "balance {balance} msat is below {needed} msat (amount plus fee reserve)"
                    ),
                );
            }
            _ => {}
        }
        let hash = invoice.payment_hash;
        let Ok(now) = farebox_core::time::unix_now() else {
            return refuse(ErrorCode::Internal, "the wallet's clock reads before 1970");
        };
        {
            let mut state = self.state();
            if let Some(previous) = state.outgoing.get(&hash)
                && previous.state != TxState::Failed
            {
                return refuse(
                    ErrorCode::PaymentFailed,
                    "this invoice is already paid or being paid",
                );
            }
            let Some(budget) = state.connections.get(wallet).map(|c| c.settings.budget) else {
                return refuse(ErrorCode::Unauthorized, "connection removed");
            };
            if let Some(budget) = budget {
                let used = state.spent_since(wallet, period_start(now, budget.renewal));
                if used.saturating_add(needed) > budget.max_amount_msat {
                    return refuse(
                        ErrorCode::QuotaExceeded,
                        format!(
                            "budget {} msat, used {used} msat, this payment needs {needed} msat \
                             with its fee reserve",
                            budget.max_amount_msat
                        ),
                    );
                }
            }
            state.outgoing.insert(
                hash,
                Outgoing {
                    connection: *wallet,
                    bolt11: params.invoice.clone(),
                    state: TxState::Pending,
                    amount_msat: amount,
                    fee_msat: 0,
                    reserved_msat: needed,
                    preimage: None,
                    created_at: now,
                    settled_at: None,
                },
            );
        }
        let result = match invoice.amount_msat {
            Some(_) => self.backend.pay(&params.invoice, reserve).await,
            None => self.backend.pay_amount(&params.invoice, amount, reserve).await,
        };
        let result = result.and_then(|paid| {
            if crate::preimage_matches(&paid.preimage, &hash) {
                Ok(paid)
            } else {
                Err(LightningError::OutcomeUnknown("the backend returned a wrong preimage".into()))
            }
        });
        let mut state = self.state();
        let Some(record) = state.outgoing.get_mut(&hash) else {
            return refuse(ErrorCode::Internal, "payment record lost");
        };
        match result {
            Ok(paid) => {
                record.state = TxState::Settled;
                record.fee_msat = paid.fee_msat;
                record.preimage = Some(paid.preimage);
                record.settled_at = farebox_core::time::unix_now().ok();
                let tx = record.to_transaction(&hash);
                drop(state);
                self.notify(wallet, "payment_sent", &tx);
                Ok(json!(PayInvoiceResult {
                    preimage: hex::encode(paid.preimage),
                    fees_paid: Some(paid.fee_msat),
                }))
            }
            // Money may have left: stay pending, keep the reserve.
            Err(e @ LightningError::OutcomeUnknown(_)) => {
                refuse(ErrorCode::Internal, e.to_string())
            }
            Err(e) => {
                record.state = TxState::Failed;
                let code = match ErrorCode::for_error(&e) {
                    ErrorCode::Other | ErrorCode::NotFound => ErrorCode::PaymentFailed,
                    code => code,
                };
                refuse(code, e.to_string())
            }
        }
    }

    async fn make_invoice(self: &Arc<Self>, wallet: &PublicKey, params: Value) -> Reply {
        let params: MakeInvoiceParams = match wire::parse_result(params) {
            Ok(params) => params,
            Err(e) => return refuse(ErrorCode::Other, e.to_string()),
        };
        if params.description_hash.is_some() {
            return refuse(ErrorCode::Other, "description_hash is not supported");
        }
        let description = params.description.unwrap_or_default();
        if description.len() > MAX_DESCRIPTION_LEN {
            return refuse(ErrorCode::Other, "description is longer than 639 bytes");
        }
        let expiry = params.expiry.map_or(DEFAULT_EXPIRY, Duration::from_secs);
        let request =
            InvoiceRequest { amount_msat: params.amount, memo: description.clone(), expiry };
        let Ok(created_at) = farebox_core::time::unix_now() else {
            return refuse(ErrorCode::Internal, "the wallet's clock reads before 1970");
        };
        let created = match self.backend.create_invoice(request).await {
            Ok(created) => created,
            Err(e) => return refuse(ErrorCode::for_error(&e), e.to_string()),
        };
        let incoming = Incoming {
            bolt11: created.bolt11.clone(),
            description,
            amount_msat: params.amount,
            created_at,
            expires_at: created_at.saturating_add(expiry.as_secs()),
            settled_at: None,
        };
        let tx = incoming.to_transaction(&created.payment_hash, TxState::Pending, None);
        if let Some(connection) = self.state().connections.get_mut(wallet) {
            connection.invoices.insert(created.payment_hash, incoming);
        }
        if self.opts.notifications {
            self.watch_invoice(*wallet, created.payment_hash, expiry);
        }
        Ok(json!(tx))
    }

    async fn lookup_invoice(&self, wallet: &PublicKey, params: Value) -> Reply {
        let params: LookupInvoiceParams = match wire::parse_result(params) {
            Ok(params) => params,
            Err(e) => return refuse(ErrorCode::Other, e.to_string()),
        };
        let hash = match (&params.payment_hash, &params.invoice) {
            (Some(hash), _) => wire::decode_hash(hash),
            (None, Some(invoice)) => parse_bolt11(invoice).ok().map(|i| i.payment_hash),
            (None, None) => None,
        };
        let Some(hash) = hash else {
            return refuse(ErrorCode::Other, "give a payment_hash (hex) or an invoice");
        };
        let incoming = {
            let state = self.state();
            if let Some(outgoing) = state.outgoing.get(&hash).filter(|o| o.connection == *wallet) {
                return Ok(json!(outgoing.to_transaction(&hash)));
            }
            match state.connections.get(wallet).and_then(|c| c.invoices.get(&hash)) {
                Some(incoming) => incoming.to_transaction(&hash, TxState::Pending, None),
                None => return refuse(ErrorCode::NotFound, "no such invoice or payment"),
            }
        };
        Ok(json!(match self.backend.invoice_state(&hash).await {
            Ok(InvoiceState::Settled { preimage, amount_msat }) => {
                match self.settled_incoming(wallet, &hash, preimage, amount_msat) {
                    Some(tx) => tx,
                    None => return refuse(ErrorCode::NotFound, "no such invoice or payment"),
                }
            }
            Ok(InvoiceState::Expired) => Transaction { state: Some(TxState::Expired), ..incoming },
            Ok(InvoiceState::Open) => incoming,
            Ok(InvoiceState::Unknown) => return refuse(ErrorCode::NotFound, "unknown to the node"),
            Err(e) => return refuse(ErrorCode::for_error(&e), e.to_string()),
        }))
    }

    async fn get_info(&self, wallet: &PublicKey) -> Value {
        let node = self.backend.info().await.unwrap_or_default();
        let methods = self
            .state()
            .connections
            .get(wallet)
            .map(|c| c.settings.methods.iter().map(|m| m.as_str().to_owned()).collect())
            .unwrap_or_default();
        let notifications = if self.opts.notifications {
            vec!["payment_received".into(), "payment_sent".into()]
        } else {
            Vec::new()
        };
        json!(GetInfoResult {
            alias: Some(self.opts.alias.clone()),
            color: None,
            pubkey: node.pubkey.map(|p| p.to_string()),
            network: node.network.map(|n| network_name(&n).to_owned()),
            block_height: node.block_height,
            block_hash: None,
            methods,
            notifications,
        })
    }

    /// Waits for an invoice of `wallet`'s connection to settle and notifies it.
    fn watch_invoice(self: &Arc<Self>, wallet: PublicKey, hash: PaymentHash, expiry: Duration) {
        let backend = self.backend.clone();
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let wait = expiry.saturating_add(Duration::from_secs(1));
            let Ok(InvoiceState::Settled { preimage, amount_msat }) =
                backend.wait_for_settlement(&hash, wait).await
            else {
                return;
            };
            let Some(this) = this.upgrade() else { return };
            if let Some(tx) = this.settled_incoming(&wallet, &hash, preimage, amount_msat) {
                this.notify(&wallet, "payment_received", &tx);
            }
        });
    }

    /// Records that invoice `hash` of `wallet`'s connection is settled (the first sighting fixes
    /// its settlement time) and returns it as a transaction.
    fn settled_incoming(
        &self,
        wallet: &PublicKey,
        hash: &PaymentHash,
        preimage: [u8; 32],
        amount_msat: u64,
    ) -> Option<Transaction> {
        let mut state = self.state();
        let incoming = state.connections.get_mut(wallet)?.invoices.get_mut(hash)?;
        if incoming.settled_at.is_none() {
            incoming.settled_at = farebox_core::time::unix_now().ok();
        }
        Some(Transaction {
            amount: amount_msat,
            ..incoming.to_transaction(hash, TxState::Settled, Some(preimage))
        })
    }

    /// Publishes a notification to `wallet`'s connection, in every scheme offered.
    fn notify(&self, wallet: &PublicKey, kind: &str, tx: &Transaction) {
        let (keys, client) = {
            let state = self.state();
            let Some(connection) = state.connections.get(wallet) else { return };
            if connection.revoked {
                return;
            }
            (connection.keys.clone(), connection.client)
        };
        let payload = json!({ "notification_type": kind, "notification": tx }).to_string();
        let events: Vec<Event> = self
            .opts
            .encryptions
            .iter()
            .filter_map(|scheme| {
                wire::encrypted_event(
                    &keys,
                    scheme.notification_kind(),
                    &client,
                    *scheme,
                    &payload,
                    vec![],
                )
                .ok()
            })
            .collect();
        let pool = self.pool.clone();
        tokio::spawn(async move {
            for event in events {
                let _ = pool.send_event(&event).await;
            }
        });
    }
}

impl Incoming {
    fn to_transaction(
        &self,
        hash: &PaymentHash,
        state: TxState,
        preimage: Option<[u8; 32]>,
    ) -> Transaction {
        Transaction {
            direction: Some(Direction::Incoming),
            state: Some(state),
            invoice: Some(self.bolt11.clone()),
            description: Some(self.description.clone()),
            preimage: preimage.map(hex::encode),
            payment_hash: hex::encode(hash),
            amount: self.amount_msat,
            created_at: Some(self.created_at),
            expires_at: Some(self.expires_at),
            settled_at: self.settled_at,
            ..Transaction::default()
        }
    }
}

impl State {
    /// What `wallet`'s connection has spent on payments created at or after `since`.
    fn spent_since(&self, wallet: &PublicKey, since: u64) -> u64 {
        self.outgoing
            .values()
            .filter(|o| o.connection == *wallet && o.created_at >= since)
            .fold(0u64, |sum, o| sum.saturating_add(o.budget_msat()))
    }
}

/// The most a payment of `amount_msat` may cost in fees: what it reserves from the budget and
/// the fee limit passed to the backend.
fn fee_reserve(opts: &ServiceOptions, amount_msat: u64) -> u64 {
    let proportional = u128::from(amount_msat) * u128::from(opts.fee_reserve_ppm) / 1_000_000;
    u64::try_from(proportional).unwrap_or(u64::MAX).max(opts.fee_reserve_min_msat)
}

fn network_name(currency: &Currency) -> &'static str {
    match currency {
        Currency::Bitcoin => "mainnet",
        Currency::BitcoinTestnet => "testnet",
        Currency::Signet => "signet",
        Currency::Regtest | Currency::Simnet => "regtest",
    }
}

const DAY: u64 = 86_400;

/// Unix second at which the budget period containing `now` began (UTC; weeks start on
/// Monday; `Never` is the epoch, so everything counts).
pub fn period_start(now: u64, renewal: BudgetRenewal) -> u64 {
    let days = now / DAY;
    match renewal {
        BudgetRenewal::Daily => days * DAY,
        // 1970-01-01 was a Thursday: three days after a Monday.
        BudgetRenewal::Weekly => (days - (days + 3) % 7) * DAY,
        BudgetRenewal::Monthly => {
            let (year, month, _) = civil_from_days(days);
            days_from_civil(year, month, 1) * DAY
        }
        BudgetRenewal::Yearly => {
            let (year, _, _) = civil_from_days(days);
            days_from_civil(year, 1, 1) * DAY
        }
        BudgetRenewal::Never => 0,
    }
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (H. Hinnant's algorithm,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Day count since 1970-01-01 of a date on or after the epoch.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// Hands request events to [`Inner::handle`], each in its own task (a slow payment must not
/// hold up other connections), until the pool shuts down or the service is dropped.
async fn serve(inner: Weak<Inner>, mut events: broadcast::Receiver<RelayPoolNotification>) {
    loop {
        match events.recv().await {
            Ok(RelayPoolNotification::Event { event, .. }) => match inner.upgrade() {
                Some(inner) => {
                    tokio::spawn(inner.handle(*event));
                }
                None => return,
            },
            Ok(RelayPoolNotification::Shutdown) | Err(broadcast::error::RecvError::Closed) => {
                return;
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
        }
    }
}

/// On every (re)connection of `relay`: subscribe with the current filter (connections may have
/// been added while it was down) and publish every info event again (a restarted relay has
/// lost them).
async fn watch_relay(
    inner: Weak<Inner>,
    relay: Relay,
    mut notifications: broadcast::Receiver<RelayNotification>,
) {
    loop {
        match notifications.recv().await {
            Ok(RelayNotification::RelayStatus { status: RelayStatus::Connected }) => {
                let Some(inner) = inner.upgrade() else { return };
                let (filter, infos) = {
                    let infos: Vec<Event> = {
                        let state = inner.state();
                        state
                            .connections
                            .values()
                            .filter_map(|c| inner.info_event(c).ok())
                            .collect()
                    };
                    (inner.filter(), infos)
                };
                if infos.is_empty() {
                    continue;
                }
                let _ = relay
                    .subscribe_with_id(
                        SubscriptionId::new(SUBSCRIPTION),
                        filter,
                        SubscribeOptions::default(),
                    )
                    .await;
                for info in infos {
                    let _ = relay.send_event(&info).await;
                }
            }
            Ok(RelayNotification::Shutdown) | Err(broadcast::error::RecvError::Closed) => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_periods_start_at_utc_calendar_boundaries() {
        // 2026-03-18 (a Wednesday) 15:04:05 UTC.
        let now = 1_773_846_245;
        assert_eq!(period_start(now, BudgetRenewal::Daily), 1_773_792_000); // 03-18 00:00
        assert_eq!(period_start(now, BudgetRenewal::Weekly), 1_773_619_200); // Mon 03-16
        assert_eq!(period_start(now, BudgetRenewal::Monthly), 1_772_323_200); // 03-01
        assert_eq!(period_start(now, BudgetRenewal::Yearly), 1_767_225_600); // 01-01
        assert_eq!(period_start(now, BudgetRenewal::Never), 0);
        // A Monday starts its own week; a leap day is in February.
        assert_eq!(period_start(1_773_619_200 + 5, BudgetRenewal::Weekly), 1_773_619_200);
        assert_eq!(period_start(951_782_400 + 7, BudgetRenewal::Monthly), 949_363_200); // 2000-02-29
    }

    #[test]
    fn the_fee_reserve_is_ten_sat_or_one_percent() {
        let opts = ServiceOptions::default();
        let reserve = |amount| fee_reserve(&opts, amount);
        assert_eq!(reserve(21_000), 10_000);
        assert_eq!(reserve(5_000_000), 50_000);
        assert_eq!(reserve(u64::MAX), u64::MAX / 100);
    }
}
