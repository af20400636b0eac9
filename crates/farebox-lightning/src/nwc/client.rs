//! The NWC wallet client: a [`LightningBackend`] whose node is a wallet reached over Nostr
//! relays (Alby Hub, the dev node's [`super::WalletService`], any NIP-47 wallet).
//!
//! # One request
//!
//! The client connects to every relay of its [`ConnectionUri`] once, keeps one subscription
//! for the wallet's responses and notifications, and reads the wallet's info event to choose
//! the encryption (NIP-44 v2 when offered, NIP-04 otherwise). A request is signed with the
//! connection's secret, carries an `expiration` tag (now + [`NwcOptions::timeout`]) and, under
//! NIP-44, an `encryption` tag; it is published to every connected relay at once, and the first
//! response that is signed by the wallet key, names the request in its `e` tag, decrypts and
//! answers the right method wins. Anything else on the subscription is ignored.
//!
//! # Never paying twice
//!
//! A `pay_invoice` whose answer does not come is [`LightningError::OutcomeUnknown`]: the wallet
//! may have paid. The client remembers every invoice it sent (by payment hash, bounded), and a
//! later `pay` of the same invoice first asks the wallet with `lookup_invoice`:
//!
//! * settled, with a preimage of the payment hash: that is the outcome; nothing is sent;
//! * failed: it is sent again;
//! * not found: sent again only once the earlier request's expiration (plus
//!   [`NwcOptions::expiration_grace`]) has passed, since a NIP-47 wallet ignores a request
//!   received after its expiration; before that it is still `OutcomeUnknown`;
//! * pending, or no answer: `OutcomeUnknown` again.
//!
//! Pays of one invoice through one client are serialised, so two concurrent calls cannot both
//! send. A payment answered with `INTERNAL` or `OTHER` (which do not say whether money moved;
//! Alby Hub answers `INTERNAL` to a route failure) is looked up at once the same way.
//!
//! NIP-47 has no fee limit: `max_fee_msat` cannot be passed on, and the wallet's own fee policy
//! and budget apply. The fee it reports is returned in [`PaymentOutcome::fee_msat`].
//!
//! # Settlement
//!
//! [`LightningBackend::wait_for_settlement`] listens for `payment_received` notifications when
//! the info event offers them (and still looks the invoice up every few seconds, in case a
//! notification is lost); otherwise it polls `lookup_invoice`. A settlement counts only with a
//! preimage whose sha256 is the payment hash.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nostr::{
    Event, EventId, Filter, Keys, Kind, PublicKey, RelayUrl, SubscriptionId, Tag, TagKind,
};
use nostr_relay_pool::{Relay, RelayOptions, RelayPool, RelayPoolNotification};
use serde_json::Value;
use tokio::sync::{Notify, OnceCell, broadcast, oneshot};

use super::uri::ConnectionUri;
use super::wire::{
    self, ENCRYPTION_TAG, Encryption, ErrorCode, GetBalanceResult, GetInfoResult,
    KIND_NOTIFICATION_NIP04, KIND_NOTIFICATION_NIP44, KIND_REQUEST, KIND_RESPONSE,
    LookupInvoiceParams, MakeInvoiceParams, Method, NotificationPayload, PayInvoiceParams,
    PayInvoiceResult, RequestPayload, ResponsePayload, Transaction, TxState, WalletInfo,
};
use crate::backend::{
    CreatedInvoice, InvoiceRequest, InvoiceState, LightningBackend, LightningError, NodeInfo,
    PaymentHash, PaymentOutcome, Preimage, check_pay_amount, poll_for_settlement,
};
use crate::bolt11::{Currency, MAX_DESCRIPTION_LEN, parse_invoice};

/// Payments remembered for the lookup-before-resend rule.
const MAX_REMEMBERED_PAYMENTS: usize = 4096;
/// `payment_received` notifications remembered for [`LightningBackend::wait_for_settlement`].
const MAX_REMEMBERED_RECEIPTS: usize = 4096;
/// How often a notification-driven wait still looks the invoice up.
const NOTIFIED_RECHECK: Duration = Duration::from_secs(2);
/// The subscription carrying responses and notifications.
const SUBSCRIPTION: &str = "farebox-nwc-client";

/// Timeouts of an [`NwcClient`].
#[derive(Debug, Clone)]
pub struct NwcOptions {
    /// How long a request waits for its answer; also how far ahead its `expiration` is.
    pub timeout: Duration,
    /// How long to wait for a first relay connection, and for the wallet's info event.
    pub connect_timeout: Duration,
    /// Pause before reconnecting to a relay that dropped the connection.
    pub reconnect_interval: Duration,
    /// Margin past a request's expiration before a wallet's "not found" is believed (clock
    /// skew between client and wallet).
    pub expiration_grace: Duration,
}

