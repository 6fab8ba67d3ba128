//! `worker`: see `worker --help`.

use clap::Parser;
use worker::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    wire::process::init_tracing(config.log_format, "info,openraft=warn");
    let shutdown = wire::process::cancel_on_signal("stopping: handing unfinished jobs back");
    worker::run(config, shutdown).await
}
