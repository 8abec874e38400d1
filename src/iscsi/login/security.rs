//! The SecurityNegotiation login stage (RFC 7143 §6.3.1, §12.1 AuthMethod, §12.1.3 CHAP).
//!
//! Under [`AuthPolicy::None`] the initiator may skip the stage, and `AuthMethod=None` is what
//! it agrees to. Under [`AuthPolicy::Chap`] the stage is required and only CHAP is accepted:
//!
//! ```text
//! I: AuthMethod=CHAP,None          T: AuthMethod=CHAP                    (T=0)
//! I: CHAP_A=5 (a list)             T: CHAP_A=5 CHAP_I=id CHAP_C=0x...    (T=0)
//! I: CHAP_N=user CHAP_R=0x...      T: (mutual: CHAP_N=target CHAP_R=0x...), may transit
//!    [+ CHAP_I, CHAP_C: mutual]
//! ```
//!
//! CHAP_R is H(id ‖ secret ‖ challenge) with H the algorithm of CHAP_A: MD5 (5, RFC 1994, what
//! every initiator speaks) or SHA-256 (7). The challenge is 16 random bytes (32 for SHA-256), the
//! identifier a random byte. A wrong name or response, a mutual challenge without target
//! credentials, or a mutual challenge equal to ours (a reflection) fails the login with 0201
//! AUTHENTICATION FAILURE, and the stage is complete only once the response checked out.

use md5::{Digest, Md5};
use sha2::Sha256;

use super::keys::select_from_list;
use super::status::LoginError;

/// A CHAP name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecret {
    /// CHAP_N: the name.
    pub user: String,
    /// The shared secret (RFC 7143 §12.1.3: at least 12 bytes; checked by the configuration).
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChapSecret({:?}, <{} bytes>)",
            self.user,
            self.secret.len()
        )
    }
}

/// The authentication a target requires of initiators.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthPolicy {
    /// No authentication: `AuthMethod=None` is accepted and the security stage may be skipped.
    #[default]
    None,
    /// CHAP: initiators prove they know `initiator`'s secret; an initiator that asks for mutual
    /// CHAP gets the target's answer with `target` (refused when it is not set).
    Chap {
        /// What initiators log in with.
        initiator: ChapSecret,
        /// What the target answers mutual CHAP with.
        target: Option<ChapSecret>,
    },
}

/// An AuthMethod value this target implements (RFC 7143 §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `None`: no authentication.
    None,
    /// `CHAP` (RFC 1994).
    Chap,
}

impl AuthMethod {
    /// Parses an AuthMethod value this target implements.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "None" => Some(Self::None),
            "CHAP" => Some(Self::Chap),
            _ => None,
        }
    }

    /// The value as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Chap => "CHAP",
        }
    }
}

/// A CHAP_A algorithm this target implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChapAlgorithm {
    Md5,
    Sha256,
}

impl ChapAlgorithm {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "5" => Some(Self::Md5),
            "7" => Some(Self::Sha256),
            _ => None,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Self::Md5 => "5",
            Self::Sha256 => "7",
        }
    }

    fn challenge_len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha256 => 32,
        }
    }

    /// H(id ‖ secret ‖ challenge).
    fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        match self {
            Self::Md5 => Md5::new()
                .chain_update([id])
                .chain_update(secret)
                .chain_update(challenge)
                .finalize()
                .to_vec(),
            Self::Sha256 => Sha256::new()
                .chain_update([id])
                .chain_update(secret)
                .chain_update(challenge)
                .finalize()
                .to_vec(),
        }
    }
}

/// Where a CHAP exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChapState {
    /// AuthMethod not agreed yet.
    Idle,
    /// AuthMethod=CHAP agreed: waiting for CHAP_A.
    WantAlgorithm,
    /// Challenge sent: waiting for CHAP_N and CHAP_R.
    WantResponse {
        algorithm: ChapAlgorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    /// The initiator is authenticated.
    Done,
}

/// Progress of the security stage of one login.
#[derive(Debug, Clone)]
pub(crate) struct SecurityStage {
    policy: AuthPolicy,
    method: Option<AuthMethod>,
    chap: ChapState,
}

impl SecurityStage {
    /// A fresh security stage under `policy`.
    pub(crate) fn new(policy: AuthPolicy) -> Self {
        Self {
            policy,
            method: None,
            chap: ChapState::Idle,
        }
    }

