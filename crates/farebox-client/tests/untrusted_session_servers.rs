//! The paying client against MPP session servers that lie about money, on a real anvil with the
//! real SessionEscrow and on the embedded Lightning dev network. Each server is a real farebox
//! paywall whose answers a layer rewrites (or, for the escrow, a contract that is not what it
//! claims). Asserted on chain and on the wallet's node: the server cannot make the wallet sign
//! more than it signed, deposit where or more than its policy allows, or count a refund that
//! did not happen.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{
    EvmChain, EvmSetup, FUNDS, PRICE, Payer, Server, Tamper, is_close_answer, kinds,
    lightning_server, lightning_wallet, set_body_member, set_receipt_member,
};
use farebox_client::{Budget, ClientError, EntryKind, Overclaim, PaymentMiddleware};
use farebox_core::{Asset, Money};
use farebox_evm::rpc::MINED_WITHIN;
use farebox_evm::{Bytes, TxHash, U256};
use farebox_lightning::{
    CreatedInvoice, DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend,
    LightningError, PaymentHash, PaymentOutcome,
};
use farebox_mpp::ProblemType;
use farebox_mpp::client::MppWallet;
use farebox_mpp::client::session::LightningSessionPolicy;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::evm::voucher::{self, Voucher};
use http::StatusCode;
use serde_json::json;

fn overclaim(err: &reqwest_middleware::Error) -> &Overclaim {
    match ClientError::from_middleware(err) {
        Some(ClientError::Overclaimed(o)) => o,
        other => panic!("expected an overclaim, got {other:?} ({err})"),
    }
}

/// Rewrites the `Payment-Receipt` of served requests (not of closes) from the `after`-th on, to
/// claim `spent`.
fn receipts_claiming(spent: u128, after: usize) -> Tamper {
    let seen = Arc::new(AtomicUsize::new(0));
    Arc::new(move |parts, body| {
        if body.as_slice() == b"data" && seen.fetch_add(1, Ordering::SeqCst) + 1 >= after {
            set_receipt_member(parts, "spent", json!(spent.to_string()));
        }
    })
}

// ---- 12: the client never signs a close above what it signed ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_claiming_more_than_was_signed_closes_the_channel_at_what_was_signed() {
    let chain = EvmChain::start().await;
    // From the third request on, the receipts claim 9 requests spent.
    let tamper = receipts_claiming(9 * PRICE, 3);
    let w = chain.serve(EvmSetup { tamper: Some(tamper), ..EvmSetup::default() }).await;
    let budget = w.budget(PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(10 * PRICE));
    p.served(&w.base, 2).await;
    let err = p.get(&w.base).await.unwrap_err();
    let o = overclaim(&err);
    assert_eq!((o.claimed.clone(), o.signed.clone()), (w.money(9 * PRICE), w.money(3 * PRICE)));
    assert!(o.closed, "the channel was closed at once");
    assert_eq!(p.sessions.open_count(), 0);
    // On chain: the payee got what the wallet signed, the payer the deposit less that.
    assert_eq!(w.balance(w.payee()).await, 3 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 3 * PRICE);
    assert_eq!(w.balance(w.escrow).await, 0);
    assert_eq!(budget.spent(&w.asset), w.money(3 * PRICE));
    let refund = p.ledger.entries().pop().unwrap();
    assert_eq!((refund.kind, refund.amount), (EntryKind::Refund, w.money(7 * PRICE)));
    assert!(refund.reference.parse::<TxHash>().is_ok(), "the close transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_402_claiming_more_than_was_signed_closes_the_channel_at_what_was_signed() {
    let chain = EvmChain::start().await;
    // The second paid request is served, then answered with a 402 whose `requiredTopUp` says
    // the channel had less left than the voucher just signed.
    let seen = Arc::new(AtomicUsize::new(0));
    let tamper: Tamper = Arc::new(move |parts, body| {
        if body.as_slice() == b"data" && seen.fetch_add(1, Ordering::SeqCst) == 1 {
            parts.status = StatusCode::PAYMENT_REQUIRED;
            parts.headers.remove("payment-receipt");
            parts
                .headers
                .insert(http::header::CONTENT_TYPE, "application/problem+json".parse().unwrap());
            *body = serde_json::to_vec(&json!({
                "type": ProblemType::SessionInsufficientBalance.uri(),
                "title": "Insufficient balance",
                "status": 402,
                "requiredTopUp": (5 * PRICE).to_string(),
            }))
            .unwrap();
        }
    });
    let w = chain.serve(EvmSetup { tamper: Some(tamper), ..EvmSetup::default() }).await;
    let budget = w.budget(PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(10 * PRICE));
    assert_eq!(p.get(&w.base).await.unwrap().status(), 200);
    let err = p.get(&w.base).await.unwrap_err();
    let o = overclaim(&err);
    assert_eq!(o.signed, w.money(2 * PRICE));
    assert_eq!(o.claimed, w.money(6 * PRICE), "2 signed − 1 for this request + 5 missing");
    assert!(o.closed);
    assert_eq!(p.sessions.open_count(), 0);
    assert_eq!(w.balance(w.payee()).await, 2 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 2 * PRICE);
    assert_eq!(budget.spent(&w.asset), w.money(2 * PRICE));
}

