//! The paying client with MPP sessions against a real paywall: a Lightning prepaid balance on
//! the embedded dev network, an EVM payment channel on a real anvil with SessionEscrow.
//! Asserted: many requests on one deposit, top-ups within the budget, the deposit counted
//! against the budget before anything moves, and the refund credited back at close (explicit
//! or when the wallet is dropped).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{
    EvmChain, EvmSetup, FUNDS, PRICE, Payer, Server, evm_world, kinds, lightning_server,
    lightning_wallet,
};
use farebox_client::{Budget, ClientError, EntryKind};
use farebox_core::{Asset, Money, SessionStore};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::client::session::LightningSessionPolicy;
use farebox_mpp::evm::escrow::EscrowRpc;

// ---- Lightning ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightning_session_many_requests_one_deposit_top_up_and_refund() {
    let network = DevNetwork::new();
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let Server { base, served, .. } =
        lightning_server(Arc::new(DevNode::random(&network, 0)), 30, None).await;
    let budget = Budget::new().allow(Money::sats(50), Money::sats(100)).unwrap();
    let p =
        Payer::new(&budget, lightning_wallet(wallet.clone(), LightningSessionPolicy::default()));
    // 30 sat pays three requests; the fourth tops up with another 30.
    p.served(&base, 5).await;
    assert_eq!(served.load(Ordering::SeqCst), 5);
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(60), "two deposits left the wallet");
    assert_eq!(wallet.balance_msat(), 1_000_000 - 60_000);
    let deposits = kinds(&p.ledger).iter().filter(|k| **k == EntryKind::Deposit).count();
    assert_eq!(deposits, 2);

    let closed = p.sessions.close_all().await;
    assert_eq!(closed.len(), 1);
    let closed = closed.into_iter().next().unwrap().unwrap();
    assert_eq!(closed.refunded, Money::sats(10), "60 put up, 50 spent");
    assert_eq!(wallet.balance_msat(), 1_000_000 - 50_000);
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(50), "the refund came back");
    // The ledger names the evidence: the return invoice the wallet's node saw paid.
    let refund = p.ledger.entries().pop().unwrap();
    assert_eq!(refund.kind, EntryKind::Refund);
    assert_eq!(refund.amount, Money::sats(10));
    assert_eq!(refund.reference, closed.reference);
    let received = wallet.settled_invoices();
    assert!(received.iter().any(|i| hex::encode(i.payment_hash) == closed.reference));
    assert_eq!(p.sessions.open_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_above_the_budget_is_never_paid_and_the_charge_is_paid_instead() {
    let network = DevNetwork::new();
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let Server { base, served, .. } =
        lightning_server(Arc::new(DevNode::random(&network, 0)), 500, None).await;
    // The price fits the per-request limit, the 500 sat deposit does not fit the total.
    let budget = Budget::new().allow(Money::sats(50), Money::sats(400)).unwrap();
    let p =
        Payer::new(&budget, lightning_wallet(wallet.clone(), LightningSessionPolicy::default()));
    // The 402 offers the session and a 10 sat charge: the deposit is refused before anything
    // is paid, and the charge, which fits, is paid instead.
    let res = p.get(&base).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(kinds(&p.ledger), [EntryKind::Payment]);
    assert_eq!(wallet.balance_msat(), 1_000_000 - 10_000, "no deposit left the wallet");
    assert_eq!(served.load(Ordering::SeqCst), 1);
    // With a total too small even for the charge: refused, nothing paid.
    let tight = Budget::new().allow(Money::sats(50), Money::sats(5)).unwrap();
    let p = Payer::new(&tight, lightning_wallet(wallet.clone(), LightningSessionPolicy::default()));
    let err = p.get(&base).await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&err), Some(ClientError::OverBudget { .. })),
        "{err}"
    );
    assert!(p.ledger.entries().is_empty());
    assert_eq!(wallet.balance_msat(), 1_000_000 - 10_000);
}

