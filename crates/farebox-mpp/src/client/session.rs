//! The client side of MPP sessions: the sessions an [`MppWallet`](super::MppWallet) has open,
//! how each request is paid from them, and how they are closed.
//!
//! - **EVM** (`method="evm", intent="session"`): the first request approves and opens a channel
//!   in the server's escrow, and pays with a first voucher for one request. Every later request
//!   signs a voucher for `signed + price`; when that would pass the deposit the wallet tops the
//!   channel up on chain first (the server re-reads the deposit). While the challenge a path
//!   was last paid under is live, the next request to it carries its voucher up front under
//!   that challenge (one HTTP round trip instead of two; a top-up still waits for a 402); if
//!   the server refuses it (expired, restarted with another key), its 402 is paid as usual. Vouchers never leave the
//!   budget: the deposit and top-ups do, and the part the server did not spend comes back at
//!   close.
//! - **Lightning** (`method="lightning", intent="session"`): the first request pays the deposit
//!   invoice and opens the session with an amountless return invoice of the wallet's own; the
//!   deposit's preimage is then a bearer proof, sent up front with every later request (a
//!   reusable proof). When the balance runs out, the wallet pays the fresh deposit invoice of
//!   the 402, sends a `topUp` itself, and carries on.
//!
//! **What the server cannot decide** (its word about money is checked, never taken):
//! - *Where the money goes.* An EVM deposit goes only to an escrow the [`EvmSessionPolicy`]
//!   pins for its chain, refused before any `approve`; after `open` the wallet reads the channel
//!   back from its own node (payer, payee = the challenge's recipient, token = its currency,
//!   deposit = what was sent) before it signs a voucher.
//! - *How much.* One channel or session holds at most the policy's cap, deposit plus top-ups
//!   (`suggestedDeposit` is only a suggestion); one that would pass it is closed and a new one
//!   opened.
//! - *What was spent.* The wallet keeps the highest cumulative amount it signed per channel. A
//!   receipt or a 402 claiming more is [`ClientError::Overclaimed`], and the channel is closed
//!   at once with a voucher for what was signed; any close signs `min(claimed spent, signed)`.
//! - *What came back.* An EVM refund is the `ChannelClosed` event of the close transaction, read
//!   from the wallet's node; a Lightning refund is what the wallet's node shows received on the
//!   return invoice. Only that is credited to the budget, and the ledger records the transaction
//!   or payment hash.
//!
//! [`Sessions::close_all`](super::Sessions::close_all) closes every session. Dropping the wallet
//! closes what is still open (blocking for at most [`DROP_CLOSE_TIMEOUT`] where the runtime
//! allows, else in the background); servers also close idle sessions on their own and refund
//! the rest, so a client that vanishes loses nothing but the requests it was served.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::evm::voucher::VoucherDomain;
use crate::rail::OPAQUE_HTTP_METHOD;
use crate::{Challenge, Credential, PaymentReceipt};
use farebox_core::Money;
use farebox_evm::{Address, B256, EvmRpc, PrivateKeySigner};
use farebox_lightning::{LightningBackend, PaymentHash, Preimage};
use farebox_wallet::ClientError;
use http::{HeaderMap, HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest::Url;

/// How long dropping a wallet may block to close its sessions.
pub const DROP_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control message (top-up, close) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
pub use crate::evm::session::client::EvmSessionPolicy;
pub use crate::lightning::session::client::LightningSessionPolicy;

/// A session the wallet has open.
pub(crate) struct OpenSession {
    pub origin: String,
    /// The last URL paid through it (control messages go there).
    pub url: Url,
    /// The last challenge it was paid under (echoed by control messages).
    pub challenge: Challenge,
    /// What was put up, and what the server last said was spent (never more than was signed).
    pub deposit: Money,
    pub spent: u128,
    /// Pays nothing more: it waits to be closed (a close after an overclaim failed).
    pub halted: bool,
    pub kind: SessionKind,
}

pub(crate) enum SessionKind {
    Evm {
        channel: B256,
        escrow: Address,
        payee: Address,
        token: Address,
        domain: VoucherDomain,
        /// Boxed: a key is large next to a Lightning session's two hashes.
        signer: Box<PrivateKeySigner>,
        /// The wallet's own node, where the close is checked.
        rpc: EvmRpc,
        /// The highest cumulative amount signed so far.
        signed: u128,
        /// The challenge each path was last paid under, newest last: the next request to the
        /// path sends its voucher up front under it while it is live ([`live_for`]).
        live: Vec<(String, Challenge)>,
    },
    Lightning {
        id: PaymentHash,
        preimage: Preimage,
        /// The payment hash of the return invoice, and the node that issued it.
        refund: PaymentHash,
        node: Arc<dyn LightningBackend>,
        refund_wait: Duration,
    },
}

impl OpenSession {
    /// The channel id or the session id, as text.
    pub fn reference(&self) -> String {
        match &self.kind {
            SessionKind::Evm { channel, .. } => format!("{channel:#x}"),
            SessionKind::Lightning { id, .. } => hex::encode(id),
        }
    }

    pub fn method(&self) -> &'static str {
        match self.kind {
            SessionKind::Evm { .. } => crate::evm::session::METHOD,
            SessionKind::Lightning { .. } => crate::lightning::session::METHOD,
        }
    }
}

