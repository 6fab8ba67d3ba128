//! How much log to keep behind the newest snapshot.
//!
//! openraft purges a fixed number of entries behind each snapshot, whatever the followers hold:
//! a follower down for a minute under load finds the entries it lacks purged and is sent the
//! whole state machine instead. Tandem purges itself (openraft's own purge is off): every node
//! keeps [`NodeConfig::logs_kept_after_snapshot`] entries behind its snapshot, and a leader also
//! keeps what each follower still lacks, as long as that costs no more than
//! [`NodeConfig::log_retained_for_followers_bytes`] (estimated from the mean entry size its log
//! has written). A follower further behind than that gets a snapshot, as before. The retained
//! entries live in the log's in-memory index: the budget bounds that memory too.
//!
//! [`NodeConfig::logs_kept_after_snapshot`]: super::NodeConfig::logs_kept_after_snapshot
//! [`NodeConfig::log_retained_for_followers_bytes`]: super::NodeConfig::log_retained_for_followers_bytes

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::NodeParts;

/// Entries a purge at least removes, so that the log is not purged a few entries at a time.
const PURGE_BATCH: u64 = 256;

/// What the retention rule weighs, read once per look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RetentionInputs {
    /// The newest snapshot's last index; nothing is purged without one.
    pub snapshot: Option<u64>,
    /// The last purged index.
    pub purged: Option<u64>,
    /// Entries kept behind the snapshot in any case.
    pub keep: u64,
    /// On a leader, the last index each peer holds (`None`: none yet); empty elsewhere.
    pub followers: Vec<Option<u64>>,
    /// The mean encoded size of an entry.
    pub entry_bytes: u64,
    /// The most bytes of log kept for followers beyond `keep`.
    pub budget_bytes: u64,
}

/// Up to which index to purge now, if at all.
pub(super) fn purge_upto(inputs: &RetentionInputs) -> Option<u64> {
    let snapshot = inputs.snapshot?;
    // Entries up to `upto` go; `keep` entries up to the snapshot's stay.
    let mut upto = (snapshot + 1).checked_sub(inputs.keep)?.checked_sub(1)?;
    for matched in &inputs.followers {
        let needs_from = matched.map_or(0, |index| index + 1);
        if needs_from > upto {
            continue;
        }
        let extra = (upto - needs_from + 1).saturating_mul(inputs.entry_bytes.max(1));
        if extra <= inputs.budget_bytes {
            upto = needs_from.checked_sub(1)?;
        }
    }
    let next = inputs.purged.map_or(0, |index| index + 1);
    (upto >= next && upto - next + 1 >= PURGE_BATCH.min(inputs.keep.max(1))).then_some(upto)
}

/// Purge what [`purge_upto`] says, every 200 ms, for the node's life.
pub(super) async fn run(node: std::sync::Weak<NodeParts>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(parts) = node.upgrade() else { return };
        let inputs = {
            let metrics = parts.raft.metrics();
            let metrics = metrics.borrow_watched();
            let wal = parts.wal_stats.snapshot();
            RetentionInputs {
                snapshot: metrics.snapshot.map(|id| id.index),
                purged: metrics.purged.map(|id| id.index),
                keep: parts.config.logs_kept_after_snapshot,
                followers: metrics.replication.as_ref().map_or_else(Vec::new, |peers| {
                    peers
                        .iter()
                        .filter(|(id, _)| **id != parts.config.id)
                        .map(|(_, matched)| matched.map(|id| id.index))
                        .collect()
                }),
                entry_bytes: wal.bytes_written.checked_div(wal.synced_entries).unwrap_or(1 << 10),
                budget_bytes: parts.config.log_retained_for_followers_bytes,
            }
        };
        if let Some(upto) = purge_upto(&inputs)
            && parts.raft.trigger().purge_log(upto).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(snapshot: u64, purged: Option<u64>, followers: Vec<Option<u64>>) -> RetentionInputs {
        RetentionInputs {
            snapshot: Some(snapshot),
            purged,
            keep: 1_000,
            followers,
            entry_bytes: 1_000,
            budget_bytes: 1_000_000,
        }
    }

    #[test]
    fn the_log_behind_a_snapshot_is_kept_for_followers_within_the_budget() {
        // (case, inputs, purge up to)
        let cases = [
            ("no snapshot", RetentionInputs { snapshot: None, ..inputs(0, None, vec![]) }, None),
            ("a snapshot shorter than what is kept", inputs(999, None, vec![]), None),
            ("a follower (or no leader): keep 1,000 behind the snapshot", inputs(10_000, None, vec![]), Some(9_000)),
            ("already purged that far", inputs(10_000, Some(9_000), vec![]), None),
            ("less than a batch to purge", inputs(10_000, Some(8_900), vec![]), None),
            ("followers up to date", inputs(10_000, None, vec![Some(10_500), Some(10_000)]), Some(9_000)),
            (
                "a follower 1,500 behind the snapshot: kept for it",
                inputs(10_000, None, vec![Some(10_500), Some(8_500)]),
                Some(8_500),
            ),
            ("a follower with nothing: kept for it", inputs(1_500, None, vec![None]), None),
            (
                "a follower further behind than the budget: a snapshot for it",
                inputs(10_000, None, vec![Some(10_500), Some(7_000)]),
                Some(9_000),
            ),
            ("just within the budget", inputs(10_000, None, vec![Some(8_000)]), Some(8_000)),
            ("just past the budget", inputs(10_000, None, vec![Some(7_999)]), Some(9_000)),
            (
                "purged past the follower already (it gets a snapshot)",
                inputs(10_000, Some(8_600), vec![Some(8_500)]),
                None,
            ),
        ];
        for (case, inputs, upto) in cases {
            assert_eq!(purge_upto(&inputs), upto, "{case}");
        }
    }
}
