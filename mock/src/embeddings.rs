//! The embeddings APIs the mock speaks: OpenAI's (as vLLM, TEI and llama.cpp serve it, Azure's
//! and Mistral's too), Ollama's `/api/embed`, and Bedrock's `InvokeModel` bodies for Titan and
//! Cohere. Each text's vector is derived from its SHA-256 ([`mock_vector`]), so a test knows the
//! vector it should get back.

use http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Vector length when the request asks for none.
const DEFAULT_DIMENSIONS: usize = 8;

/// The longest vector the mock makes.
const MAX_DIMENSIONS: u64 = 8192;

/// Which embeddings API a request is for.
#[derive(Debug)]
pub(crate) enum Api {
    /// `POST …/v1/embeddings`.
    OpenAi,
    /// `POST /openai/deployments/{deployment}/embeddings`.
    Azure { deployment: String },
    /// `POST /mistral/v1/embeddings` (strict about fields, `output_dimension`).
    Mistral,
    /// `POST …/api/embed`.
    Ollama,
    /// `POST /model/{model}/invoke` (SigV4-signed).
    BedrockInvoke { model: String },
}

impl Api {
    /// The embeddings API of a path, if it is one.
    pub(crate) fn of(segments: &[&str]) -> Option<Api> {
        Some(match segments {
            ["mistral", "v1", "embeddings"] => Api::Mistral,
            ["openai", "deployments", deployment, "embeddings"] => Api::Azure { deployment: deployment.to_string() },
            ["model", model, "invoke"] => Api::BedrockInvoke { model: percent_decode(model) },
            [.., "api", "embed"] => Api::Ollama,
            [.., "v1", "embeddings"] => Api::OpenAi,
            _ => return None,
        })
    }
}

/// The mock's vector for `text`: `dimensions` values of the form k/128 in [-1, 1) taken from the
/// SHA-256 of the text (and of the text with a counter, past 32 values). Exact in `f32`, so it
/// survives any float round trip unchanged.
pub fn mock_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(dimensions);
    let mut block: u32 = 0;
    while values.len() < dimensions {
        let mut hasher = Sha256::new();
        hasher.update(text.as_bytes());
        if block > 0 {
            hasher.update(block.to_le_bytes());
        }
        for byte in hasher.finalize() {
            if values.len() == dimensions {
                break;
            }
            values.push((f32::from(byte) - 128.0) / 128.0);
        }
        block += 1;
    }
    values
}

/// The first body field Mistral's embeddings API would refuse, if any.
pub(crate) fn mistral_unknown_field(request: &Value) -> Option<String> {
    const KNOWN: [&str; 5] = ["model", "input", "output_dimension", "output_dtype", "encoding_format"];
    request.as_object()?.keys().find(|field| !KNOWN.contains(&field.as_str())).cloned()
}

/// The status and JSON body answering `request` on `api`.
pub(crate) fn answer(api: &Api, request: &Value) -> (StatusCode, Value) {
    match answer_of(api, request) {
        Ok(body) => (StatusCode::OK, body),
        Err(message) => {
            let body = match api {
                Api::Ollama => json!({"error": message}),
                Api::BedrockInvoke { .. } => json!({"message": message}),
                _ => json!({"error": {"message": message, "type": "invalid_request_error", "code": 400}}),
            };
            (StatusCode::BAD_REQUEST, body)
        }
    }
}

fn answer_of(api: &Api, request: &Value) -> Result<Value, String> {
    let model = request.get("model").and_then(Value::as_str).unwrap_or("mock-embed").to_string();
    match api {
        Api::OpenAi | Api::Azure { .. } | Api::Mistral => {
            let field = if matches!(api, Api::Mistral) { "output_dimension" } else { "dimensions" };
            let texts = texts(&request["input"])?;
            let dimensions = dimensions(request, field)?;
            let model = match api {
                Api::Azure { deployment } => deployment.clone(),
                _ => model,
            };
            let data: Vec<Value> = texts
                .iter()
                .enumerate()
                .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": mock_vector(text, dimensions)}))
                .collect();
            let tokens = tokens(&texts);
            Ok(json!({"object": "list", "model": model, "data": data,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        }
        Api::Ollama => {
            let texts = texts(&request["input"])?;
            let dimensions = dimensions(request, "dimensions")?;
            let vectors: Vec<Vec<f32>> = texts.iter().map(|text| mock_vector(text, dimensions)).collect();
            Ok(json!({"model": model, "embeddings": vectors, "total_duration": 1000, "load_duration": 10,
                      "prompt_eval_count": tokens(&texts)}))
        }
        Api::BedrockInvoke { model } if model.contains("titan-embed") => {
            let text = request["inputText"].as_str().ok_or("inputText is required")?;
            let dimensions = dimensions(request, "dimensions")?;
            Ok(json!({"embedding": mock_vector(text, dimensions), "inputTextTokenCount": tokens(&[text.to_string()])}))
        }
        Api::BedrockInvoke { model } if model.contains("cohere.embed") => {
            let texts = texts(&request["texts"])?;
            if !matches!(request["input_type"].as_str(), Some("search_document" | "search_query")) {
                return Err("input_type must be search_document, search_query, classification or clustering".into());
            }
            let dimensions = dimensions(request, "output_dimension")?;
            let vectors: Vec<Vec<f32>> = texts.iter().map(|text| mock_vector(text, dimensions)).collect();
            Ok(if request.get("embedding_types").is_some() {
                json!({"id": "mock", "embeddings": {"float": vectors}, "response_type": "embeddings_by_type", "texts": texts})
            } else {
                json!({"id": "mock", "embeddings": vectors, "response_type": "embeddings_floats", "texts": texts})
            })
        }
        Api::BedrockInvoke { model } => Err(format!("the mock does not embed with {model}")),
    }
}

/// The texts of an `input` (a string or a list of strings).
fn texts(input: &Value) -> Result<Vec<String>, String> {
    match input {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(|| "every input must be a string".to_string()))
            .collect(),
        _ => Err("input must be a string or a non-empty list of strings".into()),
    }
}

/// The vector length `field` asks for, or the default.
fn dimensions(request: &Value, field: &str) -> Result<usize, String> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(DEFAULT_DIMENSIONS),
        Some(value) => match value.as_u64() {
            Some(n @ 1..=MAX_DIMENSIONS) => Ok(n as usize),
            _ => Err(format!("{field} must be an integer from 1 to {MAX_DIMENSIONS}")),
        },
    }
}

/// Tokens as the mock counts them: bytes / 4, at least 1.
fn tokens(texts: &[String]) -> usize {
    (texts.iter().map(String::len).sum::<usize>() / 4).max(1)
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_exact_and_sized() {
        let v = mock_vector("fn main() {}", 40);
        assert_eq!(v.len(), 40);
        assert_eq!(v, mock_vector("fn main() {}", 40));
        assert_ne!(v[..8], mock_vector("fn main() { }", 8)[..]);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x) && (x * 128.0).fract() == 0.0));
    }

    #[test]
    fn paths_name_their_api() {
        assert!(matches!(Api::of(&["v1", "embeddings"]), Some(Api::OpenAi)));
        assert!(
            matches!(Api::of(&["model", "amazon.titan-embed-text-v2%3A0", "invoke"]), Some(Api::BedrockInvoke { model }) if model == "amazon.titan-embed-text-v2:0")
        );
        assert!(Api::of(&["v1", "chat", "completions"]).is_none());
    }
}
