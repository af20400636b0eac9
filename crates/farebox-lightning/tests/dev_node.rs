//! The dev node end to end: real invoices, real preimages, simulated routing.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use farebox_lightning::{
    Currency, DevNetwork, DevNode, InvoiceParams, InvoiceRequest, InvoiceState, LightningBackend,
    LightningError, parse_invoice, preimage_matches, sha256, sign_invoice,
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
