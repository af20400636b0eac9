//! `cargo xtask`: the project's own commands.
//!
//! - `cargo xtask demo`: installs what the demo needs (anvil), then runs `farebox demo`.
//! - `cargo xtask test`: installs what the tests need where it is missing (Debian packages, as
//!   root), then runs every test of the workspace, doc tests included, then every fuzz target in
//!   `fuzz/` over its seeds and for a bounded time (see `fuzz.rs`).
//! - `cargo xtask fuzz`: only that fuzz step (`FAREBOX_FUZZ_SECONDS` per target, default 15).
//! - `cargo xtask bench [FILTER]`: runs the criterion benchmarks with short, stable settings and
//!   prints the medians; `cargo xtask bench facilitator` load-tests `farebox facilitator`'s
//!   `/verify` with wrk against anvil; `cargo xtask bench gateway` compares `farebox serve` (free,
//!   L402, x402 and MPP session routes) with nginx as a reverse proxy, installing wrk and nginx.
//! - `cargo xtask interop`: the official coinbase x402 SDKs (npm, pinned in
//!   `xtask/interop/package.json`, installed into `target/tools/interop/`) pay a farebox server
//!   and are paid by the farebox client through farebox's facilitator, on anvil; the
//!   conformance suite runs against their servers and its client suite against their clients
//!   (findings in `conformance/findings/`). `test` runs it last.
//! - `cargo xtask setup`: only the installation step (Debian packages, and anvil from npm into
//!   `target/tools/`).
//! - `cargo xtask contracts`: compiles `contracts/*.sol` with npm `solc` (installed into
//!   `target/tools/`) and writes the artifacts to `crates/farebox-evm/artifacts/`, which are
//!   committed so that
//!   `cargo build` needs no Node.
//! - `cargo xtask chain`: a local chain for demos: anvil on 127.0.0.1:8545 (chain id 84532) with
//!   FareboxUSD deployed and test accounts funded, until Ctrl-C.

#![forbid(unsafe_code)]

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod chain;
mod contracts;
mod fuzz;
mod interop;
mod loadtest;
mod tools;

/// Debian packages the tests need, each with how to tell it is already there: libsodium for
/// the `macaroon` crate (the L402 codec's compatibility oracle), pkg-config to find it,
/// PostgreSQL for the shared replay store (tests start their own server from its binaries).
const APT_PACKAGES: &[(&str, Probe)] = &[
    ("pkg-config", Probe::Command("pkg-config", &["--version"])),
    ("libsodium-dev", Probe::Command("pkg-config", &["--exists", "libsodium"])),
    ("postgresql", Probe::Dir("/usr/lib/postgresql")),
    // The gateway's status page test renders it in headless Chromium.
    ("chromium", Probe::Command("chromium", &["--version"])),
];

/// Debian packages `cargo xtask bench gateway` installs when missing: wrk, the load
/// generator, and nginx, the trivial upstream and the plain reverse proxy compared with.
const BENCH_APT_PACKAGES: &[(&str, Probe)] = &[
    ("wrk", Probe::Command("sh", &["-c", "command -v wrk"])),
    ("nginx", Probe::Command("sh", &["-c", "command -v nginx || test -x /usr/sbin/nginx"])),
];

