//! The behaviour every node backend owes its callers, written once and run against each mock
//! node (lnd, CLNRest, LNbits) through [`MockNode`].
//!
//! Amounts are whole sats and fee limits cover LNbits' default fee reserve (2 sat or 1 %), so
//! the same scenario holds for all three.

use std::time::{Duration, SystemTime};

use farebox_lightning::rest::Timeouts;
use farebox_lightning::{
    DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend, LightningError,
    parse_invoice, sha256,
};

use farebox_lightning::testing::{Answer, FaultState, Faults};

use super::{quick_timeouts, request};

/// Fee limit used by the scenarios: above LNbits' default 2-sat reserve for these amounts.
pub const MAX_FEE_MSAT: u64 = 10_000;

/// A mock node: a loopback server following one project's REST API, on a dev node.
#[allow(async_fn_in_trait)]
pub trait MockNode: Sized {
    /// Where payments are sent (exact path): counting requests to it proves "sent once".
    const PAY_PATH: &'static str;
    /// Side-effect-free calls made before a payment is sent (LNbits' fee-reserve).
    const PRE_PAY_PATHS: &'static [&'static str] = &[];

    async fn start(network: &DevNetwork, balance_msat: u64) -> Self;
    fn dev(&self) -> &DevNode;
    fn faults(&self) -> &Faults;
    /// A backend configured as an operator would, with `timeouts`.
    fn backend_with(&self, timeouts: Timeouts) -> Box<dyn LightningBackend>;
    fn backend(&self) -> Box<dyn LightningBackend> {
        self.backend_with(Timeouts::default())
    }
    /// A backend holding a credential this node refuses, that credential's text, and the
    /// backend's `Debug` output.
    fn refused_backend(&self) -> (Box<dyn LightningBackend>, String, String);
    /// A backend for `url`, where nothing listens.
    fn backend_at(url: &str) -> Box<dyn LightningBackend>;
    /// The node's base URL (it must not leak into errors).
    fn url(&self) -> String;
    /// The URL scheme this node is served with.
    const SCHEME: &'static str;
}

/// A receiving node (alice, no balance) and a paying one (bob) on one dev network.
pub async fn pair<N: MockNode>(bob_balance_msat: u64) -> (DevNetwork, N, N) {
    let network = DevNetwork::new();
    let alice = N::start(&network, 0).await;
    let bob = N::start(&network, bob_balance_msat).await;
    (network, alice, bob)
}

fn assert_kind(err: &LightningError, expected: fn(&LightningError) -> bool, what: &str) {
    assert!(expected(err), "expected {what}, got {err:?}");
}

fn is_unavailable(e: &LightningError) -> bool {
    matches!(e, LightningError::Unavailable(_))
}
fn is_auth_refused(e: &LightningError) -> bool {
    matches!(e, LightningError::AuthRefused(_))
}
fn is_invalid_response(e: &LightningError) -> bool {
    matches!(e, LightningError::InvalidResponse(_))
}
fn is_outcome_unknown(e: &LightningError) -> bool {
    matches!(e, LightningError::OutcomeUnknown(_))
}
fn is_payment_failed(e: &LightningError) -> bool {
    matches!(e, LightningError::PaymentFailed(_))
}

/// Create on one node, pay from another, settled with the payer's preimage and amount; paying
/// again moves nothing; a hash the node never issued is unknown.
pub async fn invoice_paid_from_another_node_settles_with_the_payers_preimage<N: MockNode>() {
    let (_network, alice, bob) = pair::<N>(1_000_000).await;
    let (server, wallet) = (alice.backend(), bob.backend());

    let invoice = server.create_invoice(request(21_000)).await.unwrap();
    let parsed = parse_invoice(&invoice.bolt11).unwrap();
    assert_eq!(parsed.payee, alice.dev().pubkey(), "signed by the node's key");
    assert_eq!((parsed.amount_msat, parsed.payment_hash), (Some(21_000), invoice.payment_hash));
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Open);

    let paid = wallet.pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(
        (paid.payment_hash, paid.amount_msat, paid.fee_msat),
        (invoice.payment_hash, 21_000, 0)
    );
    let settled = InvoiceState::Settled { preimage: paid.preimage, amount_msat: 21_000 };
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), settled);
    let waited = server.wait_for_settlement(&invoice.payment_hash, Duration::from_secs(5)).await;
    assert_eq!(waited.unwrap(), settled);
    assert_eq!((alice.dev().balance_msat(), bob.dev().balance_msat()), (21_000, 979_000));

    // Paying again moves nothing: the node reports the earlier payment, proof included.
    let again = wallet.pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap();
    assert_eq!(again.preimage, paid.preimage);
    assert_eq!((alice.dev().balance_msat(), bob.dev().balance_msat()), (21_000, 979_000));
    assert_eq!(bob.dev().sent_payments().len(), 1);

    assert_eq!(server.invoice_state(&[3; 32]).await.unwrap(), InvoiceState::Unknown);
}

