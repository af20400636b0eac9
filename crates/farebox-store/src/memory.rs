//! [`MemoryStore`]: a mutex'd map, for tests and single-process development.
//!
//! Everything is lost when the process exits, so a proof spent before a restart can be spent
//! again after it: do not use it in production (use [`SqliteStore`](crate::SqliteStore) for one
//! instance, [`PostgresStore`](crate::PostgresStore) for several).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use farebox_core::store::{
    Hold, HoldOutcome, ProofRecord, ProofState, ReplayStore, SessionRecord, SessionStatus,
    SessionStore, StoreError, Versioned,
};

use crate::{
    clamp_time, now_secs, validate_account, validate_key, validate_namespace, validate_reference,
    validate_session,
};

type Slot = (String, String);
type Sessions = HashMap<Slot, Versioned<SessionRecord>>;

/// A proof and, when it was reserved with a hold, what the hold needs.
#[derive(Debug)]
struct Entry {
    record: ProofRecord,
    amount: u128,
    until: u64,
    /// Its number in the order of settlements (see [`ReplayStore::settled_mark`]).
    settled_seq: Option<u64>,
}

/// The proofs, and (for holds) the keys of each account.
#[derive(Debug, Default)]
struct Records {
    map: HashMap<Slot, Entry>,
    by_account: HashMap<String, HashSet<Slot>>,
    settled_seq: u64,
}

impl Records {
    /// What `account` holds for a caller that read its balance after `mark` (`None`: nothing),
    /// as of `now`. Forgets the keys whose hold can never count again on the way.
    fn held(&mut self, account: &str, mark: u64, now: u64) -> Option<u128> {
        let keys = self.by_account.get_mut(account)?;
        let map = &self.map;
        keys.retain(|slot| {
            map.get(slot).is_some_and(|e| e.until >= now && e.record.state != ProofState::Failed)
        });
        keys.iter()
            .filter_map(|slot| map.get(slot))
            .filter(|e| match e.record.state {
                ProofState::Reserved | ProofState::Pending => true,
                ProofState::Settled => e.settled_seq.is_none_or(|seq| seq > mark),
                ProofState::Failed => false,
            })
            .map(|e| e.amount)
            .reduce(u128::saturating_add)
    }
}

/// An in-memory [`ReplayStore`] and [`SessionStore`]. Cheap to create; not shared between
/// processes.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
    sessions: Mutex<Sessions>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        // A panic while holding the lock cannot leave the records half-updated (nothing in a
        // change can panic), so a poisoned lock is still consistent.
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
        let mut records = self.lock();
        let slot = (namespace.to_owned(), key.to_owned());
        if records.map.contains_key(&slot) {
            return Ok(false);
        }
        records.map.insert(slot, reserved(expires_at, None, 0, 0, now_secs()?));
        Ok(true)
    }

    async fn reserve_hold(
        &self,
        namespace: &str,
        key: &str,
        expires_at: u64,
        hold: &Hold<'_>,
    ) -> Result<HoldOutcome, StoreError> {
        validate_key(namespace, key)?;
        validate_account(hold.account)?;
        let mut records = self.lock();
        let slot = (namespace.to_owned(), key.to_owned());
        if records.map.contains_key(&slot) {
            return Ok(HoldOutcome::Duplicate);
        }
        let held = records.held(hold.account, hold.mark, now_secs()?);
        if let Some(outcome) = crate::refusal(held, hold) {
            return Ok(outcome);
        }
        let entry = reserved(expires_at, Some(hold.account), hold.amount, hold.until, now_secs()?);
        records.map.insert(slot.clone(), entry);
        records.by_account.entry(hold.account.to_owned()).or_default().insert(slot);
        Ok(HoldOutcome::Reserved)
    }

    async fn settled_mark(&self) -> Result<u64, StoreError> {
        Ok(self.lock().settled_seq)
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
        let mut records = self.lock();
        let next_seq = records.settled_seq + 1;
        let entry = records
            .map
            .get_mut(&(namespace.to_owned(), key.to_owned()))
            .ok_or_else(|| StoreError::NotFound(format!("{namespace}/{key}")))?;
        let numbered = state == ProofState::Settled
            && entry.record.account.is_some()
            && entry.settled_seq.is_none();
        if numbered {
            entry.settled_seq = Some(next_seq);
        }
        let record = &mut entry.record;
        record.state = state;
        if let Some(r) = reference {
            record.reference = Some(r.to_owned());
        }
        record.updated_at = clamp_time(now_secs()?);
        if numbered {
            records.settled_seq = next_seq;
        }
        Ok(())
    }

    async fn release(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        validate_key(namespace, key)?;
        let mut records = self.lock();
        let slot = (namespace.to_owned(), key.to_owned());
        if records.map.get(&slot).is_some_and(|e| e.record.state == ProofState::Reserved) {
            records.map.remove(&slot);
        }
        Ok(())
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<ProofRecord>, StoreError> {
        validate_key(namespace, key)?;
        Ok(self.lock().map.get(&(namespace.to_owned(), key.to_owned())).map(|e| e.record.clone()))
    }

    async fn pending(&self, namespace: &str) -> Result<Vec<(String, ProofRecord)>, StoreError> {
        validate_namespace(namespace)?;
        let mut out: Vec<(String, ProofRecord)> = self
            .lock()
            .map
            .iter()
            .filter(|((ns, _), e)| ns == namespace && e.record.state == ProofState::Pending)
            .map(|((_, k), e)| (k.clone(), e.record.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let now = clamp_time(now);
        let mut records = self.lock();
        let before = records.map.len();
        records
            .map
            .retain(|_, e| !(e.record.state == ProofState::Reserved && e.record.expires_at < now));
        Ok((before - records.map.len()) as u64)
    }
}

/// A newly reserved proof, holding `amount` of `account` until `until` when it has an account.
fn reserved(expires_at: u64, account: Option<&str>, amount: u128, until: u64, now: u64) -> Entry {
    Entry {
        record: ProofRecord {
            state: ProofState::Reserved,
            reference: None,
            expires_at: clamp_time(expires_at),
            updated_at: clamp_time(now),
            account: account.map(str::to_owned),
        },
        amount,
        until: clamp_time(until),
        settled_seq: None,
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
