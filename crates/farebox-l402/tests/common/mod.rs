//! Shared test fixtures: the golden vectors, a fixed Lightning backend, resources.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use farebox_core::{Money, Price, Resource};
use farebox_lightning::{
    CreatedInvoice, InvoiceParams, InvoiceRequest, InvoiceState, LightningBackend, LightningError,
    PaymentHash, PaymentOutcome, SecretKey, sign_invoice,
};
use serde_json::Value;

pub const VECTORS: &str = include_str!("../../../../specs/vectors/l402/macaroon.json");

pub fn vectors() -> Value {
    serde_json::from_str(VECTORS).expect("vector file is JSON")
}

pub fn hex_field(v: &Value, name: &str) -> Vec<u8> {
    hex::decode(v[name].as_str().unwrap_or_else(|| panic!("{name} missing"))).expect("hex")
}

pub fn arr32(b: &[u8]) -> [u8; 32] {
    b.try_into().expect("32 bytes")
}

/// The known preimage of the reference BOLT11 invoice.
pub fn preimage() -> [u8; 32] {
    arr32(&hex_field(&vectors(), "preimage"))
}

/// A backend whose invoices all have the reference payment hash (72dbb733…, whose preimage the
/// vectors know), or that fails when told to.
pub struct FixedBackend {
    pub down: AtomicBool,
}

impl FixedBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(FixedBackend { down: AtomicBool::new(false) })
    }
}

#[async_trait]
impl LightningBackend for FixedBackend {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(LightningError::Unavailable("node is down".into()));
        }
        assert!(request.amount_msat > 0);
        let v = vectors();
        let payment_hash =
            arr32(&hex::decode(v["bolt11"]["payment_hash"].as_str().unwrap()).unwrap());
        // A fresh invoice for what was asked, under the reference payment hash.
        let mut params = InvoiceParams::new(payment_hash, Some(request.amount_msat), request.memo);
        params.expiry = request.expiry;
        let key = SecretKey::from_slice(&[0x11; 32]).unwrap();
        Ok(CreatedInvoice { bolt11: sign_invoice(&params, &key)?, payment_hash })
    }

    async fn invoice_state(
        &self,
        _payment_hash: &PaymentHash,
    ) -> Result<InvoiceState, LightningError> {
        Ok(InvoiceState::Unknown)
    }

    async fn pay(
        &self,
        _bolt11: &str,
        _max_fee_msat: u64,
    ) -> Result<PaymentOutcome, LightningError> {
        Err(LightningError::Unsupported("receive only"))
    }
}

pub fn resource(method: &str, route: &str, price: Money) -> Resource {
    Resource {
        method: method.parse().unwrap(),
        path: route.trim_end_matches('*').to_string(),
        route: Arc::from(route),
        price: Price::one(price),
        description: None,
        accept_payment: None,
    }
}
