//! How the RFC 9110 auth-header parsers scale on hostile input.
//!
//! `farebox_core::auth` claims time linear in the input. Each group below is one hostile shape,
//! parsed by `parse_challenges` and `parse_credential` at 1 KiB, 4 KiB and 16 KiB (16 KiB is
//! `MAX_HEADER_LEN`, the largest value the parsers accept). Throughput is reported in bytes, so
//! linear scaling shows as the same MiB/s at every size (and medians growing ~4× per step);
//! quadratic behaviour would show as throughput falling ~4× per step.
//!
//! Run: `cargo bench -p farebox-core --bench auth_grammar -- --warm-up-time 1 --measurement-time 3`
//! (check only: `cargo bench -p farebox-core --bench auth_grammar -- --test`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use farebox_core::auth::{
    MAX_CHALLENGES, MAX_HEADER_LEN, MAX_PARAMS, parse_challenges, parse_credential,
};

const SIZES: [usize; 3] = [1024, 4 * 1024, MAX_HEADER_LEN];

/// `prefix`, then `unit` repeated as often as fits, then `suffix`, at most `n` bytes; the repeat
/// is cut mid-unit to land on `n` exactly when `unit` is ASCII.
fn fill(prefix: &str, unit: &str, suffix: &str, n: usize) -> String {
    let mut s = String::with_capacity(n);
    s.push_str(prefix);
    let room = n - prefix.len() - suffix.len();
    while s.len() + unit.len() <= prefix.len() + room {
        s.push_str(unit);
    }
    let short = prefix.len() + room - s.len();
    s.push_str(&unit[..short]);
    s.push_str(suffix);
    assert_eq!(s.len(), n);
    s
}

/// The hostile inputs at size `n`, by name.
fn shapes(n: usize) -> Vec<(&'static str, String)> {
    // 64 parameters sharing the space: `p0="vvv…", p1="vvv…", …`.
    let mut params = String::from("Payment ");
    let per_param = (n - params.len()) / MAX_PARAMS;
    for i in 0..MAX_PARAMS {
        let sep = if i + 1 == MAX_PARAMS { "" } else { ", " };
        let head = format!("p{i}=\"");
        let value_len = per_param.saturating_sub(head.len() + 1 + sep.len()).max(1);
        params.push_str(&head);
        params.push_str(&"v".repeat(value_len));
        params.push('"');
        params.push_str(sep);
    }
    // 64 challenges sharing the space: `Payment id="vvv…", Payment id="vvv…", …`.
    let per_challenge = n / MAX_CHALLENGES;
    let mut challenges = String::new();
    for i in 0..MAX_CHALLENGES {
        let sep = if i + 1 == MAX_CHALLENGES { "" } else { ", " };
        let head = "Payment id=\"";
        challenges.push_str(head);
        challenges.push_str(&"v".repeat(per_challenge.saturating_sub(head.len() + 1 + sep.len())));
        challenges.push('"');
        challenges.push_str(sep);
    }
    vec![
        // An unterminated quoted string made of escapes: `\\` and `\"` pairs up to the end.
        ("unterminated_quoted_backslashes", fill("Payment a=\"", "\\\\\\\"", "", n)),
        // List separators and empty elements after a parameter.
        ("many_commas", fill("Payment a=b", ", ,", "", n)),
        // A (closed) quoted value full of what looks like challenges.
        ("payment_tokens_in_quotes", fill("Payment id=\"", "Payment ", "\"", n)),
        // A run that is a token68 and a parameter name at once, never decided until its end.
        ("token68_or_name_run", fill("Payment ", "a/", "", n)),
        ("max_params", params),
        ("max_challenges", challenges),
    ]
}

/// Checks that each input is what its name says, so the numbers measure that.
fn check(name: &str, input: &str) {
    let challenges = parse_challenges([input]);
    let credential = parse_credential(input);
    match name {
        "unterminated_quoted_backslashes" => {
            assert!(challenges.is_err() && credential.as_ref().is_ok_and(|c| c.token.is_some()))
        }
        "many_commas" => assert_eq!(challenges.unwrap()[0].params.len(), 1),
        "payment_tokens_in_quotes" => assert_eq!(challenges.unwrap().len(), 1),
        "token68_or_name_run" => assert!(challenges.unwrap()[0].token68.is_some()),
        "max_params" => {
            assert_eq!(challenges.unwrap()[0].params.len(), MAX_PARAMS);
            assert_eq!(credential.unwrap().params.len(), MAX_PARAMS);
        }
        "max_challenges" => assert_eq!(challenges.unwrap().len(), MAX_CHALLENGES),
        other => panic!("unchecked shape {other}"),
    }
}

fn bench(c: &mut Criterion) {
    let inputs: Vec<(usize, Vec<(&'static str, String)>)> =
        SIZES.iter().map(|&n| (n, shapes(n))).collect();
    for (_, shapes) in &inputs {
        for (name, input) in shapes {
            check(name, input);
        }
    }
    let names: Vec<&'static str> = inputs[0].1.iter().map(|(name, _)| *name).collect();
    for (index, name) in names.iter().enumerate() {
        let mut group = c.benchmark_group(format!("auth_grammar/{name}"));
        group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        for (n, shapes) in &inputs {
            let input = shapes[index].1.as_str();
            assert!(input.len() <= MAX_HEADER_LEN, "{name} at {n}: {} bytes", input.len());
            group.throughput(Throughput::Bytes(input.len() as u64));
            group.bench_with_input(BenchmarkId::new("parse_challenges", n), input, |b, s| {
                b.iter(|| parse_challenges([black_box(s)]))
            });
            group.bench_with_input(BenchmarkId::new("parse_credential", n), input, |b, s| {
                b.iter(|| parse_credential(black_box(s)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