/// Waiting on an open invoice returns `Open` when the time is up.
pub async fn an_open_invoice_stays_open_until_the_wait_times_out<N: MockNode>() {
    let network = DevNetwork::new();
    let alice = N::start(&network, 0).await;
    let server = alice.backend();
    let invoice = server.create_invoice(request(5_000)).await.unwrap();
    let state = server.wait_for_settlement(&invoice.payment_hash, Duration::from_millis(400)).await;
    assert_eq!(state.unwrap(), InvoiceState::Open);
}

/// A waiter sees the settlement that happens while it waits. Returns the receiving node, whose
/// requests show how the backend waited.
pub async fn a_waiter_sees_the_settlement<N: MockNode>() -> N {
    let (_network, alice, bob) = pair::<N>(100_000).await;
    let server = alice.backend();
    let invoice = server.create_invoice(request(5_000)).await.unwrap();
    let hash = invoice.payment_hash;
    let waiter =
        tokio::spawn(
            async move { server.wait_for_settlement(&hash, Duration::from_secs(30)).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paid = bob.backend().pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap();
    let state = waiter.await.unwrap().unwrap();
    assert_eq!(state, InvoiceState::Settled { preimage: paid.preimage, amount_msat: 5_000 });
    alice
}

/// An amountless invoice is paid the amount the payer chooses (not by `pay`), and settles for
/// that amount. For nodes that make amountless invoices (lnd, CLN).
pub async fn amountless_invoice_is_paid_the_amount_the_payer_chooses<N: MockNode>() {
    let (_network, alice, bob) = pair::<N>(100_000).await;
    let server = alice.backend();
    let expiry = Duration::from_secs(600);
    let invoice = server.create_amountless_invoice("refund".into(), expiry).await.unwrap();
    assert_eq!(parse_invoice(&invoice.bolt11).unwrap().amount_msat, None);

    let wallet = bob.backend();
    let refused = wallet.pay(&invoice.bolt11, MAX_FEE_MSAT).await;
    assert!(matches!(refused, Err(LightningError::InvalidInvoice(_))), "{refused:?}");
    let paid = wallet.pay_amount(&invoice.bolt11, 7_000, MAX_FEE_MSAT).await.unwrap();
    assert_eq!(paid.amount_msat, 7_000);
    assert_eq!(
        server.invoice_state(&invoice.payment_hash).await.unwrap(),
        InvoiceState::Settled { preimage: paid.preimage, amount_msat: 7_000 }
    );
    assert_eq!(alice.dev().balance_msat(), 7_000);
}

/// Connection refused: every call is `Unavailable`, nothing is paid.
pub async fn a_node_that_is_down_is_unavailable<N: MockNode>() {
    let addr = farebox_lightning::testing::dead_port().await;
    let backend = N::backend_at(&format!("{}://{addr}", N::SCHEME));
    let payee = DevNode::random(&DevNetwork::new(), 0);
    let invoice = payee.create_invoice(request(1_000)).await.unwrap();
    let errors = [
        backend.create_invoice(request(1_000)).await.unwrap_err(),
        backend.invoice_state(&invoice.payment_hash).await.unwrap_err(),
        backend
            .wait_for_settlement(&invoice.payment_hash, Duration::from_secs(1))
            .await
            .unwrap_err(),
        backend.pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap_err(),
    ];
    for err in &errors {
        assert_kind(err, is_unavailable, "Unavailable");
    }
}

/// A refused credential is `AuthRefused` on every call, nothing is paid, and neither the
/// credential nor the URL appears in an error or in `Debug` output.
pub async fn a_refused_credential_is_auth_refused_and_never_repeated<N: MockNode>() {
    let (_network, alice, bob) = pair::<N>(100_000).await;
    let invoice = alice.backend().create_invoice(request(1_000)).await.unwrap();
    let (server, secret, debug) = alice.refused_backend();
    let (wallet, _, _) = bob.refused_backend();
    let errors = [
        server.create_invoice(request(1_000)).await.unwrap_err(),
        server.invoice_state(&invoice.payment_hash).await.unwrap_err(),
        server
            .wait_for_settlement(&invoice.payment_hash, Duration::from_secs(1))
            .await
            .unwrap_err(),
        wallet.pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap_err(),
    ];
    let host = alice.url().split("://").nth(1).unwrap().to_string();
    for err in &errors {
        assert_kind(err, is_auth_refused, "AuthRefused");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&secret), "the credential leaked: {text}");
        assert!(!text.contains(&host), "the URL leaked: {text}");
    }
    assert!(!debug.contains(&secret) && !debug.contains(&host), "Debug leaks: {debug}");
    assert_eq!(bob.dev().balance_msat(), 100_000, "nothing was paid");
}

