//! [`ClnBackend`] against the loopback CLNRest of `farebox_lightning::testing::cln`, which
//! follows Core Lightning's REST API and sits on a dev node: invoices are real signed BOLT11,
//! payments move balances.

mod common;

use std::time::Duration;

use common::request;
use common::scenarios::{MockNode, pair};
use farebox_lightning::cln::ClnBackend;
use farebox_lightning::rest::{Endpoint, Secret, Timeouts, TlsTrust};
use farebox_lightning::testing::cln::{LoopbackCln, RUNE};
use farebox_lightning::testing::{Faults, cln_tls};
use farebox_lightning::{
    DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend, LightningError,
};

const WRONG_RUNE: &str = "zzzRLjMiDpY2U0o3W1oFowar36RFGpWloPbW9-RuZdo9MyZpZD0wMjRiOWExZmE4ZTAw";

/// The loopback CLNRest as the scenarios drive it.
struct Node(LoopbackCln);

impl Node {
    fn with(&self, trust: TlsTrust, rune: &str, timeouts: Timeouts) -> ClnBackend {
        let endpoint = Endpoint::new(&self.url()).unwrap().with_tls(trust).with_timeouts(timeouts);
        ClnBackend::new(endpoint, Secret::new(rune).unwrap()).unwrap()
    }

    fn pinned(&self) -> TlsTrust {
        TlsTrust::pinned_pem(self.0.tls().cert_pem.as_bytes()).unwrap()
    }
}

impl MockNode for Node {
    const PAY_PATH: &'static str = "/v1/pay";
    const SCHEME: &'static str = "https";

    async fn start(network: &DevNetwork, balance_msat: u64) -> Self {
        Node(LoopbackCln::start(network, balance_msat).await)
    }

    fn dev(&self) -> &DevNode {
        self.0.dev()
    }

    fn faults(&self) -> &Faults {
        self.0.faults()
    }

    fn backend_with(&self, timeouts: Timeouts) -> Box<dyn LightningBackend> {
        Box::new(self.with(self.pinned(), RUNE, timeouts))
    }

    fn refused_backend(&self) -> (Box<dyn LightningBackend>, String, String) {
        let backend = self.with(self.pinned(), WRONG_RUNE, Timeouts::default());
        let debug = format!("{backend:?}");
        (Box::new(backend), WRONG_RUNE.to_string(), debug)
    }

    fn backend_at(url: &str) -> Box<dyn LightningBackend> {
        let trust = TlsTrust::pinned_pem(cln_tls().cert_pem.as_bytes()).unwrap();
        let endpoint = Endpoint::new(url).unwrap().with_tls(trust);
        Box::new(ClnBackend::new(endpoint, Secret::new(RUNE).unwrap()).unwrap())
    }

    fn url(&self) -> String {
        self.0.url()
    }
}

scenario_tests!(Node);
scenario_tests!(Node: amountless_invoice_is_paid_the_amount_the_payer_chooses);

#[tokio::test]
async fn settlement_is_reported_by_waitinvoice_not_polled() {
    let alice = common::scenarios::a_waiter_sees_the_settlement::<Node>().await;
    assert_eq!(alice.faults().requests_exact("/v1/waitinvoice"), 1);
    let listings = alice.faults().requests_exact("/v1/listinvoices");
    assert_eq!(listings, 2, "before and after the wait; no polling");
}

#[tokio::test]
async fn an_invoice_expiring_during_waitinvoice_is_expired() {
    let (network, alice, _bob) = pair::<Node>(0).await;
    network.set_time(std::time::SystemTime::now());
    let server = alice.backend();
    let invoice = server
        .create_invoice(InvoiceRequest { expiry: Duration::from_secs(60), ..request(1_000) })
        .await
        .unwrap();
    let hash = invoice.payment_hash;
    let waiter =
        tokio::spawn(
            async move { server.wait_for_settlement(&hash, Duration::from_secs(30)).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    network.advance_time(Duration::from_secs(120));
    assert_eq!(waiter.await.unwrap().unwrap(), InvoiceState::Expired);
}

#[tokio::test]
async fn a_route_over_the_fee_limit_is_not_taken() {
    let (network, alice, bob) = pair::<Node>(100_000).await;
    let invoice = alice.backend().create_invoice(request(10_000)).await.unwrap();
    network.set_routing_fee(50, 0);
    let err = bob.backend().pay(&invoice.bolt11, 10).await.unwrap_err();
    assert!(matches!(err, LightningError::PaymentFailed(_)), "{err}");
    assert_eq!(bob.dev().balance_msat(), 100_000);
    let paid = bob.backend().pay(&invoice.bolt11, 50).await.unwrap();
    assert_eq!((paid.amount_msat, paid.fee_msat), (10_000, 50));
}

#[tokio::test]
async fn clnrest_certificates_are_trusted_by_their_ca_or_by_pinning_the_server_certificate() {
    let network = DevNetwork::new();
    let alice = <Node as MockNode>::start(&network, 0).await;
    let ca = alice.0.tls().ca_pem.as_deref().unwrap();
    for trust in [alice.pinned(), TlsTrust::roots_pem(ca.as_bytes()).unwrap()] {
        alice.with(trust, RUNE, Timeouts::default()).create_invoice(request(1_000)).await.unwrap();
    }
    let seen = alice.faults().requests();

    let stranger = cln_tls();
    for trust in [
        // Another node's CA and server certificate.
        TlsTrust::roots_pem(stranger.ca_pem.as_deref().unwrap().as_bytes()).unwrap(),
        TlsTrust::pinned_pem(stranger.cert_pem.as_bytes()).unwrap(),
        // Pinning pins the server certificate, not the CA that signed it.
        TlsTrust::pinned_pem(ca.as_bytes()).unwrap(),
        TlsTrust::PublicRoots,
    ] {
        let err = alice
            .with(trust, RUNE, Timeouts::default())
            .create_invoice(request(1_000))
            .await
            .unwrap_err();
        assert!(matches!(err, LightningError::Unavailable(_)), "{err}");
    }
    assert_eq!(alice.faults().requests(), seen, "nothing (and no rune) reached the server");
}
