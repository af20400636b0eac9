//! The facilitator and its clients as an attacker sees them.
//!
//! - **No backend URL or credential reaches a client or a log.** A hosted RPC's URL carries its
//!   API key in the path and the query (`https://base-mainnet.g.alchemy.com/v2/<key>`); when that
//!   node goes down, or answers an error page that echoes the request, the paying client gets a
//!   503 naming the backend, and neither that answer nor anything logged (at every level) shows
//!   the key. The same for a facilitator reached over HTTP at a URL with a key.
//! - **The facilitator settles only for whom it serves**: other networks, tokens and payees are
//!   refused in the spec's shape, before any gas is spent; its API asks for its bearer token.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::IntoResponse;
use farebox_core::{Asset, Money, Price};
use farebox_evm::anvil::{Anvil, DevAccount};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, EvmRpc, U256};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use farebox_x402::exact_evm::{Authorization, ExactEvmPayload};
use farebox_x402::facilitator::Facilitator;
use farebox_x402::facilitator::http_client::RemoteFacilitator;
use farebox_x402::facilitator::http_server::{ApiToken, router_with_token};
use farebox_x402::facilitator::local::{ChainAccess, FacilitatorPolicy, LocalFacilitator};
use farebox_x402::facilitator_api::VersionedPayment;
use farebox_x402::{Payload, X402Config, X402Rail, codec, v2};
use http::{Request, StatusCode, Uri};
use tower::ServiceExt;

const KEY_IN_PATH: &str = "SECRETPATHKEY";
const KEY_IN_QUERY: &str = "SECRETQUERYKEY";
const CHAIN_ID: u64 = 84_532;
const PRICE: u64 = 10_000;

