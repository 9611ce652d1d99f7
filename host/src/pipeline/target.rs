//! Which model to call: GitLab's model fields, in either form → provider, served model id, family,
//! endpoint and key, validated with GitLab's limits.

use crate::error::GatewayError;

/// GitLab's limits on the model fields (characters).
const MAX_NAME: usize = 255;
const MAX_ENDPOINT: usize = crate::upstream::endpoint::MAX_LENGTH;
const MAX_API_KEY: usize = 2000;
const MAX_IDENTIFIER: usize = 1000;

/// The provider name used when an identifier has no `<provider>/` part.
pub(crate) const DEFAULT_PROVIDER: &str = "custom_openai";

/// A resolved model target.
#[derive(Clone)]
pub(crate) struct ModelTarget {
    /// Provider name, which selects the plugin (e.g. `custom_openai`).
    pub(crate) provider: String,
    /// Model id sent to the model server.
    pub(crate) model: String,
    /// Model family, which selects the prompt (e.g. `codestral`).
    pub(crate) family: String,
    /// Model endpoint, without trailing `/`; `None` when the request named none, and then the
    /// plugin's default endpoint applies (Bedrock's regional one, for example).
    pub(crate) endpoint: Option<http::Uri>,
    /// API key; empty when none was given.
    pub(crate) api_key: String,
    /// A named model's model servers, which then replace `endpoint`.
    pub(crate) pool: Option<std::sync::Arc<crate::fleet::Pool>>,
}

impl std::fmt::Debug for ModelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately absent.
        f.debug_struct("ModelTarget")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("family", &self.family)
            .field("endpoint", &self.endpoint)
            .field("pool", &self.pool.as_ref().map(|pool| pool.model()))
            .finish_non_exhaustive()
    }
}

/// GitLab's model fields, whichever form they arrived in.
#[derive(Debug, Default)]
pub(crate) struct ModelFields<'a> {
    /// Family (`model_name` / `name`).
    pub(crate) family: Option<&'a str>,
    /// Endpoint (`model_endpoint` / `endpoint`).
    pub(crate) endpoint: Option<&'a str>,
    /// Key (`model_api_key` / `api_key`).
    pub(crate) api_key: Option<&'a str>,
    /// Identifier (`model_identifier` / `identifier`).
    pub(crate) identifier: Option<&'a str>,
}

fn too_long(field: &str, max: usize) -> GatewayError {
    GatewayError::Unprocessable(format!("{field} must be at most {max} characters"))
}

impl ModelTarget {
    /// The operator's named model, for a request whose prompt family is `family`.
    pub(crate) fn named(named: &crate::models::NamedModel, family: &str) -> Self {
        ModelTarget {
            provider: named.provider.clone(),
            model: named.model.clone(),
            family: family.to_string(),
            endpoint: None,
            api_key: named.api_key.expose().to_string(),
            pool: named.pool.clone(),
        }
    }

    /// Resolve and validate. `custom_models_enabled: false` refuses request-supplied endpoints and keys.
    pub(crate) fn resolve(fields: ModelFields<'_>, custom_models_enabled: bool) -> Result<Self, GatewayError> {
        let family = fields
            .family
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| GatewayError::Unprocessable("model_name is required for self-hosted models".into()))?;
        if family.chars().count() > MAX_NAME {
            return Err(too_long("model_name", MAX_NAME));
        }
        if fields.api_key.is_some_and(|k| k.chars().count() > MAX_API_KEY) {
            return Err(too_long("model_api_key", MAX_API_KEY));
        }
        // The key travels in a header: a control character cannot, and bytes past ASCII would
        // reach each model server's own reading of them. Either is the caller's mistake.
        if fields.api_key.is_some_and(|k| !k.bytes().all(|b| b.is_ascii_graphic())) {
            return Err(GatewayError::Unprocessable(
                "model_api_key may hold printable ASCII characters only (no spaces, control characters or non-ASCII)"
                    .into(),
            ));
        }
        let identifier = fields.identifier.map(str::trim).filter(|i| !i.is_empty());
        if identifier.is_some_and(|i| i.chars().count() > MAX_IDENTIFIER) {
            return Err(too_long("model_identifier", MAX_IDENTIFIER));
        }
        let (provider, model) = match identifier {
            Some(identifier) => match identifier.split_once('/') {
                Some((provider, model)) if !provider.is_empty() && !model.is_empty() => (provider, model),
                Some(_) => {
                    return Err(GatewayError::Unprocessable(format!(
                        "model_identifier {identifier:?} must be <provider>/<model> or a bare model name"
                    )));
                }
                None => (DEFAULT_PROVIDER, identifier),
            },
            None => (DEFAULT_PROVIDER, family),
        };
        let endpoint = fields.endpoint.map(str::trim).filter(|e| !e.is_empty());
        // As GitLab's gateway: with custom models disabled, a request may not say where to send
        // the model call or with which key (a model the gateway reaches on its own, such as
        // Bedrock with the gateway's AWS credentials, still works).
        if !custom_models_enabled && (endpoint.is_some() || fields.api_key.is_some_and(|k| !k.is_empty())) {
            return Err(GatewayError::Unprocessable("specifying custom models endpoint is disabled".into()));
        }
        Ok(ModelTarget {
            provider: provider.to_string(),
            model: model.to_string(),
            family: family.to_string(),
            endpoint: endpoint.map(parse_endpoint).transpose()?,
            api_key: fields.api_key.unwrap_or_default().to_string(),
            pool: None,
        })
    }
}

