//! MPP EVM sessions behind the paywall, on a real anvil with FareboxUSD and SessionEscrow: the
//! payer opens a channel on chain, pays requests with cumulative vouchers, tops up and closes;
//! every refusal is checked for its status and problem type; the server's upkeep answers a
//! payer's forced close on chain and settles what was served. Each test starts its own anvil.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::{Extension, Router};
use farebox_core::{Money, Price, SessionStatus, SessionStore};
use farebox_evm::anvil::{Anvil, DevAccount, counting_proxy};
use farebox_evm::{Address, B256, EvmRpc, TxHash, U256};
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::evm::session::{
    EvmSessionRequest, OpenPayload, SessionPayload, SignedVoucher, TopUpPayload,
};
use farebox_mpp::evm::voucher::{self, Voucher, VoucherDomain};
use farebox_mpp::{Challenge, Credential, EvmSessionConfig, MppConfig, MppRail};
use farebox_server::{MaintenanceError, Paid, Paywall, PaywallLayer, PricedRoute};
use farebox_store::{MemoryStore, SqliteStore};
use http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

const REALM: &str = "api.example.com";
const PROBLEMS: &str = "https://paymentauth.org/problems/";
const FUNDS: u128 = 10_000_000; // 10 USDC
const PRICE: u128 = 1_000; // 0.001 USDC per request
const DEPOSIT: u128 = 5 * PRICE;

struct World {
    anvil: Anvil,
    rpc: EvmRpc,
    token: Address,
    escrow: Address,
    domain: VoucherDomain,
    config: EvmSessionConfig,
    replay: Arc<MemoryStore>,
    sessions: Arc<dyn SessionStore>,
    app: Router,
    paywall: Arc<Paywall>,
    handled: Arc<AtomicUsize>,
}

impl World {
    fn payer(&self) -> &DevAccount {
        &self.anvil.accounts()[1]
    }

    fn payee(&self) -> Address {
        self.anvil.accounts()[2].address
    }

    async fn balance(&self, who: Address) -> u128 {
        self.rpc.balance_of(self.token, who).await.unwrap().to::<u128>()
    }

    /// A server over `sessions` (a new one sees what an earlier one persisted).
    fn app(&self, sessions: Arc<dyn SessionStore>) -> Router {
        self.server(sessions).0
    }

    /// Replaces the server with a new one over `sessions`.
    fn restart(&mut self, sessions: Arc<dyn SessionStore>) {
        (self.app, self.paywall) = self.server(sessions.clone());
        self.sessions = sessions;
    }

    fn server(&self, sessions: Arc<dyn SessionStore>) -> (Router, Arc<Paywall>) {
        server(&self.config, &self.replay, &self.handled, sessions)
    }

    async fn channel(&self, channel: B256) -> farebox_mpp::evm::escrow::Channel {
        self.rpc.escrow_channel(self.escrow, channel).await.unwrap()
    }

    /// Moves the chain's clock forward by `seconds` and mines a block.
    async fn advance(&self, seconds: u64) {
        self.anvil.increase_time(seconds).await.unwrap();
        self.anvil.mine().await.unwrap();
    }

