//! `L402Verifier::verify_token` (sync) and `Rail::verify` (async) on a valid token with three
//! caveats (`services`, `farebox_amount_msat`, `<service>_valid_until`), and on a token as the
//! rail mints it (five caveats).
//!
//! Run: `cargo bench -p farebox-l402 --bench verify -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use farebox_core::time::unix_now;
use farebox_core::{Money, PresentedCredential, Price, Rail, Resource};
use farebox_l402::identifier::Identifier;
use farebox_l402::macaroon::OwnedMacaroon;
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail, RootKeys, caveat, format_credential};
use farebox_lightning::{
    CreatedInvoice, InvoiceRequest, InvoiceState, LightningBackend, LightningError, PaymentHash,
    PaymentOutcome,
};
use sha2::{Digest, Sha256};

struct NoBackend;

#[async_trait]
impl LightningBackend for NoBackend {
    async fn create_invoice(&self, _: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        Err(LightningError::Unsupported("bench"))
    }
    async fn invoice_state(&self, _: &PaymentHash) -> Result<InvoiceState, LightningError> {
        Ok(InvoiceState::Unknown)
    }
    async fn pay(&self, _: &str, _: u64) -> Result<PaymentOutcome, LightningError> {
        Err(LightningError::Unsupported("bench"))
    }
}

fn bench(c: &mut Criterion) {
    let master = [0x5a; 32];
    let keys = Arc::new(DerivedRootKeys::new(&master).unwrap());
    let rail =
        Arc::new(L402Rail::new(L402Config::new("svc", keys.clone()), Arc::new(NoBackend)).unwrap());
    let resource = Resource {
        method: http::Method::GET,
        path: "/v1/weather/x".into(),
        route: Arc::from("/v1/weather/*"),
        price: Price::one(Money::sats(10)),
        description: None,
        accept_payment: None,
    };
    let preimage = [0x20u8; 32];
    let hash: [u8; 32] = Sha256::digest(preimage).into();
    let now = unix_now().unwrap();

    let id = Identifier::new(hash, [0x40; 32]);
    let mut m = OwnedMacaroon::new(&keys.root_key(&id).unwrap(), &id.encode(), Some(b"lsat"));
    m.add_first_party_caveat(caveat::services("svc", 0).as_bytes());
    m.add_first_party_caveat(caveat::amount_msat(10_000).as_bytes());
    m.add_first_party_caveat(caveat::valid_until("svc", now + 3600).as_bytes());
    let three = format_credential(&m.to_base64(), &preimage);
    let minted = format_credential(
        &rail.verifier().mint_token(hash, 10_000, &resource, now).unwrap().to_base64(),
        &preimage,
    );
    rail.verifier().verify_token(&three, &resource, now).unwrap();
    rail.verifier().verify_token(&minted, &resource, now).unwrap();

    c.bench_function("verify_token/3_caveats", |b| {
        b.iter(|| {
            rail.verifier().verify_token(black_box(&three), black_box(&resource), now).unwrap()
        })
    });
    c.bench_function("verify_token/minted_5_caveats", |b| {
        b.iter(|| {
            rail.verifier().verify_token(black_box(&minted), black_box(&resource), now).unwrap()
        })
    });

    let presented = PresentedCredential {
        header: http::header::AUTHORIZATION,
        auth: None,
        value: three.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    c.bench_function("rail_verify/3_caveats", |b| {
        b.iter(|| {
            rt.block_on(rail.clone().verify(black_box(&resource), black_box(&presented))).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
