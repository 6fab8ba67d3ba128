//! `coordinator`: see `coordinator --help`.

use anyhow::Context;
use clap::Parser;
use coordinator::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    wire::process::init_tracing(config.log_format, "info,openraft=warn");
    let shutdown = wire::process::cancel_on_signal("shutting down");
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    coordinator::run(config, listener, shutdown).await
}