impl Default for NwcOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            reconnect_interval: Duration::from_secs(5),
            expiration_grace: Duration::from_secs(5),
        }
    }
}

/// A NIP-47 wallet as a [`LightningBackend`]. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct NwcClient {
    inner: Arc<Inner>,
}

struct Inner {
    wallet: PublicKey,
    relays: Vec<RelayUrl>,
    keys: Keys,
    pool: RelayPool,
    opts: NwcOptions,
    started: OnceCell<()>,
    info: tokio::sync::Mutex<Option<WalletInfo>>,
    waiting: Mutex<HashMap<EventId, Waiter>>,
    payments: Mutex<PaymentBook>,
    receipts: Mutex<Receipts>,
    receipt_arrived: Notify,
}

/// A request waiting for its response.
struct Waiter {
    method: Method,
    encryption: Encryption,
    reply: oneshot::Sender<ResponsePayload>,
}

/// Why a request got no usable answer.
enum CallError {
    /// It reached no relay: nothing can act on it.
    NotSent(LightningError),
    /// It may have reached the wallet; no valid answer came before the deadline.
    NoAnswer { expires_at: u64, why: String },
}

impl CallError {
    /// For requests that move no money: either way the backend cannot answer.
    fn into_error(self) -> LightningError {
        match self {
            Self::NotSent(e) => e,
            Self::NoAnswer { why, .. } => LightningError::Unavailable(why),
        }
    }
}

/// A wallet's answer to one request.
enum Answer {
    Result(Value),
    Error(ErrorCode, String),
}

