//! The reference server that misbehaves, against farebox's own client: each scenario gets the
//! reaction a correct client has, and the server's report shows exactly the payments a correct
//! client makes.

use std::sync::Arc;

use farebox_client::{Budget, ClientError, PaymentMiddleware};
use farebox_conformance::misbehave::{self, SCENARIOS};
use farebox_core::Money;
use farebox_l402::client::L402Wallet;
use farebox_lightning::{DevNetwork, DevNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farebox_client_reacts_to_every_misbehaviour_as_a_correct_client() {
    let network = DevNetwork::new();
    let server = Arc::new(DevNode::random(&network, 0));
    let wallet = Arc::new(DevNode::random(&network, 10_000_000));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = misbehave::router(server.clone()).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let budget = Budget::new().allow(Money::sats(100), Money::sats(1_000)).unwrap();
    let payer = PaymentMiddleware::new(budget).wallet(L402Wallet::new(wallet.clone(), 1_000));
    let client = farebox_client::paying_client(reqwest::Client::new(), payer);
    let outcome = |path: &'static str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            match client.get(url).send().await {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) => Err(match ClientError::from_middleware(&e) {
                    Some(ClientError::ProofRejected { .. }) => "proof rejected",
                    Some(ClientError::InvalidChallenge(_)) => "invalid challenge",
                    Some(ClientError::OverBudget { .. }) => "over budget",
                    _ => "other",
                }),
            }
        }
    };
    assert_eq!(outcome("/ok").await, Ok(200));
    assert_eq!(outcome("/ok").await, Ok(200), "the token is reused");
    assert_eq!(outcome("/wrong-price-on-retry").await, Err("proof rejected"));
    assert_eq!(outcome("/invalid-invoice").await, Err("invalid challenge"));
    assert_eq!(outcome("/expired-invoice").await, Err("invalid challenge"));
    assert_eq!(outcome("/loop").await, Err("proof rejected"));
    assert_eq!(outcome("/pricey").await, Err("over budget"));

    let report: serde_json::Value =
        reqwest::get(format!("{base}/_report")).await.unwrap().json().await.unwrap();
    for (scenario, seen) in SCENARIOS.iter().zip(report["scenarios"].as_array().unwrap()) {
        assert_eq!(seen["path"], scenario.path);
        assert_eq!(seen["payments"], scenario.payments, "{}: {seen}", scenario.path);
    }
    assert_eq!(wallet.balance_msat(), 10_000_000 - 30_000, "three payments of 10 sat");
}
