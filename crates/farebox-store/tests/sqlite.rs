mod common;

use std::sync::Arc;

use farebox_store::{ProofState, ReplayStore, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_store_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("replay.db")).await.unwrap();
    common::behaves(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_memory_store_behaves() {
    common::behaves(Arc::new(SqliteStore::in_memory().await.unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_via_open_urls_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sub/dir/replay.db").display());
    common::behaves(farebox_store::open(&url).await.unwrap()).await;
    common::behaves(farebox_store::open("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.db");
    let far = common::now() + 3600;
    {
        let store = SqliteStore::open(&path).await.unwrap();
        assert!(store.reserve("x402", "spent", far).await.unwrap());
        assert!(store.reserve("x402", "pending", far).await.unwrap());
        store.update("x402", "pending", ProofState::Pending, Some("0xtx")).await.unwrap();
        assert!(dir.path().join("replay.db-wal").exists(), "the database runs in WAL mode");
        // Dropped without close(): an acknowledged write must already be durable.
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(!store.reserve("x402", "spent", far).await.unwrap());
    let rec = store.get("x402", "spent").await.unwrap().unwrap();
    assert_eq!((rec.state, rec.expires_at), (ProofState::Reserved, far));
    let pending = store.pending("x402").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0, "pending");
    assert_eq!(pending[0].1.reference.as_deref(), Some("0xtx"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_stores_on_one_file_race() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.db");
    let a = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b = Arc::new(SqliteStore::open(&path).await.unwrap());
    assert_eq!(common::race(&[a, b], 32, "x402", "contested").await, 1);
}

#[tokio::test]
async fn sqlite_unopenable_path_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // A path under a regular file cannot be created.
    let err = SqliteStore::open(file.join("replay.db")).await.unwrap_err();
    assert!(matches!(err, farebox_store::StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_sessions_behave() {
    let dir = tempfile::tempdir().unwrap();
    common::sessions_behave(Arc::new(SqliteStore::open(dir.path().join("s.db")).await.unwrap()))
        .await;
    common::sessions_behave(farebox_store::open("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_sessions_survive_reopen_and_two_processes_debit_once_each() {
    use farebox_store::SessionStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let record = common::session(5_000_000);
    {
        let store = SqliteStore::open(&path).await.unwrap();
        assert!(store.create_session("mpp", "0xchannel", &record).await.unwrap());
        // Dropped without close(): the acknowledged write must already be durable.
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let loaded = store.load_session("mpp", "0xchannel").await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.value), (1, record));
    // Two stores on one file (two gateway processes on one machine) debit one session.
    let a = Arc::new(store);
    let b = Arc::new(SqliteStore::open(&path).await.unwrap());
    assert_eq!(common::concurrent_debits(&[a, b], 24, "shared").await.spent, 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_holds_keep_payments_in_flight_within_the_balance() {
    let dir = tempfile::tempdir().unwrap();
    common::holds_behave(Arc::new(SqliteStore::open(dir.path().join("holds.db")).await.unwrap()))
        .await;
    common::holds_behave(farebox_store::open("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_processes_on_one_file_hold_no_more_than_the_balance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holds.db");
    let a = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b = Arc::new(SqliteStore::open(&path).await.unwrap());
    let both = [a, b];
    assert_eq!(common::hold_race(&both, 32, "payer", 10, Some(50)).await, 5);
    assert_eq!(common::hold_race(&both, 32, "other", 10, None).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_made_before_holds_gains_them_and_keeps_its_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The schema as it was before holds, with a spent proof in it.
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(
            "CREATE TABLE farebox_proofs (namespace TEXT NOT NULL, key TEXT NOT NULL,
             state TEXT NOT NULL, reference TEXT, expires_at INTEGER NOT NULL,
             updated_at INTEGER NOT NULL, PRIMARY KEY (namespace, key))",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO farebox_proofs VALUES ('x402', 'old', 'settled', '0x1', 9, 9)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    assert!(!store.reserve("x402", "old", common::now() + 60).await.unwrap(), "still spent");
    assert_eq!(store.get("x402", "old").await.unwrap().unwrap().account, None);
    common::holds_behave(store).await;
}
