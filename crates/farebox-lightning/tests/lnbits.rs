//! [`LnbitsBackend`] against the loopback LNbits of `farebox_lightning::testing::lnbits`, which
//! follows LNbits' wallet API; one instance holds several wallets, each on its own dev node.

mod common;

use std::time::Duration;

use common::request;
use common::scenarios::{MockNode, pair};
use farebox_lightning::lnbits::{LnbitsBackend, LnbitsKey};
use farebox_lightning::rest::{Endpoint, Secret, Timeouts};
use farebox_lightning::testing::Faults;
use farebox_lightning::testing::lnbits::LoopbackLnbits;
use farebox_lightning::{
    DevNetwork, DevNode, InvoiceState, LightningBackend, LightningError, parse_invoice, sha256,
};
use serde_json::{Value, json};

/// The loopback LNbits as the scenarios drive it: wallet 0.
struct Node(LoopbackLnbits);

impl Node {
    async fn with_wallets(network: &DevNetwork, balances: &[u64]) -> Node {
        Node(LoopbackLnbits::with_wallets(network, balances).await)
    }

    fn with_key(&self, key: LnbitsKey, timeouts: Timeouts) -> LnbitsBackend {
        let endpoint = Endpoint::new(&self.url()).unwrap().with_timeouts(timeouts);
        LnbitsBackend::new(endpoint, key).unwrap()
    }

    fn invoice_key(&self, wallet: usize) -> LnbitsKey {
        LnbitsKey::Invoice(Secret::new(self.0.invoice_key(wallet)).unwrap())
    }

    fn admin_key(&self, wallet: usize) -> LnbitsKey {
        LnbitsKey::Admin(Secret::new(self.0.admin_key(wallet)).unwrap())
    }
}

const WRONG_KEY: &str = "ffffffffffffffffffffffffffffffff";

impl MockNode for Node {
    const PAY_PATH: &'static str = "/api/v1/payments";
    const PRE_PAY_PATHS: &'static [&'static str] = &["/api/v1/payments/fee-reserve"];
    const SCHEME: &'static str = "http";

    async fn start(network: &DevNetwork, balance_msat: u64) -> Self {
        Node::with_wallets(network, &[balance_msat]).await
    }

    fn dev(&self) -> &DevNode {
        self.0.dev(0)
    }

    fn faults(&self) -> &Faults {
        self.0.faults()
    }

    /// The admin key: the scenarios both receive and pay through it.
    fn backend_with(&self, timeouts: Timeouts) -> Box<dyn LightningBackend> {
        Box::new(self.with_key(self.admin_key(0), timeouts))
    }

    fn refused_backend(&self) -> (Box<dyn LightningBackend>, String, String) {
        let backend =
            self.with_key(LnbitsKey::Admin(Secret::new(WRONG_KEY).unwrap()), Timeouts::default());
        let debug = format!("{backend:?}");
        (Box::new(backend), WRONG_KEY.to_string(), debug)
    }

    fn backend_at(url: &str) -> Box<dyn LightningBackend> {
        let endpoint = Endpoint::new(url).unwrap();
        Box::new(
            LnbitsBackend::new(endpoint, LnbitsKey::Admin(Secret::new(WRONG_KEY).unwrap()))
                .unwrap(),
        )
    }

    fn url(&self) -> String {
        self.0.url()
    }
}

scenario_tests!(Node);

#[tokio::test]
async fn msat_amounts_that_are_not_whole_sats_are_refused_not_rounded() {
    let network = DevNetwork::new();
    let alice = Node::with_wallets(&network, &[0]).await;
    let server = alice.with_key(alice.invoice_key(0), Timeouts::default());
    let err = server.create_invoice(request(21_500)).await.unwrap_err();
    assert!(matches!(err, LightningError::InvalidRequest(_)), "{err}");
    assert_eq!(alice.faults().requests(), 0, "nothing was asked of LNbits");
    let invoice = server.create_invoice(request(21_000)).await.unwrap();
    assert_eq!(parse_invoice(&invoice.bolt11).unwrap().amount_msat, Some(21_000));
}

#[tokio::test]
async fn an_invoice_key_receives_but_cannot_pay() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let invoice = alice.backend().create_invoice(request(5_000)).await.unwrap();

    let receive_only = bob.with_key(bob.invoice_key(0), Timeouts::default());
    receive_only.create_invoice(request(1_000)).await.unwrap();
    let err = receive_only.pay(&invoice.bolt11, 10_000).await.unwrap_err();
    assert!(matches!(err, LightningError::Unsupported(_)), "{err}");

    // The invoice key configured as if it were the admin key: LNbits answers 403.
    let mistaken = LnbitsKey::Admin(Secret::new(bob.0.invoice_key(0)).unwrap());
    let err =
        bob.with_key(mistaken, Timeouts::default()).pay(&invoice.bolt11, 10_000).await.unwrap_err();
    assert!(matches!(err, LightningError::AuthRefused(_)), "{err}");
    assert_eq!(bob.dev().balance_msat(), 100_000);
}

