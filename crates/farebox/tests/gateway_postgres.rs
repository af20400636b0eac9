//! Three `farebox serve` processes on one PostgreSQL database (started by the test, from the
//! Debian binaries `cargo xtask test` installs) and one anvil chain: an x402 payment and an MPP
//! charge credential, each replayed concurrently against all three, are accepted exactly once
//! (and settled once on chain); a free tier of N is N across the three; and an MPP EVM session
//! used through two instances at once never serves more than its deposit.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use farebox_client::{Budget, PaymentMiddleware};
use farebox_core::{Asset, Money, Token};
use farebox_evm::anvil::Anvil;
use farebox_evm::{B256, U256};
use farebox_gateway::testing;
use farebox_mpp::client::MppWallet;
use farebox_mpp::client::session::EvmSessionPolicy;
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_store::testing::TestPostgres;

const CHAIN_ID: u64 = 84532;
/// 0.001 USDC: every paid route's price in the token.
const PRICE: u128 = 1_000;
/// What one session channel holds: five requests.
const DEPOSIT: u128 = 5 * PRICE;

/// A gateway process, killed when the test ends.
struct Instance {
    child: Child,
    base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(config: &Path, state: &Path) -> Instance {
    let port = free_port();
    std::fs::create_dir_all(state).unwrap();
    let log = std::fs::File::create(state.join("gateway.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_farebox"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("FAREBOX_STATE_DIR", state)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Instance { child, base: format!("http://127.0.0.1:{port}") }
}

async fn wait_ready(instance: &Instance, state: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/_farebox/readyz", instance.base)).await
            && r.status() == 200
        {
            return;
        }
        let log = std::fs::read_to_string(state.join("gateway.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "a gateway never became ready:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `header: value` to `path` on every instance at once; the statuses.
async fn replay(instances: &[Instance], path: &str, header: &str, value: &str) -> Vec<u16> {
    let http = reqwest::Client::new();
    let sends = instances
        .iter()
        .map(|i| http.get(format!("{}{path}", i.base)).header(header, value).send());
    futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_on_one_postgres_take_each_payment_once_and_share_the_free_tier() {
    let pg = TestPostgres::start();
    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let accounts = anvil.accounts();
    let (payer, payee, gas) = (&accounts[1], &accounts[2], &accounts[3]);
    anvil.mint(token, payer.address, U256::from(1_000_000u64)).await.unwrap();
    let escrow =
        rpc.deploy_session_escrow(&accounts[0].signer, DEFAULT_CLOSE_GRACE_PERIOD).await.unwrap();

    // Counts what the upstream served, per path.
    let served = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let served = served.clone();
        let router = axum::Router::new().fallback(move || {
            let served = served.clone();
            async move {
                served.fetch_add(1, Ordering::SeqCst);
                "served"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    };

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let text = format!(
        r#"
[gateway]
shutdown_grace_secs = 2

[store]
postgres = {{ key_file = "{pg_url}" }}

{x402}
[rails.mpp]
realm = "shared"
secret = {{ key_file = "{secret}" }}

[rails.mpp.evm_charge]
asset = "usdc"
recipient = "{payee:#x}"
gas_key = {{ key_file = "{gas_key}" }}

[rails.mpp.evm_session]
asset = "usdc"
escrow = "{escrow:#x}"
payee_key = {{ key_file = "{payee_key}" }}
suggested_deposit = "0.005 usdc"

[upstreams.api]
url = "http://{upstream}"

[free_tier]
requests = 4
window_secs = 3600

[[routes]]
methods = ["GET"]
path = "/x402"
price = "0.001 usdc"
rails = ["x402"]

[[routes]]
methods = ["GET"]
path = "/charge"
price = "0.001 usdc"
rails = ["mpp"]

[[routes]]
methods = ["GET"]
path = "/ticks/*"
price = "0.001 usdc"
rails = ["mpp"]

[[routes]]
methods = ["GET"]
path = "/free-tier"
price = "0.001 usdc"
rails = ["x402"]
free_tier = true
"#,
        pg_url = file("pg.url", pg.url()),
        x402 = testing::x402_sections(
            CHAIN_ID,
            anvil.url(),
            &format!("{token:#x}"),
            &format!("{:#x}", payee.address),
            Path::new(&file("gas.key", gas.key)),
        ),
        payee = payee.address,
        gas_key = dir.path().join("gas.key").display(),
        secret = file("mpp.secret", &"42".repeat(32)),
        payee_key = file("payee.key", payee.key),
    );
    let config = dir.path().join("farebox.toml");
    std::fs::write(&config, text).unwrap();
    let states: Vec<_> = (0..3).map(|i| dir.path().join(format!("state-{i}"))).collect();
    let instances: Vec<Instance> = states.iter().map(|s| serve(&config, s)).collect();
    for (i, s) in instances.iter().zip(&states) {
        wait_ready(i, s).await;
    }
    let balance = || async { rpc.balance_of(token, payee.address).await.unwrap() };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();

    // One x402 payment, replayed at the three at once: served once, settled once.
    let before = balance().await;
    let unpaid = reqwest::get(format!("{}/x402", instances[0].base)).await.unwrap();
    assert_eq!(unpaid.status(), 402);
    let required = testing::x402_required(unpaid.headers()).unwrap();
    let payment =
        testing::x402_payment(&required, &payer.signer, B256::from([9u8; 32]), now).unwrap();
    let statuses = replay(&instances, "/x402", "payment-signature", &payment).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 402), "{statuses:?}");
    assert_eq!(balance().await - before, U256::from(PRICE), "settled once on chain");
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // One MPP charge credential, replayed at the three at once: the same.
    let before = balance().await;
    let unpaid = reqwest::get(format!("{}/charge", instances[1].base)).await.unwrap();
    assert_eq!(unpaid.status(), 402);
    let challenge = testing::mpp_challenge(unpaid.headers(), "evm", "charge").unwrap();
    let credential = testing::mpp_evm_charge(&challenge, &payer.signer, "USDC", "2", now).unwrap();
    let statuses = replay(&instances, "/charge", "authorization", &credential).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(balance().await - before, U256::from(PRICE), "settled once on chain");
    assert_eq!(served.load(Ordering::SeqCst), 2);

    // A free tier of 4 is 4 across the three.
    let http = reqwest::Client::new();
    let mut free = 0;
    for round in 0..3 {
        for i in &instances {
            let status = http.get(format!("{}/free-tier", i.base)).send().await.unwrap().status();
            match status.as_u16() {
                200 => free += 1,
                402 => {}
                other => panic!("round {round}: {other}"),
            }
        }
    }
    assert_eq!(free, 4);
    assert_eq!(served.load(Ordering::SeqCst), 6);

    // An EVM session opened through instance 0 with a deposit of five requests (the first one
    // paid with the open), then a voucher for the whole deposit sent twelve times at once
    // through instances 0 and 2: four more requests are served, not one more.
    let usdc = Asset::Token(Token {
        network: format!("eip155:{CHAIN_ID}"),
        address: format!("{token:#x}"),
        symbol: "USDC".into(),
        decimals: 6,
    });
    let budget = Budget::new()
        .allow(Money::new(usdc.clone(), DEPOSIT), Money::new(usdc, 10 * DEPOSIT))
        .unwrap();
    let wallet = MppWallet::new()
        .evm(payer.signer.clone())
        .evm_sessions(EvmSessionPolicy::new(rpc.clone(), escrow, DEPOSIT).deposit(DEPOSIT));
    let client = farebox_client::paying_client(
        reqwest::Client::new(),
        PaymentMiddleware::new(budget).wallet(wallet),
    );
    let opened = client.get(format!("{}/ticks/0", instances[0].base)).send().await.unwrap();
    assert_eq!(opened.status(), 200);
    let receipt =
        farebox_mpp::PaymentReceipt::decode(opened.headers()["payment-receipt"].to_str().unwrap())
            .unwrap();
    let channel = B256::from_str(&receipt.reference).unwrap();
    assert_eq!(served.load(Ordering::SeqCst), 7);

    let unpaid = reqwest::get(format!("{}/ticks/1", instances[2].base)).await.unwrap();
    let challenge = testing::mpp_challenge(unpaid.headers(), "evm", "session").unwrap();
    let voucher =
        testing::mpp_evm_voucher(&challenge, &payer.signer, CHAIN_ID, escrow, channel, DEPOSIT);
    let sends = (0..12).map(|n| {
        let base = &instances[if n % 2 == 0 { 0 } else { 2 }].base;
        http.get(format!("{base}/ticks/{n}")).header("authorization", &voucher).send()
    });
    let statuses: Vec<u16> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4, "{statuses:?}");
    assert_eq!(served.load(Ordering::SeqCst), 11, "the deposit paid for five requests in all");
}
