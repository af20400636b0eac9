//! What the client does, step by step, for people and logs to follow (the demo prints these).

use farebox_core::Money;

/// One step of paying for a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A saved reusable proof (an L402 token) is sent with the request up front.
    ReusingProof { url: String, rail: &'static str },
    /// The server answered 402: its challenge header lines as sent (`WWW-Authenticate: …`,
    /// `PAYMENT-REQUIRED: …`), and the offers this client's wallets can pay (rail, price,
    /// summary).
    PaymentRequired {
        url: String,
        challenges: Vec<String>,
        offers: Vec<(&'static str, Money, String)>,
    },
    /// The client chose an offer (reserved in the budget): which, and why this one.
    Chose { rail: &'static str, price: Money, reason: String },
    /// The client chose an offer and is paying it.
    Paying { rail: &'static str, price: Money, summary: String },
    /// The payment went through.
    Paid { rail: &'static str, price: Money, fee: Money, reference: String },
    /// The request is being sent again with the proof.
    Retrying { url: String, rail: &'static str },
    /// The server answered the paid request.
    Served { url: String, status: u16 },
}

/// Receives [`Event`]s. Implemented for closures.
pub trait Observer: Send + Sync + 'static {
    fn on_event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync + 'static> Observer for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}
