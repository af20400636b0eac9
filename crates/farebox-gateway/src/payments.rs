//! The payment log: every payment the gateway takes, written to the gateway's database
//! ([`crate::db`]) by a task of its own, so that a paid request never waits for the write.
//!
//! A paid answer hands its payment to [`PaymentLog::record`] (a bounded channel) and goes on.
//! The writer takes whatever has queued up meanwhile and records it in one transaction; under
//! load batches grow by themselves, with no timer. When the database cannot answer, the batch is
//! kept and retried every [`RETRY`] (at most [`MAX_PENDING`] payments are held; beyond, the
//! oldest are dropped and counted as backend errors). The money itself is not at stake there:
//! the rails' own records (the replay store, the chain, the Lightning node) are the books; this
//! log is what the admin API and the status page show.
//!
//! What the writer records also drives the Prometheus payment and revenue counters, so that an
//! L402 token counts as a payment once, at its first use on any instance, and later uses of it
//! only as paid requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::db::{GatewayDb, PaymentRow, Recorded};
use crate::metrics::Metrics;

/// Payments queued for the writer before [`PaymentLog::record`] drops them.
const QUEUE: usize = 16 * 1024;
/// Most payments held while the database is unreachable.
pub const MAX_PENDING: usize = 64 * 1024;
/// Most payments written in one transaction.
const MAX_BATCH: usize = 1024;
/// How often a failed batch is retried.
pub const RETRY: Duration = Duration::from_secs(1);

enum Msg {
    Paid(Box<PaymentRow>),
    Flush(oneshot::Sender<()>),
}

/// The sending side of the payment log. Dropping every clone ends the writer once it has
/// written what was queued.
#[derive(Clone)]
pub struct PaymentLog {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
}

impl PaymentLog {
    /// Starts the writer over `db`.
    pub fn start(db: GatewayDb, metrics: Arc<Metrics>) -> PaymentLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(db, metrics.clone(), rx));
        PaymentLog { tx, metrics }
    }

    /// Queues a payment; never waits. A full queue drops it (logged, counted as an error).
    pub fn record(&self, payment: PaymentRow) {
        if self.tx.try_send(Msg::Paid(Box::new(payment))).is_err() {
            tracing::warn!("payment log queue full: a payment was not logged");
            self.metrics.backend_error("payment_log");
        }
    }

    /// Waits until everything queued before this call is written (or `within` passed).
    pub async fn flush(&self, within: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, wait).await, Ok(Ok(())))
    }
}

enum Next {
    Msg(Msg),
    /// A held batch's retry is due.
    Due,
    /// Every sender is gone.
    Closed,
}

async fn writer(db: GatewayDb, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Msg>) {
    let mut pending: Vec<PaymentRow> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let take =
        |m: Msg, pending: &mut Vec<PaymentRow>, waiting: &mut Vec<oneshot::Sender<()>>| match m {
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
            Next::Msg(m) => take(m, &mut pending, &mut waiting),
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
                    for (row, what) in pending.iter().zip(outcome) {
                        if what == Recorded::Payment {
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

    #[tokio::test]
    async fn an_l402_token_is_one_payment_however_often_it_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let db = GatewayDb::sqlite(&dir.path().join("g.sqlite")).await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let log = PaymentLog::start(db.clone(), metrics.clone());
        log.record(row("a", "l402", Some("t1")));
        log.record(row("b", "l402", Some("t1")));
        log.record(row("c", "mpp", None));
        assert!(log.flush(Duration::from_secs(5)).await);
        let payments = db.recent_payments(10).await.unwrap();
        assert_eq!(payments.len(), 2, "{payments:?}");
        let revenue = db.revenue().await.unwrap();
        let total: u128 = revenue.iter().map(|r| r.amount).sum();
        assert_eq!(total, 20_000);
        let tokens = db.tokens(10).await.unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].uses, 2);
        assert_eq!(metrics.counter("farebox_gateway_revenue_total", &[("rail", "l402")]), 10_000);
        // A retried batch is not counted twice.
        assert_eq!(db.record(&[row("c", "mpp", None)]).await.unwrap(), vec![Recorded::Duplicate]);
        assert_eq!(db.revenue().await.unwrap().iter().map(|r| r.amount).sum::<u128>(), 20_000);
    }
}