// ---- 13: the server cannot choose the escrow or the deposit ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escrow_the_policy_does_not_pin_gets_no_approve_and_no_deposit() {
    let chain = EvmChain::start().await;
    // A second, genuine SessionEscrow, which the wallet's policy does not name.
    let other =
        chain.rpc.deploy_session_escrow(&chain.anvil.accounts()[0].signer, 900).await.unwrap();
    let w = chain.serve(EvmSetup { escrow: Some(other), ..EvmSetup::default() }).await;
    let budget = w.budget(PRICE, 50 * PRICE);
    let p = Payer::new(&budget, w.wallet(10 * PRICE));
    let err = p.get(&w.base).await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&err), Some(ClientError::SessionRefused(_))),
        "{err}"
    );
    assert_eq!(w.allowance(w.payer().address, other).await, 0, "no approve for that escrow");
    assert_eq!(w.balance(w.payer().address).await, FUNDS);
    assert_eq!(w.balance(other).await, 0);
    assert_eq!(w.payer_nonce().await, U256::ZERO, "no transaction at all");
    assert_eq!(w.credentials.load(Ordering::SeqCst), 0);
    assert!(p.ledger.entries().is_empty());
    assert_eq!(budget.spent(&w.asset), w.money(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_session_leaves_another_wallets_offer_payable() {
    // The server takes USDC in a session on an escrow the EVM wallet does not pin, or sats.
    let network = DevNetwork::new();
    let chain = EvmChain::start().await;
    let other =
        chain.rpc.deploy_session_escrow(&chain.anvil.accounts()[0].signer, 900).await.unwrap();
    let receiver: Arc<dyn LightningBackend> = Arc::new(DevNode::random(&network, 0));
    let setup = EvmSetup { escrow: Some(other), lightning: Some(receiver), ..EvmSetup::default() };
    let w = chain.serve(setup).await;
    let node = Arc::new(DevNode::random(&network, 100_000));
    let budget = w.budget(PRICE, 50 * PRICE).allow(Money::sats(50), Money::sats(100)).unwrap();
    let payer = PaymentMiddleware::new(budget)
        .wallet(w.wallet(10 * PRICE))
        .wallet(MppWallet::new().lightning(node.clone(), 1_000));
    let client = farebox_client::paying_client(reqwest::Client::new(), payer);
    let res = client.get(format!("{}/data", w.base)).send().await.unwrap();
    assert_eq!(res.status(), 200, "paid by the Lightning wallet");
    assert_eq!(node.balance_msat(), 100_000 - 10_000);
    assert_eq!(w.allowance(w.payer().address, other).await, 0);
    assert_eq!(w.payer_nonce().await, U256::ZERO, "the EVM wallet sent nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_above_the_deposit_cap_is_refused_before_anything_moves() {
    let w = EvmChain::start().await.serve(EvmSetup::default()).await;
    let budget = w.budget(10 * PRICE, 50 * PRICE);
    let p = Payer::new(&budget, w.wallet_with(w.policy(PRICE - 1)));
    let err = p.get(&w.base).await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&err), Some(ClientError::SessionRefused(_))),
        "{err}"
    );
    assert_eq!(w.allowance(w.payer().address, w.escrow).await, 0);
    assert_eq!(w.balance(w.payer().address).await, FUNDS);
    assert_eq!(w.payer_nonce().await, U256::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suggested_deposit_above_the_cap_puts_up_only_the_cap_and_a_full_channel_is_renewed() {
    // The server suggests 100 requests; the policy caps a channel at 3.
    let chain = EvmChain::start().await;
    let setup = EvmSetup { suggested_deposit: Some(100 * PRICE), ..EvmSetup::default() };
    let w = chain.serve(setup).await;
    let budget = w.budget(PRICE, 50 * PRICE);
    let p = Payer::new(&budget, w.wallet_with(w.policy(3 * PRICE)));
    p.served(&w.base, 3).await;
    assert_eq!(w.balance(w.escrow).await, 3 * PRICE, "the cap, not the suggestion");
    assert_eq!(w.allowance(w.payer().address, w.escrow).await, 0, "approved exactly the cap");
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 3 * PRICE);
    // The fourth would pass the cap: the full channel is closed, a new one opened.
    assert_eq!(p.get(&w.base).await.unwrap().status(), 200);
    assert_eq!(w.balance(w.payee()).await, 3 * PRICE, "the first channel, spent and closed");
    assert_eq!(w.balance(w.escrow).await, 3 * PRICE, "only the new channel's deposit");
    assert_eq!(p.sessions.open_count(), 1);
    let closed = p.close().await.unwrap();
    assert_eq!(closed.refunded, w.money(2 * PRICE));
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 4 * PRICE);
    assert_eq!(budget.spent(&w.asset), w.money(4 * PRICE));
    let deposits = p.ledger.entries().into_iter().filter(|e| e.kind == EntryKind::Deposit);
    assert!(deposits.map(|e| e.amount.amount).all(|d| d <= 3 * PRICE));
}

