//! `farebox pay <url>`: pays for one request from the wallet file, within its caps, and prints
//! the body.
//!
//! What was offered, what was chosen and why, and what was paid go to stderr; the response body
//! to stdout, so `farebox pay … | jq` works. Each way of failing has its own exit code
//! ([`Exit`]); with `--json`, stderr ends with one JSON line saying what happened, for agents.
//!
//! Without a wallet file, `--wallet URL` pays with the dev wallet of `farebox demo --serve` /
//! `farebox serve` within `--max-sats`, in memory (as before wallet files existed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use farebox_client::{Budget, ClientError, Event, PaymentMiddleware, SqliteStore};
use farebox_core::Money;
use farebox_l402::client::L402Wallet;
use farebox_mpp::client::MppWallet;
use farebox_mpp::client::Sessions;
use farebox_mpp::client::session::EvmSessionPolicy;
use farebox_mpp::client::session::LightningSessionPolicy;
use farebox_x402::client::X402Wallet;
use serde_json::json;

use crate::wallet_file::{self, WalletConfig, WalletFileError};

/// How `farebox pay` ends, as its exit code. Documented in the README; agents branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Served (2xx), paid or free.
    Ok = 0,
    /// Something unexpected.
    Failed = 1,
    /// Bad input: URL, header, amount or unit; a missing, invalid or insecure wallet file.
    BadInput = 2,
    /// Over a cap of the budget, or `--max`. Nothing paid.
    OverBudget = 3,
    /// No wallet for any offered rail, or the policy refuses (host, session escrow or
    /// deposit). Nothing paid.
    NoPayableOffer = 4,
    /// The server refused the proof of a payment that was made. Spent and in the ledger.
    ProofRefused = 5,
    /// A backend is down: the Lightning node, the EVM node, the budget store. Nothing paid.
    BackendDown = 6,
    /// The payment's outcome is unknown: money may have left. Counted at its most and in the
    /// ledger; do not retry blindly.
    OutcomeUnknown = 7,
    /// The server failed: unreachable, an unreadable challenge, an error status, a claim
    /// about money the wallet disproved.
    ServerError = 8,
    /// The wallet tried and the payment failed (no route…). Nothing spent.
    PaymentFailed = 9,
    /// The Lightning wallet refused farebox's credentials (macaroon, rune, key, NWC
    /// connection) or this operation. Nothing paid; fix the wallet's configuration.
    WalletRefused = 10,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The error's name in `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Failed => "failed",
            Exit::BadInput => "bad_input",
            Exit::OverBudget => "over_budget",
            Exit::NoPayableOffer => "no_payable_offer",
            Exit::ProofRefused => "proof_refused",
            Exit::BackendDown => "backend_down",
            Exit::OutcomeUnknown => "outcome_unknown",
            Exit::ServerError => "server_error",
            Exit::PaymentFailed => "payment_failed",
            Exit::WalletRefused => "wallet_refused",
        }
    }

    pub fn of_client(e: &ClientError) -> Exit {
        match e {
            ClientError::OverBudget { .. } => Exit::OverBudget,
            ClientError::NoPayableOffer(_)
            | ClientError::SessionRefused(_)
            | ClientError::PolicyRefused(_) => Exit::NoPayableOffer,
            ClientError::ProofRejected { .. } => Exit::ProofRefused,
            ClientError::Unavailable(_) => Exit::BackendDown,
            ClientError::PaidWithoutProof(_) => Exit::OutcomeUnknown,
            ClientError::InvalidChallenge(_)
            | ClientError::Overclaimed(_)
            | ClientError::RefundUnproven(_)
            | ClientError::Http(_) => Exit::ServerError,
            ClientError::PaymentFailed(_) => Exit::PaymentFailed,
            ClientError::WalletRefused(_) => Exit::WalletRefused,
            ClientError::BodyNotReplayable | ClientError::Config(_) => Exit::BadInput,
            _ => Exit::Failed,
        }
    }
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure { exit, message: message.into() }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(Exit::BadInput, message)
    }
}

