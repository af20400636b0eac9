//! The rail contract kit (`farebox_server::testing`) against the MPP rail's charges: the
//! `lightning` charge on a dev node paid by another, and the `evm` charge on a real anvil with an
//! EIP-3009 token, reached through a proxy the kit can cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::{Money, Price, Rail};
use farebox_evm::anvil::{Anvil, NodeSwitch, switchable_proxy};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::token::TokenInfo;
use farebox_evm::{Address, EvmRpc, U256};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend};
use farebox_mpp::evm::charge::{self as evm_charge, EvmChargeRequest};
use farebox_mpp::lightning::charge::{self as lightning_charge, LightningChargeRequest};
use farebox_mpp::{Challenge, Credential, EvmChargeConfig, MppConfig, MppRail, time};
use farebox_server::testing::{Exchange, RailHarness, assert_rail_contract, proof};
use farebox_store::MemoryStore;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};

const SECRET: &[u8] = b"an-mpp-test-secret-of-at-least-32-bytes!";
const REALM: &str = "contract.test";

/// The one `Payment` challenge of a 402.
fn challenge_of(required: &Exchange) -> Result<Challenge, String> {
    let mut all = farebox_mpp::parse_www_authenticate(required.challenge_lines())
        .map_err(|e| e.to_string())?;
    if all.len() != 1 {
        return Err(format!("{} Payment challenges, not one", all.len()));
    }
    Ok(all.remove(0))
}

fn authorization(credential: &Credential) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    proof(AUTHORIZATION, &credential.to_authorization())
}

struct LightningCharge {
    rail: Arc<MppRail>,
    node: DevNode,
    wallet: DevNode,
}

#[async_trait]
impl RailHarness for LightningCharge {
    fn rail(&self) -> Arc<dyn Rail> {
        self.rail.clone()
    }

    fn price(&self) -> Price {
        Price::one(Money::sats(21))
    }

    async fn pay(
        &self,
        _url: &str,
        required: &Exchange,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let challenge = challenge_of(required)?;
        let request =
            LightningChargeRequest::from_json(&challenge.request).map_err(|e| e.to_string())?;
        let paid = self.wallet.pay(&request.invoice, 0).await.map_err(|e| e.to_string())?;
        authorization(&Credential::new(&challenge, lightning_charge::payload(&paid.preimage)))
    }

    /// The dev node reveals a preimage only by settling its invoice: the preimage is the proof.
    fn verifies_on_backend(&self) -> bool {
        false
    }

    async fn set_backend(&self, up: bool) {
        self.node.set_available(up);
    }
}

#[tokio::test]
async fn the_mpp_lightning_charge_keeps_the_rail_contract() {
    let network = DevNetwork::new();
    let node = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 10_000_000);
    let backend: Arc<dyn LightningBackend> = Arc::new(node.clone());
    let store = Arc::new(MemoryStore::new());
    let rail = Arc::new(MppRail::new(MppConfig::new(REALM, SECRET), backend, store).unwrap());
    assert_rail_contract(Arc::new(LightningCharge { rail, node, wallet })).await;
}

/// The anvil accounts that pay, one payment each in turn: a settlement cut off mid-send stays
/// pending and holds its payer's funds until it is reconciled.
const PAYERS: [usize; 7] = [1, 4, 5, 6, 7, 8, 9];
const PRICE: u128 = 150;

struct EvmCharge {
    anvil: Anvil,
    rail: Arc<MppRail>,
    asset: farebox_core::Asset,
    domain: TokenDomain,
    node: NodeSwitch,
    paid: AtomicUsize,
}

#[async_trait]
impl RailHarness for EvmCharge {
    fn rail(&self) -> Arc<dyn Rail> {
        self.rail.clone()
    }

    fn price(&self) -> Price {
        Price::one(Money::new(self.asset.clone(), PRICE))
    }

    /// Signs the authorization the challenge asks for: to its recipient, its amount, its nonce.
    async fn pay(
        &self,
        _url: &str,
        required: &Exchange,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let challenge = challenge_of(required)?;
        let request = EvmChargeRequest::from_json(&challenge.request).map_err(|e| e.to_string())?;
        let expires = challenge.expires.as_deref().ok_or("the challenge never expires")?;
        let turn = self.paid.fetch_add(1, Ordering::SeqCst) % PAYERS.len();
        let payer = &self.anvil.accounts()[PAYERS[turn]];
        let auth = TransferWithAuthorization {
            from: payer.address,
            to: request.recipient,
            value: request.amount,
            validAfter: U256::ZERO,
            validBefore: U256::from(time::parse(expires).map_err(|e| e.to_string())?),
            nonce: evm_charge::challenge_nonce(&challenge.id, &challenge.realm),
        };
        let signature = eip3009::sign(&payer.signer, &self.domain, &auth);
        authorization(&Credential::new(&challenge, evm_charge::payload(&auth, &signature)))
    }

    /// The transfer is sent when the request is settled.
    fn settles_on_backend(&self) -> bool {
        true
    }

    async fn set_backend(&self, up: bool) {
        self.node.set_up(up);
    }
}

#[tokio::test]
async fn the_mpp_evm_charge_keeps_the_rail_contract() {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    for payer in PAYERS {
        anvil.mint(token, anvil.accounts()[payer].address, U256::from(1_000_000u64)).await.unwrap();
    }
    let (url, node) = switchable_proxy(anvil.url()).await.unwrap();
    let rpc = EvmRpc::connect(&url).await.unwrap();
    let recipient: Address = anvil.accounts()[2].address;
    let evm = EvmChargeConfig::builder(rpc, anvil.accounts()[3].signer.clone())
        .token(token)
        .described_as(TokenInfo {
            symbol: "USDC".into(),
            decimals: 2,
            eip712_name: "USDC".into(),
            eip712_version: "2".into(),
        })
        .recipient(recipient)
        .receipt_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let asset = evm.asset();
    let store = Arc::new(MemoryStore::new());
    let config = MppConfig::new(REALM, SECRET);
    let rail = Arc::new(MppRail::with_methods(config, None, Some(evm), store).unwrap());
    let domain = TokenDomain::new("USDC", "2", anvil.chain_id(), token);
    let direct = anvil.rpc().await.unwrap().clone();
    let paid = AtomicUsize::new(0);
    let harness = Arc::new(EvmCharge { anvil, rail, asset, domain, node, paid });
    assert_rail_contract(harness.clone()).await;
    // Served and paid: the first proof, the winner of the race, the retry after a failed
    // handler and the proof honoured after the outage. The settlement cut off never reached
    // the chain.
    let received = direct.balance_of(token, recipient).await.unwrap();
    assert_eq!(received, U256::from(4 * PRICE), "what the recipient holds on chain");
}
