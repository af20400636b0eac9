//! The misbehaving reference server's x402 and MPP scenarios, on anvil, against farebox's own
//! client (the reqwest middleware with its x402 and MPP wallets): the client suite passes every
//! scenario, and the chain shows exactly the payments a correct client makes, nothing more.

use std::sync::Arc;

use async_trait::async_trait;
use farebox_client::{Budget, ClientError, EntryKind, Ledger, PaymentMiddleware};
use farebox_conformance::Verdict;
use farebox_conformance::clients::{
    self, ClientEnv, ClientReport, ClientRun, ClientUnderTest, Judgement,
};
use farebox_conformance::misbehave::evm::{
    CHAIN_ID, Chain, EVM_SCENARIOS, EvmServer, FUNDING, PRICE, PRICEY,
};
use farebox_core::{Asset, Money, Token};
use farebox_evm::{Address, EvmRpc, PrivateKeySigner};
use farebox_mpp::client::MppWallet;
use farebox_mpp::client::Sessions;
use farebox_mpp::client::session::EvmSessionPolicy;
use farebox_x402::client::X402Wallet;
use serde_json::json;

/// farebox's client, in-process: USDC within 0.10 a request and 10 in all.
struct FareboxClient {
    client: reqwest_middleware::ClientWithMiddleware,
    ledger: Ledger,
    /// Its MPP sessions, closed after each request (as `farebox pay` closes them).
    sessions: Sessions,
    /// How many times a refused payment is paid again (a correct client: never).
    retries: usize,
}

impl FareboxClient {
    fn new(env: &ClientEnv) -> FareboxClient {
        Self::with_caps(env, 100_000, 10_000_000)
    }

    /// A careless client: 10,000 USDC a request, and a refused payment is paid again twice.
    fn careless(env: &ClientEnv) -> FareboxClient {
        FareboxClient { retries: 2, ..Self::with_caps(env, 10_000_000_000, 50_000_000_000) }
    }

    fn with_caps(env: &ClientEnv, per_request: u128, total: u128) -> FareboxClient {
        let usdc = Asset::Token(Token {
            network: format!("eip155:{CHAIN_ID}"),
            address: env.token.clone(),
            symbol: "USDC".into(),
            decimals: 6,
        });
        let budget = Budget::new()
            .allow(Money::new(usdc.clone(), per_request), Money::new(usdc, total))
            .unwrap();
        let key: PrivateKeySigner = env.key.parse().unwrap();
        let escrows: Vec<Address> = env.escrows.iter().map(|e| e.parse().unwrap()).collect();
        let rpc = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(EvmRpc::connect(&env.rpc))
        })
        .unwrap();
        let mut policy = EvmSessionPolicy::new(rpc, escrows[0], 100_000).deposit(50_000);
        for escrow in &escrows[1..] {
            policy = policy.allow_escrow(*escrow);
        }
        let mpp = MppWallet::new().evm(key.clone()).evm_sessions(policy);
        let sessions = mpp.sessions();
        let payer = PaymentMiddleware::new(budget).wallet(X402Wallet::new(key)).wallet(mpp);
        let ledger = payer.ledger();
        let client = farebox_client::paying_client(reqwest::Client::new(), payer);
        FareboxClient { client, ledger, sessions, retries: 0 }
    }
}

/// The client's typed refusal, for assertions that do not depend on wording.
fn kind_of(e: &ClientError) -> &'static str {
    match e {
        ClientError::ProofRejected { .. } => "proof_rejected",
        ClientError::InvalidChallenge(_) => "invalid_challenge",
        ClientError::OverBudget { .. } => "over_budget",
        ClientError::Overclaimed(_) => "overclaimed",
        ClientError::SessionRefused(_) => "session_refused",
        _ => "other",
    }
}

#[async_trait]
impl ClientUnderTest for FareboxClient {
    async fn fetch(&self, url: &str, _env: &ClientEnv) -> ClientRun {
        let mut tries = 0;
        let line = loop {
            match self.client.get(url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    break json!({ "status": status, "body": r.text().await.unwrap_or_default() });
                }
                Err(e) => match ClientError::from_middleware(&e) {
                    Some(ClientError::ProofRejected { .. }) if tries < self.retries => tries += 1,
                    Some(e) => break json!({ "error": e.to_string(), "kind": kind_of(e) }),
                    None => break json!({ "error": e.to_string() }),
                },
            }
        };
        for closed in self.sessions.close_all().await {
            closed.expect("the session closes");
        }
        ClientRun { exit: Some(0), line: Some(line), ..Default::default() }
    }
}