impl From<WalletFileError> for Failure {
    fn from(e: WalletFileError) -> Self {
        // Every wallet file problem (missing, invalid, insecure, a secret not set) is the
        // caller's to fix.
        Failure::new(Exit::BadInput, e.to_string())
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::new(Exit::of_client(&e), e.to_string())
    }
}

/// Which wallet to use: the file, or the dev wallet alone.
#[derive(clap::Args, Clone)]
pub struct WalletArgs {
    /// The wallet file (default: $FAREBOX_WALLET, $XDG_CONFIG_HOME/farebox/wallet.toml,
    /// ~/.config/farebox/wallet.toml).
    #[arg(long = "wallet-file", value_name = "PATH")]
    pub wallet_file: Option<PathBuf>,
    /// The Lightning wallet, overriding the wallet file's [lightning]: the dev wallet API's
    /// URL (printed by `farebox demo --serve`), or `nwc` for Nostr Wallet Connect with the URI
    /// from $FAREBOX_NWC_URI, else from the private file $FAREBOX_NWC_URI_FILE (never argv).
    /// Without a wallet file, the only wallet, in memory.
    #[arg(long, env = "FAREBOX_DEV_WALLET")]
    pub wallet: Option<WalletChoice>,
}

/// `--wallet`: a dev wallet URL, or `nwc`.
#[derive(Debug, Clone)]
pub enum WalletChoice {
    Dev(reqwest::Url),
    Nwc,
}

impl std::str::FromStr for WalletChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("nwc") {
            return Ok(WalletChoice::Nwc);
        }
        reqwest::Url::parse(s)
            .map(WalletChoice::Dev)
            .map_err(|e| format!("expected `nwc` or the dev wallet's URL: {e}"))
    }
}

impl WalletChoice {
    fn lightning(&self) -> wallet_file::LightningConfig {
        use wallet_file::{LightningConfig, SecretSource};
        match self {
            WalletChoice::Dev(url) => LightningConfig::Dev { url: url.clone() },
            WalletChoice::Nwc => {
                let file = std::env::var_os("FAREBOX_NWC_URI_FILE")
                    .filter(|_| std::env::var_os("FAREBOX_NWC_URI").is_none_or(|v| v.is_empty()));
                LightningConfig::Nwc {
                    uri: match file {
                        Some(path) => SecretSource::File(path.into()),
                        None => SecretSource::Env("FAREBOX_NWC_URI".into()),
                    },
                }
            }
        }
    }
}

impl WalletArgs {
    /// The wallet file's configuration, or (none there, `--wallet` or no file at all) the dev
    /// wallet's. `max_sats` caps the dev wallet without a file.
    pub fn config(&self, max_sats: u64, max_fee_sats: u64) -> Result<WalletConfig, Failure> {
        let path = self.wallet_file.clone().or_else(wallet_file::default_path);
        let mut config = match path {
            Some(path) if path.exists() || self.wallet_file.is_some() => WalletConfig::load(&path)?,
            _ => {
                let url = reqwest::Url::parse("http://127.0.0.1:8403").expect("a valid URL");
                WalletConfig::dev(url, max_sats, max_fee_sats)
            }
        };
        if let Some(choice) = &self.wallet {
            config.lightning = Some(choice.lightning());
        }
        Ok(config)
    }
}

/// The rails whose wallets a wallet file configures in its own `[rails.<name>]` table: one line
/// per rail crate.
pub const WALLET_PLUGINS: &[farebox_client::WalletPlugin] = &[farebox_rail_prepaid::WALLET_PLUGIN];

/// A payment middleware built from a wallet configuration, with what `pay` needs after.
pub struct Payer {
    pub middleware: PaymentMiddleware,
    pub sessions: Option<Sessions>,
    /// Why a wallet the file names could not be used (printed; the others still pay).
    pub skipped: Vec<String>,
}

/// The budget of `config`: its caps over the wallet's store (in memory without a store).
pub fn budget(config: &WalletConfig) -> Result<Budget, Failure> {
    let budget = if config.store.as_os_str().is_empty() {
        Budget::new()
    } else {
        if config.store.exists() {
            wallet_file::check_private(&config.store)?;
        }
        Budget::with_store(Arc::new(SqliteStore::open(&config.store)?))
    };
    Ok(config.caps.iter().cloned().fold(budget, Budget::limit))
}

