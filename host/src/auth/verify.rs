//! JWT verification: the request's headers → a [`Principal`] with scopes, or GitLab's 401s.

use super::{AuthError, JwksCache};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The audience every accepted token must contain.
pub(crate) const AUDIENCE: &str = "gitlab-ai-gateway";

/// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds.
pub(crate) const LEEWAY_SECS: u64 = 30;

/// Longest lifetime (`exp` − `iat`) of an accepted token by default,
/// seconds: GitLab's tokens live one hour and `serve --dev`'s 24 hours, so this refuses only
/// tokens minted to outlive any rotation.
pub(crate) const DEFAULT_MAX_TOKEN_LIFETIME_SECS: u64 = 48 * 3600;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Granted scopes (unit primitives).
    pub(crate) scopes: Vec<String>,
    /// `gitlab_realm` claim: the realm of record, whatever `X-Gitlab-Realm` says (the header
    /// must agree with it, and is never read on its own).
    pub(crate) realm: Option<String>,
    /// `gitlab_root_namespace_id` claim, when the token carries one: taken from the token, never
    /// from a header, as GitLab's gateway takes it.
    pub(crate) root_namespace_id: Option<String>,
    /// Signed by this gateway (`/v1/code/user_access_token`), not by the GitLab instance.
    pub(crate) gateway_issued: bool,
    /// Authentication is bypassed (`AIGW_AUTH__BYPASS_EXTERNAL`): every scope is granted.
    pub(crate) unrestricted: bool,
}

impl Principal {
    /// The caller when authentication is bypassed: no identity, every scope.
    pub(crate) fn unrestricted() -> Self {
        Principal {
            scopes: Vec::new(),
            realm: None,
            root_namespace_id: None,
            gateway_issued: false,
            unrestricted: true,
        }
    }

    /// Whether `scope` was granted.
    pub(crate) fn has_scope(&self, scope: &str) -> bool {
        self.unrestricted || self.scopes.iter().any(|s| s == scope)
    }

    /// Whether the caller holds any of `scopes`, and, with `instance_tokens_only`, is not a token
    /// this gateway issued. Every scope gate asks this, or [`Principal::require`].
    pub(crate) fn permits(&self, scopes: &[impl AsRef<str>], instance_tokens_only: bool) -> bool {
        scopes.iter().any(|scope| self.has_scope(scope.as_ref())) && !(instance_tokens_only && self.gateway_issued)
    }

    /// Succeeds when the caller meets `requirement`; else 403 naming its feature.
    pub(crate) fn require(&self, requirement: &super::scopes::Requirement) -> Result<(), AuthError> {
        if self.permits(&requirement.any_of, requirement.instance_tokens_only) {
            Ok(())
        } else {
            Err(AuthError::MissingScope(requirement.feature))
        }
    }
}

/// The claims aigw reads. `scopes` has no default: a token without a list of scopes is not an
/// AI-gateway token, whatever else it carries. `iat` has none either: GitLab's AI-gateway tokens
/// always carry it, and without it a token's lifetime could not be bounded.
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    exp: u64,
    nbf: u64,
    iat: u64,
    sub: Option<String>,
    scopes: Vec<String>,
    gitlab_realm: Option<String>,
    gitlab_instance_id: Option<serde_json::Value>,
    /// A number or a string, as the instance writes it.
    gitlab_root_namespace_id: Option<serde_json::Value>,
}

/// A token's claims as decoded: the ones aigw reads, and the names of all the others.
#[derive(Deserialize)]
struct DecodedClaims {
    #[serde(flatten)]
    claims: Claims,
    #[serde(flatten)]
    others: HashMap<String, serde::de::IgnoredAny>,
}

