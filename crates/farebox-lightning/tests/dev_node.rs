//! The dev node end to end: real invoices, real preimages, simulated routing.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use farebox_lightning::{
    Currency, DevNetwork, DevNode, InvoiceCheckError, InvoiceMismatch, InvoiceParams,
    InvoiceRequest, InvoiceState, LightningBackend, LightningError, NetworkPin, parse_invoice,
    preimage_matches, sha256, sign_invoice,
};

fn request(amount_msat: u64, expiry: Duration) -> InvoiceRequest {
    InvoiceRequest { amount_msat, memo: "GET /weather".into(), expiry }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn create_pay_settle_end_to_end() {
    let network = DevNetwork::new();
    let server = DevNode::new(&network, [1; 32], 0);
    let wallet = DevNode::new(&network, [2; 32], 100_000);
    assert_ne!(server.pubkey(), wallet.pubkey());

    let invoice = server.create_invoice(request(21_000, HOUR)).await.unwrap();
    assert!(invoice.bolt11.starts_with("lnbcrt210n1"), "{}", invoice.bolt11);
    // A real, signed BOLT11 invoice from the server's key.
    let parsed = parse_invoice(&invoice.bolt11).unwrap();
    assert_eq!(parsed.payee, server.pubkey());
    assert_eq!(parsed.payment_hash, invoice.payment_hash);
    assert_eq!(parsed.amount_msat, Some(21_000));
    assert_eq!(parsed.currency, Currency::Regtest);
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Open);

    let paid = wallet.pay(&invoice.bolt11, 0).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert!(preimage_matches(&paid.preimage, &invoice.payment_hash));
    assert_eq!(paid.payment_hash, invoice.payment_hash);
    assert_eq!((paid.amount_msat, paid.fee_msat), (21_000, 0));

    assert_eq!(
        server.invoice_state(&invoice.payment_hash).await.unwrap(),
        InvoiceState::Settled { preimage: paid.preimage, amount_msat: 21_000 }
    );
    assert_eq!(server.balance_msat(), 21_000);
    assert_eq!(wallet.balance_msat(), 79_000);
    let settled = server.settled_invoices();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].preimage, paid.preimage);
    assert_eq!(settled[0].bolt11, invoice.bolt11);
    assert_eq!(wallet.sent_payments(), vec![paid.clone()]);

    // Paying again is refused and moves nothing.
    let again = wallet.pay(&invoice.bolt11, 0).await.unwrap_err();
    assert!(
        matches!(&again, LightningError::PaymentFailed(m) if m.contains("already paid")),
        "{again}"
    );
    assert_eq!((server.balance_msat(), wallet.balance_msat()), (21_000, 79_000));

    // Unknown hashes are Unknown, not errors.
    assert_eq!(server.invoice_state(&[0; 32]).await.unwrap(), InvoiceState::Unknown);
    // A payer does not know the payee's invoices.
    assert_eq!(wallet.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Unknown);
}

