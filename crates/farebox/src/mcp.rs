//! `farebox mcp`: the wallet as a Model Context Protocol server over stdio, so that an LLM agent
//! pays for HTTP requests within the wallet file's caps.
//!
//! Three tools, on the same wallet file, policy, persistent budget and ledger as `farebox pay`
//! (and through the same code: [`pay::send`] pays, [`quote::ask`] quotes):
//! - `quote` (url, method, max_price): every offer of the server's 402 and which one `fetch`
//!   would choose and why; pays nothing.
//! - `fetch` (method, url, headers, body, max_price): the response (status, headers, body as
//!   text, or base64 when not UTF-8, at most [`MAX_BODY`] bytes) and what was paid; or a
//!   refusal whose `code` is `pay`'s error name ([`Exit::name`]), with `isError` set.
//! - `budget` (host): what each cap has left, and the payments of the last day.
//!
//! Stdout is the protocol; logs go to stderr. Results carry no secret: no key, NWC URI,
//! macaroon, token, proof or preimage (payments are named by their reference: a payment hash or
//! a transaction hash).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use farebox_client::{Budget, LedgerFilter, Scope};
use farebox_core::Money;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{ErrorData, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::pay::{self, Exit, Failure, PaidLog, RequestArgs, WalletArgs};
use crate::wallet_file::WalletConfig;
use crate::{ledger, quote};

/// The most of a response body a `fetch` result carries: an agent's context is small, and a
/// result must fit the client's message buffer. The rest is not read (`body_truncated`).
pub const MAX_BODY: usize = 256 * 1024;
/// How far back `budget` lists payments.
const RECENT: Duration = Duration::from_secs(24 * 3600);
/// At most this many of them, the latest.
const RECENT_MAX: usize = 50;

#[derive(clap::Args)]
pub struct McpArgs {
    #[command(flatten)]
    wallet: WalletArgs,
}

/// Serves the tools on stdin/stdout until the client closes them.
pub async fn run(args: McpArgs) -> Result<(), Failure> {
    let config = args.wallet.config(100, 10)?;
    if config.path.as_os_str().is_empty() {
        tracing::warn!("no wallet file: paying with the dev wallet, budget in memory");
    }
    // One budget for the server's life: with a store it is the store's, without one (the dev
    // wallet) its caps still hold across calls.
    let budget = pay::budget(&config)?;
    let in_flight = Arc::new(RwLock::new(()));
    let server = WalletServer { config: Arc::new(config), budget, in_flight: in_flight.clone() };
    let service = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Failure::new(Exit::Failed, format!("MCP handshake: {e}")))?;
    let served = service.waiting().await;
    // Payments under way finish before the process exits.
    let _ = in_flight.write().await;
    served.map_err(|e| Failure::new(Exit::Failed, format!("MCP: {e}")))?;
    Ok(())
}

