//! Human output of the admin commands: sizes, times, key/value blocks and tables for volumes,
//! snapshots, the pool, access lists, reservations, CHAP, schedules and snapshot diffs (`--json`
//! prints the API's JSON instead).

use super::*;

/// A size in binary units with one decimal, e.g. `10.0 GiB`; below 1 KiB in bytes (`512 B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // 1023.96 KiB would print as "1024.0 KiB".
    if value >= 1023.95 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub(super) fn size_with_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        human_size(bytes)
    } else {
        format!("{} ({bytes} bytes)", human_size(bytes))
    }
}

pub(super) fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0.0%".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// `key: value` lines, values aligned.
pub(super) fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out
}

/// An aligned table; `right[i]` right-aligns column i (numbers, sizes).
pub(super) fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < widths.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

pub(super) fn dash(s: Option<&str>) -> String {
    s.unwrap_or("-").to_string()
}

pub(super) fn show_chap(c: &ChapInfo) -> String {
    key_values(&[
        ("volume", c.volume.clone()),
        (
            "chap",
            match &c.user {
                None => "the configuration's [chap], if any".to_owned(),
                Some(user) => format!("user {user}"),
            },
        ),
        ("mutual", dash(c.target_user.as_deref())),
    ])
}

pub(super) fn show_schedule(s: &ScheduleInfo) -> String {
    let every = |secs: u64| humantime::format_duration(std::time::Duration::from_secs(secs));
    key_values(&[
        ("volume", s.volume.clone()),
        (
            "schedule",
            match s.schedule {
                None => "-".into(),
                Some(p) => format!("every {}, keep {}", every(p.every_secs), p.keep),
            },
        ),
        ("next", dash(s.next_due.map(format_time).as_deref())),
        (
            "snapshots",
            match s.snapshots.is_empty() {
                true => "-".to_owned(),
                false => s.snapshots.join("\n           "),
            },
        ),
    ])
}

pub(super) fn show_access(a: &AccessInfo) -> String {
    let who = if a.initiators.is_empty() {
        "any initiator".to_owned()
    } else {
        a.initiators.join("\n             ")
    };
    key_values(&[("volume", a.volume.clone()), ("initiators", who)])
}

pub(super) fn show_reservations(r: &ReservationsInfo) -> String {
    let mut out = key_values(&[
        ("volume", r.volume.clone()),
        ("generation", r.generation.to_string()),
        (
            "reservation",
            match &r.reservation {
                None => "-".into(),
                Some(p) => format!(
                    "{} by {}",
                    p.kind,
                    p.holder.as_deref().unwrap_or("every registrant")
                ),
            },
        ),
        ("reserve(6)", dash(r.scsi2_holder.as_deref())),
    ]);
    if !r.registrations.is_empty() {
        let rows: Vec<Vec<String>> = r
            .registrations
            .iter()
            .map(|g| vec![g.initiator_port.clone(), g.key.clone()])
            .collect();
        out.push_str(&table(&["INITIATOR PORT", "KEY"], &[false, false], &rows));
    }
    out
}

pub(super) fn show_volume(v: &VolumeInfo) -> String {
    key_values(&[
        ("name", v.name.clone()),
        ("target", v.target.clone()),
        ("naa", v.naa.clone()),
        ("size", size_with_bytes(v.size_bytes)),
        ("block size", v.block_size.to_string()),
        ("provisioning", if v.thin { "thin" } else { "full" }.into()),
        ("mapped", human_size(v.mapped_bytes)),
        ("exclusive", human_size(v.exclusive_bytes)),
        ("reserved", human_size(v.reserved_bytes)),
        ("origin", dash(v.origin.as_deref())),
        ("snapshots", v.snapshots.to_string()),
        ("sessions", v.sessions.to_string()),
        ("shard", dash(v.shard.map(|s| s.to_string()).as_deref())),
        ("created", format_time(v.created)),
        (
            "write cache",
            if v.write_cache { "on" } else { "off" }.into(),
        ),
        (
            "initiators",
            match v.initiators.is_empty() {
                true => "any".to_owned(),
                false => v.initiators.join(", "),
            },
        ),
        (
            "read-only",
            if v.read_only {
                "yes (write-protected)"
            } else {
                "no"
            }
            .into(),
        ),
        (
            "qos",
            match (v.iops_limit, v.bandwidth_limit) {
                (None, None) => "-".to_owned(),
                (iops, bytes) => [
                    iops.map(|n| format!("{n} IOPS")),
                    bytes.map(|b| format!("{}/s", human_size(b))),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", "),
            },
        ),
        (
            "chap",
            match &v.chap_user {
                None => "-".to_owned(),
                Some(user) => format!("its own (user {user})"),
            },
        ),
        (
            "schedule",
            match v.snapshot_schedule {
                None => "-".to_owned(),
                Some(s) => format!(
                    "snapshot every {}, keep {}",
                    humantime::format_duration(std::time::Duration::from_secs(s.every_secs)),
                    s.keep
                ),
            },
        ),
    ])
}

