//! The payment log: every paid answer the gateway gives, written to the gateway's database
//! ([`crate::db`]) by a task of its own, so that a paid request never waits for the write.
//!
//! A paid answer hands its payment to [`PaymentLog::record`] (a bounded channel) and goes on.
//! The writer gathers what arrives within [`COALESCE`] of the first payment (or until a
//! [`PaymentLog::flush`]) and records it in one transaction; it sleeps meanwhile, rather than
//! wake for each payment (a task wake-up per paid request): under load that is one commit (one
//! fsync) per [`COALESCE`] instead of one per request or two, which had halved the throughput of
//! L402 routes, where every request is logged. When the database cannot answer, the batch is
//! kept and retried every [`RETRY`] (at most [`MAX_PENDING`] payments are held; beyond, the
//! oldest are dropped and counted as backend errors).
//!
//! **Durability.** What is queued lives in memory until its commit: a crash loses the entries
//! of the last [`COALESCE`] (and, while the database is unreachable, those held for a retry).
//! A graceful shutdown loses none: once no request is in flight, `Gateway::serve` drains every
//! writer ([`Writer::drain`]) before it returns.
//! Nothing else depends on this log. The money is not at stake: the rails' own records (the
//! replay store, the chain, the Lightning node, the L402 token store) are the books and decide
//! what is served; no rail reads this log, so a lost entry never lets a payment be replayed.
//! This log is what the admin API and the status page show.
//!
//! **Counting.** The Prometheus payment and revenue counters are not driven by this log: the
//! request path counts a payment when it decides the paid answer (see `gateway::priced`), so
//! they never lag the answer. An L402 token is a payment once, at its first paid answer on any
//! instance: the request path claims that answer in the token table
//! ([`GatewayDb::claim_token`], once per token and instance, remembered in
//! [`crate::l402_token::SeenTokens`]). Only an answer whose claim could not be made then (the
//! database did not answer: [`Kind::Unclaimed`]) is claimed by the writer, and counted when
//! that claim turns out to be the first.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::db::{GatewayDb, Kind, Logged, Recorded};
use crate::metrics::Metrics;

/// Payments queued for the writer before [`PaymentLog::record`] drops them.
const QUEUE: usize = 16 * 1024;
/// Most payments held while the database is unreachable.
pub const MAX_PENDING: usize = 64 * 1024;
/// Most payments written in one transaction.
const MAX_BATCH: usize = 1024;
/// How often a failed batch is retried.
pub const RETRY: Duration = Duration::from_secs(1);
/// How long the writer gathers payments after the first before writing them (the admin API and
/// the status page, which polls every second, see them that much later; a crash loses them).
pub const COALESCE: Duration = Duration::from_millis(50);

enum Msg {
    Paid(Box<Logged>),
    Flush(oneshot::Sender<()>),
}

/// The sending side of the payment log. Dropping every clone ends the writer once it has
/// written what was queued.
#[derive(Clone)]
pub struct PaymentLog {
    tx: mpsc::Sender<Msg>,
    /// Cuts the writer's gathering short for a flush.
    flushing: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Closed when the writer ends.
    running: watch::Receiver<()>,
}

impl PaymentLog {
    /// Starts the writer over `db`.
    pub fn start(db: GatewayDb, metrics: Arc<Metrics>) -> PaymentLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (alive, running) = watch::channel(());
        let flushing = Arc::new(Notify::new());
        let (counted, woken) = (metrics.clone(), flushing.clone());
        tokio::spawn(async move {
            writer(db, counted, rx, woken).await;
            drop(alive);
        });
        PaymentLog { tx, flushing, metrics, running }
    }

    /// The writer, as a shutdown waits on it, without keeping it running.
    pub fn writer(&self) -> Writer {
        Writer {
            tx: self.tx.downgrade(),
            flushing: self.flushing.clone(),
            running: self.running.clone(),
        }
    }

    /// Queues a payment; never waits. A full queue drops it (logged, counted as an error).
    pub fn record(&self, payment: Logged) {
        if self.tx.try_send(Msg::Paid(Box::new(payment))).is_err() {
            tracing::warn!("payment log queue full: a payment was not logged");
            self.metrics.backend_error("payment_log");
        }
    }

    /// Waits until everything queued before this call is written (or `within` passed).
    pub async fn flush(&self, within: Duration) -> bool {
        tokio::time::timeout(within, flush(&self.tx, &self.flushing)).await.unwrap_or(false)
    }
}

