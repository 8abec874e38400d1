//! The SecurityNegotiation login stage (RFC 7143 §6.3.1, §12.1 AuthMethod).
//!
//! Only `AuthMethod=None` is implemented today. The stage is its own step so that CHAP
//! (RFC 7143 §12.1.3) can be added without touching the operational negotiation: a CHAP policy
//! adds an [`AuthMethod`] variant, its `CHAP_*` keys to [`super::keys::KEYS`] (security phase,
//! handled specially), a multi-round state here, and `SecurityStage::is_complete` turns true
//! only once the initiator's response has been verified. Until then the state machine answers
//! with T=0 and stays in the security stage.

use super::keys::select_from_list;
use super::status::LoginError;

/// The authentication a target requires of initiators.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthPolicy {
    /// No authentication: `AuthMethod=None` is accepted and the security stage may be skipped.
    #[default]
    None,
}

/// An AuthMethod value this target implements (RFC 7143 §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `None`: no authentication.
    None,
}

impl AuthMethod {
    /// Parses an AuthMethod value this target implements.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "None" => Some(Self::None),
            _ => None,
        }
    }

    /// The value as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
        }
    }
}

/// Progress of the security stage of one login.
#[derive(Debug, Clone)]
pub(crate) struct SecurityStage {
    policy: AuthPolicy,
    method: Option<AuthMethod>,
}

impl SecurityStage {
    /// A fresh security stage under `policy`.
    pub(crate) fn new(policy: AuthPolicy) -> Self {
        Self {
            policy,
            method: None,
        }
    }

    /// True when the initiator may start the login in the operational stage.
    pub(crate) fn may_skip(&self) -> bool {
        match self.policy {
            AuthPolicy::None => true,
        }
    }

    /// True when `method` satisfies the policy.
    fn accepts(&self, method: AuthMethod) -> bool {
        match (&self.policy, method) {
            (AuthPolicy::None, AuthMethod::None) => true,
        }
    }

    /// Answers an AuthMethod offer: the first method of the initiator's list the policy
    /// accepts. No acceptable method fails the login (0201).
    pub(crate) fn select_method(&mut self, offer: &str) -> Result<String, LoginError> {
        let chosen = select_from_list(offer, |v| {
            AuthMethod::parse(v).is_some_and(|m| self.accepts(m))
        })
        .and_then(AuthMethod::parse)
        .ok_or_else(|| {
            LoginError::AuthenticationFailed(format!("no acceptable AuthMethod in {offer:?}"))
        })?;
        self.method = Some(chosen);
        Ok(chosen.as_str().to_owned())
    }

    /// True when the stage may be left: authentication (if any) has succeeded.
    pub(crate) fn is_complete(&self) -> bool {
        match self.policy {
            AuthPolicy::None => true,
        }
    }

    /// The method agreed on, if AuthMethod was negotiated.
    #[cfg(test)]
    pub(crate) fn method(&self) -> Option<AuthMethod> {
        self.method
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_policy_selects_none_from_initiator_list() {
        let mut stage = SecurityStage::new(AuthPolicy::None);
        assert!(stage.may_skip() && stage.is_complete());
        assert_eq!(stage.select_method("CHAP,None").unwrap(), "None");
        assert_eq!(stage.method(), Some(AuthMethod::None));
    }

    #[test]
    fn none_policy_fails_when_only_unsupported_methods_offered() {
        let mut stage = SecurityStage::new(AuthPolicy::None);
        let err = stage.select_method("CHAP,SRP").unwrap_err();
        assert!(matches!(err, LoginError::AuthenticationFailed(_)));
    }
}
