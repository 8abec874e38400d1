//! Snapshots of several volumes at one instant (a VM whose disks sit on several datastores, a
//! database's data and log volumes): crash-consistent together, so that a write a host issued
//! only after another was acknowledged is never in the group without that other.
//!
//! Every volume's shard first freezes it (`ShardMsg::Freeze`: new commands held, in order; the
//! answer comes once the writes in flight have completed), then each volume is snapshotted as
//! usual (no write is in flight on any of them), then every freeze is lifted, whatever
//! happened. A freeze ends by itself after [`FREEZE_LIMIT`], so hosts are never held longer if
//! the control plane fails in between. If one snapshot fails, or the last one is only answered
//! once the freeze may have ended, those already taken are deleted: the group is taken whole
//! and consistent or not at all. The names are checked before anything is frozen.

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
        // A name that cannot be taken fails the group before any host is held.
        for (meta, snap) in volumes {
            Self::check_snapshot_name(st, meta, snap)?;
        }
        let mut by_shard: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (meta, _) in volumes {
            if let Some(served) = st.served.get(&meta.image) {
                by_shard
                    .entry(served.shard)
                    .or_default()
                    .push(served.target.clone());
            }
        }
        let until = Instant::now() + FREEZE_LIMIT;
        let frozen = self.freeze_all(&by_shard, until);
        let taken = frozen.and_then(|()| self.take_all(st, volumes, until));
        for (&shard, targets) in &by_shard {
            if let Some(s) = self.shards.get(shard) {
                s.send(ShardMsg::Thaw {
                    targets: targets.clone(),
                });
            }
        }
        taken
    }

    /// Snapshot `snap` of `volume` could be taken: a valid name, not taken yet (what
    /// `take_snapshot` checks first; a group checks it before the hosts are frozen).
    pub(super) fn check_snapshot_name(
        st: &State,
        volume: &ImageMeta,
        snap: &str,
    ) -> Result<(), AdminError> {
        config::validate_volume_name(snap)
            .map_err(|e| AdminError::new(ErrorCode::InvalidArgument, e.to_string()))?;
        let full = format!("{}@{snap}", volume.name);
        if st.pool.find(&full).is_some() {
            return Err(AdminError::new(
                ErrorCode::AlreadyExists,
                format!("snapshot {full:?} already exists"),
            ));
        }
        Ok(())
    }

    /// Freezes every target of `by_shard` until `until` at the latest, and waits until each
    /// shard has drained its writes.
    fn freeze_all(
        &self,
        by_shard: &BTreeMap<usize, Vec<String>>,
        until: Instant,
    ) -> Result<(), AdminError> {
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

    /// Snapshots every volume while the freeze holds (it ends by itself at `until`); on a
    /// failure, or when the last snapshot was answered after `until` (writes may have gone
    /// in between the snapshots), deletes the ones taken.
    fn take_all(
        &self,
        st: &mut State,
        volumes: &[(ImageMeta, String)],
        until: Instant,
    ) -> Result<Vec<ImageMeta>, AdminError> {
        let mut taken: Vec<ImageMeta> = Vec::new();
        let late = || {
            internal(format!(
                "the snapshots were not all taken within the {} s the volumes may be frozen; \
                 none was kept",
                FREEZE_LIMIT.as_secs()
            ))
        };
        for (meta, snap) in volumes {
            // A snapshot answered before `until` was taken while its volume was frozen.
            let result = if Instant::now() >= until {
                Err(late())
            } else {
                self.take_snapshot(st, meta, snap)
            };
            match result {
                Ok(snapshot) => taken.push(snapshot),
                Err(e) => return Err(self.drop_taken(st, taken, e)),
            }
        }
        if Instant::now() >= until {
            return Err(self.drop_taken(st, taken, late()));
        }
        Ok(taken)
    }

    /// Deletes the snapshots `taken` of a group that failed with `error` (returned).
    fn drop_taken(&self, st: &mut State, taken: Vec<ImageMeta>, error: AdminError) -> AdminError {
        for snapshot in taken {
            if let Err(undo) = self.remove_snapshot(st, &snapshot) {
                eprintln!(
                    "shoal: group snapshot: removing {} after a failure: {undo}",
                    snapshot.name
                );
            }
        }
        error
    }
}