/// Builds the wallets, the budget (in the wallet's store) and the policy of `config`; `max`
/// caps one call.
pub async fn payer(config: &WalletConfig, max: &[Money]) -> Result<Payer, Failure> {
    payer_within(config, budget(config)?, max).await
}

/// [`payer`] spending from `budget` (a long-running process keeps one, so that an in-memory
/// budget holds across its calls).
pub async fn payer_within(
    config: &WalletConfig,
    budget: Budget,
    max: &[Money],
) -> Result<Payer, Failure> {
    let mut policy = config.policy.clone();
    for m in max {
        policy = policy.max_per_call(m.clone());
    }
    let mut middleware = PaymentMiddleware::new(budget.clone()).policy(policy);
    let mut skipped = Vec::new();
    let max_fee_msat = config.max_fee.as_msat().unwrap_or(0);
    let mut mpp = MppWallet::new();
    let mut mpp_used = false;
    if let Some(lightning) = &config.lightning {
        let node = wallet_file::lightning_backend(lightning)?;
        middleware = middleware.wallet(L402Wallet::new(node.clone(), max_fee_msat));
        let mut sessions = LightningSessionPolicy::default();
        if let Some(cap) = &config.session_max_deposit {
            sessions.max_deposit_sat = u64::try_from(cap.amount / 1000).unwrap_or(u64::MAX);
        }
        mpp = mpp.lightning(node, max_fee_msat).lightning_sessions(sessions);
        mpp_used = true;
    }
    if let Some(evm) = &config.evm {
        let signer = evm.signer()?;
        middleware = middleware.wallet(X402Wallet::new(signer.clone()));
        mpp = mpp.evm(signer);
        mpp_used = true;
        // Sessions on the first chain with escrows (one session chain per wallet for now).
        if let Some(chain) = evm.chains.iter().find(|c| !c.escrows.is_empty()) {
            match session_policy(chain).await {
                Ok(policy) => mpp = mpp.evm_sessions(policy),
                Err(why) => {
                    skipped.push(format!("MPP sessions on chain {}: {why}", chain.chain_id))
                }
            }
        }
    }
    for rail in &config.rails {
        if let Some(plugin) = WALLET_PLUGINS.iter().find(|p| p.name == rail.name) {
            middleware = middleware.wallet(rail.build(plugin, &config.assets)?);
        }
    }
    let mut sessions = None;
    if mpp_used {
        sessions = Some(mpp.sessions());
        middleware = middleware.wallet(mpp);
    }
    Ok(Payer { middleware, sessions, skipped })
}

async fn session_policy(chain: &wallet_file::ChainConfig) -> Result<EvmSessionPolicy, String> {
    let url = chain.rpc_url().map_err(|e| e.to_string())?;
    // The URL may carry an API key: errors name the chain, never the URL.
    let rpc = farebox_evm::EvmRpc::connect_with_timeout(&url, Duration::from_secs(10))
        .await
        .map_err(|_| "its node does not answer".to_string())?;
    if rpc.chain_id() != chain.chain_id {
        return Err(format!("its node is on chain {}", rpc.chain_id()));
    }
    let max = chain.max_deposit.as_ref().ok_or("no max_deposit")?;
    let mut policy = EvmSessionPolicy::new(rpc, chain.escrows[0], max.amount)
        .symbol(max.asset.symbol().to_string());
    for escrow in &chain.escrows[1..] {
        policy = policy.allow_escrow(*escrow);
    }
    Ok(policy)
}

/// The request to send: what `pay` and `quote` share.
#[derive(clap::Args)]
pub struct RequestArgs {
    /// The URL to request.
    pub url: String,
    /// HTTP method.
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Request body (sent as-is).
    #[arg(short = 'd', long)]
    pub data: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
}

impl RequestArgs {
    /// The request, or why the flags do not make one.
    pub fn build(&self, client: &reqwest::Client) -> Result<reqwest::Request, Failure> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| Failure::bad_input(format!("URL {:?}: {e}", self.url)))?;
        let method = reqwest::Method::from_bytes(self.method.as_bytes())
            .map_err(|_| Failure::bad_input(format!("method {:?}", self.method)))?;
        let mut request = client.request(method, url);
        for h in &self.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| Failure::bad_input(format!("header {h:?} is not `Name: value`")))?;
            request = request.header(name.trim(), value.trim());
        }
        if let Some(data) = &self.data {
            request = request.body(data.clone());
        }
        request.build().map_err(|e| Failure::bad_input(e.to_string()))
    }
}

