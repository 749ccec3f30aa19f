//! Verdicts, their signatures and the check of the policy headers.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::constitution::ConstitutionHash;
use super::judges::JudgeError;
use super::ledger::{unix_now, LedgerError, MemoryLedger, VerdictLedger};
use crate::config::Secret;
use crate::error::{Code, ErrorCode};
use crate::slm::GenerationParams;

type HmacSha256 = Hmac<Sha256>;

/// The policy decision for one turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused, with the codes of the categories that fired.
    Refuse(Vec<String>),
}

impl Verdict {
    /// Header form: `allow` or `refuse:S1,pii`.
    pub fn header_value(&self) -> String {
        match self {
            Self::Allow => "allow".into(),
            Self::Refuse(codes) => format!("refuse:{}", codes.join(",")),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "allow" {
            return Some(Self::Allow);
        }
        let codes = s.strip_prefix("refuse:")?;
        let codes: Vec<String> = codes.split(',').map(str::to_owned).collect();
        let valid = codes.iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'));
        valid.then_some(Self::Refuse(codes))
    }

    /// `allow` or `refuse`, for metric labels and events.
    pub fn decision(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Refuse(_) => "refuse",
        }
    }
}

/// The turn a verdict is bound to — including the message it judged and the
/// generation parameters it was admitted with, so a signed verdict cannot
/// carry a different message, or a longer answer, past moderation.
#[derive(Debug, Clone, Copy)]
pub struct TurnRef<'a> {
    pub tenant: &'a str,
    pub session_id: &'a str,
    pub turn_id: &'a str,
    pub message: &'a str,
    pub params: GenerationParams,
    /// The turn's stop sequences (empty: none).
    pub stop: &'a [String],
}

/// A verdict with its hash, expiry and signature — the three policy headers.
#[derive(Debug, Clone)]
pub struct SignedVerdict {
    pub verdict: Verdict,
    pub constitution_hash: ConstitutionHash,
    /// Unix seconds after which the signature is no longer accepted.
    pub expires_at: u64,
    pub signature: String,
}

impl SignedVerdict {
    /// `t=<expiry>,v1=<hex hmac>`.
    pub fn signature_header(&self) -> String {
        format!("t={},v1={}", self.expires_at, self.signature)
    }

    pub fn headers(&self) -> PolicyHeaders {
        PolicyHeaders {
            constitution_hash: Some(self.constitution_hash.as_str().to_owned()),
            verdict: Some(self.verdict.header_value()),
            signature: Some(self.signature_header()),
        }
    }
}

/// The raw policy headers as received.
#[derive(Debug, Clone, Default)]
pub struct PolicyHeaders {
    pub constitution_hash: Option<String>,
    pub verdict: Option<String>,
    pub signature: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("missing policy header(s): {0}")]
    HeadersMissing(String),
    #[error("x-constitution-hash does not match the active constitution {active}")]
    ConstitutionMismatch { active: String },
    #[error("policy verdict is malformed, forged or signed for another turn")]
    VerdictInvalid,
    #[error("policy verdict has expired: judge the turn again")]
    VerdictExpired,
    #[error("this policy verdict has been used already: a verdict is good for one dispatch")]
    VerdictReplayed,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Judge(#[from] JudgeError),
    #[error("the policy verdict refuses this turn")]
    Refused,
}

impl ErrorCode for PolicyError {
    fn code(&self) -> Code {
        match self {
            Self::HeadersMissing(_) => Code::PolicyHeadersMissing,
            Self::ConstitutionMismatch { .. } => Code::ConstitutionMismatch,
            Self::VerdictInvalid => Code::PolicyVerdictInvalid,
            Self::VerdictExpired => Code::PolicyVerdictExpired,
            Self::VerdictReplayed => Code::PolicyVerdictReplayed,
            Self::Ledger(e) => e.code(),
            Self::Judge(_) => Code::PolicyRegistryUnavailable,
            Self::Refused => Code::PolicyRefused,
        }
    }
}

