//! OpenAI's `POST /v1/embeddings` for named models: text in (one or a list), vectors out as
//! floats or, as OpenAI's SDKs ask by default, base64 of little-endian 32-bit floats.

use super::request::invalid;
use crate::error::GatewayError;
use crate::pipeline::{self, MAX_CONTENT_BYTES, MAX_CONTENTS, MAX_DIMENSIONS, ModelTarget};
use crate::plugins::embeddings::{EmbeddingPurpose, EmbeddingsRequest};
use crate::response::{Body, json_response};
use crate::state::RequestState;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
    user: Option<String>,
}

/// An embeddings request as the client sent it, read and bounded.
pub(super) struct EmbeddingsCall {
    /// The model the client named.
    pub(super) model: String,
    texts: Vec<String>,
    dimensions: Option<u32>,
    base64: bool,
}

/// Read `body`: `input` a text or a list of texts (token ids are refused: a provider behind aigw
/// takes text), within the bounds GitLab's embeddings route has too.
pub(super) fn parse(body: &[u8]) -> Result<EmbeddingsCall, GatewayError> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| {
        let message = format!("the body is not an embeddings request: {e}");
        GatewayError::InvalidRequest { message, param: None }
    })?;
    let model = raw.model.filter(|m| !m.is_empty()).ok_or_else(|| invalid("model", "`model` is required"))?;
    let texts = match raw.input {
        Some(Value::String(text)) => vec![text],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.into_iter().filter_map(|item| item.as_str().map(str::to_string)).collect()
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            return Err(invalid("input", "token ids are not supported: send the text"));
        }
        _ => return Err(invalid("input", "`input` must be a text or a non-empty list of texts")),
    };
    if texts.len() > MAX_CONTENTS {
        return Err(invalid("input", format!("at most {MAX_CONTENTS} texts may be embedded at once")));
    }
    if texts.iter().map(String::len).sum::<usize>() > MAX_CONTENT_BYTES {
        return Err(invalid("input", format!("at most {MAX_CONTENT_BYTES} bytes of text may be embedded at once")));
    }
    if raw.dimensions.is_some_and(|d| d == 0 || d > MAX_DIMENSIONS) {
        return Err(invalid("dimensions", format!("`dimensions` must be from 1 to {MAX_DIMENSIONS}")));
    }
    let base64 = match raw.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(invalid("encoding_format", "`encoding_format` must be \"float\" or \"base64\"")),
    };
    // `user` names the end user for the provider's abuse monitoring; no embeddings API behind
    // aigw takes one, and it changes nothing about the vectors.
    let _ = raw.user;
    Ok(EmbeddingsCall { model, texts, dimensions: raw.dimensions, base64 })
}

#[derive(Serialize)]
struct Answer<'a> {
    object: &'static str,
    data: Vec<Item>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    total_tokens: u32,
}

/// Embed `call`'s texts with `target` and answer in OpenAI's shape.
pub(super) async fn answer(
    state: &RequestState<'_>,
    target: &ModelTarget,
    call: EmbeddingsCall,
) -> Result<http::Response<Body>, GatewayError> {
    let request = EmbeddingsRequest {
        model: target.model.clone(),
        inputs: call.texts,
        dimensions: call.dimensions,
        purpose: EmbeddingPurpose::Document,
    };
    let result = pipeline::embed(state, target, request).await?;
    let data = result
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if call.base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|value| value.to_le_bytes()).collect();
                Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Embedding::Floats(vector)
            };
            Item { object: "embedding", index, embedding }
        })
        .collect();
    let tokens = result.input_tokens.unwrap_or(0);
    let answer = Answer {
        object: "list",
        data,
        model: &call.model,
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    };
    let body = serde_json::to_vec(&answer).map_err(|e| GatewayError::Unavailable(format!("cannot encode: {e}")))?;
    Ok(json_response(http::StatusCode::OK, body.into()))
}
