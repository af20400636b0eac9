//! Prometheus metrics, written in the text exposition format (version 0.0.4) by hand: a few
//! counters and two histograms do not need a metrics library.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `farebox_gateway_requests_total` | `route`, `status` | every answered request |
//! | `farebox_gateway_payment_required_total` | `route` | 402 answers |
//! | `farebox_gateway_paid_requests_total` | `rail`, `route` | requests served for a payment credential (an L402 token's every use) |
//! | `farebox_gateway_payments_total` | `rail`, `route` | payments taken (an L402 token once, at its first paid answer on any instance) |
//! | `farebox_gateway_revenue_total` | `rail`, `route`, `asset` | what they paid, in the asset's base units (msat for Bitcoin) |
//! | `farebox_gateway_rate_limited_total` | `route`, `limit` | requests refused by a rate limit (`per_ip`, `per_token`) |
//! | `farebox_gateway_pricer_requests_total` | `route`, `outcome` | dynamic prices: `cached`, `priced`, `failed` |
//! | `farebox_gateway_free_tier_requests_total` | `route` | requests served by the free tier |
//! | `farebox_gateway_backend_errors_total` | `backend` | a backend that could not answer (`store`, `upstream`, `payment` for a rail's 503) |
//! | `farebox_gateway_verification_seconds` | `rail` | from the request's arrival until its payment was verified |
//! | `farebox_gateway_upstream_seconds` | `upstream` | from forwarding until the upstream's headers arrived |
//!
//! Payments and revenue are counted by the instance that gives the paid answer, as it decides
//! it (before the answer leaves), so that they never lag it; an L402 token by the instance whose
//! claim of its first paid answer was the first (see [`crate::payments`]), so that the sum over
//! every instance sharing a database counts each payment once.
//!
//! Routes are labelled by their host and pattern (`/weather/*`), never by request path, so the
//! number of series is bounded by the configuration.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Families {
    counters: BTreeMap<(&'static str, Labels), u128>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The gateway's metrics; one per process, kept across reloads.
#[derive(Default)]
pub struct Metrics {
    families: Mutex<Families>,
}

const HELP: &[(&str, &str, &str)] = &[
    ("farebox_gateway_requests_total", "counter", "Requests answered, by route and status."),
    (
        "farebox_gateway_payment_required_total",
        "counter",
        "402 Payment Required answers, by route.",
    ),
    (
        "farebox_gateway_paid_requests_total",
        "counter",
        "Requests served for a payment credential, by rail and route.",
    ),
    ("farebox_gateway_payments_total", "counter", "Payments taken, by rail and route."),
    (
        "farebox_gateway_revenue_total",
        "counter",
        "Revenue in base units of the asset (msat for Bitcoin), by rail, route and asset.",
    ),
    (
        "farebox_gateway_free_tier_requests_total",
        "counter",
        "Requests served by the free tier, by route.",
    ),
    (
        "farebox_gateway_rate_limited_total",
        "counter",
        "Requests refused by a rate limit, by route and limit.",
    ),
    (
        "farebox_gateway_pricer_requests_total",
        "counter",
        "Dynamic prices by route and outcome (cached, priced, failed).",
    ),
    (
        "farebox_gateway_backend_errors_total",
        "counter",
        "Backends that could not answer, by backend.",
    ),
    (
        "farebox_gateway_verification_seconds",
        "histogram",
        "Time from a paid request's arrival until its payment was verified, by rail.",
    ),
    (
        "farebox_gateway_upstream_seconds",
        "histogram",
        "Time until the upstream's status and headers arrived, by upstream.",
    ),
];

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, name: &'static str, labels: Labels, by: u128) {
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let slot = f.counters.entry((name, labels)).or_default();
        *slot = slot.saturating_add(by);
    }

    fn observe(&self, name: &'static str, labels: Labels, value: Duration) {
        let secs = value.as_secs_f64();
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let h = f.histograms.entry((name, labels)).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn request(&self, route: &str, status: u16) {
        self.add(
            "farebox_gateway_requests_total",
            vec![("route", route.into()), ("status", status.to_string())],
            1,
        );
    }

    pub fn payment_required(&self, route: &str) {
        self.add("farebox_gateway_payment_required_total", vec![("route", route.into())], 1);
    }

    pub fn paid_request(&self, rail: &str, route: &str) {
        self.add(
            "farebox_gateway_paid_requests_total",
            vec![("rail", rail.into()), ("route", route.into())],
            1,
        );
    }

    /// A payment taken; `asset` as [`crate::rails::asset_label`] spells it.
    pub fn payment(&self, rail: &str, route: &str, asset: &str, amount: u128) {
        self.add(
            "farebox_gateway_payments_total",
            vec![("rail", rail.into()), ("route", route.into())],
            1,
        );
        self.add(
            "farebox_gateway_revenue_total",
            vec![("rail", rail.into()), ("route", route.into()), ("asset", asset.into())],
            amount,
        );
    }

    pub fn rate_limited(&self, route: &str, limit: &'static str) {
        self.add(
            "farebox_gateway_rate_limited_total",
            vec![("route", route.into()), ("limit", limit.into())],
            1,
        );
    }

    pub fn pricer(&self, route: &str, outcome: &'static str) {
        self.add(
            "farebox_gateway_pricer_requests_total",
            vec![("route", route.into()), ("outcome", outcome.into())],
            1,
        );
    }

    pub fn free_tier(&self, route: &str) {
        self.add("farebox_gateway_free_tier_requests_total", vec![("route", route.into())], 1);
    }

    pub fn backend_error(&self, backend: &str) {
        self.add("farebox_gateway_backend_errors_total", vec![("backend", backend.into())], 1);
    }

    pub fn verification(&self, rail: &str, took: Duration) {
        self.observe("farebox_gateway_verification_seconds", vec![("rail", rail.into())], took);
    }

    pub fn upstream(&self, upstream: &str, took: Duration) {
        self.observe("farebox_gateway_upstream_seconds", vec![("upstream", upstream.into())], took);
    }

    /// The current value of a counter (for tests and the status page).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u128 {
        let f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        f.counters
            .iter()
            .filter(|((n, l), _)| {
                *n == name
                    && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), value) in &f.counters {
                if n == name {
                    let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
                }
            }
            for ((n, labels), h) in &f.histograms {
                if n != name {
                    continue;
                }
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        render_labels(labels, Some(&bound.to_string())),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    render_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", render_labels(labels, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", render_labels(labels, None), h.count);
            }
        }
        out
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> =
        labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

/// Label values escape `\`, `"` and newlines.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.request("/joke", 200);
        m.request("/joke", 200);
        m.payment("l402", "/joke", "msat", 10_000);
        m.upstream("demo", Duration::from_millis(3));
        m.request("/a\"b", 404);
        let text = m.render();
        assert!(
            text.contains("farebox_gateway_requests_total{route=\"/joke\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "farebox_gateway_revenue_total{rail=\"l402\",route=\"/joke\",asset=\"msat\"} 10000"
        ));
        assert!(
            text.contains(
                "farebox_gateway_upstream_seconds_bucket{upstream=\"demo\",le=\"0.005\"} 1"
            )
        );
        assert!(text.contains(
            "farebox_gateway_upstream_seconds_bucket{upstream=\"demo\",le=\"0.0025\"} 0"
        ));
        assert!(text.contains("route=\"/a\\\"b\""));
        assert_eq!(m.counter("farebox_gateway_requests_total", &[("route", "/joke")]), 2);
    }
}
