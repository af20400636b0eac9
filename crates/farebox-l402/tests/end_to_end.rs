//! The whole L402 exchange through farebox-core's header grammar and the embedded dev node:
//! 402 challenge → client parses it → pays the invoice → retries → the rail verifies.

mod common;

use std::sync::Arc;

use common::resource;
use farebox_core::auth::parse_challenges;
use farebox_core::rail::credential_of;
use farebox_core::{ErrorKind, Money, Rail};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail, format_credential, parse_challenge};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend};
use http::HeaderMap;

#[tokio::test]
async fn pay_and_retry_with_the_dev_node() {
    let network = DevNetwork::new();
    let server = Arc::new(DevNode::random(&network, 0));
    let wallet = DevNode::random(&network, 1_000_000);
    let rail: Arc<dyn Rail> = Arc::new(
        L402Rail::new(
            L402Config::new("weather", Arc::new(DerivedRootKeys::new(&[9; 32]).unwrap())),
            server.clone(),
        )
        .unwrap(),
    );
    let r = resource("GET", "/v1/weather/*", Money::sats(21));

    let challenge = rail.challenge(&r, None).await.unwrap().unwrap();
    let values: Vec<&str> =
        challenge.www_authenticate.iter().map(|v| v.to_str().unwrap()).collect();
    let parsed = parse_challenges(values.iter().copied()).unwrap();
    assert_eq!(parsed.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(), ["LSAT", "L402"]);
    let l402 = parse_challenge(&parsed[1]).unwrap();
    assert_eq!(l402, parse_challenge(&parsed[0]).unwrap());

    let paid = wallet.pay(&l402.invoice, 0).await.unwrap();
    assert_eq!(paid.payment_hash, l402.payment_hash);
    assert_eq!(paid.amount_msat, 21_000);

    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format_credential(&l402.macaroon, &paid.preimage).parse().unwrap(),
    );
    let rails = [rail.clone()];
    let (owner, presented) = credential_of(&rails, &headers).unwrap().expect("an L402 credential");
    assert_eq!(owner.name(), "l402");
    let farebox_core::Verdict::Payment(verified) =
        owner.clone().verify(&r, &presented).await.unwrap()
    else {
        panic!("an L402 token is payment, not control");
    };
    assert_eq!(verified.amount, Money::sats(21));
    assert_eq!(verified.reference, hex::encode(paid.payment_hash));
    let receipt = verified.settle(&r).await.unwrap();
    assert_eq!(receipt.amount, Money::sats(21));

    // The same token on a dearer route does not pay.
    let dear = resource("GET", "/v1/weather/*", Money::sats(22));
    let e = owner.clone().verify(&dear, &presented).await.unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::InvalidCredential, "insufficient_amount"));

    // The LSAT scheme, lower case, is recognised by core and accepted by the rail.
    let mut headers = HeaderMap::new();
    let lsat = format_credential(&l402.macaroon, &paid.preimage).replacen("L402", "lsat", 1);
    headers.insert(http::header::AUTHORIZATION, lsat.parse().unwrap());
    let (owner, presented) = credential_of(&rails, &headers).unwrap().unwrap();
    owner.clone().verify(&r, &presented).await.unwrap();

    // An unavailable node: 503, fail closed.
    server.set_available(false);
    let e = rail.challenge(&r, None).await.unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::Unavailable, "lightning_unavailable"));
}
