//! `farebox conformance` as a tester runs it: secrets never on the command line or in its
//! output, and an exit status that says what the run concluded.

use std::process::Command;

fn farebox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_farebox"))
}

const KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";

#[test]
fn a_key_on_the_command_line_is_refused_without_being_printed() {
    for wallet in [
        format!("evm=0x{KEY}"),
        format!("evm={KEY}"),
        format!("evm=0x{KEY}zz"),
        format!("ethereum=0x{KEY}"),
        format!("0x{KEY}"),
    ] {
        let all = refused(&wallet);
        assert!(!all.contains(KEY) && !all.contains(&KEY[..16]), "the key was printed: {all}");
    }
}

#[test]
fn a_key_file_that_holds_no_key_is_named_but_not_printed() {
    let dir = std::env::temp_dir().join(format!("farebox-conformance-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, format!("{KEY}zz\n")).unwrap();
    let out = farebox()
        .args(["conformance", "http://127.0.0.1:9/data", "--wallet"])
        .arg(format!("evm=file:{}", file.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains(&KEY[..16]), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_url_that_does_not_answer_ends_the_run_with_the_error_status() {
    let out = farebox().args(["conformance", "http://127.0.0.1:9/data"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("ERROR"), "{stdout}");
}

#[test]
fn a_node_url_that_may_hold_an_api_key_is_refused_on_the_command_line_without_being_printed() {
    let secret = "k3y0f4h0st3dn0d3";
    for wallet in [
        format!("evm-rpc=https://base.example/v2/{secret}"),
        format!("evm-rpc=https://base.example/?apikey={secret}"),
        format!("evm-rpc=https://user:{secret}@base.example"),
    ] {
        let all = refused(&wallet);
        assert!(!all.contains(secret), "the node URL was printed: {all}");
    }
}

/// Runs the suite with `--wallet <wallet>`, which must be refused as a usage error (exit 2);
/// returns everything the command printed.
fn refused(wallet: &str) -> String {
    let out = farebox()
        .args(["conformance", "http://127.0.0.1:9/data", "--wallet", wallet])
        .output()
        .unwrap();
    let all =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{wallet}: {all}");
    all
}

/// `farebox conformance --client`, with `farebox pay` as the client under test (a command that
/// takes the URL last and writes one JSON line): every x402 and MPP scenario of the misbehaving
/// server is paid, on chain, what a correct client pays.
#[test]
fn the_client_suite_passes_farebox_pay_on_every_chain_scenario() {
    let dir = std::env::temp_dir().join(format!("farebox-client-suite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The chain, its token and the funded key are the suite's: the wallet file is written from
    // what it passes in the environment, once, readable by its owner only.
    let script = dir.join("client.sh");
    std::fs::write(
        &script,
        format!(
            r#"set -e
wallet="{dir}/wallet.toml"
if [ ! -f "$wallet" ]; then
  umask 077
  escrows=$(echo "$FAREBOX_CLIENT_ESCROWS" | sed 's/[^,][^,]*/"&"/g')
  cat > "$wallet" <<TOML
[evm]
key_env = "FAREBOX_CLIENT_KEY"
[assets.usdc]
network = "eip155:$FAREBOX_CLIENT_CHAIN_ID"
address = "$FAREBOX_CLIENT_TOKEN"
symbol = "USDC"
decimals = 6
[[evm.chains]]
chain_id = $FAREBOX_CLIENT_CHAIN_ID
rpc = "$FAREBOX_CLIENT_RPC"
escrows = [$escrows]
max_deposit = "0.05 usdc"
[budget.usdc]
per_request = "0.10 usdc"
total = "10 usdc"
TOML
fi
exec "{farebox}" pay --json --wallet-file "$wallet" "$1"
"#,
            dir = dir.display(),
            farebox = env!("CARGO_BIN_EXE_farebox"),
        ),
    )
    .unwrap();
    let report = dir.join("report.json");
    let out = farebox()
        .args(["conformance", "--client"])
        .arg(format!("sh {}", script.display()))
        .arg("--json")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 19, "{report:#}");
    let paid = |path: &str| {
        let s = scenarios.iter().find(|s| s["path"] == path).unwrap();
        s["paid"].as_str().unwrap().parse::<u128>().unwrap()
    };
    // 0.01 USDC for each scenario a correct client pays once (a session: what its channel
    // captured, the rest refunded); nothing to the redirects' other origin, to an escrow the
    // wallet does not allow, or to the pricey routes.
    for path in
        ["/x402/ok", "/x402/loop", "/x402/price-raised-on-retry", "/mpp/ok", "/mpp/session/ok"]
    {
        assert_eq!(paid(path), 10_000, "{path}: {report:#}");
    }
    for path in ["/x402/redirect", "/mpp/redirect", "/mpp/session/foreign-escrow", "/x402/pricey"] {
        assert_eq!(paid(path), 0, "{path}: {report:#}");
    }
    assert_eq!(report["spent"], "140000", "what left the key on chain: {report:#}");
    // What farebox pay said it paid is in the report, as it said it.
    let ok = scenarios.iter().find(|s| s["path"] == "/x402/ok").unwrap();
    assert_eq!(ok["client"]["line"]["status"], 200, "{ok:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--serve` serves the x402 and MPP scenarios beside the L402 ones: a client pays one with the
/// funded key it prints, and the report reads what each scenario was paid from the chain.
#[test]
fn serve_serves_the_chain_scenarios_and_reports_what_the_chain_shows() {
    use std::io::BufRead;
    // Any free ports: the test reads where each listens from what the command prints.
    let mut child = farebox()
        .args(["conformance", "--serve", "--port", "0", "--wallet-port", "0", "--chain-port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut url, mut chain) = (None, None);
    while url.is_none() || chain.is_none() {
        let line =
            rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the chain scenarios");
        assert!(!line.contains("not served"), "{line}");
        if line.starts_with("x402 and MPP scenarios") {
            url = line.split_whitespace().last().map(str::to_string);
        }
        if line.trim_start().starts_with("chain ") {
            chain = line.split_whitespace().nth(1).map(str::to_string);
        }
    }
    let (url, chain) = (url.unwrap(), chain.unwrap());
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{url}");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let report: serde_json::Value =
            reqwest::get(format!("{url}/_report")).await.unwrap().json().await.unwrap();
        let usdc = farebox_core::Asset::Token(farebox_core::Token {
            network: "eip155:84532".into(),
            address: report["token"].as_str().unwrap().into(),
            symbol: "USDC".into(),
            decimals: 6,
        });
        let key: farebox_evm::PrivateKeySigner = farebox_evm::anvil::DEV_KEYS[1].parse().unwrap();
        let budget = farebox_client::Budget::new()
            .allow(
                farebox_core::Money::new(usdc.clone(), 100_000),
                farebox_core::Money::new(usdc, 1_000_000),
            )
            .unwrap();
        let payer = farebox_client::PaymentMiddleware::new(budget)
            .wallet(farebox_x402::client::X402Wallet::new(key));
        let client = farebox_client::paying_client(reqwest::Client::new(), payer);
        let served = client.get(format!("{url}/x402/ok")).send().await.unwrap();
        assert_eq!(served.status(), 200);

        let report: serde_json::Value =
            reqwest::get(format!("{url}/_report")).await.unwrap().json().await.unwrap();
        for scenario in report["scenarios"].as_array().unwrap() {
            let paid = if scenario["path"] == "/x402/ok" { "10000" } else { "0" };
            assert_eq!(scenario["paid"], paid, "{scenario}");
        }
    });

    // Stopped as a person stops it, it takes its chain with it.
    let pid = server.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.0.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "--serve did not stop on SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let chain = chain.trim_start_matches("http://");
    assert!(std::net::TcpStream::connect(chain).is_err(), "anvil at {chain} outlived --serve");
}

/// `--client` on a rail with no client scenarios is an error, not an empty pass.
#[test]
fn the_client_suite_on_a_rail_without_scenarios_is_an_error() {
    let out =
        farebox().args(["conformance", "--client", "true", "--rail", "l402"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}