#[derive(clap::Args)]
pub struct PayArgs {
    #[command(flatten)]
    request: RequestArgs,
    #[command(flatten)]
    wallet: WalletArgs,
    /// The most this call may pay, fees and any session deposit included: `50sat`,
    /// `0.01USDC` (repeatable, one per asset; offers in other assets are then refused).
    #[arg(long = "max", value_name = "AMOUNT")]
    max: Vec<String>,
    /// Most to pay for this request, in sats (routing fees included); `--max <N>sat`.
    #[arg(long)]
    max_sats: Option<u64>,
    /// Most Lightning routing fee, in sats (overrides the wallet file's).
    #[arg(long)]
    max_fee_sats: Option<u64>,
    /// Print nothing but the body (and, with --json, the JSON line).
    #[arg(short, long)]
    quiet: bool,
    /// End stderr with one JSON line: what was paid, or the error and its exit code.
    #[arg(long)]
    json: bool,
}

/// The `--max` amounts, in the wallet's units.
pub fn max_amounts(
    config: &WalletConfig,
    max: &[String],
    max_sats: Option<u64>,
) -> Result<Vec<Money>, Failure> {
    let mut amounts = Vec::new();
    for text in max {
        amounts.extend(config.units().parse_all(text).map_err(Failure::bad_input)?);
    }
    amounts.extend(max_sats.map(Money::sats));
    Ok(amounts)
}

/// What was paid (rail, amount, fee, reference), for the JSON line and the MCP `fetch` result.
pub type PaidLog = Arc<Mutex<Vec<serde_json::Value>>>;

pub async fn run(args: PayArgs) -> u8 {
    let json = args.json;
    let paid: PaidLog = Arc::default();
    let outcome = pay(args, paid.clone()).await;
    let paid = paid.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match outcome {
        Ok(status) => {
            if json {
                eprintln!("{}", json!({ "ok": true, "status": status, "paid": paid }));
            }
            Exit::Ok.code()
        }
        Err(f) => {
            if json {
                eprintln!(
                    "{}",
                    json!({
                        "ok": false,
                        "error": f.exit.name(),
                        "exit": f.exit.code(),
                        "message": f.message,
                        "paid": paid,
                    })
                );
            } else {
                eprintln!("error: {}", f.message);
            }
            f.exit.code()
        }
    }
}

async fn pay(args: PayArgs, paid: PaidLog) -> Result<u16, Failure> {
    let config =
        args.wallet.config(args.max_sats.unwrap_or(100), args.max_fee_sats.unwrap_or(10))?;
    let mut config = config;
    if let Some(fee) = args.max_fee_sats {
        config.max_fee = Money::sats(fee);
    }
    let max = if config.path.as_os_str().is_empty() {
        max_amounts(&config, &args.max, None)?
    } else {
        max_amounts(&config, &args.max, args.max_sats)?
    };
    let payer = payer(&config, &max).await?;
    let quiet = args.quiet;
    if !quiet {
        for why in &payer.skipped {
            eprintln!("note: {why}");
        }
        if config.path.as_os_str().is_empty() {
            eprintln!(
                "note: no wallet file; paying with the dev wallet, in memory (`farebox wallet init` writes one)"
            );
        }
    }
    let fetched = send(payer, &args.request, quiet, usize::MAX, &paid).await?;
    use std::io::Write;
    std::io::stdout()
        .write_all(&fetched.body)
        .map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    fetched.check_status(&args.request)?;
    Ok(fetched.status.as_u16())
}

/// What a paid (or free) request came back with.
pub struct Fetched {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    /// At most the limit [`send`] was given.
    pub body: Vec<u8>,
    /// The body was longer than that limit; the rest was not read.
    pub truncated: bool,
}

