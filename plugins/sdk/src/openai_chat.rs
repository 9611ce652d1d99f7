//! OpenAI's Chat Completions with tools, for the `chat` interface: a conversation's request body,
//! and its answer (whole or streamed) back as canonical chat results. vLLM and every
//! OpenAI-compatible server, Azure OpenAI and Mistral speak it.

use crate::chat::{
    ChatChunk, ChatCompletion, ChatFinishReason, ChatMessage, ChatRequest, ChatRole, Content, Tool, ToolCall,
    ToolCallDelta, ToolChoice,
};
use crate::openai::{Dialect, ErrorBody, SamplingFields, WireUsage};
use crate::types::{PluginError, Usage};
use crate::{invalid, malformed, model_rules, to_json};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The body fields this module writes itself; `extra` may not set them again.
const WRITTEN_FIELDS: [&str; 18] = [
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
    "user",
    "stream",
    "stream_options",
    "n",
    "functions",
    "function_call",
];

#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    sampling: SamplingFields<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    /// `null` when the message has none (an assistant turn that only calls tools).
    content: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    prefix: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    Parts(Vec<TextPart<'a>>),
    /// A refused prefill, as the user's words.
    Owned([TextPart<'a>; 1]),
}

#[derive(Serialize)]
struct TextPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NamedFunction<'a>,
    },
}

#[derive(Serialize)]
struct NamedFunction<'a> {
    name: &'a str,
}

/// OpenAI's name of a role.
pub fn role_name(role: ChatRole) -> &'static str {
    match role {
        ChatRole::System => "system",
        ChatRole::Developer => "developer",
        ChatRole::User => "user",
        ChatRole::Assistant => "assistant",
        ChatRole::Tool => "tool",
    }
}

/// `text` as JSON text, or an `invalid-input` error saying that `what` is not JSON.
pub fn json_text<'a>(text: &'a str, what: &dyn std::fmt::Display) -> Result<&'a RawValue, PluginError> {
    serde_json::from_str(text).map_err(|e| invalid(format!("{what} is not JSON: {e}")))
}

/// The request's `extra` fields as one JSON object, or `None` when it has none.
pub fn extra_fields(request: &ChatRequest) -> Result<Option<serde_json::Map<String, serde_json::Value>>, PluginError> {
    let Some(extra) = request.extra.as_deref() else { return Ok(None) };
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(extra).map_err(|e| invalid(format!("the extra fields are not a JSON object: {e}")))?;
    Ok(Some(fields).filter(|fields| !fields.is_empty()))
}

/// The chat completions body for a conversation: everything it carries, the fields the host
/// did not interpret added unchanged, and the model's own rules applied (see
/// [`model_rules`]).
pub fn chat_body(request: &ChatRequest, dialect: Dialect) -> Result<Vec<u8>, PluginError> {
    if request.model.is_empty() {
        return Err(invalid("the model id is empty"));
    }
    if request.messages.is_empty() {
        return Err(invalid("the request has no messages"));
    }
    let last = request.messages.len() - 1;
    let prefilled = is_prefill(&request.messages[last]);
    let prefill_refused = prefilled && !model_rules::accepts_assistant_prefill(&request.model);
    let messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let prefill = index == last && prefilled;
            wire_message(message, prefill && prefill_refused, prefill && dialect.prefix_last_assistant)
        })
        .collect();
    let tools = request.tools.iter().map(wire_tool).collect::<Result<Vec<_>, _>>()?;
    let response_format =
        request.response_format.as_deref().map(|format| json_text(format, &"response_format")).transpose()?;
    let body = to_json(&Body {
        model: dialect.model_in_body.then_some(request.model.as_str()),
        messages,
        tools,
        tool_choice: request.tool_choice.as_ref().map(wire_tool_choice),
        parallel_tool_calls: request.parallel_tool_calls,
        sampling: SamplingFields::for_model(&request.model, &request.sampling),
        seed: request.seed,
        response_format,
        user: request.user.as_deref(),
        stream: request.stream,
        stream_options: (request.stream && dialect.stream_options).then_some(StreamOptions { include_usage: true }),
    })?;
    match extra_fields(request)? {
        Some(extra) => with_extra(body, &extra),
        None => Ok(body),
    }
}

