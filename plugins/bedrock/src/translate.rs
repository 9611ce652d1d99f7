//! Translation to AWS Bedrock's Converse API: `POST /model/{modelId}/converse` (and
//! `converse-stream`), typed content blocks, `inferenceConfig`, and the ConverseStream events the
//! host has already decoded from the AWS event-stream framing.

use crate::types::{
    Completion, Credential, FinishReason, Framing, Method, ModelRequest, PluginError, PluginInfo, StreamChunk,
    UpstreamRequest, Usage,
};
use aigw_plugin_sdk::embeddings::{EmbeddingPurpose, EmbeddingsRequest, EmbeddingsResult};
use aigw_plugin_sdk::model_rules;
use aigw_plugin_sdk::{empty_chunk, invalid, malformed, to_json};
use serde::{Deserialize, Serialize};

/// Provider names routed to this plugin: `bedrock/<model id or inference profile>`.
pub const PROVIDERS: [&str; 1] = ["bedrock"];

/// The Bedrock runtime endpoint of the gateway's AWS region.
pub const DEFAULT_ENDPOINT: &str = "https://bedrock-runtime.{aws-region}.amazonaws.com";

/// The SigV4 service name.
pub const SIGNING_SERVICE: &str = "bedrock";

/// Plugin identity reported to the host.
pub fn info() -> PluginInfo {
    aigw_plugin_sdk::plugin_info(
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        &PROVIDERS,
        Framing::AwsEventStream,
        Some(DEFAULT_ENDPOINT),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest<'a> {
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<TextBlock<'a>>,
    #[serde(skip_serializing_if = "InferenceConfig::is_empty")]
    inference_config: InferenceConfig<'a>,
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<TextBlock<'a>>,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    text: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
}

impl InferenceConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop_sequences.is_empty()
    }
}

