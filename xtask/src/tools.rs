//! Tools installed from npm into `<workspace>/target/tools/` (never into the repository): anvil,
//! the local EVM chain, and solc (solcjs), the Solidity compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

/// The anvil release the project is pinned to (npm `@foundry-rs/anvil-linux-amd64`).
pub const ANVIL_PACKAGE: &str = "@foundry-rs/anvil-linux-amd64@1.7.1";
/// The version anvil must report.
const ANVIL_VERSION: &str = "1.7.1";
/// The solc release the project is pinned to (npm `solc`, the JavaScript build).
pub const SOLC_PACKAGE: &str = "solc@0.8.37";
const SOLC_VERSION: &str = "0.8.37";

/// `<workspace>/`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `<workspace>/target/tools/`, npm's prefix for the tools.
pub fn tools_dir() -> PathBuf {
    workspace_root().join("target").join("tools")
}

/// Where the anvil binary lands.
pub fn anvil_path() -> PathBuf {
    tools_dir().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

fn solc_dir() -> PathBuf {
    tools_dir().join("node_modules/solc")
}

fn npm_install(package: &str) -> Result<()> {
    let dir = tools_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--save-exact", "--prefix"])
        .arg(&dir)
        .arg(package))
    .with_context(|| format!("installing {package} with npm (is Node.js/npm installed?)"))
}

/// Installs anvil when it is missing or not the pinned version; returns its path.
pub fn ensure_anvil() -> Result<PathBuf> {
    let path = anvil_path();
    let version_ok = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .map(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains(ANVIL_VERSION)
            })
            .unwrap_or(false)
    };
    if version_ok(&path) {
        return Ok(path);
    }
    eprintln!("xtask: installing anvil ({ANVIL_PACKAGE}) into {}", tools_dir().display());
    npm_install(ANVIL_PACKAGE)?;
    if !version_ok(&path) {
        bail!("anvil {ANVIL_VERSION} not found at {} after npm install", path.display());
    }
    Ok(path)
}

/// Installs solc (solcjs) when it is missing or not the pinned version; returns its module dir.
pub fn ensure_solc() -> Result<PathBuf> {
    let dir = solc_dir();
    let version_ok = |d: &Path| {
        std::fs::read_to_string(d.join("package.json"))
            .map(|s| s.contains(&format!("\"version\": \"{SOLC_VERSION}\"")))
            .unwrap_or(false)
    };
    if version_ok(&dir) {
        return Ok(dir);
    }
    eprintln!("xtask: installing solc ({SOLC_PACKAGE}) into {}", tools_dir().display());
    npm_install(SOLC_PACKAGE)?;
    if !version_ok(&dir) {
        bail!("solc {SOLC_VERSION} not found at {} after npm install", dir.display());
    }
    Ok(dir)
}
