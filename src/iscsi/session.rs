//! Command numbering and ordered delivery for one session (RFC 7143 §3.2.2.1, §4.2.2.1).
//!
//! Invariants:
//! - Non-immediate commands are delivered strictly in CmdSN order; `exp_cmd_sn` is the next one
//!   to deliver, and `max_cmd_sn = exp_cmd_sn + depth - 1` is the highest the initiator may send.
//! - A non-immediate command outside `[exp_cmd_sn, max_cmd_sn]` is silently ignored (§4.2.2.1).
//! - Immediate commands bypass the queue and do not advance `exp_cmd_sn`.

use super::serial;
use rustc_hash::FxHashMap;

/// What the window decided about an arriving command.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// Deliver this item now; then drain [`CmdWindow::pop_ready`] for held ones whose turn came.
    Deliver(T),
    /// Held until the gap before it fills.
    Queued,
    /// Outside the window (or a duplicate): ignore it.
    Ignored,
}

/// The CmdSN window and the commands held until their turn.
#[derive(Debug)]
pub struct CmdWindow<T> {
    exp_cmd_sn: u32,
    depth: u32,
    /// Commands waiting for their turn, keyed by absolute CmdSN.
    held: FxHashMap<u32, T>,
}

impl<T> CmdWindow<T> {
    /// A window starting at `exp_cmd_sn` (the login's CmdSN) allowing `depth` commands.
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Self {
        CmdWindow {
            exp_cmd_sn,
            depth: depth.max(1),
            held: FxHashMap::default(),
        }
    }

    /// ExpCmdSN to report.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    /// MaxCmdSN to report.
    pub fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(self.depth - 1)
    }

    /// Number of commands held for ordering.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Admits an arriving command with `cmd_sn`.
    pub fn admit(&mut self, cmd_sn: u32, immediate: bool, item: T) -> Admission<T> {
        if immediate {
            return Admission::Deliver(item);
        }
        if !serial::in_window(cmd_sn, self.exp_cmd_sn, self.max_cmd_sn()) {
            return Admission::Ignored;
        }
        if cmd_sn != self.exp_cmd_sn {
            if self.held.contains_key(&cmd_sn) {
                return Admission::Ignored;
            }
            self.held.insert(cmd_sn, item);
            return Admission::Queued;
        }
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        Admission::Deliver(item)
    }

    /// The held command whose turn has come, if any (advances ExpCmdSN past it).
    pub fn pop_ready(&mut self) -> Option<T> {
        if self.held.is_empty() {
            return None;
        }
        let item = self.held.remove(&self.exp_cmd_sn)?;
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        Some(item)
    }

    /// Drops every held command (connection reset).
    pub fn clear(&mut self) -> Vec<T> {
        std::mem::take(&mut self.held).into_values().collect()
    }

    /// Removes held commands matching `pred` (task management), returning them.
    pub fn remove_held(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let keys: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, v)| pred(v))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.held.remove(&k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_window_delivers_in_order() {
        let mut w = CmdWindow::new(10, 8);
        assert_eq!(w.max_cmd_sn(), 17);
        assert_eq!(w.admit(10, false, "a"), Admission::Deliver("a"));
        assert_eq!(w.pop_ready(), None);
        assert_eq!(w.exp_cmd_sn(), 11);
        assert_eq!(w.admit(13, false, "d"), Admission::Queued);
        assert_eq!(w.admit(12, false, "c"), Admission::Queued);
        assert_eq!(w.admit(11, false, "b"), Admission::Deliver("b"));
        assert_eq!(w.pop_ready(), Some("c"));
        assert_eq!(w.pop_ready(), Some("d"));
        assert_eq!(w.pop_ready(), None);
        assert_eq!(w.exp_cmd_sn(), 14);
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn cmd_window_ignores_out_of_window() {
        let mut w = CmdWindow::new(10, 8);
        assert_eq!(w.admit(18, false, "x"), Admission::Ignored);
        assert_eq!(w.admit(9, false, "y"), Admission::Ignored);
        assert_eq!(w.exp_cmd_sn(), 10);
    }

    #[test]
    fn cmd_window_immediate_bypasses() {
        let mut w = CmdWindow::new(10, 8);
        assert_eq!(w.admit(10, true, "i"), Admission::Deliver("i"));
        assert_eq!(w.exp_cmd_sn(), 10);
    }

    #[test]
    fn cmd_window_duplicate_held_is_ignored() {
        let mut w = CmdWindow::new(0, 8);
        assert_eq!(w.admit(2, false, "a"), Admission::Queued);
        assert_eq!(w.admit(2, false, "b"), Admission::Ignored);
    }

    #[test]
    fn cmd_window_wraps_around() {
        let mut w = CmdWindow::new(u32::MAX, 4);
        assert_eq!(w.max_cmd_sn(), 2);
        assert_eq!(w.admit(0, false, 2), Admission::Queued);
        assert_eq!(w.admit(u32::MAX, false, 1), Admission::Deliver(1));
        assert_eq!(w.pop_ready(), Some(2));
        assert_eq!(w.exp_cmd_sn(), 1);
    }
}
