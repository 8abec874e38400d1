//! Text Request answers (RFC 7143 §11.10, Appendix C): SendTargets in discovery and normal
//! sessions, operational keys renegotiated in full feature phase.

use super::login::LoginContext;
use crate::iscsi::login::{SendTargetsScope, TargetDirectory, TargetRecord};
use crate::iscsi::text::{encode_text, parse_text};

fn records_text(records: &[TargetRecord]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for r in records {
        pairs.push(("TargetName".to_string(), r.name.clone()));
        for a in &r.addresses {
            pairs.push(("TargetAddress".to_string(), a.clone()));
        }
    }
    pairs
}

/// Answers a Text Request of a discovery session.
pub fn discovery_text(data: &[u8], ctx: &LoginContext) -> Vec<u8> {
    let Ok(pairs) = parse_text(data) else {
        return Vec::new();
    };
    let mut answer = Vec::new();
    for (key, value) in &pairs {
        if key == "SendTargets" {
            let scope = if value == "All" {
                SendTargetsScope::All
            } else {
                SendTargetsScope::Named(value)
            };
            answer.extend(records_text(&ctx.send_targets(scope)));
        } else {
            answer.push((key.clone(), "NotUnderstood".to_string()));
        }
    }
    encode_text(&answer)
}

/// Answers a Text Request in a normal session's full feature phase.
pub fn full_feature_text(data: &[u8], target: &str, portals: &[std::net::SocketAddr]) -> Vec<u8> {
    let Ok(pairs) = parse_text(data) else {
        return Vec::new();
    };
    let mut answer = Vec::new();
    for (key, value) in &pairs {
        if key == "SendTargets" {
            if value.is_empty() || value == target || value == "All" {
                let addresses = portals.iter().map(|p| format!("{p},1")).collect();
                answer.extend(records_text(&[TargetRecord {
                    name: target.to_string(),
                    addresses,
                }]));
            }
        } else {
            answer.push((key.clone(), "NotUnderstood".to_string()));
        }
    }
    encode_text(&answer)
}
