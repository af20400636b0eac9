//! The agent's wallet as an agent runs it: `farebox wallet init`, `quote`, `pay` from the
//! wallet file within caps shared by every process, `ledger`, and the exit codes, against a
//! `farebox serve` gateway in another process paid through its dev wallet.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use farebox_mpp::evm::escrow::EscrowRpc;
use support::{Gateway, write_private};

fn farebox(wallet: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_farebox"));
    command.env("FAREBOX_WALLET", wallet).env_remove("FAREBOX_DEV_WALLET");
    command
}

/// A `farebox serve` gateway selling `/joke` for 10 sat over L402 (and MPP's lightning charge),
/// with the dev wallet's API, plus `extra` configuration.
fn gateway(extra: &str) -> Gateway {
    Gateway::spawn(&format!(
        r#"
[rails.l402]
service = "wallet-test"

[rails.mpp]
realm = "wallet-test"
lightning = true

[[routes]]
path = "/joke"
price = "10 sat"
{extra}
"#
    ))
}

/// A private wallet file in `dir` paying with `g`'s dev wallet within the given `[budget.sat]`
/// caps, plus `extra` TOML.
fn wallet_file(dir: &Path, g: &Gateway, budget: &str, extra: &str) -> PathBuf {
    let path = dir.join("wallet.toml");
    write_private(
        &path,
        &format!(
            "[lightning]\nkind = \"dev\"\nurl = \"{}\"\nmax_fee = \"1 sat\"\n\n[budget.sat]\n{budget}\n{extra}\n",
            g.wallet
        ),
    );
    path
}

fn ledger_json(wallet: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = farebox(wallet).arg("ledger").args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn json_line(out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| panic!("no JSON line at the end of: {stderr}"))
}

