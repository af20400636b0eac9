//! Configuration: the annotated example loads and runs as it is, and every kind of bad
//! configuration is refused with the key path (and line and column) of what is wrong.

mod common;

use std::path::Path;

use farebox_gateway::{Config, ConfigError, Gateway, GatewayOptions};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/farebox.example.toml");

#[tokio::test]
async fn the_example_config_loads_and_serves_a_paid_route_on_embedded_defaults() {
    let config = Config::load(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.rails.names(), ["l402", "mpp"]);
    assert!(config.upstreams.is_empty(), "the example runs on the demo upstream");

    let upstream = common::Upstream::default();
    let dir = tempfile::tempdir().unwrap();
    let options = GatewayOptions {
        demo_upstream: Some(common::upstream_router(upstream.clone())),
        state_dir: Some(dir.path().to_path_buf()),
    };
    let gateway = Gateway::start(config, options).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(dir.path().join("farebox-gateway.sqlite").exists(), "SQLite in the state directory");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway.clone().serve(listener, std::future::pending()));

    let unpaid = reqwest::get(format!("http://{addr}/joke")).await.unwrap();
    assert_eq!(unpaid.status(), 402);
    let schemes: Vec<_> = unpaid
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().split(' ').next().unwrap().to_string())
        .collect();
    assert!(
        schemes.iter().any(|s| s == "L402") && schemes.iter().any(|s| s == "Payment"),
        "{schemes:?}"
    );

    let wallet = gateway.dev_wallet().await.unwrap();
    let budget = farebox_client::Budget::new()
        .allow(farebox_core::Money::sats(100), farebox_core::Money::sats(100))
        .unwrap();
    let payer = farebox_client::PaymentMiddleware::new(budget)
        .wallet(farebox_l402::client::L402Wallet::new(wallet, 0));
    let client = farebox_client::paying_client(reqwest::Client::new(), payer);
    let paid = client.get(format!("http://{addr}/joke")).send().await.unwrap();
    assert_eq!(paid.status(), 200);
    assert_eq!(upstream.last().headers["x-farebox-rail"], "l402");
    assert_eq!(gateway.dev_node().await.unwrap().balance_msat(), 10_000);
    let ready = reqwest::get(format!("http://{addr}/_farebox/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
}

fn refused(text: &str) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    refused_in(dir.path(), text)
}

fn refused_in(dir: &Path, text: &str) -> ConfigError {
    match common::write_config(dir, text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            for issue in &e.issues {
                // Every key that is in the file is located in it.
                let top = issue.key.split(['.', '[']).next().unwrap_or_default();
                if !top.is_empty() && text.contains(top) {
                    assert!(issue.line_col.is_some(), "{e}: no line and column for {}", issue.key);
                }
            }
            e
        }
    }
}

const HEAD: &str = r#"
[lightning]
backend = "dev"

[rails.l402]
service = "t"

[upstreams.api]
url = "http://127.0.0.1:9"
"#;

fn with(rest: &str) -> String {
    format!("{HEAD}\n{rest}")
}

#[test]
fn a_missing_key_file_is_refused_at_its_key() {
    let text = HEAD
        .replace("service = \"t\"", "service = \"t\"\nroot_key = { key_file = \"missing.key\" }");
    let e = refused(&format!("{text}\n[[routes]]\npath = \"/a\"\nfree = true\n"));
    assert!(e.has("rails.l402.root_key"), "{e}");
    assert!(e.to_string().contains("farebox.toml:"), "the message names the file: {e}");

    // A key file that is there and long enough is fine; a short one is not.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.key"), "ab".repeat(16)).unwrap();
    let short =
        HEAD.replace("service = \"t\"", "service = \"t\"\nroot_key = { key_file = \"root.key\" }");
    let e = refused_in(dir.path(), &format!("{short}\n[[routes]]\npath = \"/a\"\nfree = true\n"));
    assert!(e.has("rails.l402.root_key"), "{e}");
    std::fs::write(dir.path().join("root.key"), "ab".repeat(32)).unwrap();
    common::write_config(dir.path(), &format!("{short}\n[[routes]]\npath = \"/a\"\nfree = true\n"))
        .unwrap();
}

#[test]
fn a_missing_environment_secret_is_refused_at_its_key() {
    let text = HEAD.replace(
        "service = \"t\"",
        "service = \"t\"\nroot_key = { key_env = \"FAREBOX_TEST_SURELY_UNSET_VARIABLE\" }",
    );
    let e = refused(&format!("{text}\n[[routes]]\npath = \"/a\"\nfree = true\n"));
    assert!(e.has("rails.l402.root_key"), "{e}");
}

