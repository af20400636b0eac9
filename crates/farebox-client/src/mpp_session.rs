//! The client side of MPP sessions: the sessions an [`MppWallet`](crate::MppWallet) has open,
//! how each request is paid from them, and how they are closed.
//!
//! - **EVM** (`method="evm", intent="session"`): the first request approves and opens a channel
//!   in the server's escrow with a deposit (the policy's, or the server's `suggestedDeposit`),
//!   from a random salt, and pays with a first voucher for one request. Every later request
//!   signs a voucher for `signed + price`; when that would pass the deposit the wallet tops the
//!   channel up on chain first (the server re-reads the deposit). Vouchers never leave the
//!   budget: the deposit and top-ups do, and the part the server did not spend comes back at
//!   close.
//! - **Lightning** (`method="lightning", intent="session"`): the first request pays the deposit
//!   invoice and opens the session with an amountless return invoice of the wallet's own; the
//!   deposit's preimage is then a bearer proof, sent up front with every later request (a
//!   reusable proof). When the balance runs out, the wallet pays the fresh deposit invoice of
//!   the 402, sends a `topUp` itself, and carries on.
//!
//! [`Sessions::close_all`] closes every session: a close voucher for what the server reported
//! spent (EVM: the server captures that and the escrow refunds the rest on chain), or a close
//! with the bearer preimage (Lightning: the rest is paid to the return invoice). Refunds are
//! credited back to the budget and recorded in the ledger. Dropping the wallet closes what is
//! still open (blocking for at most [`DROP_CLOSE_TIMEOUT`] where the runtime allows, else in
//! the background); servers also close idle sessions on their own and refund the rest, so a
//! client that vanishes loses nothing but the requests it was served.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use farebox_core::{Asset, Money, Token};
use farebox_evm::voucher::{self, Voucher, VoucherDomain};
use farebox_evm::{Address, B256, EvmError, EvmRpc, PrivateKeySigner};
use farebox_lightning::{PaymentHash, Preimage};
use farebox_mpp::evm_session::{
    self, EvmSessionRequest, OpenPayload, SessionPayload, SignedVoucher,
};
use farebox_mpp::lightning_session::{self, LightningSessionRequest, SessionPayload as LnPayload};
use farebox_mpp::{Challenge, Credential, PaymentReceipt};
use http::{HeaderMap, HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest::Url;

use crate::budget::{Budget, EntryKind, Ledger, LedgerEntry};
use crate::error::ClientError;

/// How long dropping a wallet may block to close its sessions.
pub const DROP_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control message (top-up, close) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// How the wallet opens and refills EVM sessions.
#[derive(Clone)]
pub struct EvmSessionPolicy {
    /// The chain's node (its chain id must be the challenge's).
    pub rpc: EvmRpc,
    /// What to deposit in a new channel, in token base units; `None`: the server's
    /// `suggestedDeposit` (at least one request).
    pub deposit: Option<u128>,
    /// What to add when a channel runs out; `None`: the deposit again.
    pub top_up: Option<u128>,
    /// The token's ticker, for people.
    pub symbol: String,
}

impl EvmSessionPolicy {
    /// Opens channels with the server's suggested deposit.
    pub fn new(rpc: EvmRpc) -> Self {
        EvmSessionPolicy { rpc, deposit: None, top_up: None, symbol: "USDC".into() }
    }

    /// Deposits `amount` base units per channel.
    pub fn deposit(mut self, amount: u128) -> Self {
        self.deposit = Some(amount);
        self
    }
}

/// How the wallet opens Lightning sessions.
#[derive(Debug, Clone)]
pub struct LightningSessionPolicy {
    /// The largest deposit invoice the wallet pays.
    pub max_deposit_sat: u64,
    /// How long the return invoice (for the refund) stays payable.
    pub return_invoice_expiry: Duration,
}

impl Default for LightningSessionPolicy {
    fn default() -> Self {
        LightningSessionPolicy {
            max_deposit_sat: 100_000,
            return_invoice_expiry: Duration::from_secs(30 * 86_400),
        }
    }
}

/// A session the wallet has open.
pub(crate) struct OpenSession {
    pub origin: String,
    /// The last URL paid through it (control messages go there).
    pub url: Url,
    /// The last challenge it was paid under (echoed by control messages).
    pub challenge: Challenge,
    /// What was put up, and what the server last said was spent.
    pub deposit: Money,
    pub spent: u128,
    pub kind: SessionKind,
}

pub(crate) enum SessionKind {
    Evm {
        channel: B256,
        escrow: Address,
        payee: Address,
        domain: VoucherDomain,
        /// Boxed: a key is large next to a Lightning session's two hashes.
        signer: Box<PrivateKeySigner>,
        /// The highest cumulative amount signed so far.
        signed: u128,
    },
    Lightning {
        id: PaymentHash,
        preimage: Preimage,
    },
}

impl OpenSession {
    fn reference(&self) -> String {
        match &self.kind {
            SessionKind::Evm { channel, .. } => format!("{channel:#x}"),
            SessionKind::Lightning { id, .. } => hex::encode(id),
        }
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
    /// What the server kept.
    pub spent: Money,
    /// What came back to the wallet.
    pub refunded: Money,
    /// The close transaction (EVM) or the refund's status (Lightning).
    pub reference: String,
}

/// The sessions of one wallet, shared by its handles.
pub(crate) struct SessionBook {
    pub open: Mutex<Vec<OpenSession>>,
    /// One session payment at a time: opening or topping up must not race.
    pub paying: tokio::sync::Mutex<()>,
    accounts: OnceLock<(Budget, Ledger)>,
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

    pub fn attach(&self, budget: &Budget, ledger: &Ledger) {
        let _ = self.accounts.set((budget.clone(), ledger.clone()));
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OpenSession>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
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

    fn credit(&self, closed: &ClosedSession) {
        let Some((budget, ledger)) = self.accounts.get() else { return };
        if closed.refunded.amount > 0 {
            budget.refund(&closed.refunded);
        }
        ledger.record(LedgerEntry {
            at: std::time::SystemTime::now(),
            url: closed.url.clone(),
            rail: "mpp",
            kind: EntryKind::Refund,
            amount: closed.refunded.clone(),
            fee: Money::zero(closed.refunded.asset.clone()),
            reference: closed.reference.clone(),
        });
    }

    /// Closes one session (already taken out of the book).
    async fn close(&self, s: OpenSession) -> Result<ClosedSession, ClientError> {
        let session = s.reference();
        let asset = s.deposit.asset.clone();
        let closed = match &s.kind {
            SessionKind::Evm { channel, domain, signer, signed, .. } => {
                // Close at what the server said was spent (it takes max(spent, settled) and
                // the escrow refunds the rest); with no receipt seen yet, at what was signed.
                let amount = if s.spent > 0 { s.spent } else { *signed };
                let v = Voucher { channelId: *channel, cumulativeAmount: amount };
                let signature = voucher::sign(signer, domain, &v).to_vec();
                let payload = SessionPayload::Close(SignedVoucher {
                    channel_id: *channel,
                    cumulative_amount: amount,
                    signature,
                })
                .to_json();
                let (status, _, body) = self
                    .control(&s.url, evm_session::METHOD, s.challenge.clone(), |_| payload.clone())
                    .await?;
                if status != StatusCode::OK {
                    return Err(rejected(status, &body));
                }
                let number =
                    |k: &str| body[k].as_str().and_then(|t| t.parse::<u128>().ok()).unwrap_or(0);
                ClosedSession {
                    url: s.url.to_string(),
                    method: evm_session::METHOD,
                    session,
                    spent: Money::new(asset.clone(), number("captured")),
                    refunded: Money::new(asset, number("refunded")),
                    reference: body["txHash"].as_str().unwrap_or_default().to_string(),
                }
            }
            SessionKind::Lightning { id, preimage } => {
                let payload = LnPayload::Close { session_id: *id, preimage: *preimage }.to_json();
                let (status, _, body) = self
                    .control(&s.url, lightning_session::METHOD, s.challenge.clone(), |_| {
                        payload.clone()
                    })
                    .await?;
                if status != StatusCode::OK {
                    return Err(rejected(status, &body));
                }
                let refund_sat = body["refundSats"].as_u64().unwrap_or(0);
                let status = body["refundStatus"].as_str().unwrap_or("failed").to_string();
                let refunded = if status == "succeeded" { refund_sat } else { 0 };
                ClosedSession {
                    url: s.url.to_string(),
                    method: lightning_session::METHOD,
                    session,
                    spent: Money::new(
                        asset,
                        s.deposit.amount.saturating_sub(u128::from(refunded) * 1000),
                    ),
                    refunded: Money::sats(refunded),
                    reference: status,
                }
            }
        };
        self.credit(&closed);
        Ok(closed)
    }

    pub async fn close_all(&self) -> Vec<Result<ClosedSession, ClientError>> {
        let open: Vec<OpenSession> = std::mem::take(&mut *self.lock());
        let mut out = Vec::with_capacity(open.len());
        for s in open {
            out.push(self.close(s).await);
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

fn rejected(status: StatusCode, body: &serde_json::Value) -> ClientError {
    ClientError::ProofRejected {
        status: status.as_u16(),
        detail: body["detail"].as_str().unwrap_or("no detail given").to_string(),
    }
}

/// The session challenges of a response.
pub(crate) fn session_challenges(headers: &HeaderMap) -> Vec<Challenge> {
    let values =
        headers.get_all(http::header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok());
    farebox_mpp::parse_www_authenticate(values)
        .map(|all| all.into_iter().filter(|c| c.intent == "session").collect())
        .unwrap_or_default()
}

/// The token asset of an EVM session request.
pub(crate) fn evm_asset(request: &EvmSessionRequest, symbol: &str) -> Asset {
    Asset::Token(Token {
        network: farebox_evm::network::caip2(request.chain_id),
        address: format!("{:#x}", request.currency),
        symbol: symbol.to_string(),
        decimals: request.decimals.unwrap_or(0),
    })
}

/// What a new channel deposits for `request` under `policy`.
pub(crate) fn initial_deposit(
    policy: &EvmSessionPolicy,
    request: &EvmSessionRequest,
    price: u128,
) -> u128 {
    policy
        .deposit
        .or_else(|| request.suggested_deposit.and_then(|d| d.try_into().ok()))
        .unwrap_or(price)
        .max(price)
}

/// What a top-up adds.
pub(crate) fn top_up_amount(
    policy: &EvmSessionPolicy,
    request: &EvmSessionRequest,
    price: u128,
) -> u128 {
    policy.top_up.unwrap_or_else(|| initial_deposit(policy, request, price)).max(price)
}

/// Opens a channel on chain: approve, then `open` with a random salt. Returns the open
/// transaction, the salt and the channel id.
pub(crate) async fn open_channel(
    rpc: &EvmRpc,
    signer: &PrivateKeySigner,
    request: &EvmSessionRequest,
    deposit: u128,
) -> Result<(B256, B256, B256), ClientError> {
    let salt = B256::from(rand::random::<[u8; 32]>());
    rpc.erc20_approve(signer, request.currency, request.escrow, deposit)
        .await
        .map_err(|e| ClientError::PaymentFailed(format!("approving the deposit: {e}")))?;
    rpc.escrow_open(
        signer,
        request.escrow,
        request.recipient,
        request.currency,
        deposit,
        salt,
        None,
    )
    .await
    .map(|(tx, channel)| (tx, salt, channel))
    .map_err(|e| chain_payment_error(e, "opening the channel"))
}

/// Adds `amount` to a channel on chain.
pub(crate) async fn top_up_channel(
    rpc: &EvmRpc,
    signer: &PrivateKeySigner,
    request: &EvmSessionRequest,
    channel: B256,
    amount: u128,
) -> Result<(), ClientError> {
    rpc.erc20_approve(signer, request.currency, request.escrow, amount)
        .await
        .map_err(|e| ClientError::PaymentFailed(format!("approving the top-up: {e}")))?;
    rpc.escrow_top_up(signer, request.escrow, channel, amount)
        .await
        .map(|_| ())
        .map_err(|e| chain_payment_error(e, "topping the channel up"))
}

/// A transaction that reverted moved nothing; one whose outcome is unknown may have.
fn chain_payment_error(e: EvmError, what: &str) -> ClientError {
    match e {
        EvmError::Reverted { reason } => ClientError::PaymentFailed(format!("{what}: {reason}")),
        e if e.is_unavailable() => ClientError::PaidWithoutProof(format!("{what}: {e}")),
        e => ClientError::PaymentFailed(format!("{what}: {e}")),
    }
}

/// An open payload paying the first request of `channel`.
pub(crate) fn open_payload(
    signer: &PrivateKeySigner,
    domain: &VoucherDomain,
    tx: B256,
    salt: B256,
    channel: B256,
    amount: u128,
) -> SessionPayload {
    SessionPayload::Open(OpenPayload {
        hash: tx,
        salt,
        authorized_signer: None,
        voucher: signed_voucher(signer, domain, channel, amount),
    })
}

pub(crate) fn signed_voucher(
    signer: &PrivateKeySigner,
    domain: &VoucherDomain,
    channel: B256,
    amount: u128,
) -> SignedVoucher {
    let v = Voucher { channelId: channel, cumulativeAmount: amount };
    SignedVoucher {
        channel_id: channel,
        cumulative_amount: amount,
        signature: voucher::sign(signer, domain, &v).to_vec(),
    }
}

/// What a session receipt says was spent, in base units (EVM: a decimal string; Lightning: sats).
pub(crate) fn receipt_spent(headers: &HeaderMap, method: &str) -> Option<u128> {
    let value = headers.get("payment-receipt")?.to_str().ok()?;
    let receipt = PaymentReceipt::decode(value).ok()?;
    let spent = receipt.extensions.get("spent")?;
    match method {
        evm_session::METHOD => spent.as_str()?.parse().ok(),
        _ => spent.as_u64().map(|sat| u128::from(sat) * 1000),
    }
}

/// Whether a Lightning session request can be opened under `policy`.
pub(crate) fn lightning_deposit(
    policy: &LightningSessionPolicy,
    request: &LightningSessionRequest,
) -> Option<u64> {
    request.deposit_sat.filter(|d| *d >= request.amount_sat && *d <= policy.max_deposit_sat)
}

pub(crate) type SharedBook = Arc<SessionBook>;
