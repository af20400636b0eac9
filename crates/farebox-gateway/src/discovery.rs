//! Discovery documents, all generated from the one configuration, served on the main listener:
//!
//! | path | what | for |
//! |---|---|---|
//! | `GET /openapi.json` | OpenAPI 3.1 with `x-service-info` and per-operation `x-payment-info` (the MPP discovery draft, `draft-payment-discovery-00`) | MPP registries and agents |
//! | `GET /discovery/resources` | the x402 Bazaar list (`?type=&limit=&offset=`, and `payTo`, `scheme`, `network` filters): every x402-priced operation with the requirements and `bazaar` extension its 402 carries | x402 catalogs |
//! | `GET /llms.txt` | the paid routes, their prices in each asset (with decimals) and how to pay (rails, headers, `farebox pay`) | agents reading text |
//!
//! Each is answered with `Cache-Control: public, max-age=300` (the draft's recommendation) and
//! `Access-Control-Allow-Origin: *` (read-only, public, and meant for browser-based agents too);
//! `OPTIONS` answers the CORS preflight. The documents are built when the configuration is
//! (at start and on every reload), so serving them costs nothing per request. When
//! `[discovery] enabled = false` the paths go to the routes like any other.
//!
//! **`x-payment-info`** lists the ways to pay with the `Payment` scheme (MPP): one offer per
//! method and intent the MPP rail would challenge with for that price, in the order of its
//! challenges: `lightning`/`charge` and `lightning`/`session` in satoshis (currency `sat`),
//! `evm`/`charge` and `evm`/`session` in the token's base units (currency: the token
//! address). A dynamically priced route's offers have `amount: null`. The draft's offers are
//! `Payment` challenges only, so L402 and x402 are not among them: every priced operation also
//! carries `x-farebox` with every rail's price (`rails`, `prices`), and declares its `402`.
//! Prefix routes (`/weather/*`) are described as `/weather/{path}` with a `path` parameter
//! that may contain `/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use farebox_core::{Asset, Money, Price, Rail, Resource};
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ALLOW, CACHE_CONTROL, CONTENT_TYPE,
};
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::config::{Config, Route, Settle};
use crate::proxy::problem;

/// The discovery paths (reserved on the main listener while discovery is on).
pub const OPENAPI: &str = "/openapi.json";
pub const LLMS: &str = "/llms.txt";
pub const RESOURCES: &str = "/discovery/resources";

/// Methods a route without a method list is described with.
const ANY_METHOD: [Method; 5] =
    [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
/// `limit` of `/discovery/resources`: default and bounds (x402 v2 spec section 8.1).
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

/// One way to pay one price.
#[derive(Debug, Clone)]
struct Offer {
    rail: &'static str,
    /// MPP's method and intent, for the MPP rail's offers.
    mpp: Option<(&'static str, &'static str)>,
    money: Money,
}

/// The built documents.
pub struct Discovery {
    openapi: Bytes,
    llms: Bytes,
    items: Vec<Value>,
}

/// What a route's operations need from the running gateway.
pub struct Input<'a> {
    pub config: &'a Config,
    pub routes: &'a [Route],
    pub public_url: &'a str,
    /// The x402 rail, when configured: it builds the requirements the Bazaar list shows.
    pub x402: Option<&'a Arc<dyn Rail>>,
    /// Unix seconds the configuration was loaded (`lastUpdated`).
    pub loaded_at: u64,
}

impl Discovery {
    /// Builds every document.
    pub async fn build(input: Input<'_>) -> Discovery {
        let openapi = openapi(&input);
        let llms = llms_txt(&input);
        let items = match input.x402 {
            Some(rail) => bazaar_items(&input, rail).await,
            None => Vec::new(),
        };
        Discovery {
            openapi: Bytes::from(serde_json::to_vec_pretty(&openapi).unwrap_or_default()),
            llms: Bytes::from(llms),
            items,
        }
    }

    /// The OpenAPI document, as served.
    pub fn openapi_json(&self) -> &[u8] {
        &self.openapi
    }