/// Waits until everything queued on `tx` before this call is written.
async fn flush(tx: &mpsc::Sender<Msg>, flushing: &Notify) -> bool {
    let (done, wait) = oneshot::channel();
    if tx.send(Msg::Flush(done)).await.is_err() {
        return false;
    }
    flushing.notify_one();
    wait.await.is_ok()
}

/// A payment log's writer, held by a shutdown that must not end before it has written what it
/// was given (see the module docs), and that must not keep it running either (a configuration
/// that a reload replaced ends its writer once its last request is answered).
pub struct Writer {
    tx: mpsc::WeakSender<Msg>,
    flushing: Arc<Notify>,
    running: watch::Receiver<()>,
}

impl Writer {
    /// Whether the writer has ended (everything it was given is written, or given up).
    pub fn has_ended(&self) -> bool {
        self.running.has_changed().is_err()
    }

    /// Waits until everything queued so far is written (or `within` passed): a flush while the
    /// log is in use, else the writer's end, which comes once it has written what it holds.
    pub async fn drain(&self, within: Duration) -> bool {
        let drained = async {
            match self.tx.upgrade() {
                Some(tx) => flush(&tx, &self.flushing).await,
                None => {
                    let mut running = self.running.clone();
                    while running.changed().await.is_ok() {}
                    true
                }
            }
        };
        tokio::time::timeout(within, drained).await.unwrap_or(false)
    }
}

enum Next {
    Msg(Msg),
    /// A held batch's retry is due.
    Due,
    /// Every sender is gone.
    Closed,
}