impl fmt::Debug for NwcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NwcClient")
            .field("wallet", &self.inner.wallet.to_hex())
            .field("relays", &self.inner.relays.iter().map(RelayUrl::as_str).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl NwcClient {
    /// A client for `uri` with default timeouts. Nothing connects until the first call.
    pub fn new(uri: &ConnectionUri) -> Self {
        Self::with_options(uri, NwcOptions::default())
    }

    /// A client for `uri` with `opts`.
    pub fn with_options(uri: &ConnectionUri, opts: NwcOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                wallet: uri.wallet_pubkey,
                relays: uri.relays.clone(),
                keys: uri.client_keys(),
                pool: RelayPool::default(),
                opts,
                started: OnceCell::new(),
                info: tokio::sync::Mutex::new(None),
                waiting: Mutex::new(HashMap::new()),
                payments: Mutex::new(PaymentBook::default()),
                receipts: Mutex::new(Receipts::default()),
                receipt_arrived: Notify::new(),
            }),
        }
    }

    /// What the wallet's info event says (read once, then cached).
    pub async fn wallet_info(&self) -> Result<WalletInfo, LightningError> {
        self.inner.start().await?;
        self.inner.wallet_info().await
    }

    /// The encryption this client uses with the wallet.
    pub async fn encryption(&self) -> Result<Encryption, LightningError> {
        self.wallet_info().await?.preferred_encryption().ok_or(LightningError::Unsupported(
            "the wallet offers none of the encryption schemes farebox speaks",
        ))
    }

    /// Disconnects from every relay. Later calls fail as unavailable.
    pub async fn shutdown(&self) {
        self.inner.pool.shutdown().await;
    }

    async fn lookup(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<Option<Transaction>, LightningError> {
        let params =
            LookupInvoiceParams { payment_hash: Some(hex::encode(payment_hash)), invoice: None };
        match self.inner.ask(Method::LookupInvoice, to_value(&params)).await {
            Ok((Answer::Result(result), _)) => {
                let tx: Transaction = wire::parse_result(result).map_err(|e| {
                    LightningError::Unavailable(format!("unreadable lookup_invoice answer: {e}"))
                })?;
                if wire::decode_hash(&tx.payment_hash) != Some(*payment_hash) {
                    return Err(LightningError::Unavailable(
                        "the wallet answered lookup_invoice about another payment hash".into(),
                    ));
                }
                Ok(Some(tx))
            }
            Ok((Answer::Error(ErrorCode::NotFound, _), _)) => Ok(None),
            Ok((Answer::Error(code, message), _)) => {
                Err(code.to_lightning_error(Method::LookupInvoice, &message))
            }
            Err(e) => Err(e.into_error()),
        }
    }

    /// Pays `bolt11` (with `amount_msat` for an amountless invoice), under the rules of the
    /// module docs.
    async fn pay_invoice(
        &self,
        bolt11: &str,
        amount_msat: Option<u64>,
    ) -> Result<PaymentOutcome, LightningError> {
        let invoice = parse_invoice(bolt11)?;
        if invoice.is_expired(SystemTime::now()) {
            return Err(LightningError::InvalidInvoice("invoice has expired".into()));
        }
        let amount = match (invoice.amount_msat, amount_msat) {
            (Some(asked), _) => asked,
            (None, Some(chosen)) => chosen,
            (None, None) => {
                return Err(LightningError::InvalidInvoice(
                    "amountless invoices are refused".into(),
                ));
            }
        };
        let hash = invoice.payment_hash;
        let slot = self.inner.payments().slot(hash);
        let mut state = slot.lock().await;
        match &*state {
            PayState::Paid(outcome) => return Ok(outcome.clone()),
            PayState::Unresolved { expires_at } => {
                match self.resolve(&hash, *expires_at, amount).await {
                    Resolution::Paid(outcome) => {
                        *state = PayState::Paid(outcome.clone());
                        return Ok(outcome);
                    }
                    Resolution::Unknown(why) => return Err(LightningError::OutcomeUnknown(why)),
                    Resolution::NotPaid => {}
                }
            }
            PayState::New | PayState::Failed => {}
        }
        let (next, result) = self.send_payment(bolt11, amount_msat, &hash, amount).await;
        *state = next;
        result
    }

    /// Sends `pay_invoice` once and says what is now known about the payment.
    async fn send_payment(
        &self,
        bolt11: &str,
        amount_msat: Option<u64>,
        hash: &PaymentHash,
        amount: u64,
    ) -> (PayState, Result<PaymentOutcome, LightningError>) {
        let params = PayInvoiceParams { invoice: bolt11.to_owned(), amount: amount_msat };
        let (answer, expires_at) = match self.inner.ask(Method::PayInvoice, to_value(&params)).await
        {
            Ok(answered) => answered,
            Err(CallError::NotSent(e)) => return (PayState::Failed, Err(e)),
            Err(CallError::NoAnswer { expires_at, why }) => {
                return (
                    PayState::Unresolved { expires_at },
                    Err(LightningError::OutcomeUnknown(why)),
                );
            }
        };
        let unresolved = |why: &str| {
            (PayState::Unresolved { expires_at }, Err(LightningError::OutcomeUnknown(why.into())))
        };
        match answer {
            Answer::Result(result) => {
                let paid = wire::parse_result::<PayInvoiceResult>(result).ok().and_then(|r| {
                    let preimage = wire::decode_hash(&r.preimage)?;
                    crate::preimage_matches(&preimage, hash).then_some((preimage, r.fees_paid))
                });
                match paid {
                    Some((preimage, fees)) => {
                        let outcome = outcome(preimage, *hash, amount, fees.unwrap_or(0));
                        (PayState::Paid(outcome.clone()), Ok(outcome))
                    }
                    None => unresolved("the wallet answered pay_invoice without a valid preimage"),
                }
            }
            Answer::Error(code, message) if code.refused_before_acting() => {
                (PayState::Failed, Err(code.to_lightning_error(Method::PayInvoice, &message)))
            }
            // INTERNAL or OTHER: the wallet did not say whether it paid. Ask it.
            Answer::Error(code, message) => match self.lookup(hash).await {
                Ok(Some(tx)) => match settled_preimage(&tx, hash) {
                    Some(preimage) => {
                        let outcome = outcome(preimage, *hash, amount, tx.fees_paid.unwrap_or(0));
                        (PayState::Paid(outcome.clone()), Ok(outcome))
                    }
                    None if tx.state == Some(TxState::Failed) => (
                        PayState::Failed,
                        Err(LightningError::PaymentFailed(format!(
                            "{}: {}",
                            code.as_str(),
                            wire::sanitize(&message)
                        ))),
                    ),
                    None => unresolved("the wallet reported an error and the payment as pending"),
                },
                // The wallet answered, so it is done with the request, and has no payment.
                Ok(None) => (
                    PayState::Failed,
                    Err(LightningError::PaymentFailed(format!(
                        "{}: {}",
                        code.as_str(),
                        wire::sanitize(&message)
                    ))),
                ),
                Err(e) => unresolved(&format!(
                    "the wallet answered {} and the payment cannot be looked up: {e}",
                    code.as_str()
                )),
            },
        }
    }

    /// What the wallet says about a payment whose `pay_invoice` went unanswered.
    async fn resolve(&self, hash: &PaymentHash, expires_at: u64, amount: u64) -> Resolution {
        match self.lookup(hash).await {
            Ok(Some(tx)) => match settled_preimage(&tx, hash) {
                Some(preimage) => Resolution::Paid(outcome(
                    preimage,
                    *hash,
                    if tx.amount > 0 { tx.amount } else { amount },
                    tx.fees_paid.unwrap_or(0),
                )),
                None if matches!(tx.state, Some(TxState::Failed | TxState::Expired)) => {
                    Resolution::NotPaid
                }
                None => Resolution::Unknown("the wallet reports the payment as pending".into()),
            },
            Ok(None) => {
                let safe_after =
                    expires_at.saturating_add(self.inner.opts.expiration_grace.as_secs());
                // A clock before 1970 never concludes "not paid".
                if farebox_core::time::unix_now().is_ok_and(|now| now > safe_after) {
                    Resolution::NotPaid
                } else {
                    Resolution::Unknown(format!(
                        "the wallet has no record of the payment yet; the unanswered request \
                         stays valid until {expires_at} (unix), retry after that"
                    ))
                }
            }
            Err(e) => Resolution::Unknown(format!("cannot look the earlier payment up: {e}")),
        }
    }
}

