//! Snapshots of several volumes at one instant (a VM whose disks sit on several datastores, a
//! database's data and log volumes): crash-consistent together, so that a write a host issued
//! only after another was acknowledged is never in the group without that other.
//!
//! Every volume's shard first freezes it (`ShardMsg::Freeze`: new commands held, in order; the
//! answer comes once the writes in flight have completed), then each volume is snapshotted as
//! usual (no write is in flight on any of them), then every freeze is lifted, whatever
//! happened. A freeze ends by itself after [`FREEZE_LIMIT`], so hosts are never held longer if
//! the control plane fails in between. If one snapshot fails, those already taken are deleted:
//! the group is taken whole or not at all.

use super::*;
use std::collections::BTreeMap;
use std::time::Instant;

/// Longest a group snapshot may hold the hosts' commands.
const FREEZE_LIMIT: Duration = Duration::from_secs(10);

impl Daemon {
    /// Takes snapshot `snap` of each volume in `volumes` (distinct) at one instant.
    pub(super) fn snapshot_group(
        &self,
        st: &mut State,
        volumes: &[(ImageMeta, String)],
    ) -> Result<Vec<ImageMeta>, AdminError> {
        let mut by_shard: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (meta, _) in volumes {
            if let Some(served) = st.served.get(&meta.image) {
                by_shard
                    .entry(served.shard)
                    .or_default()
                    .push(served.target.clone());
            }
        }
        let frozen = self.freeze_all(&by_shard);
        let taken = frozen.and_then(|()| self.take_all(st, volumes));
        for (&shard, targets) in &by_shard {
            if let Some(s) = self.shards.get(shard) {
                s.send(ShardMsg::Thaw {
                    targets: targets.clone(),
                });
            }
        }
        taken
    }

    /// Freezes every target of `by_shard` and waits until each shard has drained its writes.
    fn freeze_all(&self, by_shard: &BTreeMap<usize, Vec<String>>) -> Result<(), AdminError> {
        let until = Instant::now() + FREEZE_LIMIT;
        // All freezes go out before any answer is awaited: the shards drain at the same time.
        let mut answers = Vec::new();
        for (&shard, targets) in by_shard {
            let (reply, answer) = bounded(1);
            let sent = self.shards.get(shard).is_some_and(|s| {
                s.send(ShardMsg::Freeze {
                    targets: targets.clone(),
                    until,
                    reply,
                })
            });
            if !sent {
                return Err(internal("shard is gone"));
            }
            answers.push(answer);
        }
        for answer in answers {
            match answer.recv_deadline(until) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(internal(e)),
                Err(_) => {
                    return Err(internal(format!(
                        "the volumes' writes in flight did not complete within {} s",
                        FREEZE_LIMIT.as_secs()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Snapshots every volume; on a failure deletes the ones taken.
    fn take_all(
        &self,
        st: &mut State,
        volumes: &[(ImageMeta, String)],
    ) -> Result<Vec<ImageMeta>, AdminError> {
        let mut taken: Vec<ImageMeta> = Vec::new();
        for (meta, snap) in volumes {
            match self.take_snapshot(st, meta, snap) {
                Ok(snapshot) => taken.push(snapshot),
                Err(e) => {
                    for snapshot in taken {
                        if let Err(undo) = self.remove_snapshot(st, &snapshot) {
                            eprintln!(
                                "shoal: group snapshot: removing {} after a failure: {undo}",
                                snapshot.name
                            );
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }
}
