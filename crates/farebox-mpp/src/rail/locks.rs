//! One in-process lock per session: requests on one session take turns (first come, first
//! served) instead of racing their compare-and-swaps, which under load lets a loser retry
//! without end. The store's compare-and-swap still guards against other processes; this only
//! orders the requests of this one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Locks keyed by session id, dropped from the map once nobody holds or waits for them.
#[derive(Default)]
pub(crate) struct SessionLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SessionLocks {
    /// Waits for the turn of session `id`; the turn lasts as long as the guard.
    pub async fn turn(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}