    /// Pays `count` more requests on `channel`, one voucher each, the first for `from + PRICE`.
    async fn pay(&self, channel: B256, from: u128, count: u128) {
        let c = self.challenge().await;
        for n in 1..=count {
            let v = SessionPayload::Voucher(self.voucher(self.payer(), channel, from + n * PRICE));
            let (status, _, body) = send(&self.app, "/data", Some(&cred(&c, &v))).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }

    /// A fresh session challenge from the server, for `/data`.
    async fn challenge(&self) -> Challenge {
        self.challenge_for("/data").await
    }

    /// A fresh session challenge from the server, for `path`.
    async fn challenge_for(&self, path: &str) -> Challenge {
        let (status, headers, _) = send(&self.app, path, None).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
        let values: Vec<&str> =
            headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
        let mut all = farebox_mpp::parse_www_authenticate(values).unwrap();
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn voucher(&self, signer: &DevAccount, channel: B256, amount: u128) -> SignedVoucher {
        let v = Voucher { channelId: channel, cumulativeAmount: amount };
        SignedVoucher {
            channel_id: channel,
            cumulative_amount: amount,
            signature: voucher::sign(&signer.signer, &self.domain, &v).to_vec(),
        }
    }

    /// Opens a channel on chain with `deposit`: the open transaction, salt and channel id.
    async fn open_on_chain(&self, deposit: u128) -> (TxHash, B256, B256) {
        let salt = fresh_salt();
        let payer = &self.payer().signer;
        self.rpc.erc20_approve(payer, self.token, self.escrow, deposit).await.unwrap();
        let (tx, channel) = self
            .rpc
            .escrow_open(payer, self.escrow, self.payee(), self.token, deposit, salt, None)
            .await
            .unwrap();
        (tx, salt, channel)
    }

    /// Opens a channel and pays the first request with it: the channel id.
    async fn opened(&self, deposit: u128) -> B256 {
        let (tx, salt, channel) = self.open_on_chain(deposit).await;
        let c = self.challenge().await;
        let open = SessionPayload::Open(OpenPayload {
            hash: tx,
            salt,
            authorized_signer: None,
            voucher: self.voucher(self.payer(), channel, PRICE),
        });
        let (status, headers, body) = send(&self.app, "/data", Some(&cred(&c, &open))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let receipt = common::receipt(&headers);
        assert_eq!(receipt.extensions["spent"], PRICE.to_string());
        channel
    }
}

/// A server paid with `config`'s channels, accounting in `sessions`, and its paywall (whose
/// upkeep the tests run); `handled` counts what `/data` served.
fn server(
    config: &EvmSessionConfig,
    replay: &Arc<MemoryStore>,
    handled: &Arc<AtomicUsize>,
    sessions: Arc<dyn SessionStore>,
) -> (Router, Arc<Paywall>) {
    let rail = MppRail::builder(MppConfig::new(REALM, common::SECRET), replay.clone())
        .evm_session(config.clone(), sessions)
        .build()
        .unwrap();
    let price = Price::one(Money::new(config.asset(), PRICE));
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/data", price.clone()).unwrap())
        .route(PricedRoute::new(None, "/fails", price.clone()).unwrap())
        .route(PricedRoute::new(None, "/who", price).unwrap())
        .route(
            PricedRoute::new(None, "/dear", Price::one(Money::new(config.asset(), 2 * PRICE)))
                .unwrap(),
        )
        .build()
        .unwrap();
    let paywall = Arc::new(paywall);
    let (handled, dear) = (handled.clone(), handled.clone());
    let app = Router::new()
        .route(
            "/data",
            axum::routing::get(move || {
                handled.fetch_add(1, Ordering::SeqCst);
                async { "the data" }
            }),
        )
        .route(
            "/dear",
            axum::routing::get(move || {
                dear.fetch_add(1, Ordering::SeqCst);
                async { "the dear data" }
            }),
        )
        .route(
            "/fails",
            axum::routing::get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .route(
            "/who",
            axum::routing::get(|Extension(paid): Extension<Paid>| async move {
                paid.payer.unwrap_or_default()
            }),
        )
        .layer(PaywallLayer::shared(paywall.clone()));
    (app, paywall)
}

async fn world() -> World {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    anvil.mint(token, anvil.accounts()[1].address, U256::from(FUNDS)).await.unwrap();
    let escrow = rpc
        .deploy_session_escrow(&anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD)
        .await
        .unwrap();
    let config = EvmSessionConfig::builder(rpc.clone(), anvil.accounts()[2].signer.clone())
        .escrow(escrow)
        .token(token)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .receipt_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let domain = rpc.voucher_domain(escrow);
    let sessions: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let replay = Arc::new(MemoryStore::new());
    let handled = Arc::<AtomicUsize>::default();
    let (app, paywall) = server(&config, &replay, &handled, sessions.clone());
    World { anvil, rpc, token, escrow, domain, config, replay, sessions, app, paywall, handled }
}

/// A salt no other channel of this test run has.
fn fresh_salt() -> B256 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    B256::from(U256::from(NEXT.fetch_add(1, Ordering::SeqCst)))
}

fn cred(c: &Challenge, payload: &SessionPayload) -> String {
    Credential::new(c, payload.to_json()).to_authorization()
}

async fn send(app: &Router, path: &str, auth: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    common::get(app, path, auth.as_slice()).await
}

/// A refusal: its status, problem type, no receipt, and challenges exactly on 402s.
fn refused(got: &(StatusCode, HeaderMap, Value), status: StatusCode, name: &str) {
    let (s, headers, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["type"], format!("{PROBLEMS}{name}"), "{body}");
    assert!(headers.get("payment-receipt").is_none(), "never a receipt on an error");
    let challenges = headers.get_all("www-authenticate").iter().count();
    assert_eq!(challenges > 0, status == StatusCode::PAYMENT_REQUIRED, "{body}");
}

#[tokio::test]
async fn the_402_offers_a_session_on_this_escrow() {
    let w = world().await;
    let c = w.challenge().await;
    assert_eq!((c.method.as_str(), c.intent.as_str()), ("evm", "session"));
    let r = EvmSessionRequest::from_json(&c.request).unwrap();
    assert_eq!(r.amount, U256::from(PRICE));
    assert_eq!(r.unit_type.as_deref(), Some("request"));
    assert_eq!((r.currency, r.recipient, r.escrow), (w.token, w.payee(), w.escrow));
    assert_eq!(r.chain_id, w.anvil.chain_id());
    assert_eq!(r.suggested_deposit, Some(U256::from(100 * PRICE)));
    assert_eq!(r.credential_types, ["hash"]);
    assert!(c.expires.is_some());
}

#[tokio::test]
async fn many_requests_on_one_deposit_then_close_refunds_the_rest_on_chain() {
    let w = world().await;
    let payer_before = w.balance(w.payer().address).await;
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    for n in 2..=4u128 {
        let v = SessionPayload::Voucher(w.voucher(w.payer(), channel, n * PRICE));
        let (status, headers, body) = send(&w.app, "/data", Some(&cred(&c, &v))).await;
        assert_eq!((status, body), (StatusCode::OK, Value::String("the data".into())));
        let r = common::receipt(&headers);
        assert_eq!(r.method, "evm");
        assert_eq!(r.reference, format!("{channel:#x}"));
        assert_eq!(r.extensions["intent"], "session");
        assert_eq!(r.extensions["channelId"], format!("{channel:#x}"));
        assert_eq!(r.extensions["acceptedCumulative"], (n * PRICE).to_string());
        assert_eq!(r.extensions["spent"], (n * PRICE).to_string());
        assert_eq!(headers["cache-control"], "private");
    }
    assert_eq!(w.handled.load(Ordering::SeqCst), 4);
    // Nothing moved on chain yet: four requests, one deposit.
    assert_eq!(w.balance(w.payee()).await, 0);

    let close = SessionPayload::Close(w.voucher(w.payer(), channel, 4 * PRICE));
    let (status, headers, body) = send(&w.app, "/data", Some(&cred(&c, &close))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "closed");
    assert_eq!(body["captured"], (4 * PRICE).to_string());
    assert_eq!(body["refunded"], (DEPOSIT - 4 * PRICE).to_string());
    let tx: TxHash = body["txHash"].as_str().unwrap().parse().unwrap();
    assert_eq!(common::receipt(&headers).extensions["txHash"], format!("{tx:#x}"));
    assert_eq!(w.handled.load(Ordering::SeqCst), 4, "a close does not run the handler");
    assert_eq!(w.balance(w.payee()).await, 4 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, payer_before - 4 * PRICE);
    assert!(w.rpc.escrow_channel(w.escrow, channel).await.unwrap().finalized);
    let record = w.sessions.load_session("mpp-evm-session", &format!("{channel:#x}")).await;
    let record = record.unwrap().unwrap().value;
    assert_eq!((record.status, record.settled), (SessionStatus::Closed, 4 * PRICE));

    // A closed channel pays for nothing more.
    let late = SessionPayload::Voucher(w.voucher(w.payer(), channel, 5 * PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &late))).await,
        StatusCode::GONE,
        "session/channel-finalized",
    );
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &close))).await,
        StatusCode::GONE,
        "session/channel-finalized",
    );
}

