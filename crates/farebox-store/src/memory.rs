//! [`MemoryStore`]: a mutex'd map, for tests and single-process development.
//!
//! Everything is lost when the process exits, so a proof spent before a restart can be spent
//! again after it: do not use it in production (use [`SqliteStore`](crate::SqliteStore) for one
//! instance, [`PostgresStore`](crate::PostgresStore) for several).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use farebox_core::store::{
    ProofRecord, ProofState, ReplayStore, SessionRecord, SessionStatus, SessionStore, StoreError,
    Versioned,
};

use crate::{
    clamp_time, now_secs, validate_key, validate_namespace, validate_reference, validate_session,
};

type Map = HashMap<(String, String), ProofRecord>;
type Sessions = HashMap<(String, String), Versioned<SessionRecord>>;

/// An in-memory [`ReplayStore`] and [`SessionStore`]. Cheap to create; not shared between
/// processes.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<Map>,
    sessions: Mutex<Sessions>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        // A panic while holding the lock cannot leave the map half-updated (every change is a
        // single map operation), so a poisoned lock is still consistent.
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl ReplayStore for MemoryStore {
    async fn reserve(
        &self,
        namespace: &str,
        key: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        validate_key(namespace, key)?;
        let mut map = self.lock();
        let slot = (namespace.to_owned(), key.to_owned());
        if map.contains_key(&slot) {
            return Ok(false);
        }
        map.insert(
            slot,
            ProofRecord {
                state: ProofState::Reserved,
                reference: None,
                expires_at: clamp_time(expires_at),
                updated_at: clamp_time(now_secs()),
            },
        );
        Ok(true)
    }

    async fn update(
        &self,
        namespace: &str,
        key: &str,
        state: ProofState,
        reference: Option<&str>,
    ) -> Result<(), StoreError> {
        validate_key(namespace, key)?;
        validate_reference(reference)?;
        let mut map = self.lock();
        let record = map
            .get_mut(&(namespace.to_owned(), key.to_owned()))
            .ok_or_else(|| StoreError::NotFound(format!("{namespace}/{key}")))?;
        record.state = state;
        if let Some(r) = reference {
            record.reference = Some(r.to_owned());
        }
        record.updated_at = clamp_time(now_secs());
        Ok(())
    }

    async fn release(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        validate_key(namespace, key)?;
        let mut map = self.lock();
        let slot = (namespace.to_owned(), key.to_owned());
        if map.get(&slot).is_some_and(|r| r.state == ProofState::Reserved) {
            map.remove(&slot);
        }
        Ok(())
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<ProofRecord>, StoreError> {
        validate_key(namespace, key)?;
        Ok(self.lock().get(&(namespace.to_owned(), key.to_owned())).cloned())
    }

    async fn pending(&self, namespace: &str) -> Result<Vec<(String, ProofRecord)>, StoreError> {
        validate_namespace(namespace)?;
        let mut out: Vec<(String, ProofRecord)> = self
            .lock()
            .iter()
            .filter(|((ns, _), r)| ns == namespace && r.state == ProofState::Pending)
            .map(|((_, k), r)| (k.clone(), r.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let now = clamp_time(now);
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, r| !(r.state == ProofState::Reserved && r.expires_at < now));
        Ok((before - map.len()) as u64)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create_session(
        &self,
        namespace: &str,
        id: &str,
        record: &SessionRecord,
    ) -> Result<bool, StoreError> {
        validate_session(namespace, id, Some(record))?;
        let mut map = self.sessions();
        let slot = (namespace.to_owned(), id.to_owned());
        if map.contains_key(&slot) {
            return Ok(false);
        }
        map.insert(slot, Versioned { version: 1, value: record.clone() });
        Ok(true)
    }

    async fn load_session(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<Versioned<SessionRecord>>, StoreError> {
        validate_session(namespace, id, None)?;
        Ok(self.sessions().get(&(namespace.to_owned(), id.to_owned())).cloned())
    }

    async fn replace_session(
        &self,
        namespace: &str,
        id: &str,
        version: u64,
        record: &SessionRecord,
    ) -> Result<bool, StoreError> {
        validate_session(namespace, id, Some(record))?;
        let mut map = self.sessions();
        match map.get_mut(&(namespace.to_owned(), id.to_owned())) {
            Some(current) if current.version == version => {
                *current = Versioned { version: version + 1, value: record.clone() };
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn idle_sessions(
        &self,
        namespace: &str,
        status: SessionStatus,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(String, Versioned<SessionRecord>)>, StoreError> {
        validate_namespace(namespace)?;
        let mut out: Vec<(String, Versioned<SessionRecord>)> = self
            .sessions()
            .iter()
            .filter(|((ns, _), s)| {
                ns == namespace && s.value.status == status && s.value.updated_at < before
            })
            .map(|((_, id), s)| (id.clone(), s.clone()))
            .collect();
        out.sort_by(|a, b| (a.1.value.updated_at, &a.0).cmp(&(b.1.value.updated_at, &b.0)));
        out.truncate(limit);
        Ok(out)
    }
}
