//! A launcher for a local anvil chain, for tests and the demo.
//!
//! [`Anvil::start`] finds the binary (env `FAREBOX_ANVIL`, else
//! `<workspace>/target/tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil` as installed
//! by `cargo xtask setup`, else `anvil` on `PATH`), starts it on 127.0.0.1 on a free port chosen
//! by anvil itself (`--port 0`, read back from its "Listening on" line, so parallel test
//! processes never race for a port), and kills it when dropped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), farebox_evm::EvmError> {
//! use farebox_evm::U256;
//! use farebox_evm::anvil::Anvil;
//!
//! let anvil = Anvil::builder().chain_id(84532).start()?;
//! let token = anvil.deploy_token("USDC", "2").await?;
//! anvil.mint(token, anvil.accounts()[1].address, U256::from(1_000_000_000u64)).await?;
//! # Ok(()) }
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use tokio::sync::OnceCell;

use crate::contracts::{FareboxUSD, fareboxusd_deploy_code};
use crate::error::{EvmError, Result};
use crate::rpc::{EvmRpc, ReceiptOutcome};

/// The environment variable that names the anvil binary to use.
pub const ANVIL_ENV: &str = "FAREBOX_ANVIL";
/// How long to wait for anvil to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// anvil's well-known development keys (mnemonic `test test … junk`, m/44'/60'/0'/0/i). Public
/// knowledge: never use them on a real chain.
pub const DEV_KEYS: [&str; 10] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// One of anvil's funded development accounts.
#[derive(Debug, Clone)]
pub struct DevAccount {
    /// Its address.
    pub address: Address,
    /// Its private key, `0x`-prefixed hex.
    pub key: &'static str,
    /// A signer for it.
    pub signer: PrivateKeySigner,
}

/// anvil's ten development accounts.
pub fn dev_accounts() -> Vec<DevAccount> {
    DEV_KEYS
        .iter()
        .filter_map(|key| {
            let signer: PrivateKeySigner = key.parse().ok()?;
            Some(DevAccount { address: signer.address(), key, signer })
        })
        .collect()
}

/// How to start anvil.
#[derive(Debug, Clone, Default)]
pub struct AnvilBuilder {
    chain_id: Option<u64>,
    block_time: Option<u64>,
    port: Option<u16>,
    binary: Option<PathBuf>,
}

impl AnvilBuilder {
    /// `--chain-id` (anvil's default is 31337).
    pub fn chain_id(mut self, chain_id: u64) -> Self {
        self.chain_id = Some(chain_id);
        self
    }

    /// `--block-time` in whole seconds (default: a block per transaction).
    pub fn block_time(mut self, block_time: Duration) -> Self {
        self.block_time = Some(block_time.as_secs().max(1));
        self
    }

    /// A fixed port instead of a free one chosen by anvil.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The anvil binary to run, overriding the lookup.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Starts anvil and waits until it listens.
    pub fn start(self) -> Result<Anvil> {
        let binary = match self.binary {
            Some(b) => b,
            None => find_anvil()?,
        };
        let mut cmd = Command::new(&binary);
        cmd.args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.unwrap_or(0).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(id) = self.chain_id {
            cmd.arg("--chain-id").arg(id.to_string());
        }
        if let Some(t) = self.block_time {
            cmd.arg("--block-time").arg(t.to_string());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| EvmError::Anvil(format!("starting {}: {e}", binary.display())))?;

        // Drain stderr into a bounded buffer (for error messages) and stdout until the
        // "Listening on" line, then keep draining it so anvil never blocks on a full pipe.
        let stderr_buf = Arc::new(Mutex::new(String::new()));
        if let Some(mut stderr) = child.stderr.take() {
            let buf = Arc::clone(&stderr_buf);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 1024];
                while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                    if let Ok(mut b) = buf.lock()
                        && b.len() < 8192
                    {
                        b.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    }
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let mut sent = false;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if !sent && let Some(addr) = line.trim().strip_prefix("Listening on ") {
                                sent = tx.send(addr.to_owned()).is_ok();
                            }
                        }
                    }
                }
            });
        }
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let stderr = stderr_buf.lock().map(|s| s.clone()).unwrap_or_default();
                return Err(EvmError::Anvil(format!(
                    "{} did not start listening ({status}): {}",
                    binary.display(),
                    stderr.trim()
                )));
            }
        };
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Ok(Anvil {
            child,
            url: format!("http://{addr}"),
            port,
            chain_id: self.chain_id.unwrap_or(31_337),
            accounts: dev_accounts(),
            rpc: OnceCell::new(),
        })
    }
}

/// Where the anvil binary is: `FAREBOX_ANVIL`, then `target/tools/…` of this workspace, then
/// `anvil` on `PATH`.
pub fn find_anvil() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(ANVIL_ENV) {
        return Ok(PathBuf::from(p));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    if local.is_file() {
        return Ok(local);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("anvil");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(EvmError::Anvil(format!(
        "anvil not found: run `cargo xtask setup` (installs anvil 1.7.1 into target/tools/), \
         or set {ANVIL_ENV} to an anvil binary"
    )))
}

/// A running anvil, killed on drop.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    url: String,
    port: u16,
    chain_id: u64,
    accounts: Vec<DevAccount>,
    rpc: OnceCell<EvmRpc>,
}

impl Anvil {
    /// Starts anvil with its defaults (chain id 31337, a block per transaction).
    pub fn start() -> Result<Self> {
        AnvilBuilder::default().start()
    }

