//! No accepted voucher is lost when the server is killed: an MPP EVM session server (a child
//! process of this test, with a SQLite session store) serves paid requests on a channel, is
//! killed with SIGKILL right after answering, and a new process on the same file carries on
//! exactly where the dead one stopped.
//!
//! This file is its own harness (`harness = false`, libtest-mimic, so nextest lists and runs
//! it like any test): run with `FAREBOX_MPP_CRASH_SERVER` set, the same binary is the server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use farebox_core::{Money, Price, SessionStore};
use farebox_evm::anvil::Anvil;
use farebox_evm::{B256, EvmRpc, PrivateKeySigner, U256};
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::evm::session::{OpenPayload, SessionPayload, SignedVoucher};
use farebox_mpp::{Challenge, Credential, EvmSessionConfig, MppConfig, MppRail, PaymentReceipt};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::{MemoryStore, SqliteStore};
use libtest_mimic::{Arguments, Failed, Trial};

const ROLE: &str = "FAREBOX_MPP_CRASH_SERVER";
const SECRET: &[u8] = b"the-crash-test-secret-of-at-least-32-bytes";
const PRICE: u128 = 1_000;

fn main() -> std::process::ExitCode {
    if let Ok(config) = std::env::var(ROLE) {
        serve(&config);
        return std::process::ExitCode::SUCCESS;
    }
    let args = Arguments::from_args();
    let trials = vec![Trial::test(
        "accepted_vouchers_survive_the_server_being_killed",
        accepted_vouchers_survive_the_server_being_killed,
    )];
    libtest_mimic::run(&args, trials).exit_code()
}

/// The server role: `rpc|escrow|token|payee key|sqlite path` in the environment; prints the
/// address it listens on, then serves until killed.
fn serve(config: &str) {
    let parts: Vec<&str> = config.split('|').collect();
    let [rpc_url, escrow, token, key, path] = parts[..] else { panic!("bad {ROLE}: {config}") };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let rpc = EvmRpc::connect(rpc_url).await.unwrap();
        let payee: PrivateKeySigner = key.parse().unwrap();
        let config = EvmSessionConfig::builder(rpc, payee)
            .escrow(escrow.parse().unwrap())
            .token(token.parse().unwrap())
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .build()
            .unwrap();
        let price = Price::one(Money::new(config.asset(), PRICE));
        let sessions: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(path).await.unwrap());
        let rail =
            MppRail::builder(MppConfig::new("crash.test", SECRET), Arc::new(MemoryStore::new()))
                .evm_session(config, sessions)
                .build()
                .unwrap();
        let paywall = Paywall::builder()
            .rail(rail)
            .route(PricedRoute::new(None, "/data", price).unwrap())
            .build()
            .unwrap();
        let app = axum::Router::new()
            .route("/data", axum::routing::get(|| async { "the data" }))
            .layer(PaywallLayer::new(paywall));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("LISTENING {}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

/// A server child process and its base URL.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(config: &str) -> Result<Self, Failed> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE, config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("LISTENING ")
            .ok_or_else(|| format!("server said {line:?}"))?;
        Ok(Server { base: format!("http://{addr}"), child })
    }

    /// SIGKILL: no destructor, no flush, no goodbye.
    fn kill(mut self) -> Result<(), Failed> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn accepted_vouchers_survive_the_server_being_killed() -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(scenario())
}

