//! The OpenAI chat completions wire format, spoken by vLLM and every OpenAI-compatible server,
//! Azure OpenAI and Mistral: the request body, the complete answer and the SSE stream events.

use crate::types::{Completion, FinishReason, ModelRequest, PluginError, Role, Sampling, StreamChunk, Usage};
use crate::{done_chunk, invalid, malformed, model_rules, role_name, to_json};
use serde::{Deserialize, Serialize};

/// How a provider's dialect differs from OpenAI's.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// Send `model` in the body (Azure names the deployment in the path instead).
    pub model_in_body: bool,
    /// Ask for a final usage chunk with `stream_options` (Mistral sends usage unasked and refuses
    /// unknown fields).
    pub stream_options: bool,
    /// Mark a last assistant message (a prefill the model continues, such as ReAct's
    /// `Thought:`) with `"prefix": true`, which Mistral's API requires of one.
    pub prefix_last_assistant: bool,
    /// The most stop sequences the API takes (OpenAI's takes 4); the first ones are sent.
    pub max_stop: Option<usize>,
    /// For a Mistral model (`mistral` in the model's own name, not its organisation's: not for
    /// `mistralai/Mixtral-…`) whose last message is an assistant prefill, ask vLLM to continue
    /// that message rather than open a new one (`"continue_final_message": true,
    /// "add_generation_prompt": false`), as GitLab's gateway does: Mistral's chat template
    /// otherwise ends the prefill's turn.
    pub continue_mistral_prefill: bool,
}

impl Dialect {
    /// OpenAI and the servers that copy it (vLLM, llama.cpp, LiteLLM, Ollama's `/v1`).
    pub const OPENAI: Dialect = Dialect {
        model_in_body: true,
        stream_options: true,
        prefix_last_assistant: false,
        max_stop: Some(4),
        continue_mistral_prefill: true,
    };
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: Vec<ChatMessage<'a>>,
    #[serde(flatten)]
    sampling: SamplingFields<'a>,
    /// Left out unless true: a whole answer is every server's default.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    continue_final_message: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    add_generation_prompt: Option<bool>,
}

/// The sampling fields OpenAI-style APIs share (chat and Mistral's fill-in-the-middle).
#[derive(Serialize)]
pub struct SamplingFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    /// The output limit under the GPT-5 family's name for it (then `max_tokens` is unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

impl<'a> SamplingFields<'a> {
    /// The request's sampling parameters; unset ones are left out of the body, and so is what
    /// the model refuses (see [`model_rules`](crate::model_rules)).
    pub fn of(request: &'a ModelRequest) -> Self {
        Self::for_model(&request.model, &request.sampling)
    }

    /// `sampling` as `model` takes it.
    pub fn for_model(model: &str, sampling: &'a Sampling) -> Self {
        // A rule is asked only about a parameter the request sets.
        let completion_tokens = sampling.max_tokens.is_some() && model_rules::wants_max_completion_tokens(model);
        SamplingFields {
            max_tokens: sampling.max_tokens.filter(|_| !completion_tokens),
            max_completion_tokens: sampling.max_tokens.filter(|_| completion_tokens),
            temperature: sampling.temperature.filter(|_| model_rules::accepts_temperature(model)),
            top_p: sampling.top_p,
            stop: &sampling.stop,
        }
    }
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: ChatContent<'a>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    prefix: bool,
}

/// A message's content: its text, or (a refused prefill sent as the user's) one text block.
#[derive(Serialize)]
#[serde(untagged)]
enum ChatContent<'a> {
    Text(&'a str),
    Blocks([TextBlock; 1]),
}

