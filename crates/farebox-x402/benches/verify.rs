//! The off-chain verification of an `exact` EVM payment as a server does it on every paid
//! request, through the real code:
//!
//! 1. `X402Rail::payment_request`: decode the `PAYMENT-SIGNATURE` header (base64 + JSON) and
//!    pair it with the route's requirement, rebuilt from the rail's configuration;
//! 2. `OfflineVerifier::check` (what `LocalFacilitator` runs before its one `eth_call`):
//!    `exact_evm::check_request` (scheme, domain, network, recipient, time window, exact value,
//!    v2 deep equality of `accepted`), the EIP-712 digest with the cached domain separator, and
//!    ecrecover (libsecp256k1) compared with `authorization.from`.
//!
//! The pieces are also measured alone.
//!
//! `cargo bench -p farebox-x402 --bench verify -- --warm-up-time 1 --measurement-time 3`

// The measured closures return the rail's own `Result<_, PaymentError>`, as `verify` does.
#![allow(clippy::result_large_err)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use farebox_core::{Asset, Money, PresentedCredential, Price, Resource};
use farebox_evm::anvil::DEV_KEYS;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, Bytes, PrivateKeySigner, U256};
use farebox_store::MemoryStore;
use farebox_x402::exact_evm::{self, Authorization, ExactEvmPayload};
use farebox_x402::facilitator::http_client::RemoteFacilitator;
use farebox_x402::facilitator::local::OfflineVerifier;
use farebox_x402::{Amount, Payload, X402Config, X402Rail, codec, v2};
use serde_json::Map;

const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const CHAIN_ID: u64 = 84_532;

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The route's requirement, as `X402Rail::requirement_v2` builds it.
fn requirement() -> v2::PaymentRequirements {
    let mut extra = Map::new();
    extra.insert("name".into(), "USDC".into());
    extra.insert("version".into(), "2".into());
    v2::PaymentRequirements {
        scheme: "exact".into(),
        network: format!("eip155:{CHAIN_ID}"),
        amount: Amount::from(10_000u64),
        asset: ASSET.into(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: 60,
        extra: Some(extra),
        other: Map::new(),
    }
}

/// A client's `PAYMENT-SIGNATURE` header for `requirement`, valid for the next hour.
fn header(requirement: &v2::PaymentRequirements) -> String {
    let signer: PrivateKeySigner = DEV_KEYS[1].parse().expect("a dev key");
    let asset: Address = ASSET.parse().expect("an address");
    let now = now_unix();
    let auth = TransferWithAuthorization {
        from: signer.address(),
        to: PAY_TO.parse().expect("an address"),
        value: U256::from(10_000u64),
        validAfter: U256::from(now - 600),
        validBefore: U256::from(now + 3600),
        nonce: B256::repeat_byte(0x42),
    };
    let domain = TokenDomain::new("USDC", "2", CHAIN_ID, asset);
    let signature = eip3009::sign(&signer, &domain, &auth);
    let payload = ExactEvmPayload {
        signature: Bytes::copy_from_slice(&signature),
        authorization: Authorization {
            from: auth.from,
            to: auth.to,
            value: auth.value,
            valid_after: now - 600,
            valid_before: now + 3600,
            nonce: auth.nonce,
        },
    };
    codec::encode_header(&v2::PaymentPayload {
        x402_version: farebox_x402::Version,
        resource: None,
        accepted: requirement.clone(),
        payload: Payload::from_serialize(&payload).expect("serializable"),
        extensions: None,
    })
}

/// The rail the route is priced on (its facilitator is never called here).
fn rail() -> X402Rail {
    let config = X402Config::builder()
        .network(format!("eip155:{CHAIN_ID}"))
        .asset(ASSET)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .pay_to(PAY_TO)
        .max_timeout_seconds(60)
        .public_url("https://api.example.com")
        .offer_v1(false)
        .build()
        .unwrap();
    let facilitator =
        RemoteFacilitator::new("http://127.0.0.1:9/".parse().expect("a URL")).expect("a client");
    X402Rail::new(config, Arc::new(facilitator), Arc::new(MemoryStore::new()))
}

fn resource(rail: &X402Rail) -> Resource {
    let asset = Asset::Token(rail.config().token());
    Resource {
        method: http::Method::GET,
        path: "/data".into(),
        route: "/data".into(),
        price: Price::one(Money::new(asset, 10_000)),
        description: None,
        accept_payment: None,
    }
}

fn credential(header: &str) -> PresentedCredential {
    PresentedCredential {
        header: http::HeaderName::from_static("payment-signature"),
        auth: None,
        value: header.to_string(),
    }
}

fn bench(c: &mut Criterion) {
    let rail = rail();
    let resource = resource(&rail);
    let requirement = rail.requirement_v2(&resource).expect("priced in the rail's asset");
    assert_eq!(requirement, self::requirement(), "the bench signs what the rail offers");
    let credential = credential(&header(&requirement));
    let verifier = OfflineVerifier::new();
    let request = rail.payment_request(&resource, &credential).expect("decodes");
    let (checked, message) = verifier.check(&request, now_unix()).expect("the payment is valid");
    let asset = checked.requirement.asset;
    let separator = TokenDomain::new("USDC", "2", CHAIN_ID, asset).separator();
    let digest = eip3009::signing_hash(&separator, &message);

    let mut group = c.benchmark_group("x402_verify");
    group.bench_function("decode PAYMENT-SIGNATURE (X402Rail::payment_request)", |b| {
        b.iter(|| rail.payment_request(&resource, black_box(&credential)))
    });
    group.bench_function("check_request", |b| {
        b.iter(|| exact_evm::check_request(black_box(&request), now_unix()))
    });
    group.bench_function("digest (precomputed separator)", |b| {
        b.iter(|| eip3009::signing_hash(black_box(&separator), black_box(&message)))
    });
    group.bench_function("ecrecover", |b| {
        b.iter(|| eip3009::recover(black_box(&digest), black_box(&checked.payload.signature)))
    });
    group.bench_function("OfflineVerifier::check", |b| {
        b.iter(|| verifier.check(black_box(&request), now_unix()))
    });
    group.bench_function("full: payment_request + OfflineVerifier::check", |b| {
        b.iter(|| {
            let request = rail.payment_request(&resource, black_box(&credential))?;
            verifier.check(&request, now_unix()).map_err(|r| {
                farebox_core::PaymentError::invalid(r.reason.as_str(), r.reason.message())
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