#[derive(Clone)]
struct WalletServer {
    config: Arc<WalletConfig>,
    budget: Budget,
    /// Each `fetch` under way holds a read guard; `run` takes the write lock before exiting.
    in_flight: Arc<RwLock<()>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct QuoteParams {
    /// The URL to request.
    url: String,
    /// The HTTP method (default GET).
    method: Option<String>,
    /// Quote as `fetch` would choose with this `max_price`.
    max_price: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct FetchParams {
    /// The URL to request.
    url: String,
    /// The HTTP method (default GET).
    method: Option<String>,
    /// Request headers, name to value.
    headers: Option<BTreeMap<String, String>>,
    /// The request body, sent as-is.
    body: Option<String>,
    /// The most this call may pay, fees and deposits included: "50 sat", "0.01 USDC".
    max_price: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct BudgetParams {
    /// Also show the per-host caps' room for this host (`host` or `host:port`).
    host: Option<String>,
}

/// A tool's refusal: `pay`'s error name as `code`, its exit code, why, and what was paid
/// before it failed (a proof the server refused was still paid for).
fn refusal(f: &Failure, paid: Vec<Value>) -> CallToolResult {
    refusal_with(f, json!({ "paid": paid }))
}

/// [`refusal`] added to `answer` (which says what was paid).
fn refusal_with(f: &Failure, mut answer: Value) -> CallToolResult {
    tracing::info!(code = f.exit.name(), "refused: {}", f.message);
    answer["ok"] = json!(false);
    answer["code"] = json!(f.exit.name());
    answer["exit"] = json!(f.exit.code());
    answer["message"] = json!(f.message);
    CallToolResult::structured_error(answer)
}

/// What the server answered, and what was paid for it.
fn response_json(fetched: &pay::Fetched, paid: Vec<Value>) -> Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &fetched.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let (body, encoding) = body_text(&fetched.body, fetched.truncated);
    json!({
        "ok": true,
        "status": fetched.status.as_u16(),
        "headers": headers,
        "body": body,
        "body_encoding": encoding,
        "body_truncated": fetched.truncated,
        "paid": paid,
    })
}

/// The body as text when it is UTF-8, else as base64; and which.
fn body_text(body: &[u8], truncated: bool) -> (String, &'static str) {
    match std::str::from_utf8(body) {
        Ok(text) => (text.to_string(), "text"),
        // Cut inside a character by the size limit: what came is text all the same.
        Err(e) if truncated && e.error_len().is_none() => {
            (String::from_utf8_lossy(&body[..e.valid_up_to()]).into_owned(), "text")
        }
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), "base64"),
    }
}

/// `max_price` in the wallet's units (one amount per asset the unit names).
fn max_price(config: &WalletConfig, text: Option<&String>) -> Result<Vec<Money>, Failure> {
    pay::max_amounts(config, text.map(std::slice::from_ref).unwrap_or_default(), None)
}

fn request(
    url: String,
    method: Option<String>,
    headers: Vec<String>,
    body: Option<String>,
) -> RequestArgs {
    RequestArgs { url, method: method.unwrap_or_else(|| "GET".into()), data: body, headers }
}

#[tool_router]
impl WalletServer {
    #[tool(
        description = "Ask a URL what it costs, without paying: every offer of the server's 402 (rail, amount and asset, fee bound, payee, what it buys), whether the wallet's policy and caps allow each, and which one `fetch` would choose and why. `code` is what `fetch` would end with before paying (ok, over_budget, no_payable_offer, ...).",
        annotations(read_only_hint = true, open_world_hint = true)
    )]
    async fn quote(
        &self,
        Parameters(p): Parameters<QuoteParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let request = request(p.url, p.method, Vec::new(), None);
        let asked = async {
            let max = max_price(&self.config, p.max_price.as_ref())?;
            let payer = pay::payer_within(&self.config, self.budget.clone(), &max).await?;
            let (quote, exit) = quote::ask(&payer, &request).await?;
            Ok::<_, Failure>((quote::to_json(&quote, &payer.skipped), exit))
        };
        Ok(match asked.await {
            Ok((mut answer, exit)) => {
                answer["code"] = json!(exit.name());
                CallToolResult::structured(answer)
            }
            Err(f) => refusal(&f, Vec::new()),
        })
    }

    #[tool(
        description = "Make an HTTP request, paying for it from the wallet if the server answers 402 (L402, x402 or MPP), within the wallet's caps and `max_price` (offers in another asset than max_price's are refused). Returns the status, headers and body (text, or base64 when `body_encoding` is base64; at most 256 KiB) and what was paid (rail, amount, fee, reference). On failure `isError` is set and `code` says why: over_budget, no_payable_offer, proof_refused, backend_down, outcome_unknown, server_error, payment_failed, bad_input, failed.",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = true)
    )]
    async fn fetch(
        &self,
        Parameters(p): Parameters<FetchParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let headers =
            p.headers.unwrap_or_default().into_iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let request = request(p.url, p.method, headers, p.body);
        tracing::info!(method = %request.method, url = %without_query(&request.url), "fetch");
        let paid = PaidLog::default();
        // A payment under way runs to its end (paid, ledger written, sessions closed) even if
        // the client cancels the call or goes away: its own task, which `run` waits for.
        let (config, budget, log) = (self.config.clone(), self.budget.clone(), paid.clone());
        let in_flight = self.in_flight.clone().read_owned().await;
        let request = Arc::new(request);
        let sent = request.clone();
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            let max = max_price(&config, p.max_price.as_ref())?;
            let payer = pay::payer_within(&config, budget, &max).await?;
            for why in &payer.skipped {
                tracing::warn!("{why}");
            }
            pay::send(payer, &sent, true, MAX_BODY, &log).await
        });
        let outcome = task
            .await
            .unwrap_or_else(|e| Err(Failure::new(Exit::Failed, format!("the payment task: {e}"))));
        let paid = paid.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let fetched = match outcome {
            Ok(fetched) => fetched,
            Err(f) => return Ok(refusal(&f, paid)),
        };
        for p in &paid {
            tracing::info!(rail = %p["rail"], amount = %p["amount"], "paid");
        }
        let answer = response_json(&fetched, paid);
        Ok(match fetched.check_status(&request) {
            Ok(()) => CallToolResult::structured(answer),
            // The server's error, with its answer: the agent may read why.
            Err(f) => refusal_with(&f, answer),
        })
    }

    #[tool(
        description = "What the wallet may still spend: for each asset, the most per request, what is counted so far, and each cap (total, per hour/day, per host) with what it has left; and the payments, deposits and refunds of the last 24 hours.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn budget(
        &self,
        Parameters(p): Parameters<BudgetParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(match self.budget_json(p.host.as_deref().unwrap_or("")) {
            Ok(answer) => CallToolResult::structured(answer),
            Err(f) => refusal(&f, Vec::new()),
        })
    }
}