async fn scenario() -> Result<(), Failed> {
    let anvil = Anvil::start().map_err(|e| format!("anvil (run `cargo xtask setup`): {e}"))?;
    let rpc = anvil.rpc().await?.clone();
    let token = anvil.deploy_token("USDC", "2").await?;
    let (payer, payee) = (anvil.accounts()[1].clone(), anvil.accounts()[2].clone());
    anvil.mint(token, payer.address, U256::from(10 * PRICE)).await?;
    let escrow =
        rpc.deploy_session_escrow(&anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD).await?;
    let domain = rpc.voucher_domain(escrow);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("sessions.db");
    let key = format!("0x{}", hex::encode(payee.signer.to_bytes()));
    let config = format!("{}|{escrow:#x}|{token:#x}|{key}|{}", anvil.url(), db.display());
    let http = reqwest::Client::new();
    let voucher =
        |amount: u128, channel: B256| SignedVoucher::sign(&payer.signer, &domain, channel, amount);

    // A channel, and three requests paid on it (vouchers for 1, 2 and 3 requests).
    let server = Server::start(&config)?;
    let challenge = challenge_of(&http, &server.base).await?;
    let salt = B256::repeat_byte(0x5a);
    rpc.erc20_approve(&payer.signer, token, escrow, 5 * PRICE).await?;
    let (tx, channel) =
        rpc.escrow_open(&payer.signer, escrow, payee.address, token, 5 * PRICE, salt, None).await?;
    let open = SessionPayload::Open(OpenPayload {
        hash: tx,
        salt,
        authorized_signer: None,
        voucher: voucher(PRICE, channel),
    });
    expect(&http, &server.base, &challenge, &open, 200, Some(PRICE)).await?;
    for n in 2..=3 {
        let v = SessionPayload::Voucher(voucher(n * PRICE, channel));
        expect(&http, &server.base, &challenge, &v, 200, Some(n * PRICE)).await?;
    }
    server.kill()?;

    // A new process on the same file: the third voucher is known and spent, so sending it
    // again buys nothing (a server that had lost it would adopt the channel from chain state,
    // where nothing is settled, and serve it again)...
    let server = Server::start(&config)?;
    let challenge = challenge_of(&http, &server.base).await?;
    let third = SessionPayload::Voucher(voucher(3 * PRICE, channel));
    expect(&http, &server.base, &challenge, &third, 402, None).await?;
    // ...a backwards one is refused, and the next one is served.
    let second = SessionPayload::Voucher(voucher(2 * PRICE, channel));
    expect(&http, &server.base, &challenge, &second, 402, None).await?;
    let fourth = SessionPayload::Voucher(voucher(4 * PRICE, channel));
    expect(&http, &server.base, &challenge, &fourth, 200, Some(4 * PRICE)).await?;
    server.kill()?;

    // And once more: the close captures all four requests, the escrow refunds the fifth.
    let server = Server::start(&config)?;
    let challenge = challenge_of(&http, &server.base).await?;
    let close = SessionPayload::Close(voucher(4 * PRICE, channel));
    expect(&http, &server.base, &challenge, &close, 200, None).await?;
    let paid = rpc.balance_of(token, payee.address).await?;
    let refunded = rpc.balance_of(token, payer.address).await?;
    if paid != U256::from(4 * PRICE) || refunded != U256::from(6 * PRICE) {
        return Err(format!("after close: payee {paid}, payer {refunded}").into());
    }
    drop(server);
    Ok(())
}

async fn challenge_of(http: &reqwest::Client, base: &str) -> Result<Challenge, Failed> {
    let res = http.get(format!("{base}/data")).send().await?;
    let values: Vec<&str> =
        res.headers().get_all("www-authenticate").iter().filter_map(|v| v.to_str().ok()).collect();
    let mut all = farebox_mpp::parse_www_authenticate(values)?;
    all.pop().ok_or_else(|| "no Payment challenge".into())
}

/// Sends `payload` and checks the status and, on success, the `spent` of the receipt.
async fn expect(
    http: &reqwest::Client,
    base: &str,
    challenge: &Challenge,
    payload: &SessionPayload,
    status: u16,
    spent: Option<u128>,
) -> Result<(), Failed> {
    let credential = Credential::new(challenge, payload.to_json()).to_authorization();
    let res = http.get(format!("{base}/data")).header("authorization", credential).send().await?;
    let got = res.status().as_u16();
    let receipt =
        res.headers().get("payment-receipt").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = res.text().await?;
    if got != status {
        return Err(
            format!("{} answered {got}, expected {status}: {body}", payload.action()).into()
        );
    }
    if let Some(spent) = spent {
        let receipt = PaymentReceipt::decode(&receipt.ok_or("no receipt")?)?;
        if receipt.extensions["spent"] != spent.to_string() {
            return Err(format!(
                "spent {} after {}, expected {spent}",
                receipt.extensions["spent"],
                payload.action()
            )
            .into());
        }
    }
    Ok(())
}
