//! A reference server that misbehaves in controlled ways, for testing clients: point a client at
//! each scenario's path and see whether it pays what it should, and only that.
//!
//! Every scenario is an L402 route on the embedded Lightning dev network (real BOLT11 signatures
//! and preimages): the client's wallet must be a node of the same network (`farebox conformance
//! serve` also serves its dev wallet). `GET /_report` tells what each scenario was paid.
//!
//! | path | misbehaviour | a correct client |
//! |---|---|---|
//! | `/ok` | none: 10 sat | pays once, is served, reuses the token |
//! | `/wrong-price-on-retry` | asks 10 sat; refuses the paid token with a new 20 sat challenge | pays once, then reports the refusal (never pays the second challenge on its own) |
//! | `/invalid-invoice` | the invoice's payment hash is not the macaroon's | refuses before paying |
//! | `/expired-invoice` | the invoice expired before it was sent | refuses before paying |
//! | `/loop` | answers 402 to every credential, paid or not | pays once, then stops |
//! | `/pricey` | 1,000,000 sat | refuses when over its budget |
//!
//! The x402 and MPP scenarios are on a real chain, in [`evm`] (anvil, an EIP-3009 token, the
//! client's key funded); what each was paid is read from the chain (for a session, what its
//! payee captured plus what its own escrow still holds):
//!
//! | path | misbehaviour | a correct client pays |
//! |---|---|---|
//! | `/x402/ok`, `/mpp/ok` | none: 0.01 USDC (MPP: `evm` charge) | 0.01 once, and is served |
//! | `/x402/price-raised-on-retry`, `/mpp/price-raised-on-retry` | settles, then 402 at twice the price | 0.01, then reports the refusal |
//! | `/x402/pay-to-changed-on-retry`, `/mpp/recipient-changed-on-retry` | settles, then 402 naming another recipient | 0.01, then reports the refusal |
//! | `/x402/body-contradicts-header` | the body's requirements contradict `PAYMENT-REQUIRED` | 0.01 as the header asks, or nothing |
//! | `/x402/loop`, `/mpp/loop` | settles every payment and answers 402 again | 0.01, then stops |
//! | `/x402/redirect`, `/mpp/redirect` | 307 to another origin that asks for payment | nothing |
//! | `/x402/inflated-settlement`, `/mpp/inflated-receipt` | the settlement claims 100 times what was paid | 0.01 (and counts 0.01) |
//! | `/x402/pricey`, `/mpp/pricey` | 5,000 USDC | nothing |
//! | `/mpp/session/ok` | none: 0.01 USDC a request, `evm` session | 0.01: opens a channel in an escrow it allows, pays one voucher, closes (the rest comes back) |
//! | `/mpp/session/overclaimed-receipt` | the receipt claims 100 times more spent than was signed | 0.01: signs no more, closes at what it signed |
//! | `/mpp/session/inflated-refund` | the close answer claims 100 times the refund the chain shows | 0.01 (and counts the chain's refund) |
//! | `/mpp/session/foreign-escrow` | the channel is to go to an escrow the client's policy does not allow | nothing |
//!
//! [`crate::clients`] runs a client under test (any command) against each of them.

pub mod evm;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use farebox_core::{
    Challenge, ErrorKind, Money, PaymentError, PresentedCredential, Price, Rail, Refusal, Resource,
    Verdict,
};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::bolt11::{InvoiceParams, sign_invoice};
use farebox_lightning::{Currency, DevNode, InvoiceRequest, LightningBackend, LightningError};
use http::{Method, Request};
use serde_json::json;

/// A scenario: its path, what it does wrong, what a correct client does, and how many payments
/// a correct client makes to it.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub path: &'static str,
    pub misbehaviour: &'static str,
    pub correct_client: &'static str,
    pub payments: usize,
}

