//! `farebox serve --config FILE [--listen ADDR]`: the gateway (`farebox-gateway`) in front of
//! the upstreams the file names, or of the demo API when it names none.
//!
//! `farebox serve --check --config FILE` only checks the file (everything but reaching the
//! network) and exits 0, or 2 with every problem found. A configuration refused at start also
//! exits 2. SIGHUP reloads the file; SIGTERM and SIGINT stop the gateway gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use farebox_gateway::{Config, Gateway, GatewayOptions};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The gateway's TOML configuration (see crates/farebox-gateway/farebox.example.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Listen here instead of the file's `[gateway] listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Check the configuration and exit: 0 when it is valid, 2 with its problems otherwise.
    #[arg(long)]
    check: bool,
}

/// Exit status of a refused configuration.
const REFUSED: u8 = 2;

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(REFUSED));
        }
    };
    if args.check {
        println!(
            "{}: ok ({} routes; rails: {})",
            args.config.display(),
            config.routes.len(),
            config.rails.names().join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(listen) = args.listen {
        config.gateway.listen = listen;
    }
    let listen = config.gateway.listen;
    let wallet_listen = config.lightning.as_ref().and_then(|l| l.dev.wallet_listen);
    let options =
        GatewayOptions { demo_upstream: Some(crate::upstream::router()), state_dir: None };
    let gateway = match Gateway::start(config, options).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(REFUSED));
        }
    };
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    if let (Some(addr), Some(wallet)) = (wallet_listen, gateway.dev_wallet().await) {
        let wallet_listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the dev wallet API on {addr}"))?;
        tokio::spawn(async move {
            if let Err(e) =
                axum::serve(wallet_listener, farebox_lightning::dev_wallet::router(wallet)).await
            {
                tracing::error!(error = %e, "dev wallet API stopped");
            }
        });
        tracing::info!(%addr, "dev wallet API (for `farebox pay --wallet http://{addr}`)");
    }
    tracing::info!(addr = %listener.local_addr()?, "farebox gateway listening");
    farebox_gateway::reload_on_sighup(gateway.clone());
    gateway.serve(listener, farebox_gateway::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