/// An invoice past its expiry is `Expired` at the node that issued it, and refused by a payer
/// before anything is sent.
pub async fn expired_invoices_are_expired_on_both_sides<N: MockNode>() {
    let (network, alice, bob) = pair::<N>(100_000).await;
    let server = alice.backend();

    network.set_time(SystemTime::now());
    let short = InvoiceRequest { expiry: Duration::from_secs(60), ..request(1_000) };
    let invoice = server.create_invoice(short).await.unwrap();
    network.advance_time(Duration::from_secs(120));
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Expired);
    let waited = server.wait_for_settlement(&invoice.payment_hash, Duration::from_secs(5)).await;
    assert_eq!(waited.unwrap(), InvoiceState::Expired);

    // Signed two hours ago with a one-hour expiry: expired by the payer's clock.
    network.set_time(SystemTime::now() - Duration::from_secs(7_200));
    let stale = InvoiceRequest { expiry: Duration::from_secs(3_600), ..request(1_000) };
    let stale = server.create_invoice(stale).await.unwrap();
    network.use_system_time();
    let err = bob.backend().pay(&stale.bolt11, MAX_FEE_MSAT).await.unwrap_err();
    assert!(matches!(err, LightningError::InvalidInvoice(_)), "{err:?}");
    assert_eq!(bob.faults().requests_exact(N::PAY_PATH), 0);
    assert_eq!(bob.dev().balance_msat(), 100_000);
}

/// Insufficient balance and an unroutable payee are `PaymentFailed`; the invoice stays open
/// and nothing moves.
pub async fn failed_payments_are_payment_failed_and_the_invoice_stays_open<N: MockNode>() {
    let (_network, alice, poor) = pair::<N>(500).await;
    let server = alice.backend();
    let invoice = server.create_invoice(request(1_000)).await.unwrap();

    let err = poor.backend().pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap_err();
    assert_kind(&err, is_payment_failed, "PaymentFailed");
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Open);
    assert_eq!(poor.dev().balance_msat(), 500);

    // A payee no route reaches: its key is on another network.
    let stranger = DevNode::random(&DevNetwork::new(), 0);
    let unroutable = stranger.create_invoice(request(1_000)).await.unwrap();
    let rich = N::start(alice.dev().network(), 100_000).await;
    let err = rich.backend().pay(&unroutable.bolt11, MAX_FEE_MSAT).await.unwrap_err();
    assert_kind(&err, is_payment_failed, "PaymentFailed");
    assert_eq!(rich.dev().balance_msat(), 100_000);
}

/// A node slower than the timeouts: reads are `Unavailable`, a payment whose request was sent
/// is `OutcomeUnknown`, and it was sent exactly once.
pub async fn a_slow_node_is_unavailable_for_reads_and_outcome_unknown_for_payments<N: MockNode>() {
    let (_network, alice, bob) = pair::<N>(100_000).await;
    let invoice = alice.backend().create_invoice(request(1_000)).await.unwrap();

    alice
        .faults()
        .set(FaultState { slow_before: Some(Duration::from_secs(3)), ..Default::default() });
    let server = alice.backend_with(quick_timeouts());
    for err in [
        server.create_invoice(request(1_000)).await.unwrap_err(),
        server.invoice_state(&invoice.payment_hash).await.unwrap_err(),
    ] {
        assert_kind(&err, is_unavailable, "Unavailable");
    }

    bob.faults().set(FaultState {
        only_path: Some(N::PAY_PATH.into()),
        slow_before: Some(Duration::from_secs(3)),
        ..Default::default()
    });
    let err =
        bob.backend_with(quick_timeouts()).pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap_err();
    assert_kind(&err, is_outcome_unknown, "OutcomeUnknown");
    assert_eq!(bob.faults().requests_exact(N::PAY_PATH), 1, "sent once, never again");
}

/// The node paid but answered too late: the payment is looked up, not sent again, and the
/// proof comes from the lookup.
pub async fn a_late_payment_answer_is_looked_up_not_sent_again<N: MockNode>() {
    let (_network, alice, bob) = pair::<N>(100_000).await;
    let invoice = alice.backend().create_invoice(request(2_000)).await.unwrap();
    bob.faults().set(FaultState {
        only_path: Some(N::PAY_PATH.into()),
        slow_after: Some(Duration::from_secs(4)),
        ..Default::default()
    });
    let paid = bob.backend_with(quick_timeouts()).pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(bob.faults().requests_exact(N::PAY_PATH), 1);
    assert_eq!((alice.dev().balance_msat(), bob.dev().balance_msat()), (2_000, 98_000));
}

