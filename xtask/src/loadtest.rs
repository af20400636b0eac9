//! `cargo xtask bench facilitator`: `/verify` throughput of `farebox facilitator` against anvil.
//!
//! Everything shares this machine: anvil (chain id 84532, FareboxUSD deployed, the payer
//! funded), the release-built `farebox facilitator` at its default info log level, and wrk with
//! 16 connections POSTing one valid, signed `exact` payment to `/verify` for 10 s. RPC calls per
//! verify are counted from anvil's own request log, which prints the method of every JSON-RPC
//! request it serves on a line of its own: every method (`eth_call`, `eth_chainId`,
//! `eth_getBlockByNumber`, …) is counted, per method and in total, over the run.

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