#[tokio::test]
async fn concurrent_payments_of_one_invoice_settle_once() {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let invoice = server.create_invoice(request(5_000, HOUR)).await.unwrap();
    let wallets: Vec<_> = (0..8).map(|_| DevNode::random(&network, 10_000)).collect();

    let mut tasks = Vec::new();
    for wallet in wallets.iter().cloned().chain(wallets.iter().cloned()) {
        let bolt11 = invoice.bolt11.clone();
        tasks.push(tokio::spawn(async move { wallet.pay(&bolt11, 0).await }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(outcome) => {
                ok += 1;
                assert_eq!(sha256(&outcome.preimage), invoice.payment_hash);
            }
            Err(LightningError::PaymentFailed(_)) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(server.balance_msat(), 5_000);
    let total: u64 = wallets.iter().map(DevNode::balance_msat).sum();
    assert_eq!(total, 8 * 10_000 - 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_payments_across_threads_settle_once() {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    for _ in 0..20 {
        let invoice = server.create_invoice(request(1_000, HOUR)).await.unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (wallet, bolt11) = (wallet.clone(), invoice.bolt11.clone());
                tokio::spawn(async move { wallet.pay(&bolt11, 0).await.is_ok() })
            })
            .collect();
        let mut successes = 0;
        for h in handles {
            successes += usize::from(h.await.unwrap());
        }
        assert_eq!(successes, 1);
    }
    assert_eq!(server.balance_msat(), 20_000);
    assert_eq!(wallet.balance_msat(), 980_000);
}

#[tokio::test]
async fn expired_invoice_is_refused() {
    let network = DevNetwork::new();
    network.set_time(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 100_000);

    let invoice = server.create_invoice(request(1_000, Duration::from_secs(60))).await.unwrap();
    assert_eq!(parse_invoice(&invoice.bolt11).unwrap().timestamp, 1_800_000_000);

    network.advance_time(Duration::from_secs(60));
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Open);

    network.advance_time(Duration::from_secs(1));
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Expired);
    let err = wallet.pay(&invoice.bolt11, 0).await.unwrap_err();
    assert!(matches!(&err, LightningError::InvalidInvoice(m) if m.contains("expired")), "{err}");
    assert_eq!((server.balance_msat(), wallet.balance_msat()), (0, 100_000));
}

#[tokio::test]
async fn invoice_with_old_timestamp_is_refused_on_system_clock() {
    let network = DevNetwork::new();
    network.set_time(UNIX_EPOCH + Duration::from_secs(1_600_000_000)); // 2020
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 100_000);
    let invoice = server.create_invoice(request(1_000, HOUR)).await.unwrap();
    network.use_system_time();
    assert!(matches!(wallet.pay(&invoice.bolt11, 0).await, Err(LightningError::InvalidInvoice(_))));
}

#[tokio::test]
async fn node_on_another_network_cannot_pay() {
    let network = DevNetwork::new();
    let elsewhere = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let stranger = DevNode::random(&elsewhere, 100_000);
    let invoice = server.create_invoice(request(1_000, HOUR)).await.unwrap();

    let err = stranger.pay(&invoice.bolt11, 0).await.unwrap_err();
    assert!(matches!(&err, LightningError::PaymentFailed(m) if m.contains("no route")), "{err}");
    assert_eq!(stranger.balance_msat(), 100_000);
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Open);
    assert!(!elsewhere.contains(&server.pubkey()));
}

#[tokio::test]
async fn forged_invoices_are_refused() {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 100_000);
    let real = server.create_invoice(request(1_000, HOUR)).await.unwrap();
    let real_parsed = parse_invoice(&real.bolt11).unwrap();

    // Same payment hash, signed by a key that is not on the network.
    let key = bitcoin::secp256k1::SecretKey::from_slice(&[0x33; 32]).unwrap();
    let mut params = InvoiceParams::new(real.payment_hash, Some(1_000), "forged");
    params.payment_secret = real_parsed.payment_secret;
    let forged = sign_invoice(&params, &key).unwrap();
    assert!(matches!(wallet.pay(&forged, 0).await, Err(LightningError::PaymentFailed(_))));

    // A corrupted invoice (one signature character changed) fails the bech32 checksum.
    // (Swap in a character that differs from the one there, or the "corruption" is a no-op.)
    let mut bolt11 = real.bolt11.clone();
    let at = bolt11.len() - 10;
    let swap = if &bolt11[at..at + 1] == "q" { "p" } else { "q" };
    bolt11.replace_range(at..at + 1, swap);
    assert_ne!(bolt11, real.bolt11);
    assert!(matches!(wallet.pay(&bolt11, 0).await, Err(LightningError::InvalidInvoice(_))));
    assert!(matches!(wallet.pay("garbage", 0).await, Err(LightningError::InvalidInvoice(_))));
    assert_eq!(wallet.balance_msat(), 100_000);
}