    /// The answer for `path` when it is a discovery path, else `None`.
    pub fn serve(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Option<Response<Body>> {
        let (content_type, body) = match path {
            OPENAPI => ("application/json", self.openapi.clone()),
            LLMS => ("text/plain; charset=utf-8", self.llms.clone()),
            RESOURCES => ("application/json", Bytes::new()),
            _ => return None,
        };
        if *method == Method::OPTIONS {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            let h = r.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("accept, content-type"),
            );
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
            return Some(r);
        }
        if *method != Method::GET && *method != Method::HEAD {
            let mut r = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "discovery documents are read with GET",
            );
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
            return Some(r);
        }
        let body = if path == RESOURCES {
            match self.resources(query) {
                Ok(b) => b,
                Err(why) => return Some(problem(StatusCode::BAD_REQUEST, "bad_query", why)),
            }
        } else {
            body
        };
        let mut r = Response::new(Body::from(body));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        Some(r)
    }

    /// `GET /discovery/resources` with its query.
    fn resources(&self, query: Option<&str>) -> Result<Bytes, String> {
        let mut limit = DEFAULT_LIMIT;
        let mut offset = 0usize;
        let mut filters: Vec<(&str, String)> = Vec::new();
        let mut kind: Option<String> = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
            match k {
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit must be 1 to {MAX_LIMIT}"))?;
                }
                "offset" => {
                    offset = v.parse().map_err(|_| "offset must be a non-negative integer")?;
                }
                "type" => kind = Some(v),
                "payTo" => filters.push(("payTo", v)),
                "scheme" => filters.push(("scheme", v)),
                "network" => filters.push(("network", v)),
                _ => {} // unknown filters (metadata[…]) match everything
            }
        }
        let matching: Vec<&Value> = self
            .items
            .iter()
            .filter(|item| kind.as_deref().is_none_or(|k| item["type"] == k))
            .filter(|item| {
                filters.iter().all(|(field, want)| {
                    item["accepts"].as_array().is_some_and(|a| {
                        a.iter().any(|r| {
                            r[*field].as_str().is_some_and(|have| have.eq_ignore_ascii_case(want))
                        })
                    })
                })
            })
            .collect();
        let total = matching.len();
        let page: Vec<&Value> = matching.into_iter().skip(offset).take(limit).collect();
        let body = json!({
            "x402Version": 2,
            "items": page,
            "pagination": { "limit": limit, "offset": offset, "total": total },
        });
        Ok(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The methods a route is described with.
fn methods_of(route: &Route) -> Vec<Method> {
    match &route.methods {
        Some(ms) => {
            let mut out: Vec<Method> = Vec::new();
            for m in ms {
                if !out.contains(m) {
                    out.push(m.clone());
                }
            }
            out
        }
        None => ANY_METHOD.to_vec(),
    }
}

/// The static price of `route` for `method`, if it has one.
fn price_of<'a>(route: &'a Route, method: &Method) -> Option<&'a Price> {
    route
        .prices
        .iter()
        .find(|(m, _)| m.as_ref() == Some(method))
        .or_else(|| route.prices.iter().find(|(m, _)| m.is_none()))
        .map(|(_, p)| p)
}

/// Every way to pay `price` on the route's rails, in challenge order.
fn offers(config: &Config, route: &Route, price: &Price) -> Vec<Offer> {
    let mut out = Vec::new();
    for rail in crate::rails::KNOWN {
        if !route.rails.iter().any(|r| r == rail) {
            continue;
        }
        for money in price.offers() {
            if !crate::rails::charges(config, rail, &money.asset) {
                continue;
            }
            if *rail == "mpp" {
                for (method, intent) in mpp_methods(config, &money.asset) {
                    let whole_sats = money.asset != Asset::Bitcoin || money.amount % 1000 == 0;
                    if whole_sats {
                        out.push(Offer {
                            rail: "mpp",
                            mpp: Some((method, intent)),
                            money: money.clone(),
                        });
                    }
                }
            } else {
                let name: &'static str = rail;
                out.push(Offer { rail: name, mpp: None, money: money.clone() });
            }
        }
    }
    out
}

