//! `cargo xtask interop`: the official coinbase x402 SDKs and mppx (the reference MPP SDK)
//! against farebox, both ways, on anvil.
//!
//! The peers are the npm packages pinned in `xtask/interop/package.json` (the x402 SDKs) and
//! `xtask/interop/mppx/package.json` (mppx; a project of its own, as its optional peers conflict
//! with x402 v1's), installed into `target/tools/interop/` and `target/tools/interop-mppx/`
//! (never into the repository; reinstalled only when a manifest changes) and driven by the
//! small scripts beside each manifest. The chain and the farebox side: anvil (chain id
//! 84532, so x402 v1's `base-sepolia` lines up) with FareboxUSD("USDC", "2") deployed and the
//! payer (dev account #1) funded; a farebox paywall with the x402 rail (in-process
//! `LocalFacilitator` with gas key #3, `MemoryStore`, payTo = dev account #2, v1 offered too); a
//! farebox paywall with the MPP rail's `evm` charge (settling with gas key #4, recipient #2);
//! and the real `farebox facilitator` binary (gas key #5, its own store) for the peers' servers.
//!
//! | case | payer | payee | settles |
//! |---|---|---|---|
//! | v2 `@x402/fetch` → farebox server | `@x402/fetch` 2.27.0 | farebox paywall (x402) | farebox, in-process |
//! | v1 `x402-fetch` → farebox server | `x402-fetch` 1.2.0 | farebox paywall (x402) | farebox, in-process |
//! | v2 farebox client → `@x402/express` | `PaymentMiddleware` + `X402Wallet` | `@x402/express` 2.27.0 | `farebox facilitator` |
//! | v1 farebox client → `x402-express` | `PaymentMiddleware` + `X402Wallet` | `x402-express` 1.2.0 | `farebox facilitator` |
//! | mppx client → farebox MPP server | `mppx` 0.11.0 `evm.charge` | farebox paywall (MPP `evm` charge) | farebox, in-process |
//! | farebox client → mppx server | `PaymentMiddleware` + `MppWallet` | `mppx` 0.11.0 `evm.charge` | `farebox facilitator` (mppx's x402 bridge) |
//!
//! Each case passes when the request is answered 200 with the handler's body, the settlement
//! header (or MPP receipt) the payer saw carries a transaction hash whose receipt succeeded, and
//! the payee's on-chain balance grew by exactly the price. One line per case, then
//! `N passed, M failed`.
//!
//! The conformance cases run the server suite against farebox's and the peers' servers; the
//! client-suite cases run the peers' clients (`@x402/fetch` with a 0.10 USDC cap per payment,
//! `x402-fetch` with its 1 USDC cap, mppx's `evm` charge, which has no cap to set) against the
//! misbehaving server's x402 and MPP scenarios, each on a fresh anvil
//! (`farebox_conformance::clients`). Both compare what fails with the peer's findings in
//! `conformance/findings/`: a finding is recorded, not a failure; a new one, or one that no
//! longer holds, fails the case.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use axum::http::Method;
use farebox_client::{Budget, PaymentMiddleware, paying_client};
use farebox_core::{Asset, Money, Price, Token};
use farebox_evm::anvil::{Anvil, DEV_KEYS};
use farebox_evm::{Address, EvmRpc, PrivateKeySigner, ReceiptOutcome, TxHash, U256};
use farebox_mpp::client::MppWallet;
use farebox_mpp::{EvmChargeConfig, MppConfig, MppRail, PaymentReceipt};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use farebox_x402::client::X402Wallet;
use farebox_x402::facilitator::local::{ChainAccess, LocalFacilitator};
use farebox_x402::{X402Config, X402Rail};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::tools;