#[test]
fn secrets_are_never_inline() {
    let text = HEAD.replace("service = \"t\"", "service = \"t\"\nroot_key = \"00112233\"");
    let e = refused(&format!("{text}\n[[routes]]\npath = \"/a\"\nfree = true\n"));
    assert!(e.has("rails.l402.root_key"), "{e}");
    let text = HEAD.replace("service = \"t\"", "service = \"t\"\nkey = \"00112233\"");
    let e = refused(&format!("{text}\n[[routes]]\npath = \"/a\"\nfree = true\n"));
    assert!(e.has("rails.l402.key"), "{e}");
}

#[test]
fn an_unknown_rail_is_refused() {
    let e = refused(&with(
        "[[routes]]\npath = \"/a\"\nprice = \"1 sat\"\nrails = [\"l402\", \"paypal\"]\n",
    ));
    assert!(e.has("routes[0].rails[1]"), "{e}");
    // Known but not configured.
    let e = refused(&with("[[routes]]\npath = \"/a\"\nprice = \"1 sat\"\nrails = [\"mpp\"]\n"));
    assert!(e.has("routes[0].rails[0]"), "{e}");
    // A section for a rail that does not exist.
    let e =
        refused(&with("[rails.paypal]\nemail = \"x\"\n\n[[routes]]\npath = \"/a\"\nfree = true\n"));
    assert!(e.issues[0].key.starts_with("rails"), "{e}");
}

#[test]
fn a_route_shadowed_by_an_earlier_one_is_refused() {
    let e = refused(&with(
        "[[routes]]\npath = \"/v1/*\"\nprice = \"1 sat\"\n\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v1/weather\"\nprice = \"2 sat\"\n",
    ));
    assert!(e.has("routes[1].path"), "{e}");
    // Narrow first, then broad, is fine.
    let dir = tempfile::tempdir().unwrap();
    common::write_config(
        dir.path(),
        &with("[[routes]]\npath = \"/v1/weather\"\nprice = \"2 sat\"\n\n[[routes]]\npath = \"/v1/*\"\nprice = \"1 sat\"\n"),
    )
    .unwrap();
    // Another host, or other methods, do not shadow.
    common::write_config(
        dir.path(),
        &with("[[routes]]\nhost = \"a.example\"\npath = \"/*\"\nprice = \"1 sat\"\n\n[[routes]]\nmethods = [\"POST\"]\npath = \"/x\"\nprice = \"1 sat\"\n\n[[routes]]\npath = \"/x\"\nprice = \"2 sat\"\n"),
    )
    .unwrap();
}

#[test]
fn a_method_route_under_a_free_path_is_refused() {
    let e = refused(&with(
        "[[routes]]\npath = \"/docs/*\"\nfree = true\n\n[[routes]]\nmethods = [\"POST\"]\npath = \"/docs/upload\"\nprice = \"5 sat\"\n",
    ));
    assert!(e.has("routes[1].path"), "{e}");
}

#[test]
fn a_price_no_offered_rail_can_charge_is_refused() {
    let assets = r#"
[chains.local]
chain_id = 84532
rpc = "http://127.0.0.1:8545"

[assets.usdc]
chain = "local"
address = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
symbol = "USDC"
decimals = 6
"#;
    let e = refused(&with(&format!(
        "{assets}\n[[routes]]\npath = \"/a\"\nprice = [\"1 sat\", \"0.01 usdc\"]\n"
    )));
    assert!(e.has("routes[0].price"), "{e}");
    let e = refused(&with("[[routes]]\npath = \"/a\"\nprices = { GET = \"1 usd\" }\n"));
    assert!(e.has("routes[0].prices.GET"), "{e}");
    let e = refused(&with("[[routes]]\npath = \"/a\"\nprice = \"0 sat\"\n"));
    assert!(e.has("routes[0].price"), "{e}");
}

