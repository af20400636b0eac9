//! EVM rails from the configuration, on a real anvil chain with the real token: x402 paid by
//! farebox-client's x402 wallet and settled by the gateway's own gas key; and a chain that does
//! not answer refuses the start at its key.

mod common;

use farebox_client::{Budget, PaymentMiddleware};
use farebox_core::{Asset, Money, Token};
use farebox_evm::U256;
use farebox_evm::anvil::Anvil;
use farebox_gateway::{Gateway, GatewayOptions};
use farebox_x402::client::X402Wallet;

const CHAIN_ID: u64 = 84532;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x402_from_the_config_is_paid_and_settled_on_chain() {
    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let accounts = anvil.accounts();
    let (payer, pay_to, gas) = (&accounts[1], &accounts[2], &accounts[3]);
    anvil.mint(token, payer.signer.address(), U256::from(1_000_000u64)).await.unwrap();

    let upstream = common::Upstream::default();
    let upstream_addr = common::serve_router(common::upstream_router(upstream.clone())).await;
    let keys = tempfile::tempdir().unwrap();
    let gas_key = keys.path().join("gas.key");
    std::fs::write(&gas_key, gas.key).unwrap();
    let text = format!(
        r#"{base}
{x402}
[[routes]]
path = "/report"
price = ["50 sat", "0.05 usdc"]
rails = ["l402", "x402"]
"#,
        base = common::base_config(upstream_addr, ""),
        x402 = farebox_gateway::testing::x402_sections(
            CHAIN_ID,
            anvil.url(),
            &format!("{token:#x}"),
            &format!("{:#x}", pay_to.address),
            &gas_key
        ),
    );
    let g = common::start_with(upstream.clone(), upstream_addr, &text).await;

    let usdc = Asset::Token(Token {
        network: format!("eip155:{CHAIN_ID}"),
        address: format!("{token:#x}"),
        symbol: "USDC".into(),
        decimals: 6,
    });
    let budget =
        Budget::new().allow(Money::new(usdc.clone(), 100_000), Money::new(usdc, 100_000)).unwrap();
    let payer_client = farebox_client::paying_client(
        reqwest::Client::new(),
        PaymentMiddleware::new(budget).wallet(X402Wallet::new(payer.signer.clone())),
    );
    let answer = payer_client.get(g.url("/report")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().contains_key("payment-response"));
    let seen = upstream.last();
    assert_eq!(seen.headers["x-farebox-rail"], "x402");
    assert_eq!(seen.headers["x-farebox-amount"], "50000");
    assert_eq!(
        seen.headers["x-farebox-asset"],
        format!("eip155:{CHAIN_ID}/erc20:{token:#x}").as_str()
    );
    assert_eq!(
        seen.headers["x-farebox-payer"].to_str().unwrap().to_ascii_lowercase(),
        format!("{:#x}", payer.address)
    );
    let rpc = anvil.rpc().await.unwrap();
    assert_eq!(rpc.balance_of(token, pay_to.address).await.unwrap(), U256::from(50_000u64));
    assert_eq!(rpc.balance_of(token, payer.address).await.unwrap(), U256::from(950_000u64));
    let ready = reqwest::get(g.url("/_farebox/readyz")).await.unwrap();
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(
        body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "chain:local" && c["ok"] == true),
        "{body}"
    );
}

#[tokio::test]
async fn a_chain_that_does_not_answer_refuses_the_start_at_its_key() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[chains.local]\nchain_id = {CHAIN_ID}\nrpc = \"http://{closed}\"\n\n[[routes]]\npath = \"/a\"\nfree = true\n",
        common::base_config(closed, "")
    );
    let config = common::write_config(dir.path(), &text).unwrap();
    let options = GatewayOptions { demo_upstream: None, state_dir: Some(dir.path().to_path_buf()) };
    let refused = Gateway::start(config, options).await.err().expect("refused");
    assert!(refused.has("chains.local"), "{refused}");
    assert!(refused.issues[0].line_col.is_some());
}
