//! What the L402 rail keeps per token in the server's store: whether the token id is revoked,
//! and how many requests each request-limited delegation of it has used.
//!
//! L402 tokens are otherwise stateless, so this is the only place a server can say no to a token
//! whose signature and caveats are fine: an operator revokes a token id ([`TokenStore::revoke`],
//! what a gateway's admin API calls), and a `farebox_max_requests` caveat (see [`crate::caveat`])
//! needs a count that holds across concurrent requests, restarts and every instance sharing the
//! store.
//!
//! # The record
//!
//! One [`SessionRecord`] per token id, in namespace [`NAMESPACE`], keyed by the token id in
//! lower-case hex: `status` is `open` (usable) or `closed` (revoked, for good); `data` is
//! `{"requests":{"<counter>":<used>}}`. A counter is the first 16 bytes, in hex, of
//! `SHA-256("farebox-l402-request-limit" ‖ sig)`, where `sig` is the signature chain through the
//! `farebox_max_requests` caveat: the token that caveat was appended to and every token derived
//! from it share the counter, and the chain signature itself (a bearer secret) is never stored.
//! Every change is a compare-and-swap on the record ([`update_session`]), so of any number of
//! concurrent requests for the last allowed request, exactly one is served.
//!
//! # Cost and staleness
//!
//! A token with request limits reads and writes its record on every request (which also reads
//! the revocation). A token without them is checked against a per-instance cache that is at
//! most [`REVOCATION_STALENESS`] old: a revocation takes effect at once on the instance that
//! made it and within that time on every other instance sharing the store, while a verification
//! costs a map lookup and, once a second per token id in use, one store read.
//!
//! A store that cannot answer refuses the request (503), never serves it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use farebox_core::store::{
    MAX_SESSION_DATA_LEN, MAX_UPDATE_ATTEMPTS, SessionRecord, SessionStatus, SessionStore,
    StoreError, Update, update_session,
};
use farebox_core::{PaymentError, time};
use sha2::{Digest, Sha256};

use crate::caveat::MAX_REQUEST_LIMITS;

/// The session-store namespace of token records.
pub const NAMESPACE: &str = "l402-token";
/// How old a cached "not revoked" may be: half a second, so that a revocation holds on every
/// instance within a second, a request's own time included.
pub const REVOCATION_STALENESS: Duration = Duration::from_millis(500);
/// Most token ids whose revocation state an instance caches.
pub const MAX_CACHED_TOKENS: usize = 100_000;
/// The domain-separation prefix of counter keys.
const COUNTER_LABEL: &[u8] = b"farebox-l402-request-limit";

/// One `farebox_max_requests` caveat of a verified token: its limit and its counter.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// How many requests it allows.
    pub max: u64,
    /// Which counter it is (see the module docs).
    pub key: [u8; 16],
}

impl Counter {
    /// The limit `max` whose caveat ends the signature chain at `chain_signature`.
    pub fn new(max: u64, chain_signature: &[u8; 32]) -> Self {
        let digest = Sha256::new().chain_update(COUNTER_LABEL).chain_update(chain_signature);
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest.finalize()[..16]);
        Counter { max, key }
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counter({} requests, key {})", self.max, hex::encode(self.key))
    }
}

/// The request limits of a verified token, in caveat order (at most [`MAX_REQUEST_LIMITS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    len: usize,
    counters: [Counter; MAX_REQUEST_LIMITS],
}

impl Counters {
    /// Appends a limit; `false` when there are already [`MAX_REQUEST_LIMITS`].
    pub fn push(&mut self, limit: Counter) -> bool {
        let Some(slot) = self.counters.get_mut(self.len) else {
            return false;
        };
        *slot = limit;
        self.len += 1;
        true
    }

    pub fn as_slice(&self) -> &[Counter] {
        &self.counters[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The `data` of a token record.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct TokenData {
    /// Requests used, per counter (hex).
    #[serde(default)]
    requests: BTreeMap<String, u64>,
}

impl TokenData {
    fn read(record: &SessionRecord) -> Result<Self, StoreError> {
        if record.data.is_empty() {
            return Ok(TokenData::default());
        }
        serde_json::from_str(&record.data)
            .map_err(|e| StoreError::Invalid(format!("L402 token record: {e}")))
    }

    fn text(&self) -> String {
        // Infallible: a map of strings to integers.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Clone, Copy)]
struct Cached {
    at: Instant,
    revoked: bool,
}

/// Revocations and request counters of L402 tokens, in a [`SessionStore`]. Cheap to clone (the
/// clones share one cache); see the module docs.
#[derive(Clone)]
pub struct TokenStore {
    store: Arc<dyn SessionStore>,
    cache: Arc<RwLock<HashMap<[u8; 32], Cached>>>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenStore { .. }")
    }
}

pub(crate) fn revoked_error() -> PaymentError {
    PaymentError::invalid("revoked", "this token has been revoked")
}

fn record(status: SessionStatus, data: String) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        status,
        deposit: 0,
        accepted: 0,
        spent: 0,
        settled: 0,
        data,
        updated_at: time::unix_now()?,
    })
}

impl TokenStore {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        TokenStore { store, cache: Arc::default() }
    }

