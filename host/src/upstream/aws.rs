//! AWS Signature Version 4 for plugins that ask for it, with the credentials and region of the
//! gateway's own environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION` or `AWS_DEFAULT_REGION`). The signing itself is the maintained `aws-sigv4` crate.

use super::UpstreamError;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use std::time::SystemTime;

/// The AWS variables of the gateway's environment. `Debug` never shows the secrets.
#[derive(Clone, Default)]
pub(crate) struct AwsEnvironment {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    region: Option<String>,
    default_region: Option<String>,
}

impl std::fmt::Debug for AwsEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsEnvironment")
            .field("access_key_id", &self.access_key_id)
            .field("has_secret", &self.secret_access_key.is_some())
            .field("has_session_token", &self.session_token.is_some())
            .field("region", &self.region())
            .finish()
    }
}

/// Why a request could not be signed. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SigningError {
    /// A variable the signature needs is not set.
    #[error("AWS signing needs {0} in the gateway's environment")]
    Missing(&'static str),
    /// The signer refused the request.
    #[error("AWS signing failed: {0}")]
    Signer(String),
}

impl From<SigningError> for UpstreamError {
    fn from(error: SigningError) -> Self {
        UpstreamError::Signing(error.to_string())
    }
}

impl AwsEnvironment {
    /// Record `name` if it is one of the AWS variables; returns whether it was.
    pub(crate) fn set(&mut self, name: &str, value: String) -> bool {
        let value = Some(value).filter(|v| !v.trim().is_empty());
        match name {
            "AWS_ACCESS_KEY_ID" => self.access_key_id = value,
            "AWS_SECRET_ACCESS_KEY" => self.secret_access_key = value,
            "AWS_SESSION_TOKEN" => self.session_token = value,
            "AWS_REGION" => self.region = value,
            "AWS_DEFAULT_REGION" => self.default_region = value,
            _ => return false,
        }
        true
    }

    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`, as the AWS SDKs read them.
    pub(crate) fn region(&self) -> Option<&str> {
        self.region.as_deref().or(self.default_region.as_deref())
    }

    /// Sign `request` (whose body is `body`) for `service`, adding `Authorization`, `X-Amz-Date`
    /// and, with temporary credentials, `X-Amz-Security-Token`.
    pub(crate) fn sign<B>(
        &self,
        service: &str,
        request: &mut http::Request<B>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SigningError> {
        let access_key = self.access_key_id.as_deref().ok_or(SigningError::Missing("AWS_ACCESS_KEY_ID"))?;
        let secret = self.secret_access_key.as_deref().ok_or(SigningError::Missing("AWS_SECRET_ACCESS_KEY"))?;
        let region = self.region().ok_or(SigningError::Missing("AWS_REGION"))?;
        let identity =
            Credentials::new(access_key, secret, self.session_token.clone(), None, "aigw-environment").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SigningError::Signer(e.to_string()))?
            .into();
        let mut headers = Vec::with_capacity(request.headers().len());
        for (name, value) in request.headers() {
            let value = value.to_str().map_err(|_| SigningError::Signer(format!("header {name} is not text")))?;
            headers.push((name.as_str(), value));
        }
        let uri = request.uri().to_string();
        let signable =
            SignableRequest::new(request.method().as_str(), uri, headers.into_iter(), SignableBody::Bytes(body))
                .map_err(|e| SigningError::Signer(e.to_string()))?;
        let (instructions, _signature) =
            sign(signable, &params).map_err(|e| SigningError::Signer(e.to_string()))?.into_parts();
        instructions.apply_to_request_http1x(request);
        if let Some(signature) = request.headers_mut().get_mut(http::header::AUTHORIZATION) {
            signature.set_sensitive(true);
        }
        Ok(())
    }

    /// Replace `{aws-region}` in a plugin's default endpoint.
    pub(crate) fn expand_endpoint(&self, template: &str) -> Result<String, SigningError> {
        if !template.contains("{aws-region}") {
            return Ok(template.to_string());
        }
        let region = self.region().ok_or(SigningError::Missing("AWS_REGION"))?;
        Ok(template.replace("{aws-region}", region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment() -> AwsEnvironment {
        let mut env = AwsEnvironment::default();
        for (name, value) in [
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
        ] {
            assert!(env.set(name, value.to_string()));
        }
        env
    }

    #[test]
    fn signs_with_the_environment_credentials_and_region() {
        let mut request = http::Request::post("https://bedrock-runtime.eu-west-1.amazonaws.com/model/m%3A0/converse")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000);
        environment().sign("bedrock", &mut request, b"{}", at).unwrap();
        let authorization = request.headers()["authorization"].to_str().unwrap();
        assert!(
            authorization
                .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20251124/eu-west-1/bedrock/aws4_request"),
            "{authorization}"
        );
        assert!(authorization.contains("SignedHeaders=content-type;host;x-amz-date"), "{authorization}");
        assert!(request.headers()["authorization"].is_sensitive());
        assert_eq!(request.headers()["x-amz-date"], "20251124T160000Z");
    }

    #[test]
    fn missing_variables_are_named_and_secrets_never_printed() {
        let mut request = http::Request::post("https://h/x").body(()).unwrap();
        let error = AwsEnvironment::default().sign("bedrock", &mut request, b"", SystemTime::now()).unwrap_err();
        assert_eq!(error.to_string(), "AWS signing needs AWS_ACCESS_KEY_ID in the gateway's environment");
        let printed = format!("{:?}", environment());
        assert!(!printed.contains("EXAMPLEKEY"), "{printed}");
    }

    #[test]
    fn default_endpoint_gets_the_region() {
        let endpoint = environment().expand_endpoint("https://bedrock-runtime.{aws-region}.amazonaws.com").unwrap();
        assert_eq!(endpoint, "https://bedrock-runtime.eu-west-1.amazonaws.com");
        assert!(AwsEnvironment::default().expand_endpoint("https://x/{aws-region}").is_err());
        assert_eq!(
            AwsEnvironment::default().expand_endpoint("https://api.mistral.ai/v1").unwrap(),
            "https://api.mistral.ai/v1"
        );
    }
}