/// Claims that only GitLab CI job tokens (`id_tokens`) carry. The instance signs those with a
/// key published in the same key set as the one that signs its AI-gateway tokens, and a job's
/// author chooses their `aud`, so a signature and an audience alone do not make a token ours.
const CI_JOB_CLAIMS: [&str; 21] = [
    "namespace_id",
    "namespace_path",
    "project_id",
    "project_path",
    "project_visibility",
    "pipeline_id",
    "pipeline_source",
    "job_id",
    "ref",
    "ref_type",
    "ref_path",
    "ref_protected",
    "runner_id",
    "runner_environment",
    "sha",
    "ci_config_ref_uri",
    "ci_config_sha",
    "environment",
    "environment_protected",
    "environment_action",
    "deployment_tier",
];

/// How a CI job token's `sub` starts (`project_path:grp/proj:ref_type:branch:ref:main`).
const CI_JOB_SUBJECT_PREFIX: &str = "project_path:";

impl DecodedClaims {
    /// Refuse what is not shaped as an AI-gateway token: any CI job claim, a CI subject, or
    /// (for the instance's tokens, which always carry it) no realm.
    fn into_gateway_claims(self, require_realm: bool) -> Result<Claims, AuthError> {
        if let Some(claim) = CI_JOB_CLAIMS.iter().find(|claim| self.others.contains_key(**claim)) {
            return Err(AuthError::forbidden(format!("a CI job token (claim {claim:?}) is not an AI-gateway token")));
        }
        if self.claims.sub.as_deref().is_some_and(|sub| sub.starts_with(CI_JOB_SUBJECT_PREFIX)) {
            return Err(AuthError::forbidden("a CI job token (sub \"project_path:…\") is not an AI-gateway token"));
        }
        if require_realm && self.claims.gitlab_realm.as_deref().is_none_or(|realm| realm.trim().is_empty()) {
            return Err(AuthError::forbidden("the token has no gitlab_realm claim, so it is not an AI-gateway token"));
        }
        Ok(self.claims)
    }
}

impl Claims {
    /// The time rules the JWT library leaves to its caller: not issued in the future, and not
    /// minted to live longer than `max_lifetime_secs`.
    fn check_issue_time(&self, now: u64, max_lifetime_secs: u64) -> Result<(), AuthError> {
        if self.iat > now + LEEWAY_SECS {
            return Err(AuthError::forbidden("the token was issued in the future (iat)"));
        }
        let lifetime = self.exp.saturating_sub(self.iat);
        if lifetime > max_lifetime_secs {
            return Err(AuthError::forbidden(format!(
                "the token lives {lifetime} s, longer than AIGW_AUTH__MAX_TOKEN_LIFETIME_SECS ({max_lifetime_secs} s)"
            )));
        }
        Ok(())
    }
}

/// Where an issuer's keys come from.
enum KeySource {
    /// The GitLab instance's published key set.
    Instance(Arc<JwksCache>),
    /// Keys held locally (development key).
    Local(HashMap<String, DecodingKey>),
}

struct TrustedIssuer {
    issuer: String,
    keys: KeySource,
    /// Tokens this gateway minted for IDE direct access: `sub` is the user, not the instance.
    gateway: bool,
    /// The issuer's AI-gateway tokens always name their realm (the instance's do; the
    /// development key's do not, so that a newcomer's curl needs no realm header).
    require_realm: bool,
    /// Key ids accepted from this issuer (`AIGW_AUTH__ALLOWED_KIDS`); `None`: any it publishes.
    allowed_kids: Option<Vec<String>>,
}

/// Verifies bearer tokens against the trusted issuers.
pub struct Verifier {
    issuers: Vec<TrustedIssuer>,
    verified: std::sync::Mutex<HashMap<String, Verified>>,
    max_lifetime_secs: u64,
}

/// A token whose signature and claims were verified: GitLab sends the same token for up to an
/// hour, and an RSA verification costs far more than the rest of a request, so each token is
/// verified once. Time claims are re-checked on every use; a change of the instance's key set
/// empties the cache.
#[derive(Clone)]
struct Verified {
    claims: Claims,
    gateway: bool,
    key_generation: u64,
}

/// Verified tokens kept at most; past it the cache starts over.
const VERIFIED_CACHE_ENTRIES: usize = 4096;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.issuers.iter().map(|i| i.issuer.as_str()).collect();
        f.debug_struct("Verifier").field("issuers", &names).finish()
    }
}