#[tokio::test]
async fn one_wallets_key_does_not_see_another_wallets_invoices() {
    let network = DevNetwork::new();
    let shared = Node::with_wallets(&network, &[0, 0]).await;
    let payer = Node::with_wallets(&network, &[100_000]).await;
    let first = shared.with_key(shared.invoice_key(0), Timeouts::default());
    let second = shared.with_key(shared.invoice_key(1), Timeouts::default());
    let invoice = first.create_invoice(request(5_000)).await.unwrap();
    payer.backend().pay(&invoice.bolt11, 10_000).await.unwrap();

    assert!(matches!(
        first.invoice_state(&invoice.payment_hash).await.unwrap(),
        InvoiceState::Settled { .. }
    ));
    assert_eq!(second.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Unknown);
}

#[tokio::test]
async fn a_fee_reserve_over_the_limit_is_refused_before_paying() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let invoice = alice.backend().create_invoice(request(5_000)).await.unwrap();
    // LNbits may spend up to 2 sat on fees for this payment; the caller allows 1.
    let err = bob.backend().pay(&invoice.bolt11, 1_000).await.unwrap_err();
    assert!(matches!(err, LightningError::PaymentFailed(_)), "{err}");
    assert_eq!(bob.faults().requests_exact("/api/v1/payments"), 0, "nothing was sent");
    assert_eq!(bob.dev().balance_msat(), 100_000);
}

#[tokio::test]
async fn a_pending_payment_is_followed_until_it_settles() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let invoice = alice.backend().create_invoice(request(5_000)).await.unwrap();
    bob.0.set_deferred(true);
    let paid = bob.backend().pay(&invoice.bolt11, 10_000).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(paid.amount_msat, 5_000);
    assert_eq!(bob.faults().requests_exact("/api/v1/payments"), 1);
    assert_eq!(bob.dev().sent_payments().len(), 1);
}

#[tokio::test]
async fn amountless_invoices_are_unsupported_and_named_amounts_are_paid() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let server = alice.backend();
    let err = server
        .create_amountless_invoice("refund".into(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, LightningError::Unsupported(_)), "{err}");

    let stranger = DevNode::random(alice.dev().network(), 0);
    let amountless =
        stranger.create_amountless_invoice("tip".into(), Duration::from_secs(60)).await.unwrap();
    let err = bob.backend().pay_amount(&amountless.bolt11, 1_000, 10_000).await.unwrap_err();
    assert!(matches!(err, LightningError::Unsupported(_)), "{err}");

    let invoice = server.create_invoice(request(3_000)).await.unwrap();
    let paid = bob.backend().pay_amount(&invoice.bolt11, 3_000, 10_000).await.unwrap();
    assert_eq!(paid.amount_msat, 3_000);
}

#[tokio::test]
async fn a_preimage_lnbits_reveals_for_an_unpaid_invoice_is_not_taken_as_payment() {
    use farebox_lightning::{PaymentProof, confirm_paid};
    let (_network, shop, payer) = pair::<Node>(100_000).await;
    let server = shop.with_key(shop.invoice_key(0), Timeouts::default());
    assert!(!server.preimage_proves_payment());
    let invoice = server.create_invoice(request(5_000)).await.unwrap();

    // Anyone may ask LNbits for an invoice's status, without a key: it names the preimage.
    let url = format!("{}/api/v1/payments/{}", shop.url(), hex::encode(invoice.payment_hash));
    let answer: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(answer["paid"], json!(false));
    let leaked: [u8; 32] =
        hex::decode(answer["preimage"].as_str().unwrap()).unwrap().try_into().unwrap();
    assert_eq!(sha256(&leaked), invoice.payment_hash, "the leaked preimage is the real one");
    let proof = confirm_paid(&server, &leaked, &invoice.payment_hash).await.unwrap();
    assert_eq!(proof, PaymentProof::NotSettled, "unpaid: refused");
    assert_eq!(
        confirm_paid(&server, &[7; 32], &invoice.payment_hash).await.unwrap(),
        PaymentProof::WrongPreimage
    );

    // LNbits cannot answer: no verdict, so the rails answer 503 and serve nothing.
    shop.faults().set(farebox_lightning::testing::FaultState {
        answer: farebox_lightning::testing::Answer::NotJson,
        ..Default::default()
    });
    assert!(confirm_paid(&server, &leaked, &invoice.payment_hash).await.is_err());
    shop.faults().clear();

    let paid = payer.backend().pay(&invoice.bolt11, 10_000).await.unwrap();
    assert_eq!(paid.preimage, leaked);
    let proof = confirm_paid(&server, &paid.preimage, &invoice.payment_hash).await.unwrap();
    assert_eq!(proof, PaymentProof::Proven, "paid: served");
}
