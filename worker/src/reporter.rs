//! Reporting results: batched into one `complete` call (when [`REPORT_BATCH`] are pending, or
//! [`REPORT_LINGER`] after the first one), and retried with failover until a coordinator
//! acknowledges them. A result is never dropped because a coordinator was down; only a worker
//! that gives up at the end of its drain leaves some unreported (their jobs are computed again).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::worker::{CompleteRequest, CompleteResponse, Finished};

use crate::coordinator_client::CallError;
use crate::worker_state::WorkerState;

/// Results per `complete` call at most.
pub(crate) const REPORT_BATCH: usize = 64;
/// How long the first pending result waits for company.
pub(crate) const REPORT_LINGER: Duration = Duration::from_millis(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Report results until the channel closes (every sender dropped and every result sent), or
/// until `give_up` is cancelled.
pub(crate) async fn report(
    state: Arc<WorkerState>,
    mut results: mpsc::UnboundedReceiver<Finished>,
    give_up: CancellationToken,
) {
    let mut batch = Vec::with_capacity(REPORT_BATCH);
    loop {
        let first = tokio::select! {
            _ = give_up.cancelled() => None,
            first = results.recv() => first,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let linger = tokio::time::sleep(REPORT_LINGER);
        tokio::pin!(linger);
        while batch.len() < REPORT_BATCH {
            tokio::select! {
                _ = &mut linger => break,
                next = results.recv() => match next {
                    Some(next) => batch.push(next),
                    None => break,
                },
            }
        }
        if !send(&state, &batch, &give_up).await {
            break;
        }
        batch.clear();
    }
    // Whatever is still pending when the worker gives up is lost to this worker only.
    results.close();
    let mut unreported = batch.len();
    while results.try_recv().is_ok() {
        unreported += 1;
    }
    if unreported > 0 {
        tracing::warn!(unreported, "results left unreported at exit; their jobs will be computed again");
    }
}

/// Send one batch until a coordinator takes it. `false` if `give_up` came first.
async fn send(state: &WorkerState, batch: &[Finished], give_up: &CancellationToken) -> bool {
    let mut request = CompleteRequest { worker: 0, results: batch.to_vec() };
    let mut failing = false;
    loop {
        request.worker = state.registration().worker;
        let answer = tokio::select! {
            _ = give_up.cancelled() => return false,
            answer = state.coordinators.call::<_, CompleteResponse>(wire::worker::COMPLETE, &request, CALL_TIMEOUT) => answer,
        };
        match answer {
            Ok(answer) => {
                if failing {
                    tracing::info!(via = state.coordinators.current(), "reporting results works again");
                }
                tracing::debug!(
                    results = batch.len(),
                    recorded = answer.recorded,
                    duplicate = answer.duplicate,
                    unknown = answer.unknown,
                    "results reported"
                );
                return true;
            }
            // The id changes when the lease loop registers again; the results stay valid.
            Err(CallError::UnknownWorker) => state.forget(request.worker),
            Err(CallError::Rejected(e)) => {
                // Retrying a message the coordinator cannot read would block every later result.
                tracing::error!(error = %e, results = batch.len(), "the coordinator rejected results; dropping them");
                return true;
            }
            Err(e @ CallError::Unavailable(_)) => {
                if !failing {
                    tracing::warn!(error = %e, results = batch.len(), "reporting results failed; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = give_up.cancelled() => return false,
            _ = tokio::time::sleep(RETRY_PAUSE) => {}
        }
    }
}