/// `tests/contracts/LyingEscrow.sol`, compiled (see its notice).
const LYING_ESCROW: &str = include_str!("contracts/LyingEscrow.bin");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_is_not_the_one_asked_for_gets_no_voucher() {
    let chain = EvmChain::start().await;
    // The policy pins an escrow that records every channel as paying its deployer (account 4)
    // while its event names the payee asked for.
    let thief = &chain.anvil.accounts()[4];
    let code: Bytes = LYING_ESCROW.trim().parse().unwrap();
    let lying = chain.rpc.deploy(&thief.signer, code, MINED_WITHIN).await.unwrap();
    let thief = thief.address;
    let w = chain.serve(EvmSetup { escrow: Some(lying), ..EvmSetup::default() }).await;
    let budget = w.budget(PRICE, 50 * PRICE);
    let policy =
        farebox_mpp::client::session::EvmSessionPolicy::new(w.rpc.clone(), lying, 10 * PRICE);
    let p = Payer::new(&budget, w.wallet_with(policy.deposit(5 * PRICE)));
    let err = p.get(&w.base).await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&err), Some(ClientError::PaidWithoutProof(_))),
        "{err}"
    );
    // The deposit did leave (it is counted), but no voucher reached the server.
    assert_eq!(w.balance(lying).await, 5 * PRICE);
    assert_eq!(w.credentials.load(Ordering::SeqCst), 0, "no credential was sent");
    assert_eq!(w.served.load(Ordering::SeqCst), 0);
    assert_eq!(budget.spent(&w.asset), w.money(5 * PRICE));
    assert_eq!(kinds(&p.ledger), [EntryKind::Deposit, EntryKind::Session]);
    assert_eq!(w.balance(thief).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lightning_session_never_holds_more_than_the_cap() {
    let network = DevNetwork::new();
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    // A 500 sat deposit against a 100 sat cap: refused, and the charge is paid instead.
    let greedy = lightning_server(Arc::new(DevNode::random(&network, 0)), 500, None).await;
    let budget = Budget::new().allow(Money::sats(50), Money::sats(1_000)).unwrap();
    let policy = LightningSessionPolicy { max_deposit_sat: 100, ..Default::default() };
    let p = Payer::new(&budget, lightning_wallet(wallet.clone(), policy.clone()));
    let res = p.get(&greedy.base).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(kinds(&p.ledger), [EntryKind::Payment]);
    assert_eq!(wallet.balance_msat(), 1_000_000 - 10_000, "no deposit left the wallet");

    // 30 sat deposits against a 50 sat cap: the top-up that would make 60 opens a new session.
    let Server { base, .. } =
        lightning_server(Arc::new(DevNode::random(&network, 0)), 30, None).await;
    let policy = LightningSessionPolicy { max_deposit_sat: 50, ..policy };
    let p = Payer::new(&budget, lightning_wallet(wallet.clone(), policy));
    p.served(&base, 5).await;
    let refunds = p.ledger.entries().into_iter().filter(|e| e.kind == EntryKind::Refund).count();
    assert_eq!(refunds, 1, "the full session was closed");
    assert_eq!(p.sessions.open_count(), 1);
    let closed = p.close().await.unwrap();
    assert_eq!(closed.refunded, Money::sats(10), "30 put up, 20 spent");
    assert_eq!(wallet.balance_msat(), 1_000_000 - 10_000 - 50_000);
}

// ---- 14: a refund counts only on evidence ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_answer_inflating_the_refund_credits_only_what_the_chain_refunded() {
    let chain = EvmChain::start().await;
    let tamper: Tamper = Arc::new(|_, body| {
        if is_close_answer(body) {
            set_body_member(body, "refunded", json!((10 * PRICE).to_string()));
            set_body_member(body, "captured", json!("0"));
        }
    });
    let w = chain.serve(EvmSetup { tamper: Some(tamper), ..EvmSetup::default() }).await;
    let budget = w.budget(PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(10 * PRICE));
    p.served(&w.base, 3).await;
    let closed = p.close().await.unwrap();
    assert_eq!(closed.refunded, w.money(7 * PRICE), "the ChannelClosed event's refund");
    assert_eq!(closed.spent, w.money(3 * PRICE));
    assert_eq!(budget.spent(&w.asset), w.money(3 * PRICE));
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 3 * PRICE);
    let refund = p.ledger.entries().pop().unwrap();
    assert_eq!((refund.kind, refund.amount), (EntryKind::Refund, w.money(7 * PRICE)));
    assert_eq!(refund.reference, closed.reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_answer_naming_another_channels_close_credits_nothing() {
    let chain = EvmChain::start().await;
    // Another payer (account 3) opens a 50-request channel that the payee closes at 0: a real
    // ChannelClosed refunding 50 requests, of another channel.
    let (other, payee) = (&chain.anvil.accounts()[3], &chain.anvil.accounts()[2]);
    chain.anvil.mint(chain.token, other.address, U256::from(50 * PRICE)).await.unwrap();
    chain.rpc.erc20_approve(&other.signer, chain.token, chain.escrow, 50 * PRICE).await.unwrap();
    let salt = farebox_evm::B256::repeat_byte(7);
    let (_, channel) = chain
        .rpc
        .escrow_open(
            &other.signer,
            chain.escrow,
            payee.address,
            chain.token,
            50 * PRICE,
            salt,
            None,
        )
        .await
        .unwrap();
    let domain = chain.rpc.voucher_domain(chain.escrow);
    let zero =
        voucher::sign(&other.signer, &domain, &Voucher { channelId: channel, cumulativeAmount: 0 });
    let foreign =
        chain.rpc.escrow_close(&payee.signer, chain.escrow, channel, 0, &zero).await.unwrap();
    let tamper: Tamper = Arc::new(move |_, body| {
        if is_close_answer(body) {
            set_body_member(body, "txHash", json!(format!("{foreign:#x}")));
            set_body_member(body, "refunded", json!((50 * PRICE).to_string()));
        }
    });
    let w = chain.serve(EvmSetup { tamper: Some(tamper), ..EvmSetup::default() }).await;
    let budget = w.budget(PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(10 * PRICE));
    p.served(&w.base, 3).await;
    let closed = p.close().await;
    assert!(matches!(closed, Err(ClientError::RefundUnproven(_))), "{closed:?}");
    assert_eq!(budget.spent(&w.asset), w.money(10 * PRICE), "no refund credited");
    assert!(!kinds(&p.ledger).contains(&EntryKind::Refund));
}

/// A receiving node that cannot pay out refunds (its payments fail), delegating the rest to a
/// dev node.
struct NoRefunds(DevNode);

#[async_trait]
impl LightningBackend for NoRefunds {
    async fn create_invoice(&self, r: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        self.0.create_invoice(r).await
    }
    async fn invoice_state(&self, h: &PaymentHash) -> Result<InvoiceState, LightningError> {
        self.0.invoice_state(h).await
    }
    async fn wait_for_settlement(
        &self,
        h: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceState, LightningError> {
        self.0.wait_for_settlement(h, timeout).await
    }
    async fn pay(&self, _: &str, _: u64) -> Result<PaymentOutcome, LightningError> {
        Err(LightningError::PaymentFailed("no route".into()))
    }
    async fn pay_amount(&self, _: &str, _: u64, _: u64) -> Result<PaymentOutcome, LightningError> {
        Err(LightningError::PaymentFailed("no route".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lightning_server_claiming_a_refund_it_did_not_pay_gets_nothing_credited() {
    let network = DevNetwork::new();
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    // The refund fails; the answer says it succeeded, and for more than was left.
    let tamper: Tamper = Arc::new(|_, body| {
        if is_close_answer(body) {
            set_body_member(body, "refundStatus", json!("succeeded"));
            set_body_member(body, "refundSats", json!(25));
        }
    });
    let node = Arc::new(NoRefunds(DevNode::random(&network, 0)));
    let Server { base, .. } = lightning_server(node, 30, Some(tamper)).await;
    let budget = Budget::new().allow(Money::sats(50), Money::sats(100)).unwrap();
    let policy =
        LightningSessionPolicy { refund_wait: Duration::from_millis(200), ..Default::default() };
    let p = Payer::new(&budget, lightning_wallet(wallet.clone(), policy));
    p.served(&base, 2).await;
    let closed = p.close().await;
    assert!(matches!(closed, Err(ClientError::RefundUnproven(_))), "{closed:?}");
    assert_eq!(wallet.balance_msat(), 1_000_000 - 30_000, "nothing came back");
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(30), "and nothing was credited");
    assert!(!kinds(&p.ledger).contains(&EntryKind::Refund));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lightning_server_inflating_its_refund_gets_credited_what_arrived() {
    let network = DevNetwork::new();
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let tamper: Tamper = Arc::new(|_, body| {
        if is_close_answer(body) {
            set_body_member(body, "refundSats", json!(30));
        }
    });
    let Server { base, .. } =
        lightning_server(Arc::new(DevNode::random(&network, 0)), 30, Some(tamper)).await;
    let budget = Budget::new().allow(Money::sats(50), Money::sats(100)).unwrap();
    let p =
        Payer::new(&budget, lightning_wallet(wallet.clone(), LightningSessionPolicy::default()));
    p.served(&base, 2).await;
    let closed = p.close().await.unwrap();
    assert_eq!(closed.refunded, Money::sats(10), "what the wallet's node received");
    assert_eq!(wallet.balance_msat(), 1_000_000 - 20_000);
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(20));
    let refund = p.ledger.entries().pop().unwrap();
    assert_eq!((refund.kind, refund.amount), (EntryKind::Refund, Money::sats(10)));
    assert_eq!(refund.reference, closed.reference, "the return invoice's payment hash");
}