/// The MPP methods and intents the configured rail offers for `asset`, in challenge order.
fn mpp_methods(config: &Config, asset: &Asset) -> Vec<(&'static str, &'static str)> {
    let Some(m) = &config.rails.mpp else { return Vec::new() };
    let is = |name: &Option<String>| {
        name.as_deref().is_some_and(|n| crate::config::asset_is(config, n, asset))
    };
    let bitcoin = *asset == Asset::Bitcoin && config.lightning.is_some() && m.lightning;
    let mut out = Vec::new();
    if bitcoin {
        out.push(("lightning", "charge"));
    }
    if is(&m.evm_charge.as_ref().map(|e| e.asset.clone())) {
        out.push(("evm", "charge"));
    }
    if is(&m.evm_session.as_ref().map(|e| e.asset.clone())) {
        out.push(("evm", "session"));
    }
    if bitcoin && m.lightning_session.is_some() {
        out.push(("lightning", "session"));
    }
    out
}

/// Every MPP method and intent the rail has, for a dynamic price (amounts unknown).
fn mpp_currencies(config: &Config) -> Vec<(&'static str, &'static str, String)> {
    let Some(m) = &config.rails.mpp else { return Vec::new() };
    let token = |name: &str| {
        config.assets.get(name).map(|a| a.address.to_ascii_lowercase()).unwrap_or_default()
    };
    let mut out = Vec::new();
    if m.lightning && config.lightning.is_some() {
        out.push(("lightning", "charge", "sat".to_string()));
    }
    if let Some(e) = &m.evm_charge {
        out.push(("evm", "charge", token(&e.asset)));
    }
    if let Some(e) = &m.evm_session {
        out.push(("evm", "session", token(&e.asset)));
    }
    if m.lightning_session.is_some() && m.lightning && config.lightning.is_some() {
        out.push(("lightning", "session", "sat".to_string()));
    }
    out
}

/// `x-payment-info`'s offer for an MPP offer: amounts in the method's unit.
fn mpp_offer(offer: &Offer, description: Option<&str>) -> Option<Value> {
    let (method, intent) = offer.mpp?;
    let (amount, currency) = match &offer.money.asset {
        Asset::Bitcoin => ((offer.money.amount / 1000).to_string(), "sat".to_string()),
        Asset::Token(t) => (offer.money.amount.to_string(), t.address.to_ascii_lowercase()),
        _ => return None,
    };
    let mut o =
        json!({ "intent": intent, "method": method, "amount": amount, "currency": currency });
    if let Some(d) = description {
        o["description"] = json!(d);
    }
    Some(o)
}

/// An amount described for agents: base units, decimals, symbol and the decimal display.
pub fn money_json(money: &Money) -> Value {
    let (asset, decimals, symbol) = match &money.asset {
        Asset::Bitcoin => ("msat".to_string(), 3u8, "sat".to_string()),
        Asset::Token(t) => (crate::rails::asset_label(money), t.decimals, t.symbol.clone()),
        _ => (crate::rails::asset_label(money), 0, String::new()),
    };
    json!({
        "asset": asset,
        "amount": money.amount.to_string(),
        "decimals": decimals,
        "symbol": symbol,
        "display": money.to_string(),
    })
}

fn settle_name(s: Settle) -> &'static str {
    match s {
        Settle::BeforeFirstByte => "before-first-byte",
        Settle::AfterEnd => "after-end",
        Settle::BeforeUpstream => "before-upstream",
    }
}

/// The OpenAPI path of a route pattern: `/a/*` is `/a/{path}`.
fn openapi_path(pattern: &str) -> (String, bool) {
    match pattern.strip_suffix("/*") {
        Some(prefix) => (format!("{prefix}/{{path}}"), true),
        None => (pattern.to_string(), false),
    }
}

fn title(input: &Input<'_>) -> String {
    input.config.discovery.title.clone().unwrap_or_else(|| {
        reqwest::Url::parse(input.public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "farebox gateway".into())
    })
}