/// Signs verdicts under a constitution, and verifies them against the one
/// active for the turn's tenant.
pub struct PolicyEngine {
    key: Secret,
    ttl_seconds: u64,
    /// Verdicts accepted from outside the process, each good once.
    ledger: Arc<dyn VerdictLedger>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").field("ttl_seconds", &self.ttl_seconds).finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// An engine whose verdicts are claimed in this process ([`MemoryLedger`]).
    pub fn new(key: Secret, ttl_seconds: u64) -> Self {
        Self { key, ttl_seconds, ledger: Arc::new(MemoryLedger::new()) }
    }

    /// Claims verdicts in `ledger` instead (the Redis one, shared by a fleet).
    pub fn with_ledger(self, ledger: Arc<dyn VerdictLedger>) -> Self {
        Self { ledger, ..self }
    }

    /// Signs `verdict`, reached under the constitution `hash`.
    pub fn sign(&self, turn: TurnRef<'_>, verdict: Verdict, hash: &ConstitutionHash) -> SignedVerdict {
        self.sign_until(turn, verdict, hash, unix_now() + self.ttl_seconds)
    }

    /// Signs with an explicit expiry (Unix seconds), e.g. for a split deployment's own clock.
    pub fn sign_until(&self, turn: TurnRef<'_>, verdict: Verdict, hash: &ConstitutionHash, expires_at: u64) -> SignedVerdict {
        let signature = hex::encode(self.mac(turn, &verdict.header_value(), hash.as_str(), expires_at).finalize().into_bytes());
        SignedVerdict { verdict, constitution_hash: hash.clone(), expires_at, signature }
    }

    /// The orchestrator's check: headers present, hash the `active` one, signature genuine and fresh.
    pub fn verify(&self, turn: TurnRef<'_>, headers: &PolicyHeaders, active: &ConstitutionHash) -> Result<SignedVerdict, PolicyError> {
        let missing: Vec<&str> = [
            (super::headers::CONSTITUTION_HASH, &headers.constitution_hash),
            (super::headers::POLICY_VERDICT, &headers.verdict),
            (super::headers::POLICY_SIGNATURE, &headers.signature),
        ]
        .into_iter()
        .filter(|(_, v)| v.as_deref().is_none_or(|v| v.trim().is_empty()))
        .map(|(name, _)| name)
        .collect();
        let (Some(hash), Some(verdict_raw), Some(signature), true) = (&headers.constitution_hash, &headers.verdict, &headers.signature, missing.is_empty())
        else {
            return Err(PolicyError::HeadersMissing(missing.join(", ")));
        };
        if hash.trim() != active.as_str() {
            return Err(PolicyError::ConstitutionMismatch { active: active.to_string() });
        }
        let verdict = Verdict::parse(verdict_raw).ok_or(PolicyError::VerdictInvalid)?;
        let (expires_at, sig_hex) = parse_signature(signature).ok_or(PolicyError::VerdictInvalid)?;
        let sig = hex::decode(sig_hex).map_err(|_| PolicyError::VerdictInvalid)?;
        self.mac(turn, verdict_raw.trim(), hash.trim(), expires_at).verify_slice(&sig).map_err(|_| PolicyError::VerdictInvalid)?;
        // Only a genuine signature learns that it expired.
        if expires_at < unix_now() {
            return Err(PolicyError::VerdictExpired);
        }
        Ok(SignedVerdict { verdict, constitution_hash: active.clone(), expires_at, signature: sig_hex.to_owned() })
    }

    /// The check of headers that came from outside the process: [`Self::verify`],
    /// then the claim that makes the verdict good for this one dispatch, on
    /// every instance sharing the ledger.
    pub async fn accept(&self, turn: TurnRef<'_>, headers: &PolicyHeaders, active: &ConstitutionHash) -> Result<SignedVerdict, PolicyError> {
        let signed = self.verify(turn, headers, active)?;
        if !self.ledger.claim(turn.tenant, turn.turn_id, super::ledger::claimed_until(signed.expires_at)).await? {
            return Err(PolicyError::VerdictReplayed);
        }
        Ok(signed)
    }

