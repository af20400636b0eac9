//! NWC end to end: an [`NwcClient`] and the dev node's [`WalletService`] talking through real
//! in-process relays (rust-nostr's relay builder, websockets on loopback), with real BOLT11
//! invoices and preimages from the dev node. Relays that die, drop connections or lose answers
//! are real relays behind a cutting TCP proxy or a write policy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use farebox_lightning::nwc::nostr::{Event, Kind, RelayUrl};
use farebox_lightning::nwc::nostr_relay_builder::prelude::{
    BoxedFuture, PolicyResult, WritePolicy,
};
use farebox_lightning::nwc::relay::LoopbackRelay;
use farebox_lightning::nwc::wire::{
    KIND_REQUEST, KIND_RESPONSE, NotificationPayload, ResponsePayload, Transaction,
};
use farebox_lightning::nwc::{
    Budget, BudgetRenewal, ConnectionSettings, ConnectionUri, Encryption, Method, NwcClient,
    NwcOptions, ServiceOptions, WalletService, relay, wire,
};
use farebox_lightning::{
    CreatedInvoice, DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend,
    LightningError, PaymentHash, PaymentOutcome, sha256,
};
use proptest::prelude::*;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Short timeouts so that unanswered requests fail within the test's patience.
fn fast() -> NwcOptions {
    NwcOptions {
        timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_secs(3),
        reconnect_interval: Duration::from_millis(100),
        expiration_grace: Duration::ZERO,
    }
}

fn service_opts() -> ServiceOptions {
    ServiceOptions { reconnect_interval: Duration::from_millis(100), ..ServiceOptions::default() }
}

async fn local_relay() -> LoopbackRelay {
    LoopbackRelay::start(relay::relay_builder(), None).await.unwrap()
}

async fn relay_with_policy(policy: impl WritePolicy + 'static) -> LoopbackRelay {
    LoopbackRelay::start(relay::relay_builder().write_policy(policy), None).await.unwrap()
}

fn invoice_request(amount_msat: u64) -> InvoiceRequest {
    InvoiceRequest { amount_msat, memo: "GET /weather".into(), expiry: Duration::from_secs(600) }
}

/// A payer's dev node behind a wallet service, and a shop's dev node to pay.
struct World {
    payer: DevNode,
    shop: DevNode,
    service: WalletService,
    /// Counts what reaches the payer's node through the service.
    backend: Arc<Counting>,
}

async fn world(relays: Vec<RelayUrl>, opts: ServiceOptions, balance_msat: u64) -> World {
    let network = DevNetwork::new();
    let payer = DevNode::random(&network, balance_msat);
    let shop = DevNode::random(&network, 0);
    let backend = Arc::new(Counting { node: payer.clone(), pays: AtomicUsize::new(0) });
    let service = WalletService::start(backend.clone(), relays, opts).await.unwrap();
    World { payer, shop, service, backend }
}

/// The dev node, counting the payments that reach it.
struct Counting {
    node: DevNode,
    pays: AtomicUsize,
}

#[async_trait]
impl LightningBackend for Counting {
    async fn create_invoice(&self, r: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        self.node.create_invoice(r).await
    }
    async fn invoice_state(&self, h: &PaymentHash) -> Result<InvoiceState, LightningError> {
        self.node.invoice_state(h).await
    }
    async fn pay(&self, bolt11: &str, fee: u64) -> Result<PaymentOutcome, LightningError> {
        self.pays.fetch_add(1, Ordering::SeqCst);
        self.node.pay(bolt11, fee).await
    }
    async fn wait_for_settlement(
        &self,
        h: &PaymentHash,
        t: Duration,
    ) -> Result<InvoiceState, LightningError> {
        self.node.wait_for_settlement(h, t).await
    }
    async fn create_amountless_invoice(
        &self,
        memo: String,
        expiry: Duration,
    ) -> Result<CreatedInvoice, LightningError> {
        self.node.create_amountless_invoice(memo, expiry).await
    }
    async fn pay_amount(&self, b: &str, a: u64, f: u64) -> Result<PaymentOutcome, LightningError> {
        self.pays.fetch_add(1, Ordering::SeqCst);
        self.node.pay_amount(b, a, f).await
    }
    async fn balance(&self) -> Result<u64, LightningError> {
        self.node.balance().await
    }
    async fn info(&self) -> Result<farebox_lightning::NodeInfo, LightningError> {
        self.node.info().await
    }
}