/// Header names of the cross-checks, as GitLab spells them in its messages.
const REALM_HEADER: &str = "X-Gitlab-Realm";
const INSTANCE_HEADER: &str = "X-Gitlab-Instance-Id";
const USER_HEADER: &str = "X-Gitlab-Global-User-Id";

impl Verifier {
    /// A verifier trusting nobody yet.
    pub fn new() -> Self {
        Verifier {
            issuers: Vec::new(),
            verified: std::sync::Mutex::new(HashMap::new()),
            max_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME_SECS,
        }
    }

    /// Refuse tokens whose lifetime exceeds `max` (`AIGW_AUTH__MAX_TOKEN_LIFETIME_SECS`).
    pub(crate) fn max_token_lifetime(mut self, max: std::time::Duration) -> Self {
        self.max_lifetime_secs = max.as_secs();
        self
    }

    /// Trust tokens with `iss` = the instance URL, signed by a key the instance publishes; when
    /// `allowed_kids` is given, only by a key with one of those ids.
    pub(crate) fn trust_instance(
        mut self,
        gitlab_url: &str,
        jwks: Arc<JwksCache>,
        allowed_kids: Option<Vec<String>>,
    ) -> Self {
        self.issuers.push(TrustedIssuer {
            issuer: gitlab_url.to_string(),
            keys: KeySource::Instance(jwks),
            gateway: false,
            require_realm: true,
            allowed_kids,
        });
        self
    }

    /// Trust tokens with `iss` = `issuer`, signed by `key` (kid `kid`).
    pub fn trust_local_key(mut self, issuer: &str, kid: &str, key: DecodingKey) -> Self {
        let keys = HashMap::from([(kid.to_string(), key)]);
        self.issuers.push(TrustedIssuer {
            issuer: issuer.to_string(),
            keys: KeySource::Local(keys),
            gateway: false,
            require_realm: false,
            allowed_kids: None,
        });
        self
    }

    /// Trust this gateway's own tokens (issuer and audience `gitlab-ai-gateway`) signed by any of
    /// `keys` (the signing key, and the validation key kept through a rotation). Their realm is
    /// copied from the instance token that asked for them, so it is not required here.
    pub(crate) fn trust_gateway_keys(mut self, keys: &[&super::SigningKey]) -> Self {
        let keys = keys.iter().map(|k| (k.kid().to_string(), k.decoding_key().clone())).collect();
        self.issuers.push(TrustedIssuer {
            issuer: AUDIENCE.to_string(),
            keys: KeySource::Local(keys),
            gateway: true,
            require_realm: false,
            allowed_kids: None,
        });
        self
    }

    /// True once some key can verify tokens: a local key, or the instance's keys fetched once.
    pub(crate) fn has_keys(&self) -> bool {
        self.issuers.iter().any(|issuer| match &issuer.keys {
            KeySource::Local(keys) => !keys.is_empty(),
            KeySource::Instance(jwks) => jwks.has_loaded(),
        })
    }