/// The scenarios.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        path: "/ok",
        misbehaviour: "none (10 sat)",
        correct_client: "pays once and is served",
        payments: 1,
    },
    Scenario {
        path: "/wrong-price-on-retry",
        misbehaviour: "refuses the paid token with a new, dearer challenge",
        correct_client: "pays once, then reports the refusal without paying again",
        payments: 1,
    },
    Scenario {
        path: "/invalid-invoice",
        misbehaviour: "the invoice's payment hash is not the macaroon's",
        correct_client: "refuses before paying",
        payments: 0,
    },
    Scenario {
        path: "/expired-invoice",
        misbehaviour: "the invoice has expired",
        correct_client: "refuses before paying",
        payments: 0,
    },
    Scenario {
        path: "/loop",
        misbehaviour: "answers 402 to every credential",
        correct_client: "pays once, then stops",
        payments: 1,
    },
    Scenario {
        path: "/pricey",
        misbehaviour: "1,000,000 sat",
        correct_client: "refuses over budget",
        payments: 0,
    },
];

/// How the invoice backend of a scenario lies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lie {
    None,
    /// The invoice is for another payment hash than the one reported (and put in the macaroon).
    OtherHash,
    /// The invoice was created two hours ago with a one-minute expiry.
    Expired,
}

/// The L402 rail of a scenario, whose challenges lie as told; the rest is the rail's. (The rail
/// itself checks every invoice its node hands it, so the lie is told after it: in the header.)
struct Lying {
    rail: Arc<L402Rail>,
    node: Arc<DevNode>,
    lie: Lie,
}

impl Lying {
    /// The invoice to show instead of `real`, for the same amount and memo.
    async fn lie_about(&self, real: &str) -> Result<String, LightningError> {
        let parsed = farebox_lightning::parse_invoice(real)?;
        let memo = match parsed.description {
            farebox_lightning::InvoiceDescription::Direct(d) => d,
            farebox_lightning::InvoiceDescription::Hash(_) => String::new(),
        };
        let amount_msat = parsed.amount_msat.unwrap_or(1_000);
        match self.lie {
            Lie::None => Ok(real.to_string()),
            // Another real invoice of the node: payable, so a client that pays it anyway shows in
            // the report, but not for the payment hash the macaroon names.
            Lie::OtherHash => {
                let request = InvoiceRequest { amount_msat, memo, expiry: parsed.expiry };
                Ok(self.node.create_invoice(request).await?.bolt11)
            }
            // The real payment hash in an invoice created two hours ago with a one-minute expiry,
            // signed by a key of its own (the signature is valid; only the time is wrong).
            Lie::Expired => {
                let key = farebox_lightning::SecretKey::from_slice(&rand::random::<[u8; 32]>())
                    .map_err(|e| LightningError::InvalidRequest(e.to_string()))?;
                sign_invoice(
                    &InvoiceParams {
                        currency: Currency::Regtest,
                        payment_hash: parsed.payment_hash,
                        amount_msat: Some(amount_msat),
                        description: memo,
                        expiry: Duration::from_secs(60),
                        min_final_cltv_expiry_delta: 18,
                        payment_secret: rand::random(),
                        timestamp: SystemTime::now() - Duration::from_secs(7200),
                    },
                    &key,
                )
            }
        }
    }
}

#[async_trait]
impl Rail for Lying {
    fn name(&self) -> &'static str {
        self.rail.name()
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        self.rail.auth_schemes()
    }

    async fn challenge(
        &self,
        resource: &Resource,
        refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError> {
        let Some(mut challenge) = self.rail.challenge(resource, refusal).await? else {
            return Ok(None);
        };
        let unavailable = |e: LightningError| {
            PaymentError::unavailable("lie_failed", e.to_string(), Duration::from_secs(1))
        };
        // Every line carries the same invoice: one lie for all of them.
        let mut lie: Option<(String, String)> = None;
        for line in &mut challenge.www_authenticate {
            let text = line.to_str().unwrap_or_default().to_string();
            let Some(real) = text.split("invoice=\"").nth(1).and_then(|r| r.split('"').next())
            else {
                continue;
            };
            if lie.is_none() {
                lie = Some((real.to_string(), self.lie_about(real).await.map_err(unavailable)?));
            }
            if let Some((real, told)) = &lie {
                *line = http::HeaderValue::from_str(&text.replace(real.as_str(), told))
                    .map_err(|e| PaymentError::internal("lie_failed", e.to_string()))?;
            }
        }
        Ok(Some(challenge))
    }

    /// The honest rail's verdict: the lie is in the challenge only.
    async fn verify(
        self: Arc<Self>,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        self.rail.clone().verify(resource, credential).await
    }
}

