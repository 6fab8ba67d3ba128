//! When to build a snapshot: once the log written since the last one outweighs the snapshot
//! itself (snapshotting costs O(state), so it waits until the log has grown by as much, which
//! bounds its share of the work whatever the state's size), or after a number of entries.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::NodeParts;

/// What the policy weighs, read once per look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SnapshotInputs {
    /// Entries applied since the last snapshot.
    pub entries_since: u64,
    /// Log bytes written since the last snapshot was asked for.
    pub log_bytes_since: u64,
    /// The size of the last snapshot.
    pub last_snapshot_bytes: u64,
}

/// Whether a snapshot is due: at least `min(every, 1000)` entries since the last one, and
/// either `every` entries or more log bytes than both the last snapshot and `min_log_bytes`.
pub(super) fn snapshot_due(inputs: SnapshotInputs, every: u64, min_log_bytes: u64) -> bool {
    let outgrown = inputs.log_bytes_since >= min_log_bytes.max(inputs.last_snapshot_bytes);
    inputs.entries_since >= every.min(1_000) && (outgrown || inputs.entries_since >= every)
}

/// Trigger a snapshot when [`snapshot_due`] says so, and wait for it before looking again.
pub(super) async fn run(node: std::sync::Weak<NodeParts>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Log bytes written when the last snapshot was asked for (or when this node started).
    let mut written_at_last = None;
    loop {
        tick.tick().await;
        let Some(parts) = node.upgrade() else { return };
        let (applied, snapshot) = {
            let metrics = parts.raft.metrics();
            let metrics = metrics.borrow_watched();
            (metrics.last_applied.map_or(0, |id| id.index), metrics.snapshot.map_or(0, |id| id.index))
        };
        let written = parts.wal_stats.snapshot().bytes_written;
        let inputs = SnapshotInputs {
            entries_since: applied.saturating_sub(snapshot),
            log_bytes_since: written.saturating_sub(*written_at_last.get_or_insert(written)),
            last_snapshot_bytes: parts.state_machine.last_snapshot_bytes(),
        };
        let config = &parts.config;
        if !snapshot_due(inputs, config.snapshot_every, config.snapshot_min_log_bytes) {
            continue;
        }
        written_at_last = Some(written);
        if parts.raft.trigger().snapshot().await.is_err() {
            return;
        }
        let built = parts
            .raft
            .wait(Some(Duration::from_secs(300)))
            .metrics(|m| m.snapshot.is_some_and(|id| id.index >= applied), "snapshot built")
            .await;
        if let Err(e) = built {
            tracing::warn!(node = config.id, error = %e, "a snapshot did not complete; trying again later");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_until_the_log_outweighs_it_or_the_entry_count_is_reached() {
        const EVERY: u64 = 200_000;
        const MIN: u64 = 16 << 20;
        let inputs = |entries_since, log_bytes_since, last_snapshot_bytes| SnapshotInputs {
            entries_since,
            log_bytes_since,
            last_snapshot_bytes,
        };
        // (case, inputs, every, min log bytes, due)
        let cases = [
            ("nothing new", inputs(0, 0, 0), EVERY, MIN, false),
            ("a little log", inputs(5_000, 1 << 20, 0), EVERY, MIN, false),
            ("log past the minimum, small snapshot", inputs(5_000, MIN, 1 << 20), EVERY, MIN, true),
            ("log past the minimum but not the snapshot", inputs(5_000, MIN, 64 << 20), EVERY, MIN, false),
            ("log as large as the snapshot", inputs(5_000, 64 << 20, 64 << 20), EVERY, MIN, true),
            ("too few entries, however many bytes", inputs(999, 1 << 30, 0), EVERY, MIN, false),
            ("the entry count alone", inputs(EVERY, 0, 1 << 30), EVERY, MIN, true),
            ("a small entry count (tests)", inputs(10, 0, 0), 10, MIN, true),
            ("below a small entry count", inputs(9, 1 << 30, 0), 10, MIN, false),
        ];
        for (case, inputs, every, min, due) in cases {
            assert_eq!(snapshot_due(inputs, every, min), due, "{case}");
        }
    }
}