/// `uri` pointing at other relays.
fn with_relays(uri: &ConnectionUri, relays: Vec<RelayUrl>) -> ConnectionUri {
    let secret = uri.expose_secret();
    let secret = secret.rsplit_once("secret=").unwrap().1;
    let relays: Vec<String> = relays.iter().map(|r| format!("relay={}", r.as_str())).collect();
    format!(
        "nostr+walletconnect://{}?{}&secret={secret}",
        uri.wallet_pubkey.to_hex(),
        relays.join("&")
    )
    .parse()
    .unwrap()
}

fn relay_addr(url: &RelayUrl) -> SocketAddr {
    url.as_str_without_trailing_slash().trim_start_matches("ws://").parse().unwrap()
}

/// A TCP proxy in front of a relay that can cut every connection through it, and refuse new
/// ones while paused: a relay that drops its clients.
struct Proxy {
    url: RelayUrl,
    cut: broadcast::Sender<()>,
    paused: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = RelayUrl::parse(&format!("ws://{}", listener.local_addr().unwrap())).unwrap();
        let (cut, _) = broadcast::channel(16);
        let paused = Arc::new(AtomicBool::new(false));
        let (cut_tx, paused_flag) = (cut.clone(), paused.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if paused_flag.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut_rx = cut_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.recv() => {}
                    }
                });
            }
        });
        Self { url, cut, paused }
    }

    fn cut_all(&self) {
        let _ = self.cut.send(());
    }
}

/// A relay write policy from a closure: what a relay does with each event it is sent.
struct Policy<F>(F);

impl<F> std::fmt::Debug for Policy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policy")
    }
}

impl<F: Fn(&Event) -> PolicyResult + Send + Sync> WritePolicy for Policy<F> {
    fn admit_event<'a>(
        &'a self,
        event: &'a Event,
        _: &'a SocketAddr,
    ) -> BoxedFuture<'a, PolicyResult> {
        let verdict = (self.0)(event);
        Box::pin(async move { verdict })
    }
}