/// How long before its expiry a challenge stops being used up front: a voucher sent under one
/// about to expire would likely be refused, and cost a round trip more than asking.
pub(crate) const UP_FRONT_MARGIN: Duration = Duration::from_secs(10);
/// The most paths per channel whose challenge is kept for up-front vouchers.
const MAX_LIVE_PATHS: usize = 16;

impl SessionKind {
    /// Keeps `challenge` as the one `path` was last paid under.
    pub fn paid_under(&mut self, path: &str, challenge: &Challenge) {
        if let SessionKind::Evm { live, .. } = self {
            live.retain(|(p, _)| p != path);
            if live.len() >= MAX_LIVE_PATHS {
                live.remove(0);
            }
            live.push((path.to_string(), challenge.clone()));
        }
    }

    /// Forgets the challenge `path` was paid under if it is `id` (the server refused it).
    pub fn forget_challenge(&mut self, path: &str, id: &str) {
        if let SessionKind::Evm { live, .. } = self {
            live.retain(|(p, c)| !(p == path && c.id == id));
        }
    }

    /// The challenge a `method` request to `path` can send its voucher under up front, at
    /// `now` (Unix seconds): the one the path was last paid under, if it expires no sooner
    /// than [`UP_FRONT_MARGIN`] from now and binds this HTTP method where it names one
    /// (farebox servers do, in `opaque`). The server checks all of it again; this only saves
    /// sending what it would refuse.
    pub fn live_for(&self, method: &http::Method, path: &str, now: u64) -> Option<&Challenge> {
        let SessionKind::Evm { live, .. } = self else { return None };
        let (_, challenge) = live.iter().find(|(p, _)| p == path)?;
        let expires = challenge.expires.as_deref().and_then(|e| crate::time::parse(e).ok())?;
        let binds = challenge.opaque_map().ok()?.and_then(|mut o| o.remove(OPAQUE_HTTP_METHOD));
        let fits = binds.is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
        (expires >= now.saturating_add(UP_FRONT_MARGIN.as_secs()) && fits).then_some(challenge)
    }
}

/// A session that was closed.
#[derive(Debug, Clone)]
pub struct ClosedSession {
    pub url: String,
    /// `evm` or `lightning`.
    pub method: &'static str,
    /// The channel id or the session id.
    pub session: String,
    /// What the server kept: the deposit less the refund.
    pub spent: Money,
    /// What came back to the wallet, as the chain or the wallet's node shows it.
    pub refunded: Money,
    /// The evidence of the refund: the close transaction (EVM) or the return invoice's payment
    /// hash (Lightning).
    pub reference: String,
}

/// The sessions of one wallet, shared by its handles.
pub(crate) struct SessionBook {
    pub open: Mutex<Vec<OpenSession>>,
    /// One session payment at a time: opening or topping up must not race.
    pub paying: tokio::sync::Mutex<()>,
    accounts: OnceLock<Arc<dyn farebox_wallet::Accounts>>,
    http: reqwest::Client,
}

impl SessionBook {
    pub fn new() -> Self {
        SessionBook {
            open: Mutex::new(Vec::new()),
            paying: tokio::sync::Mutex::new(()),
            accounts: OnceLock::new(),
            http: reqwest::Client::builder()
                .timeout(CONTROL_TIMEOUT)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
        }
    }