#[tokio::test]
async fn refusals() {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let poor = DevNode::random(&network, 999);

    // Zero amount, oversize memo, zero expiry.
    for bad in [
        request(0, HOUR),
        InvoiceRequest { amount_msat: 1, memo: "m".repeat(640), expiry: HOUR },
        request(1, Duration::ZERO),
    ] {
        assert!(matches!(server.create_invoice(bad).await, Err(LightningError::InvalidRequest(_))));
    }
    assert!(
        server
            .create_invoice(InvoiceRequest { amount_msat: 1, memo: "m".repeat(639), expiry: HOUR })
            .await
            .is_ok()
    );

    // Insufficient balance.
    let invoice = server.create_invoice(request(1_000, HOUR)).await.unwrap();
    let err = poor.pay(&invoice.bolt11, 0).await.unwrap_err();
    assert!(
        matches!(&err, LightningError::PaymentFailed(m) if m.contains("insufficient")),
        "{err}"
    );

    // Amountless invoice, even from a node on the network.
    let key = bitcoin::secp256k1::SecretKey::from_slice(&[0x44; 32]).unwrap();
    let amountless = sign_invoice(&InvoiceParams::new([0; 32], None, "tip"), &key).unwrap();
    let err = poor.pay(&amountless, 0).await.unwrap_err();
    assert!(matches!(&err, LightningError::InvalidInvoice(m) if m.contains("amountless")), "{err}");

    // Mainnet invoice on a regtest network.
    let mut params = InvoiceParams::new([0; 32], Some(10), "mainnet");
    params.currency = Currency::Bitcoin;
    let mainnet = sign_invoice(&params, &key).unwrap();
    assert!(matches!(poor.pay(&mainnet, 0).await, Err(LightningError::InvalidInvoice(_))));

    // Own invoice.
    let own = poor.create_invoice(request(10, HOUR)).await.unwrap();
    assert!(matches!(poor.pay(&own.bolt11, 0).await, Err(LightningError::PaymentFailed(_))));
    assert_eq!(poor.balance_msat(), 999);
}

#[tokio::test]
async fn routing_fee_respects_max_fee() {
    let network = DevNetwork::new();
    network.set_routing_fee(1_000, 10_000); // 1 sat + 1 %
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 200_000);
    let invoice = server.create_invoice(request(100_000, HOUR)).await.unwrap();

    let err = wallet.pay(&invoice.bolt11, 1_999).await.unwrap_err();
    assert!(matches!(&err, LightningError::PaymentFailed(m) if m.contains("max_fee")), "{err}");
    assert_eq!(wallet.balance_msat(), 200_000);

    let paid = wallet.pay(&invoice.bolt11, 2_000).await.unwrap();
    assert_eq!((paid.amount_msat, paid.fee_msat), (100_000, 2_000));
    assert_eq!(wallet.balance_msat(), 98_000);
    assert_eq!(server.balance_msat(), 100_000);

    // Fee counts towards the balance check.
    let invoice = server.create_invoice(request(97_000, HOUR)).await.unwrap();
    assert!(matches!(
        wallet.pay(&invoice.bolt11, u64::MAX).await,
        Err(LightningError::PaymentFailed(_))
    ));
}

#[tokio::test]
async fn unavailable_node_fails_closed() {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 100_000);
    let invoice = server.create_invoice(request(1_000, HOUR)).await.unwrap();

    server.set_available(false);
    assert!(!server.is_available());
    assert!(matches!(
        server.create_invoice(request(1, HOUR)).await,
        Err(LightningError::Unavailable(_))
    ));
    assert!(matches!(
        server.invoice_state(&invoice.payment_hash).await,
        Err(LightningError::Unavailable(_))
    ));
    assert!(matches!(server.pay(&invoice.bolt11, 0).await, Err(LightningError::Unavailable(_))));
    // Paying an offline node fails on the payer's side without moving funds.
    assert!(matches!(wallet.pay(&invoice.bolt11, 0).await, Err(LightningError::PaymentFailed(_))));
    assert_eq!(wallet.balance_msat(), 100_000);

    wallet.set_available(false);
    assert!(matches!(
        wallet.pay("not even an invoice", 0).await,
        Err(LightningError::Unavailable(_))
    ));

    server.set_available(true);
    wallet.set_available(true);
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Open);
    assert!(wallet.pay(&invoice.bolt11, 0).await.is_ok());
}

