//! `cargo xtask contracts`: compiles `contracts/*.sol` with solc 0.8.37 (npm `solc`, through its
//! standard-JSON API) and writes one artifact per contract to
//! `crates/farebox-evm/artifacts/<Name>.json` (inside the crate that builds its bindings from
//! them, so that the crate reads nothing outside its folder):
//! `abi`, `bytecode`, `deployedBytecode`, the compiler version and the settings used.
//!
//! The artifacts are committed: `farebox-evm` generates its bindings from them at compile time,
//! so building the workspace needs no Node.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{run, tools};

/// The compile driver, written to `target/tools/` and run with node. Settings are fixed here so
/// that the artifacts are reproducible: optimizer on (200 runs), EVM version `cancun` (what Base
/// and anvil both run), no metadata hash in the bytecode (paths and comments do not change it).
const COMPILE_JS: &str = r#"'use strict';
const fs = require('fs');
const path = require('path');
const [solcDir, contractsDir, outDir] = process.argv.slice(2);
const solc = require(solcDir);
const sources = {};
for (const f of fs.readdirSync(contractsDir).filter((f) => f.endsWith('.sol')).sort()) {
  sources[f] = { content: fs.readFileSync(path.join(contractsDir, f), 'utf8') };
}
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  metadata: { bytecodeHash: 'none' },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};
const output = JSON.parse(solc.compile(JSON.stringify({ language: 'Solidity', sources, settings })));
let failed = false;
for (const e of output.errors || []) {
  console.error(e.formattedMessage || e.message);
  if (e.severity === 'error') failed = true;
}
if (failed) process.exit(1);
fs.mkdirSync(outDir, { recursive: true });
const { outputSelection, ...recorded } = settings;
for (const [file, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    const artifact = {
      contractName: name,
      sourceName: file,
      compiler: { name: 'solc', version: solc.version() },
      settings: recorded,
      abi: c.abi,
      bytecode: '0x' + c.evm.bytecode.object,
      deployedBytecode: '0x' + c.evm.deployedBytecode.object,
    };
    const dest = path.join(outDir, name + '.json');
    fs.writeFileSync(dest, JSON.stringify(artifact, null, 2) + '\n');
    console.error('wrote ' + dest + ' (' + c.evm.deployedBytecode.object.length / 2 + ' bytes of runtime code)');
  }
}
"#;

/// Compiles every contract and writes the artifacts.
pub fn compile() -> Result<()> {
    let solc = tools::ensure_solc()?;
    let script = tools::tools_dir().join("compile-contracts.js");
    std::fs::write(&script, COMPILE_JS).with_context(|| format!("writing {}", script.display()))?;
    let contracts = tools::workspace_root().join("contracts");
    let artifacts = tools::workspace_root().join("crates/farebox-evm/artifacts");
    run(Command::new("node").arg(&script).arg(&solc).arg(&contracts).arg(&artifacts))
        .context("compiling contracts (is Node.js installed?)")
}
