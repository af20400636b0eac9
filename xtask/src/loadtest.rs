//! Load tests with wrk.
//!
//! `cargo xtask bench facilitator`: `/verify` throughput of `farebox facilitator` against anvil.
//!
//! Everything shares this machine: anvil (chain id 84532, FareboxUSD deployed, the payer
//! funded), the release-built `farebox facilitator` at its default info log level, and wrk with
//! 16 connections POSTing one valid, signed `exact` payment to `/verify` for 10 s. RPC calls per
//! verify are counted from anvil's own request log, which prints the method of every JSON-RPC
//! request it serves on a line of its own: every method (`eth_call`, `eth_chainId`,
//! `eth_getBlockByNumber`, …) is counted, per method and in total, over the run.
//!
//! `cargo xtask bench gateway`: `farebox serve` (built with the bench profile) against nginx, on
//! one machine, in one run (see [`run_gateway_bench`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use farebox_evm::anvil::DEV_KEYS;
use farebox_evm::contracts::{FareboxUSD, fareboxusd_deploy_code};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{B256, EvmRpc, PrivateKeySigner, U256};

use crate::{cargo, run, tools};
use farebox_mpp::evm::escrow::EscrowRpc;

const CHAIN_ID: u64 = 84_532;
const CONNECTIONS: &str = "16";
const DURATION: &str = "10s";

