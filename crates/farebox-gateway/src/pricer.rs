//! Dynamic prices: a route whose price comes from an HTTP pricer the operator runs.
//!
//! ```toml
//! [[routes]]
//! path = "/v1/chat"
//! pricer = { url = "http://127.0.0.1:9100/price", timeout_ms = 300, cache_ttl_secs = 30,
//!            headers = ["x-model"], fallback = "100 sat" }
//! on_pricer_error = "fallback"   # or "refuse" (503), or "free"
//! ```
//!
//! For each request the gateway POSTs the request's facts to `url` as JSON:
//!
//! ```json
//! {"method": "POST", "path": "/v1/chat", "host": "api.example.com", "query": "stream=1",
//!  "headers": {"x-model": "large"}}
//! ```
//!
//! (`host` and `query` are `null` when absent; `headers` holds only the names the route lists,
//! those the request has), and the pricer answers `200` with `{"price": "25 sat"}` or
//! `{"price": ["25 sat", "0.02 usdc"]}`: amounts in the configuration's own grammar, each in an
//! asset one of the route's rails charges, none zero. The answer is cached per facts for
//! `cache_ttl_secs` (0: asked every time), which also keeps the price a client was challenged
//! with and the one its paid retry is checked against the same.
//!
//! **When the pricer fails** (no connection, a timeout, a status other than 200, an answer that
//! is not such a price, or more than [`MAX_ANSWER`] bytes), the route's `on_pricer_error`
//! decides: `fallback` charges the `fallback` price (the default when there is one); `refuse`
//! answers `503` with `Retry-After` (the default without a fallback); `free` serves the request
//! without payment. A route is never free because its pricer is down unless it says `free`.
//! Failed answers are not cached.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use farebox_core::{Price, Rail};
use farebox_server::Paywall;
use http::{HeaderMap, HeaderName, Method};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, OnPricerError, Route};

/// Largest pricer answer read, in bytes.
pub const MAX_ANSWER: usize = 16 * 1024;
/// Most cached prices per route.
const MAX_CACHED: usize = 10_000;
/// How long a client should wait when a route refuses because its pricer failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the pricer is told about a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Facts {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Answer {
    price: AnswerPrice,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnswerPrice {
    One(String),
    AnyOf(Vec<String>),
}

/// How a request on a dynamically priced route is charged.
#[derive(Clone)]
pub enum Priced {
    /// This paywall (the route's rails at the price found).
    At(Arc<Paywall>),
    /// Without payment (the pricer failed and the route says `on_pricer_error = "free"`).
    Free,
    /// Refused: the pricer failed and the route has neither a fallback nor `free`.
    Refused,
}

/// Why the pricer gave no price.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pricer: {0}")]
pub struct PricerError(pub String);

/// A price's paywall and until when it may be used.
type Cached = (Instant, Arc<Paywall>);

