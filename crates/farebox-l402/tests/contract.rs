//! The rail contract kit (`farebox_server::testing`) against the L402 rail: invoices from a dev
//! node, paid by another node on the same dev network, the token store in memory.

use std::sync::Arc;

use async_trait::async_trait;
use farebox_core::auth::parse_challenges;
use farebox_core::{Money, Price, Rail};
use farebox_l402::{
    DerivedRootKeys, L402Config, L402Rail, attenuate, caveat, format_credential, parse_challenge,
};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend};
use farebox_server::testing::{Exchange, RailHarness, assert_rail_contract, proof};
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};

struct L402Harness {
    rail: Arc<L402Rail>,
    node: Arc<DevNode>,
    wallet: DevNode,
    /// The holder narrows each token to one request (`farebox_max_requests = 1`), which the
    /// rail counts in its store: then a token is a single-use proof.
    one_request: bool,
}

#[async_trait]
impl RailHarness for L402Harness {
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
        let challenges = parse_challenges(required.challenge_lines()).map_err(|e| e.to_string())?;
        let l402 = challenges
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("L402"))
            .ok_or("no L402 challenge")?;
        let l402 = parse_challenge(l402).map_err(|e| e.to_string())?;
        let paid = self.wallet.pay(&l402.invoice, 0).await.map_err(|e| e.to_string())?;
        let macaroon = match self.one_request {
            true => {
                attenuate(&l402.macaroon, &[caveat::max_requests(1)]).map_err(|e| e.to_string())?
            }
            false => l402.macaroon,
        };
        let value = format_credential(&macaroon, &paid.preimage);
        proof(AUTHORIZATION, &value)
    }

    /// A token is good for the route until it expires, unless narrowed to one request.
    fn single_use(&self) -> bool {
        self.one_request
    }

    /// The dev node reveals a preimage only by settling its invoice: the preimage is the proof.
    fn verifies_on_backend(&self) -> bool {
        false
    }

    async fn set_backend(&self, up: bool) {
        self.node.set_available(up);
    }
}

async fn keeps_the_contract(one_request: bool) {
    let network = DevNetwork::new();
    let node = Arc::new(DevNode::random(&network, 0));
    let wallet = DevNode::random(&network, 10_000_000);
    let keys = Arc::new(DerivedRootKeys::new(&[7; 32]).unwrap());
    let store = Arc::new(farebox_store::MemoryStore::new());
    let config = L402Config::new("contract", keys).with_store(store);
    let rail = Arc::new(L402Rail::new(config, node.clone()).unwrap());
    assert_rail_contract(Arc::new(L402Harness { rail, node, wallet, one_request })).await;
}

#[tokio::test]
async fn the_l402_rail_keeps_the_rail_contract() {
    keeps_the_contract(false).await;
}

/// Single use: a replay or a race is served once, and a failed handler's request is counted
/// back, so the retry is served.
#[tokio::test]
async fn the_l402_rail_keeps_the_rail_contract_with_one_request_tokens() {
    keeps_the_contract(true).await;
}
