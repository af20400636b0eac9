//! The rail contract kit against the prepaid rail, its balances in a store the kit can cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use async_trait::async_trait;
use ed25519_dalek::SigningKey;
use farebox_core::store::{SessionRecord, SessionStatus, StoreError, Versioned};
use farebox_core::{Money, Price, Rail, SessionStore};
use farebox_rail_prepaid::{CreditCode, PrepaidRail, SCHEME};
use farebox_server::testing::{Exchange, RailHarness, assert_rail_contract, proof};
use farebox_store::MemoryStore;
use http::{HeaderName, HeaderValue};

/// A store that answers, or is unreachable.
struct Switched {
    inner: MemoryStore,
    up: AtomicBool,
}

impl Switched {
    fn check(&self) -> Result<(), StoreError> {
        match self.up.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(StoreError::Unavailable("the store is cut off".into())),
        }
    }
}

#[async_trait]
impl SessionStore for Switched {
    async fn create_session(
        &self,
        namespace: &str,
        id: &str,
        record: &SessionRecord,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.create_session(namespace, id, record).await
    }

    async fn load_session(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<Versioned<SessionRecord>>, StoreError> {
        self.check()?;
        self.inner.load_session(namespace, id).await
    }

    async fn replace_session(
        &self,
        namespace: &str,
        id: &str,
        version: u64,
        record: &SessionRecord,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.replace_session(namespace, id, version, record).await
    }

    async fn idle_sessions(
        &self,
        namespace: &str,
        status: SessionStatus,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(String, Versioned<SessionRecord>)>, StoreError> {
        self.check()?;
        self.inner.idle_sessions(namespace, status, before, limit).await
    }
}

struct Prepaid {
    rail: Arc<PrepaidRail>,
    seller: SigningKey,
    store: Arc<Switched>,
    sold: AtomicU8,
}

#[async_trait]
impl RailHarness for Prepaid {
    fn rail(&self) -> Arc<dyn Rail> {
        self.rail.clone()
    }

    fn price(&self) -> Price {
        Price::one(Money::sats(21))
    }

    /// Buys a code worth exactly the price from the seller: spent by one request.
    async fn pay(
        &self,
        _url: &str,
        required: &Exchange,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let line = required.challenge_lines().next().ok_or("no challenge")?;
        if !line.starts_with(SCHEME) {
            return Err(format!("not a Prepaid challenge: {line}"));
        }
        let mut id = [0u8; 16];
        id[0] = self.sold.fetch_add(1, Ordering::SeqCst);
        let code = CreditCode { id, value: 21_000, expires: u64::MAX };
        let code = code.sign(&self.seller, &farebox_core::Asset::Bitcoin);
        proof(http::header::AUTHORIZATION, &format!("{SCHEME} {code}"))
    }

    async fn set_backend(&self, up: bool) {
        self.store.up.store(up, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn the_prepaid_rail_keeps_the_rail_contract() {
    let seller = SigningKey::from_bytes(&[0x42; 32]);
    let store = Arc::new(Switched { inner: MemoryStore::new(), up: AtomicBool::new(true) });
    let rail = Arc::new(PrepaidRail::new(
        farebox_core::Asset::Bitcoin,
        seller.verifying_key(),
        store.clone(),
    ));
    assert_rail_contract(Arc::new(Prepaid { rail, seller, store, sold: AtomicU8::new(0) })).await;
}