/// Everything logged, at every level.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A hosted RPC: JSON-RPC at `/v2/<key>?apikey=<key>`, passed on to anvil; once `failing`, an
/// error page that echoes the request target, as many web servers' are.
struct HostedRpc {
    url: String,
    failing: Arc<AtomicBool>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

async fn hosted_rpc(anvil: &str) -> HostedRpc {
    #[derive(Clone)]
    struct Upstream {
        anvil: String,
        failing: Arc<AtomicBool>,
    }
    async fn forward(State(up): State<Upstream>, uri: Uri, body: Bytes) -> impl IntoResponse {
        if up.failing.load(Ordering::SeqCst) {
            let page = format!("Service Unavailable: no backend for POST {uri}");
            return (StatusCode::SERVICE_UNAVAILABLE, page).into_response();
        }
        let answer = reqwest::Client::new()
            .post(&up.anvil)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let bytes = answer.bytes().await.unwrap();
        ([("content-type", "application/json")], bytes).into_response()
    }
    let failing = Arc::new(AtomicBool::new(false));
    let app = Router::new()
        .route("/v2/{key}", axum::routing::post(forward))
        .with_state(Upstream { anvil: anvil.to_string(), failing: failing.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        serve.await.unwrap();
    });
    let url = format!("http://{addr}/v2/{KEY_IN_PATH}?apikey={KEY_IN_QUERY}");
    HostedRpc { url, failing, stop, server }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn config(token: Address, pay_to: Address) -> X402Config {
    X402Config::builder()
        .network(format!("eip155:{CHAIN_ID}"))
        .asset(token.to_checksum(None))
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .pay_to(pay_to.to_checksum(None))
        .max_timeout_seconds(60)
        .public_url("https://api.example.com")
        .offer_v1(false)
        .build()
        .unwrap()
}

fn paid_app(rail: X402Rail, token: Address) -> Router {
    let price = Price::one(Money::new(Asset::Token(rail_token(token)), u128::from(PRICE)));
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/data", price).unwrap())
        .build()
        .unwrap();
    Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .layer(PaywallLayer::new(paywall))
}

fn rail_token(token: Address) -> farebox_core::Token {
    config(token, Address::repeat_byte(0x77)).token()
}

/// An authorization of PRICE from `payer` to `to` in `domain`, signed as a client signs it.
fn signed(payer: &DevAccount, domain: &TokenDomain, to: Address) -> Payload {
    let auth = TransferWithAuthorization {
        from: payer.address,
        to,
        value: U256::from(PRICE),
        validAfter: U256::from(now() - 600),
        validBefore: U256::from(now() + 60),
        nonce: B256::from(rand::random::<[u8; 32]>()),
    };
    let signature = eip3009::sign(&payer.signer, domain, &auth);
    Payload::from_serialize(&ExactEvmPayload {
        signature: farebox_evm::Bytes::copy_from_slice(&signature),
        authorization: Authorization {
            from: auth.from,
            to: auth.to,
            value: auth.value,
            valid_after: auth.validAfter.to::<u64>(),
            valid_before: auth.validBefore.to::<u64>(),
            nonce: auth.nonce,
        },
    })
    .unwrap()
}

/// GET /data with a payment signed by `payer`: the answer's status, and everything in it.
async fn pay(app: &Router, payer: &DevAccount, domain: &TokenDomain) -> (StatusCode, String) {
    let send = |header: Option<String>| async {
        let mut req = Request::get("/data");
        if let Some(h) = header {
            req = req.header("payment-signature", h);
        }
        let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, format!("{:?} {}", parts.headers, String::from_utf8_lossy(&body)), parts)
    };
    let (status, _, parts) = send(None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let required: v2::PaymentRequired =
        codec::decode_header(parts.headers["payment-required"].to_str().unwrap()).unwrap();
    let accepted = required.accepts[0].clone();
    let payload = signed(payer, domain, accepted.pay_to.parse().unwrap());
    let payment = v2::PaymentPayload {
        x402_version: farebox_x402::Version,
        resource: Some(required.resource.clone()),
        accepted,
        payload,
        extensions: None,
    };
    let (status, text, _) = send(Some(codec::encode_header(&payment))).await;
    (status, text)
}

fn assert_no_key(what: &str, text: &str) {
    for key in [KEY_IN_PATH, KEY_IN_QUERY] {
        assert!(!text.contains(key), "{what} shows the key: {text}");
    }
}

#[tokio::test]
async fn an_rpc_key_never_reaches_the_client_or_the_logs() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let payer = &anvil.accounts()[1];
    anvil.mint(token, payer.address, U256::from(1_000_000u64)).await.unwrap();
    let domain = TokenDomain::new("USDC", "2", CHAIN_ID, token);
    let hosted = hosted_rpc(anvil.url()).await;

    let rpc = EvmRpc::connect(&hosted.url).await.unwrap();
    assert_no_key("Debug of the RPC client", &format!("{rpc:?}"));
    let facilitator = LocalFacilitator::new(
        vec![ChainAccess { rpc, signer: anvil.accounts()[3].signer.clone() }],
        Arc::new(MemoryStore::new()),
    );
    let store = Arc::new(MemoryStore::new());
    let rail = X402Rail::new(
        config(token, anvil.accounts()[2].address),
        Arc::new(facilitator),
        store.clone(),
    );
    let app = paid_app(rail, token);

    // The node answers an error page echoing the request target, then is gone altogether.
    hosted.failing.store(true, Ordering::SeqCst);
    let (status, answer) = pay(&app, payer, &domain).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_no_key("the 503 of an RPC error page", &answer);
    let _ = hosted.stop.send(());
    hosted.server.await.unwrap();
    let (status, answer) = pay(&app, payer, &domain).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_no_key("the 503 of an RPC that is down", &answer);

    // A facilitator reached over HTTP at a URL with a key, down.
    let closed: SocketAddr =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let remote_url = format!("http://{closed}/{KEY_IN_PATH}/?apikey={KEY_IN_QUERY}");
    let remote = RemoteFacilitator::new(remote_url.parse().unwrap())
        .unwrap()
        .with_bearer_token(KEY_IN_QUERY)
        .unwrap();
    assert_no_key("Debug of the facilitator client", &format!("{remote:?}"));
    let err = remote.supported().await.unwrap_err();
    assert_no_key("the facilitator client's error", &format!("{err} {err:?}"));
    let rail = X402Rail::new(config(token, anvil.accounts()[2].address), Arc::new(remote), store);
    let (status, answer) = pay(&paid_app(rail, token), payer, &domain).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_no_key("the 503 of a facilitator that is down", &answer);

    let logged = logs.text();
    assert!(logged.contains("unavailable"), "the failures were logged: {logged}");
    assert_no_key("the logs", &logged);
}

// ---- whom the facilitator settles for ----

/// A v2 facilitator request paying PRICE of `token` (domain "USDC" / "2") to `pay_to`.
fn request(payer: &DevAccount, token: Address, pay_to: Address) -> VersionedPayment {
    let mut extra = serde_json::Map::new();
    extra.insert("name".into(), "USDC".into());
    extra.insert("version".into(), "2".into());
    let requirement = v2::PaymentRequirements {
        scheme: "exact".into(),
        network: format!("eip155:{CHAIN_ID}"),
        amount: farebox_x402::Amount::from(PRICE),
        asset: token.to_checksum(None),
        pay_to: pay_to.to_checksum(None),
        max_timeout_seconds: 60,
        extra: Some(extra),
        other: serde_json::Map::new(),
    };
    let domain = TokenDomain::new("USDC", "2", CHAIN_ID, token);
    VersionedPayment::V2 {
        payment_payload: v2::PaymentPayload {
            x402_version: farebox_x402::Version,
            resource: None,
            accepted: requirement.clone(),
            payload: signed(payer, &domain, pay_to),
            extensions: None,
        },
        payment_requirements: requirement,
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

#[tokio::test]
async fn the_facilitator_settles_only_for_the_networks_tokens_and_payees_it_serves() {
    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let usdc = anvil.deploy_token("USDC", "2").await.unwrap();
    let other_token = anvil.deploy_token("USDC", "2").await.unwrap();
    let payer = &anvil.accounts()[1];
    for token in [usdc, other_token] {
        anvil.mint(token, payer.address, U256::from(1_000_000u64)).await.unwrap();
    }
    let (payee, stranger) = (anvil.accounts()[2].address, anvil.accounts()[4].address);
    let rpc = anvil.rpc().await.unwrap().clone();
    let gas = anvil.accounts()[3].signer.clone();
    let network = format!("eip155:{CHAIN_ID}");
    let policy = FacilitatorPolicy {
        networks: Some([network.clone()].into()),
        assets: Some([(network.clone(), usdc)].into()),
        payees: Some([payee].into()),
    };
    let facilitator = LocalFacilitator::new(
        vec![ChainAccess { rpc: rpc.clone(), signer: gas.clone() }],
        Arc::new(MemoryStore::new()),
    )
    .with_policy(policy);
    let token = "a-facilitator-token";
    let base = serve(router_with_token(Arc::new(facilitator), ApiToken::new(token).unwrap())).await;
    let client =
        RemoteFacilitator::new(base.parse().unwrap()).unwrap().with_bearer_token(token).unwrap();

    let served = request(payer, usdc, payee);
    assert!(client.verify(&served).await.unwrap().is_valid);
    for refused in [request(payer, usdc, stranger), request(payer, other_token, payee)] {
        let verdict = client.verify(&refused).await.unwrap();
        assert!(!verdict.is_valid);
        assert_eq!(verdict.invalid_reason.as_deref(), Some("invalid_payment_requirements"));
        let settled = client.settle(&refused).await.unwrap();
        assert!(!settled.success);
        assert_eq!(settled.error_reason.as_deref(), Some("invalid_payment_requirements"));
        assert_eq!(settled.transaction, "");
    }
    assert_eq!(rpc.balance_of(usdc, stranger).await.unwrap(), U256::ZERO);
    assert_eq!(rpc.balance_of(other_token, payee).await.unwrap(), U256::ZERO);
    let settled = client.settle(&served).await.unwrap();
    assert!(settled.success, "{settled:?}");

    // A network it has a node for but does not serve.
    let elsewhere = FacilitatorPolicy {
        networks: Some(["eip155:8453".to_string()].into()),
        ..FacilitatorPolicy::default()
    };
    let facilitator =
        LocalFacilitator::new(vec![ChainAccess { rpc, signer: gas }], Arc::new(MemoryStore::new()))
            .with_policy(elsewhere);
    let verdict = facilitator.verify(&request(payer, usdc, payee)).await.unwrap();
    assert_eq!(verdict.invalid_reason.as_deref(), Some("invalid_network"));
    let settled = facilitator.settle(&request(payer, usdc, payee)).await.unwrap();
    assert_eq!(settled.error_reason.as_deref(), Some("invalid_network"));
    assert!(facilitator.supported().await.unwrap().kinds.is_empty());
}

#[tokio::test]
async fn the_facilitator_api_answers_only_holders_of_its_token() {
    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let usdc = anvil.deploy_token("USDC", "2").await.unwrap();
    let facilitator = LocalFacilitator::new(
        vec![ChainAccess {
            rpc: anvil.rpc().await.unwrap().clone(),
            signer: anvil.accounts()[3].signer.clone(),
        }],
        Arc::new(MemoryStore::new()),
    );
    let base =
        serve(router_with_token(Arc::new(facilitator), ApiToken::new("right\n").unwrap())).await;
    let body =
        serde_json::to_vec(&request(&anvil.accounts()[1], usdc, anvil.accounts()[2].address))
            .unwrap();
    let http = reqwest::Client::new();
    for authorization in
        [None, Some("Bearer wrong"), Some("Bearer "), Some("Basic right"), Some("right")]
    {
        for (method, path) in [("POST", "verify"), ("POST", "settle"), ("GET", "supported")] {
            let mut call = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if method == "POST" {
                call = call.header("content-type", "application/json").body(body.clone());
            }
            if let Some(value) = authorization {
                call = call.header("authorization", value);
            }
            let answer = call.send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{path} with {authorization:?}");
            assert!(answer.headers().contains_key("www-authenticate"));
        }
    }
    let health = http.get(format!("{base}health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "health checks need no token");
    let supported = http
        .get(format!("{base}supported"))
        .header("authorization", "bearer right")
        .send()
        .await
        .unwrap();
    assert_eq!(supported.status(), StatusCode::OK);
    let client = RemoteFacilitator::new(base.parse().unwrap()).unwrap();
    assert!(client.supported().await.is_err(), "no token, no answer");
}
