//! GitLab's `model_metadata` object, the newer endpoints' form of the model fields.

use crate::error::GatewayError;
use crate::pipeline::{ModelFields, ModelTarget};

/// The top-level `model_metadata` object of the newer endpoints.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ModelMetadata {
    /// Provider as GitLab names it (`openai`, `litellm`, …); reported back as `engine`.
    pub provider: Option<String>,
    /// Family.
    pub name: Option<String>,
    /// Endpoint.
    pub endpoint: Option<String>,
    /// API key.
    pub api_key: Option<String>,
    /// `<provider>/<model>`.
    pub identifier: Option<String>,
}

impl ModelMetadata {
    /// The target, and the provider as GitLab named it; the object is required for self-hosted models.
    pub(crate) fn resolve(
        metadata: Option<ModelMetadata>,
        custom_models_enabled: bool,
    ) -> Result<(ModelTarget, Option<String>), GatewayError> {
        let metadata = metadata
            .ok_or_else(|| GatewayError::Unprocessable("model_metadata is required for self-hosted models".into()))?;
        let target = ModelTarget::resolve(
            ModelFields {
                family: metadata.name.as_deref(),
                endpoint: metadata.endpoint.as_deref(),
                api_key: metadata.api_key.as_deref(),
                identifier: metadata.identifier.as_deref(),
            },
            custom_models_enabled,
        )?;
        Ok((target, metadata.provider))
    }
}