#[tokio::test]
async fn works_as_a_trait_object() {
    let network = DevNetwork::new();
    let backend: Arc<dyn LightningBackend> = Arc::new(DevNode::random(&network, 0));
    let invoice = backend.create_invoice(request(1, HOUR)).await.unwrap();
    assert_eq!(backend.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Open);
}

// ---- waiting for settlement --------------------------------------------------------------------

/// A backend that implements only the required methods (delegating to a dev node), so the
/// trait's default `wait_for_settlement`, `create_amountless_invoice` and `pay_amount` are the
/// ones under test. Its invoices are tampered with as `.1` says (not at all but for a backend gone
/// wrong).
struct Minimal(DevNode, Tamper);

/// What a [`Minimal`] backend does to the node's invoices.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    None,
    /// Appends text to the BOLT11 string.
    Append(&'static str),
    /// Hands out a re-signed variant of the invoice.
    Lie(Lie),
}

/// What a lying backend changes in the invoices it hands out.
#[derive(Clone, Copy, Debug)]
enum Lie {
    Cheaper,
    OtherHash,
    Mainnet,
    ShortExpiry,
    OtherMemo,
    Stale,
}

#[async_trait::async_trait]
impl LightningBackend for Minimal {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<farebox_lightning::CreatedInvoice, LightningError> {
        let mut invoice = self.0.create_invoice(request.clone()).await?;
        let lie = match self.1 {
            Tamper::None => return Ok(invoice),
            Tamper::Append(text) => {
                invoice.bolt11.push_str(text);
                return Ok(invoice);
            }
            Tamper::Lie(lie) => lie,
        };
        let mut params =
            InvoiceParams::new(invoice.payment_hash, Some(request.amount_msat), request.memo);
        params.expiry = request.expiry;
        match lie {
            Lie::Cheaper => params.amount_msat = Some(request.amount_msat / 2),
            Lie::OtherHash => params.payment_hash = [9; 32],
            Lie::Mainnet => params.currency = Currency::Bitcoin,
            Lie::ShortExpiry => params.expiry = request.expiry / 10,
            Lie::OtherMemo => params.description = "pay someone else".into(),
            Lie::Stale => params.timestamp -= request.expiry / 2,
        }
        let key = farebox_lightning::SecretKey::from_slice(&[7; 32]).unwrap();
        invoice.bolt11 = sign_invoice(&params, &key)?;
        Ok(invoice)
    }
    async fn invoice_state(
        &self,
        payment_hash: &farebox_lightning::PaymentHash,
    ) -> Result<InvoiceState, LightningError> {
        self.0.invoice_state(payment_hash).await
    }
    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
    ) -> Result<farebox_lightning::PaymentOutcome, LightningError> {
        self.0.pay(bolt11, max_fee_msat).await
    }
}

