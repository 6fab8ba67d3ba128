//! The watcher of openraft's metrics: it publishes leadership changes, notices a leader cut
//! off from its majority, notices the core stopping, and makes a witness that leads hand
//! leadership back.
//!
//! Whether the quorum is lost is decided by [`QuorumLoss`], from times it is given.

use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use super::leadership::{Leadership, hand_back_leadership};
use super::{Node, NodeParts};
use crate::type_config::Role;

/// Decides that a leader has lost its quorum: the last acknowledgement from a majority is
/// older than the quorum timeout, and still is one check later.
///
/// A process that was stalled (CPU starvation) wakes with its peers' answers still queued for
/// the core, so one stale look is not enough: the answers get one check's time to arrive.
#[derive(Debug, Default)]
pub(super) struct QuorumLoss {
    /// When the acknowledgement first looked too old.
    stale_since: Option<Instant>,
}

impl QuorumLoss {
    /// Look again at `now`, as a leader with peers whose majority last acknowledged
    /// `acked_age` ago. Returns whether the quorum is lost.
    pub(super) fn observe(
        &mut self,
        acked_age: Duration,
        now: Instant,
        timeout: Duration,
        confirm_after: Duration,
    ) -> bool {
        if acked_age <= timeout {
            return self.reset();
        }
        let since = *self.stale_since.get_or_insert(now);
        now.saturating_duration_since(since) >= confirm_after
    }

    /// Nothing is stale (acknowledged in time, or not a leader with peers, which has no quorum
    /// to lose and reads no clock): forget any stale look. Returns false, not lost.
    pub(super) fn reset(&mut self) -> bool {
        self.stale_since = None;
        false
    }
}

/// Publish leadership changes, and make a witness that leads hand leadership back.
pub(super) async fn watch_metrics(
    node: std::sync::Weak<NodeParts>,
    leadership: watch::Sender<Leadership>,
    stopped: watch::Sender<bool>,
    quorum_lost: watch::Sender<bool>,
) {
    let Some(parts) = node.upgrade() else { return };
    let mut metrics_rx = parts.raft.metrics();
    let role = parts.config.role;
    let quorum_timeout = parts.config.timing.quorum_timeout();
    drop(parts);
    let mut handback_tick = tokio::time::interval(Duration::from_millis(20));
    handback_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handback: Option<tokio::task::JoinHandle<()>> = None;
    // The age of the last quorum acknowledgement grows without any metrics change: look again
    // a few times per timeout while leading.
    let quorum_check = quorum_timeout / 8;
    let mut quorum_tick = tokio::time::interval(quorum_check);
    quorum_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quorum_loss = QuorumLoss::default();
    loop {
        // Read the fields in place: the metrics change several times per entry, and cloning
        // them whole (membership, replication maps) each time is measurable.
        let (now, state, lost) = {
            let metrics = metrics_rx.borrow_watched();
            let now = Leadership {
                leader: metrics.current_leader,
                term: metrics.current_term,
                is_self: metrics.state == ServerState::Leader,
            };
            // Only a leader can lose its quorum; a lone voter is its own quorum (openraft does
            // not refresh its acknowledgement). Checked in this order, a follower pays nothing.
            let acked_age = now
                .is_self
                .then(|| metrics.last_quorum_acked.as_ref().map(|at| openraft::Instant::elapsed(&**at)))
                .flatten()
                .filter(|_| metrics.membership_config.membership().voter_ids().nth(1).is_some());
            let lost = match acked_age {
                Some(age) => quorum_loss.observe(age, Instant::now(), quorum_timeout, quorum_check),
                None => quorum_loss.reset(),
            };
            (now, metrics.state, lost)
        };
        leadership.send_if_modified(|seen| {
            let changed = *seen != now;
            *seen = now;
            changed
        });
        quorum_lost.send_if_modified(|seen| {
            let changed = *seen != lost;
            match (changed, lost) {
                (true, true) => tracing::warn!("this leader lost contact with a majority: refusing writes"),
                (true, false) => tracing::info!("no longer cut off from a majority (or no longer leading)"),
                _ => {}
            }
            *seen = lost;
            changed
        });
        let witness_leads = role == Role::Witness && state == ServerState::Leader;
        tokio::select! {
            changed = metrics_rx.changed() => if changed.is_err() {
                // The core has ended: its metrics sender is gone.
                stopped.send_replace(true);
                return;
            },
            _ = handback_tick.tick(), if witness_leads && handback.as_ref().is_none_or(|h| h.is_finished()) => {
                // In a task of its own: a transfer can take a second, and meanwhile this loop
                // must keep publishing leadership and quorum changes.
                let Some(parts) = node.upgrade() else { return };
                handback = Some(tokio::spawn(hand_back_leadership(Node { parts })));
            }
            _ = quorum_tick.tick(), if state == ServerState::Leader => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(800);
    const CONFIRM: Duration = Duration::from_millis(100);

    #[test]
    fn a_quorum_is_lost_only_when_the_acknowledgement_stays_too_old_for_a_check() {
        let start = Instant::now();
        let ms = |ms| start + Duration::from_millis(ms);
        let age = |ms| Some(Duration::from_millis(ms));
        // (case, [(at ms, acknowledgement age), ...], whether lost after the last look)
        type Looks = Vec<(u64, Option<Duration>)>;
        let cases: Vec<(&str, Looks, bool)> = vec![
            ("fresh acknowledgements", vec![(0, age(10)), (100, age(20)), (200, age(5))], false),
            ("exactly the timeout is not too old", vec![(0, age(800)), (100, age(900))], false),
            ("one stale look is not enough", vec![(0, age(900))], false),
            ("stale, then stale a check later", vec![(0, age(900)), (100, age(1000))], true),
            ("stale, then stale less than a check later", vec![(0, age(900)), (99, age(999))], false),
            ("answers arrive after the stall", vec![(0, age(900)), (50, age(10)), (150, age(900))], false),
            (
                "stale again after recovering",
                vec![(0, age(900)), (50, age(10)), (150, age(900)), (250, age(1000))],
                true,
            ),
            ("not leading", vec![(0, None), (100, None), (200, None)], false),
            ("stops leading", vec![(0, age(900)), (100, age(1000)), (200, None)], false),
        ];
        for (case, looks, expected) in cases {
            let mut quorum_loss = QuorumLoss::default();
            let mut lost = false;
            for (at, acked_age) in looks {
                lost = match acked_age {
                    Some(age) => quorum_loss.observe(age, ms(at), TIMEOUT, CONFIRM),
                    None => quorum_loss.reset(),
                };
            }
            assert_eq!(lost, expected, "{case}");
        }
    }
}
