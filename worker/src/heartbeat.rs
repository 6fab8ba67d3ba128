//! The heartbeat: every `heartbeat_ms` it sends the checkpoints of the held jobs, which records
//! progress and keeps their leases alive. From the answer it stops the jobs the worker no longer
//! holds and starts a drain when the coordinators ask for one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wire::worker::{HeartbeatRequest, HeartbeatResponse};

use crate::coordinator_client::CallError;
use crate::worker_state::WorkerState;

/// Bounds of one heartbeat call's timeout per coordinator, which is otherwise the heartbeat
/// period: a hung coordinator must not hold the next heartbeat back past the lease.
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(200);
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Heartbeat until `stop` is cancelled.
pub(crate) async fn heartbeat(state: Arc<WorkerState>, stop: CancellationToken) {
    let mut failing = false;
    loop {
        let period = Duration::from_millis(state.registration().heartbeat_ms);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let registration = state.registration();
        if registration.forgotten {
            // The lease loop is registering again; the old id would only be refused.
            continue;
        }
        // The jobs this heartbeat speaks for; `lost` in the answer refers to these, not to a
        // newer lease of the same job that may be held by the time the answer arrives.
        let reported: HashMap<u64, Arc<_>> = state
            .held()
            .iter()
            .filter(|(_, job)| !job.is_lost() && !job.is_finished())
            .map(|(id, job)| (*id, job.clone()))
            .collect();
        let request = HeartbeatRequest {
            worker: registration.worker,
            progress: reported.values().map(|job| job.progress()).collect(),
        };
        let timeout = period.clamp(MIN_CALL_TIMEOUT, MAX_CALL_TIMEOUT);
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = state.coordinators.call::<_, HeartbeatResponse>(wire::worker::HEARTBEAT, &request, timeout) => answer,
        };
        match answer {
            Ok(answer) => {
                if failing {
                    tracing::info!(via = state.coordinators.current(), "heartbeats work again");
                    failing = false;
                }
                for id in answer.lost {
                    if let Some(job) = reported.get(&id) {
                        tracing::info!(job = id, "lease lost; stopping the job");
                        job.mark_lost();
                    }
                }
                if answer.draining && !state.stop_leasing.is_cancelled() {
                    tracing::info!("the coordinators asked this worker to drain");
                    state.stop_leasing.cancel();
                }
            }
            Err(CallError::UnknownWorker) => {
                tracing::info!(worker = request.worker, "the coordinators forgot this worker; registering again");
                state.forget(request.worker);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, jobs = request.progress.len(), "heartbeat failed; retrying");
                    failing = true;
                }
            }
        }
    }
}