/// `thin`/`full`, then `ro` when write-protected and `qos` when a QoS limit is set (the
/// volume list's TYPE column).
fn type_flags(v: &VolumeInfo) -> String {
    let mut t = String::from(if v.thin { "thin" } else { "full" });
    if v.read_only {
        t.push_str(",ro");
    }
    if v.iops_limit.is_some() || v.bandwidth_limit.is_some() {
        t.push_str(",qos");
    }
    t
}

pub(super) fn volume_table(vols: &[VolumeInfo]) -> String {
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                human_size(v.size_bytes),
                human_size(v.mapped_bytes),
                human_size(v.exclusive_bytes),
                type_flags(v),
                v.snapshots.to_string(),
                v.sessions.to_string(),
                dash(v.origin.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "SIZE",
            "MAPPED",
            "EXCLUSIVE",
            "TYPE",
            "SNAPSHOTS",
            "SESSIONS",
            "ORIGIN",
        ],
        &[false, true, true, true, false, true, true, false],
        &rows,
    )
}

pub(super) fn show_diff(d: &SnapshotDiff) -> String {
    let mut out = key_values(&[
        ("snapshot", d.snapshot.clone()),
        ("base", dash(d.base.as_deref())),
        (
            "changed",
            format!(
                "{} in {} ranges (extents of {})",
                human_size(d.changed_bytes),
                d.ranges.len(),
                human_size(d.extent_size)
            ),
        ),
    ]);
    let rows: Vec<Vec<String>> = d
        .ranges
        .iter()
        .map(|r| vec![r.offset.to_string(), r.length.to_string()])
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(&["OFFSET", "LENGTH"], &[true, true], &rows));
    }
    out
}

pub(super) fn show_snapshot(s: &SnapshotInfo) -> String {
    key_values(&[
        ("name", s.name.clone()),
        ("volume", s.volume.clone()),
        ("size", size_with_bytes(s.size_bytes)),
        ("mapped", human_size(s.mapped_bytes)),
        ("exclusive", human_size(s.exclusive_bytes)),
        ("export", dash(s.export.as_deref())),
        ("created", format_time(s.created)),
    ])
}

pub(super) fn session_table(sessions: &[SessionInfo]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".into();
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let digests = match (s.header_digest, s.data_digest) {
                (false, false) => "-".to_string(),
                (true, false) => "header".to_string(),
                (false, true) => "data".to_string(),
                (true, true) => "header,data".to_string(),
            };
            vec![
                s.volume.clone(),
                s.tsih.to_string(),
                s.initiator.clone(),
                s.isid.clone(),
                dash(s.initiator_alias.as_deref()),
                dash(s.peer.as_deref()),
                s.logged_in_at.map_or_else(|| "-".into(), format_time),
                digests,
            ]
        })
        .collect();
    table(
        &[
            "VOLUME",
            "TSIH",
            "INITIATOR",
            "ISID",
            "ALIAS",
            "PEER",
            "SINCE",
            "DIGESTS",
        ],
        &[false, true, false, false, false, false, false, false],
        &rows,
    )
}

pub(super) fn snapshot_table(snaps: &[SnapshotInfo]) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                human_size(s.size_bytes),
                human_size(s.mapped_bytes),
                human_size(s.exclusive_bytes),
                format_time(s.created),
                dash(s.export.as_deref()),
            ]
        })
        .collect();
    table(
        &["NAME", "SIZE", "MAPPED", "EXCLUSIVE", "CREATED", "EXPORT"],
        &[false, true, true, true, false, false],
        &rows,
    )
}

pub(super) fn show_pool(p: &PoolStatus) -> String {
    key_values(&[
        ("size", size_with_bytes(p.size_bytes)),
        (
            "used",
            format!(
                "{} ({})",
                human_size(p.used_bytes),
                percent(p.used_bytes, p.size_bytes)
            ),
        ),
        ("free", human_size(p.free_bytes)),
        ("reserved", human_size(p.reserved_bytes)),
        ("extent size", human_size(u64::from(p.extent_size))),
        (
            "soft threshold",
            format!("{}% used", p.soft_threshold_percent),
        ),
        ("volumes", p.volumes.to_string()),
        ("snapshots", p.snapshots.to_string()),
    ])
}