/// The client suite on a fresh chain and server, with the client `make` builds.
async fn suite(make: fn(&ClientEnv) -> FareboxClient) -> (Arc<Chain>, FareboxClient, ClientReport) {
    let chain = Arc::new(Chain::start().await.expect("anvil (`cargo xtask setup` installs it)"));
    let server = EvmServer::start(chain.clone()).await.unwrap();
    let client = make(&ClientEnv::of(&chain));
    let report = clients::run(&server, &client, &[]).await;
    println!("{}", report.table());
    (chain, client, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farebox_client_pays_each_chain_scenario_what_a_correct_client_pays() {
    let (chain, client, report) = suite(FareboxClient::new).await;

    for outcome in &report.outcomes {
        assert!(outcome.passed(), "{}: {:?}", outcome.scenario.path, outcome);
    }
    assert_eq!(report.outcomes.len(), EVM_SCENARIOS.len());
    // The honest and the lying-after-payment scenarios were paid once each at the shown price;
    // the redirects, the pricey routes and the contradicting body (paid per its header) as a
    // correct client pays them.
    let by_path = |p: &str| report.outcomes.iter().find(|o| o.scenario.path == p).unwrap();
    assert_eq!(by_path("/x402/ok").client.status(), Some(200));
    assert_eq!(by_path("/mpp/ok").client.status(), Some(200));
    assert_eq!(by_path("/x402/inflated-settlement").client.status(), Some(200));
    assert_eq!(by_path("/x402/body-contradicts-header").paid, Some(PRICE));
    let paid_scenarios = EVM_SCENARIOS.iter().filter(|s| s.correct[0] == PRICE).count() as u128;
    assert_eq!(report.paid(), paid_scenarios * PRICE);
    // On chain, the client's key lost exactly that: nothing went anywhere but the scenarios.
    assert_eq!(report.spent, Some(paid_scenarios * PRICE));
    let left = chain.balance(chain.payer()).await.unwrap();
    assert_eq!(left, FUNDING - paid_scenarios * PRICE);
    // The client counts what it signed and what the chain refunded, not what an inflated
    // settlement, receipt or close answer claims: its ledger's net outlay is the chain's.
    let entries = client.ledger.entries();
    let sum = |kind: EntryKind| -> u128 {
        entries.iter().filter(|e| e.kind == kind).map(|e| e.amount.amount).sum()
    };
    let net = sum(EntryKind::Payment) + sum(EntryKind::Deposit) - sum(EntryKind::Refund);
    assert_eq!(net, paid_scenarios * PRICE, "{entries:?}");
    // Three sessions opened (the foreign escrow was refused before any deposit), each closed
    // with one request's worth spent.
    assert_eq!(sum(EntryKind::Deposit), 3 * 50_000, "{entries:?}");
    assert_eq!(sum(EntryKind::Refund), 3 * 40_000, "{entries:?}");
    // Each lie was noticed for what it is.
    let kind = |p: &str| by_path(p).client.line.as_ref().unwrap()["kind"].clone();
    assert_eq!(kind("/mpp/session/overclaimed-receipt"), "overclaimed");
    assert_eq!(kind("/mpp/session/foreign-escrow"), "session_refused");
    assert_eq!(kind("/x402/redirect"), "invalid_challenge");
    assert_eq!(kind("/mpp/loop"), "proof_rejected");
    assert_eq!(kind("/x402/pricey"), "over_budget");
}

/// The suite can fail: a client that pays again after a refusal, with a budget of thousands,
/// fails exactly the scenarios that punish that, and the report shows what it paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_careless_client_fails_the_scenarios_that_punish_carelessness() {
    let (chain, _, report) = suite(FareboxClient::careless).await;

    let failed: Vec<(&str, Option<u128>)> =
        report.outcomes.iter().filter(|o| !o.passed()).map(|o| (o.scenario.path, o.paid)).collect();
    let three_times = Some(3 * PRICE);
    assert_eq!(
        failed,
        vec![
            ("/x402/price-raised-on-retry", three_times),
            ("/x402/pay-to-changed-on-retry", three_times),
            ("/x402/loop", three_times),
            ("/mpp/price-raised-on-retry", three_times),
            ("/mpp/recipient-changed-on-retry", three_times),
            ("/mpp/loop", three_times),
            ("/x402/pricey", Some(PRICEY)),
            ("/mpp/pricey", Some(PRICEY)),
        ]
    );
    assert!(
        report.all_accounted(),
        "the key spent {:?}, the scenarios got {}",
        report.spent,
        report.paid()
    );
    let left = chain.balance(chain.payer()).await.unwrap();
    assert_eq!(Some(FUNDING - left), report.spent);
}

/// A client that pays nothing: its refusals prove nothing, so the scenarios where paying
/// nothing is right are inconclusive rather than passed, and the honest ones fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_pay_gets_no_credit_for_refusing() {
    struct Nothing;
    #[async_trait]
    impl ClientUnderTest for Nothing {
        async fn fetch(&self, _url: &str, _env: &ClientEnv) -> ClientRun {
            ClientRun { exit: Some(1), line: Some(json!({ "status": 402 })), ..Default::default() }
        }
    }
    let chain = Arc::new(Chain::start().await.expect("anvil (`cargo xtask setup` installs it)"));
    let server = EvmServer::start(chain.clone()).await.unwrap();
    let report = clients::run(&server, &Nothing, &[]).await;
    println!("{}", report.table());
    for o in &report.outcomes {
        let expected =
            if o.scenario.correct.contains(&0) { Judgement::Inconclusive } else { Judgement::Fail };
        assert_eq!(o.judgement, expected, "{}", o.scenario.path);
        assert_eq!(o.paid, Some(0), "{}", o.scenario.path);
    }
    assert_eq!(report.verdict(), Verdict::Fail);
    assert_eq!(report.spent, Some(0));
    // On one rail alone, with only refusals that could be right, it is not a pass either.
    let only_refusals = clients::run(&server, &Nothing, &["mpp-session".into()]).await;
    assert!(only_refusals.inconclusive() > 0 && only_refusals.verdict() != Verdict::Pass);
}