async fn writer(
    db: GatewayDb,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Msg>,
    flushing: Arc<Notify>,
) {
    let mut pending: Vec<Logged> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let take = |m: Msg, pending: &mut Vec<Logged>, waiting: &mut Vec<oneshot::Sender<()>>| match m {
        Msg::Paid(p) => pending.push(*p),
        Msg::Flush(done) => waiting.push(done),
    };
    loop {
        let next = if pending.is_empty() && waiting.is_empty() {
            match rx.recv().await {
                Some(m) => Next::Msg(m),
                None => Next::Closed,
            }
        } else if let (Some(at), true) = (retry_at, open) {
            // A batch is held: take more until its retry is due.
            match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(Some(m)) => Next::Msg(m),
                Ok(None) => Next::Closed,
                Err(_) => Next::Due,
            }
        } else {
            Next::Due
        };
        match next {
            Next::Msg(m) => {
                let first = pending.is_empty() && retry_at.is_none();
                take(m, &mut pending, &mut waiting);
                // Gather for a moment after the first payment, unless someone waits on a flush:
                // asleep, what arrives meanwhile is taken below.
                if first && open && waiting.is_empty() {
                    tokio::select! {
                        () = tokio::time::sleep(COALESCE) => {}
                        () = flushing.notified() => {}
                    }
                }
            }
            Next::Closed if pending.is_empty() => break,
            Next::Closed => open = false,
            Next::Due => {}
        }
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => take(m, &mut pending, &mut waiting),
                Err(_) => break,
            }
        }
        if open && retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
            continue;
        }
        if pending.len() > MAX_PENDING {
            let dropped = pending.len() - MAX_PENDING;
            pending.drain(..dropped);
            tracing::warn!(
                dropped,
                "payment log: the database is unreachable; oldest payments dropped"
            );
            for _ in 0..dropped {
                metrics.backend_error("payment_log");
            }
        }
        let batch = pending.len().min(MAX_BATCH);
        if batch > 0 {
            match db.record(&pending[..batch]).await {
                Ok(outcome) => {
                    retry_at = None;
                    // The request path counted every other payment when it answered.
                    for (e, what) in pending.iter().zip(outcome) {
                        if e.kind == Kind::Unclaimed && what == Recorded::Payment {
                            let row = &e.row;
                            let amount = row.amount.parse::<u128>().unwrap_or(0);
                            metrics.payment(&row.rail, &row.route, &row.asset, amount);
                        }
                    }
                    pending.drain(..batch);
                }
                Err(e) => {
                    tracing::warn!(error = %e, held = pending.len(), "payment log: cannot write; retrying");
                    metrics.backend_error("store");
                    if !open {
                        break; // shutting down and the database is gone
                    }
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                    continue;
                }
            }
        }
        if pending.is_empty() {
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PaymentRow;

    fn row(id: &str, rail: &str, token: Option<&str>) -> PaymentRow {
        PaymentRow {
            id: id.into(),
            at_ms: 1_700_000_000_000,
            rail: rail.into(),
            route: "/joke".into(),
            method: "GET".into(),
            path: "/joke".into(),
            asset: "msat".into(),
            amount: "10000".into(),
            reference: "ab".repeat(32),
            payer: None,
            token_id: token.map(str::to_string),
            instance: "test".into(),
        }
    }

    /// A database in a temporary directory, and metrics.
    async fn open() -> (tempfile::TempDir, GatewayDb, Arc<Metrics>) {
        let dir = tempfile::tempdir().unwrap();
        let db = GatewayDb::sqlite(&dir.path().join("g.sqlite")).await.unwrap();
        (dir, db, Arc::new(Metrics::new()))
    }

    fn logged(row: PaymentRow, kind: Kind) -> Logged {
        Logged { row, kind }
    }

    #[tokio::test]
    async fn an_l402_token_is_one_payment_however_often_it_is_used() {
        let (_dir, db, metrics) = open().await;
        let log = PaymentLog::start(db.clone(), metrics.clone());
        // The request path claims the token's first paid answer, and only that one.
        assert!(db.claim_token(&row("a", "l402", Some("t1"))).await.unwrap());
        assert!(!db.claim_token(&row("b", "l402", Some("t1"))).await.unwrap());
        log.record(logged(row("a", "l402", Some("t1")), Kind::Payment));
        log.record(logged(row("b", "l402", Some("t1")), Kind::TokenUse));
        log.record(logged(row("c", "mpp", None), Kind::Payment));
        assert!(log.flush(Duration::from_secs(5)).await);
        let payments = db.recent_payments(10).await.unwrap();
        assert_eq!(payments.len(), 2, "{payments:?}");
        let revenue = db.revenue().await.unwrap();
        let total: u128 = revenue.iter().map(|r| r.amount).sum();
        assert_eq!(total, 20_000);
        let tokens = db.tokens(10).await.unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].uses, 2);
        // The request path counted those payments when it answered; the log counts none again.
        assert_eq!(metrics.counter("farebox_gateway_payments_total", &[]), 0);
        // A retried batch is not counted twice.
        let again = db.record(&[logged(row("c", "mpp", None), Kind::Payment)]).await.unwrap();
        assert_eq!(again, vec![Recorded::Duplicate]);
        assert_eq!(db.revenue().await.unwrap().iter().map(|r| r.amount).sum::<u128>(), 20_000);
    }

    #[tokio::test]
    async fn a_token_the_request_path_could_not_claim_is_one_payment_counted_by_the_log() {
        let (_dir, db, metrics) = open().await;
        let log = PaymentLog::start(db.clone(), metrics.clone());
        assert!(db.claim_token(&row("a", "l402", Some("t1"))).await.unwrap());
        log.record(logged(row("a", "l402", Some("t1")), Kind::Payment));
        // Answered while the database did not answer the claims.
        log.record(logged(row("b", "l402", Some("t1")), Kind::Unclaimed));
        log.record(logged(row("c", "l402", Some("t2")), Kind::Unclaimed));
        log.record(logged(row("d", "l402", Some("t2")), Kind::Unclaimed));
        assert!(log.flush(Duration::from_secs(5)).await);
        let payments = db.recent_payments(10).await.unwrap();
        let ids: Vec<&str> = payments.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["c", "a"], "each token once, at its first paid answer");
        assert_eq!(metrics.counter("farebox_gateway_payments_total", &[]), 1, "t2, by the log");
        assert_eq!(metrics.counter("farebox_gateway_revenue_total", &[]), 10_000);
        let mut uses: Vec<i64> = db.tokens(10).await.unwrap().iter().map(|t| t.uses).collect();
        uses.sort();
        assert_eq!(uses, [2, 2]);
    }

    #[tokio::test]
    async fn a_drained_writer_has_written_what_it_was_given_in_use_or_replaced() {
        let (_dir, db, metrics) = open().await;
        // In use: the drain is a flush, well within the 50 ms the writer would gather.
        let log = PaymentLog::start(db.clone(), metrics.clone());
        log.record(logged(row("a", "mpp", None), Kind::Payment));
        let writer = log.writer();
        assert!(writer.drain(Duration::from_secs(5)).await);
        assert_eq!(db.recent_payments(10).await.unwrap().len(), 1);
        assert!(!writer.has_ended(), "the log is still in use");
        // Replaced (a reload): its last sender is gone; the drain waits for the writer's end.
        log.record(logged(row("b", "mpp", None), Kind::Payment));
        drop(log);
        assert!(writer.drain(Duration::from_secs(5)).await);
        assert!(writer.has_ended());
        assert_eq!(db.recent_payments(10).await.unwrap().len(), 2);
    }
}
