//! EXTENDED COPY between units of different shards, on the control plane's copy thread (see
//! `runtime::xcopy`): find each named unit's shard and target, ask the source's shard to lend
//! the extents and the destination's to adopt them, give the references back when it refuses,
//! and answer the command's shard.

use super::*;
use crate::runtime::xcopy::{CopyRefusal, CopySide, CrossCopy};

/// How long a chunk waits for the control state before it is refused.
const STATE_WAIT: Duration = Duration::from_millis(200);

/// Where one side of a copy is served: (shard, target, the initiator to check there — `None`
/// for the command's own unit).
type Side = (usize, String, Option<String>);

impl Daemon {
    /// Runs one [`CrossCopy`] and sends its result to the command's shard.
    pub fn cross_copy(&self, request: CrossCopy) {
        let result = self.copy_across_shards(&request);
        if let Some(shard) = self.shards.get(request.shard) {
            shard.send(ShardMsg::CopyDone {
                slot: request.slot,
                result,
            });
        }
    }

    fn copy_across_shards(&self, request: &CrossCopy) -> Result<(), CopyRefusal> {
        let (src, dst, refs) = {
            // Not `lock`: an admin operation holding the state may be waiting for the very
            // command this chunk belongs to (a volume being taken offline waits for its
            // commands), so a busy state refuses the chunk (the host copies by itself) rather
            // than wait.
            let st = self.lock_briefly().ok_or(CopyRefusal::NotReachable)?;
            let side = |s: &CopySide| Self::copy_side(&st, s, request);
            let shared = Arc::clone(st.pool.shared());
            (side(&request.src), side(&request.dst), shared)
        };
        let (Some((src_shard, src_target, src_check)), Some((dst_shard, dst_target, dst_check))) =
            (src, dst)
        else {
            return Err(CopyRefusal::NotReachable);
        };
        let lent = self
            .ask(src_shard, |reply| ShardMsg::LendExtents {
                target: src_target,
                initiator: src_check,
                first: request.src_first,
                count: request.count,
                reply,
            })
            .map_err(|_| CopyRefusal::NotReachable)??;
        let adopted = self.ask(dst_shard, |reply| ShardMsg::AdoptExtents {
            target: dst_target,
            initiator: dst_check,
            first: request.dst_first,
            lent: lent.clone(),
            reply,
        });
        match adopted {
            Ok(Ok(())) => Ok(()),
            // Disposed of by the destination's shard.
            Ok(Err(refusal @ (CopyRefusal::Io | CopyRefusal::Refused))) => Err(refusal),
            Ok(Err(refusal)) => {
                // Not taken: the references go back.
                for p in lent.into_iter().flatten() {
                    refs.refs.release(p);
                }
                Err(refusal)
            }
            Err(e) => {
                // Whether the shard took them is unknown: left counted (space lost until the
                // next start recounts), never released twice.
                eprintln!("shoal: extended copy to {}: {e}", request.initiator);
                Err(CopyRefusal::NotReachable)
            }
        }
    }

    /// The state, if no one holds it for long: tries for up to [`STATE_WAIT`].
    fn lock_briefly(&self) -> Option<MutexGuard<'_, State>> {
        let deadline = std::time::Instant::now() + STATE_WAIT;
        loop {
            match self.state.try_lock() {
                Ok(st) => return Some(st),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Where a side of a copy is served: the command's own unit, or the served image whose
    /// NAA designator it names (checked for the command's initiator on its shard).
    fn copy_side(st: &State, side: &CopySide, request: &CrossCopy) -> Option<Side> {
        match side {
            CopySide::Own(target) => {
                let served = st.served.values().find(|s| s.target == *target)?;
                Some((served.shard, target.clone(), None))
            }
            CopySide::Named(naa) => {
                let (_, served) = st.served.iter().find(|(image, _)| {
                    st.pool
                        .image(**image)
                        .is_some_and(|m| naa_designator(&m.identity) == *naa)
                })?;
                Some((
                    served.shard,
                    served.target.clone(),
                    Some(request.initiator.clone()),
                ))
            }
        }
    }
}