// ---- EVM ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evm_session_opens_tops_up_and_closes_with_a_refund_on_chain() {
    let w = evm_world().await;
    let budget = w.budget(10 * PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(5 * PRICE));
    // Five requests fit the first deposit; the sixth tops up by another five.
    p.served(&w.base, 7).await;
    assert_eq!(w.served.load(Ordering::SeqCst), 7);
    assert_eq!(w.balance(w.escrow).await, 10 * PRICE, "both deposits are in the escrow");
    assert_eq!(w.balance(w.payee()).await, 0, "nothing settled before the close");
    assert_eq!(budget.spent(&w.asset), w.money(10 * PRICE));
    let k = kinds(&p.ledger);
    assert_eq!(k.iter().filter(|k| **k == EntryKind::Deposit).count(), 2);
    assert_eq!(k.iter().filter(|k| **k == EntryKind::Session).count(), 7);

    let closed = p.close().await.unwrap();
    assert_eq!(closed.spent, w.money(7 * PRICE));
    assert_eq!(closed.refunded, w.money(3 * PRICE));
    let refund = p.ledger.entries().pop().unwrap();
    assert_eq!((refund.kind, refund.amount), (EntryKind::Refund, w.money(3 * PRICE)));
    assert_eq!(refund.reference, closed.reference, "the close transaction");
    let tx: farebox_evm::TxHash = closed.reference.parse().unwrap();
    let event = w.rpc.escrow_closed_by(w.escrow, tx, closed.session.parse().unwrap()).await;
    assert_eq!(event.unwrap().unwrap().refundedToPayer, 3 * PRICE);
    assert_eq!(w.balance(w.payee()).await, 7 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 7 * PRICE);
    assert_eq!(budget.spent(&w.asset), w.money(7 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evm_deposit_over_budget_moves_nothing() {
    let w = evm_world().await;
    let budget = w.budget(10 * PRICE, 50 * PRICE);
    let p = Payer::new(&budget, w.wallet(100 * PRICE));
    let err = p.get(&w.base).await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&err), Some(ClientError::OverBudget { .. })),
        "{err}"
    );
    assert_eq!(w.balance(w.payer().address).await, FUNDS);
    assert_eq!(w.payer_nonce().await, farebox_evm::U256::ZERO, "not even an approve was sent");
    assert_eq!(w.served.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_closes_its_channel() {
    let w = evm_world().await;
    let budget = w.budget(10 * PRICE, 20 * PRICE);
    {
        let p = Payer::new(&budget, w.wallet(5 * PRICE));
        p.served(&w.base, 2).await;
    } // the client, its middleware and the wallet go away here
    assert_eq!(w.balance(w.payee()).await, 2 * PRICE, "captured what was spent");
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 2 * PRICE, "the rest refunded");
    assert_eq!(budget.spent(&w.asset), w.money(2 * PRICE));
    let closed = w.sessions.idle_sessions(
        "mpp-evm-session",
        farebox_core::SessionStatus::Closed,
        u64::MAX,
        10,
    );
    assert_eq!(closed.await.unwrap().len(), 1);
}