    /// Authenticate a request from its headers, in GitLab's order of checks.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        let mut authorizations = headers.get_all(http::header::AUTHORIZATION).iter();
        let authorization = authorizations.next().ok_or(AuthError::MissingHeader)?;
        // Two credentials leave it to each hop to pick one; none is picked here.
        if authorizations.next().is_some() {
            return Err(AuthError::InvalidHeader);
        }
        let token = authorization
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::InvalidHeader)?;
        if header_str(headers, "x-gitlab-authentication-type") != Some("oidc") {
            return Err(AuthError::WrongAuthenticationType);
        }
        let (claims, gateway_issued) = self.verify_token(token).await?;
        check_header(headers, "x-gitlab-realm", REALM_HEADER, claims.gitlab_realm.as_deref())?;
        let instance_claim = claims.gitlab_instance_id.as_ref().map(claim_text);
        check_header(headers, "x-gitlab-instance-id", INSTANCE_HEADER, instance_claim.as_deref())?;
        // Instance tokens carry the instance's id as `sub`; the gateway's own carry the user's.
        if gateway_issued {
            check_header(headers, "x-gitlab-global-user-id", USER_HEADER, claims.sub.as_deref())?;
        } else {
            check_header(headers, "x-gitlab-instance-id", INSTANCE_HEADER, claims.sub.as_deref())?;
        }
        let root_namespace_id = claims.gitlab_root_namespace_id.as_ref().map(claim_text);
        Ok(Principal {
            scopes: claims.scopes,
            realm: claims.gitlab_realm,
            root_namespace_id,
            gateway_issued,
            unrestricted: false,
        })
    }

    /// Verify a token on its own, without the headers a request carries with it (what
    /// `aigw doctor --token` checks): its scopes and when it expires.
    pub(crate) async fn verify_token_only(&self, token: &str) -> Result<(Vec<String>, u64), AuthError> {
        let (claims, _) = self.verify_signature_and_claims(token.trim()).await?;
        Ok((claims.scopes, claims.exp))
    }

    /// Sum of the instance key sets' generations: changes whenever a key set changes.
    fn key_generation(&self) -> u64 {
        self.issuers
            .iter()
            .map(|issuer| match &issuer.keys {
                KeySource::Instance(jwks) => jwks.generation(),
                KeySource::Local(_) => 0,
            })
            .sum()
    }

    async fn verify_token(&self, token: &str) -> Result<(Claims, bool), AuthError> {
        let generation = self.key_generation();
        let now = jsonwebtoken::get_current_timestamp();
        let cached = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(token).cloned();
        if let Some(hit) = cached.filter(|hit| hit.key_generation == generation) {
            if now <= hit.claims.exp + LEEWAY_SECS && now + LEEWAY_SECS >= hit.claims.nbf {
                return Ok((hit.claims, hit.gateway));
            }
            return Err(AuthError::forbidden("token expired or not yet valid"));
        }
        let (claims, gateway) = self.verify_signature_and_claims(token).await?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_CACHE_ENTRIES {
            verified.clear();
        }
        verified.insert(
            token.to_string(),
            Verified { claims: claims.clone(), gateway, key_generation: self.key_generation() },
        );
        Ok((claims, gateway))
    }

    async fn verify_signature_and_claims(&self, token: &str) -> Result<(Claims, bool), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(AuthError::forbidden)?;
        // RFC 7515 §4.1.11: extensions named critical must be understood or the token refused;
        // aigw implements none.
        if let Some(critical) = &header.crit {
            return Err(AuthError::forbidden(format!("critical header parameters {critical:?} are not understood")));
        }
        // The algorithm is fixed here, never taken from the token.
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::forbidden(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| AuthError::forbidden("token has no kid"))?;
        let mut pinned_out = false;
        for issuer in &self.issuers {
            // Checked before the key set is consulted, so a pinned deployment never refreshes
            // the instance's keys for a kid it would refuse anyway.
            if issuer.allowed_kids.as_ref().is_some_and(|allowed| !allowed.contains(&kid)) {
                pinned_out = true;
                continue;
            }
            let key = match &issuer.keys {
                KeySource::Local(keys) => keys.get(&kid).map(KeyRef::Borrowed),
                KeySource::Instance(jwks) => jwks.key(&kid).await.map(KeyRef::Shared),
            };
            let Some(key) = key else { continue };
            let mut validation = Validation::new(Algorithm::RS256);
            validation.set_audience(&[AUDIENCE]);
            validation.set_issuer(&[&issuer.issuer]);
            validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss"]);
            validation.validate_nbf = true;
            validation.leeway = LEEWAY_SECS;
            let decoded = jsonwebtoken::decode::<DecodedClaims>(token, key.as_ref(), &validation)
                .map_err(AuthError::forbidden)?;
            let claims = decoded.claims.into_gateway_claims(issuer.require_realm)?;
            claims.check_issue_time(jsonwebtoken::get_current_timestamp(), self.max_lifetime_secs)?;
            return Ok((claims, issuer.gateway));
        }
        Err(AuthError::forbidden(if pinned_out {
            format!("kid {kid:?} is not in AIGW_AUTH__ALLOWED_KIDS")
        } else {
            format!("no trusted key with kid {kid:?}")
        }))
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

