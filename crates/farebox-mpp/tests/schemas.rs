//! What the MPP rail emits validates against `specs/schemas/mpp` (and its problem bodies against
//! `problem-details`), so the schemas cannot drift from the code. One server offers all four
//! method/intent pairs for one route (Lightning on the dev network, EVM on a real anvil with
//! FareboxUSD and SessionEscrow); every challenge and its decoded `request`, every credential a
//! client builds with this crate (and its payload), every `Payment-Receipt` and every problem body
//! along a paid charge and a whole session per method is checked. The schema files themselves
//! and their examples are checked here too.

#[path = "../../../specs/schemas/harness.rs"]
mod harness;

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use farebox_core::auth::parse_challenges;
use farebox_core::{Money, Price};
use farebox_evm::anvil::Anvil;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, U256};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend};
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::evm::session::{
    OpenPayload, SessionPayload as EvmPayload, SignedVoucher, TopUpPayload,
};
use farebox_mpp::evm::voucher::{self, Voucher, VoucherDomain};
use farebox_mpp::lightning::session::{LightningSessionRequest, SessionPayload as LnPayload};
use farebox_mpp::{
    Challenge, Credential, EvmChargeConfig, EvmSessionConfig, LightningSessionConfig, MppConfig,
    MppRail, evm::charge as evm_charge, jcs, lightning::charge as lightning_charge, time,
};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

const REALM: &str = "api.example.com";
const PRICE_SAT: u64 = 10;
const PRICE: u128 = 1_000; // token base units (6 decimals)
const DEPOSIT: u128 = 5 * PRICE;

#[test]
fn mpp_schema_files_and_examples() {
    harness::check_files("mpp");
    harness::check_file("problem-details");
    harness::check_shared_defs();
}

struct World {
    app: Router,
    wallet: DevNode,
    anvil: Anvil,
    token: Address,
    escrow: Address,
    charge_domain: TokenDomain,
    voucher_domain: VoucherDomain,
}

async fn world() -> World {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 10_000_000);
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    anvil.mint(token, anvil.accounts()[1].address, U256::from(10_000_000u64)).await.unwrap();
    let escrow = rpc
        .deploy_session_escrow(&anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD)
        .await
        .unwrap();
    let (payee, gas) = (&anvil.accounts()[2], &anvil.accounts()[3]);
    let charge = EvmChargeConfig::builder(rpc.clone(), gas.signer.clone())
        .token(token)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .recipient(payee.address)
        .build()
        .unwrap();
    let session = EvmSessionConfig::builder(rpc.clone(), payee.signer.clone())
        .escrow(escrow)
        .token(token)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .build()
        .unwrap();
    let price = Price::any_of([Money::sats(PRICE_SAT), Money::new(charge.asset(), PRICE)]).unwrap();
    let rail =
        MppRail::builder(MppConfig::new(REALM, common::SECRET), Arc::new(MemoryStore::new()))
            .lightning(Arc::new(server))
            .lightning_session(LightningSessionConfig::default(), Arc::new(MemoryStore::new()))
            .evm_charge(charge)
            .evm_session(session, Arc::new(MemoryStore::new()))
            .build()
            .unwrap();
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/data", price).unwrap().describe("market data"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .layer(PaywallLayer::new(paywall));
    let charge_domain = TokenDomain::new("USDC", "2", anvil.chain_id(), token);
    let voucher_domain = rpc.voucher_domain(escrow);
    World { app, wallet, anvil, token, escrow, charge_domain, voucher_domain }
}

/// The JSON behind a base64url (no padding) header value or credential token, as sent.
fn b64url_json(text: &str) -> Value {
    serde_json::from_slice(&jcs::b64url_decode(text).unwrap()).unwrap()
}

/// Every `Payment` challenge of a response, each checked: its auth-params, its decoded request
/// (against the request schema of its method and intent), and the problem body beside it.
fn offers(headers: &HeaderMap, body: &Value) -> Vec<Challenge> {
    harness::assert_valid("problem-details", body);
    let lines: Vec<&str> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    let parsed = parse_challenges(lines).unwrap();
    parsed
        .iter()
        .filter(|a| a.scheme.eq_ignore_ascii_case("Payment"))
        .map(|a| {
            let params: Map<String, Value> = a
                .params
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone())))
                .collect();
            harness::assert_valid("mpp/challenge", &Value::Object(params));
            let c = Challenge::from_auth(a).unwrap();
            let request = b64url_json(&c.request_b64);
            harness::assert_valid(&format!("mpp/request/{}-{}", c.method, c.intent), &request);
            c
        })
        .collect()
}