/// An http(s) URL with a host, no credentials, query or fragment; a trailing `/` is dropped.
pub(crate) fn parse_endpoint(text: &str) -> Result<http::Uri, GatewayError> {
    if text.chars().count() > MAX_ENDPOINT {
        return Err(too_long("model_endpoint", MAX_ENDPOINT));
    }
    crate::upstream::endpoint::parse(text)
        .map_err(|why| GatewayError::Unprocessable(format!("model_endpoint {text:?} is not usable: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(identifier: Option<&'a str>, endpoint: &'a str) -> ModelFields<'a> {
        ModelFields { family: Some("codestral"), endpoint: Some(endpoint), api_key: Some("k"), identifier }
    }

    #[test]
    fn identifier_routes_provider_and_model() {
        let t = ModelTarget::resolve(fields(Some("custom_openai/codestral-22b"), "http://h:8000/v1/"), true).unwrap();
        assert_eq!((t.provider.as_str(), t.model.as_str()), ("custom_openai", "codestral-22b"));
        assert_eq!(t.endpoint.unwrap().to_string(), "http://h:8000/v1");
        let bare = ModelTarget::resolve(fields(Some("my-model"), "http://h/v1"), true).unwrap();
        assert_eq!((bare.provider.as_str(), bare.model.as_str()), ("custom_openai", "my-model"));
        let none = ModelTarget::resolve(fields(None, "http://h/v1"), true).unwrap();
        assert_eq!(none.model, "codestral");
    }

    #[test]
    fn an_absent_endpoint_is_left_to_the_plugin_default() {
        let mut f = fields(Some("bedrock/anthropic.claude-3-haiku-20240307-v1:0"), "");
        f.endpoint = None;
        let t = ModelTarget::resolve(f, true).unwrap();
        assert_eq!(t.endpoint, None);
        assert_eq!(t.model, "anthropic.claude-3-haiku-20240307-v1:0");
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for endpoint in ["ftp://h/v1", "http://user:pw@h/v1", "not a url", "http://h/v1?x=1"] {
            assert!(ModelTarget::resolve(fields(None, endpoint), true).is_err(), "{endpoint}");
        }
        let long = format!("http://h/{}", "a".repeat(300));
        assert!(ModelTarget::resolve(fields(None, &long), true).is_err());
    }

    #[test]
    fn ports_and_hosts_are_what_they_say() {
        for endpoint in ["http://h:8000/v1", "http://h:65535/v1", "http://h/v1", "http://[::1]/v1", "http://[::1]:1/v1"]
        {
            assert!(ModelTarget::resolve(fields(None, endpoint), true).is_ok(), "{endpoint}");
        }
        for endpoint in
            ["http://h:abc/v1", "http://h:0/v1", "http://h:65536/v1", "http://h:/v1", "http://[fe80::1%25eth0]:8000/v1"]
        {
            let error = ModelTarget::resolve(fields(None, endpoint), true).map(|_| ()).unwrap_err();
            assert!(
                matches!(&error, GatewayError::Unprocessable(d) if d.starts_with("model_endpoint")),
                "{endpoint}: {error:?}"
            );
        }
    }

    #[test]
    fn api_keys_are_printable_ascii() {
        let with_key = |key| ModelFields { api_key: Some(key), ..fields(None, "http://h/v1") };
        assert!(ModelTarget::resolve(with_key("sk-AZaz09_-.~+/="), true).is_ok());
        for key in ["sk-\nnext", "sk-\u{7f}", "sk-é", "sk key", "sk-\t"] {
            let error = ModelTarget::resolve(with_key(key), true).map(|_| ()).unwrap_err();
            assert!(matches!(&error, GatewayError::Unprocessable(d) if d.starts_with("model_api_key")), "{key:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let mut f = fields(None, "http://h/v1");
        f.api_key = Some("sk-canary-123");
        let t = ModelTarget::resolve(f, true).unwrap();
        assert!(!format!("{t:?}").contains("sk-canary-123"));
    }
}
