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

use farebox_core::store::{
    SessionRecord, SessionStatus, SessionStore, Update, Versioned, update_session,
};

pub fn session(deposit: u128) -> SessionRecord {
    SessionRecord {
        status: SessionStatus::Open,
        deposit,
        accepted: 0,
        spent: 0,
        settled: 0,
        data: r#"{"payer":"0xabc"}"#.into(),
        updated_at: now(),
    }
}

/// `n` concurrent debits of 1 unit on one session over `stores` (round robin), each through
/// `update_session`; returns the final record. Every debit must land exactly once.
pub async fn concurrent_debits<S: SessionStore + ?Sized>(
    stores: &[Arc<S>],
    n: usize,
    id: &str,
) -> SessionRecord {
    let mut open = session(u128::MAX);
    open.accepted = u128::from(u64::MAX);
    assert!(stores[0].create_session("mpp", id, &open).await.unwrap());
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = Arc::clone(&stores[i % stores.len()]);
            let barrier = Arc::clone(&barrier);
            let id = id.to_owned();
            tokio::spawn(async move {
                barrier.wait().await;
                update_session::<_, (), StoreError>(&*store, "mpp", &id, |r| {
                    let mut next = r.clone();
                    next.spent += 1;
                    Ok(Update::Write(next, ()))
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("debit"), Some(()));
    }
    stores[0].load_session("mpp", id).await.unwrap().unwrap().value
}

/// The session half of the suite, against a fresh store.
pub async fn sessions_behave<S: SessionStore + ?Sized>(store: Arc<S>) {
    let s = &*store;
    let big = u128::MAX - 7; // amounts are u128 end to end
    let mut rec = session(big);
    assert!(s.create_session("mpp", "ch-1", &rec).await.unwrap());
    assert!(!s.create_session("mpp", "ch-1", &session(1)).await.unwrap(), "no overwrite");
    let Versioned { version, value } = s.load_session("mpp", "ch-1").await.unwrap().unwrap();
    assert_eq!((version, &value), (1, &rec));
    assert_eq!(s.load_session("mpp", "nope").await.unwrap(), None);
    assert_eq!(s.load_session("other-ns", "ch-1").await.unwrap(), None);

    // Compare-and-swap: the right version wins once, a stale one loses.
    rec.accepted = big - 1;
    rec.spent = 3;
    rec.status = SessionStatus::Closing;
    assert!(s.replace_session("mpp", "ch-1", 1, &rec).await.unwrap());
    assert!(!s.replace_session("mpp", "ch-1", 1, &session(0)).await.unwrap(), "stale version");
    assert!(!s.replace_session("mpp", "ghost", 1, &session(0)).await.unwrap(), "unknown id");
    let now = s.load_session("mpp", "ch-1").await.unwrap().unwrap();
    assert_eq!((now.version, now.value), (2, rec.clone()));

    // update_session: None for unknown ids, Keep writes nothing, Write bumps the version.
    let missing = update_session::<_, (), StoreError>(s, "mpp", "ghost", |_| unreachable!()).await;
    assert_eq!(missing, Ok(None));
    let kept = update_session::<_, _, StoreError>(s, "mpp", "ch-1", |r| Ok(Update::Keep(r.spent)));
    assert_eq!(kept.await, Ok(Some(3)));
    assert_eq!(s.load_session("mpp", "ch-1").await.unwrap().unwrap().version, 2);
    let wrote = update_session::<_, _, StoreError>(s, "mpp", "ch-1", |r| {
        let mut next = r.clone();
        next.status = SessionStatus::Closed;
        next.settled = 3;
        Ok(Update::Write(next, "closed"))
    });
    assert_eq!(wrote.await, Ok(Some("closed")));
    let closed = s.load_session("mpp", "ch-1").await.unwrap().unwrap();
    assert_eq!(
        (closed.version, closed.value.status, closed.value.settled),
        (3, SessionStatus::Closed, 3)
    );
    // A step's error is returned and nothing is written.
    let refused = update_session::<_, (), StoreError>(s, "mpp", "ch-1", |_| {
        Err(StoreError::Invalid("refused".into()))
    });
    assert!(matches!(refused.await, Err(StoreError::Invalid(_))));
    assert_eq!(s.load_session("mpp", "ch-1").await.unwrap().unwrap().version, 3);

    // Idle sweeps: by namespace, status and age, oldest first, limited.
    for (id, age, status) in [
        ("idle-a", 500, SessionStatus::Open),
        ("idle-b", 400, SessionStatus::Open),
        ("fresh", 0, SessionStatus::Open),
        ("idle-closed", 900, SessionStatus::Closed),
    ] {
        let mut r = session(10);
        r.status = status;
        r.updated_at = 10_000 - age;
        assert!(s.create_session("sweep", id, &r).await.unwrap());
    }
    let idle = s.idle_sessions("sweep", SessionStatus::Open, 10_000 - 100, 10).await.unwrap();
    let ids: Vec<&str> = idle.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["idle-a", "idle-b"]);
    assert_eq!(idle[0].1.version, 1);
    let one = s.idle_sessions("sweep", SessionStatus::Open, 10_000, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, "idle-a");
    let closed = s.idle_sessions("sweep", SessionStatus::Closed, u64::MAX, 10).await.unwrap();
    assert_eq!(closed.len(), 1);

    // Ids and data are validated the same everywhere.
    assert!(matches!(s.create_session("mpp", "", &session(1)).await, Err(StoreError::Invalid(_))));
    let mut huge = session(1);
    huge.data = "x".repeat(farebox_store::MAX_SESSION_DATA_LEN + 1);
    assert!(matches!(s.create_session("mpp", "huge", &huge).await, Err(StoreError::Invalid(_))));
    let mut nul = session(1);
    nul.data = "a\0b".into();
    assert!(matches!(s.create_session("mpp", "nul", &nul).await, Err(StoreError::Invalid(_))));
    let mut empty = session(1);
    empty.data = String::new();
    assert!(s.create_session("mpp", "empty-data", &empty).await.unwrap());

    // Concurrent debits on one session all land, once each.
    assert_eq!(concurrent_debits(&[Arc::clone(&store)], 48, "hot").await.spent, 48);
}

use farebox_core::store::{Hold, HoldOutcome};

/// `n` concurrent reservations of distinct keys holding `price` each of one account over
/// `stores` (round robin), against `balance` (`None`: unknown); returns how many were reserved.
pub async fn hold_race<S: ReplayStore + ?Sized>(
    stores: &[Arc<S>],
    n: usize,
    account: &str,
    price: u128,
    balance: Option<u128>,
) -> usize {
    let far = now() + 3600;
    let mark = stores[0].settled_mark().await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = Arc::clone(&stores[i % stores.len()]);
            let barrier = Arc::clone(&barrier);
            let account = account.to_owned();
            tokio::spawn(async move {
                let hold = Hold { account: &account, amount: price, balance, mark, until: far };
                barrier.wait().await;
                store.reserve_hold("x402", &format!("{account}-{i}"), far, &hold).await
            })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        match t.await.expect("task").expect("reserve_hold") {
            HoldOutcome::Reserved => reserved += 1,
            HoldOutcome::Insufficient { .. } => {}
            HoldOutcome::Duplicate => panic!("distinct keys are never duplicates"),
        }
    }
    reserved
}

