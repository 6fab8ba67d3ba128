//! `coordinator`: see `coordinator --help`.

use anyhow::Context;
use clap::Parser;
use coordinator::config::Config;

/// jemalloc rather than glibc's malloc: with glibc, every snapshot build (a copy of the table and
/// its encoding, tens of MiB) left its freed memory in the allocator's arenas, and a voter's RSS
/// rose in steps at each snapshot long after the table had stopped growing (README, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.runtime_threads {
        runtime.worker_threads(threads.into());
    }
    runtime.enable_all().build().context("starting the async runtime")?.block_on(async move {
        wire::process::init_tracing(config.log_format, "info,openraft=warn");
        let shutdown = wire::process::cancel_on_signal("shutting down");
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        coordinator::run(config, listener, shutdown).await
    })
}
