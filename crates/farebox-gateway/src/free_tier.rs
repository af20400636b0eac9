//! The free tier: N requests per client per fixed window, counted in the gateway's database so
//! that every instance sharing it counts together.
//!
//! The counter lives in its own table, `farebox_gateway_free_tier`, in the same database as the
//! store (the SQLite file or the PostgreSQL database; see [`crate::db`]). One request is one atomic `INSERT … ON CONFLICT DO UPDATE … RETURNING`, so
//! concurrent requests, on one instance or many, never both get the N-th free request.
//!
//! Windows are fixed (`floor(now / window) * window`): a client can use N at the end of one
//! window and N at the start of the next. Clients are stored as the SHA-256 of their identity
//! (an IP address, or the value of the header the operator named, which may be an API key), so
//! the table holds no identities.
//!
//! When the database cannot answer, the request is not served free: it goes on to the paywall,
//! which asks for payment (and counts a backend error).

use sha2::{Digest, Sha256};

use crate::db::GatewayDb;

/// A configured free tier over the gateway's database.
#[derive(Clone)]
pub struct FreeTier {
    db: GatewayDb,
    requests: u64,
    window_secs: u64,
}

impl FreeTier {
    pub fn new(db: GatewayDb, requests: u64, window_secs: u64) -> Self {
        FreeTier { db, requests, window_secs: window_secs.max(1) }
    }

    /// Counts one request of `client` at `now` (Unix seconds): `Ok(true)` when it is free.
    pub async fn take(&self, client: &str, now: u64) -> Result<bool, String> {
        let window_start =
            i64::try_from(now / self.window_secs * self.window_secs).unwrap_or(i64::MAX);
        let key = hex::encode(Sha256::digest(client.as_bytes()));
        let used = self.db.bump_free_tier(&key, window_start).await?;
        Ok(u64::try_from(used).unwrap_or(u64::MAX) <= self.requests)
    }

    /// Forgets windows that are over.
    pub async fn purge(&self, now: u64) -> Result<u64, String> {
        let current = now / self.window_secs * self.window_secs;
        self.db.purge_free_tier(i64::try_from(current).unwrap_or(i64::MAX)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn n_free_requests_per_window_then_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = GatewayDb::sqlite(&dir.path().join("g.sqlite")).await.unwrap();
        // Opening again runs no migration twice.
        let again = GatewayDb::sqlite(&dir.path().join("g.sqlite")).await.unwrap();
        let tier = FreeTier::new(db, 2, 60);
        let other = FreeTier::new(again, 2, 60);
        assert!(tier.take("1.2.3.4", 600).await.unwrap());
        assert!(other.take("1.2.3.4", 610).await.unwrap(), "a second instance counts the same");
        assert!(!tier.take("1.2.3.4", 619).await.unwrap());
        assert!(tier.take("5.6.7.8", 619).await.unwrap(), "clients count apart");
        assert!(tier.take("1.2.3.4", 660).await.unwrap(), "a new window starts over");
        assert_eq!(tier.purge(660).await.unwrap(), 2);
    }
}