/// What a lookup says about an earlier unanswered payment.
enum Resolution {
    Paid(PaymentOutcome),
    NotPaid,
    Unknown(String),
}

fn outcome(preimage: Preimage, payment_hash: PaymentHash, amount: u64, fee: u64) -> PaymentOutcome {
    PaymentOutcome { preimage, payment_hash, amount_msat: amount, fee_msat: fee }
}

/// The preimage of a transaction the wallet reports settled, if it proves it. A wallet knows
/// the preimages of its own unpaid invoices, so a preimage alone proves nothing: the state must
/// say settled too (or, with no state, a settlement time).
fn settled_preimage(tx: &Transaction, hash: &PaymentHash) -> Option<Preimage> {
    let settled = match tx.state {
        Some(state) => state == TxState::Settled,
        None => tx.settled_at.is_some(),
    };
    if settled { tx.proven_preimage(hash) } else { None }
}

fn to_value<T: serde::Serialize>(params: &T) -> Value {
    // These parameter structs have only strings and integers: serialising cannot fail.
    serde_json::to_value(params).unwrap_or(Value::Null)
}

impl Inner {
    fn lock<'a, T>(mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
        // Nothing panics while these are held; recovering keeps a poisoned lock from spreading.
        mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn payments(&self) -> MutexGuard<'_, PaymentBook> {
        Self::lock(&self.payments)
    }

    /// Connects once: relays added with the response/notification subscription saved first
    /// (so every relay, and every reconnection, carries it), then the dispatcher started.
    async fn start(self: &Arc<Self>) -> Result<(), LightningError> {
        self.started
            .get_or_try_init(|| async {
                let me = self.keys.public_key();
                let filters = vec![
                    Filter::new().kind(Kind::Custom(KIND_RESPONSE)).author(self.wallet).pubkey(me),
                    Filter::new()
                        .kinds([
                            Kind::Custom(KIND_NOTIFICATION_NIP44),
                            Kind::Custom(KIND_NOTIFICATION_NIP04),
                        ])
                        .author(self.wallet)
                        .pubkey(me),
                ];
                self.pool.save_subscription(SubscriptionId::new(SUBSCRIPTION), filters).await;
                let opts = RelayOptions::default()
                    .reconnect(true)
                    .retry_interval(self.opts.reconnect_interval)
                    .adjust_retry_interval(false);
                for url in &self.relays {
                    self.pool.add_relay(url, opts.clone()).await.map_err(|e| {
                        LightningError::Unavailable(format!("cannot add relay {url}: {e}"))
                    })?;
                }
                tokio::spawn(dispatch(Arc::downgrade(self), self.pool.notifications()));
                self.pool.connect().await;
                Ok(())
            })
            .await
            .copied()
    }

    /// Relays connected now, waiting up to the connect timeout for a first one.
    async fn connected_relays(&self) -> Vec<Relay> {
        let deadline = tokio::time::Instant::now() + self.opts.connect_timeout;
        loop {
            let connected: Vec<Relay> =
                self.pool.relays().await.into_values().filter(Relay::is_connected).collect();
            if !connected.is_empty() || tokio::time::Instant::now() >= deadline {
                return connected;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wallet_info(&self) -> Result<WalletInfo, LightningError> {
        let mut cached = self.info.lock().await;
        if let Some(info) = &*cached {
            return Ok(info.clone());
        }
        let urls: Vec<RelayUrl> =
            self.connected_relays().await.iter().map(|r| r.url().clone()).collect();
        if urls.is_empty() {
            return Err(LightningError::Unavailable("no relay of the wallet is reachable".into()));
        }
        let filter = Filter::new().kind(Kind::Custom(wire::KIND_INFO)).author(self.wallet);
        let events = self
            .pool
            .fetch_events_from(
                urls,
                filter,
                self.opts.connect_timeout,
                nostr_relay_pool::prelude::ReqExitPolicy::ExitOnEOSE,
            )
            .await
            .map_err(|e| {
                LightningError::Unavailable(format!("cannot fetch the info event: {e}"))
            })?;
        let newest = events
            .into_iter()
            .filter(|e| e.pubkey == self.wallet && e.verify().is_ok())
            .max_by_key(|e| e.created_at)
            .ok_or_else(|| {
                LightningError::Unavailable(
                    "the wallet's info event is on none of its relays".into(),
                )
            })?;
        let info = WalletInfo::from_event(&newest)
            .map_err(|e| LightningError::Unavailable(format!("unreadable info event: {e}")))?;
        *cached = Some(info.clone());
        Ok(info)
    }

    /// Sends a request, retrying once with a fresh info event when the wallet says it does not
    /// speak the encryption used (it refused before acting, so resending is safe).
    async fn ask(
        self: &Arc<Self>,
        method: Method,
        params: Value,
    ) -> Result<(Answer, u64), CallError> {
        self.start().await.map_err(CallError::NotSent)?;
        let mut retried = false;
        loop {
            let (response, expires_at) = self.call(method, params.clone()).await?;
            let answer = match response.error {
                Some(error) => {
                    let code = ErrorCode::from_name(&error.code);
                    if code == ErrorCode::UnsupportedEncryption && !retried {
                        retried = true;
                        *self.info.lock().await = None;
                        continue;
                    }
                    Answer::Error(code, error.message)
                }
                None => Answer::Result(response.result.unwrap_or(Value::Null)),
            };
            return Ok((answer, expires_at));
        }
    }

    /// One request and its first valid response.
    async fn call(
        &self,
        method: Method,
        params: Value,
    ) -> Result<(ResponsePayload, u64), CallError> {
        let info = self.wallet_info().await.map_err(CallError::NotSent)?;
        let encryption =
            info.preferred_encryption().ok_or(CallError::NotSent(LightningError::Unsupported(
                "the wallet offers none of the encryption schemes farebox speaks",
            )))?;
        let relays = self.connected_relays().await;
        if relays.is_empty() {
            return Err(CallError::NotSent(LightningError::Unavailable(
                "no relay of the wallet is reachable".into(),
            )));
        }
        let payload = RequestPayload { method: method.as_str().into(), params };
        let plaintext = serde_json::to_string(&payload).map_err(|e| {
            CallError::NotSent(LightningError::InvalidRequest(format!("unencodable request: {e}")))
        })?;
        let expiration = wire::expiration_after(self.opts.timeout);
        let mut tags = vec![Tag::expiration(expiration)];
        if encryption == Encryption::Nip44V2 {
            tags.push(Tag::custom(TagKind::custom(ENCRYPTION_TAG), [encryption.tag_value()]));
        }
        let request = wire::encrypted_event(
            &self.keys,
            KIND_REQUEST,
            &self.wallet,
            encryption,
            &plaintext,
            tags,
        )
        .map_err(|e| {
            CallError::NotSent(LightningError::Unavailable(format!("cannot seal request: {e}")))
        })?;

        let (reply, answer) = oneshot::channel();
        Self::lock(&self.waiting).insert(request.id, Waiter { method, encryption, reply });
        let _forget = ForgetOnDrop { waiting: &self.waiting, id: request.id };

        let expires_at = expiration.as_secs();
        let publish = publish(&relays, &request);
        let deadline = tokio::time::sleep(self.opts.timeout);
        tokio::pin!(publish, deadline, answer);
        let mut published = false;
        loop {
            tokio::select! {
                biased;
                response = &mut answer => {
                    return response.map(|r| (r, expires_at)).map_err(|_| CallError::NoAnswer {
                        expires_at,
                        why: "the client shut down while waiting".into(),
                    });
                }
                refused = &mut publish, if !published => {
                    published = true;
                    if let Some(e) = refused {
                        return Err(CallError::NotSent(e));
                    }
                }
                () = &mut deadline => {
                    return Err(CallError::NoAnswer {
                        expires_at,
                        why: format!(
                            "the wallet did not answer {} within {:?}",
                            method.as_str(),
                            self.opts.timeout
                        ),
                    });
                }
            }
        }
    }

    /// Handles one event from the subscription.
    fn on_event(&self, event: &Event) {
        if event.pubkey != self.wallet {
            return;
        }
        let me = self.keys.public_key();
        if !event.tags.public_keys().any(|p| *p == me) {
            return;
        }
        // Kinds compare by number; `nostr` names some of these, so match on the number.
        match event.kind.as_u16() {
            KIND_RESPONSE => self.on_response(event),
            KIND_NOTIFICATION_NIP44 => self.on_notification(event, Encryption::Nip44V2),
            KIND_NOTIFICATION_NIP04 => self.on_notification(event, Encryption::Nip04),
            _ => {}
        }
    }

    fn on_response(&self, event: &Event) {
        let Some(id) = wire::tag_value(event, "e").and_then(|e| EventId::from_hex(e).ok()) else {
            return;
        };
        let mut waiting = Self::lock(&self.waiting);
        let Some(waiter) = waiting.get(&id) else { return };
        let Ok(plaintext) =
            waiter.encryption.decrypt(self.keys.secret_key(), &self.wallet, &event.content)
        else {
            return;
        };
        let Ok(response) = wire::parse_json::<ResponsePayload>(&plaintext) else { return };
        if response.result_type != waiter.method.as_str() {
            return;
        }
        if let Some(waiter) = waiting.remove(&id) {
            let _ = waiter.reply.send(response);
        }
    }

    fn on_notification(&self, event: &Event, encryption: Encryption) {
        let Ok(plaintext) =
            encryption.decrypt(self.keys.secret_key(), &self.wallet, &event.content)
        else {
            return;
        };
        let Ok(note) = wire::parse_json::<NotificationPayload>(&plaintext) else { return };
        if note.notification_type != "payment_received" {
            return;
        }
        let Ok(tx) = wire::parse_result::<Transaction>(note.notification) else { return };
        let Some(hash) = wire::decode_hash(&tx.payment_hash) else { return };
        // A notification's state is optional; "payment_received" itself says settled.
        let Some(preimage) = tx.proven_preimage(&hash) else { return };
        Self::lock(&self.receipts).insert(hash, preimage, tx.amount);
        self.receipt_arrived.notify_waiters();
    }
}

/// Removes a request's waiter however `call` ends.
struct ForgetOnDrop<'a> {
    waiting: &'a Mutex<HashMap<EventId, Waiter>>,
    id: EventId,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        Inner::lock(self.waiting).remove(&self.id);
    }
}

