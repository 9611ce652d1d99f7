//! GitLab's code-embeddings endpoints (`POST /v1/embeddings/code_embeddings`, `…/index`,
//! `…/search`), which self-hosted semantic code search calls: texts to vectors through the
//! provider plugin, in GitLab's request and answer shapes and with its provider rules.

use super::parse_json;
use crate::error::GatewayError;
use crate::pipeline::{self, ModelFields, ModelTarget};
use crate::pipeline::{MAX_CONTENT_BYTES, MAX_CONTENTS, MAX_DIMENSIONS};
use crate::plugins::embeddings::{EmbeddingPurpose, EmbeddingsRequest};
use crate::response::{Body, json_response};
use crate::state::RequestState;
use crate::upstream::UpstreamError;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Which of the three paths was called; they differ only in what the texts are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// `/v1/embeddings/code_embeddings` and `/index`: code to be stored.
    Index,
    /// `/v1/embeddings/code_embeddings/search`: a query.
    Search,
}

/// The only model name GitLab accepts with provider `litellm`.
const EMBEDDING_NAME: &str = "embedding";

/// What GitLab reports as the engine of a `litellm` embedding (its model class's provider name).
const ENGINE: &str = "litellm_embedding";

#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
    model_metadata: Metadata,
    contents: Vec<String>,
    /// GitLab forwards it only when it is truthy: 0 means none.
    #[serde(default)]
    dimensions: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    provider: String,
    identifier: String,
    name: Option<String>,
    endpoint: Option<String>,
    api_key: Option<String>,
}

#[derive(Serialize)]
struct Answer<'a> {
    model: ModelReport<'a>,
    predictions: Vec<Prediction>,
}

#[derive(Serialize)]
struct ModelReport<'a> {
    engine: &'static str,
    name: &'a str,
    identifier: &'a str,
}

#[derive(Serialize)]
struct Prediction {
    embedding: Vec<f32>,
    index: usize,
}

/// Validate, embed through the plugin serving the identifier's provider, and answer GitLab's
/// `{"model", "predictions"}`.
pub(crate) async fn handle(
    state: &RequestState<'_>,
    body: &[u8],
    path: Path,
) -> Result<http::Response<Body>, GatewayError> {
    let request: EmbeddingsBody = parse_json(body)?;
    let metadata = &request.model_metadata;
    check_provider(metadata)?;
    let dimensions = check_bounds(&request)?;
    let target = ModelTarget::resolve(
        ModelFields {
            family: metadata.name.as_deref(),
            endpoint: metadata.endpoint.as_deref(),
            api_key: metadata.api_key.as_deref(),
            identifier: Some(&metadata.identifier),
        },
        state.config.custom_models_enabled,
    )?;
    let purpose = match path {
        Path::Index => EmbeddingPurpose::Document,
        Path::Search => EmbeddingPurpose::Query,
    };
    let embedded = EmbeddingsRequest { model: target.model.clone(), inputs: request.contents, dimensions, purpose };
    let result = pipeline::embed(state, &target, embedded).await.map_err(pass_on_refusal)?;
    let answer = Answer {
        model: ModelReport { engine: ENGINE, name: EMBEDDING_NAME, identifier: &metadata.identifier },
        predictions: result
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| Prediction { embedding, index })
            .collect(),
    };
    let json =
        serde_json::to_vec(&answer).map_err(|e| GatewayError::Unavailable(format!("cannot encode the answer: {e}")))?;
    Ok(json_response(StatusCode::OK, json.into()))
}

/// GitLab's rules on `model_metadata`, in its order and words: `gitlab` or `litellm`; for
/// `litellm`, the name `embedding` and an endpoint.
fn check_provider(metadata: &Metadata) -> Result<(), GatewayError> {
    let refuse = |detail: &str| Err(GatewayError::Unprocessable(detail.to_string()));
    match metadata.provider.as_str() {
        "litellm" => {}
        // GitLab's own hosted model, reached through GitLab's cloud: not from a self-hosted gateway.
        "gitlab" => {
            return refuse(
                "Provider `gitlab` is GitLab's hosted embedding model, which this self-hosted gateway does not reach; \
                 configure the embedding model with provider `litellm`, its endpoint and identifier",
            );
        }
        _ => return refuse("Allowed providers are: gitlab|litellm."),
    }
    match metadata.name.as_deref() {
        None | Some("") => return refuse("Model `name` must be set when using `litellm` provider."),
        Some(EMBEDDING_NAME) => {}
        Some(_) => return refuse("Model `name` must be 'embedding' when using `litellm` provider."),
    }
    if metadata.endpoint.as_deref().is_none_or(str::is_empty) {
        return refuse("Model `endpoint` must be set when using `litellm` provider.");
    }
    Ok(())
}