/// Base Sepolia's chain id: x402 v1 knows only named networks.
const CHAIN_ID: u64 = 84_532;
const NETWORK: &str = "eip155:84532";
const V1_NETWORK: &str = "base-sepolia";
/// What each case pays: 0.01 USDC.
const PRICE: u64 = 10_000;
/// What the payer starts with: 1,000 USDC.
const FUNDING: u64 = 1_000_000_000;
/// The handlers' bodies (the official servers' are in their scripts).
const FAREBOX_BODY: &str = "paid content from farebox";
const MPP_SECRET: &[u8] = b"the-farebox-interop-mpp-secret-32-bytes!";
const V2_EXPRESS_BODY: &str = "paid content from @x402/express";
const V1_EXPRESS_BODY: &str = "paid content from x402-express";

const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// One peer script, from start to its answer.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// A peer server, from start to listening.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// One paid request of the farebox client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Everything after the install.
const RUN_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Installs the peers, runs every case, prints the summary; an error when any case failed.
pub fn run() -> Result<()> {
    let started = Instant::now();
    let outcomes = match ensure_peers(&x402_peers())
        .and_then(|x402| Ok((x402, ensure_peers(&mppx_peers())?)))
    {
        Ok(peers) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let outcomes = runtime.block_on(async {
                tokio::time::timeout(RUN_TIMEOUT, cases(&peers.0, &peers.1)).await
            });
            // Ends the servers' tasks; the guards have killed the child processes already.
            runtime.shutdown_timeout(Duration::from_secs(5));
            outcomes.unwrap_or_else(|_| {
                CASES
                    .iter()
                    .map(|c| (*c, Err(anyhow::anyhow!("timed out after {RUN_TIMEOUT:?}"))))
                    .collect()
            })
        }
        Err(e) => CASES.iter().map(|c| (*c, Err(anyhow::anyhow!("setup: {e:#}")))).collect(),
    };
    let mut failed = 0;
    for (name, outcome) in &outcomes {
        match outcome {
            Ok(detail) => println!("interop: PASS {name} ({detail})"),
            Err(e) => {
                failed += 1;
                println!("interop: FAIL {name}: {e:#}");
            }
        }
    }
    eprintln!("xtask: interop took {:.1} s", started.elapsed().as_secs_f64());
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if failed > 0 {
        bail!("{failed} interop case(s) failed");
    }
    Ok(())
}

const V2_FETCH: &str = "v2 @x402/fetch → farebox server";
const V1_FETCH: &str = "v1 x402-fetch → farebox server";
const V2_EXPRESS: &str = "v2 farebox client → @x402/express (farebox facilitator)";
const V1_EXPRESS: &str = "v1 farebox client → x402-express (farebox facilitator)";
const MPPX_CLIENT: &str = "mppx client → farebox MPP evm charge";
const MPPX_SERVER: &str = "farebox client → mppx evm charge (farebox facilitator)";
const CONFORMANCE_FAREBOX_X402: &str = "conformance: farebox x402 server";
const CONFORMANCE_FAREBOX_MPP: &str = "conformance: farebox MPP server";
const CONFORMANCE_V2_EXPRESS: &str = "conformance: @x402/express (v2)";
const CONFORMANCE_V1_EXPRESS: &str = "conformance: x402-express (v1)";
const CONFORMANCE_MPPX: &str = "conformance: mppx server";
const CLIENT_SUITE_V2_FETCH: &str = "client suite: @x402/fetch (v2)";
const CLIENT_SUITE_V1_FETCH: &str = "client suite: x402-fetch (v1)";
const CLIENT_SUITE_MPPX: &str = "client suite: mppx client (evm charge)";
const CASES: [&str; 14] = [
    V2_FETCH,
    V1_FETCH,
    V2_EXPRESS,
    V1_EXPRESS,
    MPPX_CLIENT,
    MPPX_SERVER,
    CONFORMANCE_FAREBOX_X402,
    CONFORMANCE_FAREBOX_MPP,
    CONFORMANCE_V2_EXPRESS,
    CONFORMANCE_V1_EXPRESS,
    CONFORMANCE_MPPX,
    CLIENT_SUITE_V2_FETCH,
    CLIENT_SUITE_V1_FETCH,
    CLIENT_SUITE_MPPX,
];
const MPPX_BODY: &str = "paid content from mppx";

// ---------------------------------------------------------------------------------------------
// The peers: npm packages and scripts.

