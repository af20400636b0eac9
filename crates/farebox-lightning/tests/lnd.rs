//! [`LndBackend`] against the loopback lnd of `farebox_lightning::testing::lnd`, which follows
//! lnd's REST API (grpc-gateway) and sits on a dev node: invoices are real BOLT11 signed with
//! the node's key, and a payment from one server moves balance to another over the dev network.

mod common;

use common::request;
use common::scenarios::{MockNode, pair};
use farebox_lightning::lnd::{LndBackend, Macaroon};
use farebox_lightning::rest::{Endpoint, Timeouts, TlsTrust};
use farebox_lightning::testing::lnd::{ADMIN_MACAROON, INVOICE_MACAROON, LoopbackLnd};
use farebox_lightning::testing::{Faults, lnd_tls};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend, LightningError};

/// The loopback lnd as the scenarios drive it.
struct Node(LoopbackLnd);

impl Node {
    /// A backend as an operator configures it: lnd's tls.cert pinned, a macaroon's bytes.
    fn with_macaroon(&self, macaroon: &[u8], timeouts: Timeouts) -> LndBackend {
        let endpoint = Endpoint::new(&self.url())
            .unwrap()
            .with_tls(TlsTrust::pinned_pem(self.0.tls().cert_pem.as_bytes()).unwrap())
            .with_timeouts(timeouts);
        LndBackend::new(endpoint, Macaroon::from_bytes(macaroon).unwrap()).unwrap()
    }
}

const WRONG_MACAROON: &[u8] = b"\x02\x01\x03a macaroon from another node";

impl MockNode for Node {
    const PAY_PATH: &'static str = "/v2/router/send";
    const SCHEME: &'static str = "https";

    async fn start(network: &DevNetwork, balance_msat: u64) -> Self {
        Node(LoopbackLnd::start(network, balance_msat).await)
    }

    fn dev(&self) -> &DevNode {
        self.0.dev()
    }

    fn faults(&self) -> &Faults {
        self.0.faults()
    }

    fn backend_with(&self, timeouts: Timeouts) -> Box<dyn LightningBackend> {
        Box::new(self.with_macaroon(ADMIN_MACAROON, timeouts))
    }

    fn refused_backend(&self) -> (Box<dyn LightningBackend>, String, String) {
        let backend = self.with_macaroon(WRONG_MACAROON, Timeouts::default());
        let debug = format!("{backend:?}");
        (Box::new(backend), hex::encode(WRONG_MACAROON), debug)
    }

    fn backend_at(url: &str) -> Box<dyn LightningBackend> {
        let endpoint = Endpoint::new(url)
            .unwrap()
            .with_tls(TlsTrust::pinned_pem(lnd_tls().cert_pem.as_bytes()).unwrap());
        Box::new(LndBackend::new(endpoint, Macaroon::from_bytes(ADMIN_MACAROON).unwrap()).unwrap())
    }

    fn url(&self) -> String {
        self.0.url()
    }
}

scenario_tests!(Node);
scenario_tests!(Node: amountless_invoice_is_paid_the_amount_the_payer_chooses);

#[tokio::test]
async fn settlement_is_pushed_by_the_subscription_not_polled() {
    let alice = common::scenarios::a_waiter_sees_the_settlement::<Node>().await;
    assert_eq!(alice.faults().requests_to("/v2/invoices/subscribe/"), 1);
    let lookups = alice.faults().requests_to("/v1/invoice/");
    assert_eq!(lookups, 1, "one lookup, then the stream; no polling");
}

#[tokio::test]
async fn only_the_pinned_certificate_is_trusted_and_nothing_is_sent_to_another() {
    let network = DevNetwork::new();
    let alice = Node::start(&network, 0).await;
    let other = lnd_tls();
    for trust in [TlsTrust::pinned_pem(other.cert_pem.as_bytes()).unwrap(), TlsTrust::PublicRoots] {
        let endpoint = Endpoint::new(&alice.url()).unwrap().with_tls(trust);
        let backend =
            LndBackend::new(endpoint, Macaroon::from_bytes(ADMIN_MACAROON).unwrap()).unwrap();
        let err = backend.create_invoice(request(1_000)).await.unwrap_err();
        assert!(matches!(err, LightningError::Unavailable(_)), "{err}");
        let err = backend.invoice_state(&[1; 32]).await.unwrap_err();
        assert!(matches!(err, LightningError::Unavailable(_)), "{err}");
    }
    assert_eq!(alice.faults().requests(), 0, "no request (and no macaroon) reached the server");
    // The pinned certificate itself works.
    alice.backend().create_invoice(request(1_000)).await.unwrap();
}

#[tokio::test]
async fn an_invoice_macaroon_receives_but_cannot_pay() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let invoice = alice.backend().create_invoice(request(1_000)).await.unwrap();
    let receive_only = bob.with_macaroon(INVOICE_MACAROON, Timeouts::default());
    receive_only.create_invoice(request(1_000)).await.unwrap();
    // lnd's bakery answers "permission denied" (gRPC Unknown, HTTP 500).
    let err = receive_only.pay(&invoice.bolt11, 0).await.unwrap_err();
    assert!(matches!(err, LightningError::AuthRefused(_)), "{err}");
    assert_eq!(bob.dev().balance_msat(), 100_000, "nothing was paid");
}