impl WalletServer {
    fn budget_json(&self, host: &str) -> Result<Value, Failure> {
        let mut assets = Vec::new();
        for caps in &self.config.caps {
            let asset = caps.asset();
            let mut rows = Vec::new();
            for (cap, left) in self.budget.left(asset, host)? {
                rows.push(json!({
                    "limit": quote::money(&Money::new(asset.clone(), cap.amount)),
                    "window": cap.window.map(farebox_client::window_name),
                    "per_host": cap.scope == Scope::PerHost,
                    "left": quote::money(&left),
                }));
            }
            assets.push(json!({
                "symbol": asset.symbol(),
                "per_request": quote::money(&caps.per_request()),
                "counted": quote::money(&self.budget.spent(asset)),
                "caps": rows,
            }));
        }
        let since = SystemTime::now().checked_sub(RECENT);
        let mut recent =
            self.budget.ledger().query(&LedgerFilter { host: None, since, until: None })?;
        let skip = recent.len().saturating_sub(RECENT_MAX);
        let recent: Vec<Value> =
            recent.drain(skip..).map(|e| ledger::entry_json(&e, false)).collect();
        Ok(json!({ "assets": assets, "host": host, "recent": recent }))
    }
}

#[tool_handler(
    name = "farebox",
    instructions = "A wallet that pays for HTTP APIs answering 402 Payment Required (L402 over Lightning, x402 and MPP over USDC), within spending caps its owner set. Call `quote` to see what a URL costs before paying, `fetch` to request it (paying if asked; give `max_price` to cap one call), `budget` to see what is left."
)]
impl ServerHandler for WalletServer {}

/// A URL without its query and fragment, for logs (a query may carry an API key).
fn without_query(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_utf8_comes_as_base64_and_text_cut_by_the_limit_as_text() {
        assert_eq!(body_text(b"{\"a\":1}", false), ("{\"a\":1}".to_string(), "text"));
        assert_eq!(body_text(&[0xff, 0x00, 0x10], false), ("/wAQ".to_string(), "base64"));
        // "é" is two bytes; the limit kept only the first.
        assert_eq!(body_text(&[b'a', 0xc3], true), ("a".to_string(), "text"));
        assert_eq!(
            body_text(&[b'a', 0xc3], false).1,
            "base64",
            "a whole body cut short is not text"
        );
    }
}