/// The dev node's own `wait_for_settlement` and the trait's polling default, side by side.
fn receivers(network: &DevNetwork) -> Vec<(&'static str, Arc<dyn LightningBackend>, DevNode)> {
    let dev = DevNode::random(network, 0);
    let polled = DevNode::random(network, 0);
    vec![
        ("dev node", Arc::new(dev.clone()) as Arc<dyn LightningBackend>, dev),
        ("default", Arc::new(Minimal(polled.clone(), Tamper::None)), polled),
    ]
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn wait_for_settlement_returns_once_paid() {
    let network = DevNetwork::new();
    let wallet = DevNode::random(&network, 100_000);
    for (name, backend, _) in receivers(&network) {
        let invoice = backend.create_invoice(request(2_000, HOUR)).await.unwrap();
        let waiter = {
            let (backend, hash) = (backend.clone(), invoice.payment_hash);
            tokio::spawn(async move { backend.wait_for_settlement(&hash, LONG).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let paid = wallet.pay(&invoice.bolt11, 0).await.unwrap();
        // The waiter answers with the preimage the payer got, long before its 30 s timeout.
        let state = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap_or_else(|_| panic!("{name}: still waiting after the payment"))
            .unwrap()
            .unwrap();
        assert_eq!(
            state,
            InvoiceState::Settled { preimage: paid.preimage, amount_msat: 2_000 },
            "{name}"
        );
        // Already settled: answered at once, even with no time to wait.
        assert_eq!(
            backend.wait_for_settlement(&invoice.payment_hash, Duration::ZERO).await.unwrap(),
            state,
            "{name}"
        );
    }
}

#[tokio::test]
async fn wait_for_settlement_times_out_open_and_sees_expiry() {
    let network = DevNetwork::new();
    network.set_time(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    for (name, backend, _) in receivers(&network) {
        let invoice =
            backend.create_invoice(request(1_000, Duration::from_secs(60))).await.unwrap();
        // Unpaid: the timeout passes and the last state, Open, comes back.
        let state =
            backend.wait_for_settlement(&invoice.payment_hash, Duration::from_millis(60)).await;
        assert_eq!(state.unwrap(), InvoiceState::Open, "{name}");
        assert_eq!(
            backend.wait_for_settlement(&invoice.payment_hash, Duration::ZERO).await.unwrap(),
            InvoiceState::Open,
            "{name}"
        );

        // The invoice expires while someone waits: Expired, without waiting out the timeout.
        let waiter = {
            let (backend, hash) = (backend.clone(), invoice.payment_hash);
            tokio::spawn(async move { backend.wait_for_settlement(&hash, LONG).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        network.advance_time(Duration::from_secs(61));
        let state = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap_or_else(|_| panic!("{name}: expiry not noticed"))
            .unwrap();
        assert_eq!(state.unwrap(), InvoiceState::Expired, "{name}");
    }
}

#[tokio::test]
async fn wait_for_settlement_does_not_wait_on_unknown_or_offline() {
    let network = DevNetwork::new();
    for (name, backend, node) in receivers(&network) {
        // A hash the node never issued will not settle: Unknown at once, not after 30 s.
        let state = tokio::time::timeout(
            Duration::from_secs(10),
            backend.wait_for_settlement(&[7; 32], LONG),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: waited on an unknown hash"));
        assert_eq!(state.unwrap(), InvoiceState::Unknown, "{name}");

        // The node going down while someone waits is an error, so the caller fails closed.
        let invoice = backend.create_invoice(request(1_000, HOUR)).await.unwrap();
        let waiter = {
            let (backend, hash) = (backend.clone(), invoice.payment_hash);
            tokio::spawn(async move { backend.wait_for_settlement(&hash, LONG).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        node.set_available(false);
        let state = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap_or_else(|_| panic!("{name}: outage not noticed"))
            .unwrap();
        assert!(matches!(state, Err(LightningError::Unavailable(_))), "{name}: {state:?}");
    }
}

// ---- amountless invoices -----------------------------------------------------------------------

#[tokio::test]
async fn amountless_invoice_is_paid_the_amount_the_payer_chooses() {
    let network = DevNetwork::new();
    let client = DevNode::new(&network, [3; 32], 0);
    let server = DevNode::new(&network, [4; 32], 100_000);

    let refund = client
        .create_amountless_invoice("refund of session 42".into(), Duration::from_secs(600))
        .await
        .unwrap();
    // A real signed regtest BOLT11 invoice with no amount.
    assert!(refund.bolt11.starts_with("lnbcrt1"), "{}", refund.bolt11);
    let parsed = parse_invoice(&refund.bolt11).unwrap();
    assert_eq!(parsed.amount_msat, None);
    assert_eq!(parsed.payee, client.pubkey());
    assert_eq!(parsed.payment_hash, refund.payment_hash);
    assert_eq!(parsed.expiry, Duration::from_secs(600));
    assert_eq!(
        parsed.description,
        farebox_lightning::InvoiceDescription::Direct("refund of session 42".into())
    );
    assert_eq!(client.invoice_state(&refund.payment_hash).await.unwrap(), InvoiceState::Open);

    // `pay` still refuses it: the amount must be chosen explicitly.
    let err = server.pay(&refund.bolt11, 0).await.unwrap_err();
    assert!(matches!(&err, LightningError::InvalidInvoice(m) if m.contains("amountless")), "{err}");

    let paid = server.pay_amount(&refund.bolt11, 7_321, 0).await.unwrap();
    assert_eq!((paid.amount_msat, paid.fee_msat), (7_321, 0));
    assert_eq!(paid.payment_hash, refund.payment_hash);
    assert!(preimage_matches(&paid.preimage, &refund.payment_hash));
    // The payee records what it received.
    assert_eq!(
        client.invoice_state(&refund.payment_hash).await.unwrap(),
        InvoiceState::Settled { preimage: paid.preimage, amount_msat: 7_321 }
    );
    assert_eq!(client.settled_invoices()[0].amount_msat, 7_321);
    assert_eq!((client.balance_msat(), server.balance_msat()), (7_321, 100_000 - 7_321));
    assert_eq!(server.sent_payments(), vec![paid]);

    // Paid once only.
    let again = server.pay_amount(&refund.bolt11, 1, 0).await.unwrap_err();
    assert!(matches!(&again, LightningError::PaymentFailed(m) if m.contains("already")), "{again}");
    assert_eq!(client.balance_msat(), 7_321);
}

#[tokio::test]
async fn pay_amount_refusals() {
    let network = DevNetwork::new();
    network.set_time(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let payee = DevNode::random(&network, 0);
    let payer = DevNode::random(&network, 10_000);
    let any = payee.create_amountless_invoice("any".into(), Duration::from_secs(60)).await.unwrap();

    // Zero amount: refused before anything is sent.
    let err = payer.pay_amount(&any.bolt11, 0, 0).await.unwrap_err();
    assert!(matches!(err, LightningError::InvalidRequest(_)), "{err}");

    // An invoice that names an amount is paid only that amount.
    let fixed = payee.create_invoice(request(1_000, HOUR)).await.unwrap();
    for wrong in [999, 1_001] {
        let err = payer.pay_amount(&fixed.bolt11, wrong, 0).await.unwrap_err();
        assert!(matches!(&err, LightningError::InvalidRequest(m) if m.contains("1000")), "{err}");
    }
    assert_eq!(payee.invoice_state(&fixed.payment_hash).await.unwrap(), InvoiceState::Open);
    let paid = payer.pay_amount(&fixed.bolt11, 1_000, 0).await.unwrap();
    assert_eq!(paid.amount_msat, 1_000);

    // The same checks as `pay`: balance, fee limit, expiry, own invoice, offline payee.
    let err = payer.pay_amount(&any.bolt11, 9_001, 0).await.unwrap_err();
    assert!(
        matches!(&err, LightningError::PaymentFailed(m) if m.contains("insufficient")),
        "{err}"
    );
    network.set_routing_fee(10, 0);
    let err = payer.pay_amount(&any.bolt11, 100, 9).await.unwrap_err();
    assert!(matches!(&err, LightningError::PaymentFailed(m) if m.contains("max_fee")), "{err}");
    network.set_routing_fee(0, 0);
    let own = payer.create_amountless_invoice("own".into(), HOUR).await.unwrap();
    assert!(matches!(
        payer.pay_amount(&own.bolt11, 10, 0).await,
        Err(LightningError::PaymentFailed(_))
    ));
    payee.set_available(false);
    assert!(matches!(
        payer.pay_amount(&any.bolt11, 10, 0).await,
        Err(LightningError::PaymentFailed(_))
    ));
    payee.set_available(true);
    network.advance_time(Duration::from_secs(61));
    let err = payer.pay_amount(&any.bolt11, 10, 0).await.unwrap_err();
    assert!(matches!(&err, LightningError::InvalidInvoice(m) if m.contains("expired")), "{err}");
    assert_eq!(payer.balance_msat(), 9_000);
    assert_eq!(payee.balance_msat(), 1_000);

    // Bad requests for the invoice itself.
    for (memo, expiry) in [("m".repeat(640), HOUR), ("ok".to_string(), Duration::ZERO)] {
        assert!(matches!(
            payee.create_amountless_invoice(memo, expiry).await,
            Err(LightningError::InvalidRequest(_))
        ));
    }
    payee.set_available(false);
    assert!(matches!(
        payee.create_amountless_invoice("x".into(), HOUR).await,
        Err(LightningError::Unavailable(_))
    ));
}

#[tokio::test]
async fn amountless_and_pay_amount_default_to_unsupported() {
    let network = DevNetwork::new();
    let minimal = Minimal(DevNode::random(&network, 10_000), Tamper::None);
    let payee = DevNode::random(&network, 0);
    let any = payee.create_amountless_invoice("any".into(), HOUR).await.unwrap();
    assert!(matches!(
        minimal.create_amountless_invoice("x".into(), HOUR).await,
        Err(LightningError::Unsupported(_))
    ));
    assert!(matches!(
        minimal.pay_amount(&any.bolt11, 10, 0).await,
        Err(LightningError::Unsupported(_))
    ));
    assert_eq!(payee.invoice_state(&any.payment_hash).await.unwrap(), InvoiceState::Open);
}

#[tokio::test]
async fn a_malformed_invoice_from_the_backend_is_refused() {
    let network = DevNetwork::new();
    let good = DevNode::new(&network, [1; 32], 0);
    let pin = NetworkPin::new();
    let invoice =
        farebox_lightning::create_checked_invoice(&good, request(1_000, HOUR), &pin).await;
    assert!(invoice.unwrap().bolt11.starts_with("lnbcrt"));

    let bad = Minimal(DevNode::new(&network, [3; 32], 0), Tamper::Append("\r\nSet-Cookie: x=1"));
    let err = farebox_lightning::create_checked_invoice(&bad, request(1_000, HOUR), &pin).await;
    assert_eq!(err, Err(InvoiceCheckError::Mismatch(InvoiceMismatch::Malformed)));
}

#[tokio::test]
async fn an_invoice_that_is_not_what_was_asked_never_leaves_the_check() {
    let network = DevNetwork::new();
    let node = DevNode::random(&network, 0);
    let regtest = || NetworkPin::fixed(Currency::Regtest);
    let asked = || request(10_000, HOUR);
    for (lie, pin) in [
        (Lie::Cheaper, regtest()),
        (Lie::OtherHash, regtest()),
        (Lie::Mainnet, regtest()),
        (Lie::ShortExpiry, regtest()),
        (Lie::OtherMemo, regtest()),
        (Lie::Stale, regtest()),
    ] {
        let got = farebox_lightning::create_checked_invoice(
            &Minimal(node.clone(), Tamper::Lie(lie)),
            asked(),
            &pin,
        )
        .await;
        let mismatch = match got {
            Err(InvoiceCheckError::Mismatch(m)) => m,
            other => panic!("{lie:?}: {other:?}"),
        };
        let expected = match lie {
            Lie::Cheaper => {
                matches!(mismatch, InvoiceMismatch::Amount { asked: 10_000, got: Some(5_000) })
            }
            Lie::OtherHash => mismatch == InvoiceMismatch::PaymentHash,
            Lie::Mainnet => matches!(mismatch, InvoiceMismatch::Network { .. }),
            Lie::ShortExpiry | Lie::Stale => matches!(mismatch, InvoiceMismatch::Expiry { .. }),
            Lie::OtherMemo => mismatch == InvoiceMismatch::Description,
        };
        assert!(expected, "{lie:?}: {mismatch:?}");
    }
    // Unpinned, the first invoice pins the network; a later one on another network is refused.
    let pin = NetworkPin::new();
    assert!(farebox_lightning::create_checked_invoice(&node, asked(), &pin).await.is_ok());
    assert_eq!(pin.get(), Some(&Currency::Regtest));
    let liar = Minimal(node.clone(), Tamper::Lie(Lie::Mainnet));
    let got = farebox_lightning::create_checked_invoice(&liar, asked(), &pin).await;
    assert!(matches!(got, Err(InvoiceCheckError::Mismatch(InvoiceMismatch::Network { .. }))));
    // A backend that is down is a backend error, not a mismatch.
    node.set_available(false);
    let got = farebox_lightning::create_checked_invoice(&node, asked(), &pin).await;
    assert!(matches!(got, Err(InvoiceCheckError::Backend(LightningError::Unavailable(_)))));
}