impl Fetched {
    /// A status other than 2xx is the server's failure (exit 8), after any payment.
    pub fn check_status(&self, request: &RequestArgs) -> Result<(), Failure> {
        if self.status.is_success() {
            return Ok(());
        }
        Err(Failure::new(
            Exit::ServerError,
            format!("{} {} answered {}", request.method, request.url, self.status),
        ))
    }
}

/// Sends `request`, paying with `payer` when the server asks: the one payment path of
/// `farebox pay` and of the MCP `fetch` tool. Each payment is appended to `paid` (also when the
/// call fails later); unless `quiet`, what was offered, chosen and paid is narrated to stderr.
/// Reads at most `body_limit` bytes of the body. Sessions opened for the call are closed before
/// returning, so their unspent deposit comes back now.
pub async fn send(
    payer: Payer,
    request: &RequestArgs,
    quiet: bool,
    body_limit: usize,
    paid: &PaidLog,
) -> Result<Fetched, Failure> {
    let Payer { mut middleware, sessions, .. } = payer;
    let log = paid.clone();
    middleware = middleware.observe(move |e: &Event| {
        if let Event::Paid { rail, price, fee, reference } = e {
            log.lock().unwrap_or_else(|e| e.into_inner()).push(json!({
                "rail": rail,
                "amount": price.to_string(),
                "fee": fee.to_string(),
                "reference": reference,
            }));
        }
        if !quiet {
            narrate(e);
        }
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let built = request.build(&http)?;
    let client = farebox_client::paying_client(http, middleware);
    let sent = client.execute(built).await;
    // A session opened for this call is closed before returning, so its unspent deposit comes
    // back (and the refund is in the ledger) now rather than when the server gives up on it.
    let close = async {
        if let Some(sessions) = &sessions {
            for closed in sessions.close_all().await {
                match closed {
                    Ok(c) if !quiet => eprintln!(
                        "closed session {}: spent {}, refunded {} (evidence {})",
                        c.session, c.spent, c.refunded, c.reference
                    ),
                    Ok(_) => {}
                    Err(e) => eprintln!("warning: a session could not be closed: {e}"),
                }
            }
        }
    };
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => {
            close.await;
            return Err(match ClientError::from_middleware(&e) {
                Some(typed) => Failure::from_client_ref(typed),
                None => Failure::new(
                    Exit::ServerError,
                    format!("{} {}: {e}", request.method, request.url),
                ),
            });
        }
    };
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let body = read_bounded(&mut response, body_limit).await;
    close.await;
    let (body, truncated) = body.map_err(|e| Failure::new(Exit::ServerError, e.to_string()))?;
    Ok(Fetched { status, headers, body, truncated })
}

/// At most `limit` bytes of the body, and whether there was more.
async fn read_bounded(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

impl Failure {
    fn from_client_ref(e: &ClientError) -> Self {
        Failure::new(Exit::of_client(e), e.to_string())
    }
}

/// What was offered, chosen and paid, for people (stderr).
fn narrate(e: &Event) {
    match e {
        Event::PaymentRequired { offers, .. } => {
            eprintln!("402 Payment Required; offers this wallet can pay:");
            for (rail, price, summary) in offers {
                eprintln!("  offer: {rail} {price} — {summary}");
            }
        }
        Event::Chose { rail, price, reason } => eprintln!("chose {rail} {price}: {reason}"),
        Event::Paid { rail, price, fee, reference } => {
            eprintln!("paid {price} over {rail} (fee {fee}), reference {reference}")
        }
        Event::ReusingProof { rail, .. } => eprintln!("sending a {rail} proof bought earlier"),
        Event::Served { status, .. } => eprintln!("retried with the proof: HTTP {status}"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &'static str) -> reqwest::Response {
        reqwest::Response::from(http::Response::new(body))
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_cut_there_and_said_to_be() {
        let mut r = response("0123456789");
        assert_eq!(read_bounded(&mut r, 4).await.unwrap(), (b"0123".to_vec(), true));
        let mut r = response("0123456789");
        assert_eq!(read_bounded(&mut r, 10).await.unwrap(), (b"0123456789".to_vec(), false));
        let mut r = response("");
        assert_eq!(read_bounded(&mut r, 0).await.unwrap(), (Vec::new(), false));
    }
}
