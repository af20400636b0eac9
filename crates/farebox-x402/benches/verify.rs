//! The off-chain verification of an `exact` EVM payment as a server does it on every paid
//! request, i.e. `LocalFacilitator`'s (private) `check_offline` path, rebuilt from the same
//! public pieces in the same order:
//!
//! 1. decode the `PAYMENT-SIGNATURE` header (base64 + JSON) and pair it with the route's
//!    requirement (what `X402Rail::request_for` does);
//! 2. `exact_evm::check_request` (scheme, domain, network, recipient, time window, exact value,
//!    v2 deep equality of `accepted`);
//! 3. the EIP-712 digest with the domain separator looked up in a `RwLock<HashMap>` cache keyed
//!    as the facilitator keys it;
//! 4. ecrecover (libsecp256k1) and the comparison with `authorization.from`.
//!
//! `cargo bench -p farebox-x402 --bench verify -- --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use farebox_evm::anvil::DEV_KEYS;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, Bytes, PrivateKeySigner, U256};
use farebox_x402::exact_evm::{self, Authorization, ExactEvmPayload};
use farebox_x402::facilitator_api::{AnyPaymentPayload, VersionedPayment};
use farebox_x402::{Amount, Payload, Reason, codec, v2};
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

type DomainCache = RwLock<HashMap<(String, String, u64, Address), B256>>;

/// The facilitator's separator cache: one lookup per payment.
fn separator(
    cache: &DomainCache,
    name: &str,
    version: &str,
    chain_id: u64,
    asset: Address,
) -> B256 {
    let key = (name.to_string(), version.to_string(), chain_id, asset);
    if let Some(s) = cache.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return *s;
    }
    let separator = TokenDomain::new(name, version, chain_id, asset).separator();
    cache.write().unwrap_or_else(|e| e.into_inner()).insert(key, separator);
    separator
}

fn decode(header: &str, requirement: &v2::PaymentRequirements) -> VersionedPayment {
    match AnyPaymentPayload::from_header(header) {
        Ok(AnyPaymentPayload::V2(payment_payload)) => VersionedPayment::V2 {
            payment_payload: *payment_payload,
            payment_requirements: requirement.clone(),
        },
        _ => panic!("not a v2 payment"),
    }
}

/// Steps 2–4 on a decoded request: `check_offline`.
fn check_offline(cache: &DomainCache, request: &VersionedPayment) -> Result<Address, Reason> {
    let checked = exact_evm::check_request(request, now_unix()).map_err(|r| r.reason)?;
    let req = &checked.requirement;
    let auth = &checked.payload.authorization;
    let (Some(name), Some(version)) = (&req.eip712_name, &req.eip712_version) else {
        return Err(Reason::MissingEip712Domain);
    };
    let message = TransferWithAuthorization {
        from: auth.from,
        to: auth.to,
        value: auth.value,
        validAfter: U256::from(auth.valid_after),
        validBefore: U256::from(auth.valid_before),
        nonce: auth.nonce,
    };
    let digest =
        eip3009::signing_hash(&separator(cache, name, version, req.chain_id, req.asset), &message);
    match eip3009::recover(&digest, &checked.payload.signature) {
        Ok(signer) if signer == auth.from => Ok(signer),
        _ => Err(Reason::InvalidSignature),
    }
}

fn bench(c: &mut Criterion) {
    let requirement = requirement();
    let header = header(&requirement);
    let cache = DomainCache::default();
    let request = decode(&header, &requirement);
    assert!(check_offline(&cache, &request).is_ok(), "the benchmarked payment is valid");
    let checked = exact_evm::check_request(&request, now_unix()).expect("valid");
    let auth = &checked.payload.authorization;
    let message = TransferWithAuthorization {
        from: auth.from,
        to: auth.to,
        value: auth.value,
        validAfter: U256::from(auth.valid_after),
        validBefore: U256::from(auth.valid_before),
        nonce: auth.nonce,
    };
    let asset = checked.requirement.asset;
    let digest = eip3009::signing_hash(&separator(&cache, "USDC", "2", CHAIN_ID, asset), &message);

    let mut group = c.benchmark_group("x402_verify");
    group.bench_function("decode PAYMENT-SIGNATURE", |b| {
        b.iter(|| decode(black_box(&header), &requirement))
    });
    group.bench_function("check_request", |b| {
        b.iter(|| exact_evm::check_request(black_box(&request), now_unix()))
    });
    group.bench_function("digest (cached separator)", |b| {
        b.iter(|| {
            let sep = separator(&cache, black_box("USDC"), "2", CHAIN_ID, asset);
            eip3009::signing_hash(&sep, black_box(&message))
        })
    });
    group.bench_function("ecrecover", |b| {
        b.iter(|| eip3009::recover(black_box(&digest), black_box(&checked.payload.signature)))
    });
    group.bench_function("full: decode + check_offline", |b| {
        b.iter(|| {
            let request = decode(black_box(&header), &requirement);
            check_offline(&cache, &request)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
