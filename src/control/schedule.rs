//! Scheduled snapshots: when a volume's next one is due, what it is called, and which old ones
//! its retention removes. The control plane's background thread applies them every second
//! ([`crate::control::daemon::Daemon::run_snapshot_schedules`]); the schedule itself is a volume
//! setting (`control::settings::SnapshotSchedule`).
//!
//! A scheduled snapshot is named `auto-YYYYMMDD-HHMMSS` (UTC, the time it was taken; `-N` is
//! added in the rare case that name is taken). Only snapshots named so are counted and removed
//! by the retention: snapshots an administrator takes by hand are never touched. The schedule
//! keeps no state of its own on disk: the newest `auto-` snapshot's creation time says when the
//! next one is due, so a restart neither skips nor doubles one.

use super::settings::SnapshotSchedule;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of the names of scheduled snapshots.
pub const AUTO_PREFIX: &str = "auto-";

/// The name of a snapshot scheduled at `at`: `auto-YYYYMMDD-HHMMSS` (UTC).
pub fn auto_name(at: SystemTime) -> String {
    // RFC 3339 at whole seconds: "2026-11-26T04:53:55Z".
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let (date, time) = digits.split_at(digits.len().min(8));
    format!("{AUTO_PREFIX}{date}-{time}")
}

/// Whether snapshot `name` (the part after `@`) was taken by a schedule.
pub fn is_auto(name: &str) -> bool {
    name.strip_prefix(AUTO_PREFIX)
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Seconds since the epoch of `at` (0 before it).
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// When the next scheduled snapshot is due (seconds since the epoch): one interval after the
/// later of the newest scheduled snapshot and the last attempt (a failed one waits an interval
/// too); at once when there is neither.
pub fn next_due(schedule: SnapshotSchedule, newest: Option<u64>, last_attempt: Option<u64>) -> u64 {
    match newest.max(last_attempt) {
        Some(at) => at.saturating_add(schedule.every_secs),
        None => 0,
    }
}

/// The scheduled snapshots the retention removes: all but the newest `keep`, oldest first.
/// `autos` are (name, creation time) in any order.
pub fn expired(mut autos: Vec<(String, u64)>, keep: u32) -> Vec<String> {
    autos.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let excess = autos.len().saturating_sub(keep as usize);
    autos
        .into_iter()
        .take(excess)
        .map(|(name, _)| name)
        .collect()
}

/// A duration such as `90s`, `15m`, `1h`, `1d` as seconds (at least one).
pub fn parse_interval(text: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d.as_secs() == 0 {
        return Err(format!("{text:?}: the interval must be at least 1s"));
    }
    Ok(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOURLY: SnapshotSchedule = SnapshotSchedule {
        every_secs: 3600,
        keep: 3,
    };

    #[test]
    fn names_are_utc_timestamps_valid_as_snapshot_names() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_668_835); // 2026-11-26 04:53:55 UTC
        let name = auto_name(at);
        assert_eq!(name, "auto-20261126-045355");
        crate::config::validate_volume_name(&name).unwrap();
        assert!(is_auto(&name));
        assert!(!is_auto("before-upgrade") && !is_auto("auto-mine") && !is_auto("auto-"));
    }

    #[test]
    fn the_next_snapshot_is_due_an_interval_after_the_newest_or_the_last_try() {
        assert_eq!(next_due(HOURLY, None, None), 0, "at once");
        assert_eq!(next_due(HOURLY, Some(1000), None), 4600);
        assert_eq!(
            next_due(HOURLY, Some(1000), Some(2000)),
            5600,
            "a failed try waits"
        );
        assert_eq!(next_due(HOURLY, Some(9000), Some(2000)), 12600);
    }

    #[test]
    fn retention_removes_the_oldest_beyond_keep() {
        let autos = vec![
            ("auto-20261126-030000".to_string(), 300),
            ("auto-20261126-010000".to_string(), 100),
            ("auto-20261126-040000".to_string(), 400),
            ("auto-20261126-020000".to_string(), 200),
        ];
        assert_eq!(
            expired(autos.clone(), 2),
            vec!["auto-20261126-010000", "auto-20261126-020000"]
        );
        assert!(expired(autos, 4).is_empty());
    }

    #[test]
    fn intervals_parse_from_human_durations() {
        assert_eq!(parse_interval("15m"), Ok(900));
        assert_eq!(parse_interval("1h 30m"), Ok(5400));
        assert_eq!(parse_interval("1d"), Ok(86400));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("often").is_err());
    }
}