/// `body` (a JSON object) with `extra`'s fields added after its own. A field the body already
/// writes is the caller's mistake, said as such rather than sent twice.
fn with_extra(mut body: Vec<u8>, extra: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<u8>, PluginError> {
    if let Some(taken) = extra.keys().find(|key| WRITTEN_FIELDS.contains(&key.as_str())) {
        return Err(invalid(format!("the extra field {taken:?} is one the request already sets")));
    }
    if body.pop() != Some(b'}') {
        return Err(invalid("the request body is not a JSON object"));
    }
    for (key, value) in extra {
        body.push(b',');
        serde_json::to_writer(&mut body, key).map_err(|e| invalid(format!("cannot encode {key:?}: {e}")))?;
        body.push(b':');
        serde_json::to_writer(&mut body, value).map_err(|e| invalid(format!("cannot encode {key:?}: {e}")))?;
    }
    body.push(b'}');
    Ok(body)
}

/// Whether `message` is a prefill: an assistant turn with text and no tool calls, which the
/// model is to continue.
fn is_prefill(message: &ChatMessage) -> bool {
    matches!(message.role, ChatRole::Assistant) && message.tool_calls.is_empty() && message.content.is_some()
}

/// The text of a message's content, parts joined.
pub fn content_text(content: &Content) -> std::borrow::Cow<'_, str> {
    match content {
        Content::Text(text) => std::borrow::Cow::Borrowed(text),
        Content::Parts(parts) if parts.len() == 1 => std::borrow::Cow::Borrowed(&parts[0]),
        Content::Parts(parts) => std::borrow::Cow::Owned(parts.concat()),
    }
}

fn wire_message(message: &ChatMessage, as_user: bool, prefix: bool) -> Message<'_> {
    if as_user {
        let text = message.content.as_ref().map(content_text).unwrap_or_default();
        let text = std::borrow::Cow::Owned(model_rules::prefill_as_user(&text));
        return Message {
            role: "user",
            content: Some(WireContent::Owned([TextPart { kind: "text", text }])),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            prefix: false,
        };
    }
    Message {
        role: role_name(message.role),
        content: message.content.as_ref().map(|content| match content {
            Content::Text(text) => WireContent::Text(text),
            Content::Parts(parts) => WireContent::Parts(
                parts.iter().map(|text| TextPart { kind: "text", text: std::borrow::Cow::Borrowed(text) }).collect(),
            ),
        }),
        name: message.name.as_deref(),
        tool_calls: message
            .tool_calls
            .iter()
            .map(|call| WireToolCall {
                id: &call.id,
                kind: "function",
                function: WireFunctionCall { name: &call.name, arguments: &call.arguments },
            })
            .collect(),
        tool_call_id: message.tool_call_id.as_deref(),
        prefix,
    }
}

fn wire_tool(tool: &Tool) -> Result<WireTool<'_>, PluginError> {
    let parameters = tool
        .parameters
        .as_deref()
        .map(|schema| json_text(schema, &format_args!("the parameters of tool {:?}", tool.name)))
        .transpose()?;
    Ok(WireTool {
        kind: "function",
        function: WireFunction {
            name: &tool.name,
            description: tool.description.as_deref(),
            parameters,
            strict: tool.strict,
        },
    })
}

fn wire_tool_choice(choice: &ToolChoice) -> WireToolChoice<'_> {
    match choice {
        ToolChoice::Auto => WireToolChoice::Mode("auto"),
        ToolChoice::None => WireToolChoice::Mode("none"),
        ToolChoice::Required => WireToolChoice::Mode("required"),
        ToolChoice::Function(name) => WireToolChoice::Function { kind: "function", function: NamedFunction { name } },
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<AnswerMessage>,
    delta: Option<AnswerMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<AnswerToolCall>>,
}

#[derive(Deserialize)]
struct AnswerToolCall {
    index: Option<u32>,
    id: Option<String>,
    function: Option<AnswerFunction>,
}

#[derive(Deserialize)]
struct AnswerFunction {
    name: Option<String>,
    arguments: Option<String>,
}

/// OpenAI's finish reasons (and vLLM's and Mistral's words for them) as canonical ones.
pub fn finish_reason(reason: &str) -> ChatFinishReason {
    match reason {
        "stop" | "eos" => ChatFinishReason::Stop,
        "length" | "model_length" => ChatFinishReason::Length,
        "tool_calls" | "function_call" => ChatFinishReason::ToolCalls,
        "content_filter" => ChatFinishReason::ContentFilter,
        other => ChatFinishReason::Other(other.to_string()),
    }
}

