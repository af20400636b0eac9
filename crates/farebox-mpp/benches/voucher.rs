//! Cost of accepting an EVM session voucher on the request path, without the store write:
//! decode the `Authorization: Payment` credential (base64url JSON), check the challenge id
//! (HMAC of the echoed slots, constant-time), read the voucher payload, recover its EIP-712
//! signer (libsecp256k1) and compare it with the channel's, and apply it to the channel's record
//! (monotonic, within the deposit, debit the price).
//!
//! `cargo bench -p farebox-mpp --bench voucher -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use farebox_core::store::Update;
use farebox_core::{SessionRecord, SessionStatus};
use farebox_evm::{Address, B256, PrivateKeySigner};
use farebox_mpp::evm::session::{SessionPayload, SignedVoucher};
use farebox_mpp::evm::voucher::VoucherDomain;
use farebox_mpp::rail::evm_session::{apply_voucher, check_voucher_signature};
use farebox_mpp::{ChallengeKey, ChallengeParams, Credential, time};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let key = ChallengeKey::new(b"a-benchmark-secret-of-at-least-32-bytes!").unwrap();
    let payer: PrivateKeySigner =
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d".parse().unwrap();
    let escrow = Address::repeat_byte(0xe5);
    let domain = VoucherDomain::new(84_532, escrow);
    let channel = B256::repeat_byte(0xc1);
    let (price, amount) = (1_000u128, 42_000u128);
    let challenge = key
        .issue(ChallengeParams {
            realm: "api.example.com".into(),
            method: "evm".into(),
            intent: "session".into(),
            request: json!({
                "amount": "1000", "unitType": "request", "suggestedDeposit": "100000",
                "currency": format!("{:#x}", Address::repeat_byte(0x11)),
                "recipient": format!("{:#x}", Address::repeat_byte(0x22)),
                "methodDetails": {"chainId": 84532, "escrowContract": format!("{escrow:#x}"),
                                  "minVoucherDelta": "0", "credentialTypes": ["hash"], "decimals": 6}
            }),
            expires: Some(time::format(time::unix_now().unwrap() + 300)),
            opaque: Some([("route".to_string(), "/v1/*".to_string())].into()),
            ..Default::default()
        })
        .unwrap();
    let signed = SignedVoucher::sign(&payer, &domain, channel, amount);
    let header =
        Credential::new(&challenge, SessionPayload::Voucher(signed).to_json()).to_authorization();
    let record = SessionRecord {
        status: SessionStatus::Open,
        deposit: 100_000,
        accepted: amount - price,
        spent: amount - price,
        settled: 0,
        data: json!({"payer": format!("{:#x}", payer.address()), "signer": format!("{:#x}", payer.address()),
                     "checkedAt": time::unix_now().unwrap()}).to_string(),
        updated_at: time::unix_now().unwrap(),
    };
    let signer = payer.address();

    c.bench_function("evm_session/voucher/verify", |b| {
        b.iter(|| {
            let cred = Credential::from_authorization(black_box(&header)).unwrap();
            assert!(key.verify_id(&cred.challenge.slots(), &cred.challenge.id));
            let SessionPayload::Voucher(v) = SessionPayload::from_json(&cred.payload).unwrap()
            else {
                unreachable!("a voucher payload")
            };
            check_voucher_signature(&domain, signer, &v).unwrap();
            match apply_voucher(black_box(&record), &v, price, 0).unwrap() {
                Update::Write(next, Ok(_)) => next,
                _ => unreachable!("the voucher pays the request"),
            }
        })
    });
    c.bench_function("evm_session/voucher/state_only", |b| {
        let cred = Credential::from_authorization(&header).unwrap();
        let SessionPayload::Voucher(v) = SessionPayload::from_json(&cred.payload).unwrap() else {
            unreachable!("a voucher payload")
        };
        b.iter(|| apply_voucher(black_box(&record), black_box(&v), price, 0).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