/// The gateway's own bounds on one request, and the vector length asked for.
fn check_bounds(request: &EmbeddingsBody) -> Result<Option<u32>, GatewayError> {
    let refuse = |detail: String| Err(GatewayError::Unprocessable(detail));
    let contents = &request.contents;
    if contents.is_empty() {
        return refuse("`contents` must hold at least one text".into());
    }
    if contents.len() > MAX_CONTENTS {
        return refuse(format!(
            "`contents` holds {} texts; at most {MAX_CONTENTS} may be embedded at once",
            contents.len()
        ));
    }
    let bytes: usize = contents.iter().map(String::len).sum();
    if bytes > MAX_CONTENT_BYTES {
        return refuse(format!(
            "`contents` hold {bytes} bytes of text; at most {MAX_CONTENT_BYTES} may be embedded at once"
        ));
    }
    match request.dimensions {
        None | Some(0) => Ok(None),
        Some(asked) => match u32::try_from(asked) {
            Ok(dimensions @ 1..=MAX_DIMENSIONS) => Ok(Some(dimensions)),
            _ => refuse(format!("`dimensions` must be from 1 to {MAX_DIMENSIONS} (or left out), not {asked}")),
        },
    }
}

/// GitLab passes a model server's 400, 401 and 429 on as its own status (Rails tells a bad
/// request, a wrong key and a rate limit apart); other failures keep the gateway's mapping.
fn pass_on_refusal(error: GatewayError) -> GatewayError {
    match error {
        GatewayError::Upstream { error: UpstreamError::Status { status, retry_after, .. }, calls }
            if matches!(status.as_u16(), 400 | 401 | 429) =>
        {
            GatewayError::ModelRefused { status, retry_after, calls }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(contents: Vec<String>, dimensions: Option<i64>) -> EmbeddingsBody {
        EmbeddingsBody {
            model_metadata: Metadata {
                provider: "litellm".into(),
                identifier: "openai/e".into(),
                name: Some("embedding".into()),
                endpoint: Some("http://127.0.0.1:1/v1".into()),
                api_key: None,
            },
            contents,
            dimensions,
        }
    }

    #[test]
    fn contents_are_bounded_in_number_and_size() {
        assert!(check_bounds(&body(vec!["a".into(); MAX_CONTENTS], None)).is_ok());
        assert!(check_bounds(&body(vec!["a".into(); MAX_CONTENTS + 1], None)).is_err());
        assert!(check_bounds(&body(Vec::new(), None)).is_err());
        let half = "x".repeat(MAX_CONTENT_BYTES / 2);
        assert!(check_bounds(&body(vec![half.clone(), half.clone()], None)).is_ok());
        assert!(check_bounds(&body(vec![half.clone(), half, "y".into()], None)).is_err());
    }

    #[test]
    fn dimensions_are_bounded_and_zero_means_none() {
        let dims = |d| check_bounds(&body(vec!["a".into()], d)).map_err(|e| e.to_string());
        assert_eq!(dims(None), Ok(None));
        assert_eq!(dims(Some(0)), Ok(None));
        assert_eq!(dims(Some(1)), Ok(Some(1)));
        assert_eq!(dims(Some(i64::from(MAX_DIMENSIONS))), Ok(Some(MAX_DIMENSIONS)));
        for refused in [-1, i64::from(MAX_DIMENSIONS) + 1, i64::MAX] {
            assert!(dims(Some(refused)).unwrap_err().contains("`dimensions`"), "{refused}");
        }
    }

    #[test]
    fn providers_follow_gitlabs_rules_in_its_order() {
        let detail = |f: &dyn Fn(&mut Metadata)| {
            let mut metadata = body(vec![], None).model_metadata;
            f(&mut metadata);
            check_provider(&metadata).map_err(|e| e.to_string())
        };
        assert_eq!(detail(&|_| {}), Ok(()));
        assert_eq!(detail(&|m| m.provider = "ollama".into()), Err("Allowed providers are: gitlab|litellm.".into()));
        assert!(detail(&|m| m.provider = "gitlab".into()).unwrap_err().contains("litellm"));
        assert!(detail(&|m| m.name = None).unwrap_err().contains("must be set"));
        assert!(detail(&|m| m.name = Some("code_embeddings".into())).unwrap_err().contains("must be 'embedding'"));
        assert!(detail(&|m| m.endpoint = Some(String::new())).unwrap_err().contains("`endpoint` must be set"));
    }
}
