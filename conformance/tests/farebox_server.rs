//! farebox's own server passes its own suite, every rail on one route: L402 and MPP charges on
//! the embedded Lightning dev network, x402 and the MPP `evm` charge on anvil, with wallets for
//! the paid checks. Every MUST and SHOULD passes; what is skipped is said and expected.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use farebox_conformance::probe::builtin::{Wallets, probes};
use farebox_conformance::{Outcome, Target};
use farebox_core::{Asset, Money, Price};
use farebox_evm::U256;
use farebox_evm::anvil::Anvil;
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::{MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use farebox_x402::facilitator::local::{ChainAccess, LocalFacilitator};
use farebox_x402::{X402Config, X402Rail};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farebox_passes_every_check_of_every_rail() {
    let network = DevNetwork::new();
    let server_node = Arc::new(DevNode::random(&network, 0));
    let wallet_node = Arc::new(DevNode::random(&network, 10_000_000));
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let accounts = anvil.accounts();
    let (payer, pay_to) = (accounts[1].signer.clone(), accounts[2].address);
    let escrow =
        rpc.deploy_session_escrow(&accounts[0].signer, DEFAULT_CLOSE_GRACE_PERIOD).await.unwrap();
    anvil.mint(token, payer.address(), U256::from(10_000_000u64)).await.unwrap();
    let store = Arc::new(MemoryStore::new());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let l402 = L402Rail::new(
        L402Config::new("conformance", Arc::new(DerivedRootKeys::new(&[7; 32]).unwrap())),
        server_node.clone(),
    )
    .unwrap();
    let facilitator = LocalFacilitator::new(
        vec![ChainAccess { rpc: rpc.clone(), signer: accounts[3].signer.clone() }],
        store.clone(),
    );
    let x402_config = X402Config::builder()
        .network(farebox_evm::network::caip2(anvil.chain_id()))
        .asset(format!("{token:#x}"))
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .pay_to(format!("{pay_to:#x}"))
        .max_timeout_seconds(60)
        .public_url(base.clone())
        .offer_v1(false)
        .build()
        .unwrap();
    let usdc = Asset::Token(x402_config.token());
    let x402 = X402Rail::new(x402_config, Arc::new(facilitator), store.clone());
    let evm = common::usdc_charge(&rpc, &accounts[4].signer, token, pay_to);
    let session = common::usdc_session(&rpc, &accounts[2].signer, escrow, token);
    let mpp = MppRail::builder(
        MppConfig::new("conformance.test", b"a-conformance-secret-of-32-bytes!!".to_vec()),
        store.clone(),
    )
    .lightning(server_node.clone())
    .evm_charge(evm)
    .evm_session(session, store)
    .build()
    .unwrap();
    let price = Price::any_of([Money::sats(10), Money::new(usdc, 10_000)]).unwrap();
    let paywall = Paywall::builder()
        .rail(l402)
        .rail(x402)
        .rail(mpp)
        .route(PricedRoute::new(None, "/data", price.clone()).unwrap())
        .route(PricedRoute::new(None, "/other", price).unwrap())
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .route("/other", axum::routing::get(|| async { "other data" }))
        .layer(PaywallLayer::new(paywall));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut target = Target::new(format!("{base}/data").parse().unwrap());
    target.other_url = Some(format!("{base}/other").parse().unwrap());
    let wallets = Wallets {
        lightning: Some(wallet_node.clone()),
        evm: Some(payer.clone()),
        evm_rpc: Some(rpc.clone()),
        ..Wallets::default()
    };
    let started = Instant::now();
    let report = farebox_conformance::run(&target, &probes(&wallets)).await;
    let took = started.elapsed();
    println!("{}", report.table());

    let failures: Vec<String> = report
        .results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Fail(why) => Some(format!("{}: {why}", r.id)),
            _ => None,
        })
        .collect();
    assert!(failures.is_empty(), "farebox fails its own suite:\n{}", failures.join("\n"));
    // Skipped: only what has no meaning for a rail, never for want of a wallet.
    for r in &report.results {
        if let Outcome::Skip(why) = &r.outcome {
            assert!(!why.contains("wallet") && !why.contains("needs"), "{}: skipped ({why})", r.id);
        }
    }
    for rail in ["l402", "x402", "mpp"] {
        let passed =
            report.results.iter().filter(|r| r.rail == rail && r.outcome == Outcome::Pass).count();
        assert!(passed >= 10, "{rail}: only {passed} checks passed");
    }
    assert!(report.passed(true));
    // What was paid: one L402 token; x402's `paid`, one payment raced by eight copies and one
    // in lowercase hex;
    // MPP's `paid`, one raced, and one answering /data's challenge refused on /other (a
    // Lightning proof is paid before it is shown).
    assert_eq!(server_node.settled_invoices().len(), 4, "the L402 token and three MPP charges");
    // The session: 40 000 deposited, three requests served, closed with a voucher for 30 000.
    assert_eq!(
        rpc.balance_of(token, pay_to).await.unwrap(),
        U256::from(60_000u64),
        "three x402 payments (paid, raced, lowercase hex), each settled once, and three session requests"
    );
    assert_eq!(
        rpc.balance_of(token, payer.address()).await.unwrap(),
        U256::from(10_000_000u64 - 60_000),
        "the payer paid those and got the rest of its session deposit back"
    );
    assert_eq!(rpc.balance_of(token, escrow).await.unwrap(), U256::ZERO, "nothing left in escrow");
    assert!(took < Duration::from_secs(30), "the whole suite took {took:?}");
}
