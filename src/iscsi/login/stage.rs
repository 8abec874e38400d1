//! Login stages and the rules for moving between them (RFC 7143 §6.3, §11.12.3).

use super::status::LoginError;

/// A login stage, as carried in the CSG and NSG fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoginStage {
    /// 0: SecurityNegotiation.
    SecurityNegotiation = 0,
    /// 1: LoginOperationalNegotiation.
    LoginOperationalNegotiation = 1,
    /// 3: FullFeaturePhase (only ever a next stage).
    FullFeaturePhase = 3,
}

impl LoginStage {
    /// Decodes a CSG/NSG field; 2 is reserved and anything above 3 cannot be encoded.
    pub fn from_wire(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::SecurityNegotiation),
            1 => Some(Self::LoginOperationalNegotiation),
            3 => Some(Self::FullFeaturePhase),
            _ => None,
        }
    }

    /// The field value.
    pub fn wire(self) -> u8 {
        self as u8
    }
}

/// The stage the first Login Request starts in: security or operational.
pub(crate) fn initial_stage(csg: u8, transit: bool, nsg: u8) -> Result<LoginStage, LoginError> {
    match LoginStage::from_wire(csg) {
        Some(
            stage @ (LoginStage::SecurityNegotiation | LoginStage::LoginOperationalNegotiation),
        ) => Ok(stage),
        _ => Err(LoginError::InvalidStage { csg, nsg, transit }),
    }
}

/// The stage a request with T=1 asks to move to: a valid stage strictly after `current`.
pub(crate) fn requested_next_stage(current: LoginStage, nsg: u8) -> Result<LoginStage, LoginError> {
    match LoginStage::from_wire(nsg) {
        Some(next) if next > current => Ok(next),
        _ => Err(LoginError::InvalidStage {
            csg: current.wire(),
            nsg,
            transit: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_two_is_reserved() {
        assert_eq!(LoginStage::from_wire(2), None);
        assert_eq!(LoginStage::from_wire(3), Some(LoginStage::FullFeaturePhase));
        assert_eq!(LoginStage::LoginOperationalNegotiation.wire(), 1);
    }

    #[test]
    fn login_starts_in_security_or_operational_only() {
        assert_eq!(
            initial_stage(0, true, 1).unwrap(),
            LoginStage::SecurityNegotiation
        );
        assert_eq!(
            initial_stage(1, true, 3).unwrap(),
            LoginStage::LoginOperationalNegotiation
        );
        assert!(initial_stage(3, false, 0).is_err());
        assert!(initial_stage(2, false, 0).is_err());
    }

    #[test]
    fn transit_must_move_forward_to_a_valid_stage() {
        let sec = LoginStage::SecurityNegotiation;
        let op = LoginStage::LoginOperationalNegotiation;
        assert_eq!(requested_next_stage(sec, 1).unwrap(), op);
        assert_eq!(
            requested_next_stage(sec, 3).unwrap(),
            LoginStage::FullFeaturePhase
        );
        assert!(requested_next_stage(sec, 0).is_err());
        assert!(requested_next_stage(sec, 2).is_err());
        assert!(requested_next_stage(op, 1).is_err());
        assert!(requested_next_stage(op, 0).is_err());
    }
}
