//! `farebox pay` paying an L402 server through a real node's REST API: LND, Core Lightning
//! (CLNRest) and LNbits, configured in the wallet file as the README documents (secrets in
//! private files or the environment). The nodes are `farebox_lightning::testing`'s loopback
//! servers, which follow each project's REST API; behind each is a dev node on the same dev
//! network as the server's, so the wallet's payment really settles the server's invoice and
//! the preimage `farebox pay` presents is the one the server's node generated.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use farebox_core::{Money, Price};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::testing::cln::{LoopbackCln, RUNE};
use farebox_lightning::testing::lnbits::LoopbackLnbits;
use farebox_lightning::testing::lnd::{ADMIN_MACAROON, LoopbackLnd};
use farebox_lightning::{DevNetwork, DevNode, InvoiceState, LightningBackend};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use support::write_private;

/// The price of `/joke`, msat.
const PRICE_MSAT: u64 = 10_000;

/// An L402 server selling `/joke` for 10 sat (farebox-server's paywall with the L402 rail),
/// receiving on a dev node; it runs on `runtime` with the wallets' loopback nodes.
struct Shop {
    network: DevNetwork,
    node: DevNode,
    addr: SocketAddr,
    /// Requests the handler answered: what was served.
    served: Arc<AtomicUsize>,
    runtime: tokio::runtime::Runtime,
}

impl Shop {
    fn start() -> Shop {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let network = DevNetwork::new();
        let node = DevNode::random(&network, 0);
        let keys = Arc::new(DerivedRootKeys::new(&[0x42; 32]).unwrap());
        let rail = L402Rail::new(L402Config::new("jokes", keys), Arc::new(node.clone())).unwrap();
        let route = PricedRoute::new(
            Some(http::Method::GET),
            "/joke",
            Price::one(Money::sats(PRICE_MSAT / 1000)),
        )
        .unwrap();
        let paywall =
            Arc::new(Paywall::builder().shared_rail(Arc::new(rail)).route(route).build().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let app = axum::Router::new()
            .route(
                "/joke",
                axum::routing::get(move || {
                    count.fetch_add(1, Ordering::SeqCst);
                    async { axum::Json(serde_json::json!({"joke": "a paid one"})) }
                }),
            )
            .layer(PaywallLayer::shared(paywall));
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            addr
        });
        Shop { network, node, addr, served, runtime }
    }

    fn url(&self) -> String {
        format!("http://{}/joke", self.addr)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// What the server's node state says about the invoice `payment_hash`.
    fn invoice_state(&self, payment_hash: &[u8; 32]) -> InvoiceState {
        self.runtime.block_on(self.node.invoice_state(payment_hash)).unwrap()
    }
}

/// Writes `bytes` to `dir/name`, readable by its owner only, as secret files must be.
fn secret_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A wallet file in `dir` with `lightning` as its `[lightning]` table (plus a fee bound of
/// `max_fee`) and caps of 20 sat a request, 100 sat in all.
fn wallet_file(dir: &Path, lightning: &str, max_fee: &str) -> PathBuf {
    let path = dir.join("wallet.toml");
    write_private(
        &path,
        &format!(
            "[lightning]\n{lightning}\nmax_fee = \"{max_fee}\"\n\n[budget.sat]\nper_request = \"20 sat\"\ntotal = \"100 sat\"\n"
        ),
    );
    path
}

/// `farebox pay <url> --json` with this wallet file and `env`.
fn pay(wallet: &Path, url: &str, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_farebox"));
    command
        .env("FAREBOX_WALLET", wallet)
        .env_remove("FAREBOX_DEV_WALLET")
        .envs(env.iter().copied())
        .args(["pay", url, "--json"]);
    command.output().unwrap()
}

/// The wallet's node made exactly one payment, and it settled the server's invoice for the
/// price with the very preimage the wallet's node got back.
fn assert_paid_and_served(shop: &Shop, out: &Output, payer: &DevNode) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the body");
    assert_eq!(body["joke"], "a paid one");
    assert_eq!(shop.served(), 1);
    let sent = payer.sent_payments();
    assert_eq!(sent.len(), 1, "paid once");
    assert_eq!(
        shop.invoice_state(&sent[0].payment_hash),
        InvoiceState::Settled { preimage: sent[0].preimage, amount_msat: PRICE_MSAT }
    );
    assert_eq!(shop.node.balance_msat(), PRICE_MSAT, "the server's node received the price");
}