#[test]
fn other_mistakes_are_refused_at_their_keys() {
    let cases: &[(&str, &str)] = &[
        ("[[routes]]\npath = \"/a\"\n", "routes[0]"),
        ("[[routes]]\npath = \"/a\"\nfree = true\nprice = \"1 sat\"\n", "routes[0]"),
        ("[[routes]]\npath = \"a\"\nfree = true\n", "routes[0].path"),
        ("[[routes]]\npath = \"/a/\"\nfree = true\n", "routes[0].path"),
        (
            "[[routes]]\npath = \"/a\"\nmethods = [\"get\"]\nprice = \"1 sat\"\n",
            "routes[0].methods[0]",
        ),
        ("[[routes]]\npath = \"/a\"\nupstream = \"nope\"\nfree = true\n", "routes[0].upstream"),
        ("[[routes]]\npath = \"/a\"\nprice = \"1 sat\"\nfree_tier = true\n", "routes[0].free_tier"),
        ("[[routes]]\npath = \"/a\"\nfree = true\nsettle = \"later\"\n", "routes[0].settle"),
        (
            "[gateway]\ntrusted_proxies = [\"10.0.0.0/99\"]\n[[routes]]\npath = \"/a\"\nfree = true\n",
            "gateway.trusted_proxies[0]",
        ),
        (
            "[upstream_headers]\nrail = \"connection\"\n[[routes]]\npath = \"/a\"\nfree = true\n",
            "upstream_headers.rail",
        ),
        (
            "[free_tier]\nrequests = 0\nwindow_secs = 60\n[[routes]]\npath = \"/a\"\nfree = true\n",
            "free_tier.requests",
        ),
        ("[gateway]\nworkers = 0\n[[routes]]\npath = \"/a\"\nfree = true\n", "gateway.workers"),
        ("[gateway]\nworkers = 5000\n[[routes]]\npath = \"/a\"\nfree = true\n", "gateway.workers"),
    ];
    for (rest, key) in cases {
        let e = refused(&with(rest));
        assert!(e.has(key), "expected an issue at {key}:\n{e}");
    }
    // An https upstream, and no rail at all.
    let e = refused(
        "[upstreams.api]\nurl = \"https://api.example\"\n[[routes]]\npath = \"/a\"\nfree = true\n",
    );
    assert!(e.has("upstreams.api.url") && e.has("rails"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = refused(&with(
        "[[routes]]\npath = \"/a\"\nprice = \"1 usd\"\n\n[[routes]]\npath = \"/b\"\nrails = [\"nope\"]\nprice = \"1 sat\"\n",
    ));
    assert!(e.has("routes[0].price") && e.has("routes[1].rails[0]"), "{e}");
    assert_eq!(e.to_string().lines().count(), e.issues.len());
}

#[test]
fn routes_under_the_ops_prefix_are_refused() {
    let e = refused(&with("[[routes]]\npath = \"/_farebox/metrics\"\nfree = true\n"));
    assert!(e.has("routes[0].path"), "{e}");
    // With the ops endpoints on a listener of their own, the prefix is free to use.
    let dir = tempfile::tempdir().unwrap();
    common::write_config(
        dir.path(),
        &with("[ops]\nlisten = \"127.0.0.1:9\"\n\n[[routes]]\npath = \"/_farebox/metrics\"\nfree = true\n"),
    )
    .unwrap();
}

#[test]
fn a_payee_that_would_lose_the_money_is_refused_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let gas_key = dir.path().join("gas.key");
    std::fs::write(&gas_key, "11".repeat(32)).unwrap();
    let config_paying = |pay_to: &str| {
        let usdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
        let rpc = "http://127.0.0.1:9";
        with(&farebox_gateway::testing::x402_sections(84532, rpc, usdc, pay_to, &gas_key))
    };
    let payee = farebox_evm::Address::repeat_byte(0xab).to_checksum(None);
    // One letter of the EIP-55 checksum in the other case: a mistyped address.
    let at = payee.rfind(|c: char| c.is_ascii_alphabetic() && c != 'x').unwrap();
    let mut mistyped = payee.clone();
    let flipped = if payee.as_bytes()[at].is_ascii_uppercase() {
        payee[at..=at].to_ascii_lowercase()
    } else {
        payee[at..=at].to_ascii_uppercase()
    };
    mistyped.replace_range(at..=at, &flipped);
    for pay_to in ["0x0000000000000000000000000000000000000000", &mistyped, "alice.eth"] {
        let e = refused_in(dir.path(), &config_paying(pay_to));
        assert!(e.has("rails.x402.pay_to"), "{pay_to}: {e}");
    }
    // The same payee, checksummed or in lowercase, is accepted.
    for pay_to in [payee.clone(), payee.to_lowercase()] {
        if let Err(e) = common::write_config(dir.path(), &config_paying(&pay_to)) {
            assert!(!e.has("rails.x402.pay_to"), "{pay_to}: {e}");
        }
    }
}