enum KeyRef<'a> {
    Borrowed(&'a DecodingKey),
    Shared(Arc<DecodingKey>),
}

impl AsRef<DecodingKey> for KeyRef<'_> {
    fn as_ref(&self) -> &DecodingKey {
        match self {
            KeyRef::Borrowed(key) => key,
            KeyRef::Shared(key) => key,
        }
    }
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// When the claim is present, the header must carry the same value.
/// A claim that may be a string or a number, as text.
fn claim_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn check_header(
    headers: &http::HeaderMap,
    name: &str,
    display: &'static str,
    claim: Option<&str>,
) -> Result<(), AuthError> {
    match claim {
        Some(expected) if header_str(headers, name) != Some(expected) => Err(AuthError::HeaderMismatch(display)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shaped(claims: serde_json::Value, require_realm: bool) -> Result<Claims, String> {
        let decoded: DecodedClaims = serde_json::from_value(claims).map_err(|e| e.to_string())?;
        decoded.into_gateway_claims(require_realm).map_err(|e| match e {
            AuthError::Forbidden { reason } => reason,
            other => panic!("not a Forbidden: {other:?}"),
        })
    }

    fn gateway_claims() -> serde_json::Value {
        json!({"exp": 2, "nbf": 1, "iat": 1, "iss": "https://gitlab", "sub": "uuid", "gitlab_realm": "self-managed",
               "scopes": ["complete_code"]})
    }

    #[test]
    fn refusals_say_why_for_the_log() {
        assert!(shaped(gateway_claims(), true).is_ok());
        let mut ci = gateway_claims();
        ci["job_id"] = json!("5005");
        assert!(shaped(ci, true).unwrap_err().contains("\"job_id\""));
        let mut subject = gateway_claims();
        subject["sub"] = json!("project_path:g/p:ref_type:branch:ref:main");
        assert!(shaped(subject, true).unwrap_err().contains("project_path:"));
        let mut no_realm = gateway_claims();
        no_realm.as_object_mut().map(|c| c.remove("gitlab_realm"));
        assert!(shaped(no_realm.clone(), true).unwrap_err().contains("gitlab_realm"));
        assert!(shaped(no_realm, false).is_ok(), "the development key's tokens name no realm");
        let mut no_scopes = gateway_claims();
        no_scopes.as_object_mut().map(|c| c.remove("scopes"));
        assert!(shaped(no_scopes, true).unwrap_err().contains("scopes"));
        let mut no_issue_time = gateway_claims();
        no_issue_time.as_object_mut().map(|c| c.remove("iat"));
        assert!(shaped(no_issue_time, true).unwrap_err().contains("iat"));
    }

    fn timed(iat: u64, nbf: u64, exp: u64) -> Claims {
        Claims {
            exp,
            nbf,
            iat,
            sub: None,
            scopes: Vec::new(),
            gitlab_realm: None,
            gitlab_instance_id: None,
            gitlab_root_namespace_id: None,
        }
    }

    #[test]
    fn issue_time_and_lifetime_have_limits_on_both_sides() {
        let now = 1_000_000;
        let max = 7200;
        assert!(timed(now + LEEWAY_SECS, now, now + 3600).check_issue_time(now, max).is_ok());
        assert!(timed(now + LEEWAY_SECS + 1, now, now + 3600).check_issue_time(now, max).is_err());
        assert!(timed(now, now, now + max).check_issue_time(now, max).is_ok());
        assert!(timed(now, now, now + max + 1).check_issue_time(now, max).is_err());
        // The lifetime counts from iat, however late nbf is.
        assert!(timed(now - 10, now + 600, now + max - 10).check_issue_time(now, max).is_ok());
        assert!(timed(now - 10, now + 600, now + max - 9).check_issue_time(now, max).is_err());
    }
}
