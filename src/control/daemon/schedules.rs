//! The control plane's scheduled snapshots (see `control::schedule` for the rules): which are
//! due, taking them, and the retention that deletes the oldest; and what the admin API shows of
//! a volume's schedule. Runs on the background thread, one volume at a time under the control
//! lock.

use super::*;

impl Daemon {
    /// Takes the scheduled snapshots that are due and removes those past each schedule's
    /// retention (see `control::schedule`). Called every second by the background thread; a
    /// failure is logged and retried an interval later.
    pub fn run_snapshot_schedules(&self) {
        let schedules = self.lock().settings.snapshot_schedules();
        let now = SystemTime::now();
        for (volume, _) in schedules {
            if let Err(e) = self.run_schedule(&volume, now) {
                eprintln!("shoal: scheduled snapshot of {volume}: {}", e.message);
            }
        }
    }

    /// One volume's schedule at `now`.
    fn run_schedule(&self, volume: &str, now: SystemTime) -> Result<(), AdminError> {
        let mut st = self.lock();
        // Read again under the lock: the schedule may have changed or gone since the list was
        // read (with its volume, or `--off`).
        let Some(schedule) = st.settings.snapshot_schedule(volume) else {
            return Ok(());
        };
        let Ok(meta) = Self::volume_meta(&st, volume) else {
            return Ok(());
        };
        let now_secs = schedule::unix_secs(now);
        if Self::next_due(&st, volume, schedule) > now_secs {
            return Ok(());
        }
        st.schedule_attempts.insert(volume.to_string(), now_secs);
        let mut name = schedule::auto_name(now);
        for n in 1.. {
            if st.pool.find(&format!("{volume}@{name}")).is_none() {
                break;
            }
            name = format!("{}-{n}", schedule::auto_name(now));
        }
        self.take_snapshot(&mut st, &meta, &name)?;
        let expired = schedule::expired(Self::auto_snapshots(&st, volume), schedule.keep);
        drop(st);
        for snap in expired {
            // An exported snapshot with sessions is kept (and tried again next time); the
            // others still go.
            if let Err(e) = self.delete_snapshot(volume, &snap) {
                eprintln!(
                    "shoal: scheduled snapshot {volume}@{snap} kept: {}",
                    e.message
                );
            }
        }
        Ok(())
    }

    /// The scheduled snapshots of `volume`: (name after `@`, creation time).
    pub(super) fn auto_snapshots(st: &State, volume: &str) -> Vec<(String, u64)> {
        let prefix = format!("{volume}@");
        st.pool
            .images()
            .filter(|m| m.kind == ImageKind::Snapshot)
            .filter_map(|m| {
                let name = m.name.strip_prefix(&prefix)?;
                schedule::is_auto(name).then(|| (name.to_string(), m.created_unix_secs))
            })
            .collect()
    }

    /// When `volume`'s next scheduled snapshot is due (seconds since the epoch).
    pub(super) fn next_due(st: &State, volume: &str, schedule: SnapshotSchedule) -> u64 {
        let newest = Self::auto_snapshots(st, volume).iter().map(|a| a.1).max();
        let tried = st.schedule_attempts.get(volume).copied();
        schedule::next_due(schedule, newest, tried)
    }

    pub(super) fn schedule_info(st: &State, volume: &str) -> ScheduleInfo {
        let schedule = st.settings.snapshot_schedule(volume);
        let mut autos = Self::auto_snapshots(st, volume);
        autos.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        ScheduleInfo {
            volume: volume.to_string(),
            schedule,
            next_due: schedule.map(|s| Self::next_due(st, volume, s)),
            snapshots: autos
                .into_iter()
                .map(|(name, _)| format!("{volume}@{name}"))
                .collect(),
        }
    }
}