/// A 402's challenge for `method`/`intent`.
async fn offer(w: &World, method: &str, intent: &str) -> Challenge {
    let (status, headers, body) = common::get(&w.app, "/data", &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let all = offers(&headers, &body);
    assert_eq!(all.len(), 4, "lightning and evm, charge and session");
    all.into_iter().find(|c| c.method == method && c.intent == intent).unwrap()
}

/// The `Authorization` value answering `c` with `payload`, after checking the decoded
/// credential and its payload.
fn credential(c: &Challenge, payload: Map<String, Value>) -> String {
    checked(Credential::new(c, payload))
}

/// `cred`'s `Authorization` value, after checking the decoded credential and its payload.
fn checked(cred: Credential) -> String {
    let value = cred.to_authorization();
    let token = farebox_mpp::credential::payment_token(&value).unwrap();
    let decoded = b64url_json(token);
    harness::assert_valid("mpp/credential", &decoded);
    let (method, intent) = (&cred.challenge.method, &cred.challenge.intent);
    harness::assert_valid(&format!("mpp/payload/{method}-{intent}"), &decoded["payload"]);
    value
}

/// Sends `auth`, expects a 2xx with a receipt, checks the receipt; the body.
async fn paid(w: &World, auth: &str) -> Value {
    let (status, headers, body) = common::get(&w.app, "/data", &[auth]).await;
    assert!(status.is_success(), "{status}: {body}");
    harness::assert_valid(
        "mpp/receipt",
        &b64url_json(headers["payment-receipt"].to_str().unwrap()),
    );
    body
}

/// Sends `auth`, expects a refusal with fresh challenges; checks them and the problem body.
async fn refused(w: &World, auth: &str) {
    let (status, headers, body) = common::get(&w.app, "/data", &[auth]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(offers(&headers, &body).len(), 4);
}

#[tokio::test]
async fn every_method_and_intent_emits_schema_valid_objects() {
    let w = world().await;

    // lightning / charge, then its replay.
    let c = offer(&w, "lightning", "charge").await;
    let invoice = c.request["methodDetails"]["invoice"].as_str().unwrap().to_string();
    let preimage = w.wallet.pay(&invoice, 1_000).await.unwrap().preimage;
    let auth = credential(&c, lightning_charge::payload(&preimage));
    paid(&w, &auth).await;
    refused(&w, &auth).await;

    // lightning / session: open, bearer, topUp, close.
    let c = offer(&w, "lightning", "session").await;
    let r = LightningSessionRequest::from_json(&c.request).unwrap();
    let deposit = w.wallet.pay(r.deposit_invoice.as_deref().unwrap(), 1_000).await.unwrap();
    let refund =
        w.wallet.create_amountless_invoice("refund".into(), Duration::from_secs(31 * 86_400));
    let return_invoice = refund.await.unwrap().bolt11;
    let open = LnPayload::Open { preimage: deposit.preimage, return_invoice };
    paid(&w, &credential(&c, open.to_json())).await;
    let session_id = r.payment_hash;
    let bearer = LnPayload::Bearer { session_id, preimage: deposit.preimage };
    paid(&w, &credential(&c, bearer.to_json())).await;
    let wrong = LnPayload::Bearer { session_id, preimage: [7; 32] };
    refused(&w, &credential(&c, wrong.to_json())).await;
    let fresh = offer(&w, "lightning", "session").await;
    let top_up_invoice =
        LightningSessionRequest::from_json(&fresh.request).unwrap().deposit_invoice;
    let topped = w.wallet.pay(top_up_invoice.as_deref().unwrap(), 1_000).await.unwrap();
    let top_up = LnPayload::TopUp { session_id, top_up_preimage: topped.preimage };
    paid(&w, &credential(&fresh, top_up.to_json())).await;
    let close = LnPayload::Close { session_id, preimage: deposit.preimage };
    paid(&w, &credential(&c, close.to_json())).await;

    // evm / charge: an EIP-3009 authorization bound to the challenge.
    let payer = &w.anvil.accounts()[1];
    let c = offer(&w, "evm", "charge").await;
    let auth = TransferWithAuthorization {
        from: payer.address,
        to: c.request["recipient"].as_str().unwrap().parse().unwrap(),
        value: U256::from(PRICE),
        validAfter: U256::ZERO,
        validBefore: U256::from(time::parse(c.expires.as_deref().unwrap()).unwrap()),
        nonce: evm_charge::challenge_nonce(&c.id, &c.realm),
    };
    let signature = eip3009::sign(&payer.signer, &w.charge_domain, &auth);
    let mut cred = Credential::new(&c, evm_charge::payload(&auth, &signature));
    cred.source = Some(evm_charge::source(w.anvil.chain_id(), payer.address));
    paid(&w, &checked(cred)).await;

    // evm / session: open on chain, vouchers, topUp, close.
    let c = offer(&w, "evm", "session").await;
    let rpc = w.anvil.rpc().await.unwrap();
    let payee: Address = c.request["recipient"].as_str().unwrap().parse().unwrap();
    let salt = B256::repeat_byte(0x5a);
    rpc.erc20_approve(&payer.signer, w.token, w.escrow, 2 * DEPOSIT).await.unwrap();
    let (open_tx, channel) = rpc
        .escrow_open(&payer.signer, w.escrow, payee, w.token, DEPOSIT, salt, None)
        .await
        .unwrap();
    let voucher = |amount: u128| SignedVoucher {
        channel_id: channel,
        cumulative_amount: amount,
        signature: voucher::sign(
            &payer.signer,
            &w.voucher_domain,
            &Voucher { channelId: channel, cumulativeAmount: amount },
        )
        .to_vec(),
    };
    let open = EvmPayload::Open(OpenPayload {
        hash: open_tx,
        salt,
        authorized_signer: None,
        voucher: voucher(PRICE),
    });
    paid(&w, &credential(&c, open.to_json())).await;
    paid(&w, &credential(&c, EvmPayload::Voucher(voucher(2 * PRICE)).to_json())).await;
    refused(&w, &credential(&c, EvmPayload::Voucher(voucher(PRICE)).to_json())).await;
    let top_up_tx = rpc.escrow_top_up(&payer.signer, w.escrow, channel, DEPOSIT).await.unwrap();
    let top_up = EvmPayload::TopUp(TopUpPayload {
        channel_id: channel,
        hash: top_up_tx,
        additional_deposit: DEPOSIT,
    });
    paid(&w, &credential(&c, top_up.to_json())).await;
    let closed = paid(&w, &credential(&c, EvmPayload::Close(voucher(2 * PRICE)).to_json())).await;
    assert_eq!(closed["status"], "closed", "{closed}");
}
