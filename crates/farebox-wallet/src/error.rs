//! What can go wrong when paying for a request.

use farebox_core::Money;

/// A typed client failure. Returned inside `reqwest_middleware::Error::Middleware`; get it back
/// with `err.downcast_ref::<ClientError>()` or [`ClientError::from_middleware`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The price plus the most the rail may charge in fees does not fit the budget. Nothing
    /// was paid.
    #[error("over budget: {price} (fees included, at most) exceeds {limit}")]
    OverBudget { price: Box<Money>, limit: String },
    /// The 402 offered nothing this client has a wallet for.
    #[error("no payable offer: {0}")]
    NoPayableOffer(String),
    /// A challenge could not be understood (bad invoice, bad header…). Nothing was paid.
    #[error("invalid challenge from the server: {0}")]
    InvalidChallenge(String),
    /// The wallet failed to pay. Nothing was spent.
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    /// Money left, or may have (the wallet's answer was lost or unusable), but there is no
    /// proof to send. The payment is in the ledger and counted against the budget at its most.
    #[error("paid, but without a usable proof: {0}")]
    PaidWithoutProof(String),
    /// The server refused the proof of a payment that was made; the ledger has the payment.
    #[error("the server refused the payment proof (status {status}): {detail}")]
    ProofRejected { status: u16, detail: String },
    /// A session offer breaks the wallet's session policy (an escrow it does not allow, a
    /// deposit above its cap, another chain). Nothing was paid.
    #[error("session refused by the wallet's policy: {0}")]
    SessionRefused(String),
    /// A session server claimed more spent than the wallet ever signed for (in a receipt or a
    /// 402). The wallet closed the session with a voucher for what it signed, so the server can
    /// take no more.
    #[error(
        "the server claims {} spent on session {}, but the wallet signed only {}",
        .0.claimed,
        .0.session,
        .0.signed
    )]
    Overclaimed(Box<Overclaim>),
    /// A server said money came back (a session refund) that the chain or the wallet's own node
    /// does not show. Nothing was credited to the budget.
    #[error("a refund the server reported could not be verified: {0}")]
    RefundUnproven(String),
    /// Something the client needs in order to pay cannot answer: the wallet's Lightning node,
    /// its chain, or the budget store. Nothing was paid (fail closed).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The wallet's Lightning backend refused farebox's credentials (a macaroon, rune, API key
    /// or NWC connection it does not know) or does not allow this operation. Nothing was paid;
    /// retrying does not help until the wallet's configuration is fixed.
    #[error("the wallet refused: {0}")]
    WalletRefused(String),
    /// The payment policy refuses to pay this host or offer (a host not on the allowed list).
    /// Nothing was paid.
    #[error("refused by the payment policy: {0}")]
    PolicyRefused(String),
    /// The request body is a stream and cannot be sent twice.
    #[error("the request body cannot be replayed after the 402; use a buffered body")]
    BodyNotReplayable,
    #[error("invalid client configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// A clock before 1970: no deadline can be judged, so nothing is paid.
impl From<farebox_core::time::ClockError> for ClientError {
    fn from(e: farebox_core::time::ClockError) -> Self {
        ClientError::PaymentFailed(e.to_string())
    }
}

/// What a server claimed beyond what the wallet signed ([`ClientError::Overclaimed`]).
#[derive(Debug, Clone)]
pub struct Overclaim {
    /// The channel id.
    pub session: String,
    /// What the server claimed spent (at least).
    pub claimed: Money,
    /// The most the wallet signed on the channel.
    pub signed: Money,
    /// Whether the close at what was signed went through; if not, the session stays in the
    /// wallet, paying nothing more, for a later close of all sessions to retry.
    pub closed: bool,
}

impl ClientError {
    /// How a wallet reports a Lightning backend's failure to pay: an unknown outcome may have
    /// moved money, a node that cannot be reached moved none.
    pub fn from_lightning(e: farebox_lightning::LightningError) -> Self {
        use farebox_lightning::LightningError as L;
        match e {
            // Money may have left: counted at its most, never paid again on a guess.
            L::OutcomeUnknown(why) => ClientError::PaidWithoutProof(why),
            // Nothing was sent (after a send, a lost or garbled answer is OutcomeUnknown): the
            // node is down, slow, throttling or broken; another try later may work.
            e @ (L::Unavailable(_) | L::InvalidResponse(_) | L::RateLimited(_)) => {
                ClientError::Unavailable(format!("Lightning wallet: {e}"))
            }
            e @ (L::AuthRefused(_) | L::Restricted(_)) => ClientError::WalletRefused(e.to_string()),
            other => ClientError::PaymentFailed(other.to_string()),
        }
    }

    /// The typed error inside a middleware error, if it came from farebox.
    pub fn from_middleware(err: &reqwest_middleware::Error) -> Option<&ClientError> {
        match err {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use farebox_lightning::LightningError as L;

    #[test]
    fn lightning_failures_map_to_errors_an_agent_can_act_on() {
        let e = |l| ClientError::from_lightning(l);
        // Nothing was sent: the node is down or broken; try later.
        for down in
            [L::Unavailable("x".into()), L::InvalidResponse("x".into()), L::RateLimited("x".into())]
        {
            assert!(matches!(e(down), ClientError::Unavailable(_)));
        }
        // The credentials are refused: fix the configuration, retrying does not help.
        assert!(matches!(e(L::AuthRefused("x".into())), ClientError::WalletRefused(_)));
        assert!(matches!(e(L::Restricted("x".into())), ClientError::WalletRefused(_)));
        // Money may have left: counted, never paid again on a guess.
        assert!(matches!(e(L::OutcomeUnknown("x".into())), ClientError::PaidWithoutProof(_)));
        assert!(matches!(e(L::PaymentFailed("x".into())), ClientError::PaymentFailed(_)));
    }
}