#[tokio::test]
async fn vouchers_are_monotonic_and_an_equal_one_only_spends_what_is_left() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    let two = SessionPayload::Voucher(w.voucher(w.payer(), channel, 2 * PRICE));
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &two))).await.0, StatusCode::OK);
    // The same voucher again adds nothing and everything it authorized is spent.
    let again = send(&w.app, "/data", Some(&cred(&c, &two))).await;
    refused(&again, StatusCode::PAYMENT_REQUIRED, "session/insufficient-balance");
    assert_eq!(again.2["requiredTopUp"], PRICE.to_string());
    assert_eq!(again.2["channelId"], format!("{channel:#x}"));
    // Backwards: refused.
    let back = SessionPayload::Voucher(w.voucher(w.payer(), channel, PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &back))).await,
        StatusCode::PAYMENT_REQUIRED,
        "verification-failed",
    );
    // A request whose handler fails is not charged: the voucher stays accepted, the debit is
    // given back, and an equal voucher (the client's retry) is then served.
    let three = SessionPayload::Voucher(w.voucher(w.payer(), channel, 3 * PRICE));
    let fails = w.challenge_for("/fails").await;
    let (status, _, _) = send(&w.app, "/fails", Some(&cred(&fails, &three))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, headers, _) = send(&w.app, "/data", Some(&cred(&c, &three))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(common::receipt(&headers).extensions["spent"], (3 * PRICE).to_string());
    assert_eq!(w.handled.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bad_vouchers_are_refused_with_the_drafts_problem_types() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    let stranger = &w.anvil.accounts()[5];
    let forged = SessionPayload::Voucher(w.voucher(stranger, channel, 2 * PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &forged))).await,
        StatusCode::PAYMENT_REQUIRED,
        "session/signer-mismatch",
    );
    let mut garbage = w.voucher(w.payer(), channel, 2 * PRICE);
    garbage.signature[64] = 3; // no such recovery id
    let garbage = SessionPayload::Voucher(garbage);
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &garbage))).await,
        StatusCode::PAYMENT_REQUIRED,
        "session/invalid-signature",
    );
    // A voucher signed for another channel does not verify for this one.
    let mut other = w.voucher(w.payer(), B256::repeat_byte(7), 2 * PRICE);
    other.channel_id = channel;
    let other = SessionPayload::Voucher(other);
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &other))).await,
        StatusCode::PAYMENT_REQUIRED,
        "session/signer-mismatch",
    );
    // Above the deposit.
    let greedy = SessionPayload::Voucher(w.voucher(w.payer(), channel, DEPOSIT + 1));
    let got = send(&w.app, "/data", Some(&cred(&c, &greedy))).await;
    refused(&got, StatusCode::PAYMENT_REQUIRED, "session/amount-exceeds-deposit");
    assert_eq!(got.2["requiredTopUp"], "1");
    // A channel this escrow does not have.
    let unknown = SessionPayload::Voucher(w.voucher(w.payer(), B256::repeat_byte(9), PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &unknown))).await,
        StatusCode::GONE,
        "session/channel-not-found",
    );
    // A malformed payload and an unknown action.
    let mut payload = SessionPayload::Voucher(w.voucher(w.payer(), channel, 2 * PRICE)).to_json();
    payload.insert("action".into(), "settle".into());
    let bad = Credential::new(&c, payload).to_authorization();
    refused(
        &send(&w.app, "/data", Some(&bad)).await,
        StatusCode::PAYMENT_REQUIRED,
        "malformed-credential",
    );
    assert_eq!(w.handled.load(Ordering::SeqCst), 1, "only the opening request was served");
}

