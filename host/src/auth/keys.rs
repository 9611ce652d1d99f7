//! RSA signing keys the gateway holds itself (the development key) and token minting with them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde::Serialize;
use std::path::Path;

/// Errors reading, creating or using a signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key material is unusable.
    #[error("unusable RSA key: {0}")]
    Invalid(String),
}

/// An RSA private key with its key id and the derived verification key.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generate a fresh 2048-bit key.
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_private(new_private_key()?)
    }

    /// Parse a PEM private key, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::pkcs1::DecodeRsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::Invalid("not a PEM RSA private key (PKCS#8 or PKCS#1)".into()))?;
        Self::from_private(private)
    }

    /// Load the key at `path`, or generate one and store it there (mode 0600) when the file does
    /// not exist yet. Used by development mode so `aigw serve --dev` and `aigw token mint` agree.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_pem(&pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let private = new_private_key()?;
                let pem = private.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::Invalid(e.to_string()))?;
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                write_private(path, pem.as_bytes()).map_err(io)?;
                Self::from_private(private)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_private(private: RsaPrivateKey) -> Result<Self, KeyError> {
        let public = private.to_public_key();
        let der =
            rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_der(&private).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let n = public.n().to_bytes_be();
        let e = public.e().to_bytes_be();
        let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
        let kid = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(&n);
            URL_SAFE_NO_PAD.encode(&digest[..12])
        };
        Ok(SigningKey { kid, encoding, decoding })
    }

    /// Key id (`kid`), derived from the modulus.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The verification half.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// Sign `claims` as an RS256 JWT with this key's `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| KeyError::Invalid(e.to_string()))
    }
}

fn new_private_key() -> Result<RsaPrivateKey, KeyError> {
    RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| KeyError::Invalid(e.to_string()))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Claims of a token this gateway mints for IDE direct access (`/v1/code/user_access_token`).
#[derive(Debug, Serialize)]
pub struct UserAccessClaims {
    /// `gitlab-ai-gateway`.
    pub(crate) iss: String,
    /// `gitlab-ai-gateway`.
    pub(crate) aud: String,
    /// The user (`X-Gitlab-Global-User-Id`).
    pub(crate) sub: String,
    /// Issued at.
    pub(crate) iat: u64,
    /// Not before.
    pub(crate) nbf: u64,
    /// Expiry.
    pub(crate) exp: u64,
    /// Token id.
    pub(crate) jti: String,
    /// Realm of the instance that asked, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gitlab_realm: Option<String>,
    /// Granted scopes.
    pub(crate) scopes: Vec<String>,
}

impl UserAccessClaims {
    /// A one-hour token for `user` with `scopes`.
    pub fn new(user: &str, realm: Option<String>, scopes: Vec<String>) -> Self {
        let now = jsonwebtoken::get_current_timestamp();
        let jti: [u8; 16] = rand::random();
        UserAccessClaims {
            iss: super::verify::AUDIENCE.to_string(),
            aud: super::verify::AUDIENCE.to_string(),
            sub: user.to_string(),
            iat: now,
            nbf: now.saturating_sub(5),
            exp: now + USER_ACCESS_TTL_SECS,
            jti: URL_SAFE_NO_PAD.encode(jti),
            gitlab_realm: realm,
            scopes,
        }
    }
}

/// Lifetime of a user access token, seconds.
pub(crate) const USER_ACCESS_TTL_SECS: u64 = 3600;

/// Claims of a development token: what a GitLab instance puts in the tokens it sends, minus the
/// instance-specific ones, so a newcomer's curl needs no extra headers.
#[derive(Debug, Serialize)]
pub struct DevClaims {
    /// Issuer.
    pub(crate) iss: String,
    /// Audience.
    pub(crate) aud: Vec<String>,
    /// Issued at (unix seconds).
    pub(crate) iat: u64,
    /// Not before.
    pub(crate) nbf: u64,
    /// Expiry.
    pub(crate) exp: u64,
    /// Token id.
    pub(crate) jti: String,
    /// Granted scopes.
    pub(crate) scopes: Vec<String>,
}

impl DevClaims {
    /// A token valid for `ttl` from now with every scope the gateway serves.
    pub fn new(issuer: &str, ttl: std::time::Duration) -> Self {
        let now = jsonwebtoken::get_current_timestamp();
        let jti: [u8; 16] = rand::random();
        DevClaims {
            iss: issuer.to_string(),
            aud: vec![super::verify::AUDIENCE.to_string()],
            iat: now,
            nbf: now.saturating_sub(5),
            exp: now + ttl.as_secs(),
            jti: URL_SAFE_NO_PAD.encode(jti),
            scopes: vec!["complete_code".into(), "generate_code".into(), "duo_chat".into()],
        }
    }
}
