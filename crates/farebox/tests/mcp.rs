//! `farebox mcp` driven by the official MCP TypeScript SDK (npm `@modelcontextprotocol/sdk`,
//! pinned in `tests/mcp/package.json`, installed into `target/tools/mcp/` the way `cargo xtask
//! interop` installs its peers): `tests/mcp/client.mjs` lists the tools and calls them against
//! one `farebox serve` gateway selling a route on each rail (L402 and MPP over the gateway's dev
//! Lightning node, x402 and MPP's EVM charge over USDC on anvil), and prints what it got.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use farebox_evm::anvil::Anvil;
use farebox_evm::{Address, EvmRpc, U256};
use serde_json::{Value, json};
use support::{Gateway, Process, free_port, wait_for, write_private};

const CHAIN_ID: u64 = 84532;

/// `tests/mcp/` installed with npm into `target/tools/mcp/` (again only when its package.json
/// changed), the script copied beside `node_modules/`.
fn mcp_client() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/mcp");
    let manifest = std::fs::read(source.join("package.json")).unwrap();
    let stamp = dir.join("package.json.installed");
    let installed = std::fs::read(&stamp).is_ok_and(|s| s == manifest)
        && dir.join("node_modules/.package-lock.json").is_file();
    if !installed {
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(&stamp);
        std::fs::write(dir.join("package.json"), &manifest).unwrap();
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .status()
            .expect("npm (Node.js), which `cargo xtask setup` needs for anvil too");
        assert!(status.success(), "npm install of the MCP SDK failed");
        std::fs::write(&stamp, &manifest).unwrap();
    }
    std::fs::copy(source.join("client.mjs"), dir.join("client.mjs")).unwrap();
    dir
}

/// Runs the SDK client against `farebox mcp --wallet-file wallet` with `calls`.
fn run_client(wallet: &Path, calls: Value) -> Value {
    let dir = mcp_client();
    let plan_dir = tempfile::tempdir().unwrap();
    let plan = plan_dir.path().join("plan.json");
    let plan_json = json!({
        "command": env!("CARGO_BIN_EXE_farebox"),
        "args": ["mcp", "--wallet-file", wallet],
        "calls": calls,
    });
    std::fs::write(&plan, plan_json.to_string()).unwrap();
    let out = Command::new("node")
        .arg(dir.join("client.mjs"))
        .arg(&plan)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the MCP client failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.trim().lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| panic!("client printed {stdout:?}; {stderr}"))
}

