//! The demo upstream API: the free service that `farebox demo` sells access to.

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

/// Jokes are what the demo sells; one is picked by the request counter so repeated calls differ.
const JOKES: &[&str] = &[
    "Why did the agent pay 10 sats? Because the API finally had a price instead of a password.",
    "A macaroon walks into a bar. The bartender checks its caveats.",
    "There are 10 kinds of APIs: those that answer 402 and those that ask for your email.",
];

pub fn router() -> Router {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    Router::new()
        .route(
            "/",
            get(|| async { "farebox demo upstream: try /joke, /weather/{city}, /report, /health\n" }),
        )
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/joke",
            get(|| async {
                let i = COUNTER.fetch_add(1, Ordering::Relaxed) % JOKES.len();
                Json(json!({ "joke": JOKES[i] }))
            }),
        )
        .route(
            "/weather/{city}",
            get(|Path(city): Path<String>| async move { Json(weather(&city)) }),
        )
        .route("/ticks/{symbol}", get(|Path(symbol): Path<String>| async move { Json(tick(&symbol)) }))
        .route(
            "/report",
            get(|| async {
                Json(json!({ "report": "Q3 API revenue: per request, in sats and in USDC, no keys issued." }))
            }),
        )
}

fn tick(symbol: &str) -> Value {
    // A made-up but stable quote per symbol: the demo's metered market-data feed.
    let seed = symbol.bytes().fold(11u32, |h, b| h.wrapping_mul(33).wrapping_add(u32::from(b)));
    json!({ "symbol": symbol, "price": f64::from(seed % 90_000) / 100.0 })
}

fn weather(city: &str) -> Value {
    // Deterministic per city so the demo output is reproducible.
    let seed = city.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let sky = ["clear", "cloudy", "rain"][(seed % 3) as usize];
    let temperature_c = i64::from(seed % 35) - 5;
    json!({ "city": city, "temperature_c": temperature_c, "sky": sky })
}
