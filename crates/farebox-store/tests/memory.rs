mod common;

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_behaves() {
    common::behaves(Arc::new(farebox_store::MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_via_open_behaves() {
    common::behaves(farebox_store::open("memory:").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_sessions_behave() {
    common::sessions_behave(Arc::new(farebox_store::MemoryStore::new())).await;
    common::sessions_behave(farebox_store::open("memory:").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_holds_keep_payments_in_flight_within_the_balance() {
    common::holds_behave(Arc::new(farebox_store::MemoryStore::new())).await;
}
