//! The prepaid rail end to end over HTTP: a server with the paywall, an agent with the client
//! middleware and a wallet of codes. What a user notices: what was served, what the ledger and
//! the wallet say was spent, and that a forged code buys nothing.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use farebox_client::{Budget, ClientError, PaymentMiddleware, paying_client};
use farebox_core::{Asset, Money};
use farebox_rail_prepaid::{CreditCode, PREPAID_RECEIPT, PrepaidWallet};

mod common;

use common::{JOKE, paywalled, serve};

fn code(seller: &SigningKey, id: u8, sats: u128) -> String {
    CreditCode { id: [id; 16], value: sats * 1000, expires: u64::MAX }.sign(seller, &Asset::Bitcoin)
}

#[tokio::test]
async fn an_agent_spends_a_code_down_to_what_it_cannot_pay() {
    let seller = SigningKey::from_bytes(&[0x42; 32]);
    let base = serve(paywalled(&seller)).await;
    let wallet = Arc::new(
        PrepaidWallet::new(Asset::Bitcoin, seller.verifying_key().to_bytes(), ["127.0.0.1"])
            .with_code(&code(&seller, 1, 100))
            .unwrap(),
    );
    let budget = Budget::new().allow(Money::sats(50), Money::sats(1_000)).unwrap();
    let payer = PaymentMiddleware::new(budget).wallet(SharedWallet(wallet.clone()));
    let ledger = payer.ledger();
    let client = paying_client(reqwest::Client::new(), payer);
    for served in 1..=4u128 {
        let response = client.get(format!("{base}/joke")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let receipt = response.headers()[&PREPAID_RECEIPT].to_str().unwrap().to_string();
        assert!(receipt.ends_with(&format!("left={}", (100 - 21 * served) * 1000)), "{receipt}");
        assert_eq!(response.text().await.unwrap(), JOKE);
    }
    // 16 sat left: the fifth request is not paid, and nothing more leaves the code.
    let refused = client.get(format!("{base}/joke")).send().await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&refused), Some(ClientError::PaymentFailed(_))),
        "{refused}"
    );
    assert_eq!(wallet.left(), 16_000);
    let paid: Vec<Money> = ledger.entries().into_iter().map(|e| e.amount).collect();
    assert_eq!(paid, vec![Money::sats(21); 4]);
}

#[tokio::test]
async fn a_code_of_another_seller_buys_nothing_and_stays_whole() {
    let seller = SigningKey::from_bytes(&[0x42; 32]);
    let forger = SigningKey::from_bytes(&[0x66; 32]);
    let base = serve(paywalled(&seller)).await;
    // The forger's code, presented as the seller's.
    let wallet = Arc::new(
        PrepaidWallet::new(Asset::Bitcoin, seller.verifying_key().to_bytes(), ["127.0.0.1"])
            .with_code(&code(&forger, 2, 100))
            .unwrap(),
    );
    let payer =
        PaymentMiddleware::new(Budget::new().allow(Money::sats(50), Money::sats(1_000)).unwrap())
            .wallet(SharedWallet(wallet.clone()));
    let client = paying_client(reqwest::Client::new(), payer);
    let refused = client.get(format!("{base}/joke")).send().await;
    let status = match refused {
        Ok(response) => response.status().as_u16(),
        Err(e) => match ClientError::from_middleware(&e) {
            Some(ClientError::ProofRejected { status, .. }) => *status,
            other => panic!("{other:?}"),
        },
    };
    assert_eq!(status, 402);
    assert_eq!(wallet.left(), 100_000, "a refused code keeps its value");
}

#[tokio::test]
async fn codes_are_shown_to_no_host_but_the_sellers() {
    let seller = SigningKey::from_bytes(&[0x42; 32]);
    // A server that sells on the seller's rail (its public key is in every 402), on a host the
    // wallet was not given: nothing is offered, nothing leaves the code.
    let base = serve(paywalled(&seller)).await;
    let wallet = Arc::new(
        PrepaidWallet::new(Asset::Bitcoin, seller.verifying_key().to_bytes(), ["api.example.com"])
            .with_code(&code(&seller, 3, 100))
            .unwrap(),
    );
    let payer =
        PaymentMiddleware::new(Budget::new().allow(Money::sats(50), Money::sats(1_000)).unwrap())
            .wallet(SharedWallet(wallet.clone()));
    let ledger = payer.ledger();
    let client = paying_client(reqwest::Client::new(), payer);
    let refused = client.get(format!("{base}/joke")).send().await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&refused), Some(ClientError::NoPayableOffer(_))),
        "{refused}"
    );
    assert_eq!(wallet.left(), 100_000);
    assert!(ledger.entries().is_empty());
}

/// The wallet, shared with the test so that it can read what the codes have left.
struct SharedWallet(Arc<PrepaidWallet>);

#[async_trait::async_trait]
impl farebox_client::Wallet for SharedWallet {
    fn rail(&self) -> &'static str {
        self.0.rail()
    }
    fn offers(
        &self,
        response: &farebox_client::PaymentRequired,
    ) -> Result<Vec<farebox_client::Offer>, ClientError> {
        self.0.offers(response)
    }
    async fn pay(
        &self,
        offer: &farebox_client::Offer,
    ) -> Result<farebox_client::Proof, ClientError> {
        self.0.pay(offer).await
    }
    async fn answered(
        &self,
        offer: &farebox_client::Offer,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        self.0.answered(offer, status, headers, problem).await
    }
}
