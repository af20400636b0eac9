//! The behavioural suite every store must pass.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use farebox_store::{ProofState, ReplayStore, StoreError};

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Races `n` concurrent reserves of one key over `stores` (round robin); returns how many won.
pub async fn race<S: ReplayStore + ?Sized>(
    stores: &[Arc<S>],
    n: usize,
    ns: &str,
    key: &str,
) -> usize {
    let expires = now() + 3600;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = Arc::clone(&stores[i % stores.len()]);
            let barrier = Arc::clone(&barrier);
            let (ns, key) = (ns.to_owned(), key.to_owned());
            tokio::spawn(async move {
                barrier.wait().await;
                store.reserve(&ns, &key, expires).await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.expect("task").expect("reserve") {
            wins += 1;
        }
    }
    wins
}

/// Runs the whole suite against a fresh (empty) store.
pub async fn behaves<S: ReplayStore + ?Sized>(store: Arc<S>) {
    let far = now() + 3600;
    let s = &*store;

    // Reserve twice: true, then false; get shows the reservation.
    assert!(s.reserve("x402", "k1", far).await.unwrap());
    assert!(!s.reserve("x402", "k1", far).await.unwrap());
    let rec = s.get("x402", "k1").await.unwrap().expect("recorded");
    assert_eq!(rec.state, ProofState::Reserved);
    assert_eq!(rec.reference, None);
    assert_eq!(rec.expires_at, far);
    assert!(rec.updated_at >= now() - 60 && rec.updated_at <= now() + 60);
    assert_eq!(s.get("x402", "nope").await.unwrap(), None);

    // 64 concurrent reserves of one key: exactly one wins.
    assert_eq!(race(&[Arc::clone(&store)], 64, "x402", "hot").await, 1);

    // Pending with a reference, then Settled (the reference is kept).
    assert!(s.reserve("x402", "k2", far).await.unwrap());
    s.update("x402", "k2", ProofState::Pending, Some("0xabc")).await.unwrap();
    let rec = s.get("x402", "k2").await.unwrap().unwrap();
    assert_eq!(rec.state, ProofState::Pending);
    assert_eq!(rec.reference.as_deref(), Some("0xabc"));
    s.update("x402", "k2", ProofState::Settled, None).await.unwrap();
    let rec = s.get("x402", "k2").await.unwrap().unwrap();
    assert_eq!(rec.state, ProofState::Settled);
    assert_eq!(rec.reference.as_deref(), Some("0xabc"));
    assert!(!s.reserve("x402", "k2", far).await.unwrap(), "settled stays spent");
    s.update("x402", "k2", ProofState::Failed, Some("0xdef")).await.unwrap();
    let rec = s.get("x402", "k2").await.unwrap().unwrap();
    assert_eq!((rec.state, rec.reference.as_deref()), (ProofState::Failed, Some("0xdef")));

    // Update of an unknown key: NotFound.
    assert!(matches!(
        s.update("x402", "unknown", ProofState::Settled, None).await,
        Err(StoreError::NotFound(_))
    ));

    // Release removes only Reserved.
    assert!(s.reserve("x402", "r1", far).await.unwrap());
    s.release("x402", "r1").await.unwrap();
    assert_eq!(s.get("x402", "r1").await.unwrap(), None);
    assert!(s.reserve("x402", "r1", far).await.unwrap(), "released key can be reserved again");
    assert!(s.reserve("x402", "p-kept", far).await.unwrap());
    s.update("x402", "p-kept", ProofState::Pending, Some("0x1")).await.unwrap();
    s.release("x402", "p-kept").await.unwrap();
    assert_eq!(s.get("x402", "p-kept").await.unwrap().unwrap().state, ProofState::Pending);
    assert!(s.reserve("x402", "s-kept", far).await.unwrap());
    s.update("x402", "s-kept", ProofState::Settled, Some("0x2")).await.unwrap();
    s.release("x402", "s-kept").await.unwrap();
    assert_eq!(s.get("x402", "s-kept").await.unwrap().unwrap().state, ProofState::Settled);
    s.release("x402", "never-seen").await.unwrap();

    // Pending lists only Pending records of that namespace.
    assert!(s.reserve("x402", "p-other", far).await.unwrap());
    s.update("x402", "p-other", ProofState::Pending, None).await.unwrap();
    assert!(s.reserve("mpp", "p-mpp", far).await.unwrap());
    s.update("mpp", "p-mpp", ProofState::Pending, Some("0xm")).await.unwrap();
    let pending = s.pending("x402").await.unwrap();
    let keys: Vec<&str> = pending.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["p-kept", "p-other"]);
    assert_eq!(pending[0].1.reference.as_deref(), Some("0x1"));
    assert!(pending.iter().all(|(_, r)| r.state == ProofState::Pending));
    let mpp = s.pending("mpp").await.unwrap();
    assert_eq!(mpp.len(), 1);
    assert_eq!(mpp[0].0, "p-mpp");
    assert!(s.pending("empty").await.unwrap().is_empty());

    // Namespaces are separate.
    assert!(s.reserve("ns-a", "same", far).await.unwrap());
    assert!(s.reserve("ns-b", "same", far).await.unwrap());
    s.update("ns-a", "same", ProofState::Settled, None).await.unwrap();
    assert_eq!(s.get("ns-b", "same").await.unwrap().unwrap().state, ProofState::Reserved);
    assert!(matches!(
        s.update("ns-c", "same", ProofState::Settled, None).await,
        Err(StoreError::NotFound(_))
    ));

    // purge_expired deletes only expired Reserved records.
    assert!(s.reserve("x402", "old-reserved", 100).await.unwrap());
    assert!(s.reserve("x402", "old-pending", 100).await.unwrap());
    s.update("x402", "old-pending", ProofState::Pending, None).await.unwrap();
    assert!(s.reserve("x402", "old-settled", 100).await.unwrap());
    s.update("x402", "old-settled", ProofState::Settled, None).await.unwrap();
    assert!(s.reserve("x402", "edge", 1000).await.unwrap());
    assert_eq!(s.purge_expired(1000).await.unwrap(), 1);
    assert_eq!(s.get("x402", "old-reserved").await.unwrap(), None);
    assert!(s.get("x402", "old-pending").await.unwrap().is_some());
    assert!(s.get("x402", "old-settled").await.unwrap().is_some());
    assert!(s.get("x402", "edge").await.unwrap().is_some(), "expires_at == now is kept");
    assert!(s.get("x402", "k1").await.unwrap().is_some());
    assert_eq!(s.purge_expired(1000).await.unwrap(), 0);

    // Keys are validated the same everywhere.
    let long = "k".repeat(513);
    assert!(matches!(s.reserve("x402", &long, far).await, Err(StoreError::Invalid(_))));
    assert!(matches!(s.reserve(&long, "k", far).await, Err(StoreError::Invalid(_))));
    assert!(matches!(s.get("x402", "").await, Err(StoreError::Invalid(_))));
    assert!(s.reserve("x402", &"k".repeat(512), far).await.unwrap());
    assert!(s.reserve("x402", "ключ-🔑", far).await.unwrap());
    assert!(s.get("x402", "ключ-🔑").await.unwrap().is_some());

    // Far-future expiry is clamped, not an error.
    assert!(s.reserve("x402", "forever", u64::MAX).await.unwrap());
    assert_eq!(s.get("x402", "forever").await.unwrap().unwrap().expires_at, i64::MAX as u64);
}
