//! A paid check that fails because of the tester's wallet says so: an EVM key that holds
//! nothing of the server's token, read from the tester's own node, makes the MPP `evm` charge
//! and the session inconclusive, never a failure of the server.

mod common;

use std::sync::Arc;

use farebox_conformance::probe::builtin::{Wallets, probes};
use farebox_conformance::{Outcome, Target, Verdict};
use farebox_core::{Money, Price};
use farebox_evm::U256;
use farebox_evm::anvil::Anvil;
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::{MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfunded_key_is_blamed_rather_than_the_server() {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let accounts = anvil.accounts();
    let unfunded = accounts[5].signer.clone();
    let escrow =
        rpc.deploy_session_escrow(&accounts[0].signer, DEFAULT_CLOSE_GRACE_PERIOD).await.unwrap();
    let pay_to = accounts[2].address;
    let charge = common::usdc_charge(&rpc, &accounts[4].signer, token, pay_to);
    let session = common::usdc_session(&rpc, &accounts[2].signer, escrow, token);
    let price = Price::one(Money::new(session.asset(), 10_000));
    let store = Arc::new(MemoryStore::new());
    let mpp = MppRail::builder(
        MppConfig::new("wallet.test", b"a-wallet-cause-secret-of-32-bytes!".to_vec()),
        store.clone(),
    )
    .evm_charge(charge)
    .evm_session(session, store)
    .build()
    .unwrap();
    let paywall = Paywall::builder()
        .rail(mpp)
        .route(PricedRoute::new(None, "/data", price).unwrap())
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .layer(PaywallLayer::new(paywall));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/data", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let target = Target::new(url.parse().unwrap());
    let wallets =
        Wallets { evm: Some(unfunded.clone()), evm_rpc: Some(rpc.clone()), ..Wallets::default() };
    let report = farebox_conformance::run(&target, &probes(&wallets)).await;
    println!("{}", report.table());
    for id in ["mpp.paid", "mpp.session.open"] {
        let outcome = &report.get(id).unwrap().outcome;
        assert!(matches!(outcome, Outcome::Inconclusive(_)), "{id}: {outcome:?}");
    }
    assert!(
        report.results.iter().all(|r| !matches!(r.outcome, Outcome::Fail(_))),
        "the server is not to blame"
    );
    assert_eq!(report.verdict(false), Verdict::Incomplete);
    assert_eq!(rpc.balance_of(token, pay_to).await.unwrap(), U256::ZERO, "nothing was paid");
}