// ---- One round trip per request ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evm_sessions_later_requests_each_take_one_http_request() {
    let w = evm_world().await;
    let budget = w.budget(10 * PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(5 * PRICE));
    p.served(&w.base, 1).await;
    assert_eq!(w.requests.load(Ordering::SeqCst), 2, "the first: a 402, then the open");
    // Each later request carries its voucher: the server sees it once.
    p.served(&w.base, 4).await;
    assert_eq!(w.requests.load(Ordering::SeqCst), 6);
    assert_eq!(w.served.load(Ordering::SeqCst), 5);
    let k = kinds(&p.ledger);
    assert_eq!(k.iter().filter(|k| **k == EntryKind::Session).count(), 5);
    assert_eq!(budget.spent(&w.asset), w.money(5 * PRICE), "the deposit, no more");
    let closed = p.close().await.unwrap();
    assert_eq!(closed.spent, w.money(5 * PRICE));
    assert_eq!(w.balance(w.payee()).await, 5 * PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_sent_up_front_on_an_expired_challenge_is_paid_once_after_the_402() {
    let w = evm_world().await;
    let budget = w.budget(10 * PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(5 * PRICE));
    p.served(&w.base, 1).await;
    // The next voucher arrives under an expired challenge: the server answers 402, and the
    // client pays that 402's challenge instead, once.
    w.expire_next.store(1, Ordering::SeqCst);
    p.served(&w.base, 1).await;
    assert_eq!(w.expire_next.load(Ordering::SeqCst), 0, "the up-front voucher was sent");
    assert_eq!(w.requests.load(Ordering::SeqCst), 2 + 2);
    assert_eq!(w.served.load(Ordering::SeqCst), 2);
    let sessions = kinds(&p.ledger).iter().filter(|k| **k == EntryKind::Session).count();
    assert_eq!(sessions, 2, "the refused voucher is not in the ledger");
    // It is signed again under the fresh challenge, not added to: the highest voucher the
    // server holds (what it could settle) is what it served.
    assert_eq!(w.held(&p).await, (2 * PRICE, 2 * PRICE));
    // And up front again under the new challenge.
    p.served(&w.base, 1).await;
    assert_eq!(w.requests.load(Ordering::SeqCst), 2 + 2 + 1);
    assert_eq!(w.held(&p).await, (3 * PRICE, 3 * PRICE));
    let closed = p.close().await.unwrap();
    assert_eq!(closed.spent, w.money(3 * PRICE), "three responses, three prices");
    assert_eq!(w.balance(w.payee()).await, 3 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 3 * PRICE);
    assert_eq!(budget.spent(&w.asset), w.money(3 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_up_front_requests_never_pay_for_more_than_was_served() {
    let w = evm_world().await;
    let budget = w.budget(10 * PRICE, 40 * PRICE);
    let p = Arc::new(Payer::new(&budget, w.wallet(20 * PRICE)));
    p.served(&w.base, 1).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (p, base) = (p.clone(), w.base.clone());
            tokio::spawn(async move { p.get(&base).await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if let Ok(200) = t.await.unwrap() {
            ok += 1;
        }
    }
    let served = w.served.load(Ordering::SeqCst);
    assert_eq!(served, 1 + ok, "every response the caller got was served once");
    let closed = p.close().await.unwrap();
    assert_eq!(closed.spent, w.money(served as u128 * PRICE));
    assert_eq!(w.balance(w.payee()).await, served as u128 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, FUNDS - served as u128 * PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lightning_sessions_bearer_proof_goes_up_front_once_bought() {
    let network = DevNetwork::new();
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let Server { base, served, requests, .. } =
        lightning_server(Arc::new(DevNode::random(&network, 0)), 40, None).await;
    let budget = Budget::new().allow(Money::sats(50), Money::sats(100)).unwrap();
    let p = Payer::new(&budget, lightning_wallet(wallet, LightningSessionPolicy::default()));
    // The open, then the first bearer request, each answer a 402.
    p.served(&base, 2).await;
    assert_eq!(requests.load(Ordering::SeqCst), 4);
    // From then on the bearer proof is sent with the request.
    p.served(&base, 2).await;
    assert_eq!(requests.load(Ordering::SeqCst), 6);
    assert_eq!(served.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_the_up_front_voucher_and_its_retry_costs_one_retry_and_nothing_more() {
    let w = evm_world().await;
    let budget = w.budget(10 * PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(5 * PRICE));
    p.served(&w.base, 1).await;
    // Both the up-front voucher and the one paying the 402 arrive under expired challenges:
    // the request fails as rejected after exactly one retry; nothing was served.
    w.expire_next.store(2, Ordering::SeqCst);
    let err = p.get(&w.base).await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&err), Some(ClientError::ProofRejected { .. })),
        "{err}"
    );
    assert_eq!(w.requests.load(Ordering::SeqCst), 2 + 2, "no loop");
    assert_eq!(w.served.load(Ordering::SeqCst), 1);
    assert_eq!(w.held(&p).await, (PRICE, PRICE), "neither refused voucher was kept");
    // The next request pays one price for one response.
    p.served(&w.base, 1).await;
    assert_eq!(w.held(&p).await, (2 * PRICE, 2 * PRICE));
    let closed = p.close().await.unwrap();
    assert_eq!(closed.spent, w.money(2 * PRICE));
    assert_eq!(w.balance(w.payee()).await, 2 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 2 * PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_price_rise_the_next_request_pays_the_new_price_once() {
    let w = EvmChain::start()
        .await
        .serve(EvmSetup { repriced: Some(2 * PRICE), ..EvmSetup::default() })
        .await;
    let budget = w.budget(10 * PRICE, 20 * PRICE);
    let p = Payer::new(&budget, w.wallet(10 * PRICE));
    p.served(&w.base, 2).await;
    assert_eq!(w.requests.load(Ordering::SeqCst), 3);
    // The price doubles: the voucher sent up front under the old challenge is refused (402),
    // and the new challenge is paid, once; then up front again at the new price.
    w.repriced.store(true, Ordering::SeqCst);
    p.served(&w.base, 1).await;
    assert_eq!(w.requests.load(Ordering::SeqCst), 3 + 2);
    p.served(&w.base, 1).await;
    assert_eq!(w.requests.load(Ordering::SeqCst), 3 + 2 + 1);
    assert_eq!(w.served.load(Ordering::SeqCst), 4);
    let paid = 2 * PRICE + 2 * 2 * PRICE;
    assert_eq!(w.held(&p).await, (paid, paid), "no lower price, nothing unearned");
    let closed = p.close().await.unwrap();
    assert_eq!(closed.spent, w.money(paid));
    assert_eq!(w.balance(w.payee()).await, paid);
    assert_eq!(w.balance(w.payer().address).await, FUNDS - paid);
}