    /// Revokes `token_id` for good: every token with it (the one minted and every attenuation of
    /// it) is refused from now on, here at once and on every instance sharing the store within
    /// [`REVOCATION_STALENESS`]. Revoking twice is fine.
    pub async fn revoke(&self, token_id: &[u8; 32]) -> Result<(), StoreError> {
        self.change(token_id, |r| {
            Ok::<_, StoreError>(if r.status == SessionStatus::Closed {
                Update::Keep(())
            } else {
                Update::Write(record(SessionStatus::Closed, r.data.clone())?, ())
            })
        })
        .await?;
        self.remember(token_id, true);
        Ok(())
    }

    /// Whether `token_id` is revoked, as of at most [`REVOCATION_STALENESS`] ago.
    pub async fn is_revoked(&self, token_id: &[u8; 32]) -> Result<bool, StoreError> {
        let cached =
            self.cache.read().unwrap_or_else(PoisonError::into_inner).get(token_id).copied();
        if let Some(c) = cached
            && (c.revoked || c.at.elapsed() < REVOCATION_STALENESS)
        {
            return Ok(c.revoked);
        }
        let found = self.store.load_session(NAMESPACE, &hex::encode(token_id)).await?;
        let revoked = found.is_some_and(|r| r.value.status != SessionStatus::Open);
        self.remember(token_id, revoked);
        Ok(revoked)
    }

    /// Up to `limit` revoked token ids, oldest revocation first.
    pub async fn revoked(&self, limit: usize) -> Result<Vec<[u8; 32]>, StoreError> {
        let closed =
            self.store.idle_sessions(NAMESPACE, SessionStatus::Closed, u64::MAX, limit).await?;
        closed
            .into_iter()
            .map(|(id, _)| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(&id, &mut out)
                    .map_err(|_| StoreError::Invalid(format!("L402 token record id {id:?}")))?;
                Ok(out)
            })
            .collect()
    }

    /// Counts one request against every limit of `token_id`, or refuses it: revoked, or a limit
    /// already used up (then nothing is counted).
    pub(crate) async fn count(
        &self,
        token_id: &[u8; 32],
        counters: &Counters,
    ) -> Result<(), PaymentError> {
        self.change(token_id, |r| {
            if r.status != SessionStatus::Open {
                return Err(revoked_error());
            }
            let mut data = TokenData::read(r)?;
            for l in counters.as_slice() {
                let used = data.requests.entry(hex::encode(l.key)).or_default();
                if *used >= l.max {
                    return Err(PaymentError::invalid(
                        "request_limit_reached",
                        format!("this token allows {} requests, all used", l.max),
                    ));
                }
                *used += 1;
            }
            let text = data.text();
            if text.len() > MAX_SESSION_DATA_LEN {
                return Err(PaymentError::invalid(
                    "too_many_limits",
                    "this token has too many request-limited delegations to count",
                ));
            }
            Ok(Update::Write(record(SessionStatus::Open, text)?, ()))
        })
        .await?;
        self.remember(token_id, false);
        Ok(())
    }

    /// Gives back a request [`TokenStore::count`] counted, when it was not served.
    pub(crate) async fn uncount(
        &self,
        token_id: &[u8; 32],
        counters: &Counters,
    ) -> Result<(), StoreError> {
        update_session(&*self.store, NAMESPACE, &hex::encode(token_id), |r| {
            let mut data = TokenData::read(r)?;
            for l in counters.as_slice() {
                if let Some(used) = data.requests.get_mut(&hex::encode(l.key)) {
                    *used = used.saturating_sub(1);
                }
            }
            Ok::<_, StoreError>(Update::Write(SessionRecord { data: data.text(), ..r.clone() }, ()))
        })
        .await?;
        Ok(())
    }

    /// Applies `step` to the record of `token_id` by compare-and-swap; a missing record is
    /// created from `step` applied to an empty open one.
    async fn change<T, E: From<StoreError>>(
        &self,
        token_id: &[u8; 32],
        mut step: impl FnMut(&SessionRecord) -> Result<Update<T>, E>,
    ) -> Result<T, E> {
        let id = hex::encode(token_id);
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            if let Some(out) = update_session(&*self.store, NAMESPACE, &id, &mut step).await? {
                return Ok(out);
            }
            match step(&record(SessionStatus::Open, String::new())?)? {
                Update::Keep(out) => return Ok(out),
                Update::Write(new, out) => {
                    if self.store.create_session(NAMESPACE, &id, &new).await? {
                        return Ok(out);
                    }
                }
            }
        }
        Err(StoreError::Unavailable(format!("L402 token {id} is contended; try again")).into())
    }

    fn remember(&self, token_id: &[u8; 32], revoked: bool) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_TOKENS && !cache.contains_key(token_id) {
            cache.retain(|_, c| c.at.elapsed() < REVOCATION_STALENESS);
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
        }
        cache.insert(*token_id, Cached { at: Instant::now(), revoked });
    }
}
