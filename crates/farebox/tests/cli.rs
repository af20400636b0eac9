//! The `farebox` command as a person runs it: the demo's narration, and `farebox pay` against a
//! `farebox demo --serve` in another process (the dev wallet reached over its HTTP API).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Process;

fn farebox() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_farebox"));
    // No wallet file of the machine's user: `pay --wallet URL` pays with the dev wallet alone.
    command.env("FAREBOX_WALLET", "/nonexistent/farebox-test-wallet.toml");
    command
}

#[test]
fn the_demo_narrates_a_paid_exchange() {
    let out = farebox().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "← 402 Payment Required",
        "WWW-Authenticate: LSAT macaroon=",
        "WWW-Authenticate: L402 macaroon=",
        "invoice=\"lnbcrt100n1",
        "· paying 10 sat over l402",
        "· paid: preimage received",
        "← 200 OK  {\"joke\"",
        "L402-Receipt: 10 sat paid to service \"demo\", payment hash ",
        "· sending the saved l402 token up front",
        "(invalid_preimage), 3 fresh challenges",
        "refused by the client: over budget",
        "3 payments; 35 sat spent of a 500 sat budget",
        "Lightning: wallet 100000 sat → 99965 sat; server node received 35 sat",
        // x402 on the local chain: offered next to L402, settled on chain, replay refused.
        "PAYMENT-REQUIRED: eyJ4NDAyVmVyc2lvbiI6",
        "· offer: x402 0.01 USDC — x402 v2 exact",
        "· signed an EIP-3009 transferWithAuthorization",
        "PAYMENT-RESPONSE: settled on eip155:84532 in transaction 0x",
        "the API's account went from 0 USDC to 0.05 USDC",
        "→ again: 402 Payment Required (invalid_exact_evm_nonce_already_used)",
        // An MPP session: one channel, five vouchers, a close that refunds the rest on chain.
        "· offer: mpp 0.001 USDC — MPP EVM session for farebox-demo: 0.001 USDC per request from a deposit of 0.01 USDC",
        "· approving and opening a channel in the escrow",
        "Payment-Receipt: channel 0x",
        "accepted 5000 spent 5000 (base units)",
        "· on chain so far: 0.01 USDC in the escrow, nothing paid to the API yet",
        "· closed: the API captured 0.005 USDC, the escrow refunded 0.005 USDC (transaction 0x",
        "USDC on chain: client 100 USDC → 99.895 USDC; API 0.105 USDC",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // The LSAT line comes first, as Aperture sends it, for clients that read only the first.
    assert!(
        stdout.find("WWW-Authenticate: LSAT").unwrap()
            < stdout.find("WWW-Authenticate: L402").unwrap()
    );
}

#[test]
fn pay_pays_a_separately_running_server() {
    let mut child = farebox()
        .args(["demo", "--serve", "--port", "0", "--wallet-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let serving = Process(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut pay_line, mut nwc_uri) = (None, None);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.trim_start().starts_with("nostr+walletconnect://") {
            nwc_uri = Some(line.trim().to_string());
        }
        if line.trim_start().starts_with("farebox pay ") {
            pay_line = Some(line);
            break;
        }
        assert!(Instant::now() < deadline, "serve did not print its addresses");
    }
    // Keep reading what the server prints, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    let pay_line = pay_line.expect("serve printed a `farebox pay` example");
    let words: Vec<&str> = pay_line.split_whitespace().collect();
    let (url, wallet) = (words[2], words[4]);

    let out = farebox().args(["pay", url, "--wallet", wallet]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pay failed: {stderr}");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the body on stdout");
    assert!(body["joke"].is_string());
    assert!(stderr.contains("paid 10 sat over l402"), "{stderr}");

    // The same wallet over Nostr Wallet Connect, with the URI the server printed, from the
    // environment (never argv).
    let nwc_uri = nwc_uri.expect("serve printed an NWC connection URI");
    let out = farebox()
        .args(["pay", url, "--wallet", "nwc"])
        .env("FAREBOX_NWC_URI", &nwc_uri)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pay over NWC failed: {stderr}");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the body on stdout");
    assert!(body["joke"].is_string());
    assert!(!stderr.contains(&nwc_uri), "the URI is never printed by pay");
    let out = farebox().args(["pay", url, "--wallet", "nwc"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no URI set: bad input, nothing paid");

    let premium = url.replace("/joke", "/premium");
    let out = farebox()
        .args(["pay", &premium, "--wallet", wallet, "--max-sats", "100"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "over budget: {stderr}");
    assert!(out.stdout.is_empty(), "nothing served without payment");

    // Paths that some server would read as /joke are refused, not forwarded unpaid; neither can
    // a path name another host.
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    for path in ["/joke", "/./joke", "/%2e/joke", "/jo%6be", "//127.0.0.1:1/joke", "/x/../joke"] {
        let expected = if path == "/joke" { 402 } else { 400 };
        assert_eq!(raw_get(host, path), expected, "GET {path}");
    }
    assert_eq!(raw_head(host, "/joke"), 402, "HEAD is priced like GET");

    // The conformance suite against the same server, paying with the same dev wallet.
    let dir = std::env::temp_dir().join(format!("farebox-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, junit) = (dir.join("report.json"), dir.join("report.xml"));
    let out = farebox()
        .args(["conformance", url, "--wallet", &format!("lightning={wallet}")])
        .args(["--json", json.to_str().unwrap(), "--junit", junit.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    // Nothing fails, but with a Lightning wallet only the EVM checks that pay cannot run: the
    // verdict is incomplete (3), not a pass.
    assert_eq!(out.status.code(), Some(3), "conformance is incomplete:\n{table}");
    for expected in [
        "\nL402\n",
        "PASS    MUST   l402.paid",
        "PASS    MUST   x402.reject.forged",
        "\nMPP\n",
        "0 failed",
    ] {
        assert!(table.contains(expected), "missing {expected:?} in:\n{table}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["results"].as_array().unwrap().len() >= 50);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.starts_with("<?xml") && xml.contains("<testsuite name=\"l402\""), "{xml}");
    // A server that is not there fails, with a non-zero exit code.
    let out = farebox().args(["conformance", "http://127.0.0.1:9/joke"]).output().unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);

    let out = farebox().args(["pay", url, "--wallet", "http://127.0.0.1:9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "an unreachable wallet is a backend down");
    drop(serving);
}

/// The status of a request sent byte for byte (an HTTP client would normalise the path).
fn raw_request(host: &str, method: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let head = String::from_utf8_lossy(&reply);
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn raw_get(host: &str, path: &str) -> u16 {
    raw_request(host, "GET", path)
}

fn raw_head(host: &str, path: &str) -> u16 {
    raw_request(host, "HEAD", path)
}
