//! OpenAI's Chat Completions request → the canonical chat request: every field aigw interprets
//! checked (a refusal names the field, as OpenAI's `param` does), every other one kept as it came
//! for the plugin to carry or refuse.

use crate::error::GatewayError;
use crate::plugins::{chat, wit};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A chat request as the client sent it, read.
pub(super) struct ChatCall {
    /// The model the client named.
    pub(super) model: String,
    /// The canonical request (its `model` is set once the name is resolved).
    pub(super) request: chat::ChatRequest,
    /// The client asked for a usage chunk at the end of a stream.
    pub(super) include_usage: bool,
}

#[derive(Deserialize)]
struct RawRequest {
    model: Option<String>,
    messages: Option<Vec<RawMessage>>,
    tools: Option<Vec<RawTool>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<Map<String, Value>>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Stop>,
    seed: Option<i64>,
    response_format: Option<Box<RawValue>>,
    user: Option<String>,
    n: Option<u32>,
    /// Every other field, for the plugin.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    #[serde(default, deserialize_with = "present")]
    content: Option<Option<RawContent>>,
    name: Option<String>,
    tool_calls: Option<Vec<RawToolCall>>,
    tool_call_id: Option<String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Tells `"content": null` (Some(None)) from no `content` (None).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<RawContent>>, D::Error> {
    Option::<RawContent>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawContent {
    Text(String),
    Parts(Vec<RawPart>),
}

#[derive(Deserialize)]
struct RawPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    function: RawFunctionCall,
}

#[derive(Deserialize)]
struct RawFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct RawTool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<RawFunction>,
}

#[derive(Deserialize)]
struct RawFunction {
    name: String,
    description: Option<String>,
    parameters: Option<Box<RawValue>>,
    strict: Option<bool>,
}

/// A 400 naming `param`.
pub(super) fn invalid(param: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRequest { message: message.into(), param: Some(param.into()) }
}

/// Fields OpenAI defines that no provider behind aigw can answer: refused, never dropped.
const REFUSED: [(&str, &str); 3] = [
    ("audio", "audio output is not supported"),
    ("functions", "`functions` is deprecated and not supported: use `tools`"),
    ("function_call", "`function_call` is deprecated and not supported: use `tool_choice`"),
];

/// Read `body` as a chat request.
pub(super) fn parse(body: &[u8]) -> Result<ChatCall, GatewayError> {
    let raw: RawRequest = serde_json::from_slice(body).map_err(|e| GatewayError::InvalidRequest {
        message: format!("the body is not a chat completions request: {e}"),
        param: None,
    })?;
    let model = raw.model.filter(|model| !model.is_empty()).ok_or_else(|| invalid("model", "`model` is required"))?;
    let messages = raw.messages.ok_or_else(|| invalid("messages", "`messages` is required"))?;
    if messages.is_empty() {
        return Err(invalid("messages", "`messages` must hold at least one message"));
    }
    if raw.n.is_some_and(|n| n != 1) {
        return Err(invalid("n", "only one choice (`n`: 1) is supported"));
    }
    for (field, why) in REFUSED {
        if raw.extra.get(field).is_some_and(|value| !value.is_null()) {
            return Err(invalid(field, why));
        }
    }
    if let Some(modalities) = raw.extra.get("modalities")
        && modalities.as_array().is_none_or(|list| list.iter().any(|m| m != "text"))
    {
        return Err(invalid("modalities", "only text output is supported"));
    }
    let include_usage = stream_options(raw.stream_options.as_ref(), raw.stream.unwrap_or(false))?;
    let messages = messages.into_iter().enumerate().map(|(index, message)| canonical_message(index, message));
    let messages = messages.collect::<Result<Vec<_>, _>>()?;
    let tools = raw
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, tool)| canonical_tool(index, tool))
        .collect::<Result<Vec<_>, _>>()?;
    let tool_choice = raw.tool_choice.as_ref().filter(|choice| !choice.is_null()).map(tool_choice).transpose()?;
    let stop = match raw.stop {
        None => Vec::new(),
        Some(Stop::One(stop)) => vec![stop],
        Some(Stop::Many(stops)) => stops,
    };
    let mut extra = raw.extra;
    extra.retain(|field, value| !value.is_null() && !REFUSED.iter().any(|(refused, _)| refused == field));
    // Text output is what every request asks for; said explicitly, it is no request at all.
    extra.remove("modalities");
    let extra = (!extra.is_empty())
        .then(|| serde_json::to_string(&extra))
        .transpose()
        .map_err(|e| invalid("body", format!("cannot keep the other fields: {e}")))?;
    Ok(ChatCall {
        model,
        request: chat::ChatRequest {
            model: String::new(),
            messages,
            tools,
            tool_choice,
            parallel_tool_calls: raw.parallel_tool_calls,
            sampling: wit::Sampling {
                max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
                temperature: raw.temperature,
                top_p: raw.top_p,
                stop,
            },
            seed: raw.seed,
            response_format: raw.response_format.map(|format| format.get().to_string()),
            user: raw.user,
            extra,
            stream: raw.stream.unwrap_or(false),
        },
        include_usage,
    })
}

