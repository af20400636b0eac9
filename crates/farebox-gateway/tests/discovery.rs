//! Discovery from the configuration: `/openapi.json` (the MPP discovery draft), the x402 Bazaar
//! list and the bazaar extension of the 402s, and `/llms.txt`, on a gateway that offers L402,
//! MPP (Lightning and EVM charges) and x402 on a real anvil chain. Every document is checked
//! against `specs/schemas`, and the schema files themselves with their examples.

#[path = "../../../specs/schemas/harness.rs"]
mod harness;

mod common;

use base64::Engine as _;
use farebox_evm::U256;
use farebox_evm::anvil::Anvil;
use serde_json::{Value, json};

const CHAIN_ID: u64 = 84532;

#[test]
fn discovery_schema_files_and_examples() {
    harness::check_files("discovery");
    harness::check_file("x402/extensions/bazaar");
    harness::check_file("x402/v2/discovery-resources");
    harness::check_shared_defs();
}

struct World {
    g: common::Running,
    token: String,
    _anvil: Anvil,
    _keys: tempfile::TempDir,
}

async fn world(extra: &str) -> World {
    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let accounts = anvil.accounts();
    anvil.mint(token, accounts[1].signer.address(), U256::from(1_000_000u64)).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let gas_key = keys.path().join("gas.key");
    std::fs::write(&gas_key, accounts[3].key).unwrap();
    let upstream = common::Upstream::default();
    let upstream_addr = common::serve_router(common::upstream_router(upstream.clone())).await;
    let text = format!(
        r#"{base}
{x402}
[rails.mpp]
realm = "api.example.com"
lightning = true

[rails.mpp.evm_charge]
asset = "usdc"
recipient = "{pay_to:#x}"
gas_key = {{ key_file = "{gas_key}" }}

[discovery]
title = "Example data API"
categories = ["data"]
homepage = "https://example.com/docs"

[free_tier]
requests = 2
window_secs = 60

{extra}

[[routes]]
path = "/health"
free = true

[[routes]]
methods = ["GET"]
path = "/joke"
price = ["10 sat", "0.05 usdc"]
description = "a joke"
free_tier = true

[[routes]]
path = "/weather/*"
prices = {{ GET = "25 sat", POST = "0.1 usdc" }}
rails = ["l402", "x402"]

[[routes]]
methods = ["POST"]
path = "/quote"
pricer = {{ url = "http://127.0.0.1:9/price", fallback = "5 sat" }}
rails = ["l402", "mpp"]
"#,
        base = common::base_config(upstream_addr, "").replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\npublic_url = \"https://api.example.com\""
        ),
        x402 = farebox_gateway::testing::x402_sections(
            CHAIN_ID,
            anvil.url(),
            &format!("{token:#x}"),
            &format!("{:#x}", accounts[2].address),
            &gas_key
        ),
        pay_to = accounts[2].address,
        gas_key = gas_key.display(),
    );
    let g = common::start_with(upstream, upstream_addr, &text).await;
    World { g, token: format!("{token:#x}"), _anvil: anvil, _keys: keys }
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_lists_every_mpp_offer_and_every_rails_price() {
    let w = world("").await;
    let answer = get(&w.g.url("/openapi.json")).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    assert_eq!(answer.headers()["cache-control"], "public, max-age=300");
    assert_eq!(answer.headers()["access-control-allow-origin"], "*");
    let doc: Value = answer.json().await.unwrap();
    harness::assert_valid("discovery/openapi", &doc);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Example data API");
    assert_eq!(doc["x-service-info"]["categories"], json!(["data"]));
    assert_eq!(doc["x-service-info"]["docs"]["llms"], "https://api.example.com/llms.txt");
    assert_eq!(doc["x-service-info"]["docs"]["homepage"], "https://example.com/docs");

    // 10 sat or 0.05 USDC: MPP's Lightning charge in sats, its EVM charge in token base units.
    let joke = &doc["paths"]["/joke"]["get"];
    assert_eq!(
        joke["x-payment-info"]["offers"],
        json!([
            {"intent": "charge", "method": "lightning", "amount": "10", "currency": "sat", "description": "a joke"},
            {"intent": "charge", "method": "evm", "amount": "50000", "currency": w.token, "description": "a joke"},
        ])
    );
    assert!(joke["responses"]["402"].is_object());
    let prices = joke["x-farebox"]["prices"].as_array().unwrap();
    let x402 = prices.iter().find(|p| p["rail"] == "x402").expect("an x402 price");
    assert_eq!(x402["amount"], "50000");
    assert_eq!(x402["decimals"], 6);
    assert_eq!(x402["display"], "0.05 USDC");
    let l402 = prices.iter().find(|p| p["rail"] == "l402").expect("an L402 price");
    assert_eq!((l402["amount"].as_str(), l402["asset"].as_str()), (Some("10000"), Some("msat")));
    assert_eq!(joke["x-farebox"]["freeTier"], true);

    // A prefix route is a path template; without MPP on the route there is no x-payment-info,
    // but its 402 and its prices are declared.
    let weather = &doc["paths"]["/weather/{path}"];
    assert_eq!(weather["get"]["parameters"][0]["name"], "path");
    assert!(weather["get"].get("x-payment-info").is_none());
    assert!(weather["get"]["responses"]["402"].is_object());
    assert_eq!(weather["post"]["x-farebox"]["prices"][0]["display"], "0.1 USDC");
    assert!(weather.get("put").is_none(), "only the priced methods");

    // A dynamic price is null in every MPP offer.
    let quote = &doc["paths"]["/quote"]["post"];
    let offers = quote["x-payment-info"]["offers"].as_array().unwrap();
    assert!(!offers.is_empty());
    assert!(offers.iter().all(|o| o["amount"].is_null()), "{quote}");
    assert_eq!(quote["x-farebox"]["fallback"][0]["display"], "5 sat");

    // A free route is described, not payable.
    let health = &doc["paths"]["/health"]["get"];
    assert!(health["responses"].get("402").is_none());
    assert!(health.get("x-payment-info").is_none());

    // The document is the one the gateway holds.
    assert_eq!(w.g.gateway.openapi().unwrap(), doc);
}