fn openapi(input: &Input<'_>) -> Value {
    let d = &input.config.discovery;
    let base = input.public_url.trim_end_matches('/');
    let mut docs = Map::new();
    docs.insert("llms".into(), json!(format!("{base}{LLMS}")));
    if let Some(h) = &d.homepage {
        docs.insert("homepage".into(), json!(h));
    }
    if let Some(a) = &d.api_reference {
        docs.insert("apiReference".into(), json!(a));
    }
    let mut service = Map::new();
    if !d.categories.is_empty() {
        service.insert("categories".into(), json!(d.categories));
    }
    service.insert("docs".into(), Value::Object(docs));
    let mut info = json!({
        "title": title(input),
        "version": d.version.clone().unwrap_or_else(|| "1.0.0".into()),
    });
    if let Some(desc) = &d.description {
        info["description"] = json!(desc);
    }
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for route in input.routes {
        let (path, prefix) = openapi_path(&route.pattern);
        let item = paths.entry(path.clone()).or_default();
        if let Some(host) = &route.host
            && !item.contains_key("servers")
        {
            let scheme =
                reqwest::Url::parse(base).map(|u| u.scheme().to_string()).unwrap_or("https".into());
            item.insert("servers".into(), json!([{ "url": format!("{scheme}://{host}") }]));
        }
        for method in methods_of(route) {
            let key = method.as_str().to_ascii_lowercase();
            if item.contains_key(&key) {
                continue; // an earlier route takes these requests
            }
            let slug: String = path
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
                .split('_')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("_");
            let base_id = format!("{key}_{}", if slug.is_empty() { "root" } else { &slug });
            let n = ids.entry(base_id.clone()).or_insert(0);
            *n += 1;
            let id = if *n == 1 { base_id } else { format!("{base_id}_{n}") };
            let mut op = Map::new();
            op.insert("operationId".into(), json!(id));
            op.insert(
                "summary".into(),
                json!(
                    route
                        .description
                        .clone()
                        .unwrap_or_else(|| format!("{} {}", method, route.pattern))
                ),
            );
            if prefix {
                op.insert(
                    "parameters".into(),
                    json!([{
                        "name": "path",
                        "in": "path",
                        "required": true,
                        "description": "the rest of the path (it may contain '/')",
                        "schema": { "type": "string" }
                    }]),
                );
            }
            let mut responses = Map::new();
            responses.insert("200".into(), json!({ "description": "The API's answer" }));
            if !route.is_free() {
                responses.insert(
                    "402".into(),
                    json!({ "description": "Payment Required: one challenge per offered rail (WWW-Authenticate: L402 and Payment, PAYMENT-REQUIRED); pay one and retry" }),
                );
                let mut farebox = Map::new();
                farebox.insert("rails".into(), json!(route.rails));
                farebox.insert("settle".into(), json!(settle_name(route.settle)));
                if route.free_tier {
                    farebox.insert("freeTier".into(), json!(true));
                }
                let mut mpp = Vec::new();
                match (&route.dynamic, price_of(route, &method)) {
                    (Some(dynamic), _) => {
                        farebox.insert("dynamic".into(), json!(true));
                        if let Some(f) = &dynamic.fallback {
                            farebox.insert(
                                "fallback".into(),
                                json!(f.offers().iter().map(money_json).collect::<Vec<_>>()),
                            );
                        }
                        if route.rails.iter().any(|r| r == "mpp") {
                            for (method, intent, currency) in mpp_currencies(input.config) {
                                mpp.push(json!({
                                    "intent": intent, "method": method, "amount": null,
                                    "currency": currency,
                                    "description": "priced per request"
                                }));
                            }
                        }
                    }
                    (None, Some(price)) => {
                        let all = offers(input.config, route, price);
                        let prices: Vec<Value> = all
                            .iter()
                            .map(|o| {
                                let mut v = money_json(&o.money);
                                v["rail"] = json!(o.rail);
                                if let Some((m, i)) = o.mpp {
                                    v["method"] = json!(m);
                                    v["intent"] = json!(i);
                                }
                                v
                            })
                            .collect();
                        farebox.insert("prices".into(), json!(prices));
                        mpp = all
                            .iter()
                            .filter_map(|o| mpp_offer(o, route.description.as_deref()))
                            .collect();
                    }
                    (None, None) => {}
                }
                if !mpp.is_empty() {
                    op.insert("x-payment-info".into(), json!({ "offers": mpp }));
                }
                op.insert("x-farebox".into(), Value::Object(farebox));
            }
            op.insert("responses".into(), Value::Object(responses));
            item.insert(key, Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": info,
        "servers": [{ "url": base }],
        "x-service-info": service,
        "paths": paths,
    })
}

/// A price written for people and agents: `10 sat (10000 msat)` or `0.05 USDC (50000 base
/// units, 6 decimals)`.
fn describe_money(money: &Money) -> String {
    match &money.asset {
        Asset::Bitcoin => format!("{money} ({} msat; 1 sat = 1000 msat)", money.amount),
        Asset::Token(t) => format!(
            "{money} ({} base units, {} decimals, token {} on {})",
            money.amount, t.decimals, t.address, t.network
        ),
        _ => money.to_string(),
    }
}

fn rail_names(offers: &[Offer]) -> String {
    let mut names: Vec<String> = Vec::new();
    for o in offers {
        let name = match o.mpp {
            Some((m, i)) => format!("MPP {m} {i}"),
            None if o.rail == "l402" => "L402".to_string(),
            None => o.rail.to_string(),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(", ")
}

fn llms_txt(input: &Input<'_>) -> String {
    let c = input.config;
    let base = input.public_url.trim_end_matches('/');
    let mut t = String::new();
    let _ = writeln!(t, "# {}\n", title(input));
    let summary = c
        .discovery
        .description
        .clone()
        .unwrap_or_else(|| "An HTTP API sold per request through the farebox gateway".into());
    let _ = writeln!(
        t,
        "> {summary}. Each paid route answers an unpaid request with `402 Payment Required` and one challenge per payment rail it offers; pay one, then repeat the request with the proof. Base URL: {base}\n"
    );
    let _ = writeln!(t, "## How to pay\n");
    let _ = writeln!(
        t,
        "- With the farebox command: `farebox pay {base}/<path>` pays the 402 on a rail your wallet has, within the budget you give it, and prints the answer."
    );
    let names = c.rails.names();
    if names.contains(&"l402") {
        let lifetime = c.rails.l402.as_ref().map_or(0, |l| l.token_lifetime_secs);
        let _ = writeln!(
            t,
            "- L402 (Lightning): the 402 carries `WWW-Authenticate: L402 macaroon=\"…\", invoice=\"…\"`. Pay the BOLT11 invoice, then send `Authorization: L402 <macaroon>:<preimage in hex>`. The token serves further requests to the same route for {lifetime} s without paying again."
        );
    }
    if names.contains(&"x402") {
        let _ = writeln!(
            t,
            "- x402 (USDC by EIP-3009, `exact` scheme): the 402 carries `PAYMENT-REQUIRED` (base64 JSON, version 2; the JSON body lists the version 1 requirements). Sign a `transferWithAuthorization` for the amount to `payTo` and send it base64-encoded in `PAYMENT-SIGNATURE` (version 1: `X-PAYMENT`). The answer carries `PAYMENT-RESPONSE` with the settlement transaction."
        );
    }
    if names.contains(&"mpp") {
        let _ = writeln!(
            t,
            "- MPP (the `Payment` HTTP authentication scheme): the 402 carries `WWW-Authenticate: Payment id=\"…\", method=\"…\", intent=\"…\", request=\"…\"` per method. Pay as the method says (`lightning`: the invoice in the request; `evm`: an EIP-3009 authorization or, for a session, a payment-channel voucher) and send `Authorization: Payment <base64url credential>`. The answer carries `Payment-Receipt`."
        );
    }
    let _ = writeln!(
        t,
        "\nAmounts are integers in base units: msat for Bitcoin (1 sat = 1000 msat), and 10^decimals base units per token. The 402 challenge is authoritative; this file is a summary.\n"
    );
    let mut paid = String::new();
    let mut free = String::new();
    for route in input.routes {
        let host = route.host.as_deref().map(|h| format!(" (host {h})")).unwrap_or_default();
        let what = route.description.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
        if route.is_free() {
            let methods = route.methods.as_ref().map_or("any method".to_string(), |m| {
                m.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
            });
            let _ = writeln!(free, "- `{}` {methods}{host}{what}", route.pattern);
            continue;
        }
        let tier = match (&c.free_tier, route.free_tier) {
            (Some(ft), true) => format!(
                " The first {} requests per client every {} s are free.",
                ft.requests, ft.window_secs
            ),
            _ => String::new(),
        };
        if let Some(dynamic) = &route.dynamic {
            let methods =
                methods_of(route).iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            let fallback = dynamic
                .fallback
                .as_ref()
                .map(|f| {
                    let list: Vec<String> = f.offers().iter().map(describe_money).collect();
                    format!(" (when the pricer cannot answer: {})", list.join(" or "))
                })
                .unwrap_or_default();
            let _ = writeln!(
                paid,
                "- `{methods} {}`{host}{what}: priced per request; the 402 names the price{fallback}. Rails: {}.{tier}",
                route.pattern,
                route.rails.join(", ")
            );
            continue;
        }
        for method in methods_of(route) {
            let Some(price) = price_of(route, &method) else { continue };
            let all = offers(c, route, price);
            let amounts: Vec<String> = price
                .offers()
                .iter()
                .map(|m| {
                    let on: Vec<Offer> =
                        all.iter().filter(|o| o.money.asset == m.asset).cloned().collect();
                    format!("{} via {}", describe_money(m), rail_names(&on))
                })
                .collect();
            let _ = writeln!(
                paid,
                "- `{method} {}`{host}{what}: {}.{tier}",
                route.pattern,
                amounts.join("; or ")
            );
        }
    }
    let _ = writeln!(t, "## Paid routes\n");
    t.push_str(if paid.is_empty() { "None.\n" } else { &paid });
    let _ =
        writeln!(t, "\n`/*` at the end of a route matches the prefix and every path below it.\n");
    if !free.is_empty() {
        let _ = writeln!(t, "## Free routes\n\n{free}");
    }
    let _ = writeln!(t, "## Discovery\n");
    let _ = writeln!(t, "- [OpenAPI with x-payment-info]({base}{OPENAPI})");
    if c.rails.x402.is_some() {
        let _ = writeln!(t, "- [x402 Bazaar resources]({base}{RESOURCES})");
    }
    t
}

/// The Bazaar items: each x402-priced operation, with the requirements and extensions the
/// x402 rail's own 402 carries for it.
async fn bazaar_items(input: &Input<'_>, rail: &Arc<dyn Rail>) -> Vec<Value> {
    let mut items = Vec::new();
    for route in input.routes {
        if route.dynamic.is_some() || !route.rails.iter().any(|r| r == "x402") {
            continue;
        }
        let path = match route.pattern.strip_suffix("/*") {
            Some("") => "/".to_string(),
            Some(prefix) => prefix.to_string(),
            None => route.pattern.clone(),
        };
        for method in methods_of(route) {
            let Some(price) = price_of(route, &method) else { continue };
            let resource = Resource {
                method: method.clone(),
                path: path.clone(),
                route: route.pattern.as_str().into(),
                price: price.clone(),
                description: route.description.as_deref().map(Into::into),
                accept_payment: None,
            };
            let Ok(Some(challenge)) = rail.challenge(&resource, None).await else { continue };
            let Some(required) = challenge
                .headers
                .iter()
                .find(|(n, _)| n.as_str().eq_ignore_ascii_case("payment-required"))
                .and_then(|(_, v)| v.to_str().ok())
                .and_then(|v| farebox_x402::decode_header::<Value>(v).ok())
            else {
                continue;
            };
            let mut item = json!({
                "resource": required["resource"]["url"],
                "type": "http",
                "x402Version": 2,
                "accepts": required["accepts"],
                "lastUpdated": input.loaded_at,
                "metadata": {
                    "method": method.as_str(),
                    "route": route.pattern,
                    "description": required["resource"]["description"],
                },
            });
            if let Some(ext) = required.get("extensions") {
                item["extensions"] = ext.clone();
            }
            items.push(item);
        }
    }
    items
}