#[derive(Serialize)]
struct TextBlock {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// Refuse what no provider can serve: an empty model id or no messages.
pub fn check_request(request: &ModelRequest) -> Result<(), PluginError> {
    if request.model.is_empty() {
        return Err(invalid("the model id is empty"));
    }
    if request.messages.is_empty() {
        return Err(invalid("the request has no messages"));
    }
    Ok(())
}

/// The chat completions request body for `request`.
pub fn chat_body(request: &ModelRequest, dialect: Dialect) -> Result<Vec<u8>, PluginError> {
    check_request(request)?;
    let prefilled = request.messages.last().is_some_and(|last| matches!(last.role, Role::Assistant));
    // A model that refuses a prefill gets it as the user's words instead.
    let prefill_refused = prefilled && !model_rules::accepts_assistant_prefill(&request.model);
    // The model's own name (not its organisation's), read only for a prefill.
    let mistral_model = || {
        let name = request.model.rsplit('/').next().unwrap_or_default();
        name.to_ascii_lowercase().contains("mistral")
    };
    let continue_prefill =
        (dialect.continue_mistral_prefill && prefilled && !prefill_refused && mistral_model()).then_some(true);
    let mut sampling = SamplingFields::of(request);
    if let Some(max) = dialect.max_stop {
        sampling.stop = &sampling.stop[..sampling.stop.len().min(max)];
    }
    to_json(&ChatRequest {
        model: dialect.model_in_body.then_some(request.model.as_str()),
        messages: request
            .messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                let last_assistant = index + 1 == request.messages.len() && matches!(message.role, Role::Assistant);
                if last_assistant && prefill_refused {
                    let text = model_rules::prefill_as_user(&message.content);
                    let content = ChatContent::Blocks([TextBlock { kind: "text", text }]);
                    return ChatMessage { role: "user", content, prefix: false };
                }
                ChatMessage {
                    role: role_name(message.role),
                    content: ChatContent::Text(&message.content),
                    prefix: dialect.prefix_last_assistant && last_assistant,
                }
            })
            .collect(),
        sampling,
        stream: request.stream,
        stream_options: (request.stream && dialect.stream_options).then_some(StreamOptions { include_usage: true }),
        continue_final_message: continue_prefill,
        add_generation_prompt: continue_prefill.map(|_| false),
    })
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    /// vLLM and LiteLLM report failures, mid-stream too, as `{"error": {...}}`.
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<WireMessage>,
    /// Present in streamed chunks.
    delta: Option<WireMessage>,
    /// Present in `/completions` answers, which some servers return for chat requests too.
    text: Option<String>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
}

/// OpenAI's `usage` object.
#[derive(Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

/// OpenAI's `error` object, as vLLM and LiteLLM put it in a 200 answer or a stream.
#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    message: Option<String>,
}

impl ErrorBody {
    /// The reported error as a plugin error.
    pub(crate) fn reported(&self) -> PluginError {
        malformed(format!("the model server reported an error: {}", self.message.as_deref().unwrap_or("(no message)")))
    }
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        Usage { input_tokens: usage.prompt_tokens, output_tokens: usage.completion_tokens }
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    crate::finish_reason(reason, &["stop", "eos"], &["length", "model_length"])
}

fn reported_error(answer: &ChatResponse) -> Result<(), PluginError> {
    answer.error.as_ref().map_or(Ok(()), |error| Err(error.reported()))
}

/// Parse a complete chat completion: the first choice's text, its finish reason and the usage.
pub fn parse_response(body: &[u8]) -> Result<Completion, PluginError> {
    let response: ChatResponse = serde_json::from_slice(body).map_err(malformed)?;
    reported_error(&response)?;
    let choice = response.choices.into_iter().next().ok_or_else(|| malformed("the answer has no choices"))?;
    let text = choice.message.and_then(|m| m.content).or(choice.text).unwrap_or_default();
    Ok(Completion {
        text,
        finish_reason: choice.finish_reason.as_deref().map(finish_reason),
        usage: response.usage.map(Usage::from),
    })
}