/// Refuses (so never forwards) the wallet's responses while `armed`, calling `on_loss` for each:
/// the wallet acts, the client never hears.
fn lose_responses(armed: Arc<AtomicBool>, on_loss: impl Fn() + Send + Sync) -> impl WritePolicy {
    Policy(move |event: &Event| {
        if event.kind == Kind::Custom(KIND_RESPONSE) && armed.load(Ordering::SeqCst) {
            on_loss();
            return PolicyResult::Reject("lost".into());
        }
        PolicyResult::Accept
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pays_a_dev_node_invoice_through_the_relay() {
    let relay = local_relay().await;
    let w = world(vec![relay.url().clone()], service_opts(), 1_000_000).await;
    let uri = w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let wallet = NwcClient::with_options(&uri, fast());
    assert_eq!(wallet.encryption().await.unwrap(), Encryption::Nip44V2);

    let invoice = w.shop.create_invoice(invoice_request(21_000)).await.unwrap();
    let paid = wallet.pay(&invoice.bolt11, 1_000).await.unwrap();

    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(paid.amount_msat, 21_000);
    assert_eq!(w.shop.settled_invoices().len(), 1);
    assert_eq!(w.shop.balance_msat(), 21_000);
    assert_eq!(w.payer.balance_msat(), 1_000_000 - 21_000);
    assert_eq!(wallet.balance().await.unwrap(), 1_000_000 - 21_000);
    // The wallet remembers the payment: lookup_invoice finds it settled with its preimage.
    assert!(matches!(
        wallet.invoice_state(&invoice.payment_hash).await.unwrap(),
        InvoiceState::Unknown // an outgoing payment is not an invoice this wallet issued
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_issues_and_watches_invoices_over_nwc() {
    let relay = local_relay().await;
    let url = relay.url().clone();
    let w = world(vec![url.clone()], service_opts(), 1_000_000).await;
    // The shop's node behind its own wallet service on the same relay.
    let shop_service =
        WalletService::start(Arc::new(w.shop.clone()), vec![url], service_opts()).await.unwrap();
    let shop_uri =
        shop_service.create_connection(ConnectionSettings::unrestricted("server")).await.unwrap();
    let server = NwcClient::with_options(&shop_uri, fast());
    let agent_uri =
        w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let agent = NwcClient::with_options(&agent_uri, fast());

    let invoice = server.create_invoice(invoice_request(42_000)).await.unwrap();
    assert_eq!(server.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Open);
    assert!(server.wallet_info().await.unwrap().notifies_payments_received());

    let waiting = {
        let server = server.clone();
        let hash = invoice.payment_hash;
        tokio::spawn(
            async move { server.wait_for_settlement(&hash, Duration::from_secs(10)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paid = agent.pay(&invoice.bolt11, 1_000).await.unwrap();
    let settled = waiting.await.unwrap().unwrap();
    assert_eq!(settled, InvoiceState::Settled { preimage: paid.preimage, amount_msat: 42_000 });
    assert_eq!(
        server.invoice_state(&invoice.payment_hash).await.unwrap(),
        InvoiceState::Settled { preimage: paid.preimage, amount_msat: 42_000 }
    );
    assert_eq!(w.shop.balance_msat(), 42_000);
    // Another connection of the same wallet does not see this connection's invoices.
    let other =
        shop_service.create_connection(ConnectionSettings::unrestricted("x")).await.unwrap();
    let other = NwcClient::with_options(&other, fast());
    assert_eq!(other.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Unknown);
    // NIP-47's make_invoice always has an amount.
    assert!(matches!(
        server.create_amountless_invoice("tip".into(), Duration::from_secs(60)).await,
        Err(LightningError::Unsupported(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_and_info_come_from_the_wallet() {
    let relay = local_relay().await;
    let w = world(vec![relay.url().clone()], service_opts(), 777_000).await;
    let settings = ConnectionSettings {
        methods: [Method::GetBalance, Method::GetInfo].into_iter().collect(),
        ..ConnectionSettings::unrestricted("read-only")
    };
    let uri = w.service.create_connection(settings).await.unwrap();
    let wallet = NwcClient::with_options(&uri, fast());
    assert_eq!(wallet.balance().await.unwrap(), 777_000);
    let info = wallet.info().await.unwrap();
    assert_eq!(info.pubkey, Some(w.payer.pubkey()));
    assert_eq!(info.network, Some(farebox_lightning::Currency::Regtest));
    assert_eq!(info.methods, ["get_balance", "get_info"]);
    // Not allowed to pay: RESTRICTED, and nothing reaches the node.
    let invoice = w.shop.create_invoice(invoice_request(1_000)).await.unwrap();
    assert!(matches!(wallet.pay(&invoice.bolt11, 0).await, Err(LightningError::Restricted(_))));
    assert_eq!(w.backend.pays.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uri_with_params_reordered_and_a_dead_relay_still_pays() {
    let (a, b) = (local_relay().await, local_relay().await);
    let (url_a, url_b) = (a.url().clone(), b.url().clone());
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = RelayUrl::parse(&format!("ws://{}", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        url
    };
    let w = world(vec![url_a.clone(), url_b.clone()], service_opts(), 1_000_000).await;
    let issued =
        w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    // Secret first, a dead relay, percent-encoded relays, lud16 in between.
    let secret = issued.expose_secret().rsplit_once("secret=").unwrap().1.to_owned();
    let encode = |u: &RelayUrl| u.as_str().replace(':', "%3A").replace('/', "%2F");
    let text = format!(
        "nostr+walletconnect://{}?secret={secret}&relay={}&lud16=agent%40example.com&relay={}&relay={}",
        issued.wallet_pubkey.to_hex(),
        encode(&dead),
        encode(&url_b),
        url_a.as_str(),
    );
    let uri: ConnectionUri = text.parse().unwrap();
    assert_eq!(uri.relays, [dead, url_b, url_a]);
    let wallet = NwcClient::with_options(&uri, fast());
    let invoice = w.shop.create_invoice(invoice_request(5_000)).await.unwrap();
    let paid = wallet.pay(&invoice.bolt11, 0).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    // Both live relays carried the request; the wallet answered it once.
    assert_eq!(w.service.requests_handled(Method::PayInvoice), 1);
    assert_eq!(w.backend.pays.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_dropping_connections_mid_request_does_not_stop_the_payment() {
    let armed = Arc::new(AtomicBool::new(true));
    let (cut, _) = broadcast::channel(16);
    // Cuts every connection just after a request passes (the request is still forwarded).
    let (cut_on, fired) = (cut.clone(), armed.clone());
    let flaky = relay_with_policy(Policy(move |event: &Event| {
        if event.kind == Kind::Custom(KIND_REQUEST) && fired.swap(false, Ordering::SeqCst) {
            let cut = cut_on.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = cut.send(());
            });
        }
        PolicyResult::Accept
    }))
    .await;
    let proxy = Proxy::start(relay_addr(flaky.url())).await;
    // The proxy's cut is driven by the relay's policy.
    let mut cuts = cut.subscribe();
    let proxy_cut = proxy.cut.clone();
    tokio::spawn(async move {
        while cuts.recv().await.is_ok() {
            let _ = proxy_cut.send(());
        }
    });
    let steady = local_relay().await;
    let w = world(vec![proxy.url.clone(), steady.url().clone()], service_opts(), 1_000_000).await;
    let uri = w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let wallet = NwcClient::with_options(&uri, fast());
    let invoice = w.shop.create_invoice(invoice_request(8_000)).await.unwrap();

    let paid = wallet.pay(&invoice.bolt11, 0).await.unwrap();
    // The request may be answered through the steady relay before the proxied one has even
    // passed it on: wait for the flaky relay to see it and cut, then count the payments.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while armed.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!armed.load(Ordering::SeqCst), "the flaky relay cut its connections");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(w.shop.settled_invoices().len(), 1);
    assert_eq!(w.backend.pays.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_with_the_only_relay_is_looked_up_after_reconnecting() {
    let armed = Arc::new(AtomicBool::new(true));
    let (cut, mut cuts) = broadcast::channel(16);
    let inner = relay_with_policy(lose_responses(armed.clone(), move || {
        let _ = cut.send(());
    }))
    .await;
    let proxy = Proxy::start(relay_addr(inner.url())).await;
    let proxy_cut = proxy.cut.clone();
    let disarm = armed.clone();
    tokio::spawn(async move {
        while cuts.recv().await.is_ok() {
            disarm.store(false, Ordering::SeqCst);
            let _ = proxy_cut.send(());
        }
    });
    let w = world(vec![proxy.url.clone()], service_opts(), 1_000_000).await;
    let uri = w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let wallet = NwcClient::with_options(&uri, fast());
    let invoice = w.shop.create_invoice(invoice_request(13_000)).await.unwrap();

    let first = wallet.pay(&invoice.bolt11, 0).await;
    assert!(matches!(first, Err(LightningError::OutcomeUnknown(_))), "{first:?}");
    assert_eq!(w.shop.settled_invoices().len(), 1, "the wallet did pay");

    // Both sides reconnect; the retry asks instead of paying again.
    let paid = wallet.pay(&invoice.bolt11, 0).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(w.service.requests_handled(Method::PayInvoice), 1);
    assert_eq!(w.backend.pays.load(Ordering::SeqCst), 1);
    assert_eq!(w.payer.balance_msat(), 1_000_000 - 13_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_that_never_answers_is_outcome_unknown_and_never_pays_twice() {
    let armed = Arc::new(AtomicBool::new(true));
    let relay = relay_with_policy(lose_responses(armed.clone(), || {})).await;
    let w = world(vec![relay.url().clone()], service_opts(), 1_000_000).await;
    let uri = w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let wallet = NwcClient::with_options(&uri, fast());
    let invoice = w.shop.create_invoice(invoice_request(9_000)).await.unwrap();

    for _ in 0..3 {
        let unanswered = wallet.pay(&invoice.bolt11, 0).await;
        assert!(matches!(unanswered, Err(LightningError::OutcomeUnknown(_))), "{unanswered:?}");
    }
    // Paid exactly once, however often the agent retried: the retries were lookups.
    assert_eq!(w.service.requests_handled(Method::PayInvoice), 1);
    assert!(w.service.requests_handled(Method::LookupInvoice) >= 2);
    assert_eq!(w.shop.settled_invoices().len(), 1);
    assert_eq!(w.payer.balance_msat(), 1_000_000 - 9_000);

    // Once answers flow again, the retry returns the payment the wallet made.
    armed.store(false, Ordering::SeqCst);
    let paid = wallet.pay(&invoice.bolt11, 0).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(w.service.requests_handled(Method::PayInvoice), 1);
    assert_eq!(w.backend.pays.load(Ordering::SeqCst), 1);
    // A server whose wallet is silent fails closed: no invoice, no "paid", no "unknown".
    armed.store(true, Ordering::SeqCst);
    assert!(matches!(wallet.balance().await, Err(LightningError::Unavailable(_))));
    let issue = wallet.create_invoice(invoice_request(1_000)).await;
    assert!(matches!(issue, Err(LightningError::Unavailable(_))), "{issue:?}");
    let state = wallet.invoice_state(&invoice.payment_hash).await;
    assert!(matches!(state, Err(LightningError::Unavailable(_))), "{state:?}");
    let waited = wallet.wait_for_settlement(&invoice.payment_hash, Duration::from_secs(5)).await;
    assert!(matches!(waited, Err(LightningError::Unavailable(_))), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_reached_the_wallet_is_sent_again_only_after_it_expired() {
    let relay = local_relay().await;
    let direct = relay.url().clone();
    // The service reaches the relay through a proxy that can take it offline.
    let proxy = Proxy::start(relay_addr(&direct)).await;
    let w = world(vec![proxy.url.clone()], service_opts(), 1_000_000).await;
    let issued =
        w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let wallet = NwcClient::with_options(&with_relays(&issued, vec![direct]), fast());
    wallet.wallet_info().await.unwrap();
    let invoice = w.shop.create_invoice(invoice_request(4_000)).await.unwrap();

    proxy.paused.store(true, Ordering::SeqCst);
    proxy.cut_all();
    let lost = wallet.pay(&invoice.bolt11, 0).await;
    assert!(matches!(lost, Err(LightningError::OutcomeUnknown(_))), "{lost:?}");
    proxy.paused.store(false, Ordering::SeqCst);
    // Back online but the request is still within its expiration: not sent again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = wallet.pay(&invoice.bolt11, 0).await;
    assert!(matches!(early, Err(LightningError::OutcomeUnknown(_))), "{early:?}");
    assert_eq!(w.service.requests_handled(Method::PayInvoice), 0);
    // After the first request expired, the wallet's "not found" is final: paid once now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paid = wallet.pay(&invoice.bolt11, 0).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(w.service.requests_handled(Method::PayInvoice), 1);
    assert_eq!(w.shop.settled_invoices().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_is_acted_on_once() {
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = requests.clone();
    let relay = relay_with_policy(Policy(move |event: &Event| {
        if event.kind == Kind::Custom(KIND_REQUEST) {
            seen.lock().unwrap().push(event.clone());
        }
        PolicyResult::Accept
    }))
    .await;
    let url = relay.url().clone();
    let w = world(vec![url.clone()], service_opts(), 1_000_000).await;
    let uri = w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let wallet = NwcClient::with_options(&uri, fast());
    assert_eq!(wallet.balance().await.unwrap(), 1_000_000);
    assert_eq!(w.service.requests_handled(Method::GetBalance), 1);

    // Anyone watching the relay can publish the same signed request again.
    let replayed = requests.lock().unwrap()[0].clone();
    let pool = nostr_relay_pool::RelayPool::default();
    pool.add_relay(&url, nostr_relay_pool::RelayOptions::default()).await.unwrap();
    pool.connect().await;
    pool.try_connect(Duration::from_secs(3)).await;
    pool.send_event(&replayed).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.service.requests_handled(Method::GetBalance), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_never_pays_an_invoice_twice_even_for_a_fresh_client() {
    let relay = local_relay().await;
    let w = world(vec![relay.url().clone()], service_opts(), 1_000_000).await;
    let uri = w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let invoice = w.shop.create_invoice(invoice_request(3_000)).await.unwrap();
    NwcClient::with_options(&uri, fast()).pay(&invoice.bolt11, 0).await.unwrap();
    // A new client (no memory of the first payment) asks again: refused before the node.
    let again = NwcClient::with_options(&uri, fast()).pay(&invoice.bolt11, 0).await;
    assert!(matches!(again, Err(LightningError::PaymentFailed(_))), "{again:?}");
    assert_eq!(w.backend.pays.load(Ordering::SeqCst), 1);
    assert_eq!(w.payer.balance_msat(), 1_000_000 - 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_over_its_limit_is_quota_exceeded_and_a_poor_wallet_insufficient_balance() {
    let relay = local_relay().await;
    let w = world(vec![relay.url().clone()], service_opts(), 1_000_000).await;
    let budget = Budget { max_amount_msat: 50_000, renewal: BudgetRenewal::Daily };
    let uri = w
        .service
        .create_connection(ConnectionSettings::with_budget("agent", budget))
        .await
        .unwrap();
    let wallet = NwcClient::with_options(&uri, fast());

    let first = w.shop.create_invoice(invoice_request(21_000)).await.unwrap();
    wallet.pay(&first.bolt11, 0).await.unwrap();
    assert_eq!(w.service.budget_used(&uri.wallet_pubkey), Some(21_000));
    // 21 000 spent + 21 000 + 10 000 fee reserve > 50 000.
    let second = w.shop.create_invoice(invoice_request(21_000)).await.unwrap();
    let refused = wallet.pay(&second.bolt11, 0).await;
    assert!(matches!(refused, Err(LightningError::QuotaExceeded(_))), "{refused:?}");
    assert_eq!(w.backend.pays.load(Ordering::SeqCst), 1);
    // Refused before acting, so a smaller payment within the budget still goes through.
    let third = w.shop.create_invoice(invoice_request(9_000)).await.unwrap();
    wallet.pay(&third.bolt11, 0).await.unwrap();
    assert_eq!(w.service.budget_used(&uri.wallet_pubkey), Some(30_000));

    let poor = world(vec![relay.url().clone()], service_opts(), 15_000).await;
    let poor_uri =
        poor.service.create_connection(ConnectionSettings::unrestricted("p")).await.unwrap();
    let invoice = poor.shop.create_invoice(invoice_request(10_000)).await.unwrap();
    let broke = NwcClient::with_options(&poor_uri, fast()).pay(&invoice.bolt11, 0).await;
    assert!(matches!(broke, Err(LightningError::InsufficientBalance(_))), "{broke:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nip04_only_wallet_is_spoken_to_in_nip04() {
    let relay = local_relay().await;
    let opts = ServiceOptions { encryptions: vec![Encryption::Nip04], ..service_opts() };
    let w = world(vec![relay.url().clone()], opts, 1_000_000).await;
    let uri =
        w.service.create_connection(ConnectionSettings::unrestricted("legacy")).await.unwrap();
    let wallet = NwcClient::with_options(&uri, fast());
    // A legacy info event: no encryption tag at all.
    assert_eq!(wallet.wallet_info().await.unwrap().encryptions, [Encryption::Nip04]);
    assert_eq!(wallet.encryption().await.unwrap(), Encryption::Nip04);
    let invoice = w.shop.create_invoice(invoice_request(2_000)).await.unwrap();
    let paid = wallet.pay(&invoice.bolt11, 0).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(wallet.balance().await.unwrap(), 1_000_000 - 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_wallet_does_not_know_or_revoked_is_unauthorized() {
    let relay = local_relay().await;
    let w = world(vec![relay.url().clone()], service_opts(), 1_000_000).await;
    let issued =
        w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let invoice = w.shop.create_invoice(invoice_request(1_000)).await.unwrap();
    let stranger: ConnectionUri = format!(
        "nostr+walletconnect://{}?relay={}&secret={}",
        issued.wallet_pubkey.to_hex(),
        issued.relays[0].as_str(),
        "11".repeat(32)
    )
    .parse()
    .unwrap();
    let refused = NwcClient::with_options(&stranger, fast()).pay(&invoice.bolt11, 0).await;
    assert!(matches!(refused, Err(LightningError::AuthRefused(_))), "{refused:?}");

    assert!(w.service.revoke(&issued.wallet_pubkey));
    let revoked = NwcClient::with_options(&issued, fast()).balance().await;
    assert!(matches!(revoked, Err(LightningError::AuthRefused(_))), "{revoked:?}");
    assert_eq!(w.backend.pays.load(Ordering::SeqCst), 0);
    assert!(w.shop.settled_invoices().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_amount_pays_an_amountless_invoice_over_nwc() {
    let relay = local_relay().await;
    let w = world(vec![relay.url().clone()], service_opts(), 1_000_000).await;
    let uri = w.service.create_connection(ConnectionSettings::unrestricted("agent")).await.unwrap();
    let wallet = NwcClient::with_options(&uri, fast());
    let refund =
        w.shop.create_amountless_invoice("refund".into(), Duration::from_secs(60)).await.unwrap();
    assert!(matches!(wallet.pay(&refund.bolt11, 0).await, Err(LightningError::InvalidInvoice(_))));
    let paid = wallet.pay_amount(&refund.bolt11, 5_500, 0).await.unwrap();
    assert_eq!(paid.amount_msat, 5_500);
    assert_eq!(w.shop.settled_invoices()[0].amount_msat, 5_500);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn connection_uri_parsing_never_panics(
        input in "(nostr\\+walletconnect://)?[0-9a-fA-F]{0,66}(\\?((relay|secret|lud16|x)=[ -~]{0,80}&?){0,6})?"
    ) {
        let _ = input.parse::<ConnectionUri>();
    }

    #[test]
    fn arbitrary_text_is_never_a_panic_for_the_uri_parser(input in any::<String>()) {
        let _ = input.parse::<ConnectionUri>();
    }

    #[test]
    fn response_and_notification_parsing_never_panics(
        json in "\\{(\"(result_type|error|result|code|message|preimage|fees_paid|payment_hash|amount|state|type|notification_type|notification)\":(\"[ -~]{0,20}\"|-?[0-9]{1,22}(\\.[0-9])?|null|\\{\\}|\\[\\]|true),?){0,8}\\}"
    ) {
        let _ = wire::parse_json::<ResponsePayload>(&json);
        let _ = wire::parse_json::<Transaction>(&json);
        let _ = wire::parse_json::<NotificationPayload>(&json);
        if let Ok(response) = wire::parse_json::<ResponsePayload>(&json)
            && let Some(result) = response.result
        {
            let _ = wire::parse_result::<wire::PayInvoiceResult>(result.clone());
            let _ = wire::parse_result::<Transaction>(result);
        }
    }
}
