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
fn the_demo_pays_on_every_rail_and_the_money_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let facts_file = dir.path().join("facts.json");
    let out = farebox().arg("demo").arg("--facts").arg(&facts_file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let facts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&facts_file).unwrap()).unwrap();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("a number: {v}"));

    // Every request of the paying client was served, free or paid.
    let requests = facts["requests"].as_array().unwrap();
    let paths: Vec<&str> = requests.iter().map(|r| r["url"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["/health", "/joke", "/joke", "/weather/lisbon", "/weather/oslo", "/report"],
        "{facts:#}"
    );
    assert!(requests.iter().all(|r| r["status"] == 200), "{facts:#}");

    // Lightning: two payments, 10 sat for /joke and 25 sat for /weather/* (each token reused on
    // its route's second request, not paid again), and what left the client's wallet is what
    // reached the server's node.
    let ln = &facts["lightning"];
    assert_eq!(n(&ln["payments"]), 2, "{facts:#}");
    assert_eq!(n(&ln["spent_msat"]), 35_000);
    assert_eq!(n(&ln["wallet_before_msat"]) - n(&ln["wallet_after_msat"]), 35_000);
    assert_eq!(n(&ln["server_received_msat"]), 35_000);

    // A forged proof and an over-budget price are refused.
    assert_eq!(facts["forged_proof"], 402);
    assert_eq!(facts["over_budget_refused"], true);

    // x402 on the local chain: /report paid twice (once by the demo client, once by hand), the
    // same authorization refused the second time.
    let x402 = &facts["x402"];
    assert_eq!(n(&x402["api_after"]) - n(&x402["api_before"]), 50_000, "{facts:#}");
    assert_eq!(x402["same_authorization_twice"], serde_json::json!([200, 402]));

    // The MPP session: five requests served at 1,000 base units from a 10,000 deposit; the close
    // pays the API 5,000 and refunds 5,000, as the chain shows.
    let session = &facts["session"];
    assert_eq!(session["statuses"], serde_json::json!([200, 200, 200, 200, 200]));
    assert_eq!(n(&session["captured"]), 5_000);
    assert_eq!(n(&session["refunded"]), n(&session["deposit"]) - 5_000);
    assert_eq!(n(&session["payer_before"]) - n(&session["payer_after"]), 5_000);
    assert_eq!(n(&session["api_after"]) - n(&session["api_before"]), 5_000);

    // On chain overall: what left the client is what the API holds (two /report and the session).
    let usdc = &facts["usdc"];
    assert_eq!(n(&usdc["client_before"]) - n(&usdc["client_after"]), 2 * 50_000 + 5_000);
    assert_eq!(n(&usdc["api"]), 2 * 50_000 + 5_000);

    // On the wire: the 402 carries every rail's challenge, LSAT first as Aperture sends it (for
    // clients that read only the first), then L402, x402's header and MPP's receipts.
    for header in [
        "WWW-Authenticate: LSAT macaroon=",
        "WWW-Authenticate: L402 macaroon=",
        "PAYMENT-REQUIRED: ",
        "Payment-Receipt: ",
    ] {
        assert!(stdout.contains(header), "missing {header:?} in:\n{stdout}");
    }
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