    /// True when the initiator may start the login in the operational stage.
    pub(crate) fn may_skip(&self) -> bool {
        matches!(self.policy, AuthPolicy::None)
    }

    /// True when `method` satisfies the policy.
    fn accepts(&self, method: AuthMethod) -> bool {
        matches!(
            (&self.policy, method),
            (AuthPolicy::None, AuthMethod::None) | (AuthPolicy::Chap { .. }, AuthMethod::Chap)
        )
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
        if chosen == AuthMethod::Chap {
            self.chap = ChapState::WantAlgorithm;
        }
        Ok(chosen.as_str().to_owned())
    }

    /// Whether `key` belongs to the CHAP exchange ([`Self::chap_step`] handles it).
    pub(crate) fn is_chap_key(key: &str) -> bool {
        key.starts_with("CHAP_")
    }

    /// Runs the CHAP keys of one login request (after its AuthMethod, if any) and returns the
    /// target's CHAP keys to answer with.
    pub(crate) fn chap_step(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>, LoginError> {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let has_chap = pairs.iter().any(|(k, _)| Self::is_chap_key(k));
        let AuthPolicy::Chap { initiator, target } = &self.policy else {
            return match has_chap {
                true => Err(fail("CHAP keys without AuthMethod=CHAP")),
                false => Ok(Vec::new()),
            };
        };
        let (answers, next) = match &self.chap {
            ChapState::Idle | ChapState::Done if has_chap => {
                return Err(fail("CHAP keys out of sequence"));
            }
            ChapState::WantAlgorithm => match get("CHAP_A") {
                None if has_chap => return Err(fail("CHAP_A expected")),
                None => return Ok(Vec::new()),
                Some(offer) => challenge(offer)?,
            },
            ChapState::WantResponse {
                algorithm,
                id,
                challenge,
            } => {
                let (Some(name), Some(response)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return match has_chap {
                        true => Err(fail("CHAP_N and CHAP_R expected")),
                        false => Ok(Vec::new()),
                    };
                };
                let sent = (*algorithm, *id, challenge.as_slice());
                check_response(sent, initiator, name, response)?;
                let mutual = (get("CHAP_I"), get("CHAP_C"));
                (
                    answer_mutual(sent, target.as_ref(), mutual)?,
                    ChapState::Done,
                )
            }
            _ => return Ok(Vec::new()),
        };
        self.chap = next;
        Ok(answers)
    }

    /// True when the stage may be left: authentication (if any) has succeeded.
    pub(crate) fn is_complete(&self) -> bool {
        match self.policy {
            AuthPolicy::None => true,
            AuthPolicy::Chap { .. } => self.chap == ChapState::Done,
        }
    }

    /// The method agreed on, if AuthMethod was negotiated.
    #[cfg(test)]
    pub(crate) fn method(&self) -> Option<AuthMethod> {
        self.method
    }
}

/// Answers CHAP_A: the first algorithm of the offer we implement, a random identifier and a
/// random challenge; the state that waits for the response.
fn challenge(offer: &str) -> Result<(Vec<(String, String)>, ChapState), LoginError> {
    let algorithm = select_from_list(offer, |v| ChapAlgorithm::parse(v).is_some())
        .and_then(ChapAlgorithm::parse)
        .ok_or_else(|| fail(&format!("no supported CHAP_A in {offer:?}")))?;
    let mut random = vec![0u8; 1 + algorithm.challenge_len()];
    getrandom::fill(&mut random)
        .map_err(|e| fail(&format!("no randomness for a challenge: {e}")))?;
    let (id, challenge) = (random[0], random[1..].to_vec());
    let answers = vec![
        ("CHAP_A".to_owned(), algorithm.code().to_owned()),
        ("CHAP_I".to_owned(), id.to_string()),
        ("CHAP_C".to_owned(), encode_hex(&challenge)),
    ];
    let next = ChapState::WantResponse {
        algorithm,
        id,
        challenge,
    };
    Ok((answers, next))
}

/// Checks the initiator's CHAP_N and CHAP_R against what we `sent` (algorithm, identifier,
/// challenge) and its credentials.
fn check_response(
    (algorithm, id, challenge): (ChapAlgorithm, u8, &[u8]),
    initiator: &ChapSecret,
    name: &str,
    response: &str,
) -> Result<(), LoginError> {
    let expected = algorithm.response(id, &initiator.secret, challenge);
    let response = decode_binary(response).ok_or_else(|| fail("malformed CHAP_R"))?;
    if name != initiator.user || !constant_time_eq(&response, &expected) {
        return Err(fail(&format!("wrong CHAP name or response for {name:?}")));
    }
    Ok(())
}

/// Mutual CHAP: our CHAP_N and CHAP_R for the initiator's (CHAP_I, CHAP_C), if it sent them.
fn answer_mutual(
    (algorithm, _, ours): (ChapAlgorithm, u8, &[u8]),
    target: Option<&ChapSecret>,
    (their_id, their_challenge): (Option<&str>, Option<&str>),
) -> Result<Vec<(String, String)>, LoginError> {
    let (their_id, their_challenge) = match (their_id, their_challenge) {
        (None, None) => return Ok(Vec::new()),
        (Some(i), Some(c)) => (i, c),
        _ => return Err(fail("CHAP_I and CHAP_C come together")),
    };
    let Some(target) = target else {
        return Err(fail("mutual CHAP asked, no target secret configured"));
    };
    let their_id: u8 = their_id.parse().map_err(|_| fail("malformed CHAP_I"))?;
    let their_challenge = decode_binary(their_challenge).ok_or_else(|| fail("malformed CHAP_C"))?;
    if their_challenge.is_empty() || their_challenge == ours {
        return Err(fail("mutual CHAP challenge empty or reflected"));
    }
    let response = algorithm.response(their_id, &target.secret, &their_challenge);
    Ok(vec![
        ("CHAP_N".to_owned(), target.user.clone()),
        ("CHAP_R".to_owned(), encode_hex(&response)),
    ])
}

fn fail(why: &str) -> LoginError {
    LoginError::AuthenticationFailed(why.to_owned())
}

/// A binary value as RFC 7143 §6.1 hex (`0x...`).
fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A binary value in hex (`0x`/`0X`) or base64 (`0b`/`0B`) encoding (RFC 7143 §6.1).
fn decode_binary(value: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let (prefix, body) = (value.get(..2)?, value.get(2..)?);
    match prefix {
        "0x" | "0X" => {
            let body = if body.len() % 2 == 1 {
                format!("0{body}")
            } else {
                body.to_owned()
            };
            (0..body.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(body.get(i..i + 2)?, 16).ok())
                .collect()
        }
        "0b" | "0B" => base64::engine::general_purpose::STANDARD.decode(body).ok(),
        _ => None,
    }
}

/// Compares without an early exit, so the time taken says nothing about where a guess differs.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, secret: &str) -> ChapSecret {
        ChapSecret {
            user: user.into(),
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn chap(mutual: bool) -> SecurityStage {
        SecurityStage::new(AuthPolicy::Chap {
            initiator: creds("alice", "initiator-secret"),
            target: mutual.then(|| creds("shoal", "target-secret-123")),
        })
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn get<'a>(answers: &'a [(String, String)], key: &str) -> &'a str {
        answers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    /// Runs AuthMethod and CHAP_A; returns (algorithm, id, challenge) the target sent.
    fn challenge(stage: &mut SecurityStage, offer: &str) -> (ChapAlgorithm, u8, Vec<u8>) {
        assert_eq!(stage.select_method("CHAP,None").unwrap(), "CHAP");
        assert!(!stage.is_complete() && !stage.may_skip());
        let a = stage.chap_step(&kv(&[("CHAP_A", offer)])).unwrap();
        let algorithm = ChapAlgorithm::parse(get(&a, "CHAP_A")).unwrap();
        let id: u8 = get(&a, "CHAP_I").parse().unwrap();
        let c = decode_binary(get(&a, "CHAP_C")).unwrap();
        assert_eq!(c.len(), algorithm.challenge_len());
        assert!(!stage.is_complete());
        (algorithm, id, c)
    }

    #[test]
    fn none_policy_selects_none_from_initiator_list() {
        let mut stage = SecurityStage::new(AuthPolicy::None);
        assert!(stage.may_skip() && stage.is_complete());
        assert_eq!(stage.select_method("CHAP,None").unwrap(), "None");
        assert_eq!(stage.method(), Some(AuthMethod::None));
        assert!(stage.chap_step(&kv(&[("CHAP_A", "5")])).is_err());
    }

    #[test]
    fn none_policy_fails_when_only_unsupported_methods_offered() {
        let mut stage = SecurityStage::new(AuthPolicy::None);
        let err = stage.select_method("CHAP,SRP").unwrap_err();
        assert!(matches!(err, LoginError::AuthenticationFailed(_)));
    }

    #[test]
    fn chap_policy_refuses_none() {
        let mut stage = chap(false);
        assert!(stage.select_method("None").is_err());
    }

    #[test]
    fn md5_response_from_the_right_secret_authenticates() {
        let mut stage = chap(false);
        let (algorithm, id, c) = challenge(&mut stage, "7,5");
        assert_eq!(
            algorithm,
            ChapAlgorithm::Sha256,
            "the initiator's first choice"
        );
        let mut stage = chap(false);
        let (algorithm, id2, c2) = challenge(&mut stage, "5");
        assert_eq!(algorithm, ChapAlgorithm::Md5);
        assert!(c != c2 || id != id2, "fresh challenges");
        let r = encode_hex(&Md5::digest(
            [&[id2][..], b"initiator-secret", &c2].concat(),
        ));
        let a = stage
            .chap_step(&kv(&[("CHAP_N", "alice"), ("CHAP_R", &r)]))
            .unwrap();
        assert!(a.is_empty());
        assert!(stage.is_complete());
    }

    #[test]
    fn wrong_secret_or_name_fails() {
        for (name, secret) in [
            ("alice", "wrong-secret-000"),
            ("mallory", "initiator-secret"),
        ] {
            let mut stage = chap(false);
            let (alg, id, c) = challenge(&mut stage, "5");
            let r = encode_hex(&alg.response(id, secret.as_bytes(), &c));
            let err = stage
                .chap_step(&kv(&[("CHAP_N", name), ("CHAP_R", &r)]))
                .unwrap_err();
            assert!(matches!(err, LoginError::AuthenticationFailed(_)));
            assert!(!stage.is_complete());
        }
    }

    #[test]
    fn mutual_chap_answers_with_the_target_secret() {
        let mut stage = chap(true);
        let (alg, id, c) = challenge(&mut stage, "5");
        let r = encode_hex(&alg.response(id, b"initiator-secret", &c));
        let theirs = [9u8; 16];
        let a = stage
            .chap_step(&kv(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "77"),
                ("CHAP_C", &encode_hex(&theirs)),
            ]))
            .unwrap();
        assert_eq!(get(&a, "CHAP_N"), "shoal");
        let expected = alg.response(77, b"target-secret-123", &theirs);
        assert_eq!(decode_binary(get(&a, "CHAP_R")).unwrap(), expected);
        assert!(stage.is_complete());
    }

    #[test]
    fn mutual_chap_without_target_secret_or_reflected_fails() {
        let mut stage = chap(false);
        let (alg, id, c) = challenge(&mut stage, "5");
        let r = encode_hex(&alg.response(id, b"initiator-secret", &c));
        let mutual = kv(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &r),
            ("CHAP_I", "1"),
            ("CHAP_C", "0x0102"),
        ]);
        assert!(stage.chap_step(&mutual).is_err());
        let mut stage = chap(true);
        let (alg, id, c) = challenge(&mut stage, "5");
        let r = encode_hex(&alg.response(id, b"initiator-secret", &c));
        let reflected = kv(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &r),
            ("CHAP_I", "1"),
            ("CHAP_C", &encode_hex(&c)),
        ]);
        assert!(stage.chap_step(&reflected).is_err());
    }

    #[test]
    fn out_of_order_keys_and_unsupported_algorithms_fail() {
        let mut stage = chap(false);
        assert!(
            stage.chap_step(&kv(&[("CHAP_A", "5")])).is_err(),
            "before AuthMethod"
        );
        let mut stage = chap(false);
        stage.select_method("CHAP").unwrap();
        assert!(stage.chap_step(&kv(&[("CHAP_A", "6,8")])).is_err());
        let mut stage = chap(false);
        stage.select_method("CHAP").unwrap();
        assert!(stage.chap_step(&kv(&[("CHAP_N", "alice")])).is_err());
        // A request with no CHAP key (e.g. only AuthMethod) waits.
        let mut stage = chap(false);
        stage.select_method("CHAP").unwrap();
        assert_eq!(stage.chap_step(&[]).unwrap(), vec![]);
    }

    #[test]
    fn binary_values_in_hex_and_base64() {
        assert_eq!(decode_binary("0x0aFf"), Some(vec![0x0A, 0xFF]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0A, 0xBC]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("12"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(encode_hex(&[0, 0xAB]), "0x00ab");
        assert!(constant_time_eq(b"ab", b"ab") && !constant_time_eq(b"ab", b"ac"));
    }
}