    pub fn attach(&self, accounts: Arc<dyn farebox_wallet::Accounts>) {
        let _ = self.accounts.set(accounts);
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OpenSession>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the session `reference` (a channel or session id) out of the book and closes it;
    /// one whose close fails goes back (halted, if `halt`: it pays nothing more) so that a
    /// later close can retry it. `None`: it is no longer in the book.
    pub async fn retire(
        &self,
        reference: &str,
        halt: bool,
    ) -> Result<Option<ClosedSession>, ClientError> {
        let taken = {
            let mut open = self.lock();
            open.iter().position(|s| s.reference() == reference).map(|i| open.remove(i))
        };
        let Some(mut s) = taken else { return Ok(None) };
        match self.close(&s).await {
            Ok(closed) => Ok(Some(closed)),
            Err(e) => {
                s.halted |= halt;
                self.lock().push(s);
                Err(e)
            }
        }
    }

    /// Sends a control message (top-up, close) for a session: `credential` echoing
    /// `challenge`; a 402 (the challenge expired meanwhile) is retried once with the 402's own
    /// session challenge of the same method.
    pub async fn control(
        &self,
        url: &Url,
        method: &str,
        mut challenge: Challenge,
        payload: impl Fn(&Challenge) -> serde_json::Map<String, serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, serde_json::Value), ClientError> {
        for attempt in 0..2 {
            let credential = Credential::new(&challenge, payload(&challenge));
            let mut value =
                HeaderValue::from_str(&credential.to_authorization()).map_err(|_| {
                    ClientError::PaymentFailed("the credential is not header-safe".into())
                })?;
            value.set_sensitive(true);
            let response = self.http.get(url.clone()).header(AUTHORIZATION, value).send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if status != StatusCode::PAYMENT_REQUIRED || attempt == 1 {
                return Ok((status, headers, body));
            }
            let fresh = session_challenges(&headers).into_iter().find(|c| c.method == method);
            match fresh {
                Some(fresh) => challenge = fresh,
                None => return Ok((status, headers, body)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The refund goes back to the budget, off the session's deposits, and into the ledger
    /// with its evidence, in one step.
    fn credit(&self, closed: &ClosedSession) {
        let Some(accounts) = self.accounts.get() else { return };
        accounts.refund_session(&farebox_wallet::Refund {
            session: closed.session.clone(),
            url: closed.url.clone(),
            rail: "mpp",
            amount: closed.refunded.clone(),
            reference: closed.reference.clone(),
        });
    }

    /// Closes one session (already taken out of the book) and credits the evidenced refund.
    async fn close(&self, s: &OpenSession) -> Result<ClosedSession, ClientError> {
        let closed = match &s.kind {
            SessionKind::Evm { .. } => crate::evm::session::client::close(self, s).await?,
            SessionKind::Lightning { .. } => {
                crate::lightning::session::client::close(self, s).await?
            }
        };
        self.credit(&closed);
        Ok(closed)
    }

    pub async fn close_all(&self) -> Vec<Result<ClosedSession, ClientError>> {
        let open: Vec<OpenSession> = std::mem::take(&mut *self.lock());
        let mut out = Vec::with_capacity(open.len());
        for s in open {
            out.push(self.close(&s).await);
        }
        out
    }
}

impl Drop for SessionBook {
    fn drop(&mut self) {
        let open: Vec<OpenSession> = std::mem::take(&mut *self.lock());
        if open.is_empty() {
            return;
        }
        let book = SessionBook {
            open: Mutex::new(open),
            paying: tokio::sync::Mutex::new(()),
            accounts: std::mem::take(&mut self.accounts),
            http: self.http.clone(),
        };
        let job = async move {
            match tokio::time::timeout(DROP_CLOSE_TIMEOUT, book.close_all()).await {
                Ok(results) => {
                    for r in results.into_iter().filter_map(Result::err) {
                        tracing::warn!(error = %r, "could not close a session on drop");
                    }
                }
                Err(_) => tracing::warn!(
                    "closing sessions on drop timed out; the servers will close them when idle"
                ),
            }
        };
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(job));
            }
            // A single-threaded runtime cannot be blocked for this: close in the background.
            Ok(h) => drop(h.spawn(job)),
            Err(_) => {
                let closing =
                    std::thread::spawn(move || match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(job),
                        Err(e) => {
                            tracing::warn!(error = %e, "no runtime to close sessions on drop")
                        }
                    });
                let _ = closing.join();
            }
        }
    }
}

/// The cumulative amount a close voucher signs: what the server last claimed spent, never
/// more than the wallet signed; with no claim seen, what was signed.
pub(crate) fn close_amount(claimed_spent: u128, signed: u128) -> u128 {
    if claimed_spent == 0 { signed } else { claimed_spent.min(signed) }
}

pub(crate) fn rejected(status: StatusCode, body: &serde_json::Value) -> ClientError {
    ClientError::ProofRejected {
        status: status.as_u16(),
        detail: body["detail"].as_str().unwrap_or("no detail given").to_string(),
    }
}

/// The session challenges of a response.
pub(crate) fn session_challenges(headers: &HeaderMap) -> Vec<Challenge> {
    crate::read_www_authenticate_from(headers)
        .challenges
        .into_iter()
        .filter(|c| c.intent == "session")
        .collect()
}

/// A member of the response's `Payment-Receipt`, as text.
pub(crate) fn receipt_member(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get("payment-receipt")?.to_str().ok()?;
    let receipt = PaymentReceipt::decode(value).ok()?;
    match receipt.extensions.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What a session receipt says was spent, in base units (EVM: a decimal string; Lightning: sats).
pub(crate) fn receipt_spent(headers: &HeaderMap, method: &str) -> Option<u128> {
    let spent = receipt_member(headers, "spent")?;
    match method {
        crate::evm::session::METHOD => spent.parse().ok(),
        _ => spent.parse::<u64>().ok().map(|sat| u128::from(sat) * 1000),
    }
}

pub(crate) type SharedBook = Arc<SessionBook>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_never_signs_more_than_was_signed() {
        assert_eq!(close_amount(0, 5_000), 5_000, "no claim seen: what was signed");
        assert_eq!(close_amount(3_000, 5_000), 3_000, "less claimed: the claim");
        assert_eq!(close_amount(9_000, 5_000), 5_000, "more claimed: what was signed");
    }
}
