//! Text Request answers in a normal session's full feature phase (RFC 7143 §11.10): SendTargets
//! for the session's own target and renegotiation of operational keys, through the protocol
//! core's [`TextExchange`](crate::iscsi::discovery::TextExchange).

use crate::iscsi::login::{SendTargetsScope, TargetDirectory, TargetRecord};
use std::net::SocketAddr;

/// The view of the target directory a normal session has: its own target only.
pub struct SessionDirectory<'a> {
    /// Target IQN.
    pub target: &'a str,
    /// TargetAlias (volume name).
    pub alias: &'a str,
    /// Portals.
    pub portals: &'a [SocketAddr],
}

impl TargetDirectory for SessionDirectory<'_> {
    fn target_exists(&self, name: &str) -> bool {
        name == self.target
    }

    fn target_alias(&self, name: &str) -> Option<String> {
        (name == self.target).then(|| self.alias.to_string())
    }

    fn portal_group_tag(&self) -> u16 {
        1
    }

    fn send_targets(&self, scope: SendTargetsScope<'_>) -> Vec<TargetRecord> {
        let name = match scope {
            SendTargetsScope::All => self.target,
            SendTargetsScope::Named(n) | SendTargetsScope::Session(n) => n,
        };
        if name != self.target {
            return Vec::new();
        }
        let addresses = self.portals.iter().map(|p| format!("{p},1")).collect();
        vec![TargetRecord {
            name: self.target.to_string(),
            addresses,
        }]
    }
}