/// Kills a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx, stopped through its master on drop: killing the master alone leaves its workers
/// running (and spinning) after the benchmark.
struct Nginx {
    child: Guard,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let conf = self.dir.join("nginx.conf");
        let stopped = Command::new("nginx")
            .args(["-s", "stop", "-c"])
            .arg(&conf)
            .arg("-p")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if stopped {
            // The master exits once its workers have; `Guard` then finds it gone.
            let _ = self.child.0.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether a log line is a JSON-RPC method name (`eth_call`, `net_version`, `anvil_mine`…).
fn is_rpc_method(line: &str) -> bool {
    let Some((namespace, method)) = line.split_once('_') else { return false };
    !namespace.is_empty()
        && namespace.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How many requests of each JSON-RPC method anvil's log shows.
fn rpc_methods(log: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let line = line.trim();
        if is_rpc_method(line) {
            *counts.entry(line.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// `after - before`, per method, leaving out methods with no new calls.
fn served_between(
    before: &BTreeMap<String, usize>,
    after: &BTreeMap<String, usize>,
) -> BTreeMap<String, usize> {
    after
        .iter()
        .map(|(m, n)| (m.clone(), n - before.get(m).copied().unwrap_or(0).min(*n)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

pub fn run_facilitator_bench() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is needed: apt-get install wrk");
    }
    run(cargo().args(["build", "--release", "--quiet", "--package", "farebox"]))?;
    let dir = Path::new("target/loadtest");
    std::fs::create_dir_all(dir)?;
    let anvil_log = dir.join("anvil.log");
    let anvil_port = free_port()?;
    let _anvil = Guard(
        Command::new(tools::anvil_path())
            .args(["--chain-id", &CHAIN_ID.to_string(), "--port", &anvil_port.to_string()])
            .stdout(File::create(&anvil_log)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting anvil")?,
    );
    wait_for_port(anvil_port)?;
    let url = format!("http://127.0.0.1:{anvil_port}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = runtime.block_on(prepare(&url))?;
    let body_path = dir.join("verify.json");
    std::fs::write(&body_path, &body)?;

    let port = free_port()?;
    let _facilitator = Guard(
        Command::new("target/release/farebox")
            .args([
                "facilitator",
                "--rpc",
                &url,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                "memory:",
            ])
            .env("FAREBOX_FACILITATOR_KEY", DEV_KEYS[3])
            .stdout(File::create(dir.join("facilitator.log"))?)
            .stderr(File::create(dir.join("facilitator.err"))?)
            .spawn()
            .context("starting farebox facilitator")?,
    );
    wait_for_port(port)?;
    let verify_url = format!("http://127.0.0.1:{port}/verify");
    // Valid before and after the load: every request answered a valid payment (a 200 with
    // `isValid: false` would otherwise count as a success).
    expect_valid(&body_path, &verify_url)?;

    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{body}]]\n"
        ),
    )?;
    let calls_before = rpc_methods(&anvil_log);
    let out = Command::new("wrk")
        .args(["-t2", "-c", CONNECTIONS, "-d", DURATION, "--latency", "-s"])
        .arg(&script)
        .arg(&verify_url)
        .output()
        .context("running wrk")?;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let calls = served_between(&calls_before, &rpc_methods(&anvil_log));
    expect_valid(&body_path, &verify_url)?;
    println!("{report}");
    let requests: f64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .context("wrk printed no request count")?;
    let non_2xx = report.lines().any(|l| l.contains("Non-2xx"));
    println!("farebox facilitator /verify: {CONNECTIONS} connections, {DURATION}");
    let total: usize = calls.values().sum();
    println!(
        "  JSON-RPC requests per verify: {:.2} ({total} to anvil for {requests} verifies){}",
        total as f64 / requests,
        if non_2xx { "; WARNING: some answers were not 2xx" } else { "" }
    );
    for (method, n) in &calls {
        println!("    {method}: {:.2} per verify ({n})", *n as f64 / requests);
    }
    Ok(())
}

fn expect_valid(body: &Path, url: &str) -> Result<()> {
    let check = Command::new("curl")
        .args(["-s", "-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(url)
        .output()?;
    let answer = String::from_utf8_lossy(&check.stdout).into_owned();
    if !answer.contains("\"isValid\":true") {
        bail!("the prepared payment does not verify: {answer}");
    }
    Ok(())
}

/// Deploys the token, funds the payer and returns a `/verify` body with a valid payment.
async fn prepare(url: &str) -> Result<String> {
    let rpc = EvmRpc::connect(url).await?;
    let deployer = PrivateKeySigner::from_str(DEV_KEYS[0])?;
    let payer = PrivateKeySigner::from_str(DEV_KEYS[1])?;
    let pay_to = PrivateKeySigner::from_str(DEV_KEYS[2])?.address();
    let token =
        rpc.deploy(&deployer, fareboxusd_deploy_code("USDC", "2"), Duration::from_secs(30)).await?;
    let mint = FareboxUSD::mintCall { to: payer.address(), amount: U256::from(1_000_000_000u64) };
    let tx = rpc.send_call(&deployer, token, &mint).await?;
    rpc.wait_for_receipt(tx, Duration::from_secs(30)).await?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let auth = TransferWithAuthorization {
        from: payer.address(),
        to: pay_to,
        value: U256::from(10_000u64),
        validAfter: U256::from(now - 600),
        validBefore: U256::from(now + 3600),
        nonce: B256::from([7u8; 32]),
    };
    let signature = eip3009::sign(&payer, &TokenDomain::new("USDC", "2", CHAIN_ID, token), &auth);
    let requirement = format!(
        r#"{{"scheme":"exact","network":"eip155:{CHAIN_ID}","amount":"10000","asset":"{token:#x}","payTo":"{pay_to:#x}","maxTimeoutSeconds":3600,"extra":{{"name":"USDC","version":"2"}}}}"#
    );
    let sig_hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        r#"{{"x402Version":2,"paymentPayload":{{"x402Version":2,"accepted":{requirement},"payload":{{"signature":"0x{sig_hex}","authorization":{{"from":"{:#x}","to":"{pay_to:#x}","value":"10000","validAfter":"{}","validBefore":"{}","nonce":"{:#x}"}}}}}},"paymentRequirements":{requirement}}}"#,
        payer.address(),
        now - 600,
        now + 3600,
        auth.nonce
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_json_rpc_method_in_anvils_log_is_counted() {
        let dir = std::env::temp_dir().join(format!("farebox-loadtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("anvil.log");
        let before = "eth_chainId\neth_call\n";
        std::fs::write(&log, before).unwrap();
        let first = rpc_methods(&log);
        let text = format!(
            "{before}eth_call\n    eth_call\neth_getBlockByNumber\neth_blockNumber\nnet_version\n\
             \n    Transaction: 0x1234\n    Gas used: 21000\nListening on 127.0.0.1:8545\n\
             anvil_mine\n"
        );
        std::fs::write(&log, text).unwrap();
        let served = served_between(&first, &rpc_methods(&log));
        let expected: BTreeMap<String, usize> = [
            ("anvil_mine", 1),
            ("eth_blockNumber", 1),
            ("eth_call", 2),
            ("eth_getBlockByNumber", 1),
            ("net_version", 1),
        ]
        .into_iter()
        .map(|(m, n)| (m.to_string(), n))
        .collect();
        assert_eq!(served, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The gateway benchmark's connections, threads and duration per run.
const GW_CONNECTIONS: &str = "16";
const GW_THREADS: &str = "2";
const GW_DURATION: &str = "10s";
/// Pre-signed x402 payments: more than the gateway can settle in a run (each one is an on-chain
/// transfer on anvil).
const X402_PAYMENTS: usize = 4_000;
/// The MPP session route's price and the channel's deposit, in token base units: enough for
/// every request of a run.
const SESSION_PRICE: u128 = 1;
const SESSION_DEPOSIT: u128 = 10_000_000;

/// What wrk measured.
#[derive(Debug, Clone, Default)]
struct Run {
    name: &'static str,
    command: String,
    requests: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    errors: String,
    /// The gateway's CPU time (user and system, every thread) per request served, in
    /// microseconds: steadier than requests/s when wrk, nginx and the gateway share the cores.
    cpu_us_per_request: Option<f64>,
}

/// CPU time `pid` has used so far (user and system, all threads), in seconds, from
/// `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3:
    // utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Some(ticks as f64 / per_second)
}

/// `12.34us`, `1.20ms`, `2.00s` → milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|v| v * scale)
}

/// Reads wrk's `--latency` report.
fn parse_wrk(name: &'static str, command: String, report: &str) -> Run {
    let mut run = Run { name, command, ..Run::default() };
    for line in report.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Requests/sec:") {
            run.rps = rest.trim().parse().unwrap_or(0.0);
        } else if let Some((n, _)) = l.split_once(" requests in ") {
            run.requests = n.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = l.strip_prefix("50%") {
            run.p50_ms = wrk_ms(rest).unwrap_or(f64::NAN);
        } else if let Some(rest) = l.strip_prefix("99%") {
            run.p99_ms = wrk_ms(rest).unwrap_or(f64::NAN);
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if l.starts_with("Socket errors:") {
            run.errors = l.to_string();
        }
    }
    run
}

/// One wrk run against `url`, with extra arguments (`-H …`, `-s script`); a script's own
/// arguments follow `--` after the URL.
fn wrk(
    name: &'static str,
    url: &str,
    extra: &[String],
    script_args: &[&str],
    dir: &Path,
    gateway: Option<u32>,
) -> Result<Run> {
    let mut args: Vec<String> =
        ["-t", GW_THREADS, "-c", GW_CONNECTIONS, "-d", GW_DURATION, "--latency"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(extra.iter().cloned());
    args.push(url.to_string());
    if !script_args.is_empty() {
        args.push("--".into());
        args.extend(script_args.iter().map(|a| a.to_string()));
    }
    // The command line as printed: long headers shortened.
    let shown: Vec<String> = args
        .iter()
        .map(|a| if a.len() > 60 { format!("{}…", &a[..40]) } else { a.clone() })
        .collect();
    let command = format!("wrk {}", shown.join(" "));
    eprintln!("xtask: {command}");
    let before = gateway.and_then(cpu_seconds);
    let out = Command::new("wrk").args(&args).current_dir(dir).output().context("running wrk")?;
    let after = gateway.and_then(cpu_seconds);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(dir.join(format!("wrk-{name}.txt")), &report)?;
    let mut run = parse_wrk(name, command, &report);
    if let (Some(before), Some(after)) = (before, after)
        && run.requests > 0.0
    {
        run.cpu_us_per_request = Some((after - before) * 1e6 / run.requests);
    }
    Ok(run)
}

/// nginx as the trivial upstream (`return 200`) and, on a second port, as a plain reverse
/// proxy to it with upstream keep-alive.
fn nginx_config(dir: &Path, upstream: u16, proxy: u16) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-tmp/body;
    proxy_temp_path {d}/nginx-tmp/proxy;
    fastcgi_temp_path {d}/nginx-tmp/fastcgi;
    uwsgi_temp_path {d}/nginx-tmp/uwsgi;
    scgi_temp_path {d}/nginx-tmp/scgi;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{upstream};
        location / {{ default_type text/plain; return 200 "ok\n"; }}
    }}
    server {{
        listen 127.0.0.1:{proxy};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

/// Everything the paid runs send: an L402 token, pre-signed x402 payments, one MPP session
/// voucher for the whole deposit.
struct Credentials {
    l402: String,
    x402: Vec<String>,
    voucher: String,
    /// Keeps the session open until the runs are over (its wallet closes it on drop).
    sessions: farebox_mpp::client::Sessions,
}

async fn prepare_gateway(base: &str, wallet_api: &str, chain: &ChainSetup) -> Result<Credentials> {
    let http = reqwest::Client::new();
    // L402: the 402's invoice paid from the dev wallet over its HTTP API.
    let unpaid = http.get(format!("{base}/l402")).send().await?;
    let values: Vec<String> = unpaid
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let challenges = farebox_core::auth::parse_challenges(values.iter().map(String::as_str))?;
    let challenge = challenges
        .iter()
        .find_map(|c| farebox_l402::parse_challenge(c).ok())
        .context("no L402 challenge")?;
    let paid: serde_json::Value = http
        .post(format!("{wallet_api}/v1/pay"))
        .json(&serde_json::json!({ "invoice": challenge.invoice }))
        .send()
        .await?
        .json()
        .await?;
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(paid["preimage"].as_str().context("no preimage")?, &mut preimage)?;
    let l402 = farebox_l402::format_credential(&challenge.macaroon, &preimage);

    // x402: one authorization per request, each with its own nonce.
    let unpaid = http.get(format!("{base}/x402")).send().await?;
    let required =
        farebox_gateway::testing::x402_required(unpaid.headers()).map_err(anyhow::Error::msg)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    eprintln!("xtask: signing {X402_PAYMENTS} x402 payments");
    let x402 = (0..X402_PAYMENTS)
        .map(|i| {
            let mut nonce = [0u8; 32];
            nonce[24..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            farebox_gateway::testing::x402_payment(&required, &chain.payer, B256::from(nonce), now)
                .map_err(anyhow::Error::msg)
        })
        .collect::<Result<Vec<_>>>()?;

    // MPP: a session opened by farebox-client, then one voucher for the whole deposit.
    let wallet = farebox_mpp::client::MppWallet::new().evm(chain.payer.clone()).evm_sessions(
        farebox_mpp::client::session::EvmSessionPolicy::new(
            chain.rpc.clone(),
            chain.escrow,
            SESSION_DEPOSIT,
        )
        .deposit(SESSION_DEPOSIT),
    );
    let sessions = wallet.sessions();
    let usdc = farebox_core::Asset::Token(farebox_core::Token {
        network: format!("eip155:{CHAIN_ID}"),
        address: format!("{:#x}", chain.token),
        symbol: "USDC".into(),
        decimals: 6,
    });
    let budget = farebox_client::Budget::new().allow(
        farebox_core::Money::new(usdc.clone(), SESSION_DEPOSIT),
        farebox_core::Money::new(usdc, SESSION_DEPOSIT),
    )?;
    let client = farebox_client::paying_client(
        reqwest::Client::new(),
        farebox_client::PaymentMiddleware::new(budget).wallet(wallet),
    );
    let opened = client.get(format!("{base}/mpp")).send().await?;
    if opened.status() != 200 {
        bail!("opening the MPP session: {}", opened.status());
    }
    let receipt = opened
        .headers()
        .get("payment-receipt")
        .and_then(|v| v.to_str().ok())
        .context("no Payment-Receipt")?;
    let receipt = farebox_mpp::PaymentReceipt::decode(receipt)?;
    let channel = B256::from_str(&receipt.reference)?;
    let unpaid = http.get(format!("{base}/mpp")).send().await?;
    let challenge = farebox_gateway::testing::mpp_challenge(unpaid.headers(), "evm", "session")
        .map_err(anyhow::Error::msg)?;
    let voucher = farebox_gateway::testing::mpp_evm_voucher(
        &challenge,
        &chain.payer,
        CHAIN_ID,
        chain.escrow,
        channel,
        SESSION_DEPOSIT,
    );
    Ok(Credentials { l402, x402, voucher, sessions })
}

/// The chain the paid runs use.
struct ChainSetup {
    rpc: EvmRpc,
    token: farebox_evm::Address,
    escrow: farebox_evm::Address,
    payer: PrivateKeySigner,
}

async fn prepare_chain(url: &str) -> Result<ChainSetup> {
    let rpc = EvmRpc::connect(url).await?;
    let deployer = PrivateKeySigner::from_str(DEV_KEYS[0])?;
    let payer = PrivateKeySigner::from_str(DEV_KEYS[1])?;
    let token =
        rpc.deploy(&deployer, fareboxusd_deploy_code("USDC", "2"), Duration::from_secs(30)).await?;
    let mint =
        FareboxUSD::mintCall { to: payer.address(), amount: U256::from(1_000_000_000_000u64) };
    let tx = rpc.send_call(&deployer, token, &mint).await?;
    rpc.wait_for_receipt(tx, Duration::from_secs(30)).await?;
    let escrow = rpc
        .deploy_session_escrow(&deployer, farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD)
        .await?;
    Ok(ChainSetup { rpc, token, escrow, payer })
}

fn gateway_config(
    dir: &Path,
    listen: u16,
    wallet: u16,
    upstream: u16,
    anvil: &str,
    chain: &ChainSetup,
) -> Result<String> {
    let key = |name: &str, text: &str| -> Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let x402 = farebox_gateway::testing::x402_sections(
        CHAIN_ID,
        anvil,
        &format!("{:#x}", chain.token),
        &format!("{:#x}", PrivateKeySigner::from_str(DEV_KEYS[2])?.address()),
        Path::new(&key("gas.key", DEV_KEYS[3])?),
    )
    .replace("[rails.x402]\n", "[rails.x402]\nmax_timeout_secs = 3600\n");
    Ok(format!(
        r#"
[gateway]
listen = "127.0.0.1:{listen}"
shutdown_grace_secs = 2

[lightning]
backend = "dev"

[lightning.dev]
wallet_listen = "127.0.0.1:{wallet}"

[rails.l402]
service = "bench"
root_key = {{ key_file = "{root}" }}
token_lifetime_secs = 86400
{x402}
[rails.mpp]
realm = "bench"
secret = {{ key_file = "{secret}" }}
challenge_ttl_secs = 3600

[rails.mpp.evm_session]
asset = "usdc"
escrow = "{escrow:#x}"
payee_key = {{ key_file = "{payee}" }}

[upstreams.nginx]
url = "http://127.0.0.1:{upstream}"

[[routes]]
path = "/free"
free = true

[[routes]]
methods = ["GET"]
path = "/l402"
price = "1 sat"
rails = ["l402"]

[[routes]]
methods = ["GET"]
path = "/x402"
price = "0.001 usdc"
rails = ["x402"]

[[routes]]
methods = ["GET"]
path = "/mpp"
price = "0.{SESSION_PRICE:06} usdc"
rails = ["mpp"]
"#,
        root = key("root.key", &"11".repeat(32))?,
        secret = key("mpp.secret", &"22".repeat(32))?,
        payee = key("payee.key", DEV_KEYS[2])?,
        escrow = chain.escrow,
    ))
}

/// The x402 run's wrk script: each request carries the next pre-signed payment (threads take
/// every other line), and a thread stops when its payments run out.
const X402_LUA: &str = r#"
-- wrk ... -s x402.lua <url> -- <threads>
local payments = {}
local next_one = 0
local step = 1
local count = 0
function setup(thread)
  thread:set("first", count)
  count = count + 1
end
function init(args)
  for line in io.lines("x402-payments.txt") do table.insert(payments, line) end
  step = tonumber(args[1]) or 1
  next_one = first + 1
end
function request()
  local p = payments[next_one]
  if p == nil then
    wrk.thread:stop()
    p = payments[1]
  end
  next_one = next_one + step
  return wrk.format("GET", "/x402", { ["PAYMENT-SIGNATURE"] = p })
end
"#;

fn expect_status(url: &str, header: Option<(&str, &str)>, want: u16) -> Result<()> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
    if let Some((name, value)) = header {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    let out = cmd.arg(url).output()?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if got != want.to_string() {
        bail!("{url} answered {got}, not {want}");
    }
    Ok(())
}

/// `cargo xtask bench gateway`: (a) the gateway on a free route, (b) paid L402 requests
/// reusing one token, (c) paid x402 requests each with a fresh pre-signed authorization
/// (settled on anvil), (d) paid requests on one MPP EVM session (one voucher for the whole
/// deposit, each request debiting the price), (e) nginx as a plain reverse proxy; all against
/// the same trivial nginx upstream on loopback, with wrk, in one run.
///
/// `FAREBOX_BENCH_BINARY=<path>` measures that `farebox` binary instead of building one (to
/// compare two builds, each against nginx in its own run).
pub fn run_gateway_bench() -> Result<()> {
    let binary = match std::env::var_os("FAREBOX_BENCH_BINARY") {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            run(cargo().args(["build", "--profile", "bench", "--quiet", "--package", "farebox"]))?;
            tools::workspace_root().join("target/release/farebox")
        }
    };
    eprintln!("xtask: measuring {}", binary.display());
    let dir = tools::workspace_root().join("target/loadtest/gateway");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nginx-tmp"))?;
    std::fs::create_dir_all(dir.join("state"))?;

    let (upstream, proxy) = (free_port()?, free_port()?);
    std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, upstream, proxy))?;
    let _nginx = Nginx {
        child: Guard(
            Command::new("nginx")
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-p")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(File::create(dir.join("nginx.err"))?)
                .spawn()
                .context("starting nginx")?,
        ),
        dir: dir.clone(),
    };
    wait_for_port(upstream)?;
    wait_for_port(proxy)?;

    let anvil_port = free_port()?;
    let _anvil = Guard(
        Command::new(tools::anvil_path())
            .args(["--chain-id", &CHAIN_ID.to_string(), "--port", &anvil_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting anvil")?,
    );
    wait_for_port(anvil_port)?;
    let anvil_url = format!("http://127.0.0.1:{anvil_port}");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let chain = runtime.block_on(prepare_chain(&anvil_url))?;

    let (listen, wallet) = (free_port()?, free_port()?);
    let config = dir.join("farebox.toml");
    std::fs::write(&config, gateway_config(&dir, listen, wallet, upstream, &anvil_url, &chain)?)?;
    let _gateway = Guard(
        Command::new(&binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("FAREBOX_STATE_DIR", dir.join("state"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("gateway.log"))?)
            .spawn()
            .context("starting farebox serve")?,
    );
    wait_for_port(listen)?;
    wait_for_port(wallet)?;
    let base = format!("http://127.0.0.1:{listen}");
    let credentials =
        runtime.block_on(prepare_gateway(&base, &format!("http://127.0.0.1:{wallet}"), &chain))?;
    std::fs::write(dir.join("x402-payments.txt"), credentials.x402.join("\n") + "\n")?;
    std::fs::write(dir.join("x402.lua"), X402_LUA)?;

    // Every run is first checked to be served (a 402 or a 5xx must not pass for speed).
    expect_status(&format!("{base}/free"), None, 200)?;
    expect_status(&format!("{base}/l402"), Some(("Authorization", &credentials.l402)), 200)?;
    expect_status(&format!("{base}/mpp"), Some(("Authorization", &credentials.voucher)), 200)?;
    expect_status(&format!("http://127.0.0.1:{proxy}/"), None, 200)?;
    let h = |name: &str, value: &str| vec!["-H".to_string(), format!("{name}: {value}")];
    // A warm-up: connection pools, page cache, CPU frequency.
    let pid = Some(_gateway.0.id());
    let _ = wrk("warm-up", &format!("{base}/free"), &[], &[], &dir, pid)?;
    let runs = vec![
        wrk("e nginx proxy", &format!("http://127.0.0.1:{proxy}/"), &[], &[], &dir, None)?,
        wrk("a gateway, free", &format!("{base}/free"), &[], &[], &dir, pid)?,
        wrk(
            "b L402 token",
            &format!("{base}/l402"),
            &h("Authorization", &credentials.l402),
            &[],
            &dir,
            pid,
        )?,
        wrk(
            "d MPP session",
            &format!("{base}/mpp"),
            &h("Authorization", &credentials.voucher),
            &[],
            &dir,
            pid,
        )?,
        wrk(
            "c x402",
            &format!("{base}/x402"),
            &["-s".into(), "x402.lua".into()],
            &[GW_THREADS],
            &dir,
            pid,
        )?,
        wrk("upstream direct", &format!("http://127.0.0.1:{upstream}/"), &[], &[], &dir, None)?,
    ];
    let metrics = Command::new("curl")
        .arg("-s")
        .arg(format!("{base}/_farebox/metrics"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    std::fs::write(dir.join("metrics.txt"), &metrics)?;
    runtime.block_on(async {
        for closed in credentials.sessions.close_all().await {
            if let Err(e) = closed {
                eprintln!("xtask: closing the bench session: {e}");
            }
        }
    });

    println!(
        "\nfarebox gateway benchmark: wrk -t{GW_THREADS} -c{GW_CONNECTIONS} -d{GW_DURATION}, loopback, one machine\n"
    );
    println!("| run | requests/s | p50 ms | p99 ms | non-2xx | gateway CPU µs/request | command |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in &runs {
        let cpu = r.cpu_us_per_request.map_or("-".to_string(), |us| format!("{us:.1}"));
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {} | {cpu} | `{}` |",
            r.name, r.rps, r.p50_ms, r.p99_ms, r.non_2xx, r.command
        );
        if !r.errors.is_empty() {
            println!("|  | {} | | | | | |", r.errors);
        }
    }
    let find = |prefix: &str| {
        runs.iter().find(|r| r.name.starts_with(prefix)).cloned().unwrap_or_default()
    };
    let (a, b, e) = (find("a "), find("b "), find("e "));
    let ratio = b.rps / a.rps;
    let added_p99 = b.p99_ms - a.p99_ms;
    let vs_nginx = a.p50_ms / e.p50_ms;
    println!();
    println!(
        "(b) / (a) throughput: {:.0} % (target ≥ 80 %): {}",
        ratio * 100.0,
        if ratio >= 0.8 { "met" } else { "MISSED" }
    );
    println!(
        "(b) − (a) p99: {added_p99:.3} ms (target ≤ 0.5 ms): {}",
        if added_p99 <= 0.5 { "met" } else { "MISSED" }
    );
    println!(
        "(a) / (e) p50: {vs_nginx:.2}× (target ≤ 1.5×): {}",
        if vs_nginx <= 1.5 { "met" } else { "MISSED" }
    );
    if let (Some(a_cpu), Some(b_cpu)) = (a.cpu_us_per_request, b.cpu_us_per_request) {
        println!("(b) − (a) gateway CPU: {:.1} µs per request", b_cpu - a_cpu);
    }
    println!("\nwrk reports, the gateway's log and its metrics are in {}", dir.display());
    Ok(())
}