/// One npm project of peers: where its manifest and scripts are, where it is installed.
struct PeerSet {
    scripts: PathBuf,
    installed: PathBuf,
}

fn x402_peers() -> PeerSet {
    PeerSet {
        scripts: tools::workspace_root().join("xtask").join("interop"),
        installed: tools::tools_dir().join("interop"),
    }
}

fn mppx_peers() -> PeerSet {
    PeerSet {
        scripts: tools::workspace_root().join("xtask").join("interop").join("mppx"),
        installed: tools::tools_dir().join("interop-mppx"),
    }
}

/// Installs a peer set unless it was installed from this very package.json (its SHA-256 is
/// kept beside it), then copies the scripts next to `node_modules/` so Node resolves the
/// packages from there. Returns that directory.
fn ensure_peers(set: &PeerSet) -> Result<PathBuf> {
    let dir = set.installed.clone();
    let manifest_path = set.scripts.join("package.json");
    let manifest = std::fs::read(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let hash = hex::encode(Sha256::digest(&manifest));
    let stamp = dir.join("package.json.sha256");
    let installed = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash)
        && dir.join("node_modules/.package-lock.json").is_file();
    if !installed {
        eprintln!("xtask: installing the interop peers into {}", dir.display());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = std::fs::remove_file(&stamp);
        std::fs::write(dir.join("package.json"), &manifest)?;
        let started = Instant::now();
        run_bounded(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
            INSTALL_TIMEOUT,
        )
        .context("installing the interop peers with npm (is Node.js/npm installed?)")?;
        eprintln!("xtask: npm install took {:.1} s", started.elapsed().as_secs_f64());
        std::fs::write(&stamp, &hash)?;
    }
    for entry in std::fs::read_dir(&set.scripts)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "mjs") {
            let target = dir.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &target)
                .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
        }
    }
    Ok(dir)
}