/// The connection breaks after the node paid: looked up, not sent again. If the node then
/// cannot say what happened, the outcome is unknown, and still nothing was sent twice.
pub async fn a_payment_answer_cut_mid_payment_is_looked_up_not_sent_again<N: MockNode>() {
    let (_network, alice, bob) = pair::<N>(100_000).await;
    let invoice = alice.backend().create_invoice(request(3_000)).await.unwrap();
    bob.faults().set(FaultState {
        only_path: Some(N::PAY_PATH.into()),
        answer: Answer::Cut,
        ..Default::default()
    });
    let paid = bob.backend().pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(paid.amount_msat, 3_000);
    assert_eq!(bob.faults().requests_exact(N::PAY_PATH), 1);
    assert_eq!(bob.dev().sent_payments().len(), 1);

    let second = alice.backend().create_invoice(request(4_000)).await.unwrap();
    let before = bob.faults().requests_exact(N::PAY_PATH);
    bob.faults().set(FaultState {
        answer: Answer::Cut,
        except: N::PRE_PAY_PATHS.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    });
    let err = bob.backend().pay(&second.bolt11, MAX_FEE_MSAT).await.unwrap_err();
    assert_kind(&err, is_outcome_unknown, "OutcomeUnknown");
    assert_eq!(bob.faults().requests_exact(N::PAY_PATH), before + 1);
    assert_eq!(bob.dev().sent_payments().len(), 2, "the second invoice was paid exactly once");
}

/// Not JSON or over the size bound: reads are `InvalidResponse`; an unreadable answer to a
/// payment is looked up (and the lookup finds it paid).
pub async fn malformed_and_oversized_answers_are_refused<N: MockNode>() {
    let (_network, alice, bob) = pair::<N>(100_000).await;
    let invoice = alice.backend().create_invoice(request(1_000)).await.unwrap();
    for answer in [Answer::NotJson, Answer::Huge] {
        alice.faults().set(FaultState { answer, ..Default::default() });
        let server = alice.backend();
        for err in [
            server.create_invoice(request(1_000)).await.unwrap_err(),
            server.invoice_state(&invoice.payment_hash).await.unwrap_err(),
        ] {
            assert_kind(&err, is_invalid_response, "InvalidResponse");
        }
    }
    bob.faults().set(FaultState {
        only_path: Some(N::PAY_PATH.into()),
        answer: Answer::NotJson,
        ..Default::default()
    });
    let paid = bob.backend().pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(bob.dev().sent_payments().len(), 1);
}

/// A node that claims a settlement or a payment with a preimage that does not hash to the
/// payment hash is not believed: never `Settled`, never a successful payment.
pub async fn a_node_claiming_payment_without_the_preimage_is_not_believed<N: MockNode>() {
    let (_network, alice, bob) = pair::<N>(100_000).await;
    let invoice = alice.backend().create_invoice(request(1_000)).await.unwrap();

    alice.faults().lie.store(true, std::sync::atomic::Ordering::SeqCst);
    let server = alice.backend();
    let err = server.invoice_state(&invoice.payment_hash).await.unwrap_err();
    assert_kind(&err, is_invalid_response, "InvalidResponse");
    let err = server
        .wait_for_settlement(&invoice.payment_hash, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_kind(&err, is_invalid_response, "InvalidResponse");

    bob.faults().lie.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = bob.backend().pay(&invoice.bolt11, MAX_FEE_MSAT).await.unwrap_err();
    assert_kind(&err, is_outcome_unknown, "OutcomeUnknown");
}

/// Generates one `#[tokio::test]` per scenario for a [`MockNode`] type.
#[macro_export]
macro_rules! scenario_tests {
    ($node:ty) => {
        $crate::scenario_tests!($node:
            invoice_paid_from_another_node_settles_with_the_payers_preimage,
            an_open_invoice_stays_open_until_the_wait_times_out,
            a_waiter_sees_the_settlement,
            a_node_that_is_down_is_unavailable,
            a_refused_credential_is_auth_refused_and_never_repeated,
            expired_invoices_are_expired_on_both_sides,
            failed_payments_are_payment_failed_and_the_invoice_stays_open,
            a_slow_node_is_unavailable_for_reads_and_outcome_unknown_for_payments,
            a_late_payment_answer_is_looked_up_not_sent_again,
            a_payment_answer_cut_mid_payment_is_looked_up_not_sent_again,
            malformed_and_oversized_answers_are_refused,
            a_node_claiming_payment_without_the_preimage_is_not_believed,
        );
    };
    ($node:ty: $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let _ = common::scenarios::$name::<$node>().await;
            }
        )+
    };
}