/// The hold half of the suite (see `ReplayStore::reserve_hold`), against a fresh store.
pub async fn holds_behave<S: ReplayStore + ?Sized>(store: Arc<S>) {
    use HoldOutcome::{Duplicate, Insufficient, Reserved};
    let s = &*store;
    let far = now() + 3600;
    let mark = s.settled_mark().await.unwrap();
    let hold = |account, amount, balance| Hold { account, amount, balance, mark, until: far };
    let reserve = |ns: &'static str, key: &'static str, h: Hold<'static>| async move {
        s.reserve_hold(ns, key, far, &h).await.unwrap()
    };

    // Balance unknown: one payment of the account in flight, no more.
    assert_eq!(reserve("x402", "a1", hold("acct-a", 100, None)).await, Reserved);
    let rec = s.get("x402", "a1").await.unwrap().unwrap();
    assert_eq!((rec.state, rec.account.as_deref()), (ProofState::Reserved, Some("acct-a")));
    assert_eq!(reserve("x402", "a2", hold("acct-a", 100, None)).await, Insufficient { held: 100 });
    assert_eq!(s.get("x402", "a2").await.unwrap(), None, "a refused hold records nothing");
    // A known balance: as many as it covers.
    assert_eq!(reserve("x402", "a2", hold("acct-a", 100, Some(250))).await, Reserved);
    assert_eq!(
        reserve("x402", "a3", hold("acct-a", 100, Some(250))).await,
        Insufficient { held: 200 }
    );
    assert_eq!(reserve("x402", "a3", hold("acct-a", 100, Some(300))).await, Reserved);
    // A recorded key is a duplicate, whatever the balance; plain reserve sees it too.
    assert_eq!(reserve("x402", "a1", hold("acct-a", 1, Some(u128::MAX))).await, Duplicate);
    assert!(!s.reserve("x402", "a1", far).await.unwrap());
    // Accounts are separate; namespaces are not: every rail holds against the same funds.
    assert_eq!(reserve("mpp", "b1", hold("acct-b", 100, None)).await, Reserved);
    assert_eq!(
        reserve("mpp", "a4", hold("acct-a", 100, Some(300))).await,
        Insufficient { held: 300 }
    );
    // A balance below the amount refuses even with nothing held.
    assert_eq!(
        reserve("x402", "c1", hold("acct-c", 100, Some(99))).await,
        Insufficient { held: 0 }
    );

    // Released and failed payments hold nothing; pending ones still do.
    s.release("x402", "a3").await.unwrap();
    s.update("x402", "a2", ProofState::Failed, Some("0xreverted")).await.unwrap();
    s.update("x402", "a1", ProofState::Pending, Some("0xsent")).await.unwrap();
    assert_eq!(
        reserve("x402", "a5", hold("acct-a", 100, Some(150))).await,
        Insufficient { held: 100 }
    );
    assert_eq!(reserve("x402", "a5", hold("acct-a", 50, Some(150))).await, Reserved);

    // Settled: held for a balance read before the settlement, not for one read after it.
    let before = s.settled_mark().await.unwrap();
    s.update("x402", "a1", ProofState::Settled, None).await.unwrap();
    let after = s.settled_mark().await.unwrap();
    assert!(after > before, "a settlement with a hold is numbered");
    let stale = Hold { mark: before, ..hold("acct-a", 50, Some(150)) };
    assert_eq!(
        s.reserve_hold("x402", "a6", far, &stale).await.unwrap(),
        Insufficient { held: 150 }
    );
    let fresh = Hold { mark: after, ..hold("acct-a", 50, Some(100)) };
    assert_eq!(s.reserve_hold("x402", "a6", far, &fresh).await.unwrap(), Reserved);
    // Settling again keeps the number; settling a record without a hold gives none.
    s.update("x402", "a1", ProofState::Settled, Some("0xmined")).await.unwrap();
    assert!(s.reserve("x402", "plain", far).await.unwrap());
    s.update("x402", "plain", ProofState::Settled, None).await.unwrap();
    assert_eq!(s.settled_mark().await.unwrap(), after);
    assert_eq!(s.get("x402", "plain").await.unwrap().unwrap().account, None);

    // A lapsed hold (its request crashed) counts no more.
    let lapsed = Hold { until: now() - 10, ..hold("acct-d", 100, None) };
    assert_eq!(s.reserve_hold("x402", "d1", far, &lapsed).await.unwrap(), Reserved);
    assert_eq!(reserve("x402", "d2", hold("acct-d", 100, None)).await, Reserved);
    assert_eq!(
        s.get("x402", "d1").await.unwrap().unwrap().state,
        ProofState::Reserved,
        "the proof itself stays spent"
    );

    // Amounts are u128 end to end.
    let big = u128::MAX / 2;
    assert_eq!(reserve("x402", "e1", hold("acct-e", big, Some(u128::MAX))).await, Reserved);
    assert_eq!(reserve("x402", "e2", hold("acct-e", big, Some(u128::MAX))).await, Reserved);
    assert_eq!(
        reserve("x402", "e3", hold("acct-e", 2, Some(u128::MAX))).await,
        Insufficient { held: big * 2 }
    );

    // Accounts are validated like keys.
    for bad in ["", "a\0b"] {
        let h = Hold { account: bad, ..hold("x", 1, None) };
        assert!(matches!(s.reserve_hold("x402", "f1", far, &h).await, Err(StoreError::Invalid(_))));
    }

    // Concurrency: of 40 payments of one account, exactly as many as the balance covers.
    let shared = [Arc::clone(&store)];
    assert_eq!(hold_race(&shared, 40, "race-known", 10, Some(30)).await, 3);
    assert_eq!(hold_race(&shared, 40, "race-unknown", 10, None).await, 1);
}