#[test]
fn twenty_processes_against_a_cap_of_five_payments_pay_exactly_five() {
    let g = gateway("");
    let dir = tempfile::tempdir().unwrap();
    // Each payment reserves 10 sat plus a 1 sat fee bound: 55 sat holds five at most.
    let wallet = wallet_file(dir.path(), &g, "per_request = \"20 sat\"\ntotal = \"55 sat\"", "");
    let before = g.wallet_msat();
    let children: Vec<Child> = (0..20)
        .map(|_| {
            farebox(&wallet)
                .args(["pay", &g.url("/joke"), "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    let paid = codes.iter().filter(|c| **c == Some(0)).count();
    let refused = codes.iter().filter(|c| **c == Some(3)).count();
    assert_eq!((paid, refused), (5, 15), "exit codes: {codes:?}");
    for out in outs.iter().filter(|o| o.status.code() == Some(3)) {
        assert!(out.stdout.is_empty(), "nothing served without payment");
        assert_eq!(json_line(out)["error"], "over_budget");
    }
    for out in outs.iter().filter(|o| o.status.success()) {
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the body");
        assert!(body["joke"].is_string());
        assert_eq!(json_line(out)["paid"][0]["amount"], "10 sat");
    }
    assert_eq!(g.payments(), 5, "the server settled five payments");
    assert_eq!(before - g.wallet_msat(), 50_000, "the wallet paid 5 × 10 sat");
    let entries = ledger_json(&wallet, &[]);
    assert_eq!(entries.len(), 5, "{entries:?}");
    assert!(entries.iter().all(|e| e["kind"] == "payment" && e["amount"] == "10000"));

    // A later run (a restart) still sees the 50 sat spent: nothing more is paid.
    let out = farebox(&wallet).args(["pay", &g.url("/joke")]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(g.payments(), 5);

    // The ledger filters by host and time, and exports CSV.
    let host = g.base.trim_start_matches("http://");
    assert_eq!(ledger_json(&wallet, &["--host", host, "--since", "1h"]).len(), 5);
    assert_eq!(ledger_json(&wallet, &["--host", "example.com"]).len(), 0);
    assert_eq!(ledger_json(&wallet, &["--until", "1h"]).len(), 0);
    assert_eq!(ledger_json(&wallet, &["--since", "2000-01-01T00:00:00Z"]).len(), 5);
    let out = farebox(&wallet).args(["ledger", "--csv"]).output().unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert_eq!(csv.lines().count(), 6, "a header and five rows:\n{csv}");
    assert!(csv.lines().skip(1).all(|l| l.contains(",l402,payment,bitcoin,sat,10000,")), "{csv}");
    // Bad input is its own exit code.
    let out = farebox(&wallet).args(["ledger", "--since", "yesterday"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_quote_shows_every_offer_and_the_choice_and_pays_nothing() {
    let g = gateway("");
    let dir = tempfile::tempdir().unwrap();
    let wallet = wallet_file(
        dir.path(),
        &g,
        "per_request = \"100 sat\"\ntotal = \"1000 sat\"",
        "[policy]\nprefer = [\"mpp\", \"l402\"]\n",
    );
    let before = g.wallet_msat();
    let out = farebox(&wallet).args(["quote", &g.url("/joke"), "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let quote: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(quote["status"], 402);
    let offers = quote["offers"].as_array().unwrap();
    let rails: Vec<&str> = offers.iter().map(|o| o["rail"].as_str().unwrap()).collect();
    assert!(rails.contains(&"l402") && rails.contains(&"mpp"), "{rails:?}");
    for o in offers {
        assert_eq!(o["price"]["amount"], "10000", "10 sat in msat");
        assert_eq!(o["max_fee"]["amount"], "1000");
        assert!(o["payee"].is_string(), "the invoice names its payee: {o}");
        assert!(o["buys"].is_string(), "{o}");
    }
    let chosen = &offers[quote["choice"]["index"].as_u64().unwrap() as usize];
    assert_eq!(chosen["rail"], "mpp", "the policy prefers mpp");
    let l402 = offers.iter().find(|o| o["rail"] == "l402").unwrap();
    assert!(l402["buys"].as_str().unwrap().contains("/joke"), "the token's route: {l402}");

    // The table for people says the same.
    let out = farebox(&wallet).args(["quote", &g.url("/joke")]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    assert_eq!(g.payments(), 0, "nothing paid");
    assert_eq!(g.wallet_msat(), before);
    assert!(ledger_json(&wallet, &[]).is_empty(), "the ledger is empty");

    // Over the caps, the quote says what pay would do, with pay's exit code.
    let out = farebox(&wallet).args(["quote", &g.url("/joke"), "--max", "5sat"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    // A free route asks for nothing.
    let out = farebox(&wallet).args(["quote", &g.url("/health"), "--json"]).output().unwrap();
    let quote: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (quote["status"].as_u64(), quote["offers"].as_array().unwrap().len()),
        (Some(200), 0)
    );
}

#[test]
fn pay_exit_codes_tell_an_agent_what_to_do() {
    let g = gateway("");
    let dir = tempfile::tempdir().unwrap();
    let wallet = wallet_file(dir.path(), &g, "per_request = \"100 sat\"\ntotal = \"1000 sat\"", "");
    let pay = |args: &[&str]| farebox(&wallet).arg("pay").args(args).output().unwrap();

    // --max caps one call, exactly, in the wallet's units; unknown units are refused.
    let out = pay(&[&g.url("/joke"), "--max", "10sat", "--json"]);
    assert_eq!(out.status.code(), Some(3), "10 sat plus a 1 sat fee bound is over 10 sat");
    assert_eq!(json_line(&out)["error"], "over_budget");
    assert_eq!(pay(&[&g.url("/joke"), "--max", "0.01USDC"]).status.code(), Some(2));
    assert_eq!(pay(&[&g.url("/joke"), "--max", "10 dollars"]).status.code(), Some(2));
    assert_eq!(pay(&[&g.url("/joke"), "--max", "1.0001sat"]).status.code(), Some(2));
    assert_eq!(pay(&["not a url"]).status.code(), Some(2));
    assert_eq!(g.payments(), 0);

    let out = pay(&[&g.url("/joke"), "--max", "11sat"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("offer: l402"), "what was offered: {stderr}");
    assert!(stderr.contains("chose l402"), "what was chosen: {stderr}");
    assert_eq!(g.payments(), 1);

    // A wallet for no offered rail: only an EVM key, and the route is priced in sats.
    let evm_only = dir.path().join("evm-only.toml");
    let key = dir.path().join("evm.key");
    write_private(&key, "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d");
    write_private(
        &evm_only,
        "[evm]\nkey_file = \"evm.key\"\n\n[budget.sat]\nper_request = \"100 sat\"\ntotal = \"100 sat\"\n",
    );
    let out = farebox(&evm_only).args(["pay", &g.url("/joke"), "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(json_line(&out)["error"], "no_payable_offer");

    // Hosts the wallet does not pay.
    let listed = dir.path().join("listed.toml");
    write_private(
        &listed,
        &format!(
            "[lightning]\nkind = \"dev\"\nurl = \"{}\"\n[budget.sat]\nper_request = \"100 sat\"\ntotal = \"100 sat\"\n[policy]\nhosts = [\"api.example.com\"]\n",
            g.wallet
        ),
    );
    assert_eq!(
        farebox(&listed).args(["pay", &g.url("/joke")]).output().unwrap().status.code(),
        Some(4)
    );

    // A Lightning backend that is down.
    let down = dir.path().join("down.toml");
    write_private(
        &down,
        "[lightning]\nkind = \"dev\"\nurl = \"http://127.0.0.1:9\"\n[budget.sat]\nper_request = \"100 sat\"\ntotal = \"100 sat\"\n",
    );
    let out = farebox(&down).args(["pay", &g.url("/joke"), "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(json_line(&out)["error"], "backend_down");

    // A kind not built in yet is bad input, named as such.
    let lnd = dir.path().join("lnd.toml");
    write_private(
        &lnd,
        "[lightning]\nkind = \"lnd\"\nurl = \"https://127.0.0.1:8080\"\nmacaroon_env = \"PATH\"\n",
    );
    assert_eq!(
        farebox(&lnd).args(["pay", &g.url("/joke")]).output().unwrap().status.code(),
        Some(2)
    );

    // A wallet file others can read is refused, as ssh refuses such keys.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wallet, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(pay(&[&g.url("/joke")]).status.code(), Some(2));
    assert_eq!(g.payments(), 1, "none of these paid");
}

#[test]
fn wallet_init_writes_a_private_annotated_file_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config_home = dir.path().join("config");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_farebox"))
            .args(["wallet", "init"])
            .env_remove("FAREBOX_WALLET")
            .env("XDG_CONFIG_HOME", &config_home)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = config_home.join("farebox").join("wallet.toml");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::write(&path, "# mine\n").unwrap();
    assert_eq!(run().status.code(), Some(2), "never overwritten");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
}

/// One EVM chain (anvil) with the token and the session escrow, a gateway selling `/report`
/// for 0.05 USDC over x402 and MPP (charge and session), and a wallet file with the payer's key:
/// `farebox pay` pays each rail as the policy prefers, and the ledger shows the session's
/// deposit, payment and refund with the close transaction as evidence.
#[test]
fn pay_uses_the_wallet_file_for_x402_mpp_charges_and_sessions_on_chain() {
    use farebox_evm::anvil::Anvil;
    use farebox_evm::{Address, EvmRpc, U256};
    const CHAIN_ID: u64 = 84532;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let accounts = anvil.accounts().to_vec();
    let (payer, payee, gas) = (&accounts[1], &accounts[2], &accounts[3]);
    let (token, escrow, rpc) = runtime.block_on(async {
        let token = anvil.deploy_token("USDC", "2").await.unwrap();
        anvil.mint(token, payer.address, U256::from(1_000_000u64)).await.unwrap();
        let rpc = EvmRpc::connect(anvil.url()).await.unwrap();
        let escrow = rpc
            .deploy_session_escrow(
                &accounts[0].signer,
                farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD,
            )
            .await
            .unwrap();
        (token, escrow, rpc)
    });
    let balance = |who: Address| -> u128 {
        runtime.block_on(rpc.balance_of(token, who)).unwrap().try_into().unwrap()
    };

    let keys = tempfile::tempdir().unwrap();
    let key = |name: &str, value: &str| {
        let path = keys.path().join(name);
        write_private(&path, value);
        path.display().to_string()
    };
    let (gas_key, payee_key) = (key("gas.key", gas.key), key("payee.key", payee.key));
    let g = gateway(&format!(
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

[rails.x402]
asset = "usdc"
pay_to = "{payee:#x}"
facilitator = {{ gas_key = {{ key_file = "{gas_key}" }} }}

[rails.mpp.evm_charge]
asset = "usdc"
recipient = "{payee:#x}"
gas_key = {{ key_file = "{gas_key}" }}

[rails.mpp.evm_session]
asset = "usdc"
escrow = "{escrow:#x}"
payee_key = {{ key_file = "{payee_key}" }}
suggested_deposit = "0.2 usdc"

[[routes]]
path = "/report"
price = "0.05 usdc"
rails = ["x402", "mpp"]
"#,
        rpc = anvil.url(),
        payee = payee.address,
    ));

    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("evm.key"), payer.key);
    // `mpp` alone would rank sessions with charges; listing `mpp-session` after puts them last.
    let wallet = |first: &str| {
        let path = dir.path().join(format!("{first}.toml"));
        let prefer = format!("\"{first}\", \"mpp-session\"");
        write_private(
            &path,
            &format!(
                r#"
[evm]
key_file = "evm.key"

[[evm.chains]]
chain_id = {CHAIN_ID}
rpc = "{rpc}"
escrows = ["{escrow:#x}"]
max_deposit = "0.5 usdc"

[assets.usdc]
network = "eip155:{CHAIN_ID}"
address = "{token:#x}"
symbol = "USDC"
decimals = 6

[budget.usdc]
per_request = "0.10 usdc"
total = "1 usdc"

[policy]
prefer = [{prefer}]
"#,
                rpc = anvil.url()
            ),
        );
        path
    };
    let pay = |prefer: &str| {
        let out =
            farebox(&wallet(prefer)).args(["pay", &g.url("/report"), "--json"]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{prefer}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "the report is served");
        json_line(&out)
    };

    let paid = pay("x402");
    assert_eq!(paid["paid"][0]["rail"], "x402");
    assert_eq!(balance(payee.address), 50_000);
    let paid = pay("mpp");
    assert_eq!(paid["paid"][0]["rail"], "mpp");
    assert_eq!(balance(payee.address), 100_000);
    pay("mpp-session");
    // The session was closed before pay exited: the payee captured what was signed, the rest
    // of the deposit came back.
    assert_eq!(balance(payee.address), 150_000);
    assert_eq!(balance(payer.address), 1_000_000 - 150_000);

    let entries = ledger_json(&wallet("x402"), &[]);
    let kinds: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["rail"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
                e["amount"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("x402", "payment", "50000"),
            ("mpp", "payment", "50000"),
            ("mpp", "deposit", "200000"),
            ("mpp", "session", "50000"),
            ("mpp", "refund", "150000"),
        ]
    );
    assert!(entries[0]["receipt"].is_string(), "x402's PAYMENT-RESPONSE is kept: {}", entries[0]);
    let refund = &entries[4];
    let close_tx = refund["reference"].as_str().unwrap();
    assert!(close_tx.starts_with("0x") && close_tx.len() == 66, "the close transaction: {refund}");
    // What the budget counts: two charges and what the session kept.
    let out = farebox(&wallet("x402")).args(["wallet", "budget"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("counted 0.15 USDC"), "{text}");
    drop(g);
    drop(anvil);
}
