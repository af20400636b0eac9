//! The rail contract kit against a small single-use ticket rail: the honest rail passes every
//! clause, and each flaw a rail could have fails the clause that names it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::auth::AuthChallenge;
use farebox_core::{
    Challenge, Money, PaymentError, PresentedCredential, Price, Rail, Receipt, Refusal, Resource,
    Settlement, Verdict, Verified,
};
use farebox_server::testing::{Exchange, Outcome, RailHarness, check_rail, proof};
use http::{HeaderName, HeaderValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// Never marks a ticket used.
    ServesReplays,
    /// Treats what it cannot read as its own failure (500).
    InternalOnGarbage,
    /// Keeps a ticket spent although its request was not served.
    NeverReleases,
    /// Settles "successfully" without its backend.
    SettlesBlind,
    /// Serves on a ticket when it cannot check it.
    ServesWhenDown,
    /// Takes a ticket bought for one price as payment of any price.
    IgnoresPrice,
}

#[derive(Default)]
struct Tickets {
    /// Each ticket issued, and the price it was issued for.
    issued: HashMap<String, u128>,
    used: HashSet<String>,
}

struct TicketRail {
    flaw: Flaw,
    up: AtomicBool,
    tickets: Mutex<Tickets>,
}

impl TicketRail {
    fn down() -> PaymentError {
        PaymentError::unavailable(
            "ticket_office_closed",
            "the ticket office is down",
            Duration::from_secs(3),
        )
    }
}

#[async_trait]
impl Rail for TicketRail {
    fn name(&self) -> &'static str {
        "ticket"
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        &["Ticket"]
    }

    async fn challenge(
        &self,
        resource: &Resource,
        _refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError> {
        let Some(price) = resource.price.in_bitcoin() else { return Ok(None) };
        let ticket = format!("t{}", rand_u64());
        self.tickets.lock().unwrap().issued.insert(ticket.clone(), price.amount);
        let line = AuthChallenge::new("Ticket")
            .param("ticket", ticket)
            .param("amount_msat", price.amount.to_string());
        let value =
            line.to_header_value().map_err(|e| PaymentError::internal("header", e.to_string()))?;
        Ok(Some(Challenge { www_authenticate: vec![value], ..Default::default() }))
    }

    async fn verify(
        self: Arc<Self>,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        let ticket = credential.auth.as_ref().and_then(|a| a.token.clone());
        let bought =
            ticket.as_ref().and_then(|t| self.tickets.lock().unwrap().issued.get(t).copied());
        let (Some(ticket), Some(bought)) = (ticket, bought) else {
            return Err(if self.flaw == Flaw::InternalOnGarbage {
                PaymentError::internal("ticket_parse", "could not read the ticket")
            } else {
                PaymentError::invalid("unknown_ticket", "no such ticket was issued")
            });
        };
        if !self.up.load(Ordering::SeqCst) && self.flaw != Flaw::ServesWhenDown {
            return Err(Self::down());
        }
        if self.flaw != Flaw::ServesReplays
            && !self.tickets.lock().unwrap().used.insert(ticket.clone())
        {
            return Err(PaymentError::invalid("used_ticket", "this ticket was used"));
        }
        let amount = resource.price.in_bitcoin().cloned().expect("challenged in bitcoin");
        if bought < amount.amount && self.flaw != Flaw::IgnoresPrice {
            return Err(PaymentError::invalid("underpaid", "the ticket was bought for less"));
        }
        Ok(Verdict::Payment(Verified::new(
            amount,
            None,
            ticket.clone(),
            Stub { rail: self, ticket },
        )))
    }
}

/// A verified ticket.
struct Stub {
    rail: Arc<TicketRail>,
    ticket: String,
}

#[async_trait]
impl Settlement for Stub {
    async fn settle(
        self: Box<Self>,
        _resource: &Resource,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError> {
        if !self.rail.up.load(Ordering::SeqCst) && self.rail.flaw != Flaw::SettlesBlind {
            return Err(TicketRail::down());
        }
        Ok(Receipt::new(amount, reference, Vec::new()))
    }

    async fn release(self: Box<Self>, _resource: &Resource) {
        if self.rail.flaw != Flaw::NeverReleases {
            self.rail.tickets.lock().unwrap().used.remove(&self.ticket);
        }
    }
}

struct Harness(Arc<TicketRail>);

#[async_trait]
impl RailHarness for Harness {
    fn rail(&self) -> Arc<dyn Rail> {
        self.0.clone()
    }

    fn price(&self) -> Price {
        Price::one(Money::sats(3))
    }

    async fn pay(
        &self,
        _url: &str,
        required: &Exchange,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let line = required.challenge_lines().next().ok_or("no challenge")?;
        let ticket = line.split("ticket=\"").nth(1).and_then(|t| t.split('"').next());
        let ticket = ticket.ok_or("no ticket in the challenge")?;
        proof(http::header::AUTHORIZATION, &format!("Ticket {ticket}"))
    }

    fn settles_on_backend(&self) -> bool {
        true
    }

    async fn set_backend(&self, up: bool) {
        self.0.up.store(up, Ordering::SeqCst);
    }
}

/// Ticket numbers: unique in the process is all the rail needs.
fn rand_u64() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

async fn failures(flaw: Flaw) -> Vec<&'static str> {
    let rail = Arc::new(TicketRail { flaw, up: AtomicBool::new(true), tickets: Mutex::default() });
    let clauses = check_rail(Arc::new(Harness(rail))).await;
    assert_eq!(clauses.len(), 7, "every clause is reported");
    assert!(clauses.iter().all(|c| !matches!(c.outcome, Outcome::NotApplicable(_))), "{clauses:?}");
    for clause in &clauses {
        eprintln!("{flaw:?}: {clause}");
    }
    clauses.iter().filter(|c| matches!(c.outcome, Outcome::Fail(_))).map(|c| c.name).collect()
}

#[tokio::test]
async fn an_honest_rail_keeps_every_clause() {
    assert_eq!(failures(Flaw::None).await, Vec::<&str>::new());
}

#[tokio::test]
async fn each_flaw_breaks_the_clause_that_names_it() {
    assert_eq!(failures(Flaw::ServesReplays).await, ["accepts_a_proof_once"]);
    assert_eq!(failures(Flaw::InternalOnGarbage).await, ["refuses_garbage"]);
    assert_eq!(failures(Flaw::NeverReleases).await, ["releases_on_handler_failure"]);
    assert_eq!(failures(Flaw::SettlesBlind).await, ["never_serves_on_settle_failure"]);
    assert_eq!(failures(Flaw::ServesWhenDown).await, ["outage_is_503"]);
    assert_eq!(failures(Flaw::IgnoresPrice).await, ["pays_the_price_asked"]);
}
