//! [`L402Wallet`] (feature `client`): pays L402 challenges with a Lightning backend, for
//! `farebox-client`'s middleware.
//!
//! It prefers the `L402` challenge line and falls back to `LSAT`, checks that the invoice is a
//! valid BOLT11 with an amount and that it has not expired, pays it, and answers with
//! `Authorization: L402 <macaroon>:<preimage>`. The token is reusable, so the middleware keeps it
//! for later requests to the same origin.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use farebox_core::Money;
use farebox_lightning::LightningBackend;
use farebox_lightning::bolt11::{self, InvoiceDescription};
use http::{HeaderValue, header::AUTHORIZATION};

use farebox_wallet::{ClientError, Funding, Offer, PaymentRequired, Proof, Wallet};

/// Pays L402 invoices from a Lightning backend.
pub struct L402Wallet {
    node: Arc<dyn LightningBackend>,
    max_fee_msat: u64,
}

struct L402Offer {
    macaroon: String,
    invoice: String,
    payment_hash: [u8; 32],
}

impl L402Wallet {
    /// A wallet paying through `node`, spending at most `max_fee_msat` in routing fees per payment.
    pub fn new(node: Arc<dyn LightningBackend>, max_fee_msat: u64) -> Self {
        L402Wallet { node, max_fee_msat }
    }
}

#[async_trait]
impl Wallet for L402Wallet {
    fn rail(&self) -> &'static str {
        "l402"
    }

    fn offers(&self, response: &PaymentRequired) -> Result<Vec<Offer>, ClientError> {
        let challenge =
            response.challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case("L402")).or_else(
                || response.challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case("LSAT")),
            );
        let Some(challenge) = challenge else {
            return Ok(Vec::new());
        };
        let parsed = crate::parse_challenge(challenge)
            .map_err(|e| ClientError::InvalidChallenge(format!("L402 challenge: {e}")))?;
        let invoice = bolt11::parse_invoice(&parsed.invoice)
            .map_err(|e| ClientError::InvalidChallenge(format!("L402 invoice: {e}")))?;
        if invoice.is_expired(SystemTime::now()) {
            return Err(ClientError::InvalidChallenge(
                "the L402 invoice has already expired".into(),
            ));
        }
        // Checked before paying: the credential must be sendable once the money has left.
        if HeaderValue::from_str(&parsed.macaroon).is_err() {
            return Err(ClientError::InvalidChallenge(
                "the L402 macaroon is not header-safe".into(),
            ));
        }
        if parsed.payment_hash != invoice.payment_hash {
            return Err(ClientError::InvalidChallenge(
                "the L402 macaroon is for another invoice than the one offered".into(),
            ));
        }
        let Some(amount_msat) = invoice.amount_msat else {
            return Err(ClientError::InvalidChallenge("the L402 invoice has no amount".into()));
        };
        let summary = match &invoice.description {
            InvoiceDescription::Direct(d) if !d.is_empty() => {
                format!("Lightning invoice for {} ({d})", Money::msats(amount_msat))
            }
            _ => format!("Lightning invoice for {}", Money::msats(amount_msat)),
        };
        Ok(vec![Offer {
            rail: "l402",
            price: Money::msats(amount_msat),
            max_fee: Money::msats(self.max_fee_msat),
            funding: Funding::PerRequest,
            summary,
            payee: Some(invoice.payee.to_string()),
            buys: token_terms(&parsed.macaroon),
            details: Box::new(L402Offer {
                macaroon: parsed.macaroon,
                invoice: parsed.invoice,
                payment_hash: invoice.payment_hash,
            }),
        }])
    }

    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError> {
        let details = offer.details.downcast_ref::<L402Offer>().ok_or_else(|| {
            ClientError::PaymentFailed("offer was not made by the L402 wallet".into())
        })?;
        let paid = self
            .node
            .pay(&details.invoice, self.max_fee_msat)
            .await
            .map_err(ClientError::from_lightning)?;
        // A wallet is not trusted to return the right preimage: a wrong one would be refused by
        // the server after the money left, so catch it here and say which side is at fault.
        if !farebox_lightning::preimage_matches(&paid.preimage, &details.payment_hash) {
            return Err(ClientError::PaidWithoutProof(
                "the wallet returned a preimage that does not match the invoice's payment hash"
                    .into(),
            ));
        }
        let credential = crate::format_credential(&details.macaroon, &paid.preimage);
        let mut value = HeaderValue::from_str(&credential).map_err(|_| {
            ClientError::PaidWithoutProof("the credential is not header-safe".into())
        })?;
        // A bearer secret: keep it out of Debug output and HTTP/2 header compression tables.
        value.set_sensitive(true);
        Ok(Proof {
            headers: vec![(AUTHORIZATION, value)],
            fee: Money::msats(paid.fee_msat),
            reference: hex::encode(paid.payment_hash),
            reusable: true,
        })
    }
}

/// What a token is good for, from its macaroon's first-party caveats (`route=…`,
/// `…_valid_until=<unix>` shown as a date).
fn token_terms(macaroon: &str) -> Option<String> {
    let bytes = crate::macaroon::decode_base64(macaroon).ok()?;
    let decoded = crate::macaroon::Macaroon::decode(&bytes).ok()?;
    let terms: Vec<String> = decoded
        .caveats()
        .filter(|c| c.is_first_party())
        .map(|c| {
            let text = String::from_utf8_lossy(c.id).into_owned();
            match text.split_once('=') {
                Some((key, value)) if key.ends_with("_valid_until") => match value.trim().parse() {
                    Ok(unix) => format!("{key}={}", farebox_core::time::format(unix)),
                    Err(_) => text,
                },
                _ => text,
            }
        })
        .collect();
    (!terms.is_empty()).then(|| format!("a token with caveats {}", terms.join(", ")))
}
