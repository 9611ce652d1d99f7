//! Caller authentication as GitLab's gateway does it: instance-issued RS256 JWTs verified against
//! the instance's published keys, header cross-checks, and scope gating.

pub(crate) mod jwks;
pub mod keys;
pub(crate) mod scopes;
pub(crate) mod verify;

pub use jwks::JwksCache;
pub use keys::SigningKey;
pub use verify::{Principal, Verifier};

/// Why a caller was refused. The 401 messages are GitLab's, byte for byte; the internal reason
/// of a `Forbidden` is logged, never returned.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("No authorization header presented")]
    MissingHeader,
    /// `Authorization` is not `Bearer <token>`.
    #[error("Invalid authorization header")]
    InvalidHeader,
    /// `X-Gitlab-Authentication-Type` is not `oidc`.
    #[error("Invalid authentication token type - only OIDC is supported")]
    WrongAuthenticationType,
    /// Bad signature, expired, not yet valid, wrong audience or issuer, unknown key, wrong algorithm.
    #[error("Forbidden by auth provider")]
    Forbidden {
        /// Why, for the log.
        reason: String,
    },
    /// A claim disagrees with the header that must carry the same value.
    #[error("Header mismatch '{0}'")]
    HeaderMismatch(&'static str),
    /// Valid token without the scope the endpoint needs (403).
    #[error("Unauthorized to access {0}")]
    MissingScope(&'static str),
    /// Valid token without the `include_<category>_context` scope for context it sent (403).
    #[error("Unauthorized to access {0}")]
    MissingContextScope(String),
    /// Valid token without the scope a registry prompt needs (403).
    #[error("Unauthorized to access '{0}'")]
    PromptScope(String),
}

impl AuthError {
    pub(crate) fn forbidden(reason: impl std::fmt::Display) -> Self {
        AuthError::Forbidden { reason: reason.to_string() }
    }
}