fn decode_payment_required(answer: &reqwest::Response) -> Value {
    let header = answer.headers()["payment-required"].to_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD.decode(header).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Facilitators must check `info` against the extension's own `schema`.
fn assert_bazaar(ext: &Value) {
    harness::assert_valid("x402/extensions/bazaar", ext);
    let own = jsonschema::draft202012::new(&ext["schema"]).unwrap();
    let errors: Vec<String> = own.iter_errors(&ext["info"]).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "info does not validate against its schema: {errors:?}\n{ext:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bazaar_lists_x402_operations_with_the_extension_their_402_carries() {
    let w = world("").await;
    // The 402 itself carries the bazaar extension.
    let unpaid = reqwest::Client::new().post(w.g.url("/weather/lisbon")).send().await.unwrap();
    assert_eq!(unpaid.status(), 402);
    let required = decode_payment_required(&unpaid);
    harness::assert_valid("x402/v2/payment-required", &required);
    let ext = &required["extensions"]["bazaar"];
    assert_bazaar(ext);
    assert_eq!(ext["info"]["input"]["method"], "POST");
    assert_eq!(ext["routeTemplate"], "/weather/:path");
    assert_eq!(ext["info"]["input"]["pathParams"]["path"], "lisbon");

    let answer = get(&w.g.url("/discovery/resources")).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["access-control-allow-origin"], "*");
    let list: Value = answer.json().await.unwrap();
    harness::assert_valid("x402/v2/discovery-resources", &list);
    // GET /joke (0.05 USDC) and POST /weather/* (0.1 USDC); GET /weather/* is priced in sats
    // only, and /quote's price is not known in advance.
    assert_eq!(list["pagination"], json!({"limit": 20, "offset": 0, "total": 2}));
    let items = list["items"].as_array().unwrap();
    let joke = items.iter().find(|i| i["metadata"]["route"] == "/joke").unwrap();
    assert_eq!(joke["resource"], "https://api.example.com/joke");
    assert_eq!(joke["accepts"][0]["amount"], "50000");
    assert_eq!(joke["accepts"][0]["asset"].as_str().unwrap().to_ascii_lowercase(), w.token);
    let weather = items.iter().find(|i| i["metadata"]["route"] == "/weather/*").unwrap();
    assert_eq!(weather["accepts"][0]["amount"], "100000");
    for item in items {
        assert_bazaar(&item["extensions"]["bazaar"]);
    }

    // Pagination and filters.
    let page: Value =
        get(&w.g.url("/discovery/resources?limit=1&offset=1")).await.json().await.unwrap();
    harness::assert_valid("x402/v2/discovery-resources", &page);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["pagination"], json!({"limit": 1, "offset": 1, "total": 2}));
    let other: Value =
        get(&w.g.url("/discovery/resources?network=eip155%3A1")).await.json().await.unwrap();
    assert_eq!(other["pagination"]["total"], 0);
    let mine: Value =
        get(&w.g.url(&format!("/discovery/resources?network=eip155:{CHAIN_ID}&type=http")))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(mine["pagination"]["total"], 2);
    for bad in ["limit=0", "limit=101", "offset=-1"] {
        let answer = get(&w.g.url(&format!("/discovery/resources?{bad}"))).await;
        assert_eq!(answer.status(), 400, "{bad}");
        harness::assert_valid("problem-details", &answer.json::<Value>().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llms_txt_says_what_each_route_costs_in_each_asset_and_how_to_pay() {
    let w = world("").await;
    let answer = get(&w.g.url("/llms.txt")).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/plain; charset=utf-8");
    let text = answer.text().await.unwrap();
    assert!(text.starts_with("# Example data API\n"), "{text}");
    for want in [
        "`GET /joke`: a joke: 10 sat (10000 msat; 1 sat = 1000 msat) via L402, MPP lightning charge",
        "0.05 USDC (50000 base units, 6 decimals, token",
        "via x402, MPP evm charge",
        "The first 2 requests per client every 60 s are free.",
        "`POST /weather/*`",
        "0.1 USDC (100000 base units, 6 decimals",
        "`POST /quote`",
        "when the pricer cannot answer: 5 sat",
        "Authorization: L402 <macaroon>:<preimage in hex>",
        "PAYMENT-SIGNATURE",
        "Authorization: Payment",
        "farebox pay https://api.example.com/<path>",
        "[OpenAPI with x-payment-info](https://api.example.com/openapi.json)",
        "[x402 Bazaar resources](https://api.example.com/discovery/resources)",
        "- `/health` any method",
    ] {
        assert!(text.contains(want), "llms.txt lacks {want:?}:\n{text}");
    }
}

#[tokio::test]
async fn discovery_answers_preflights_refuses_writes_and_can_be_turned_off() {
    let g = common::start("", "[[routes]]\npath = \"/*\"\nfree = true\n").await;
    let http = reqwest::Client::new();
    let pre = http.request(reqwest::Method::OPTIONS, g.url("/openapi.json")).send().await.unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    assert!(pre.headers()["access-control-allow-methods"].to_str().unwrap().contains("GET"));
    let post = http.post(g.url("/openapi.json")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(g.upstream.count(), 0, "discovery never reaches the upstream");

    // With discovery off, the path is the routes' like any other.
    let base = common::base_config(g.upstream_addr, "");
    let off =
        format!("{base}\n[discovery]\nenabled = false\n[[routes]]\npath = \"/*\"\nfree = true\n");
    g.gateway.reload(g.config(&off).unwrap()).await.unwrap();
    let answer = http.get(g.url("/openapi.json")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(g.upstream.last().path, "/openapi.json");
}