    /// Options for starting anvil.
    pub fn builder() -> AnvilBuilder {
        AnvilBuilder::default()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port anvil listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The funded development accounts; #0 deploys and mints in the helpers below.
    pub fn accounts(&self) -> &[DevAccount] {
        &self.accounts
    }

    /// A client for this chain (connected once, then shared).
    pub async fn rpc(&self) -> Result<&EvmRpc> {
        self.rpc.get_or_try_init(|| EvmRpc::connect(&self.url)).await
    }

    fn deployer(&self) -> Result<&PrivateKeySigner> {
        self.accounts
            .first()
            .map(|a| &a.signer)
            .ok_or_else(|| EvmError::Anvil("no development account".into()))
    }

    /// Deploys FareboxUSD with EIP-712 `name` / `version` from account #0 (its minter).
    pub async fn deploy_token(&self, name: &str, version: &str) -> Result<Address> {
        let rpc = self.rpc().await?;
        rpc.deploy(
            self.deployer()?,
            fareboxusd_deploy_code(name, version),
            crate::rpc::MINED_WITHIN,
        )
        .await
    }

    /// Mints `amount` base units of a FareboxUSD `token` to `to` and waits until it is mined.
    pub async fn mint(&self, token: Address, to: Address, amount: U256) -> Result<()> {
        let rpc = self.rpc().await?;
        let hash =
            rpc.send_call(self.deployer()?, token, &FareboxUSD::mintCall { to, amount }).await?;
        match rpc.wait_for_receipt(hash, crate::rpc::MINED_WITHIN).await? {
            ReceiptOutcome::Success { .. } => Ok(()),
            other => Err(EvmError::Anvil(format!("mint {hash}: {other:?}"))),
        }
    }

    /// `evm_setNextBlockTimestamp`: the next mined block has this timestamp.
    pub async fn set_next_block_timestamp(&self, timestamp: u64) -> Result<()> {
        let _: serde_json::Value =
            self.rpc().await?.request("evm_setNextBlockTimestamp", (timestamp,)).await?;
        Ok(())
    }

    /// `evm_mine`: mines one block.
    pub async fn mine(&self) -> Result<()> {
        let _: serde_json::Value = self.rpc().await?.request("evm_mine", ()).await?;
        Ok(())
    }

    /// `evm_increaseTime`: moves the clock of the next blocks forward by `seconds`.
    pub async fn increase_time(&self, seconds: u64) -> Result<()> {
        let _: serde_json::Value =
            self.rpc().await?.request("evm_increaseTime", (seconds,)).await?;
        Ok(())
    }

    /// Stops anvil now (also done on drop).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The methods a [`counting_proxy`] has forwarded, in order.
pub type SeenMethods = Arc<Mutex<Vec<String>>>;

/// Starts an HTTP/1.1 JSON-RPC proxy on loopback that forwards every call to `upstream` (e.g.
/// [`Anvil::url`]) and records its method: for tests that count what an operation costs in RPC
/// calls. Returns the proxy's URL and the methods seen; it runs until the runtime ends.
pub async fn counting_proxy(upstream: &str) -> Result<(String, SeenMethods)> {
    let methods = SeenMethods::default();
    let url = start_proxy(upstream, methods.clone(), NodeSwitch::default()).await?;
    Ok((url, methods))
}

/// Starts a JSON-RPC proxy to `upstream` (as [`counting_proxy`]) that the returned
/// [`NodeSwitch`] can cut off: for tests of what a service does when its node is unreachable.
pub async fn switchable_proxy(upstream: &str) -> Result<(String, NodeSwitch)> {
    let switch = NodeSwitch::default();
    let url = start_proxy(upstream, SeenMethods::default(), switch.clone()).await?;
    Ok((url, switch))
}

/// Whether a [`switchable_proxy`] reaches its node. Cut off, the proxy closes every connection
/// without an answer, as a node that went away does; nothing reaches the node.
#[derive(Debug, Clone)]
pub struct NodeSwitch(Arc<std::sync::atomic::AtomicBool>);

impl Default for NodeSwitch {
    fn default() -> Self {
        NodeSwitch(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }
}

impl NodeSwitch {
    /// Reaches the node (`true`) or cuts it off.
    pub fn set_up(&self, up: bool) {
        self.0.store(up, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the node is reachable through the proxy.
    pub fn is_up(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn start_proxy(upstream: &str, seen: SeenMethods, switch: NodeSwitch) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| EvmError::Anvil(format!("binding the proxy: {e}")))?;
    let address =
        listener.local_addr().map_err(|e| EvmError::Anvil(format!("the proxy's address: {e}")))?;
    let (upstream, http) = (upstream.to_owned(), reqwest::Client::new());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (seen, http, upstream) = (seen.clone(), http.clone(), upstream.clone());
            let switch = switch.clone();
            tokio::spawn(
                async move { proxy_connection(socket, seen, http, upstream, switch).await },
            );
        }
    });
    Ok(format!("http://{address}"))
}

/// Serves one keep-alive connection of a proxy until it ends, fails, or is cut off.
async fn proxy_connection(
    socket: tokio::net::TcpStream,
    seen: SeenMethods,
    http: reqwest::Client,
    upstream: String,
    switch: NodeSwitch,
) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = read_some(&socket, &mut chunk).await.ok().filter(|n| *n > 0)?;
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = read_some(&socket, &mut chunk).await.ok().filter(|n| *n > 0)?;
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        if !switch.is_up() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let calls = json.as_array().cloned().unwrap_or_else(|| vec![json]);
        let methods = calls.iter().map(|c| c["method"].as_str().unwrap_or_default().to_string());
        seen.lock().unwrap_or_else(|e| e.into_inner()).extend(methods);
        let answer = http
            .post(&upstream)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        write_all(&socket, head.as_bytes()).await.ok()?;
        write_all(&socket, &answer).await.ok()?;
    }
}

/// Reads what is there (0 at end of stream).
async fn read_some(socket: &tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn write_all(socket: &tokio::net::TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        socket.writable().await?;
        match socket.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
