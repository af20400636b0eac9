//! Rate limits per client IP and per payment token, answered with `429 Too Many Requests`
//! (problem+json, `Retry-After`).
//!
//! `[rate_limit]` sets the limits of every route: `per_ip` and `per_token`, each `requests` per
//! `window_secs`, all of them usable at once (a burst of `requests`, then one every
//! `window_secs / requests`: the generic cell rate algorithm, one timestamp per key). A route's
//! own `rate_limit = { per_ip = …, per_token = … }` replaces either for that route, with buckets
//! of its own; what it leaves out stays the global limit, shared with the other routes.
//!
//! * **Per IP**: the client's address ([`crate::proxy::client_ip`]: the peer, or behind a
//!   trusted proxy the address it forwarded for).
//! * **Per token**: the payment credential a request carries: an L402 token by its token id
//!   (however often it is reused), any other credential (an MPP or x402 one) by the SHA-256 of
//!   its header value. Requests without a credential are only limited per IP.
//!
//! **Counted in memory, per instance.** A limit is checked on every request, before the paywall
//! verifies anything; a database round trip there would cost more than what it protects. With
//! N instances behind a load balancer a client can therefore get up to N times the limit; set
//! the limits per instance accordingly. Buckets start empty at each start and reload.
//!
//! Memory is bounded: at most [`MAX_KEYS`] keys are tracked. A key whose bucket has refilled is
//! the same as no key, so a full table first forgets those; when every tracked key is still
//! limited and the table is full, a new key is refused (429) rather than let through unlimited.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys tracked (per instance, all scopes together).
pub const MAX_KEYS: usize = 1 << 18;
const SHARDS: usize = 16;

/// One limit: `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    pub window: Duration,
}

impl Limit {
    /// Time between two requests at the sustained rate, in nanoseconds (at least 1).
    fn interval_ns(&self) -> u64 {
        (u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX) / self.requests.max(1)).max(1)
    }

    fn window_ns(&self) -> u64 {
        u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Who a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(IpAddr),
    Token([u8; 32]),
}

/// The buckets a limit counts in: the global ones, or a route's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Route(usize),
}

/// A refused request: how long until the key may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

type Shard = Mutex<HashMap<(Scope, Key), u64>>;

/// The theoretical arrival time of each key's next request, in nanoseconds since `epoch`.
pub struct RateLimiter {
    shards: Vec<Shard>,
    hasher: RandomState,
    epoch: Instant,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts one request of `key` against `limit` in `scope`.
    pub fn check(&self, scope: Scope, key: Key, limit: Limit) -> Result<(), Limited> {
        self.check_at(scope, key, limit, self.now_ns())
    }

    fn check_at(&self, scope: Scope, key: Key, limit: Limit, now: u64) -> Result<(), Limited> {
        let slot = (scope, key);
        let shard = &self.shards[(self.hasher.hash_one(slot) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let interval = limit.interval_ns();
        let tolerance = limit.window_ns();
        let tat = map.get(&slot).copied().unwrap_or(now).max(now);
        let next = tat.saturating_add(interval);
        if next - now > tolerance {
            return Err(Limited { retry_after: Duration::from_nanos(next - now - tolerance) });
        }
        if !map.contains_key(&slot) && map.len() >= MAX_KEYS / SHARDS {
            // Keys whose bucket has refilled carry no state worth keeping.
            map.retain(|_, t| *t > now);
            if map.len() >= MAX_KEYS / SHARDS {
                return Err(Limited { retry_after: Duration::from_secs(1) });
            }
        }
        map.insert(slot, next);
        Ok(())
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets keys whose bucket has refilled (run now and then, so memory follows load).
    pub fn purge(&self) {
        let now = self.now_ns();
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, t| *t > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn ip(n: u8) -> Key {
        Key::Ip(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn a_burst_of_n_then_one_per_interval() {
        let l = RateLimiter::new();
        let limit = Limit { requests: 3, window: Duration::from_secs(3) };
        let t0 = 10 * SEC;
        for _ in 0..3 {
            assert!(l.check_at(Scope::Global, ip(1), limit, t0).is_ok());
        }
        let refused = l.check_at(Scope::Global, ip(1), limit, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(l.check_at(Scope::Global, ip(2), limit, t0).is_ok(), "keys count apart");
        assert!(l.check_at(Scope::Route(0), ip(1), limit, t0).is_ok(), "scopes count apart");
        assert!(
            l.check_at(Scope::Global, ip(1), limit, t0 + SEC).is_ok(),
            "one more a second later"
        );
        assert!(l.check_at(Scope::Global, ip(1), limit, t0 + SEC).is_err());
        // After a whole window the burst is back.
        for _ in 0..3 {
            assert!(l.check_at(Scope::Global, ip(1), limit, t0 + 5 * SEC).is_ok());
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(Limited { retry_after: Duration::from_millis(1) }.retry_after_secs(), 1);
        assert_eq!(Limited { retry_after: Duration::from_millis(1500) }.retry_after_secs(), 2);
        assert_eq!(Limited { retry_after: Duration::ZERO }.retry_after_secs(), 1);
    }

    #[test]
    fn refilled_keys_are_forgotten() {
        let l = RateLimiter::new();
        let limit = Limit { requests: 1, window: Duration::from_millis(1) };
        l.check(Scope::Global, ip(1), limit).unwrap();
        assert_eq!(l.len(), 1);
        std::thread::sleep(Duration::from_millis(5));
        l.purge();
        assert!(l.is_empty());
    }
}