/// Parse a complete answer: the first choice's text and tool calls, its finish reason, usage.
pub fn parse_response(body: &[u8]) -> Result<ChatCompletion, PluginError> {
    let answer: Answer = serde_json::from_slice(body).map_err(malformed)?;
    if let Some(error) = &answer.error {
        return Err(error.reported());
    }
    let choice = answer.choices.into_iter().next().ok_or_else(|| malformed("the answer has no choices"))?;
    let message = choice.message.ok_or_else(|| malformed("the answer's choice has no message"))?;
    let tool_calls = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|call| {
            let function = call.function.ok_or_else(|| malformed("a tool call has no function"))?;
            Ok(ToolCall {
                id: call.id.ok_or_else(|| malformed("a tool call has no id"))?,
                name: function.name.ok_or_else(|| malformed("a tool call has no function name"))?,
                arguments: function.arguments.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, PluginError>>()?;
    Ok(ChatCompletion {
        content: message.content,
        tool_calls,
        finish_reason: choice.finish_reason.as_deref().map(finish_reason),
        usage: answer.usage.map(Usage::from),
    })
}

/// Parse one SSE `data:` payload: a chunk with text or tool-call pieces, the usage chunk, an
/// error object, or `[DONE]`.
pub fn parse_event(_event: Option<&str>, data: &[u8]) -> Result<ChatChunk, PluginError> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(ChatChunk { done: true, ..empty_chunk() });
    }
    let answer: Answer = serde_json::from_slice(data).map_err(malformed)?;
    if let Some(error) = &answer.error {
        return Err(error.reported());
    }
    let mut chunk = ChatChunk { usage: answer.usage.map(Usage::from), ..empty_chunk() };
    if let Some(choice) = answer.choices.into_iter().next() {
        chunk.finish_reason = choice.finish_reason.as_deref().map(finish_reason);
        if let Some(delta) = choice.delta {
            chunk.content = delta.content.unwrap_or_default();
            chunk.tool_calls = delta
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(position, call)| {
                    let (name, arguments) = match call.function {
                        Some(function) => (function.name, function.arguments.unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    ToolCallDelta { index: call.index.unwrap_or(position as u32), id: call.id, name, arguments }
                })
                .collect();
        }
    }
    Ok(chunk)
}

/// A chunk that carries nothing.
pub fn empty_chunk() -> ChatChunk {
    ChatChunk { content: String::new(), tool_calls: Vec::new(), finish_reason: None, usage: None, done: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Sampling;
    use serde_json::{Value, json};

    fn message(role: ChatRole, text: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: Some(Content::Text(text.to_string())),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A tool round trip as GitLab's Duo Workflow Service sends it: system, user, the
    /// assistant's call with empty content, the tool's result.
    fn round_trip(stream: bool) -> ChatRequest {
        ChatRequest {
            model: "qwen3-coder".into(),
            messages: vec![
                message(ChatRole::System, "You help."),
                message(ChatRole::User, "What is issue 42?"),
                ChatMessage {
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_issue".into(),
                        arguments: "{\"iid\": 42}".into(),
                    }],
                    ..message(ChatRole::Assistant, "")
                },
                ChatMessage { tool_call_id: Some("call_1".into()), ..message(ChatRole::Tool, "{\"title\": \"Bug\"}") },
            ],
            tools: vec![Tool {
                name: "get_issue".into(),
                description: Some("Read an issue.".into()),
                parameters: Some(r#"{"type": "object", "properties": {"iid": {"type": "integer"}}}"#.into()),
                strict: None,
            }],
            tool_choice: None,
            parallel_tool_calls: None,
            sampling: Sampling { max_tokens: Some(32768), temperature: Some(0.0), top_p: None, stop: Vec::new() },
            seed: None,
            response_format: None,
            user: None,
            extra: None,
            stream,
        }
    }

    fn body(request: &ChatRequest) -> Value {
        serde_json::from_slice(&chat_body(request, Dialect::OPENAI).unwrap()).unwrap()
    }

    #[test]
    fn a_tool_round_trip_is_sent_as_openai_has_it() {
        assert_eq!(
            body(&round_trip(true)),
            json!({
                "model": "qwen3-coder",
                "messages": [
                    {"role": "system", "content": "You help."},
                    {"role": "user", "content": "What is issue 42?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_issue", "arguments": "{\"iid\": 42}"}}
                    ]},
                    {"role": "tool", "content": "{\"title\": \"Bug\"}", "tool_call_id": "call_1"}
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_issue",
                    "description": "Read an issue.",
                    "parameters": {"type": "object", "properties": {"iid": {"type": "integer"}}}
                }}],
                "max_tokens": 32768,
                "temperature": 0.0,
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn a_schema_goes_out_byte_for_byte() {
        let bytes = chat_body(&round_trip(false), Dialect::OPENAI).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(r#""parameters":{"type": "object", "properties": {"iid": {"type": "integer"}}}"#),
            "{text}"
        );
    }

    #[test]
    fn extra_fields_are_added_and_cannot_override() {
        let mut request = round_trip(false);
        request.extra = Some(r#"{"top_k": 20, "chat_template_kwargs": {"enable_thinking": false}}"#.into());
        let sent = body(&request);
        assert_eq!(
            (sent["top_k"].clone(), sent["chat_template_kwargs"].clone()),
            (json!(20), json!({"enable_thinking": false}))
        );
        request.extra = Some(r#"{"stream": true}"#.into());
        let refused = chat_body(&request, Dialect::OPENAI).unwrap_err();
        assert!(matches!(&refused, PluginError::InvalidInput(m) if m.contains("\"stream\"")), "{refused:?}");
    }

    #[test]
    fn choices_parts_and_options_are_carried() {
        let mut request = round_trip(false);
        request.messages[1].content = Some(Content::Parts(vec!["a".into(), "b".into()]));
        request.messages[1].name = Some("dev".into());
        request.messages[2].content = None;
        request.tool_choice = Some(ToolChoice::Function("get_issue".into()));
        request.parallel_tool_calls = Some(false);
        request.seed = Some(7);
        request.response_format = Some(r#"{"type":"json_object"}"#.into());
        request.user = Some("u-1".into());
        let sent = body(&request);
        assert_eq!(
            sent["messages"][1]["content"],
            json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
        );
        assert_eq!(sent["messages"][1]["name"], "dev");
        assert_eq!(sent["messages"][2]["content"], Value::Null, "an assistant turn with only tool calls");
        assert_eq!(sent["tool_choice"], json!({"type": "function", "function": {"name": "get_issue"}}));
        assert_eq!((sent["parallel_tool_calls"].clone(), sent["seed"].clone()), (json!(false), json!(7)));
        assert_eq!(
            (sent["response_format"].clone(), sent["user"].clone()),
            (json!({"type": "json_object"}), json!("u-1"))
        );
    }

    #[test]
    fn a_schema_that_is_not_json_is_the_callers_mistake() {
        let mut request = round_trip(false);
        request.tools[0].parameters = Some("{not json".into());
        let refused = chat_body(&request, Dialect::OPENAI).unwrap_err();
        assert!(matches!(&refused, PluginError::InvalidInput(m) if m.contains("get_issue")), "{refused:?}");
    }

    #[test]
    fn a_whole_answer_with_a_tool_call_is_parsed() {
        let answer = br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",
            "content":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"get_issue",
            "arguments":"{\"iid\": 42}"}}]},"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":3598,"completion_tokens":10,"total_tokens":3608}}"#;
        let parsed = parse_response(answer).unwrap();
        assert_eq!(parsed.content, None);
        assert_eq!(parsed.tool_calls.len(), 1);
        assert_eq!(
            (parsed.tool_calls[0].id.as_str(), parsed.tool_calls[0].arguments.as_str()),
            ("call_a", "{\"iid\": 42}")
        );
        assert!(matches!(parsed.finish_reason, Some(ChatFinishReason::ToolCalls)));
        assert_eq!(parsed.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((3598, 10)));
    }

    #[test]
    fn streamed_tool_call_pieces_are_parsed() {
        let first = parse_event(
            None,
            br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,
            "tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_issue","arguments":""}}]},
            "finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(first.tool_calls.len(), 1);
        assert_eq!(
            (first.tool_calls[0].id.as_deref(), first.tool_calls[0].name.as_deref()),
            (Some("call_a"), Some("get_issue"))
        );
        let piece = parse_event(
            None,
            br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"iid\""}}]}}]}"#,
        )
        .unwrap();
        assert_eq!((piece.tool_calls[0].index, piece.tool_calls[0].arguments.as_str()), (0, "{\"iid\""));
        assert_eq!(piece.tool_calls[0].id, None);
        let end = parse_event(None, br#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#).unwrap();
        assert!(matches!(end.finish_reason, Some(ChatFinishReason::ToolCalls)));
        assert!(parse_event(None, b"[DONE]").unwrap().done);
        let failed = parse_event(None, br#"{"error":{"message":"overloaded"}}"#).unwrap_err();
        assert!(matches!(failed, PluginError::MalformedResponse(m) if m.contains("overloaded")));
    }
}