/// Publishes to every relay at once. `Some(error)` only when every relay explicitly refused
/// the event (so no wallet can have seen it); any other failure (a timeout, a dropped
/// connection after sending) may still have delivered it, and is `None` like a success.
async fn publish(relays: &[Relay], event: &Event) -> Option<LightningError> {
    let results =
        futures_util::future::join_all(relays.iter().map(|relay| relay.send_event(event))).await;
    let mut refusals = Vec::new();
    for result in results {
        match result {
            Err(nostr_relay_pool::relay::Error::RelayMessage(message)) => refusals.push(message),
            _ => return None,
        }
    }
    let joined = wire::sanitize(&refusals.join("; "));
    Some(if refusals.iter().any(|m| m.starts_with("rate-limited")) {
        LightningError::RateLimited(format!("the relays refused the request: {joined}"))
    } else {
        LightningError::Unavailable(format!("the relays refused the request: {joined}"))
    })
}

/// Routes subscription events to [`Inner::on_event`] until the pool shuts down or the client
/// is dropped.
async fn dispatch(inner: Weak<Inner>, mut events: broadcast::Receiver<RelayPoolNotification>) {
    loop {
        match events.recv().await {
            Ok(RelayPoolNotification::Event { event, .. }) => match inner.upgrade() {
                Some(inner) => inner.on_event(&event),
                None => return,
            },
            Ok(RelayPoolNotification::Shutdown) | Err(broadcast::error::RecvError::Closed) => {
                return;
            }
            // A lost response makes its request time out, which is handled like any other.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
        }
    }
}