/// Parse one SSE `data:` payload: a chunk, the usage-only chunk, an error object or `[DONE]`.
/// OpenAI-style streams name no events, so `_event` is not used.
pub fn parse_event(_event: Option<&str>, data: &[u8]) -> Result<StreamChunk, PluginError> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(done_chunk());
    }
    let chunk: ChatResponse = serde_json::from_slice(data).map_err(malformed)?;
    reported_error(&chunk)?;
    let (text, finish) = match chunk.choices.into_iter().next() {
        Some(choice) => (
            choice.delta.and_then(|d| d.content).or(choice.text).unwrap_or_default(),
            choice.finish_reason.as_deref().map(finish_reason),
        ),
        None => (String::new(), None),
    };
    Ok(StreamChunk { text, finish_reason: finish, usage: chunk.usage.map(Usage::from), done: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FillInMiddle, Message, Sampling};
    use serde_json::{Value, json};

    fn request(stream: bool) -> ModelRequest {
        ModelRequest {
            model: "qwen2.5-coder".to_string(),
            messages: vec![
                Message { role: Role::System, content: "You complete code.".to_string() },
                Message { role: Role::User, content: "def add(a, b):".to_string() },
            ],
            fill_in_middle: Some(FillInMiddle { prefix: "def add(a, b):".into(), suffix: "".into() }),
            sampling: Sampling {
                max_tokens: Some(64),
                temperature: Some(0.32),
                top_p: None,
                stop: vec!["[INST]".to_string()],
            },
            stream,
        }
    }

    #[test]
    fn chat_body_carries_messages_and_set_sampling_only() {
        let body: Value = serde_json::from_slice(&chat_body(&request(false), Dialect::OPENAI).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "qwen2.5-coder",
                "messages": [
                    {"role": "system", "content": "You complete code."},
                    {"role": "user", "content": "def add(a, b):"}
                ],
                "max_tokens": 64,
                "temperature": 0.32,
                "stop": ["[INST]"]
            }),
            "a whole answer is asked for by leaving `stream` out"
        );
    }

    #[test]
    fn openai_takes_four_stop_sequences_and_the_first_four_are_sent() {
        let mut five = request(false);
        five.sampling.stop = ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"].map(String::from).to_vec();
        let body: Value = serde_json::from_slice(&chat_body(&five, Dialect::OPENAI).unwrap()).unwrap();
        assert_eq!(body["stop"], json!(["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]"]));
        five.sampling.stop.truncate(4);
        let body: Value = serde_json::from_slice(&chat_body(&five, Dialect::OPENAI).unwrap()).unwrap();
        assert_eq!(body["stop"].as_array().unwrap().len(), 4, "four fit");
    }

    #[test]
    fn a_mistral_prefill_is_continued_and_other_models_are_left_alone() {
        let mut prefilled = request(true);
        prefilled.messages.push(Message { role: Role::Assistant, content: "Thought:".into() });
        prefilled.model = "Mistral-7B-Instruct-v0.3".into();
        let body: Value = serde_json::from_slice(&chat_body(&prefilled, Dialect::OPENAI).unwrap()).unwrap();
        assert_eq!(
            (body["continue_final_message"].clone(), body["add_generation_prompt"].clone()),
            (json!(true), json!(false))
        );
        prefilled.model = "Meta-Llama-3.1-8B-Instruct".into();
        let body: Value = serde_json::from_slice(&chat_body(&prefilled, Dialect::OPENAI).unwrap()).unwrap();
        assert!(body.get("continue_final_message").is_none() && body.get("add_generation_prompt").is_none());
        let mut unprefilled = request(true);
        unprefilled.model = "mistral-small".into();
        let body: Value = serde_json::from_slice(&chat_body(&unprefilled, Dialect::OPENAI).unwrap()).unwrap();
        assert!(body.get("continue_final_message").is_none(), "no prefill, nothing to continue");
    }

    #[test]
    fn dialects_differ_in_model_and_stream_options() {
        let openai: Value = serde_json::from_slice(&chat_body(&request(true), Dialect::OPENAI).unwrap()).unwrap();
        assert_eq!(openai["stream_options"], json!({"include_usage": true}));
        let bare = Dialect {
            model_in_body: false,
            stream_options: false,
            prefix_last_assistant: false,
            max_stop: None,
            continue_mistral_prefill: false,
        };
        let other: Value = serde_json::from_slice(&chat_body(&request(true), bare).unwrap()).unwrap();
        assert_eq!(other.get("model"), None);
        assert_eq!(other.get("stream_options"), None);
        assert_eq!(other["stream"], json!(true));
    }

    #[test]
    fn empty_model_or_messages_are_invalid_input() {
        let mut no_model = request(false);
        no_model.model.clear();
        assert!(matches!(chat_body(&no_model, Dialect::OPENAI), Err(PluginError::InvalidInput(_))));
        let mut no_messages = request(false);
        no_messages.messages.clear();
        assert!(matches!(chat_body(&no_messages, Dialect::OPENAI), Err(PluginError::InvalidInput(_))));
    }

    #[test]
    fn parses_complete_answer_with_usage() {
        let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,
            "message":{"role":"assistant","content":"return a + b"},"finish_reason":"length"}],
            "usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        let done = parse_response(body).unwrap();
        assert_eq!(done.text, "return a + b");
        assert!(matches!(done.finish_reason, Some(FinishReason::Length)));
        let usage = done.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (12, 5));
    }

    #[test]
    fn answer_without_choices_is_malformed() {
        assert!(matches!(parse_response(b"{\"choices\":[]}"), Err(PluginError::MalformedResponse(_))));
        assert!(matches!(parse_response(b"<html>"), Err(PluginError::MalformedResponse(_))));
    }

    #[test]
    fn parses_stream_events() {
        let chunk =
            parse_event(None, br#"{"choices":[{"index":0,"delta":{"content":"ret"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(chunk.text, "ret");
        assert!(!chunk.done && chunk.finish_reason.is_none());

        let last = parse_event(None, br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        assert_eq!(last.text, "");
        assert!(matches!(last.finish_reason, Some(FinishReason::Stop)));

        let usage = parse_event(None, br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#).unwrap();
        assert_eq!(usage.usage.map(|u| u.output_tokens), Some(2));

        assert!(parse_event(None, b"[DONE]").unwrap().done);
    }

    #[test]
    fn stream_error_object_is_reported() {
        let err = parse_event(None, br#"{"error":{"message":"model overloaded","code":503}}"#).unwrap_err();
        match err {
            PluginError::MalformedResponse(message) => assert!(message.contains("model overloaded")),
            other => unreachable!("unexpected {other:?}"),
        }
    }

    /// `request` for `model` with a trailing assistant prefill.
    fn prefilled(model: &str) -> Value {
        let mut request = request(false);
        request.model = model.to_string();
        request.messages.push(Message { role: Role::Assistant, content: "Thought:".to_string() });
        serde_json::from_slice(&chat_body(&request, Dialect::OPENAI).unwrap()).unwrap()
    }

    #[test]
    fn a_claude_model_that_refuses_prefill_gets_it_as_the_users_words() {
        let body = prefilled("anthropic/claude-sonnet-4-6");
        assert_eq!(
            body["messages"][2],
            json!({"role": "user", "content": [{"type": "text", "text": "[Previous assistant context]: Thought:"}]})
        );
        let kept = prefilled("claude-sonnet-4-5");
        assert_eq!(kept["messages"][2], json!({"role": "assistant", "content": "Thought:"}));
    }

    #[test]
    fn vllms_continue_flags_go_to_mistral_models_only() {
        let mistral = prefilled("mistralai/Mistral-7B-Instruct-v0.3");
        assert_eq!(
            (mistral["continue_final_message"].clone(), mistral["add_generation_prompt"].clone()),
            (json!(true), json!(false))
        );
        let mixtral = prefilled("mistralai/Mixtral-8x7B-Instruct-v0.1");
        assert!(mixtral.get("continue_final_message").is_none() && mixtral.get("add_generation_prompt").is_none());
    }

    #[test]
    fn gpt_5_and_the_newest_claude_get_the_sampling_they_accept() {
        let mut gpt5 = request(false);
        gpt5.model = "gpt-5-mini".to_string();
        let body: Value = serde_json::from_slice(&chat_body(&gpt5, Dialect::OPENAI).unwrap()).unwrap();
        assert_eq!((body.get("max_tokens"), &body["max_completion_tokens"]), (None, &json!(64)));
        let mut opus = request(false);
        opus.model = "claude-opus-4-7".to_string();
        let body: Value = serde_json::from_slice(&chat_body(&opus, Dialect::OPENAI).unwrap()).unwrap();
        assert_eq!((body.get("temperature"), &body["max_tokens"]), (None, &json!(64)));
    }
}
