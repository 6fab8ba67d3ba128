//! What every Tandem process does the same way at startup (feature `process`): logs through
//! `tracing` in text or JSON, and a cancellation token that SIGINT and SIGTERM cancel.

use tokio_util::sync::CancellationToken;

/// How logs are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Print logs in `format` on stdout, filtered by `RUST_LOG` or else by `default_filter`.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    match format {
        // Colours only on a terminal: a log file (deploy local's) or a journal gets plain text.
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init()
        }
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
}

/// A token cancelled on the first SIGINT or SIGTERM, which logs `what` ("shutting down") then.
/// Call it inside a Tokio runtime.
pub fn cancel_on_signal(what: &'static str) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("{what}");
        token.cancel();
    });
    shutdown
}