/// Nothing served, nothing received, and the wallet's node still holds `balance_msat`.
fn assert_nothing_paid_or_served(shop: &Shop, out: &Output, payer: &DevNode, balance_msat: u64) {
    assert!(out.stdout.is_empty(), "nothing served: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(shop.served(), 0);
    assert_eq!(shop.node.balance_msat(), 0);
    assert_eq!(payer.balance_msat(), balance_msat);
}

/// An LND wallet file: `url`, the admin macaroon in a (binary) file, `tls.cert` pinned.
fn lnd_wallet(dir: &Path, lnd: &LoopbackLnd, macaroon: &[u8]) -> PathBuf {
    secret_file(dir, "admin.macaroon", macaroon);
    std::fs::write(dir.join("tls.cert"), &lnd.tls().cert_pem).unwrap();
    let table = format!(
        "kind = \"lnd\"\nurl = \"{}\"\nmacaroon_file = \"admin.macaroon\"\ntls_cert_file = \"tls.cert\"",
        lnd.url()
    );
    wallet_file(dir, &table, "1 sat")
}

#[test]
fn farebox_pay_through_lnd_settles_the_servers_invoice_and_gets_the_body() {
    let shop = Shop::start();
    let lnd = shop.runtime.block_on(LoopbackLnd::start(&shop.network, 100_000));
    let dir = tempfile::tempdir().unwrap();
    let wallet = lnd_wallet(dir.path(), &lnd, ADMIN_MACAROON);

    let out = pay(&wallet, &shop.url(), &[]);
    assert_paid_and_served(&shop, &out, lnd.dev());
    assert_eq!(lnd.dev().balance_msat(), 100_000 - PRICE_MSAT);
    assert_eq!(lnd.faults().requests_exact("/v2/router/send"), 1);
}

#[test]
fn a_payment_lnd_cannot_make_is_exit_9_and_nothing_is_served() {
    let shop = Shop::start();
    // 5 sat cannot pay a 10 sat invoice: lnd's payment fails (insufficient balance).
    let lnd = shop.runtime.block_on(LoopbackLnd::start(&shop.network, 5_000));
    let dir = tempfile::tempdir().unwrap();
    let wallet = lnd_wallet(dir.path(), &lnd, ADMIN_MACAROON);

    let out = pay(&wallet, &shop.url(), &[]);
    assert_eq!(out.status.code(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_paid_or_served(&shop, &out, lnd.dev(), 5_000);
    assert_eq!(lnd.faults().requests_exact("/v2/router/send"), 1, "tried once");
}

#[test]
fn a_macaroon_lnd_refuses_is_exit_10_and_nothing_is_served() {
    let shop = Shop::start();
    let lnd = shop.runtime.block_on(LoopbackLnd::start(&shop.network, 100_000));
    let dir = tempfile::tempdir().unwrap();
    let wallet = lnd_wallet(dir.path(), &lnd, b"\x02\x01\x03a macaroon from another node");

    let out = pay(&wallet, &shop.url(), &[]);
    assert_eq!(out.status.code(), Some(10), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_paid_or_served(&shop, &out, lnd.dev(), 100_000);
}

/// An LNbits wallet file: `url`, the admin key from `LNBITS_ADMIN_KEY`. LNbits reserves at
/// least 2 sat for fees, so the fee bound is 2 sat.
fn lnbits_wallet(dir: &Path, lnbits: &LoopbackLnbits) -> PathBuf {
    let table =
        format!("kind = \"lnbits\"\nurl = \"{}\"\nkey_env = \"LNBITS_ADMIN_KEY\"", lnbits.url());
    wallet_file(dir, &table, "2 sat")
}

#[test]
fn farebox_pay_through_lnbits_settles_the_servers_invoice_and_gets_the_body() {
    let shop = Shop::start();
    let lnbits = shop.runtime.block_on(LoopbackLnbits::start(&shop.network, 100_000));
    let dir = tempfile::tempdir().unwrap();
    let wallet = lnbits_wallet(dir.path(), &lnbits);

    let out = pay(&wallet, &shop.url(), &[("LNBITS_ADMIN_KEY", lnbits.admin_key(0))]);
    assert_paid_and_served(&shop, &out, lnbits.dev(0));
    assert_eq!(lnbits.dev(0).balance_msat(), 100_000 - PRICE_MSAT);
}

#[test]
fn lnbits_failing_or_refusing_the_payment_is_exit_9_or_10_and_nothing_is_served() {
    let shop = Shop::start();
    // Wallet 0 cannot cover 10 sat and LNbits' 2 sat fee reserve; wallet 1 can.
    let lnbits =
        shop.runtime.block_on(LoopbackLnbits::with_wallets(&shop.network, &[5_000, 100_000]));
    let dir = tempfile::tempdir().unwrap();
    let wallet = lnbits_wallet(dir.path(), &lnbits);

    let out = pay(&wallet, &shop.url(), &[("LNBITS_ADMIN_KEY", lnbits.admin_key(0))]);
    assert_eq!(out.status.code(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_paid_or_served(&shop, &out, lnbits.dev(0), 5_000);

    // Wallet 1's invoice key is not allowed to pay: LNbits answers 403.
    let out = pay(&wallet, &shop.url(), &[("LNBITS_ADMIN_KEY", lnbits.invoice_key(1))]);
    assert_eq!(out.status.code(), Some(10), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_paid_or_served(&shop, &out, lnbits.dev(1), 100_000);
}

#[test]
fn farebox_pay_through_core_lightning_settles_the_servers_invoice_and_gets_the_body() {
    let shop = Shop::start();
    let cln = shop.runtime.block_on(LoopbackCln::start(&shop.network, 100_000));
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "cln.rune", RUNE.as_bytes());
    std::fs::write(dir.path().join("ca.pem"), cln.tls().ca_pem.as_deref().unwrap()).unwrap();
    let table = format!(
        "kind = \"cln\"\nurl = \"{}\"\nrune_file = \"cln.rune\"\ntls_cert_file = \"ca.pem\"",
        cln.url()
    );
    let wallet = wallet_file(dir.path(), &table, "1 sat");

    let out = pay(&wallet, &shop.url(), &[]);
    assert_paid_and_served(&shop, &out, cln.dev());
    assert_eq!(cln.dev().balance_msat(), 100_000 - PRICE_MSAT);
    assert_eq!(cln.faults().requests_exact("/v1/pay"), 1);
}
