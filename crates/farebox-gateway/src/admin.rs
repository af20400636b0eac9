//! The admin API and the status page, on `[admin] listen` only (never on the public listener).
//!
//! Every request but the status page's shell needs `Authorization: Bearer <token>`, the token
//! read from `[admin] token` (a file or an environment variable); the comparison is of SHA-256
//! digests in constant time, and anything else is `401` problem+json with
//! `WWW-Authenticate: Bearer`.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the status page: HTML with inline CSS and JS, no data in it (a browser cannot send a bearer token on navigation); it reads the token from its URL fragment (`/#token=…`, which browsers never send) or asks for it, keeps it in `sessionStorage`, and polls `/api/status` every second |
//! | `GET /api/status` | revenue per rail, route and asset, the latest payments, open sessions and L402 tokens, in one answer |
//! | `GET /api/payments?limit=N` | the payment log, newest first (N ≤ 500, default 50) |
//! | `GET /api/sessions?limit=N` | MPP sessions that are open or closing, per namespace (`mpp-evm-session`, `mpp-lightning-session`) |
//! | `GET /api/l402/tokens?limit=N` | L402 tokens seen paid, most recently used first, with their revocation |
//! | `POST /api/l402/tokens/{token_id}/revoke` | revokes a token (64 hex digits) on every instance within a second (through the L402 rail: `farebox_l402::tokens`) |
//! | `POST /api/sessions/{namespace}/{id}/close` | closes a session: marks it `closing` (no more service on any instance) and runs the MPP rail's upkeep at once, which settles it the way it settles idle sessions (an EVM channel is closed on chain capturing what was spent; a Lightning session refunds the rest to its return invoice) |
//!
//! Amounts are decimal strings of base units with the asset, its decimals and symbol, and a
//! display form (`10 sat`, `0.05 USDC`). Session records are shown without their rail-private
//! data (voucher signatures, refund invoices).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use base64::Engine as _;
use farebox_core::store::{Update, update_session};
use farebox_core::{Asset, Money, SessionStatus, StoreError};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::db::PaymentRow;
use crate::gateway::{Gateway, Live};
use crate::proxy::problem;

/// The status page.
const STATUS_HTML: &str = include_str!("status.html");
/// Most rows one listing returns.
const MAX_LIMIT: u32 = 500;
const DEFAULT_LIMIT: u32 = 50;
/// Rows of each kind `/api/status` returns.
const STATUS_ROWS: u32 = 20;