/// What the client knows about an invoice it has been asked to pay.
enum PayState {
    New,
    /// `pay_invoice` went unanswered; the request was valid until `expires_at` (unix).
    Unresolved {
        expires_at: u64,
    },
    Paid(PaymentOutcome),
    /// Definitely not paid (refused, failed, or never sent).
    Failed,
}

/// Per-invoice states, bounded: the oldest entries nobody is using and that are not
/// unresolved are forgotten first.
#[derive(Default)]
struct PaymentBook {
    slots: HashMap<PaymentHash, Arc<tokio::sync::Mutex<PayState>>>,
    order: VecDeque<PaymentHash>,
}

impl PaymentBook {
    fn slot(&mut self, hash: PaymentHash) -> Arc<tokio::sync::Mutex<PayState>> {
        if let Some(slot) = self.slots.get(&hash) {
            return slot.clone();
        }
        if self.slots.len() >= MAX_REMEMBERED_PAYMENTS {
            let slots = &self.slots;
            let forgettable = self.order.iter().position(|h| {
                slots.get(h).is_some_and(|slot| {
                    Arc::strong_count(slot) == 1
                        && slot.try_lock().is_ok_and(|s| !matches!(*s, PayState::Unresolved { .. }))
                })
            });
            if let Some(index) = forgettable
                && let Some(old) = self.order.remove(index)
            {
                self.slots.remove(&old);
            }
        }
        let slot = Arc::new(tokio::sync::Mutex::new(PayState::New));
        self.slots.insert(hash, slot.clone());
        self.order.push_back(hash);
        slot
    }
}