/// `stream_options`: only `include_usage`, and only with `stream`.
fn stream_options(options: Option<&Map<String, Value>>, stream: bool) -> Result<bool, GatewayError> {
    let Some(options) = options else { return Ok(false) };
    if !stream {
        return Err(invalid("stream_options", "`stream_options` is only allowed with `stream: true`"));
    }
    if let Some(other) = options.keys().find(|key| *key != "include_usage") {
        return Err(invalid(format!("stream_options.{other}"), "only `include_usage` is supported"));
    }
    match options.get("include_usage") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(include)) => Ok(*include),
        Some(_) => Err(invalid("stream_options.include_usage", "must be true or false")),
    }
}

fn canonical_message(index: usize, message: RawMessage) -> Result<chat::ChatMessage, GatewayError> {
    let at = |field: &str| format!("messages[{index}].{field}");
    let role = match message.role.as_str() {
        "system" => chat::ChatRole::System,
        "developer" => chat::ChatRole::Developer,
        "user" => chat::ChatRole::User,
        "assistant" => chat::ChatRole::Assistant,
        "tool" => chat::ChatRole::Tool,
        "function" => return Err(invalid(at("role"), "the `function` role is deprecated: use `tool`")),
        other => return Err(invalid(at("role"), format!("unknown role {other:?}"))),
    };
    // Fields a client echoes back from an earlier answer with no value (`refusal: null`,
    // `annotations: []`) say nothing; any other field is one no provider behind aigw can carry.
    let empty = |value: &Value| value.is_null() || value.as_array().is_some_and(Vec::is_empty);
    if let Some((field, _)) = message.other.iter().find(|(_, value)| !empty(value)) {
        return Err(invalid(at(field), format!("the message field `{field}` is not supported")));
    }
    let content = match message.content {
        None | Some(None) => None,
        Some(Some(RawContent::Text(text))) => Some(chat::Content::Text(text)),
        Some(Some(RawContent::Parts(parts))) => {
            let texts = parts
                .into_iter()
                .enumerate()
                .map(|(part, raw)| match (raw.kind.as_str(), raw.text) {
                    ("text", Some(text)) => Ok(text),
                    ("text", None) => Err(invalid(at(&format!("content[{part}].text")), "a text part needs `text`")),
                    (kind, _) => Err(invalid(
                        at(&format!("content[{part}]")),
                        format!("`{kind}` content parts are not supported: only text"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(chat::Content::Parts(texts))
        }
    };
    let tool_calls = message.tool_calls.unwrap_or_default();
    if !tool_calls.is_empty() && !matches!(role, chat::ChatRole::Assistant) {
        return Err(invalid(at("tool_calls"), "only assistant messages carry tool calls"));
    }
    if content.is_none() && tool_calls.is_empty() && !matches!(role, chat::ChatRole::Assistant) {
        return Err(invalid(at("content"), "the message has no content"));
    }
    let tool_call_id = message.tool_call_id;
    if matches!(role, chat::ChatRole::Tool) && tool_call_id.is_none() {
        return Err(invalid(at("tool_call_id"), "a tool message must say which call it answers"));
    }
    let tool_calls = tool_calls
        .into_iter()
        .enumerate()
        .map(|(call, raw)| {
            if raw.kind.as_deref().is_some_and(|kind| kind != "function") {
                return Err(invalid(at(&format!("tool_calls[{call}].type")), "only `function` tool calls exist"));
            }
            Ok(chat::ToolCall { id: raw.id, name: raw.function.name, arguments: raw.function.arguments })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(chat::ChatMessage { role, content, name: message.name, tool_calls, tool_call_id })
}

fn canonical_tool(index: usize, tool: RawTool) -> Result<chat::Tool, GatewayError> {
    if tool.kind != "function" {
        return Err(invalid(
            format!("tools[{index}].type"),
            format!("`{}` tools are not supported: only `function`", tool.kind),
        ));
    }
    let function =
        tool.function.ok_or_else(|| invalid(format!("tools[{index}].function"), "a function tool needs `function`"))?;
    if function.name.is_empty() {
        return Err(invalid(format!("tools[{index}].function.name"), "a function needs a name"));
    }
    Ok(chat::Tool {
        name: function.name,
        description: function.description,
        parameters: function.parameters.map(|schema| schema.get().to_string()),
        strict: function.strict,
    })
}

fn tool_choice(choice: &Value) -> Result<chat::ToolChoice, GatewayError> {
    let refused = || {
        invalid(
            "tool_choice",
            "must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}",
        )
    };
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(chat::ToolChoice::Auto),
            "none" => Ok(chat::ToolChoice::None),
            "required" => Ok(chat::ToolChoice::Required),
            _ => Err(refused()),
        },
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("function") => object
            .get("function")
            .and_then(|function| function.get("name"))
            .and_then(Value::as_str)
            .map(|name| chat::ToolChoice::Function(name.to_string()))
            .ok_or_else(refused),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param_of(body: Value) -> Option<String> {
        match parse(body.to_string().as_bytes()) {
            Err(GatewayError::InvalidRequest { param, .. }) => param,
            Err(other) => panic!("unexpected {other:?}"),
            Ok(_) => None,
        }
    }

    fn user() -> Value {
        json!([{"role": "user", "content": "hi"}])
    }

    #[test]
    fn a_tool_round_trip_is_read_whole() {
        let call = parse(
            json!({
                "model": "coder",
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                    {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{}"}
                ],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type":  "object"}}}],
                "tool_choice": "required",
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 10,
                "max_completion_tokens": 20,
                "stop": "END",
                "top_k": 5
            })
            .to_string()
            // A schema written with its author's spacing.
            .replace(r#"{"type":"object"}"#, r#"{"type":  "object"}"#)
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(call.model, "coder");
        assert!(call.include_usage && call.request.stream);
        let messages = &call.request.messages;
        assert!(matches!(&messages[1].content, Some(chat::Content::Parts(parts)) if parts == &["a", "b"]));
        assert!(messages[2].content.is_none() && messages[2].tool_calls[0].arguments == "{\"x\": 1}");
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(call.request.tools[0].parameters.as_deref(), Some(r#"{"type":  "object"}"#), "schemas as written");
        assert!(matches!(call.request.tool_choice, Some(chat::ToolChoice::Required)));
        assert_eq!(call.request.sampling.max_tokens, Some(20), "max_completion_tokens wins");
        assert_eq!(call.request.sampling.stop, ["END"]);
        assert_eq!(call.request.extra.as_deref(), Some(r#"{"top_k":5}"#));
    }

    #[test]
    fn what_cannot_be_served_is_refused_naming_the_field() {
        let cases = [
            (json!({"messages": user()}), "model"),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (json!({"model": "m", "messages": user(), "n": 2}), "n"),
            (json!({"model": "m", "messages": user(), "audio": {"voice": "x"}}), "audio"),
            (json!({"model": "m", "messages": user(), "modalities": ["text", "audio"]}), "modalities"),
            (json!({"model": "m", "messages": user(), "functions": [{}]}), "functions"),
            (json!({"model": "m", "messages": user(), "stream_options": {"include_usage": true}}), "stream_options"),
            (json!({"model": "m", "messages": user(), "stream": true, "stream_options": {"x": 1}}), "stream_options.x"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "messages[0].content[0]",
            ),
            (json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
            (json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]}),
                "messages[0].audio",
            ),
            (json!({"model": "m", "messages": [{"role": "user"}]}), "messages[0].content"),
            (json!({"model": "m", "messages": user(), "tools": [{"type": "web_search"}]}), "tools[0].type"),
            (json!({"model": "m", "messages": user(), "tool_choice": "sometimes"}), "tool_choice"),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(body.clone()).as_deref(), Some(param), "{body}");
        }
        assert_eq!(param_of(json!({"model": "m", "messages": user(), "n": 1, "modalities": ["text"]})), None, "within");
    }
}
