//! `[lightning] backend` other than the dev node: a gateway whose invoices come from a wallet
//! over Nostr Wallet Connect (a real relay in process, the dev node's NIP-47 wallet service)
//! serves L402 routes paid by farebox-client; a gateway whose node is down answers 503 with
//! Retry-After and serves nothing; a backend table that is missing is a config error naming it.

mod common;

use std::sync::Arc;

use common::{Upstream, serve_router, start_with, upstream_router};
use farebox_l402::client::L402Wallet;
use farebox_lightning::nwc::{ConnectionSettings, ServiceOptions, WalletService, relay};
use farebox_lightning::{DevNetwork, DevNode};

const ROUTES: &str = r#"
[[routes]]
methods = ["GET"]
path = "/joke"
price = "10 sat"
"#;

/// A private file in `dir` holding `text`.
fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(upstream: std::net::SocketAddr, lightning: &str, root_key: &std::path::Path) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
shutdown_grace_secs = 5

{lightning}

[rails.l402]
service = "test"
root_key = {{ key_file = "{}" }}

[upstreams.test]
url = "http://{upstream}"
{ROUTES}
"#,
        root_key.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_on_an_nwc_wallet_serves_l402_routes_paid_by_the_client() {
    let secrets = tempfile::tempdir().unwrap();
    let root_key = secret_file(secrets.path(), "root.key", &"ab".repeat(32));
    // The shop's wallet: a dev node behind a NIP-47 wallet service, through a real relay.
    let relay = relay::LoopbackRelay::start(relay::relay_builder(), None).await.unwrap();
    let network = DevNetwork::new();
    let shop = Arc::new(DevNode::random(&network, 0));
    let service =
        WalletService::start(shop.clone(), vec![relay.url().clone()], ServiceOptions::default())
            .await
            .unwrap();
    let uri = service.create_connection(ConnectionSettings::unrestricted("gateway")).await.unwrap();
    let uri_file = secret_file(secrets.path(), "nwc.uri", &uri.expose_secret());

    let upstream = Upstream::default();
    let upstream_addr = serve_router(upstream_router(upstream.clone())).await;
    let lightning = format!(
        "[lightning]\nbackend = \"nwc\"\n[lightning.nwc]\nuri = {{ key_file = \"{}\" }}",
        uri_file.display()
    );
    let g =
        start_with(upstream, upstream_addr, &config(upstream_addr, &lightning, &root_key)).await;
    assert!(g.gateway.dev_wallet().await.is_none(), "no dev network with a real backend");

    let payer = Arc::new(DevNode::random(&network, 100_000_000));
    let client = common::paying(L402Wallet::new(payer.clone(), 1_000));
    let answer = client.get(g.url("/joke")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(shop.balance_msat(), 10_000, "the NWC wallet was paid");
    assert_eq!(g.upstream.count(), 1, "served once");

    // Without paying: a 402 carrying an invoice of the NWC wallet.
    let raw = reqwest::get(g.url("/joke")).await.unwrap();
    assert_eq!(raw.status(), 402);
    service.shutdown().await;
}

#[tokio::test]
async fn a_gateway_whose_lightning_node_is_down_answers_503_with_retry_after() {
    let secrets = tempfile::tempdir().unwrap();
    let root_key = secret_file(secrets.path(), "root.key", &"ab".repeat(32));
    let key = secret_file(secrets.path(), "lnbits.key", "0a1c4b1f8e0c4d2a9b3e7f6a5d4c3b2a1");
    // A port where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let upstream = Upstream::default();
    let upstream_addr = serve_router(upstream_router(upstream.clone())).await;
    let lightning = format!(
        "[lightning]\nbackend = \"lnbits\"\n[lightning.lnbits]\nurl = \"http://{dead}\"\nkey = {{ key_file = \"{}\" }}",
        key.display()
    );
    let g =
        start_with(upstream, upstream_addr, &config(upstream_addr, &lightning, &root_key)).await;
    let answer = reqwest::get(g.url("/joke")).await.unwrap();
    assert_eq!(answer.status(), 503);
    assert!(answer.headers().contains_key("retry-after"));
    assert_eq!(g.upstream.count(), 0, "nothing served");
}

#[tokio::test]
async fn a_backend_without_its_table_or_secret_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let root_key = secret_file(dir.path(), "root.key", &"ab".repeat(32));
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let err = common::write_config(
        dir.path(),
        &config(addr, "[lightning]\nbackend = \"nwc\"", &root_key),
    )
    .unwrap_err();
    assert!(err.issues.iter().any(|i| i.key == "lightning.nwc"), "{err}");
    let err = common::write_config(
        dir.path(),
        &config(
            addr,
            "[lightning]\nbackend = \"lnbits\"\n[lightning.lnbits]\nurl = \"http://127.0.0.1:9\"\nkey = { key_env = \"FAREBOX_TEST_UNSET_LNBITS_KEY\" }",
            &root_key,
        ),
    )
    .unwrap_err();
    assert!(err.issues.iter().any(|i| i.key == "lightning.lnbits.key"), "{err}");
}