#[tokio::test]
async fn tampered_expired_and_doubled_credentials_are_refused() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    let v = SessionPayload::Voucher(w.voucher(w.payer(), channel, 2 * PRICE));
    // A challenge whose request was altered (another escrow) no longer matches its id.
    let mut tampered = c.clone();
    let mut request = c.request.clone();
    request["methodDetails"]["escrowContract"] = format!("{:#x}", Address::repeat_byte(1)).into();
    tampered.request_b64 = farebox_mpp::jcs::encode_b64_jcs(&request).unwrap();
    refused(
        &send(&w.app, "/data", Some(&cred(&tampered, &v))).await,
        StatusCode::PAYMENT_REQUIRED,
        "invalid-challenge",
    );
    // Expired (issued by this server an hour ago).
    let old = common::expired(&c, 3600);
    refused(
        &send(&w.app, "/data", Some(&cred(&old, &v))).await,
        StatusCode::PAYMENT_REQUIRED,
        "payment-expired",
    );
    // Two credentials in one request: 400, nothing served.
    let req = Request::get("/data")
        .header("authorization", cred(&c, &v))
        .header("authorization", cred(&c, &v))
        .body(Body::empty())
        .unwrap();
    let res = w.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(w.handled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_open_is_checked_against_the_chain() {
    let w = world().await;
    let c = w.challenge().await;
    let (tx, salt, channel) = w.open_on_chain(DEPOSIT).await;
    let open = |hash, salt, voucher| {
        SessionPayload::Open(OpenPayload { hash, salt, authorized_signer: None, voucher })
    };
    // The transaction is not an open of that channel (it is the approve before it... or nothing).
    let unknown = open(B256::repeat_byte(3), salt, w.voucher(w.payer(), channel, PRICE));
    let got = send(&w.app, "/data", Some(&cred(&c, &unknown))).await;
    assert_eq!(got.0, StatusCode::SERVICE_UNAVAILABLE, "{}", got.2);
    // The wrong salt: the channel id is not the one the escrow derives.
    let wrong_salt = open(tx, B256::repeat_byte(4), w.voucher(w.payer(), channel, PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &wrong_salt))).await,
        StatusCode::PAYMENT_REQUIRED,
        "verification-failed",
    );
    // A channel to someone else is not ours to serve.
    let other_payee = w.anvil.accounts()[6].address;
    let payer = &w.payer().signer;
    w.rpc.erc20_approve(payer, w.token, w.escrow, DEPOSIT).await.unwrap();
    let other_salt = fresh_salt();
    let (other_tx, other) = w
        .rpc
        .escrow_open(payer, w.escrow, other_payee, w.token, DEPOSIT, other_salt, None)
        .await
        .unwrap();
    let theirs = open(other_tx, other_salt, w.voucher(w.payer(), other, PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &theirs))).await,
        StatusCode::PAYMENT_REQUIRED,
        "verification-failed",
    );
    // The real open works, and opening it again is just a voucher on it.
    let good = open(tx, salt, w.voucher(w.payer(), channel, PRICE));
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &good))).await.0, StatusCode::OK);
    let again = open(tx, salt, w.voucher(w.payer(), channel, 2 * PRICE));
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &again))).await.0, StatusCode::OK);
    assert_eq!(w.handled.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn top_ups_raise_the_deposit_with_or_without_a_top_up_credential() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    let payer = &w.payer().signer;
    // Topped up on chain without telling the server: a voucher beyond the old deposit makes it
    // read the chain again.
    w.rpc.erc20_approve(payer, w.token, w.escrow, DEPOSIT).await.unwrap();
    w.rpc.escrow_top_up(payer, w.escrow, channel, DEPOSIT).await.unwrap();
    let beyond = SessionPayload::Voucher(w.voucher(w.payer(), channel, DEPOSIT + PRICE));
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &beyond))).await.0, StatusCode::OK);
    // With a topUp credential: 204 and a receipt naming the new deposit, no handler.
    w.rpc.erc20_approve(payer, w.token, w.escrow, DEPOSIT).await.unwrap();
    let tx = w.rpc.escrow_top_up(payer, w.escrow, channel, DEPOSIT).await.unwrap();
    let top_up = SessionPayload::TopUp(TopUpPayload {
        channel_id: channel,
        hash: tx,
        additional_deposit: DEPOSIT,
    });
    let (status, headers, _) = send(&w.app, "/data", Some(&cred(&c, &top_up))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(common::receipt(&headers).extensions["deposit"], (3 * DEPOSIT).to_string());
    assert_eq!(w.handled.load(Ordering::SeqCst), 2);
    // A top-up credential naming another amount than its transaction: refused.
    let lie = SessionPayload::TopUp(TopUpPayload {
        channel_id: channel,
        hash: tx,
        additional_deposit: 2 * DEPOSIT,
    });
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &lie))).await,
        StatusCode::PAYMENT_REQUIRED,
        "verification-failed",
    );
}