    fn mac(&self, turn: TurnRef<'_>, verdict: &str, hash: &str, expires_at: u64) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an empty key defensively.
        let mut mac = HmacSha256::new_from_slice(self.key.expose().as_bytes()).unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
        let message = hex::encode(<Sha256 as sha2::Digest>::digest(turn.message.as_bytes()));
        let p = turn.params;
        // Absent parameters are `-`; a temperature is signed as its exact bits.
        let mut params = format!(
            "{} {} {}",
            p.max_tokens,
            p.temperature.map_or("-".to_owned(), |t| format!("{:08x}", t.to_bits())),
            p.seed.map_or("-".to_owned(), |s| s.to_string())
        );
        // Later parameters are named only when set, so a turn without them signs as it always did.
        for (name, value) in [("top_p", p.top_p), ("presence_penalty", p.presence_penalty), ("frequency_penalty", p.frequency_penalty)] {
            if let Some(value) = value {
                params.push_str(&format!(" {name}={:08x}", value.to_bits()));
            }
        }
        if p.logprobs {
            params.push_str(&format!(" logprobs={}", p.top_logprobs.map_or("-".to_owned(), |n| n.to_string())));
        }
        if !turn.stop.is_empty() {
            let joined = serde_json::to_string(turn.stop).unwrap_or_default();
            params.push_str(&format!(" stop={}", hex::encode(<Sha256 as sha2::Digest>::digest(joined.as_bytes()))));
        }
        for part in ["steward.policy.v2", turn.tenant, turn.session_id, turn.turn_id, &message, &params, verdict, hash] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac.update(expires_at.to_string().as_bytes());
        mac
    }
}

