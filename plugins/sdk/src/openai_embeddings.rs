//! OpenAI's embeddings wire format, spoken by vLLM, TEI, llama.cpp, LiteLLM, Azure OpenAI and
//! Mistral: the request body and the answer.

use crate::embeddings::{EmbeddingsRequest, EmbeddingsResult};
use crate::types::PluginError;
use crate::{invalid, malformed, to_json};
use serde::Deserialize;
use serde_json::{Map, Value};

/// How a provider's embeddings API differs from OpenAI's.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingsDialect {
    /// Send `model` in the body (Azure names the deployment in the path instead).
    pub model_in_body: bool,
    /// The field that asks for shortened vectors: `dimensions` for OpenAI, `output_dimension`
    /// for Mistral.
    pub dimensions_field: &'static str,
}

impl EmbeddingsDialect {
    /// OpenAI and the servers that copy it.
    pub const OPENAI: EmbeddingsDialect = EmbeddingsDialect { model_in_body: true, dimensions_field: "dimensions" };
}

/// The request body: `input` (always a list), `model`, the dimensions field when asked, and
/// `"encoding_format": "float"` (as GitLab's gateway sends it: some servers default to base64).
pub fn body(request: &EmbeddingsRequest, dialect: EmbeddingsDialect) -> Result<Vec<u8>, PluginError> {
    check(request)?;
    let mut body = Map::new();
    body.insert("input".into(), Value::from(request.inputs.clone()));
    if dialect.model_in_body {
        body.insert("model".into(), Value::from(request.model.as_str()));
    }
    if let Some(dimensions) = request.dimensions {
        body.insert(dialect.dimensions_field.into(), Value::from(dimensions));
    }
    body.insert("encoding_format".into(), Value::from("float"));
    to_json(&body)
}

/// Refuse what no provider can embed: an empty model id or no inputs.
pub fn check(request: &EmbeddingsRequest) -> Result<(), PluginError> {
    if request.model.is_empty() {
        return Err(invalid("the model id is empty"));
    }
    if request.inputs.is_empty() {
        return Err(invalid("there is nothing to embed"));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Item {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
}

/// The answer's vectors, placed by their `index` (servers may list them in any order).
pub fn parse(body: &[u8]) -> Result<EmbeddingsResult, PluginError> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        malformed(format!("not an embeddings answer ({e}); the request asked for `encoding_format: float`"))
    })?;
    let count = answer.data.len();
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
    for (position, item) in answer.data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        match vectors.get_mut(index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            Some(Some(_)) => return Err(malformed(format!("two vectors with index {index}"))),
            None => return Err(malformed(format!("vector index {index} out of range for {count} vectors"))),
        }
    }
    Ok(EmbeddingsResult {
        // Every slot is filled: `count` items went into `count` distinct slots.
        vectors: vectors.into_iter().flatten().collect(),
        input_tokens: answer.usage.and_then(|usage| usage.prompt_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embeddings::EmbeddingPurpose;
    use serde_json::json;

    fn request(dimensions: Option<u32>) -> EmbeddingsRequest {
        EmbeddingsRequest {
            model: "jina-code".into(),
            inputs: vec!["fn a()".into(), "b".into()],
            dimensions,
            purpose: EmbeddingPurpose::Document,
        }
    }

    #[test]
    fn the_body_is_openais_with_floats_asked_for() {
        let sent: Value = serde_json::from_slice(&body(&request(None), EmbeddingsDialect::OPENAI).unwrap()).unwrap();
        assert_eq!(sent, json!({"input": ["fn a()", "b"], "model": "jina-code", "encoding_format": "float"}));
        let mistral = EmbeddingsDialect { model_in_body: true, dimensions_field: "output_dimension" };
        let sent: Value = serde_json::from_slice(&body(&request(Some(256)), mistral).unwrap()).unwrap();
        assert_eq!(sent["output_dimension"], 256);
        assert!(sent.get("dimensions").is_none());
    }

    #[test]
    fn vectors_are_placed_by_index() {
        let answer = json!({"data": [{"embedding": [0.5, 1.0], "index": 1}, {"embedding": [0.25, -1.0], "index": 0}],
                            "usage": {"prompt_tokens": 7, "total_tokens": 7}});
        let parsed = parse(answer.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.vectors, vec![vec![0.25, -1.0], vec![0.5, 1.0]]);
        assert_eq!(parsed.input_tokens, Some(7));
    }

    #[test]
    fn base64_duplicates_and_stray_indices_are_malformed() {
        for answer in [
            json!({"data": [{"embedding": "AAAA", "index": 0}]}),
            json!({"data": [{"embedding": [1.0], "index": 0}, {"embedding": [1.0], "index": 0}]}),
            json!({"data": [{"embedding": [1.0], "index": 3}]}),
            json!({"error": {"message": "no"}}),
        ] {
            assert!(matches!(parse(answer.to_string().as_bytes()), Err(PluginError::MalformedResponse(_))), "{answer}");
        }
    }
}
