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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Series are kept in this many shards, each thread writing to its own, so that the worker
/// threads counting every request do not wait on one another; a scrape adds them up.
const SHARDS: usize = 16;

type Labels = Vec<(&'static str, String)>;

/// Series of every shard added up, in name and label order.
type Merged<T> = BTreeMap<(&'static str, Labels), T>;

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

/// One metric's series with given labels.
struct Series<T> {
    name: &'static str,
    labels: Labels,
    value: T,
}

/// Series by the hash of their name and labels (found without building the labels).
struct Table<T> {
    hasher: RandomState,
    series: HashMap<u64, Vec<Series<T>>>,
}

impl<T: Default> Table<T> {
    fn new(hasher: RandomState) -> Self {
        Table { hasher, series: HashMap::new() }
    }

    fn slot(&mut self, name: &'static str, labels: &[(&'static str, &str)]) -> &mut T {
        let mut h = self.hasher.build_hasher();
        name.hash(&mut h);
        labels.hash(&mut h);
        let bucket = self.series.entry(h.finish()).or_default();
        let same = |s: &Series<T>| {
            s.name == name
                && s.labels.len() == labels.len()
                && s.labels.iter().zip(labels).all(|((k, v), (lk, lv))| k == lk && v == lv)
        };
        let at = match bucket.iter().position(same) {
            Some(at) => at,
            None => {
                let labels = labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
                bucket.push(Series { name, labels, value: T::default() });
                bucket.len() - 1
            }
        };
        &mut bucket[at].value
    }

    fn iter(&self) -> impl Iterator<Item = &Series<T>> {
        self.series.values().flatten()
    }
}

struct Families {
    counters: Table<u128>,
    histograms: Table<Histogram>,
}

/// The gateway's metrics; one per process, kept across reloads.
pub struct Metrics {
    shards: Vec<Mutex<Families>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let hasher = RandomState::new();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Families {
                    counters: Table::new(hasher.clone()),
                    histograms: Table::new(hasher.clone()),
                })
            })
            .collect();
        Metrics { shards }
    }
}

thread_local! {
    /// This thread's shard.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

/// A status code as a label value, without an allocation.
fn status_label(status: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = status;
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
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

    fn shard(&self) -> MutexGuard<'_, Families> {
        let at = SHARD.with(|at| *at);
        self.shards[at].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, name: &'static str, labels: &[(&'static str, &str)], by: u128) {
        let mut f = self.shard();
        let slot = f.counters.slot(name, labels);
        *slot = slot.saturating_add(by);
    }

    fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: Duration) {
        let secs = value.as_secs_f64();
        let mut f = self.shard();
        let h = f.histograms.slot(name, labels);
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Every shard's series added up, in name and label order.
    fn merged(&self) -> (Merged<u128>, Merged<Histogram>) {
        let (mut counters, mut histograms) = (BTreeMap::new(), BTreeMap::new());
        for shard in &self.shards {
            let f = shard.lock().unwrap_or_else(|p| p.into_inner());
            for s in f.counters.iter() {
                let v: &mut u128 = counters.entry((s.name, s.labels.clone())).or_default();
                *v = v.saturating_add(s.value);
            }
            for s in f.histograms.iter() {
                histograms
                    .entry((s.name, s.labels.clone()))
                    .or_insert_with(Histogram::default)
                    .merge(&s.value);
            }
        }
        (counters, histograms)
    }

    pub fn request(&self, route: &str, status: u16) {
        self.add(
            "farebox_gateway_requests_total",
            &[("route", route), ("status", status_label(status, &mut [0; 5]))],
            1,
        );
    }

    pub fn payment_required(&self, route: &str) {
        self.add("farebox_gateway_payment_required_total", &[("route", route)], 1);
    }

    pub fn paid_request(&self, rail: &str, route: &str) {
        self.add("farebox_gateway_paid_requests_total", &[("rail", rail), ("route", route)], 1);
    }

    /// A payment taken; `asset` as [`crate::rails::asset_label`] spells it.
    pub fn payment(&self, rail: &str, route: &str, asset: &str, amount: u128) {
        self.add("farebox_gateway_payments_total", &[("rail", rail), ("route", route)], 1);
        self.add(
            "farebox_gateway_revenue_total",
            &[("rail", rail), ("route", route), ("asset", asset)],
            amount,
        );
    }

    pub fn rate_limited(&self, route: &str, limit: &'static str) {
        self.add("farebox_gateway_rate_limited_total", &[("route", route), ("limit", limit)], 1);
    }

    pub fn pricer(&self, route: &str, outcome: &'static str) {
        self.add(
            "farebox_gateway_pricer_requests_total",
            &[("route", route), ("outcome", outcome)],
            1,
        );
    }

    pub fn free_tier(&self, route: &str) {
        self.add("farebox_gateway_free_tier_requests_total", &[("route", route)], 1);
    }

    pub fn backend_error(&self, backend: &str) {
        self.add("farebox_gateway_backend_errors_total", &[("backend", backend)], 1);
    }

    pub fn verification(&self, rail: &str, took: Duration) {
        self.observe("farebox_gateway_verification_seconds", &[("rail", rail)], took);
    }

    pub fn upstream(&self, upstream: &str, took: Duration) {
        self.observe("farebox_gateway_upstream_seconds", &[("upstream", upstream)], took);
    }

    /// The current value of a counter (for tests and the status page).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u128 {
        self.merged()
            .0
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
        let (counters, histograms) = self.merged();
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), value) in &counters {
                if n == name {
                    let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
                }
            }
            for ((n, labels), h) in &histograms {
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

    #[test]
    fn what_many_threads_count_adds_up() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.request("/joke", 200);
                        m.verification("l402", Duration::from_micros(300));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.counter("farebox_gateway_requests_total", &[("status", "200")]), 8000);
        let text = m.render();
        assert!(
            text.contains("farebox_gateway_requests_total{route=\"/joke\",status=\"200\"} 8000")
        );
        assert!(text.contains("farebox_gateway_verification_seconds_count{rail=\"l402\"} 8000"));
        assert!(text.contains(
            "farebox_gateway_verification_seconds_bucket{rail=\"l402\",le=\"0.0005\"} 8000"
        ));
    }

    #[test]
    fn status_codes_are_written_in_decimal() {
        for status in [0u16, 7, 200, 402, 504, 65535] {
            assert_eq!(status_label(status, &mut [0; 5]), status.to_string());
        }
    }
}