#[test]
fn an_agent_pays_every_rail_through_mcp_within_its_caps() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let accounts = anvil.accounts().to_vec();
    let (payer, payee, gas) = (&accounts[1], &accounts[2], &accounts[3]);
    let (token, rpc) = runtime.block_on(async {
        let token = anvil.deploy_token("USDC", "2").await.unwrap();
        anvil.mint(token, payer.address, U256::from(1_000_000u64)).await.unwrap();
        (token, EvmRpc::connect(anvil.url()).await.unwrap())
    });
    let balance = |who: Address| -> u128 {
        runtime.block_on(rpc.balance_of(token, who)).unwrap().try_into().unwrap()
    };

    // The gateway: one route per rail, so that one wallet pays each.
    let dir = tempfile::tempdir().unwrap();
    let gas_key = dir.path().join("gas.key");
    write_private(&gas_key, gas.key);
    let g = Gateway::spawn(&format!(
        r#"
[chains.local]
chain_id = {CHAIN_ID}
rpc = "{rpc}"

[assets.usdc]
chain = "local"
address = "{token:#x}"
symbol = "USDC"
decimals = 6
eip712_name = "USDC"
eip712_version = "2"

[rails.l402]
service = "mcp-test"

[rails.x402]
asset = "usdc"
pay_to = "{payee:#x}"
facilitator = {{ gas_key = {{ key_file = "{gas_key}" }} }}

[rails.mpp]
realm = "mcp-test"
lightning = true

[rails.mpp.evm_charge]
asset = "usdc"
recipient = "{payee:#x}"
gas_key = {{ key_file = "{gas_key}" }}

[[routes]]
path = "/joke"
price = "10 sat"
rails = ["l402"]

[[routes]]
path = "/weather/*"
price = "10 sat"
rails = ["mpp"]

[[routes]]
path = "/report"
price = "0.05 usdc"
rails = ["x402"]

[[routes]]
path = "/ticks/*"
price = "0.05 usdc"
rails = ["mpp"]
"#,
        rpc = anvil.url(),
        gas_key = gas_key.display(),
        payee = payee.address,
    ));
    let url = |path: &str| g.url(path);

    // The agent's wallet: the dev node for Lightning, the payer's key for USDC. Each sat
    // payment reserves 10 sat plus a 1 sat fee bound, so 25 sat holds two.
    write_private(&dir.path().join("evm.key"), payer.key);
    let wallet = dir.path().join("wallet.toml");
    write_private(
        &wallet,
        &format!(
            r#"
[lightning]
kind = "dev"
url = "{dev}"
max_fee = "1 sat"

[evm]
key_file = "evm.key"

[[evm.chains]]
chain_id = {CHAIN_ID}
rpc = "{rpc}"

[assets.usdc]
network = "eip155:{CHAIN_ID}"
address = "{token:#x}"
symbol = "USDC"
decimals = 6

[budget.sat]
per_request = "20 sat"
total = "25 sat"

[budget.usdc]
per_request = "0.10 usdc"
total = "1 usdc"
"#,
            dev = g.wallet,
            rpc = anvil.url(),
        ),
    );
    let sats_before = g.wallet_msat();

    let fetch = |path: &str| json!({ "name": "fetch", "arguments": { "url": url(path) } });
    let answer = run_client(
        &wallet,
        json!([
            { "name": "quote", "arguments": { "url": url("/joke") } },
            { "name": "quote", "arguments": { "url": url("/joke"), "max_price": "10 sat" } },
            { "name": "fetch", "arguments": { "url": url("/health"), "method": "GET" } },
            fetch("/joke"),
            fetch("/weather/oslo"),
            fetch("/report"),
            fetch("/ticks/FBX"),
            // Over `max_price`, then over the sat budget's total: refused before paying.
            { "name": "fetch", "arguments": { "url": url("/report"), "max_price": "0.01 USDC" } },
            fetch("/joke"),
            { "name": "budget", "arguments": {} },
        ]),
    );

    let mut tools: Vec<&str> =
        answer["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    tools.sort();
    assert_eq!(tools, ["budget", "fetch", "quote"]);
    let results = answer["results"].as_array().unwrap();
    let result = |i: usize| &results[i]["structured"];
    let is_error = |i: usize| results[i]["isError"].as_bool().unwrap();

    // The quote: the offer, the choice, nothing paid.
    assert!(answer["capabilities"]["tools"].is_object(), "{}", answer["capabilities"]);
    let quote = result(0);
    assert!(!is_error(0), "{quote}");
    assert_eq!(quote["status"], 402);
    assert_eq!(quote["code"], "ok");
    let offer = &quote["offers"][quote["choice"]["index"].as_u64().unwrap() as usize];
    assert_eq!(
        (offer["rail"].as_str(), offer["price"]["amount"].as_str()),
        (Some("l402"), Some("10000"))
    );

    // Under a max of 10 sat, the 1 sat fee bound puts the offer over: what fetch would answer.
    assert_eq!(result(1)["code"], "over_budget", "{}", result(1));
    assert!(result(1)["choice"].is_null());

    // A free route is fetched and nothing is paid.
    assert!(!is_error(2));
    assert_eq!(result(2)["status"], 200);
    assert_eq!(result(2)["paid"], json!([]));

    // Each rail paid, and served the handler's body.
    for (i, rail, amount, body) in [
        (3, "l402", "10 sat", "joke"),
        (4, "mpp", "10 sat", "temperature_c"),
        (5, "x402", "0.05 USDC", "report"),
        (6, "mpp", "0.05 USDC", "symbol"),
    ] {
        let r = result(i);
        assert!(!is_error(i), "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["body_encoding"], "text");
        let body_json: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert!(body_json.get(body).is_some(), "the handler's body: {r}");
        assert_eq!(r["headers"]["content-type"], "application/json", "{r}");
        let paid = r["paid"].as_array().unwrap();
        assert_eq!(paid.len(), 1, "{r}");
        assert_eq!(
            (paid[0]["rail"].as_str(), paid[0]["amount"].as_str()),
            (Some(rail), Some(amount))
        );
        assert!(!paid[0]["reference"].as_str().unwrap().is_empty());
    }

    // Both refusals: over budget, machine-readable, nothing paid.
    for i in [7, 8] {
        let r = result(i);
        assert!(is_error(i), "{r}");
        assert_eq!(r["code"], "over_budget", "{r}");
        assert_eq!(r["exit"], 3);
        assert_eq!(r["paid"], json!([]));
        assert!(r.get("body").is_none(), "nothing served: {r}");
    }
    assert_eq!(g.payments(), 4, "the server settled the four payments only");
    assert_eq!((g.served("/joke"), g.served("/report")), (1, 1), "the handler ran once each");
    assert_eq!(sats_before - g.wallet_msat(), 20_000, "two payments of 10 sat");
    assert_eq!(balance(payee.address), 100_000, "two payments of 0.05 USDC");
    assert_eq!(balance(payer.address), 900_000);

    // The budget: what each asset counted, what the totals have left, and the ledger's entries.
    let budget = result(9);
    assert!(!is_error(9), "{budget}");
    let asset = |symbol: &str| {
        budget["assets"].as_array().unwrap().iter().find(|a| a["symbol"] == symbol).unwrap().clone()
    };
    let (sat, usdc) = (asset("sat"), asset("USDC"));
    assert_eq!(sat["counted"]["amount"], "20000", "{sat}");
    assert_eq!(usdc["counted"]["amount"], "100000", "{usdc}");
    let total_left = |a: &Value| {
        a["caps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["window"].is_null() && c["per_host"] == false)
            .unwrap()["left"]["amount"]
            .clone()
    };
    assert_eq!(total_left(&sat), "5000");
    assert_eq!(total_left(&usdc), "900000");
    let recent: Vec<(&str, &str)> = budget["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["rail"].as_str().unwrap(), e["amount"].as_str().unwrap()))
        .collect();
    assert_eq!(recent, [("l402", "10000"), ("mpp", "10000"), ("x402", "50000"), ("mpp", "50000")]);
    // No proof (a bearer token) among them, and the wallet's key nowhere in what the agent saw.
    assert!(budget["recent"].as_array().unwrap().iter().all(|e| e.get("proof").is_none()));
    let key = payer.key.trim_start_matches("0x");
    assert!(!answer.to_string().to_lowercase().contains(&key.to_lowercase()));

    // A wallet whose Lightning node is down and that has no key for USDC: each refusal says
    // which, and nothing is paid.
    let down = dir.path().join("down.toml");
    write_private(
        &down,
        "[lightning]\nkind = \"dev\"\nurl = \"http://127.0.0.1:9\"\n\n[budget.sat]\nper_request = \"20 sat\"\ntotal = \"100 sat\"\n",
    );
    let answer = run_client(&down, json!([fetch("/joke"), fetch("/report")]));
    let codes: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["isError"], true, "{r}");
            r["structured"]["code"].as_str().unwrap()
        })
        .collect();
    assert_eq!(codes, ["backend_down", "no_payable_offer"]);
    assert_eq!(g.payments(), 4);

    // The conformance suite's misbehaving server: `/loop` answers 402 to a valid proof.
    let (port, wallet_port) = (free_port(), free_port());
    let _misbehaving = Process::spawn(Command::new(env!("CARGO_BIN_EXE_farebox")).args([
        "conformance",
        "--serve",
        "--port",
        &port.to_string(),
        "--wallet-port",
        &wallet_port.to_string(),
    ]));
    let (base, dev) =
        (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{wallet_port}"));
    wait_for(&[format!("{base}/_report"), format!("{dev}/v1/balance")]);
    let refused = dir.path().join("refused.toml");
    write_private(
        &refused,
        &format!(
            "[lightning]\nkind = \"dev\"\nurl = \"{dev}\"\nmax_fee = \"1 sat\"\n\n[budget.sat]\nper_request = \"20 sat\"\ntotal = \"100 sat\"\n"
        ),
    );
    let answer = run_client(
        &refused,
        json!([{ "name": "fetch", "arguments": { "url": format!("{base}/loop") } }]),
    );
    let r = &answer["results"][0];
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structured"]["code"], "proof_refused", "{r}");
    let paid = &r["structured"]["paid"];
    assert_eq!(paid.as_array().map(Vec::len), Some(1), "paid once, and says so: {r}");
    assert_eq!(paid[0]["amount"], "10 sat");
    drop(g);
    drop(anvil);
}