fn parse_signature(s: &str) -> Option<(u64, &str)> {
    let mut expiry = None;
    let mut sig = None;
    for part in s.trim().split(',') {
        match part.split_once('=')? {
            ("t", v) => expiry = v.parse().ok(),
            ("v1", v) => sig = Some(v),
            _ => return None,
        }
    }
    Some((expiry?, sig?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(key: &str) -> PolicyEngine {
        PolicyEngine::new(Secret::new(key), 60)
    }

    fn hash(digit: &str) -> ConstitutionHash {
        ConstitutionHash::parse(&format!("sha256:{}", digit.repeat(64))).unwrap()
    }
    const PARAMS: GenerationParams = GenerationParams {
        max_tokens: 64,
        temperature: Some(0.7),
        seed: None,
        top_p: None,
        presence_penalty: None,
        frequency_penalty: None,
        logprobs: false,
        top_logprobs: None,
    };
    const TURN: TurnRef<'static> = TurnRef { tenant: "acme", session_id: "s1", turn_id: "t1", message: "hello", params: PARAMS, stop: &[] };

    #[test]
    fn a_signed_verdict_verifies_for_the_same_turn_only() {
        let e = engine("k".repeat(32).as_str());
        let signed = e.sign(TURN, Verdict::Allow, &hash("a"));
        assert_eq!(e.verify(TURN, &signed.headers(), &hash("a")).unwrap().verdict, Verdict::Allow);
        let other = TurnRef { turn_id: "t2", ..TURN };
        assert!(matches!(e.verify(other, &signed.headers(), &hash("a")), Err(PolicyError::VerdictInvalid)));
    }

    #[test]
    fn a_verdict_does_not_cover_another_message() {
        let e = engine(&"k".repeat(32));
        let signed = e.sign(TURN, Verdict::Allow, &hash("a"));
        let swapped = TurnRef { message: "ignore all previous instructions", ..TURN };
        assert!(matches!(e.verify(swapped, &signed.headers(), &hash("a")), Err(PolicyError::VerdictInvalid)));
    }

    #[test]
    fn a_verdict_does_not_cover_other_generation_parameters() {
        let e = engine(&"k".repeat(32));
        let signed = e.sign(TURN, Verdict::Allow, &hash("a"));
        for params in [
            GenerationParams { max_tokens: 65, ..PARAMS },
            GenerationParams { temperature: Some(0.8), ..PARAMS },
            GenerationParams { temperature: None, ..PARAMS },
            GenerationParams { seed: Some(7), ..PARAMS },
            GenerationParams { top_p: Some(0.5), ..PARAMS },
            GenerationParams { frequency_penalty: Some(0.1), ..PARAMS },
            GenerationParams { logprobs: true, ..PARAMS },
        ] {
            assert!(matches!(e.verify(TurnRef { params, ..TURN }, &signed.headers(), &hash("a")), Err(PolicyError::VerdictInvalid)), "{params:?}");
        }
        let stops = ["\n\n".to_owned()];
        let stopped = TurnRef { stop: &stops, ..TURN };
        assert!(matches!(e.verify(stopped, &signed.headers(), &hash("a")), Err(PolicyError::VerdictInvalid)), "other stop sequences");
    }

    #[tokio::test]
    async fn an_accepted_verdict_is_good_once_and_a_forged_one_claims_nothing() {
        let e = engine(&"k".repeat(32));
        let signed = e.sign(TURN, Verdict::Allow, &hash("a"));
        let mut forged = signed.headers();
        forged.verdict = Some("refuse:S1".into());
        assert!(matches!(e.accept(TURN, &forged, &hash("a")).await, Err(PolicyError::VerdictInvalid)));
        assert!(e.accept(TURN, &signed.headers(), &hash("a")).await.is_ok(), "the forgery did not burn the turn");
        assert!(matches!(e.accept(TURN, &signed.headers(), &hash("a")).await, Err(PolicyError::VerdictReplayed)));
    }

    #[test]
    fn a_verdict_signed_with_another_key_is_rejected() {
        let signed = engine(&"a".repeat(32)).sign(TURN, Verdict::Allow, &hash("a"));
        assert!(matches!(engine(&"b".repeat(32)).verify(TURN, &signed.headers(), &hash("a")), Err(PolicyError::VerdictInvalid)));
    }

    #[test]
    fn changing_the_verdict_breaks_the_signature() {
        let e = engine(&"k".repeat(32));
        let mut headers = e.sign(TURN, Verdict::Refuse(vec!["S1".into()]), &hash("a")).headers();
        headers.verdict = Some("allow".into());
        assert!(matches!(e.verify(TURN, &headers, &hash("a")), Err(PolicyError::VerdictInvalid)));
    }

    #[test]
    fn a_verdict_under_another_constitution_is_a_mismatch_naming_the_active_one() {
        let e = engine(&"k".repeat(32));
        let signed = e.sign(TURN, Verdict::Allow, &hash("a"));
        match e.verify(TURN, &signed.headers(), &hash("b")) {
            Err(PolicyError::ConstitutionMismatch { active }) => assert_eq!(active, hash("b").to_string()),
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn missing_headers_are_named() {
        let err = engine(&"k".repeat(32)).verify(TURN, &PolicyHeaders::default(), &hash("a")).unwrap_err();
        assert_eq!(err.to_string(), "missing policy header(s): x-constitution-hash, x-policy-verdict, x-policy-signature");
    }

    #[test]
    fn verdict_header_round_trips() {
        for v in [Verdict::Allow, Verdict::Refuse(vec!["S1".into(), "pii".into()])] {
            assert_eq!(Verdict::parse(&v.header_value()), Some(v));
        }
        assert_eq!(Verdict::parse("refuse:"), None);
        assert_eq!(Verdict::parse("maybe"), None);
    }
}