enum Probe {
    /// Installed when this command succeeds.
    Command(&'static str, &'static [&'static str]),
    /// Installed when this directory exists.
    Dir(&'static str),
}

impl Probe {
    fn present(&self) -> bool {
        match self {
            Probe::Command(cmd, args) => succeeds(Command::new(cmd).args(*args)),
            Probe::Dir(dir) => std::path::Path::new(dir).is_dir(),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => setup().and_then(|()| test(&args[1..])),
        Some("bench") => setup().and_then(|()| bench(&args[1..])),
        Some("setup") => setup(),
        Some("contracts") => contracts::compile(),
        Some("chain") => setup().and_then(|()| chain::run()),
        Some("demo") => setup().and_then(|()| demo(&args[1..])),
        Some("interop") => setup().and_then(|()| interop::run()),
        Some("fuzz") => fuzz::run_all(),
        _ => {
            eprintln!(
                "usage: cargo xtask <demo [ARGS…] | test [ARGS…] | fuzz | interop | bench [FILTER] | setup | contracts | chain>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// `farebox demo` once anvil is installed, so that the x402 half runs on a fresh machine too.
fn demo(extra: &[String]) -> Result<()> {
    run(cargo().args(["run", "--quiet", "--package", "farebox", "--", "demo"]).args(extra))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Installs what is missing: the Debian packages, then anvil (npm, into `target/tools/`).
fn setup() -> Result<()> {
    setup_apt()?;
    tools::ensure_anvil().map(|_| ())
}

/// Installs the Debian packages that are missing.
fn setup_apt() -> Result<()> {
    install_apt(APT_PACKAGES)
}

/// Installs those of `packages` that are missing.
fn install_apt(packages: &[(&str, Probe)]) -> Result<()> {
    let missing: Vec<&str> =
        packages.iter().filter(|(_, probe)| !probe.present()).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {missing:?}");
    let is_root =
        Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let sudo: &[&str] = if is_root { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut full: Vec<&str> = sudo.to_vec();
        full.push("apt-get");
        full.extend_from_slice(args);
        let mut cmd = Command::new(full[0]);
        cmd.args(&full[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(missing.iter());
    apt(&install).context("installing Debian packages (needs root or sudo)")
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.env("SODIUM_USE_PKG_CONFIG", "1");
    cmd
}

fn test(extra: &[String]) -> Result<()> {
    // Style and lints first: they take seconds to minutes and fail for what a reviewer would.
    // rustup installs both components with the toolchain; a toolchain without them says so.
    for (component, args) in [
        ("rustfmt", &["fmt", "--all", "--check"][..]),
        ("clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"][..]),
    ] {
        if succeeds(cargo().args([args[0], "--version"])) {
            run(cargo().args(args))?;
        } else {
            eprintln!(
                "xtask: {component} is not installed (rustup component add {component}): not run"
            );
        }
    }
    lean_l402_client()?;
    // Each criterion benchmark once, in test mode: they must keep working; timing is `bench`'s job.
    run(cargo().args(["test", "--workspace", "--benches"]))?;
    // The crate docs' examples must keep compiling and passing (nextest does not run doc tests).
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    // The tests proper.
    let targets = ["--workspace", "--lib", "--bins", "--tests", "--examples", "--no-fail-fast"];
    let tests = if succeeds(cargo().args(["nextest", "--version"])) {
        run(cargo().args(["nextest", "run"]).args(targets).args(extra))
    } else {
        run(cargo().arg("test").args(targets).args(extra))
    };
    // Every parser of untrusted input under libFuzzer for a bounded time (even when tests failed).
    let fuzzing = fuzz::run_all();
    // The official x402 SDKs against farebox, after the tests proper (and even when they failed):
    // its `N passed, M failed` is the run's closing line.
    let interop = interop::run();
    tests.and(fuzzing).and(interop)
}

/// A rail is one crate on the client side too: the middleware depends on no rail, and an agent
/// built from it and the L402 wallet (`farebox-l402`, feature `client`, or the middleware's own
/// `l402` feature) compiles no EVM code (no alloy in any of those dependency trees).
fn lean_l402_client() -> Result<()> {
    let middleware: &[&str] = &["-p", "farebox-client", "--no-default-features"];
    let l402_wallet: &[&str] = &["-p", "farebox-l402", "--features", "client"];
    let l402_agent: &[&str] =
        &["-p", "farebox-client", "--no-default-features", "--features", "l402"];
    for (crate_args, forbidden) in [
        (middleware, &["alloy", "farebox-l402", "farebox-x402", "farebox-mpp", "farebox-evm"][..]),
        (l402_wallet, &["alloy"][..]),
        (l402_agent, &["alloy", "farebox-x402", "farebox-mpp", "farebox-evm"][..]),
    ] {
        run(cargo().arg("check").args(crate_args))?;
        let tree = cargo()
            .arg("tree")
            .args(crate_args)
            .args(["-e", "normal", "--prefix", "none"])
            .output()
            .context("running cargo tree")?;
        anyhow::ensure!(tree.status.success(), "cargo tree failed");
        let text = String::from_utf8_lossy(&tree.stdout);
        if let Some(dep) = text.lines().find(|l| forbidden.iter().any(|f| l.starts_with(f))) {
            bail!("`{}` depends on {dep}", crate_args.join(" "));
        }
    }
    Ok(())
}

/// The criterion benchmarks (matching `filter`), or with `facilitator` the `/verify` load test.
fn bench(filter: &[String]) -> Result<()> {
    if filter.first().map(String::as_str) == Some("facilitator") {
        return loadtest::run_facilitator_bench();
    }
    if filter.first().map(String::as_str) == Some("gateway") {
        install_apt(BENCH_APT_PACKAGES)?;
        return loadtest::run_gateway_bench();
    }
    run(cargo()
        .args(["bench", "--workspace", "--bench", "*", "--"]) // bench targets only: libtest rejects criterion's flags
        .args(["--warm-up-time", "1", "--measurement-time", "3"])
        .args(filter))
}
