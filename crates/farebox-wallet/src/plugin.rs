//! [`WalletPlugin`]: how an agent's wallet file reaches a rail's wallet.
//!
//! A rail crate exports one `WalletPlugin`; a program that reads wallet files (the `farebox`
//! command) lists the plugins it knows, one line each. A wallet file then configures the rail
//! in its own table, `[rails.<name>]`: the program hands the table to the plugin, with a way to
//! read the secrets it names (from a private file or the environment, as the program reads its
//! own) and to resolve asset names, and adds the wallet the plugin builds.

use farebox_core::Asset;

use crate::Wallet;

/// What a plugin gets to build its wallet from.
pub struct RailSettings<'a> {
    /// The rail's table of the wallet file, as JSON.
    pub table: &'a serde_json::Value,
    /// Reads the secret the table names for `key`: `<key>_file` (a file only its owner may
    /// read, relative to the wallet file) or `<key>_env` (an environment variable). The error
    /// says which and why, never the secret.
    pub secret: &'a dyn Fn(&str) -> Result<String, String>,
    /// The asset an amount's unit names: `sat`, or a token of the wallet file's `[assets]`.
    pub asset: &'a dyn Fn(&str) -> Option<Asset>,
}

/// A rail's wallet, built from its table of a wallet file.
#[derive(Clone, Copy)]
pub struct WalletPlugin {
    /// The table's name under `[rails]`, and the rail's name in `policy.prefer`.
    pub name: &'static str,
    /// Builds the wallet; an error says what in the table is wrong.
    pub build: fn(&RailSettings<'_>) -> Result<Box<dyn Wallet>, String>,
}

impl std::fmt::Debug for WalletPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletPlugin").field("name", &self.name).finish_non_exhaustive()
    }
}
