//! `farebox pay` with a rail from outside the core crates: the prepaid example rail's wallet,
//! configured in the wallet file's `[rails.prepaid]` table, pays a server that sells on that
//! rail only, until its code runs out; the ledger says what it paid.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use axum::Router;
use ed25519_dalek::SigningKey;
use farebox_core::{Asset, Money, Price};
use farebox_rail_prepaid::{CreditCode, PrepaidRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use support::write_private;

const JOKE: &str = "a joke paid with a credit code";

/// Serves `/joke` for 21 sat on the prepaid rail of `seller`, on a thread of its own: the URL.
fn serve(seller: &SigningKey) -> String {
    let rail = PrepaidRail::new(
        Asset::Bitcoin,
        seller.verifying_key(),
        Arc::new(farebox_store::MemoryStore::new()),
    );
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/joke", Price::one(Money::sats(21))).unwrap())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/joke", axum::routing::get(|| async { JOKE }))
        .layer(PaywallLayer::new(paywall));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{address}/joke")
}

fn pay(wallet: &Path, url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_farebox"))
        .env("FAREBOX_WALLET", wallet)
        .env_remove("FAREBOX_DEV_WALLET")
        .args(["pay", url, "--json"])
        .output()
        .unwrap()
}

#[test]
fn farebox_pay_spends_a_credit_code_through_the_rails_own_wallet() {
    let seller = SigningKey::from_bytes(&[0x42; 32]);
    let url = serve(&seller);
    let dir = tempfile::tempdir().unwrap();
    let code =
        CreditCode { id: [1; 16], value: 50_000, expires: u64::MAX }.sign(&seller, &Asset::Bitcoin);
    write_private(&dir.path().join("codes.txt"), &format!("{code}\n"));
    let wallet = dir.path().join("wallet.toml");
    write_private(
        &wallet,
        &format!(
            "[budget.sat]\nper_request = \"30 sat\"\ntotal = \"1000 sat\"\n\n\
             [rails.prepaid]\nseller = \"{}\"\nhosts = [\"127.0.0.1\"]\ncurrency = \"sat\"\n\
             codes_file = \"codes.txt\"\n",
            hex::encode(seller.verifying_key().as_bytes())
        ),
    );
    // 50 sat pays two 21 sat requests. Each `farebox pay` is a new process whose wallet counts
    // from the code's full value, so the third presents the code again: the server, which
    // keeps the code's balance, refuses it (8 sat left) and serves nothing.
    for _ in 0..2 {
        let out = pay(&wallet, &url);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), JOKE);
    }
    let out = pay(&wallet, &url);
    assert!(!out.status.success(), "a third request was paid from 8 sat");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(JOKE));
    let ledger = Command::new(env!("CARGO_BIN_EXE_farebox"))
        .env("FAREBOX_WALLET", &wallet)
        .args(["ledger", "--json"])
        .output()
        .unwrap();
    assert!(ledger.status.success(), "{}", String::from_utf8_lossy(&ledger.stderr));
    let entries: serde_json::Value = serde_json::from_slice(&ledger.stdout).unwrap();
    // The refused attempt is counted too: the server held the code and could still debit it,
    // so the budget counts it at its most rather than take the server's word.
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(
        entries.iter().all(|e| e["rail"] == "prepaid" && e["amount"] == "21000"),
        "21 sat (in msat) each, on the prepaid rail: {entries:?}"
    );
}

#[test]
fn a_rails_table_no_plugin_knows_is_refused_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let wallet = dir.path().join("wallet.toml");
    write_private(&wallet, "[rails.stamps]\nsheet = \"x\"\n");
    let out = pay(&wallet, "http://127.0.0.1:9/joke");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rails.stamps"));
}