/// Settlements learnt from `payment_received` notifications, bounded (oldest forgotten).
#[derive(Default)]
struct Receipts {
    settled: HashMap<PaymentHash, (Preimage, u64)>,
    order: VecDeque<PaymentHash>,
}

impl Receipts {
    fn insert(&mut self, hash: PaymentHash, preimage: Preimage, amount_msat: u64) {
        if self.settled.insert(hash, (preimage, amount_msat)).is_none() {
            self.order.push_back(hash);
        }
        while self.order.len() > MAX_REMEMBERED_RECEIPTS {
            if let Some(old) = self.order.pop_front() {
                self.settled.remove(&old);
            }
        }
    }
}

fn network(name: &str) -> Option<Currency> {
    match name {
        "mainnet" | "bitcoin" => Some(Currency::Bitcoin),
        "testnet" | "testnet4" => Some(Currency::BitcoinTestnet),
        "signet" => Some(Currency::Signet),
        "regtest" => Some(Currency::Regtest),
        _ => None,
    }
}

#[async_trait]
impl LightningBackend for NwcClient {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        if request.amount_msat == 0 {
            return Err(LightningError::InvalidRequest("amount must be greater than zero".into()));
        }
        if request.memo.len() > MAX_DESCRIPTION_LEN {
            return Err(LightningError::InvalidRequest(format!(
                "memo is {} bytes, over the {MAX_DESCRIPTION_LEN}-byte limit",
                request.memo.len()
            )));
        }
        if request.expiry.is_zero() {
            return Err(LightningError::InvalidRequest("expiry must be greater than zero".into()));
        }
        let expiry = request.expiry.as_secs() + u64::from(request.expiry.subsec_nanos() > 0);
        let params = MakeInvoiceParams {
            amount: request.amount_msat,
            description: Some(request.memo),
            description_hash: None,
            expiry: Some(expiry),
        };
        let result = match self.inner.ask(Method::MakeInvoice, to_value(&params)).await {
            Ok((Answer::Result(result), _)) => result,
            Ok((Answer::Error(code, message), _)) => {
                return Err(code.to_lightning_error(Method::MakeInvoice, &message));
            }
            Err(e) => return Err(e.into_error()),
        };
        // Fail closed on an answer that is not the invoice asked for.
        let mismatch = |why: &str| LightningError::Unavailable(format!("make_invoice: {why}"));
        let tx: Transaction = wire::parse_result(result).map_err(|e| mismatch(&e.to_string()))?;
        let bolt11 = tx.invoice.ok_or_else(|| mismatch("the answer has no invoice"))?;
        let parsed = parse_invoice(&bolt11).map_err(|e| mismatch(&e.to_string()))?;
        if wire::decode_hash(&tx.payment_hash) != Some(parsed.payment_hash) {
            return Err(mismatch("the payment hash does not match the invoice"));
        }
        if parsed.amount_msat != Some(request.amount_msat) {
            return Err(mismatch("the invoice is not for the amount asked"));
        }
        Ok(CreatedInvoice { bolt11, payment_hash: parsed.payment_hash })
    }

    async fn invoice_state(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<InvoiceState, LightningError> {
        let Some(tx) = self.lookup(payment_hash).await? else {
            return Ok(InvoiceState::Unknown);
        };
        // A payment this wallet made is not an invoice it issued.
        if tx.direction == Some(wire::Direction::Outgoing) {
            return Ok(InvoiceState::Unknown);
        }
        if let Some(preimage) = settled_preimage(&tx, payment_hash) {
            return Ok(InvoiceState::Settled { preimage, amount_msat: tx.amount });
        }
        Ok(match tx.state {
            Some(TxState::Settled) => {
                return Err(LightningError::Unavailable(
                    "the wallet reports the invoice settled without its preimage".into(),
                ));
            }
            Some(TxState::Expired | TxState::Failed) => InvoiceState::Expired,
            _ if tx
                .expires_at
                .is_some_and(|at| farebox_core::time::unix_now().is_ok_and(|now| now > at)) =>
            {
                InvoiceState::Expired
            }
            _ => InvoiceState::Open,
        })
    }

    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError> {
        let _ = max_fee_msat; // NIP-47 has no fee limit (see the module docs).
        self.pay_invoice(bolt11, None).await
    }

    async fn wait_for_settlement(
        &self,
        payment_hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceState, LightningError> {
        if !self.wallet_info().await?.notifies_payments_received() {
            return poll_for_settlement(timeout, || self.invoice_state(payment_hash)).await;
        }
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let mut next_lookup = tokio::time::Instant::now();
        loop {
            // Registered before the receipts are read, so a notification in between still wakes.
            let mut arrived = std::pin::pin!(self.inner.receipt_arrived.notified());
            arrived.as_mut().enable();
            if let Some((preimage, amount_msat)) =
                Inner::lock(&self.inner.receipts).settled.get(payment_hash).copied()
            {
                return Ok(InvoiceState::Settled { preimage, amount_msat });
            }
            let now = tokio::time::Instant::now();
            let mut last = InvoiceState::Open;
            if now >= next_lookup {
                last = self.invoice_state(payment_hash).await?;
                if !matches!(last, InvoiceState::Open) {
                    return Ok(last);
                }
                next_lookup = tokio::time::Instant::now() + NOTIFIED_RECHECK;
            }
            let now = tokio::time::Instant::now();
            let pause = match deadline {
                Some(deadline) if now >= deadline => return Ok(last),
                Some(deadline) => (deadline - now).min(next_lookup.saturating_duration_since(now)),
                None => next_lookup.saturating_duration_since(now),
            };
            let _ = tokio::time::timeout(pause, arrived).await;
        }
    }

    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        let _ = max_fee_msat;
        match check_pay_amount(bolt11, amount_msat)?.amount_msat {
            Some(_) => self.pay_invoice(bolt11, None).await,
            None => self.pay_invoice(bolt11, Some(amount_msat)).await,
        }
    }

    async fn balance(&self) -> Result<u64, LightningError> {
        match self.inner.ask(Method::GetBalance, Value::Object(Default::default())).await {
            Ok((Answer::Result(result), _)) => wire::parse_result::<GetBalanceResult>(result)
                .map(|r| r.balance)
                .map_err(|e| LightningError::Unavailable(format!("get_balance: {e}"))),
            Ok((Answer::Error(code, message), _)) => {
                Err(code.to_lightning_error(Method::GetBalance, &message))
            }
            Err(e) => Err(e.into_error()),
        }
    }

    async fn info(&self) -> Result<NodeInfo, LightningError> {
        let info: GetInfoResult =
            match self.inner.ask(Method::GetInfo, Value::Object(Default::default())).await {
                Ok((Answer::Result(result), _)) => wire::parse_result(result)
                    .map_err(|e| LightningError::Unavailable(format!("get_info: {e}")))?,
                Ok((Answer::Error(code, message), _)) => {
                    return Err(code.to_lightning_error(Method::GetInfo, &message));
                }
                Err(e) => return Err(e.into_error()),
            };
        Ok(NodeInfo {
            alias: info.alias.map(|a| wire::sanitize(&a)),
            pubkey: info.pubkey.and_then(|p| p.parse().ok()),
            network: info.network.as_deref().and_then(network),
            block_height: info.block_height,
            methods: info.methods.iter().take(64).map(|m| wire::sanitize(m)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(state: Option<TxState>, preimage: &Preimage, settled_at: Option<u64>) -> Transaction {
        Transaction {
            state,
            preimage: Some(hex::encode(preimage)),
            payment_hash: hex::encode(crate::sha256(preimage)),
            settled_at,
            ..Transaction::default()
        }
    }

    #[test]
    fn only_a_settled_state_with_the_preimage_of_the_hash_counts_as_paid() {
        let preimage = [7u8; 32];
        let hash = crate::sha256(&preimage);
        // A wallet knows the preimages of its own unpaid invoices.
        assert_eq!(settled_preimage(&tx(Some(TxState::Pending), &preimage, None), &hash), None);
        assert_eq!(settled_preimage(&tx(Some(TxState::Accepted), &preimage, None), &hash), None);
        assert_eq!(
            settled_preimage(&tx(Some(TxState::Settled), &preimage, Some(1)), &hash),
            Some(preimage)
        );
        // No state: a settlement time says settled.
        assert_eq!(settled_preimage(&tx(None, &preimage, Some(1)), &hash), Some(preimage));
        assert_eq!(settled_preimage(&tx(None, &preimage, None), &hash), None);
        // Settled, but with a preimage of something else.
        let other = tx(Some(TxState::Settled), &[8u8; 32], Some(1));
        assert_eq!(settled_preimage(&other, &hash), None);
    }

    #[test]
    fn the_payment_book_forgets_settled_entries_but_never_unresolved_ones() {
        let mut book = PaymentBook::default();
        let first = book.slot([0u8; 32]);
        *first.try_lock().unwrap() = PayState::Unresolved { expires_at: 1 };
        drop(first);
        for i in 1..=MAX_REMEMBERED_PAYMENTS {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(i as u64).to_be_bytes());
            book.slot(hash);
        }
        assert!(book.slots.len() <= MAX_REMEMBERED_PAYMENTS);
        assert!(book.slots.contains_key(&[0u8; 32]), "the unresolved payment is kept");
    }
}