#[tokio::test]
async fn concurrent_requests_never_spend_more_than_was_authorized() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    // One voucher authorizing four more requests, sent by twelve requests at once.
    let v = SessionPayload::Voucher(w.voucher(w.payer(), channel, 5 * PRICE));
    let auth = cred(&c, &v);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (app, auth) = (w.app.clone(), auth.clone());
            tokio::spawn(async move { send(&app, "/data", Some(&auth)).await.0 })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => served += 1,
            StatusCode::PAYMENT_REQUIRED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(served, 4);
    assert_eq!(w.handled.load(Ordering::SeqCst), 5);
    let record = w.sessions.load_session("mpp-evm-session", &format!("{channel:#x}")).await;
    assert_eq!(record.unwrap().unwrap().value.spent, 5 * PRICE);
}

#[tokio::test]
async fn close_captures_only_what_was_spent() {
    let w = world().await;
    let payer_before = w.balance(w.payer().address).await;
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    // The payer authorizes three requests' worth but only one more is served.
    let v = SessionPayload::Voucher(w.voucher(w.payer(), channel, 4 * PRICE));
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &v))).await.0, StatusCode::OK);
    // Closing with a voucher below what was spent is refused...
    let low = SessionPayload::Close(w.voucher(w.payer(), channel, PRICE));
    let (status, _, body) = send(&w.app, "/data", Some(&cred(&c, &low))).await;
    // ...unless the server holds a higher accepted voucher, which it closes with instead.
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["captured"], (2 * PRICE).to_string());
    assert_eq!(w.balance(w.payee()).await, 2 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, payer_before - 2 * PRICE);
}

#[tokio::test]
async fn accepted_vouchers_survive_a_restart_and_idle_channels_are_closed() {
    let mut w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let first: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
    w.sessions = first.clone();
    w.app = w.app(first);
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    let v = SessionPayload::Voucher(w.voucher(w.payer(), channel, 3 * PRICE));
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &v))).await.0, StatusCode::OK);
    // The server goes away; a new one opens the same file.
    w.app = Router::new();
    w.sessions = Arc::new(MemoryStore::new());
    let sessions: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let rail = MppRail::builder(MppConfig::new(REALM, common::SECRET), w.replay.clone())
        .evm_session(w.config.clone(), sessions.clone())
        .build()
        .unwrap();
    let record = sessions.load_session("mpp-evm-session", &format!("{channel:#x}")).await;
    let record = record.unwrap().unwrap().value;
    assert_eq!((record.accepted, record.spent), (3 * PRICE, 2 * PRICE));
    // The highest voucher it accepted is what closes the channel once it idles, capturing what
    // two requests spent.
    let closed = rail.close_idle_sessions(std::time::Duration::ZERO).await.unwrap();
    assert_eq!(closed, 1);
    assert_eq!(w.balance(w.payee()).await, 2 * PRICE);
    assert!(w.rpc.escrow_channel(w.escrow, channel).await.unwrap().finalized);
    assert_eq!(rail.close_idle_sessions(std::time::Duration::ZERO).await.unwrap(), 0);
}

#[tokio::test]
async fn payer_cannot_withdraw_what_was_spent_after_request_close() {
    let w = world().await;
    let payer_before = w.balance(w.payer().address).await;
    // One channel served for its whole deposit, another for two fifths of it.
    let whole = w.opened(DEPOSIT).await;
    w.pay(whole, PRICE, 4).await;
    let part = w.opened(DEPOSIT).await;
    w.pay(part, PRICE, 1).await;
    assert_eq!(w.handled.load(Ordering::SeqCst), 7);
    w.paywall.maintain().await;
    assert_eq!(w.balance(w.payee()).await, 0, "nothing to do before a close is requested");

    // The payer asks the chain for a forced close of both and goes silent.
    let payer = &w.payer().signer;
    for channel in [whole, part] {
        w.rpc.escrow_request_close(payer, w.escrow, channel).await.unwrap();
    }
    // The chain's clock runs through the grace period, the server's upkeep ticking along.
    for _ in 0..7 {
        w.advance(DEFAULT_CLOSE_GRACE_PERIOD / 6).await;
        w.paywall.maintain().await;
    }
    // Past the grace period the payer withdraws what it can: nothing it was served for.
    for channel in [whole, part] {
        let _ = w.rpc.escrow_withdraw(payer, w.escrow, channel).await;
        assert!(w.channel(channel).await.finalized);
    }
    assert_eq!(w.balance(w.payee()).await, DEPOSIT + 2 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, payer_before - DEPOSIT - 2 * PRICE);
    assert_eq!(w.balance(w.escrow).await, 0);
    for channel in [whole, part] {
        let record = w.sessions.load_session("mpp-evm-session", &format!("{channel:#x}")).await;
        assert_eq!(record.unwrap().unwrap().value.status, SessionStatus::Closed);
    }
}