/// Runs `cmd` to completion, killing it if it takes longer than `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let mut child =
        cmd.stdin(Stdio::null()).spawn().with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "{cmd:?} failed with {status}");
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} took longer than {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A peer process, killed when dropped (on every path: success, failure, timeout, panic).
struct PeerProcess {
    child: tokio::process::Child,
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

fn node(peers: &Path, script: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(peers.join(script))
        .args(args)
        .current_dir(peers)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The last `n` lines of `text`, for error messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a client script and returns the JSON it printed on its last line.
async fn run_client(peers: &Path, script: &str, args: &[&str]) -> Result<Value> {
    let child = node(peers, script, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting node {script} (is Node.js installed?)"))?;
    // On a timeout the future, and with it the child (kill_on_drop), is dropped.
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{script} did not finish within {SCRIPT_TIMEOUT:?}"))??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "{script} failed ({}): {}", output.status, tail(&stderr, 15));
    let last = stdout.trim().lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("{script} printed {stdout:?}"))
}

/// Starts a server script and waits until it prints `listening`.
async fn start_server(peers: &Path, script: &str, args: &[&str]) -> Result<PeerProcess> {
    let log_dir = tools::workspace_root().join("target").join("interop");
    std::fs::create_dir_all(&log_dir)?;
    let log_path = log_dir.join(format!("{script}.log"));
    let log = std::fs::File::create(&log_path)?;
    let child = node(peers, script, args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting node {script} (is Node.js installed?)"))?;
    let mut peer = PeerProcess { child };
    let stdout = peer.child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(SERVER_START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "listening" {
                return Ok(true);
            }
        }
        Ok::<_, std::io::Error>(false)
    })
    .await;
    let why = match ready {
        Ok(Ok(true)) => {
            // Keep draining its stdout so it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(peer);
        }
        Ok(Ok(false)) => "exited before listening".to_string(),
        Ok(Err(e)) => format!("reading its output: {e}"),
        Err(_) => format!("not listening after {SERVER_START_TIMEOUT:?}"),
    };
    drop(peer);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    bail!("{script} {why}: {}", tail(&log, 15))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// The farebox side.

/// The chain and the farebox pieces every case shares.
struct World {
    /// Kept alive for the run; killed on drop.
    _anvil: Anvil,
    rpc_url: String,
    rpc: EvmRpc,
    token: Address,
    payer_key: &'static str,
    payer: PrivateKeySigner,
    pay_to: Address,
    /// The farebox paywall (x402 rail, in-process facilitator) in front of `GET /paid`.
    farebox_server: SocketAddr,
    /// The farebox paywall with the MPP rail's `evm` charge in front of `GET /paid`.
    mpp_server: SocketAddr,
    /// The `farebox facilitator` process, for the peers' servers.
    facilitator: FacilitatorProcess,
}

/// A running `farebox facilitator`, killed when dropped.
struct FacilitatorProcess {
    child: std::process::Child,
    url: String,
}

impl Drop for FacilitatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FacilitatorProcess {
    /// Builds and starts `farebox facilitator` on a free port, and waits for `GET /supported`.
    async fn start(rpc_url: &str, key: &str) -> Result<Self> {
        crate::run(crate::cargo().args(["build", "--quiet", "--package", "farebox"]))?;
        let binary = tools::workspace_root().join("target").join("debug").join("farebox");
        let port = free_port()?;
        let log_dir = tools::workspace_root().join("target").join("interop");
        std::fs::create_dir_all(&log_dir)?;
        let log = std::fs::File::create(log_dir.join("farebox-facilitator.log"))?;
        let child = Command::new(&binary)
            .args(["facilitator", "--rpc", rpc_url, "--listen", &format!("127.0.0.1:{port}")])
            .args(["--store", "memory:"])
            .env("FAREBOX_FACILITATOR_KEY", key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let process = FacilitatorProcess { child, url: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            let up = http.get(format!("{}/supported", process.url)).send().await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return Ok(process);
            }
            ensure!(
                Instant::now() < deadline,
                "farebox facilitator not up after {SERVER_START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl World {
    async fn start() -> Result<World> {
        let anvil = Anvil::builder()
            .binary(tools::anvil_path())
            .chain_id(CHAIN_ID)
            .start()
            .context("starting anvil (`cargo xtask setup` installs it)")?;
        let token = anvil.deploy_token("USDC", "2").await.context("deploying FareboxUSD")?;
        let accounts = anvil.accounts();
        let (payer_key, payer) = (DEV_KEYS[1], accounts[1].signer.clone());
        let (pay_to, gas) = (accounts[2].address, accounts[3].signer.clone());
        let mpp_gas = accounts[4].signer.clone();
        anvil.mint(token, payer.address(), U256::from(FUNDING)).await.context("funding")?;
        let rpc_url = anvil.url().to_string();
        let rpc = EvmRpc::connect(&rpc_url).await?;

        let store = Arc::new(MemoryStore::new());
        let facilitator = Arc::new(LocalFacilitator::new(
            vec![ChainAccess { rpc: rpc.clone(), signer: gas }],
            store.clone(),
        ));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let farebox_server = listener.local_addr()?;
        let config = X402Config::builder()
            .network(NETWORK)
            .asset(format!("{token:#x}"))
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .pay_to(format!("{pay_to:#x}"))
            .max_timeout_seconds(60)
            .public_url(format!("http://{farebox_server}"))
            .offer_v1(true)
            .build()?;
        let price = Money::new(Asset::Token(config.token()), PRICE.into());
        let rail = X402Rail::new(config, facilitator.clone(), store);
        let paywall = Paywall::builder()
            .rail(rail)
            .route(
                PricedRoute::new(Some(Method::GET), "/paid", Price::one(price))?
                    .describe("farebox interop"),
            )
            .build()?;
        let app = axum::Router::new()
            .route("/paid", axum::routing::get(|| async { FAREBOX_BODY }))
            .layer(PaywallLayer::new(paywall));
        tokio::spawn(async move { axum::serve(listener, app).await });

        // The MPP rail's `evm` charge: the same token, settled by the rail itself.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mpp_server = listener.local_addr()?;
        let evm = EvmChargeConfig::builder(rpc.clone(), mpp_gas)
            .token(token)
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .recipient(pay_to)
            .build()?;
        let price = Money::new(evm.asset(), PRICE.into());
        let mpp = MppRail::builder(
            MppConfig::new("farebox.interop", MPP_SECRET),
            Arc::new(MemoryStore::new()),
        )
        .evm_charge(evm)
        .build()?;
        let paywall = Paywall::builder()
            .rail(mpp)
            .route(PricedRoute::new(Some(Method::GET), "/paid", Price::one(price))?)
            .build()?;
        let app = axum::Router::new()
            .route("/paid", axum::routing::get(|| async { FAREBOX_BODY }))
            .layer(PaywallLayer::new(paywall));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let facilitator = FacilitatorProcess::start(&rpc_url, DEV_KEYS[5]).await?;

        Ok(World {
            _anvil: anvil,
            rpc_url,
            rpc,
            token,
            payer_key,
            payer,
            pay_to,
            farebox_server,
            mpp_server,
            facilitator,
        })
    }

    fn token_hex(&self) -> String {
        format!("{:#x}", self.token)
    }

    fn usdc(&self) -> Asset {
        Asset::Token(Token {
            network: NETWORK.into(),
            address: self.token_hex(),
            symbol: "USDC".into(),
            decimals: 6,
        })
    }

    async fn pay_to_balance(&self) -> Result<U256> {
        Ok(self.rpc.balance_of(self.token, self.pay_to).await?)
    }

    fn budget(&self) -> Result<Budget> {
        let usdc = self.usdc();
        Ok(Budget::new().allow(
            Money::new(usdc.clone(), u128::from(PRICE) * 10),
            Money::new(usdc, u128::from(PRICE) * 100),
        )?)
    }

    /// The settlement `tx` succeeded on chain and payTo got exactly the price since `before`.
    async fn check_paid(&self, before: U256, tx: &str) -> Result<String> {
        let hash = TxHash::from_str(tx).with_context(|| format!("not a tx hash: {tx:?}"))?;
        match self.rpc.wait_for_receipt(hash, Duration::from_secs(10)).await? {
            ReceiptOutcome::Success { .. } => {}
            other => bail!("settlement tx {tx}: {other:?}"),
        }
        let after = self.pay_to_balance().await?;
        ensure!(
            after.checked_sub(before) == Some(U256::from(PRICE)),
            "payTo's balance went from {before} to {after}, expected +{PRICE}"
        );
        Ok(format!("tx {tx}, payTo +{PRICE}"))
    }
}

async fn cases(peers: &Path, mppx: &Path) -> Vec<(&'static str, Result<String>)> {
    let world = match World::start().await {
        Ok(w) => w,
        Err(e) => {
            let e = format!("{e:#}");
            return CASES.iter().map(|c| (*c, Err(anyhow::anyhow!("setup: {e}")))).collect();
        }
    };
    vec![
        (V2_FETCH, official_client(&world, peers, "v2_fetch_client.mjs", NETWORK).await),
        (V1_FETCH, official_client(&world, peers, "v1_fetch_client.mjs", V1_NETWORK).await),
        (
            V2_EXPRESS,
            official_server(
                &world,
                peers,
                "v2_express_server.mjs",
                "payment-response",
                V2_EXPRESS_BODY,
            )
            .await,
        ),
        (
            V1_EXPRESS,
            official_server(
                &world,
                peers,
                "v1_express_server.mjs",
                "x-payment-response",
                V1_EXPRESS_BODY,
            )
            .await,
        ),
        (MPPX_CLIENT, mppx_client(&world, mppx).await),
        (MPPX_SERVER, mppx_server(&world, mppx).await),
        (
            CONFORMANCE_FAREBOX_X402,
            conformance(
                &world,
                &format!("http://{}/paid", world.farebox_server),
                "x402",
                "farebox-x402",
            )
            .await,
        ),
        (
            CONFORMANCE_FAREBOX_MPP,
            conformance(&world, &format!("http://{}/paid", world.mpp_server), "mpp", "farebox-mpp")
                .await,
        ),
        (
            CONFORMANCE_V2_EXPRESS,
            conformance_of_peer(&world, peers, "v2_express_server.mjs", "x402", "x402-express-v2")
                .await,
        ),
        (
            CONFORMANCE_V1_EXPRESS,
            conformance_of_peer(&world, peers, "v1_express_server.mjs", "x402", "x402-express-v1")
                .await,
        ),
        (
            CONFORMANCE_MPPX,
            conformance_of_peer(&world, mppx, "mppx_server.mjs", "mpp", "mppx").await,
        ),
        (
            CLIENT_SUITE_V2_FETCH,
            client_suite(peers, "v2_fetch_client.mjs", "100000", "x402", "client-x402-fetch-v2")
                .await,
        ),
        (
            CLIENT_SUITE_V1_FETCH,
            client_suite(peers, "v1_fetch_client.mjs", "", "x402", "client-x402-fetch-v1").await,
        ),
        (CLIENT_SUITE_MPPX, client_suite(mppx, "mppx_client.mjs", "", "mpp", "client-mppx").await),
    ]
}

/// Runs a peer's client `script` (`extra` after its usual arguments) against the misbehaving
/// server's scenarios on `rail`, on a chain of its own, and compares the scenarios it fails
/// with its findings. The table and the JSON report go to
/// `target/interop/client-suite-<findings>.*`.
async fn client_suite(
    peers: &Path,
    script: &str,
    extra: &str,
    rail: &str,
    findings: &str,
) -> Result<String> {
    use farebox_conformance::clients::{self, CommandClient};
    use farebox_conformance::misbehave::evm::{Chain, EvmServer};
    let anvil = Anvil::builder().binary(tools::anvil_path()).chain_id(CHAIN_ID).start()?;
    let server = EvmServer::start(Arc::new(Chain::on(anvil).await?)).await?;
    let script = peers.join(script);
    let command = format!(
        "cd '{}' && node '{}' {{url}} {{rpc}} {{key}} {{token}} {extra}",
        peers.display(),
        script.display()
    );
    let client = CommandClient::new(command).timeout(SCRIPT_TIMEOUT);
    let report = clients::run(&server, &client, &[rail.to_string()]).await;
    let dir = tools::workspace_root().join("target").join("interop");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("client-suite-{findings}.txt")), report.table())?;
    let json = serde_json::to_string_pretty(&report.to_json())?;
    std::fs::write(dir.join(format!("client-suite-{findings}.json")), json)?;
    let failing = report
        .outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| {
            let paid = o.paid.map_or("unknown".into(), clients::usdc);
            (o.scenario.path.to_string(), format!("{}, paid {paid}", o.judgement.as_str()))
        })
        .collect();
    compare_with_findings(findings, failing)?;
    let failed = report.failed();
    Ok(format!(
        "{} passed, {failed} failed as known; the client paid {} USDC in all",
        report.outcomes.len() - failed,
        report.spent.map_or("an unknown amount of".into(), clients::usdc)
    ))
}

/// Compares what failed (id, detail) with `conformance/findings/<findings>.json`'s `failing`:
/// an error naming what newly fails and what no longer does, when they differ.
fn compare_with_findings(
    findings: &str,
    failing: std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let known_path = tools::workspace_root()
        .join("conformance")
        .join("findings")
        .join(format!("{findings}.json"));
    let known: Value = serde_json::from_str(
        &std::fs::read_to_string(&known_path)
            .with_context(|| format!("reading {}", known_path.display()))?,
    )?;
    let expected: std::collections::BTreeSet<&String> =
        known["failing"].as_object().map(|o| o.keys().collect()).unwrap_or_default();
    let new: Vec<String> = failing
        .iter()
        .filter(|(id, _)| !expected.contains(id))
        .map(|(id, detail)| format!("{id} ({detail})"))
        .collect();
    let fixed: Vec<&&String> = expected.iter().filter(|id| !failing.contains_key(**id)).collect();
    ensure!(
        new.is_empty() && fixed.is_empty(),
        "differs from {}: newly failing {new:?}, no longer failing {fixed:?}",
        known_path.display()
    );
    Ok(())
}

/// Starts a peer's server and runs the conformance suite against it.
async fn conformance_of_peer(
    world: &World,
    peers: &Path,
    script: &str,
    rail: &str,
    findings: &str,
) -> Result<String> {
    let port = free_port()?;
    let (token, pay_to) = (world.token_hex(), format!("{:#x}", world.pay_to));
    let args: Vec<String> = if script.starts_with("mppx") {
        let amount = format!("{}.{:06}", PRICE / 1_000_000, PRICE % 1_000_000);
        vec![
            port.to_string(),
            world.rpc_url.clone(),
            world.facilitator.url.clone(),
            token,
            pay_to,
            amount,
        ]
    } else {
        vec![port.to_string(), world.facilitator.url.clone(), token, pay_to, PRICE.to_string()]
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _server = start_server(peers, script, &args).await?;
    conformance(world, &format!("http://127.0.0.1:{port}/paid"), rail, findings).await
}

/// Runs the conformance suite for `rail` against `url`, paying with the payer's key, and
/// compares what fails with what is known to fail (`conformance/findings/<findings>.json`):
/// a new failure, or a known one that no longer fails, fails the case, so findings stay
/// true. The table and the JUnit report go to `target/interop/conformance-<findings>.*`.
async fn conformance(world: &World, url: &str, rail: &str, findings: &str) -> Result<String> {
    let mut target = farebox_conformance::Target::new(url.parse()?);
    target.rails = vec![rail.to_string()];
    let wallets = farebox_conformance::probe::builtin::Wallets {
        evm: Some(world.payer.clone()),
        evm_rpc: Some(world.rpc.clone()),
        evm_domains: vec![(CHAIN_ID, world.token, "USDC".into(), "2".into())],
        ..Default::default()
    };
    let probes = farebox_conformance::probe::builtin::probes(&wallets);
    let report = farebox_conformance::run(&target, &probes).await;
    let dir = tools::workspace_root().join("target").join("interop");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("conformance-{findings}.txt")), report.table())?;
    std::fs::write(dir.join(format!("conformance-{findings}.xml")), report.to_junit())?;
    let failing = report
        .results
        .iter()
        .filter_map(|r| match &r.outcome {
            farebox_conformance::Outcome::Fail(why) => Some((r.id.clone(), why.clone())),
            _ => None,
        })
        .collect();
    compare_with_findings(findings, failing).with_context(|| format!("conformance of {url}"))?;
    let (pass, fail, skip) = report.counts();
    Ok(format!(
        "{pass} passed, {fail} failed as known, {skip} skipped in {:.1} s",
        report.elapsed.as_secs_f64()
    ))
}

/// mppx's client pays the farebox MPP server's `evm` charge.
async fn mppx_client(world: &World, peers: &Path) -> Result<String> {
    let before = world.pay_to_balance().await?;
    let url = format!("http://{}/paid", world.mpp_server);
    let token = world.token_hex();
    let out =
        run_client(peers, "mppx_client.mjs", &[&url, &world.rpc_url, world.payer_key, &token])
            .await?;
    ensure!(out["status"] == 200, "mppx got {out}");
    ensure!(out["body"] == FAREBOX_BODY, "mppx got body {}", out["body"]);
    let receipt = &out["receipt"];
    ensure!(receipt["status"] == "success" && receipt["method"] == "evm", "receipt {receipt}");
    let tx = receipt["reference"].as_str().context("no reference in the receipt")?;
    world.check_paid(before, tx).await
}

/// The farebox client pays an mppx server that settles through `farebox facilitator`.
async fn mppx_server(world: &World, peers: &Path) -> Result<String> {
    let port = free_port()?;
    let (token, pay_to) = (world.token_hex(), format!("{:#x}", world.pay_to));
    // The route's price in display units (6 decimals), as mppx takes it.
    let amount = format!("{}.{:06}", PRICE / 1_000_000, PRICE % 1_000_000);
    let args = [
        port.to_string(),
        world.rpc_url.clone(),
        world.facilitator.url.clone(),
        token,
        pay_to,
        amount,
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _server = start_server(peers, "mppx_server.mjs", &args).await?;

    // mppx's challenges do not name the token's EIP-712 domain: the wallet is told it, as an
    // mppx client would be.
    let wallet =
        MppWallet::new().evm(world.payer.clone()).evm_domain(CHAIN_ID, world.token, "USDC", "2");
    let payer = PaymentMiddleware::new(world.budget()?).wallet(wallet);
    let ledger = payer.ledger();
    let client = paying_client(reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?, payer);
    let before = world.pay_to_balance().await?;
    let response = client
        .get(format!("http://127.0.0.1:{port}/paid"))
        .send()
        .await
        .context("the farebox client's request")?;
    let status = response.status();
    let receipt = response
        .headers()
        .get("payment-receipt")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let text = response.text().await.unwrap_or_default();
    ensure!(status == 200, "got {status}: {}", tail(&text, 5));
    ensure!(text == MPPX_BODY, "got body {text:?}");
    let receipt = PaymentReceipt::decode(&receipt.context("no Payment-Receipt")?)?;
    ensure!(receipt.method == "evm", "receipt for method {}", receipt.method);
    ensure!(ledger.entries().len() == 1, "the client's ledger has {:?}", ledger.entries());
    world.check_paid(before, &receipt.reference).await
}

/// An official client pays the farebox server; `network` is what its settlement header names.
async fn official_client(
    world: &World,
    peers: &Path,
    script: &str,
    network: &str,
) -> Result<String> {
    let before = world.pay_to_balance().await?;
    let url = format!("http://{}/paid", world.farebox_server);
    let token = world.token_hex();
    let out = run_client(peers, script, &[&url, &world.rpc_url, world.payer_key, &token]).await?;
    ensure!(out["status"] == 200, "{script} got {out}");
    ensure!(out["body"] == FAREBOX_BODY, "{script} got body {}", out["body"]);
    let settlement = &out["paymentResponse"];
    ensure!(settlement["success"] == true, "{script} saw no successful settlement: {out}");
    ensure!(
        settlement["network"] == network,
        "{script} saw settlement on {}",
        settlement["network"]
    );
    let tx = settlement["transaction"].as_str().context("no transaction in the settlement")?;
    world.check_paid(before, tx).await
}

/// The farebox client pays an official server whose facilitator is farebox's.
async fn official_server(
    world: &World,
    peers: &Path,
    script: &str,
    settlement_header: &str,
    body: &str,
) -> Result<String> {
    let port = free_port()?;
    let facilitator = world.facilitator.url.clone();
    let token = world.token_hex();
    let pay_to = format!("{:#x}", world.pay_to);
    let price = PRICE.to_string();
    let _server =
        start_server(peers, script, &[&port.to_string(), &facilitator, &token, &pay_to, &price])
            .await?;

    let payer =
        PaymentMiddleware::new(world.budget()?).wallet(X402Wallet::new(world.payer.clone()));
    let ledger = payer.ledger();
    let client = paying_client(reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?, payer);

    let before = world.pay_to_balance().await?;
    let response = client
        .get(format!("http://127.0.0.1:{port}/paid"))
        .send()
        .await
        .context("the farebox client's request")?;
    let status = response.status();
    let header = response
        .headers()
        .get(settlement_header)
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let text = response.text().await.unwrap_or_default();
    ensure!(status == 200, "got {status}: {}", tail(&text, 5));
    ensure!(text == body, "got body {text:?}");
    let header = header.with_context(|| format!("no {settlement_header} header"))?;
    let settlement: Value = farebox_x402::decode_header(&header)
        .with_context(|| format!("decoding {settlement_header}"))?;
    ensure!(settlement["success"] == true, "{settlement_header}: {settlement}");
    let tx = settlement["transaction"].as_str().context("no transaction in the settlement")?;
    ensure!(ledger.entries().len() == 1, "the client's ledger has {:?}", ledger.entries());
    world.check_paid(before, tx).await
}
