//! Revoking L402 tokens, by token id (the 32-byte `token_id` of the macaroon identifier, 64 hex
//! digits), on every instance within a second.
//!
//! The admin API calls a [`Revoker`]. The one the gateway uses for now, [`StoreRevoker`], writes
//! a row into `farebox_gateway_revocations` in the shared database. Every instance keeps the
//! revoked ids in memory ([`RevocationList`]) and reads the rows added since its last look every
//! [`REFRESH`], so that checking a request costs a hash lookup, not a database round trip. The
//! gateway checks it before the paywall on every request that carries an L402 credential: a
//! revoked token is answered like any refused credential (402 with fresh challenges).
//!
//! Fail closed: when the list could not be refreshed for [`STALE_AFTER`], the instance cannot
//! know what was revoked meanwhile, and L402 credentials are refused with 503 until it can.
//!
//! Once the L402 rail keeps its own revocation list (checked inside its verify), a `Revoker`
//! that calls the rail replaces this one and the gateway's own check can go.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use farebox_l402::Identifier;
use farebox_l402::credential::parse_credential;
use farebox_l402::macaroon::{Macaroon, decode_base64};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::db::GatewayDb;

/// How often an instance reads new revocations.
pub const REFRESH: Duration = Duration::from_millis(500);
/// How old the list may get before L402 credentials are refused (fail closed).
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// How far back each refresh looks before the newest revocation it has seen: revocations are
/// stamped with the clock of the instance that wrote them, and clocks differ a little.
const CLOCK_SLACK_MS: i64 = 60_000;

/// Revokes L402 tokens. The admin API's `POST /api/l402/tokens/{id}/revoke` calls it.
#[async_trait]
pub trait Revoker: Send + Sync {
    /// Revokes `token_id` on every instance; revoking twice is not an error.
    async fn revoke(&self, token_id: &[u8; 32]) -> Result<(), String>;
}

/// Revocations as rows in the gateway's database, seen by every instance sharing it.
pub struct StoreRevoker {
    db: GatewayDb,
    list: Arc<RevocationList>,
}

impl StoreRevoker {
    pub fn new(db: GatewayDb, list: Arc<RevocationList>) -> Self {
        StoreRevoker { db, list }
    }
}

#[async_trait]
impl Revoker for StoreRevoker {
    async fn revoke(&self, token_id: &[u8; 32]) -> Result<(), String> {
        self.db.revoke(&hex::encode(token_id), crate::now_ms()).await?;
        // This instance need not wait for its next refresh.
        self.list.insert(*token_id);
        Ok(())
    }
}

/// The revoked token ids one instance knows of.
pub struct RevocationList {
    ids: RwLock<HashSet<[u8; 32]>>,
    /// The newest `revoked_ms` read so far.
    newest_ms: AtomicI64,
    /// When the last refresh succeeded (Unix milliseconds).
    fresh_ms: AtomicI64,
}

/// Whether a token may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Valid,
    Revoked,
    /// The list is too old to tell.
    Unknown,
}

impl RevocationList {
    /// Reads every revocation from `db`.
    pub async fn load(db: &GatewayDb) -> Result<Arc<RevocationList>, String> {
        let list = Arc::new(RevocationList {
            ids: RwLock::new(HashSet::new()),
            newest_ms: AtomicI64::new(i64::MIN + CLOCK_SLACK_MS),
            fresh_ms: AtomicI64::new(0),
        });
        list.refresh(db).await?;
        Ok(list)
    }

    fn insert(&self, id: [u8; 32]) {
        self.ids.write().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    /// Reads the revocations added since the last refresh.
    pub async fn refresh(&self, db: &GatewayDb) -> Result<(), String> {
        let since = self.newest_ms.load(Ordering::Acquire).saturating_sub(CLOCK_SLACK_MS);
        let rows = db.revoked_since(since).await?;
        let mut newest = self.newest_ms.load(Ordering::Acquire);
        {
            let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
            for (hex_id, at) in rows {
                let mut id = [0u8; 32];
                if hex::decode_to_slice(&hex_id, &mut id).is_ok() {
                    ids.insert(id);
                }
                newest = newest.max(at);
            }
        }
        self.newest_ms.store(newest, Ordering::Release);
        self.fresh_ms.store(crate::now_ms(), Ordering::Release);
        Ok(())
    }

    /// Whether `token_id` may be served, as far as this instance knows.
    pub fn status(&self, token_id: &[u8; 32]) -> Status {
        let age = crate::now_ms().saturating_sub(self.fresh_ms.load(Ordering::Acquire));
        if age > i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX) {
            return Status::Unknown;
        }
        if self.ids.read().unwrap_or_else(|p| p.into_inner()).contains(token_id) {
            Status::Revoked
        } else {
            Status::Valid
        }
    }

    /// Whether `token_id` is in the list (for listings).
    pub fn contains(&self, token_id: &[u8; 32]) -> bool {
        self.ids.read().unwrap_or_else(|p| p.into_inner()).contains(token_id)
    }
}

/// The L402 token a request presents: the macaroon of its `Authorization: L402` (or `LSAT`)
/// credential whose payment hash is the SHA-256 of the credential's preimage (the one the rail
/// would accept). `None` when there is no such credential or it does not parse; the rail then
/// refuses the request itself.
pub fn presented_token(headers: &HeaderMap) -> Option<Identifier> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let credential = parse_credential(value).ok()?;
    let hash: [u8; 32] = Sha256::digest(credential.preimage).into();
    credential.macaroon_list().find_map(|text| {
        let bytes = decode_base64(text).ok()?;
        let id = Identifier::decode(Macaroon::decode(&bytes).ok()?.identifier()).ok()?;
        (id.payment_hash == hash).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revocation_written_by_one_instance_is_seen_by_another_after_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sqlite");
        let a = GatewayDb::sqlite(&path).await.unwrap();
        let b = GatewayDb::sqlite(&path).await.unwrap();
        let list_a = RevocationList::load(&a).await.unwrap();
        let list_b = RevocationList::load(&b).await.unwrap();
        let revoker = StoreRevoker::new(a.clone(), list_a.clone());
        let token = [7u8; 32];
        assert_eq!(list_b.status(&token), Status::Valid);
        revoker.revoke(&token).await.unwrap();
        assert_eq!(list_a.status(&token), Status::Revoked, "at once where it was revoked");
        list_b.refresh(&b).await.unwrap();
        assert_eq!(list_b.status(&token), Status::Revoked);
        assert_eq!(list_b.status(&[8u8; 32]), Status::Valid);
        revoker.revoke(&token).await.unwrap();
    }

    #[tokio::test]
    async fn a_list_that_cannot_be_refreshed_answers_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let db = GatewayDb::sqlite(&dir.path().join("g.sqlite")).await.unwrap();
        let list = RevocationList::load(&db).await.unwrap();
        list.fresh_ms.store(crate::now_ms() - 6_000, Ordering::Release);
        assert_eq!(list.status(&[1u8; 32]), Status::Unknown);
    }
}