/// The admin token, as its digest.
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(token: &str) -> Self {
        AdminToken(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>` (constant time).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, token)) = value.trim().split_once(' ') else { return false };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        bool::from(presented.ct_eq(&self.0))
    }
}

/// The status page, with a Content-Security-Policy that allows only its own inline style and
/// script (by hash) and requests to this listener.
fn status_page() -> Response<Body> {
    let hash_of = |open: &str, close: &str| -> String {
        let inner = STATUS_HTML
            .split_once(open)
            .and_then(|(_, rest)| rest.split_once(close))
            .map_or("", |(inner, _)| inner);
        let digest = Sha256::digest(inner.as_bytes());
        format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
    };
    let csp = format!(
        "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_of("<style>", "</style>"),
        hash_of("<script>", "</script>")
    );
    let mut r = Response::new(Body::from(STATUS_HTML));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert("content-security-policy", v);
    }
    r
}

fn json_answer(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn unavailable(e: impl std::fmt::Display) -> Response<Body> {
    tracing::warn!(error = %e, "admin: the database cannot answer");
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the gateway's database cannot answer; try again shortly",
    );
    r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn limit_of(query: Option<&str>) -> Result<u32, Box<Response<Body>>> {
    let Some(text) = query.unwrap_or("").split('&').find_map(|p| p.strip_prefix("limit=")) else {
        return Ok(DEFAULT_LIMIT);
    };
    text.parse::<u32>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "bad_limit",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ))
    })
}

/// The asset a label (`msat`, `eip155:…/erc20:0x…`) names, as configured.
fn asset_of(config: &Config, label: &str) -> Option<Asset> {
    if label == "msat" {
        return Some(Asset::Bitcoin);
    }
    config.assets.keys().filter_map(|name| config.token(name)).find_map(|t| {
        let asset = Asset::Token(t);
        (crate::rails::asset_label(&Money::new(asset.clone(), 0)) == label).then_some(asset)
    })
}

/// An amount as the admin API shows it.
fn amount_json(config: &Config, label: &str, amount: u128) -> Value {
    match asset_of(config, label) {
        Some(asset) => crate::discovery::money_json(&Money::new(asset, amount)),
        None => {
            json!({ "asset": label, "amount": amount.to_string(), "display": format!("{amount} {label}") })
        }
    }
}

fn payment_json(config: &Config, p: &PaymentRow) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    v["money"] = amount_json(config, &p.asset, p.amount.parse().unwrap_or(0));
    v
}

async fn revenue(live: &Live) -> Result<Value, String> {
    let rows = live.db.revenue().await?;
    Ok(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "rail": r.rail,
                    "route": r.route,
                    "payments": r.payments,
                    "money": amount_json(&live.config, &r.asset, r.amount),
                })
            })
            .collect(),
    ))
}

async fn payments(live: &Live, limit: u32) -> Result<Value, String> {
    let rows = live.db.recent_payments(limit).await?;
    Ok(Value::Array(rows.iter().map(|p| payment_json(&live.config, p)).collect()))
}

/// The MPP session namespaces the configuration has, with the asset of each.
fn session_namespaces(config: &Config) -> Vec<(&'static str, Asset)> {
    let Some(m) = &config.rails.mpp else { return Vec::new() };
    let mut out = Vec::new();
    if let Some(e) = &m.evm_session
        && let Some(t) = config.token(&e.asset)
    {
        out.push((farebox_mpp::rail::EVM_SESSION_NAMESPACE, Asset::Token(t)));
    }
    if m.lightning_session.is_some() {
        out.push((farebox_mpp::rail::LIGHTNING_SESSION_NAMESPACE, Asset::Bitcoin));
    }
    out
}

async fn sessions(live: &Live, limit: u32) -> Result<Value, StoreError> {
    let mut out = Vec::new();
    for (namespace, asset) in session_namespaces(&live.config) {
        for status in [SessionStatus::Open, SessionStatus::Closing] {
            let listed =
                live.store.idle_sessions(namespace, status, u64::MAX, limit as usize).await?;
            for (id, record) in listed {
                let r = &record.value;
                let money =
                    |amount: u128| crate::discovery::money_json(&Money::new(asset.clone(), amount));
                out.push(json!({
                    "namespace": namespace,
                    "id": id,
                    "status": r.status.as_str(),
                    "deposit": money(r.deposit),
                    "accepted": money(r.accepted),
                    "spent": money(r.spent),
                    "settled": money(r.settled),
                    "available": money(r.available()),
                    "updated_at": r.updated_at,
                }));
            }
        }
    }
    // Most recently used first, at most `limit`.
    out.sort_by_key(|s| std::cmp::Reverse(s["updated_at"].as_u64().unwrap_or(0)));
    out.truncate(limit as usize);
    Ok(Value::Array(out))
}

async fn tokens(live: &Live, limit: u32) -> Result<Value, String> {
    let rows = live.db.tokens(limit).await?;
    let mut out = Vec::with_capacity(rows.len());
    for t in &rows {
        let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
        // Whether it is revoked is the L402 rail's to say (from the store, cached briefly).
        let mut id = [0u8; 32];
        let revoked = match (&live.l402, hex::decode_to_slice(&t.token_id, &mut id)) {
            (Some(rail), Ok(())) => rail.is_revoked(&id).await.map_err(|e| e.to_string())?,
            _ => false,
        };
        v["revoked"] = json!(revoked);
        v["money"] = amount_json(&live.config, &t.asset, t.amount.parse().unwrap_or(0));
        out.push(v);
    }
    Ok(Value::Array(out))
}

/// Every request on the admin listener.
pub async fn handle(State(gw): State<Arc<Gateway>>, request: Request) -> Response<Body> {
    let live = gw.live();
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    if path == "/" && (method == Method::GET || method == Method::HEAD) {
        return status_page();
    }
    let Some(token) = &live.admin_token else {
        return problem(StatusCode::NOT_FOUND, "no_admin", "no [admin] is configured");
    };
    if !token.admits(request.headers()) {
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API needs Authorization: Bearer <the admin token>",
        );
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"farebox-admin\""));
        return r;
    }
    let query = request.uri().query().map(str::to_string);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["api", "status"]) => {
            let answer = async {
                Ok::<_, String>(json!({
                    "instance": live.instance,
                    "now_ms": crate::now_ms().map_err(|e| e.to_string())?,
                    "revenue": revenue(&live).await?,
                    "payments": payments(&live, STATUS_ROWS).await?,
                    "sessions": sessions(&live, STATUS_ROWS).await.map_err(|e| e.to_string())?,
                    "tokens": tokens(&live, STATUS_ROWS).await?,
                }))
            };
            match answer.await {
                Ok(v) => json_answer(StatusCode::OK, &v),
                Err(e) => unavailable(e),
            }
        }
        (Method::GET, ["api", "payments"]) => match limit_of(query.as_deref()) {
            Err(r) => *r,
            Ok(limit) => match payments(&live, limit).await {
                Ok(v) => json_answer(StatusCode::OK, &json!({ "payments": v })),
                Err(e) => unavailable(e),
            },
        },
        (Method::GET, ["api", "sessions"]) => match limit_of(query.as_deref()) {
            Err(r) => *r,
            Ok(limit) => match sessions(&live, limit).await {
                Ok(v) => json_answer(StatusCode::OK, &json!({ "sessions": v })),
                Err(e) => unavailable(e),
            },
        },
        (Method::GET, ["api", "l402", "tokens"]) => match limit_of(query.as_deref()) {
            Err(r) => *r,
            Ok(limit) => match tokens(&live, limit).await {
                Ok(v) => json_answer(StatusCode::OK, &json!({ "tokens": v })),
                Err(e) => unavailable(e),
            },
        },
        (Method::POST, ["api", "l402", "tokens", id, "revoke"]) => {
            let mut token_id = [0u8; 32];
            if id.len() != 64 || hex::decode_to_slice(id, &mut token_id).is_err() {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "bad_token_id",
                    "a token id is 64 hex digits (the token_id of the macaroon identifier)",
                );
            }
            let Some(rail) = &live.l402 else {
                return problem(
                    StatusCode::NOT_FOUND,
                    "no_l402_rail",
                    "this gateway offers no L402 rail, so it has no tokens to revoke",
                );
            };
            match rail.revoke(&token_id).await.map_err(|e| e.to_string()) {
                Ok(()) => {
                    tracing::info!(token_id = %hex::encode(token_id), "L402 token revoked");
                    json_answer(
                        StatusCode::OK,
                        &json!({ "token_id": hex::encode(token_id), "revoked": true }),
                    )
                }
                Err(e) => unavailable(e),
            }
        }
        (Method::POST, ["api", "sessions", namespace, id, "close"]) => {
            close_session(&live, namespace, id).await
        }
        (_, ["api", ..]) => {
            problem(StatusCode::NOT_FOUND, "no_such_endpoint", "see the admin API's documentation")
        }
        _ => problem(StatusCode::NOT_FOUND, "no_such_endpoint", "the status page is at /"),
    }
}

/// Marks a session closing and runs the rails' upkeep, which settles closing sessions.
async fn close_session(live: &Arc<Live>, namespace: &str, id: &str) -> Response<Body> {
    if !session_namespaces(&live.config).iter().any(|(ns, _)| *ns == namespace) {
        return problem(
            StatusCode::NOT_FOUND,
            "no_such_namespace",
            "no such session namespace is configured",
        );
    }
    if id.is_empty() || id.len() > 130 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return problem(StatusCode::BAD_REQUEST, "bad_session_id", "not a session id");
    }
    let step = |r: &farebox_core::SessionRecord| -> Result<Update<SessionStatus>, StoreError> {
        if r.status != SessionStatus::Open {
            return Ok(Update::Keep(r.status));
        }
        let mut next = r.clone();
        next.status = SessionStatus::Closing;
        Ok(Update::Write(next, SessionStatus::Open))
    };
    match update_session(&*live.store, namespace, id, step).await {
        Err(e) => unavailable(e),
        Ok(None) => problem(StatusCode::NOT_FOUND, "no_such_session", "no such session"),
        Ok(Some(SessionStatus::Closed)) => {
            problem(StatusCode::CONFLICT, "session_closed", "the session is already closed")
        }
        Ok(Some(was)) => {
            // The upkeep settles every closing session; run it now rather than at its next tick.
            let guard = live.guard.clone();
            tokio::spawn(async move { guard.maintain().await });
            tracing::info!(namespace, session = id, "session closed by the admin API");
            json_answer(
                StatusCode::ACCEPTED,
                &json!({
                    "namespace": namespace,
                    "id": id,
                    "status": "closing",
                    "was": was.as_str(),
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = AdminToken::new("a-long-admin-token-1234");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(token.admits(&with("Bearer a-long-admin-token-1234")));
        assert!(token.admits(&with("bearer a-long-admin-token-1234")));
        assert!(!token.admits(&with("Bearer a-long-admin-token-123")));
        assert!(!token.admits(&with("Basic a-long-admin-token-1234")));
        assert!(!token.admits(&HeaderMap::new()));
    }
}