struct Scenarios {
    node: Arc<DevNode>,
    ok: farebox_server::Paywall,
    dearer: farebox_server::Paywall,
}

fn paywall(
    node: &Arc<DevNode>,
    lie: Lie,
    memo: &'static str,
    path: &str,
    sats: u64,
) -> anyhow::Result<farebox_server::Paywall> {
    let rail = L402Rail::new(
        L402Config::new("misbehave", Arc::new(DerivedRootKeys::new(&[0x42; 32])?)),
        node.clone(),
    )?;
    let rail = Lying { rail: Arc::new(rail), node: node.clone(), lie };
    // The scenario's name is the invoice's memo: what the report counts payments by.
    let route =
        farebox_server::PricedRoute::new(Some(Method::GET), path, Price::one(Money::sats(sats)))?
            .describe(&format!("scenario {memo}"));
    Ok(farebox_server::Paywall::builder().rail(rail).route(route).build()?)
}

/// The misbehaving server's routes, invoices from `node` (whose network the client's wallet
/// must be on).
pub fn router(node: Arc<DevNode>) -> anyhow::Result<Router> {
    let layer = |lie, memo, path, sats| -> anyhow::Result<farebox_server::PaywallLayer> {
        Ok(farebox_server::PaywallLayer::new(paywall(&node, lie, memo, path, sats)?))
    };
    let state = Arc::new(Scenarios {
        node: node.clone(),
        ok: paywall(&node, Lie::None, "/wrong-price-on-retry", "/wrong-price-on-retry", 10)?,
        dearer: paywall(
            &node,
            Lie::None,
            "/wrong-price-on-retry (dearer)",
            "/wrong-price-on-retry",
            20,
        )?,
    });
    let served = || async { "served" };
    Ok(Router::new()
        .route("/ok", get(served).layer(layer(Lie::None, "/ok", "/ok", 10)?))
        .route(
            "/invalid-invoice",
            get(served).layer(layer(Lie::OtherHash, "/invalid-invoice", "/invalid-invoice", 10)?),
        )
        .route(
            "/expired-invoice",
            get(served).layer(layer(Lie::Expired, "/expired-invoice", "/expired-invoice", 10)?),
        )
        .route("/pricey", get(served).layer(layer(Lie::None, "/pricey", "/pricey", 1_000_000)?))
        .route("/wrong-price-on-retry", get(wrong_price))
        .route("/loop", get(always_402).layer(layer(Lie::None, "/loop", "/loop", 10)?))
        .route("/_report", get(report))
        .with_state(state))
}

/// Challenges at 10 sat; a credential, paid or not, gets a 20 sat challenge instead of content.
async fn wrong_price(State(s): State<Arc<Scenarios>>, request: Request<Body>) -> impl IntoResponse {
    let has_credential = request.headers().contains_key(http::header::AUTHORIZATION);
    let paywall = if has_credential { &s.dearer } else { &s.ok };
    let resource = paywall.resource_for(&Method::GET, "/wrong-price-on-retry");
    let why = PaymentError::new(ErrorKind::PaymentRequired, "price_changed", "the price went up");
    match resource {
        Some(r) => paywall.refusal(&r, &why, None).await.map(Body::from).into_response(),
        None => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Reached only with a valid, paid token: and still refuses.
async fn always_402() -> impl IntoResponse {
    (http::StatusCode::PAYMENT_REQUIRED, [(http::header::CONTENT_TYPE, "text/plain")], "pay again")
}

/// What each scenario was paid: `{"/ok": 1, …}` and the expectations.
async fn report(State(s): State<Arc<Scenarios>>) -> impl IntoResponse {
    let settled = s.node.settled_invoices();
    let paid = |path: &str| {
        settled
            .iter()
            .filter(|i| {
                let memo = format!("scenario {path}");
                i.memo == memo || i.memo.starts_with(&format!("{memo} "))
            })
            .count()
    };
    let scenarios: Vec<_> = SCENARIOS
        .iter()
        .map(|sc| {
            json!({"path": sc.path, "misbehaviour": sc.misbehaviour, "correct_client": sc.correct_client,
                   "expected_payments": sc.payments, "payments": paid(sc.path)})
        })
        .collect();
    axum::Json(json!({ "scenarios": scenarios }))
}