/// A model id or inference-profile ARN as one path segment: everything but RFC 3986 unreserved
/// characters is percent-encoded (`:` in versioned ids, `/` in ARNs).
pub(crate) fn path_segment(model: &str) -> String {
    let mut encoded = String::with_capacity(model.len() + 8);
    for byte in model.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// System messages become `system` blocks; the conversation must start with the user, as the
/// Converse API requires. A last assistant turn (a prefill) that a Claude model refuses (4.6 and
/// later) becomes a second text block of the user turn before it (Converse wants the roles to
/// alternate); `temperature` is left out for the models that refuse it. The host signs the
/// request (SigV4, service `bedrock`).
pub fn build_request(request: &ModelRequest) -> Result<UpstreamRequest, PluginError> {
    if request.model.is_empty() {
        return Err(invalid("the model id is empty"));
    }
    let aigw_plugin_sdk::SystemAndTurns { system, turns } =
        aigw_plugin_sdk::system_and_turns(&request.messages, "Converse API")?;
    let system = system.into_iter().map(|text| TextBlock { text: text.into() }).collect();
    let refuses_prefill = !model_rules::accepts_assistant_prefill(&request.model);
    let count = turns.len();
    let mut messages: Vec<Turn> = Vec::with_capacity(count);
    for (index, (role, text)) in turns.into_iter().enumerate() {
        if role == "assistant" && index + 1 == count && refuses_prefill {
            let block = TextBlock { text: model_rules::prefill_as_user(text).into() };
            match messages.last_mut() {
                Some(previous) if previous.role == "user" => previous.content.push(block),
                _ => messages.push(Turn { role: "user", content: vec![block] }),
            }
            continue;
        }
        messages.push(Turn { role, content: vec![TextBlock { text: text.into() }] });
    }
    let sampling = &request.sampling;
    let body = ConverseRequest {
        messages,
        system,
        inference_config: InferenceConfig {
            max_tokens: sampling.max_tokens,
            temperature: sampling.temperature.filter(|_| model_rules::accepts_temperature(&request.model)),
            top_p: sampling.top_p,
            stop_sequences: &sampling.stop,
        },
    };
    let operation = if request.stream { "converse-stream" } else { "converse" };
    Ok(UpstreamRequest {
        method: Method::Post,
        path: format!("/model/{}/{operation}", path_segment(&request.model)),
        headers: Vec::new(),
        body: to_json(&body)?,
        credential: Credential::AwsSigv4(SIGNING_SERVICE.to_string()),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse {
    output: Option<Output>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Output {
    message: Option<OutputMessage>,
}

#[derive(Deserialize)]
struct OutputMessage {
    #[serde(default)]
    content: Vec<OutputBlock>,
}

/// A content block; only text blocks carry text (tool use and reasoning blocks are skipped).
#[derive(Deserialize)]
struct OutputBlock {
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        Usage { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens }
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    aigw_plugin_sdk::finish_reason(reason, &["end_turn", "stop_sequence"], &["max_tokens"])
}

/// Parse a Converse answer: the text blocks of the output message, joined.
pub fn parse_response(body: &[u8]) -> Result<Completion, PluginError> {
    let response: ConverseResponse = serde_json::from_slice(body).map_err(malformed)?;
    let message =
        response.output.and_then(|o| o.message).ok_or_else(|| malformed("the answer has no output message"))?;
    Ok(Completion {
        text: message.content.into_iter().filter_map(|block| block.text).collect(),
        finish_reason: response.stop_reason.as_deref().map(finish_reason),
        usage: response.usage.map(Usage::from),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamEvent {
    delta: Option<Delta>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    text: Option<String>,
}

/// Parse one ConverseStream event. `metadata`, which carries the usage, is the last event;
/// exception messages (`throttlingException`, `modelStreamErrorException`, …) end the stream
/// with their message.
pub fn parse_event(event: Option<&str>, data: &[u8]) -> Result<StreamChunk, PluginError> {
    let Some(name) = event else {
        return Ok(empty_chunk());
    };
    let parsed = || serde_json::from_slice::<StreamEvent>(data).map_err(malformed);
    if name.ends_with("Exception") {
        let message = parsed().ok().and_then(|e| e.message).unwrap_or_else(|| "(no message)".to_string());
        return Err(malformed(format!("Bedrock reported {name}: {message}")));
    }
    Ok(match name {
        "contentBlockDelta" => {
            StreamChunk { text: parsed()?.delta.and_then(|d| d.text).unwrap_or_default(), ..empty_chunk() }
        }
        "messageStop" => {
            StreamChunk { finish_reason: parsed()?.stop_reason.as_deref().map(finish_reason), ..empty_chunk() }
        }
        "metadata" => StreamChunk { usage: parsed()?.usage.map(Usage::from), done: true, ..empty_chunk() },
        // messageStart, contentBlockStart/Stop and events added later carry no text.
        _ => empty_chunk(),
    })
}

/// The embedding model families Bedrock serves through `InvokeModel`, each with its own body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmbeddingModel {
    /// Amazon Titan Text Embeddings (`amazon.titan-embed-text-v1`, `-v2:0`): one text per call.
    Titan,
    /// Cohere Embed v3 (`cohere.embed-english-v3`, `-multilingual-v3`): up to 96 texts, fixed size.
    CohereV3,
    /// Cohere Embed v4 (`cohere.embed-v4:0`): up to 96 texts, `output_dimension`.
    CohereV4,
}

/// The most texts Cohere's models on Bedrock take in one call.
pub const COHERE_MAX_TEXTS: usize = 96;

impl EmbeddingModel {
    fn of(model: &str) -> Result<Self, PluginError> {
        if model.contains("titan-embed-text") {
            Ok(EmbeddingModel::Titan)
        } else if model.contains("cohere.embed-v4") {
            Ok(EmbeddingModel::CohereV4)
        } else if model.contains("cohere.embed-") {
            Ok(EmbeddingModel::CohereV3)
        } else {
            Err(invalid(format!(
                "{model:?} is not a Bedrock text embedding model this plugin knows (amazon.titan-embed-text-*, \
                 cohere.embed-*)"
            )))
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanRequest<'a> {
    input_text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

#[derive(Serialize)]
struct CohereRequest<'a> {
    texts: &'a [String],
    input_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding_types: Option<[&'static str; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u32>,
}

/// `POST /model/{modelId}/invoke` with the model family's own body, signed like Converse.
pub fn build_embeddings_request(request: &EmbeddingsRequest) -> Result<UpstreamRequest, PluginError> {
    aigw_plugin_sdk::openai_embeddings::check(request)?;
    let body = match EmbeddingModel::of(&request.model)? {
        EmbeddingModel::Titan => {
            let [text] = request.inputs.as_slice() else {
                return Err(invalid(format!(
                    "Titan embeds one text per call and {} were sent; use a Cohere embed model for batches",
                    request.inputs.len()
                )));
            };
            to_json(&TitanRequest { input_text: text, dimensions: request.dimensions })?
        }
        family @ (EmbeddingModel::CohereV3 | EmbeddingModel::CohereV4) => {
            if request.inputs.len() > COHERE_MAX_TEXTS {
                return Err(invalid(format!(
                    "Cohere embeds at most {COHERE_MAX_TEXTS} texts per call and {} were sent",
                    request.inputs.len()
                )));
            }
            let v4 = family == EmbeddingModel::CohereV4;
            if request.dimensions.is_some() && !v4 {
                return Err(invalid("Cohere Embed v3 vectors have a fixed size: leave `dimensions` out"));
            }
            let input_type = match request.purpose {
                EmbeddingPurpose::Document => "search_document",
                EmbeddingPurpose::Query => "search_query",
            };
            to_json(&CohereRequest {
                texts: &request.inputs,
                input_type,
                embedding_types: v4.then_some(["float"]),
                output_dimension: request.dimensions,
            })?
        }
    };
    Ok(UpstreamRequest {
        method: Method::Post,
        path: format!("/model/{}/invoke", path_segment(&request.model)),
        headers: Vec::new(),
        body,
        credential: Credential::AwsSigv4(SIGNING_SERVICE.to_string()),
    })
}

/// The three answer shapes: Titan's one vector, Cohere v3's list, Cohere v4's lists by type.
#[derive(Deserialize)]
#[serde(untagged)]
enum InvokeAnswer {
    Titan {
        embedding: Vec<f32>,
        #[serde(rename = "inputTextTokenCount")]
        input_tokens: Option<u32>,
    },
    Cohere {
        embeddings: Vec<Vec<f32>>,
    },
    CohereByType {
        embeddings: FloatEmbeddings,
    },
}

#[derive(Deserialize)]
struct FloatEmbeddings {
    float: Vec<Vec<f32>>,
}

/// The vectors of an `InvokeModel` answer, whichever embedding model gave it.
pub fn parse_embeddings_response(body: &[u8]) -> Result<EmbeddingsResult, PluginError> {
    let answer: InvokeAnswer = serde_json::from_slice(body)
        .map_err(|_| malformed("not a Titan or Cohere embeddings answer (no float vectors)"))?;
    Ok(match answer {
        InvokeAnswer::Titan { embedding, input_tokens } => EmbeddingsResult { vectors: vec![embedding], input_tokens },
        InvokeAnswer::Cohere { embeddings } => EmbeddingsResult { vectors: embeddings, input_tokens: None },
        InvokeAnswer::CohereByType { embeddings } => EmbeddingsResult { vectors: embeddings.float, input_tokens: None },
    })
}

/// Conversations with tools.
pub use crate::conversation::{answers, build_chat_request, parse_chat_event, parse_chat_response};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Message, Role, Sampling};
    use serde_json::{Value, json};

    fn request(stream: bool) -> ModelRequest {
        ModelRequest {
            model: "anthropic.claude-3-5-sonnet-20240620-v1:0".into(),
            messages: vec![
                Message { role: Role::System, content: "Be brief.".into() },
                Message { role: Role::User, content: "Hi".into() },
            ],
            fill_in_middle: None,
            sampling: Sampling { max_tokens: Some(100), temperature: Some(0.1), top_p: None, stop: vec![] },
            stream,
        }
    }

    #[test]
    fn converse_request_is_typed_blocks_and_signed_for_bedrock() {
        let built = build_request(&request(false)).unwrap();
        assert_eq!(built.path, "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse");
        assert!(matches!(built.credential, Credential::AwsSigv4(ref service) if service == "bedrock"));
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(
            body,
            json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
                   "system": [{"text": "Be brief."}],
                   "inferenceConfig": {"maxTokens": 100, "temperature": 0.1}})
        );
        assert!(build_request(&request(true)).unwrap().path.ends_with("/converse-stream"));
    }

    #[test]
    fn inference_profile_arns_stay_one_segment() {
        let mut arn = request(false);
        arn.model = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-3b".into();
        let path = build_request(&arn).unwrap().path;
        assert_eq!(
            path,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3-2-3b/converse"
        );
    }

    #[test]
    fn parses_converse_answer() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"return "},{"text":"a + b"}]}},
            "stopReason":"max_tokens","usage":{"inputTokens":9,"outputTokens":4,"totalTokens":13},"metrics":{"latencyMs":5}}"#;
        let done = parse_response(body).unwrap();
        assert_eq!(done.text, "return a + b");
        assert!(matches!(done.finish_reason, Some(FinishReason::Length)));
        assert_eq!(done.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((9, 4)));
        assert!(matches!(parse_response(b"{}"), Err(PluginError::MalformedResponse(_))));
    }

    #[test]
    fn parses_converse_stream_events() {
        assert_eq!(parse_event(Some("messageStart"), br#"{"role":"assistant","p":"abc"}"#).unwrap().text, "");
        let delta =
            parse_event(Some("contentBlockDelta"), br#"{"contentBlockIndex":0,"delta":{"text":"ret"}}"#).unwrap();
        assert_eq!(delta.text, "ret");
        let stop = parse_event(Some("messageStop"), br#"{"stopReason":"end_turn"}"#).unwrap();
        assert!(matches!(stop.finish_reason, Some(FinishReason::Stop)));
        let metadata =
            parse_event(Some("metadata"), br#"{"usage":{"inputTokens":3,"outputTokens":2},"metrics":{}}"#).unwrap();
        assert!(metadata.done);
        assert_eq!(metadata.usage.map(|u| u.output_tokens), Some(2));
    }

    #[test]
    fn exceptions_end_the_stream_with_their_message() {
        match parse_event(Some("throttlingException"), br#"{"message":"Too many requests"}"#) {
            Err(PluginError::MalformedResponse(message)) => {
                assert!(message.contains("throttlingException") && message.contains("Too many requests"))
            }
            other => unreachable!("unexpected {other:?}"),
        }
    }

    fn embed(model: &str, inputs: &[&str], dimensions: Option<u32>) -> Result<UpstreamRequest, PluginError> {
        build_embeddings_request(&EmbeddingsRequest {
            model: model.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            dimensions,
            purpose: EmbeddingPurpose::Query,
        })
    }

    #[test]
    fn each_embedding_family_gets_its_own_body() {
        let titan = embed("amazon.titan-embed-text-v2:0", &["a"], Some(256)).unwrap();
        assert_eq!(titan.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
        let body: serde_json::Value = serde_json::from_slice(&titan.body).unwrap();
        assert_eq!(body, serde_json::json!({"inputText": "a", "dimensions": 256}));
        let cohere = embed("cohere.embed-v4:0", &["a", "b"], Some(512)).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&cohere.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"texts": ["a", "b"], "input_type": "search_query", "embedding_types": ["float"],
                               "output_dimension": 512})
        );
        assert!(embed("amazon.titan-embed-text-v2:0", &["a", "b"], None).is_err());
        assert!(embed("cohere.embed-english-v3", &["a"], Some(8)).is_err());
        assert!(embed("cohere.embed-english-v3", &vec!["t"; COHERE_MAX_TEXTS], None).is_ok());
        assert!(embed("cohere.embed-english-v3", &vec!["t"; COHERE_MAX_TEXTS + 1], None).is_err());
        assert!(embed("anthropic.claude-3-haiku-20240307-v1:0", &["a"], None).is_err());
    }

    #[test]
    fn every_embedding_answer_shape_is_read() {
        let titan = parse_embeddings_response(br#"{"embedding":[0.5,0.25],"inputTextTokenCount":3}"#).unwrap();
        assert_eq!((titan.vectors, titan.input_tokens), (vec![vec![0.5, 0.25]], Some(3)));
        let v3 =
            parse_embeddings_response(br#"{"id":"x","embeddings":[[1.0],[2.0]],"response_type":"embeddings_floats"}"#)
                .unwrap();
        assert_eq!(v3.vectors, vec![vec![1.0], vec![2.0]]);
        let v4 = parse_embeddings_response(br#"{"embeddings":{"float":[[3.0]]},"response_type":"embeddings_by_type"}"#)
            .unwrap();
        assert_eq!(v4.vectors, vec![vec![3.0]]);
        assert!(parse_embeddings_response(br#"{"message":"denied"}"#).is_err());
    }

    #[test]
    fn a_refused_claude_prefill_joins_the_user_turn_before_it() {
        use crate::types::{Message, Role, Sampling};
        let request = |model: &str| ModelRequest {
            model: model.into(),
            messages: vec![
                Message { role: Role::User, content: "Question".into() },
                Message { role: Role::Assistant, content: "Thought:".into() },
            ],
            fill_in_middle: None,
            sampling: Sampling { max_tokens: None, temperature: Some(0.1), top_p: None, stop: vec![] },
            stream: false,
        };
        let body = |model: &str| -> serde_json::Value {
            serde_json::from_slice(&build_request(&request(model)).unwrap().body).unwrap()
        };
        let refused = body("us.anthropic.claude-opus-4-7-v1:0");
        assert_eq!(
            refused["messages"],
            serde_json::json!([{"role": "user", "content": [{"text": "Question"}, {"text": "[Previous assistant context]: Thought:"}]}])
        );
        assert!(refused.get("inferenceConfig").is_none(), "no temperature for Opus 4.7");
        let kept = body("anthropic.claude-3-haiku-20240307-v1:0");
        assert_eq!(kept["messages"][1], serde_json::json!({"role": "assistant", "content": [{"text": "Thought:"}]}));
        assert!(kept["inferenceConfig"]["temperature"].is_number());
    }
}