#[tokio::test]
async fn a_close_requested_while_the_server_was_down_is_answered_when_it_starts() {
    let mut w = world().await;
    let channel = w.opened(DEPOSIT).await;
    w.pay(channel, PRICE, 2).await;
    w.paywall.maintain().await;
    // The server stops (its store survives); meanwhile the payer asks for a forced close.
    let sessions = w.sessions.clone();
    w.app = Router::new();
    w.rpc.escrow_request_close(&w.payer().signer, w.escrow, channel).await.unwrap();
    w.advance(DEFAULT_CLOSE_GRACE_PERIOD / 2).await;
    // Its first upkeep after the restart reads every channel it holds earnings on.
    w.restart(sessions);
    w.paywall.maintain().await;
    assert!(w.channel(channel).await.finalized);
    assert_eq!(w.balance(w.payee()).await, 3 * PRICE);
    assert_eq!(w.balance(w.escrow).await, 0);
}

#[tokio::test]
async fn upkeep_slower_than_a_third_of_the_escrow_grace_period_is_refused_at_start() {
    let mut w = world().await;
    let grace = Duration::from_secs(DEFAULT_CLOSE_GRACE_PERIOD);
    let slow = w.paywall.spawn_maintenance(grace / 3 + Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(slow, MaintenanceError::TooSlow { rail: "mpp", deadline, .. } if deadline == grace),
        "{slow}"
    );
    w.paywall.spawn_maintenance(grace / 3).await.unwrap().abort();
    // An escrow whose grace period leaves the payee no time to close first: no upkeep at all.
    let hasty = w.rpc.deploy_session_escrow(&w.anvil.accounts()[0].signer, 60).await.unwrap();
    w.config = w.config.to_builder().escrow(hasty).build().unwrap();
    let sessions = w.sessions.clone();
    w.restart(sessions);
    let refused = w.paywall.spawn_maintenance(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(refused, MaintenanceError::Rail { rail: "mpp", .. }), "{refused}");
}

#[tokio::test]
async fn served_vouchers_are_settled_on_chain_once_past_the_threshold() {
    let mut w = world().await;
    w.config = w.config.to_builder().settle_threshold(3 * PRICE).build().unwrap();
    let sessions = w.sessions.clone();
    w.restart(sessions);
    let channel = w.opened(10 * PRICE).await;
    w.pay(channel, PRICE, 1).await;
    w.paywall.maintain().await;
    assert_eq!(w.channel(channel).await.settled, 0, "2 served: below the threshold");
    w.pay(channel, 2 * PRICE, 1).await;
    // The payer authorizes more than the next request costs.
    let c = w.challenge().await;
    let ahead = SessionPayload::Voucher(w.voucher(w.payer(), channel, 6 * PRICE));
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &ahead))).await.0, StatusCode::OK);
    w.paywall.maintain().await;
    // Settled: what was served and signed for (3 of the 4 served), never the unserved part of
    // the larger voucher; the channel stays open.
    let state = w.channel(channel).await;
    assert_eq!((state.settled, state.finalized), (3 * PRICE, false));
    assert_eq!(w.balance(w.payee()).await, 3 * PRICE);
    // Service goes on, and the close captures the rest of what was served.
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &ahead))).await.0, StatusCode::OK);
    let close = SessionPayload::Close(w.voucher(w.payer(), channel, 5 * PRICE));
    let (status, _, body) = send(&w.app, "/data", Some(&cred(&c, &close))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(w.balance(w.payee()).await, 5 * PRICE);
    assert_eq!(w.balance(w.escrow).await, 0);
}

