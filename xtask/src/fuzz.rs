//! `cargo xtask test`'s fuzz step: every cargo-fuzz target in `fuzz/` runs over its committed
//! seeds (`fuzz/seeds/<target>/`) and then fuzzes for a bounded time; a crash, a timeout or an
//! out-of-memory fails the step, naming the input that caused it.
//!
//! - cargo-fuzz is installed when missing (`cargo install cargo-fuzz --locked`, into the default
//!   cargo bin directory).
//! - The targets are built once, without a sanitizer (`-s none`): farebox forbids `unsafe`, so
//!   AddressSanitizer would only watch dependencies, and what the step looks for (panics,
//!   assertion failures of the round-trip properties, hangs, runaway allocation) libFuzzer
//!   catches without it, while instrumented runs go twice as fast. `RUSTC_BOOTSTRAP=1` lets the
//!   stable compiler take cargo-fuzz's nightly flags.
//! - The targets are built in the dev profile (`--dev`: no optimisation, overflow checks on).
//!   Optimised, the build alone took longer than all the fuzzing CI can afford; at a few seconds
//!   per target, compiling the dependencies at opt-level 3 costs more than it buys in
//!   executions, and overflow checks catch arithmetic a release build would let wrap.
//! - `FAREBOX_FUZZ_SECONDS` sets the fuzzing time per target (default [`DEFAULT_SECONDS`]; `0`
//!   replays the seeds only).
//!
//! What libFuzzer finds is kept in `fuzz/corpus/<target>/` (not committed) and reused by the next
//! run on the same machine; a crash input is written to `fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::{cargo, run, succeeds};

/// Seconds of fuzzing per target after its seeds, unless `FAREBOX_FUZZ_SECONDS` says otherwise.
pub(crate) const DEFAULT_SECONDS: u64 = 10;

/// Longest one input may take before libFuzzer reports it as a hang, in seconds.
const INPUT_TIMEOUT_SECONDS: u64 = 10;

fn fuzz_dir() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).join("fuzz")
}

/// `cargo fuzz …` in `fuzz/`, with the stable compiler accepting nightly flags.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.arg("fuzz").args(args).current_dir(fuzz_dir()).env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// The fuzz step; see the module docs.
pub(crate) fn run_all() -> Result<()> {
    let seconds = match std::env::var("FAREBOX_FUZZ_SECONDS") {
        Ok(s) => s.parse::<u64>().context("FAREBOX_FUZZ_SECONDS must be a number of seconds")?,
        Err(_) => DEFAULT_SECONDS,
    };
    if !succeeds(cargo().args(["fuzz", "--version"])) {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let listed = cargo_fuzz(&["list"]).output().context("cargo fuzz list")?;
    let list = String::from_utf8_lossy(&listed.stdout).into_owned();
    let targets: Vec<&str> = list.split_whitespace().collect();
    if !listed.status.success() || targets.is_empty() {
        bail!("cargo fuzz list found no fuzz targets");
    }
    let started = Instant::now();
    run(&mut cargo_fuzz(&["build", "--dev", "-s", "none"]))?;
    eprintln!("xtask: fuzz targets built in {:.0?}", started.elapsed());

    let mut crashed = Vec::new();
    for target in &targets {
        let corpus = format!("corpus/{target}");
        let seeds = format!("seeds/{target}");
        // libFuzzer refuses a corpus directory that does not exist.
        std::fs::create_dir_all(fuzz_dir().join(&corpus))?;
        let began = SystemTime::now();
        let budget = format!("-max_total_time={seconds}");
        let timeout = format!("-timeout={INPUT_TIMEOUT_SECONDS}");
        let mut libfuzzer_args = vec![timeout.as_str(), "-rss_limit_mb=2048"];
        // With no time to fuzz, only the corpus is run (`-runs=0` stops after loading it).
        libfuzzer_args.push(if seconds == 0 { "-runs=0" } else { budget.as_str() });
        let mut cmd = cargo_fuzz(&["run", "--dev", "-s", "none", target, &corpus, &seeds, "--"]);
        cmd.args(&libfuzzer_args);
        let clean = run(&mut cmd).is_ok();
        if !clean {
            let input = newest_artifact(target, began);
            match &input {
                Some(path) => {
                    eprintln!("xtask: fuzz target {target} crashed on {}", path.display())
                }
                None => eprintln!("xtask: fuzz target {target} failed (no crash input written)"),
            }
            crashed.push((*target, input));
        }
    }
    eprintln!(
        "xtask: fuzzing: {} targets, {} crashed, {:.0?} in all",
        targets.len(),
        crashed.len(),
        started.elapsed()
    );
    if crashed.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = crashed
        .iter()
        .map(|(t, input)| match input {
            Some(p) => format!(
                "{t} ({}; replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --dev -s none {t} {})",
                p.display(),
                p.display()
            ),
            None => (*t).to_string(),
        })
        .collect();
    bail!("fuzz targets crashed: {}", list.join(", "))
}

/// The newest file libFuzzer wrote to `fuzz/artifacts/<target>/` since `since`.
fn newest_artifact(target: &str, since: SystemTime) -> Option<PathBuf> {
    let dir = fuzz_dir().join("artifacts").join(target);
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .filter(|(modified, _)| *modified >= since)
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
}
