//! JWT verification: the request's headers → a [`Principal`] with scopes, or GitLab's 401s.

use super::{AuthError, JwksCache};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The audience every accepted token must contain.
pub const AUDIENCE: &str = "gitlab-ai-gateway";

/// Clock skew tolerated on `exp` and `nbf`, seconds.
pub const LEEWAY_SECS: u64 = 30;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `sub` claim.
    pub subject: Option<String>,
    /// Granted scopes (unit primitives).
    pub scopes: Vec<String>,
    /// `gitlab_realm` claim.
    pub realm: Option<String>,
    /// `gitlab_instance_id` claim.
    pub instance_id: Option<String>,
    /// Signed by this gateway (`/v1/code/user_access_token`), not by the GitLab instance.
    pub gateway_issued: bool,
    /// Authentication is bypassed (`AIGW_AUTH__BYPASS_EXTERNAL`): every scope is granted.
    pub unrestricted: bool,
}

impl Principal {
    /// The caller when authentication is bypassed: no identity, every scope.
    pub fn unrestricted() -> Self {
        Principal {
            subject: None,
            scopes: Vec::new(),
            realm: None,
            instance_id: None,
            gateway_issued: false,
            unrestricted: true,
        }
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.unrestricted || self.scopes.iter().any(|s| s == scope)
    }

    /// Whether any of `scopes` was granted.
    pub fn has_any_scope(&self, scopes: &[impl AsRef<str>]) -> bool {
        scopes.iter().any(|scope| self.has_scope(scope.as_ref()))
    }

    /// Succeeds when any of `accepted` was granted; else 403 naming `feature`.
    pub fn require_any(&self, accepted: &[&str], feature: &'static str) -> Result<(), AuthError> {
        if self.has_any_scope(accepted) { Ok(()) } else { Err(AuthError::MissingScope(feature)) }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Claims {
    exp: u64,
    nbf: u64,
    sub: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    gitlab_realm: Option<String>,
    gitlab_instance_id: Option<serde_json::Value>,
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
}

/// Verifies bearer tokens against the trusted issuers.
pub struct Verifier {
    issuers: Vec<TrustedIssuer>,
    verified: std::sync::Mutex<HashMap<String, Verified>>,
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
        Verifier { issuers: Vec::new(), verified: std::sync::Mutex::new(HashMap::new()) }
    }

    /// Trust tokens with `iss` = the instance URL, signed by a key the instance publishes.
    pub fn trust_instance(mut self, gitlab_url: &str, jwks: Arc<JwksCache>) -> Self {
        self.issuers.push(TrustedIssuer {
            issuer: gitlab_url.to_string(),
            keys: KeySource::Instance(jwks),
            gateway: false,
        });
        self
    }

    /// Trust tokens with `iss` = `issuer`, signed by `key` (kid `kid`).
    pub fn trust_local_key(mut self, issuer: &str, kid: &str, key: DecodingKey) -> Self {
        let keys = HashMap::from([(kid.to_string(), key)]);
        self.issuers.push(TrustedIssuer { issuer: issuer.to_string(), keys: KeySource::Local(keys), gateway: false });
        self
    }

    /// Trust this gateway's own tokens (issuer and audience `gitlab-ai-gateway`) signed by any of
    /// `keys` (the signing key, and the validation key kept through a rotation).
    pub fn trust_gateway_keys(mut self, keys: &[&super::SigningKey]) -> Self {
        let keys = keys.iter().map(|k| (k.kid().to_string(), k.decoding_key().clone())).collect();
        self.issuers.push(TrustedIssuer { issuer: AUDIENCE.to_string(), keys: KeySource::Local(keys), gateway: true });
        self
    }

    /// True once some key can verify tokens: a local key, or the instance's keys fetched once.
    pub fn has_keys(&self) -> bool {
        self.issuers.iter().any(|issuer| match &issuer.keys {
            KeySource::Local(keys) => !keys.is_empty(),
            KeySource::Instance(jwks) => jwks.has_loaded(),
        })
    }

    /// Authenticate a request from its headers, in GitLab's order of checks.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        let authorization = headers.get(http::header::AUTHORIZATION).ok_or(AuthError::MissingHeader)?;
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
        let instance_claim = claims.gitlab_instance_id.as_ref().map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        check_header(headers, "x-gitlab-instance-id", INSTANCE_HEADER, instance_claim.as_deref())?;
        // Instance tokens carry the instance's id as `sub`; the gateway's own carry the user's.
        if gateway_issued {
            check_header(headers, "x-gitlab-global-user-id", USER_HEADER, claims.sub.as_deref())?;
        } else {
            check_header(headers, "x-gitlab-instance-id", INSTANCE_HEADER, claims.sub.as_deref())?;
        }
        Ok(Principal {
            subject: claims.sub,
            scopes: claims.scopes,
            realm: claims.gitlab_realm,
            instance_id: instance_claim,
            gateway_issued,
            unrestricted: false,
        })
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
        // The algorithm is fixed here, never taken from the token.
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::forbidden(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| AuthError::forbidden("token has no kid"))?;
        for issuer in &self.issuers {
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
            return jsonwebtoken::decode::<Claims>(token, key.as_ref(), &validation)
                .map(|data| (data.claims, issuer.gateway))
                .map_err(AuthError::forbidden);
        }
        Err(AuthError::forbidden(format!("no trusted key with kid {kid:?}")))
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
