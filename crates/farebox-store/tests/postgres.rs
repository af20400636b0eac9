//! PostgreSQL: each test starts its own throwaway server (`testing::TestPostgres`).
#![cfg(feature = "testing")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use farebox_core::{ErrorKind, PaymentError};
use farebox_store::testing::TestPostgres;
use farebox_store::{PostgresStore, ReplayStore, StoreError};

fn start() -> TestPostgres {
    let pg = TestPostgres::start();
    eprintln!("test PostgreSQL on port {} started in {:?}", pg.port(), pg.started_in());
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_behaves() {
    let pg = start();
    let store = PostgresStore::connect(pg.url()).await.unwrap();
    common::behaves(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_via_open_and_two_instances_race() {
    let pg = start();
    // Two instances starting at once: the schema is created once, without errors.
    let (a, b) = tokio::join!(farebox_store::open(pg.url()), PostgresStore::connect(pg.url()));
    let a: Arc<dyn ReplayStore> = a.unwrap();
    let b: Arc<dyn ReplayStore> = Arc::new(b.unwrap());
    assert_eq!(common::race(&[Arc::clone(&a), Arc::clone(&b)], 32, "x402", "contested").await, 1);
    // What one instance records, the other sees.
    let far = common::now() + 3600;
    assert!(a.reserve("x402", "shared", far).await.unwrap());
    assert!(!b.reserve("x402", "shared", far).await.unwrap());
    assert!(b.get("x402", "shared").await.unwrap().is_some());
    let url = pg.url().replacen("postgres://", "postgresql://", 1);
    let c = farebox_store::open(&url).await.unwrap();
    assert!(!c.reserve("x402", "shared", far).await.unwrap());
}

#[tokio::test]
async fn postgres_down_is_unavailable() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/farebox");
    let began = Instant::now();
    let err = match PostgresStore::connect(&url).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    let took = began.elapsed();
    eprintln!("closed port: {err} after {took:?}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(PaymentError::from(err).kind, ErrorKind::Unavailable);
    assert_eq!(ErrorKind::Unavailable.status(), 503);
    assert!(matches!(farebox_store::open(&url).await.map(|_| ()), Err(StoreError::Unavailable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_mid_use_is_unavailable() {
    let pg = start();
    let store = PostgresStore::connect(pg.url()).await.unwrap();
    let far = common::now() + 3600;
    assert!(store.reserve("x402", "before", far).await.unwrap());
    drop(pg);
    for op in 0..3 {
        let began = Instant::now();
        let result = match op {
            0 => store.reserve("x402", "after", far).await.map(|_| ()),
            1 => store.get("x402", "before").await.map(|_| ()),
            _ => store.pending("x402").await.map(|_| ()),
        };
        let took = began.elapsed();
        eprintln!("stopped server, op {op}: {result:?} after {took:?}");
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(took < Duration::from_secs(9), "took {took:?}");
        assert_eq!(PaymentError::from(err).kind, ErrorKind::Unavailable);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_sessions_behave_and_two_instances_debit_once_each() {
    let pg = start();
    let a = Arc::new(PostgresStore::connect(pg.url()).await.unwrap());
    common::sessions_behave(Arc::clone(&a)).await;
    let b = Arc::new(PostgresStore::connect(pg.url()).await.unwrap());
    assert_eq!(common::concurrent_debits(&[a, b], 32, "shared").await.spent, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_instances_hold_no_more_than_the_balance() {
    let pg = start();
    let a = Arc::new(PostgresStore::connect(pg.url()).await.unwrap());
    common::holds_behave(Arc::clone(&a)).await;
    let b = Arc::new(PostgresStore::connect(pg.url()).await.unwrap());
    let both = [a, b];
    assert_eq!(common::hold_race(&both, 32, "payer", 10, Some(50)).await, 5);
    assert_eq!(common::hold_race(&both, 32, "other", 10, None).await, 1);
}