/// A route's pricer, its cache and the paywalls of the prices it named.
pub struct Pricer {
    url: reqwest::Url,
    client: reqwest::Client,
    headers: Vec<HeaderName>,
    ttl: Duration,
    on_error: OnPricerError,
    fallback: Option<Arc<Paywall>>,
    route: Route,
    rails: Vec<Arc<dyn Rail>>,
    config: Arc<Config>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl Pricer {
    /// The pricer of `route` (which has one), charging on `rails` (the route's).
    pub fn new(
        config: Arc<Config>,
        route: &Route,
        rails: Vec<Arc<dyn Rail>>,
    ) -> Result<Pricer, String> {
        let dynamic = route.dynamic.as_ref().ok_or("the route has no pricer")?;
        let section = &dynamic.pricer;
        let url = reqwest::Url::parse(&section.url).map_err(|e| e.to_string())?;
        let timeout = Duration::from_millis(section.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let headers =
            section.headers.iter().filter_map(|h| HeaderName::try_from(h.as_str()).ok()).collect();
        let mut pricer = Pricer {
            url,
            client,
            headers,
            ttl: Duration::from_secs(section.cache_ttl_secs),
            on_error: dynamic.on_error,
            fallback: None,
            route: route.clone(),
            rails,
            config,
            cache: Mutex::new(HashMap::new()),
        };
        if let Some(price) = &dynamic.fallback {
            pricer.fallback = Some(pricer.paywall(None, price.clone())?);
        }
        Ok(pricer)
    }

    fn paywall(&self, method: Option<&Method>, price: Price) -> Result<Arc<Paywall>, String> {
        let mut builder = Paywall::builder();
        for rail in &self.rails {
            builder = builder.shared_rail(rail.clone());
        }
        let priced = self.route.priced_route(method.cloned(), price).ok_or("bad route pattern")?;
        Ok(Arc::new(builder.route(priced).build().map_err(|e| e.to_string())?))
    }

    /// The facts of a request, as the pricer is told them.
    pub fn facts(
        &self,
        method: &Method,
        uri: &http::Uri,
        host: Option<&str>,
        headers: &HeaderMap,
    ) -> Facts {
        let mut picked = BTreeMap::new();
        for name in &self.headers {
            if let Some(v) = headers.get(name) {
                picked.insert(
                    name.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                );
            }
        }
        Facts {
            method: method.as_str().to_string(),
            path: uri.path().to_string(),
            host: host.map(str::to_string),
            query: uri.query().map(str::to_string),
            headers: picked,
        }
    }

    /// How `facts` is charged: from the cache, the pricer, or `on_pricer_error`. The second
    /// value says where the price came from (`cached`, `priced`, or the pricer's error).
    pub async fn price(
        &self,
        method: &Method,
        facts: &Facts,
    ) -> (Priced, Result<bool, PricerError>) {
        let key: [u8; 32] = Sha256::digest(serde_json::to_vec(facts).unwrap_or_default()).into();
        let now = Instant::now();
        if let Some((until, paywall)) =
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && *until > now
        {
            return (Priced::At(paywall.clone()), Ok(true));
        }
        match self
            .ask(facts)
            .await
            .and_then(|price| self.paywall(Some(method), price).map_err(PricerError))
        {
            Ok(paywall) => {
                if !self.ttl.is_zero() {
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= MAX_CACHED {
                        cache.retain(|_, (until, _)| *until > now);
                        if cache.len() >= MAX_CACHED {
                            cache.clear();
                        }
                    }
                    cache.insert(key, (now + self.ttl, paywall.clone()));
                }
                (Priced::At(paywall), Ok(false))
            }
            Err(e) => {
                let priced = match (self.on_error, &self.fallback) {
                    (OnPricerError::Free, _) => Priced::Free,
                    (OnPricerError::Fallback, Some(fallback)) => Priced::At(fallback.clone()),
                    _ => Priced::Refused,
                };
                (priced, Err(e))
            }
        }
    }

    /// Asks the pricer.
    async fn ask(&self, facts: &Facts) -> Result<Price, PricerError> {
        let fail = |why: String| PricerError(why);
        let mut response =
            self.client.post(self.url.clone()).json(facts).send().await.map_err(|e| {
                fail(if e.is_timeout() { "timed out".into() } else { "cannot be reached".into() })
            })?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(fail(format!("answered {}", response.status())));
        }
        if response.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            return Err(fail(format!("answer larger than {MAX_ANSWER} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(if e.is_timeout() { "timed out".into() } else { e.to_string() }))?
        {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(fail(format!("answer larger than {MAX_ANSWER} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| fail("answer is not {\"price\": …}".into()))?;
        let texts = match answer.price {
            AnswerPrice::One(t) => vec![t],
            AnswerPrice::AnyOf(v) => v,
        };
        if texts.is_empty() || texts.len() > 8 {
            return Err(fail("a price is 1 to 8 amounts".into()));
        }
        let mut offers = Vec::with_capacity(texts.len());
        for text in &texts {
            let money = self.config.parse_amount(text).map_err(fail)?;
            if money.amount == 0 {
                return Err(fail(format!("{text:?} is zero")));
            }
            if !self
                .route
                .rails
                .iter()
                .any(|r| crate::rails::charges(&self.config, r, &money.asset))
            {
                return Err(fail(format!(
                    "{text:?} is in an asset none of the route's rails charges"
                )));
            }
            offers.push(money);
        }
        Price::any_of(offers).map_err(|e| fail(e.to_string()))
    }
}
