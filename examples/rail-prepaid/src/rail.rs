//! The server half: [`PrepaidRail`], a [`Rail`] that takes credit codes.
//!
//! The 402 says `Prepaid amount="<base units>", currency="<symbol>", seller="<hex key>"`. The
//! request comes back with `Authorization: Prepaid <code>`. Verifying checks the seller's
//! signature and the expiry, then debits the price from the code's balance in a
//! [`SessionStore`] (one record per code, created at its value on first use, changed only by
//! compare-and-swap), so that concurrent requests, restarts and several servers sharing the
//! store never spend a code twice. A request the handler fails is credited back. Settling only
//! writes the receipt: the debit is the payment.

use std::sync::Arc;

use async_trait::async_trait;
use ed25519_dalek::VerifyingKey;
use farebox_core::auth::AuthChallenge;
use farebox_core::store::{SessionRecord, SessionStatus, Update, update_session};
use farebox_core::time::unix_now;
use farebox_core::{
    Asset, Challenge, Money, PaymentError, PresentedCredential, Rail, Receipt, Refusal, Resource,
    SessionStore, Settlement, Verdict, Verified,
};
use http::{HeaderName, HeaderValue};

use crate::code::{CodeError, CreditCode, MAX_CODE_LEN, SCHEME};

/// The response header that tells the buyer what a request took from a code.
pub static PREPAID_RECEIPT: HeaderName = HeaderName::from_static("prepaid-receipt");

/// The store namespace of code balances.
const NAMESPACE: &str = "prepaid";

/// A rail that takes credit codes signed by one seller, in one asset.
pub struct PrepaidRail {
    asset: Asset,
    seller: VerifyingKey,
    seller_hex: String,
    balances: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for PrepaidRail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrepaidRail")
            .field("asset", &self.asset)
            .field("seller", &self.seller_hex)
            .finish()
    }
}

impl PrepaidRail {
    /// Takes codes of `seller` denominated in `asset`, their balances kept in `balances` (every
    /// server of a deployment must share it).
    pub fn new(asset: Asset, seller: VerifyingKey, balances: Arc<dyn SessionStore>) -> Self {
        let seller_hex = hex::encode(seller.as_bytes());
        PrepaidRail { asset, seller, seller_hex, balances }
    }

    /// Where `code`'s balance is kept: under its seller and asset, so that another seller's
    /// code with the same id, or this seller's code in another asset, is another balance.
    fn balance_key(&self, code: &CreditCode) -> String {
        format!("{}:{}:{}", self.seller_hex, crate::code::asset_key(&self.asset), code.id_hex())
    }

    /// Debits `price` from `code`'s balance, opening it at the code's value on first use:
    /// what is left, or why not.
    async fn debit(&self, code: &CreditCode, price: u128, now: u64) -> Result<u128, PaymentError> {
        let id = self.balance_key(code);
        let take = |record: &SessionRecord| {
            if record.available() < price {
                return Err(PaymentError::invalid(
                    "insufficient_credit",
                    format!(
                        "the code has {} base units left and this request costs {price}",
                        record.available()
                    ),
                ));
            }
            let mut next = record.clone();
            next.spent += price;
            next.updated_at = now;
            Ok(Update::Write(next.clone(), next.available()))
        };
        // A code seen before is one compare-and-swap; its first use opens its balance first.
        if let Some(left) = update_session(&*self.balances, NAMESPACE, &id, &take).await? {
            return Ok(left);
        }
        let opening = SessionRecord {
            status: SessionStatus::Open,
            deposit: code.value,
            accepted: code.value,
            spent: 0,
            settled: 0,
            data: String::new(),
            updated_at: now,
        };
        // `false`: a concurrent first use opened it meanwhile; the update reads it either way.
        self.balances.create_session(NAMESPACE, &id, &opening).await?;
        update_session(&*self.balances, NAMESPACE, &id, &take).await?.ok_or_else(|| {
            PaymentError::internal("prepaid_store", "a balance vanished as it was debited")
        })
    }
}

fn refused(e: CodeError) -> PaymentError {
    let code = match e {
        CodeError::Malformed => "malformed_code",
        CodeError::BadSignature => "unknown_seller",
    };
    PaymentError::invalid(code, e.to_string())
}

#[async_trait]
impl Rail for PrepaidRail {
    fn name(&self) -> &'static str {
        "prepaid"
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        &[SCHEME]
    }

    async fn challenge(
        &self,
        resource: &Resource,
        _refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError> {
        let Some(price) = resource.price.in_asset(&self.asset) else { return Ok(None) };
        let line = AuthChallenge::new(SCHEME)
            .param("amount", price.amount.to_string())
            .param("currency", self.asset.symbol())
            .param("seller", self.seller_hex.clone());
        let value = line
            .to_header_value()
            .map_err(|e| PaymentError::internal("prepaid_challenge", e.to_string()))?;
        Ok(Some(Challenge { www_authenticate: vec![value], ..Challenge::default() }))
    }

    async fn verify(
        self: Arc<Self>,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        let text = credential.auth.as_ref().and_then(|a| a.token.as_deref()).unwrap_or_default();
        if text.is_empty() || text.len() > MAX_CODE_LEN {
            return Err(refused(CodeError::Malformed));
        }
        let code = CreditCode::verify(text, &self.seller, &self.asset).map_err(refused)?;
        let now = unix_now()?;
        if code.expires <= now {
            return Err(PaymentError::invalid("expired_code", "the credit code has expired"));
        }
        let price = resource.price.in_asset(&self.asset).ok_or_else(|| {
            PaymentError::invalid("wrong_asset", "this route is not sold for credit codes")
        })?;
        let left = self.debit(&code, price.amount, now).await?;
        let (reference, key) = (code.id_hex(), self.balance_key(&code));
        let debit = Debit { rail: self, key, price: price.amount, left };
        Ok(Verdict::Payment(Verified::new(price.clone(), None, reference, debit)))
    }
}

/// A price debited from a code, to be receipted or credited back.
struct Debit {
    rail: Arc<PrepaidRail>,
    /// The balance's key ([`PrepaidRail::balance_key`]).
    key: String,
    price: u128,
    /// What the code had left after the debit.
    left: u128,
}

#[async_trait]
impl Settlement for Debit {
    /// The debit is the payment: the receipt says what was taken and what is left.
    async fn settle(
        self: Box<Self>,
        _resource: &Resource,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError> {
        let text = format!("code={reference} spent={} left={}", self.price, self.left);
        let value = HeaderValue::from_str(&text)
            .map_err(|e| PaymentError::internal("prepaid_receipt", e.to_string()))?;
        Ok(Receipt::new(amount, reference, vec![(PREPAID_RECEIPT.clone(), value)]))
    }

    /// Credits the price back: the request was not served.
    async fn release(self: Box<Self>, _resource: &Resource) {
        let price = self.price;
        let credited = update_session(&*self.rail.balances, NAMESPACE, &self.key, |record| {
            let mut next = record.clone();
            next.spent = next.spent.saturating_sub(price);
            next.updated_at = unix_now()?;
            Ok::<_, PaymentError>(Update::Write(next, ()))
        })
        .await;
        if let Err(e) = credited {
            // The buyer loses one request's price; nothing is served for free.
            tracing::warn!(balance = %self.key, error = %e, "could not credit back an unserved request");
        }
    }
}