#[tokio::test]
async fn a_lost_session_record_does_not_make_spent_vouchers_spendable_again() {
    let mut w = world().await;
    let channel = w.opened(DEPOSIT).await;
    w.pay(channel, PRICE, 2).await;
    // The store loses the channel's record.
    w.restart(Arc::new(MemoryStore::new()));
    let c = w.challenge().await;
    let last = SessionPayload::Voucher(w.voucher(w.payer(), channel, 3 * PRICE));
    let again = send(&w.app, "/data", Some(&cred(&c, &last))).await;
    refused(&again, StatusCode::PAYMENT_REQUIRED, "session/insufficient-balance");
    assert_eq!(w.handled.load(Ordering::SeqCst), 3);
    // The next voucher pays for exactly one more request.
    let next = SessionPayload::Voucher(w.voucher(w.payer(), channel, 4 * PRICE));
    let (status, headers, _) = send(&w.app, "/data", Some(&cred(&c, &next))).await;
    assert_eq!(status, StatusCode::OK);
    let receipt = common::receipt(&headers);
    assert_eq!(receipt.extensions["acceptedCumulative"], (4 * PRICE).to_string());
    assert_eq!(receipt.extensions["spent"], (4 * PRICE).to_string());
    let twice = send(&w.app, "/data", Some(&cred(&c, &next))).await;
    refused(&twice, StatusCode::PAYMENT_REQUIRED, "session/insufficient-balance");
    assert_eq!(w.handled.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_top_up_after_a_lost_record_does_not_make_spent_vouchers_spendable_again() {
    let mut w = world().await;
    let channel = w.opened(DEPOSIT).await;
    w.pay(channel, PRICE, 2).await;
    w.restart(Arc::new(MemoryStore::new()));
    let payer = &w.payer().signer;
    w.rpc.erc20_approve(payer, w.token, w.escrow, DEPOSIT).await.unwrap();
    let tx = w.rpc.escrow_top_up(payer, w.escrow, channel, DEPOSIT).await.unwrap();
    let c = w.challenge().await;
    let top_up = SessionPayload::TopUp(TopUpPayload {
        channel_id: channel,
        hash: tx,
        additional_deposit: DEPOSIT,
    });
    let (status, headers, _) = send(&w.app, "/data", Some(&cred(&c, &top_up))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(common::receipt(&headers).extensions["deposit"], (2 * DEPOSIT).to_string());
    let last = SessionPayload::Voucher(w.voucher(w.payer(), channel, 3 * PRICE));
    let again = send(&w.app, "/data", Some(&cred(&c, &last))).await;
    refused(&again, StatusCode::PAYMENT_REQUIRED, "session/insufficient-balance");
    assert_eq!(w.handled.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_replayed_open_after_a_lost_record_is_not_served_again() {
    let mut w = world().await;
    let (tx, salt, channel) = w.open_on_chain(DEPOSIT).await;
    let open = |w: &World, amount| {
        let voucher = w.voucher(w.payer(), channel, amount);
        SessionPayload::Open(OpenPayload { hash: tx, salt, authorized_signer: None, voucher })
    };
    let c = w.challenge().await;
    assert_eq!(send(&w.app, "/data", Some(&cred(&c, &open(&w, PRICE)))).await.0, StatusCode::OK);
    w.pay(channel, PRICE, 2).await;
    // The record is lost; later (longer than a challenge lives), the payer opens "again".
    w.restart(Arc::new(MemoryStore::new()));
    w.advance(2 * 300).await;
    let c = w.challenge().await;
    let replay = send(&w.app, "/data", Some(&cred(&c, &open(&w, 3 * PRICE)))).await;
    refused(&replay, StatusCode::PAYMENT_REQUIRED, "session/insufficient-balance");
    let first = send(&w.app, "/data", Some(&cred(&c, &open(&w, PRICE)))).await;
    refused(&first, StatusCode::PAYMENT_REQUIRED, "verification-failed");
    assert_eq!(w.handled.load(Ordering::SeqCst), 3);
    let (status, headers, _) = send(&w.app, "/data", Some(&cred(&c, &open(&w, 4 * PRICE)))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(common::receipt(&headers).extensions["spent"], (4 * PRICE).to_string());
}

#[tokio::test]
async fn a_close_after_a_lost_record_captures_what_its_voucher_authorizes() {
    let mut w = world().await;
    let payer_before = w.balance(w.payer().address).await;
    let channel = w.opened(DEPOSIT).await;
    w.pay(channel, PRICE, 2).await;
    w.restart(Arc::new(MemoryStore::new()));
    let c = w.challenge().await;
    let close = SessionPayload::Close(w.voucher(w.payer(), channel, 3 * PRICE));
    let (status, _, body) = send(&w.app, "/data", Some(&cred(&c, &close))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["captured"], (3 * PRICE).to_string());
    assert_eq!(w.balance(w.payee()).await, 3 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, payer_before - 3 * PRICE);
}

#[tokio::test]
async fn the_handler_sees_the_on_chain_payer_not_the_credentials_source() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    let (_, headers, _) = send(&w.app, "/who", None).await;
    let c = common::challenges(&headers).remove(0);
    let stranger = w.anvil.accounts()[5].address;
    let v = SessionPayload::Voucher(w.voucher(w.payer(), channel, 2 * PRICE));
    let mut credential = Credential::new(&c, v.to_json());
    credential.source = Some(format!("did:pkh:eip155:{}:{stranger:#x}", w.anvil.chain_id()));
    let (status, _, body) = send(&w.app, "/who", Some(&credential.to_authorization())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Value::String(format!("{:#x}", w.payer().address)));
}

#[tokio::test]
async fn a_quiet_upkeep_tick_costs_two_rpc_calls_whatever_the_number_of_channels() {
    let mut w = world().await;
    for _ in 0..3 {
        let channel = w.opened(DEPOSIT).await;
        w.pay(channel, PRICE, 1).await;
    }
    let (url, seen) = counting_proxy(w.anvil.url()).await.unwrap();
    let proxied = EvmRpc::connect(&url).await.unwrap();
    w.config = w.config.to_builder().rpc(proxied).build().unwrap();
    let sessions = w.sessions.clone();
    w.restart(sessions);
    let calls = || std::mem::take(&mut *seen.lock().unwrap());
    calls();
    // The first tick reads the latest block and every open channel.
    w.paywall.maintain().await;
    assert_eq!(calls(), ["eth_blockNumber", "eth_call", "eth_call", "eth_call"]);
    // Then: the latest block and the close requests since the last one read.
    for _ in 0..3 {
        w.anvil.mine().await.unwrap();
        w.paywall.maintain().await;
        assert_eq!(calls(), ["eth_blockNumber", "eth_getLogs"]);
    }
    // No new block, nothing more to read.
    w.paywall.maintain().await;
    assert_eq!(calls(), ["eth_blockNumber"]);
}

// ---- Up front: a later request carries its voucher, echoing a challenge issued earlier ----

/// `c` re-issued by this server (key [`common::SECRET`]) with `amount` per request.
fn priced_at(c: &Challenge, amount: u128) -> Challenge {
    let mut request = c.request.clone();
    request["amount"] = amount.to_string().into();
    farebox_mpp::ChallengeKey::new(common::SECRET)
        .unwrap()
        .issue(farebox_mpp::ChallengeParams {
            realm: c.realm.clone(),
            method: c.method.clone(),
            intent: c.intent.clone(),
            request,
            expires: c.expires.clone(),
            description: None,
            digest: None,
            opaque: c.opaque_map().unwrap(),
            header: None,
        })
        .unwrap()
}

#[tokio::test]
async fn a_live_challenge_pays_later_requests_up_front_and_each_voucher_once() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    // The challenge the opening request was paid under still pays: no further 402.
    let c = w.challenge().await;
    for n in 2..=3 {
        let v = SessionPayload::Voucher(w.voucher(w.payer(), channel, n * PRICE));
        let (status, headers, _) = send(&w.app, "/data", Some(&cred(&c, &v))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(common::receipt(&headers).extensions["spent"], (n * PRICE).to_string());
    }
    // The same voucher up front again: nothing left of what it authorized.
    let three = SessionPayload::Voucher(w.voucher(w.payer(), channel, 3 * PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &three))).await,
        StatusCode::PAYMENT_REQUIRED,
        "session/insufficient-balance",
    );
    // One not above what was accepted: refused as going backwards.
    let two = SessionPayload::Voucher(w.voucher(w.payer(), channel, 2 * PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&c, &two))).await,
        StatusCode::PAYMENT_REQUIRED,
        "verification-failed",
    );
    // The challenge expired: refused before the voucher is looked at, nothing accepted.
    let four = SessionPayload::Voucher(w.voucher(w.payer(), channel, 4 * PRICE));
    refused(
        &send(&w.app, "/data", Some(&cred(&common::expired(&c, 1), &four))).await,
        StatusCode::PAYMENT_REQUIRED,
        "payment-expired",
    );
    let record = w.sessions.load_session("mpp-evm-session", &format!("{channel:#x}")).await;
    let record = record.unwrap().unwrap().value;
    assert_eq!((record.accepted, record.spent), (3 * PRICE, 3 * PRICE));
    assert_eq!(w.handled.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_cheaper_routes_challenge_does_not_pay_for_a_dearer_route() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    let cheap = w.challenge().await; // issued for /data at PRICE
    let v = SessionPayload::Voucher(w.voucher(w.payer(), channel, 3 * PRICE));
    refused(
        &send(&w.app, "/dear", Some(&cred(&cheap, &v))).await,
        StatusCode::PAYMENT_REQUIRED,
        "invalid-challenge",
    );
    // Bound to the right route but at a lower price than the route's (as a challenge issued
    // before a price rise would be): refused too.
    let dear = w.challenge_for("/dear").await;
    refused(
        &send(&w.app, "/dear", Some(&cred(&priced_at(&dear, PRICE), &v))).await,
        StatusCode::PAYMENT_REQUIRED,
        "payment-insufficient",
    );
    let record = w.sessions.load_session("mpp-evm-session", &format!("{channel:#x}")).await;
    assert_eq!(record.unwrap().unwrap().value.accepted, PRICE, "no refused voucher was kept");
    // Its own challenge pays it, debiting its price.
    let (status, headers, _) = send(&w.app, "/dear", Some(&cred(&dear, &v))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(common::receipt(&headers).extensions["spent"], (3 * PRICE).to_string());
    assert_eq!(w.handled.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_up_front_vouchers_never_serve_more_than_they_pay_for() {
    let w = world().await;
    let channel = w.opened(DEPOSIT).await;
    let c = w.challenge().await;
    // Eight requests at once, each with the next voucher, in any order; the deposit pays four.
    let tasks: Vec<_> = (2..=9)
        .map(|n| {
            let auth = cred(&c, &SessionPayload::Voucher(w.voucher(w.payer(), channel, n * PRICE)));
            let app = w.app.clone();
            tokio::spawn(async move { send(&app, "/data", Some(&auth)).await.0 })
        })
        .collect();
    let mut served = 0u128;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => served += 1,
            StatusCode::PAYMENT_REQUIRED => {}
            other => panic!("unexpected {other}"),
        }
    }
    let record = w.sessions.load_session("mpp-evm-session", &format!("{channel:#x}")).await;
    let record = record.unwrap().unwrap().value;
    assert!(record.accepted <= DEPOSIT);
    assert!(record.spent <= record.accepted, "never served beyond what vouchers authorize");
    assert_eq!(record.spent, (1 + served) * PRICE, "each served request debited once");
    assert_eq!(w.handled.load(Ordering::SeqCst) as u128, 1 + served);
    assert!(served >= 1);
}
