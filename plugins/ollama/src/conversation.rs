//! Conversations with tools in Ollama's `/api/chat`: `tools` in OpenAI's function shape, the
//! assistant's `tool_calls` with arguments as objects, tool results as `tool` messages naming
//! the tool; Ollama answers a call whole, in one line.

use crate::types::{Credential, Method, PluginError, UpstreamRequest, Usage};
use aigw_plugin_sdk::chat::{
    AnswerShape, ChatChunk, ChatCompletion, ChatFinishReason, ChatMessage, ChatRequest, ChatRole, ToolCall,
    ToolCallDelta, ToolChoice,
};
use aigw_plugin_sdk::openai_chat::{content_text, empty_chunk, extra_fields, json_text};
use aigw_plugin_sdk::{invalid, malformed, to_json, unsupported};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Ollama's answers are its own: the host writes OpenAI's from the parsed results.
pub fn answers() -> AnswerShape {
    AnswerShape::Canonical
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    stream: bool,
    options: Options<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
}

#[derive(Serialize)]
struct WireCall<'a> {
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: &'a RawValue,
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
}

/// The name of the tool whose call `id` a tool message answers, from the assistant's calls.
fn called_tool<'a>(messages: &'a [ChatMessage], id: &str) -> Option<&'a str> {
    messages.iter().flat_map(|message| &message.tool_calls).find(|call| call.id == id).map(|call| call.name.as_str())
}

/// A conversation for `POST /api/chat`. Ollama has no tool choice beyond letting the model
/// decide: any other is refused, as are fields it has no place for. `seed` goes to `options`,
/// a JSON `response_format` to `format`.
pub fn build_chat_request(request: &ChatRequest) -> Result<UpstreamRequest, PluginError> {
    if request.model.is_empty() {
        return Err(invalid("the model id is empty"));
    }
    let refuse = |what: &str| Err(unsupported(format!("the ollama plugin cannot carry {what}")));
    if let Some(extra) = extra_fields(request)? {
        let names: Vec<&str> = extra.keys().map(String::as_str).collect();
        return refuse(&format!("the field(s) {}", names.join(", ")));
    }
    if !matches!(request.tool_choice, None | Some(ToolChoice::Auto)) {
        return refuse("tool_choice other than auto: Ollama lets the model decide");
    }
    if request.parallel_tool_calls == Some(false) {
        return refuse("parallel_tool_calls false");
    }
    if request.user.is_some() {
        return refuse("user: Ollama has no field for it");
    }
    // OpenAI's `json_schema` format carries the schema Ollama's `format` takes; `json_object`
    // is Ollama's `"json"`.
    let format_value: Option<serde_json::Value> = request
        .response_format
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| invalid(format!("response_format is not JSON: {e}")))?;
    let format_text = match format_value.as_ref().and_then(|f| f.get("type")).and_then(serde_json::Value::as_str) {
        None | Some("text") => None,
        Some("json_object") => Some("\"json\"".to_string()),
        Some("json_schema") => format_value
            .as_ref()
            .and_then(|f| f.pointer("/json_schema/schema"))
            .map(ToString::to_string)
            .or_else(|| Some("\"json\"".to_string())),
        Some(other) => return refuse(&format!("response_format {other:?}")),
    };
    let format = format_text.as_deref().map(|text| json_text(text, &"response_format")).transpose()?;
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let content = message.content.as_ref().map(content_text).unwrap_or_default();
        let tool_calls = message
            .tool_calls
            .iter()
            .map(|call| {
                let arguments = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
                let arguments = json_text(arguments, &format_args!("the arguments of tool call {:?}", call.id))?;
                Ok(WireCall { function: WireFunctionCall { name: &call.name, arguments } })
            })
            .collect::<Result<Vec<_>, PluginError>>()?;
        let (role, tool_name) = match message.role {
            ChatRole::System | ChatRole::Developer => ("system", None),
            ChatRole::User => ("user", None),
            ChatRole::Assistant => ("assistant", None),
            ChatRole::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                ("tool", called_tool(&request.messages, id))
            }
        };
        messages.push(Message { role, content, tool_calls, tool_name });
    }
    if messages.is_empty() {
        return Err(invalid("the request has no messages"));
    }
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            let parameters = tool
                .parameters
                .as_deref()
                .map(|schema| json_text(schema, &format_args!("the parameters of tool {:?}", tool.name)))
                .transpose()?;
            Ok(WireTool {
                kind: "function",
                function: WireFunction { name: &tool.name, description: tool.description.as_deref(), parameters },
            })
        })
        .collect::<Result<Vec<_>, PluginError>>()?;
    let sampling = &request.sampling;
    let body = Body {
        model: &request.model,
        messages,
        tools,
        stream: request.stream,
        options: Options {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            num_predict: sampling.max_tokens,
            stop: &sampling.stop,
            seed: request.seed,
        },
        format,
    };
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/api/chat".to_string(),
        headers: Vec::new(),
        body: to_json(&body)?,
        credential: Credential::Bearer,
    })
}

#[derive(Deserialize)]
struct Answer {
    message: Option<AnswerMessage>,
    #[serde(default)]
    done: bool,
    done_reason: Option<String>,
    prompt_eval_count: Option<u32>,
    eval_count: Option<u32>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<AnswerCall>,
}

#[derive(Deserialize)]
struct AnswerCall {
    id: Option<String>,
    function: AnswerFunction,
}

#[derive(Deserialize)]
struct AnswerFunction {
    name: String,
    arguments: Option<Box<RawValue>>,
}

/// FNV-1a of `text`: a stable number for a call Ollama gave no id.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// A call as a canonical one: Ollama's id, or one derived from the call itself (older Ollama
/// sends none; the client needs one to answer it).
fn tool_call(call: AnswerCall) -> ToolCall {
    let arguments = call.function.arguments.map_or_else(|| "{}".to_string(), |a| a.get().to_string());
    let id = call.id.unwrap_or_else(|| {
        // From the arguments' JSON, not their spacing: a whole answer and a stream line may
        // space the same object differently.
        let compact =
            serde_json::from_str::<serde_json::Value>(&arguments).map_or(arguments.clone(), |v| v.to_string());
        format!("call_{:016x}", fnv(&format!("{}{compact}", call.function.name)))
    });
    ToolCall { id, name: call.function.name, arguments }
}

/// The answer's calls finish it with `tool_calls`, whatever Ollama says (it says `stop`).
fn finish(answer: &Answer, calls: bool) -> Option<ChatFinishReason> {
    answer.done_reason.as_deref().map(|reason| match reason {
        _ if calls => ChatFinishReason::ToolCalls,
        "stop" => ChatFinishReason::Stop,
        "length" => ChatFinishReason::Length,
        other => ChatFinishReason::Other(other.to_string()),
    })
}

fn parse(data: &[u8]) -> Result<Answer, PluginError> {
    let answer: Answer = serde_json::from_slice(data).map_err(malformed)?;
    if let Some(error) = &answer.error {
        return Err(malformed(format!("the model server reported an error: {error}")));
    }
    Ok(answer)
}

fn usage(answer: &Answer) -> Option<Usage> {
    match (answer.prompt_eval_count, answer.eval_count) {
        (None, None) => None,
        (input, output) => Some(Usage { input_tokens: input.unwrap_or(0), output_tokens: output.unwrap_or(0) }),
    }
}

/// A whole answer.
pub fn parse_chat_response(body: &[u8]) -> Result<ChatCompletion, PluginError> {
    let mut answer = parse(body)?;
    let message = answer.message.take();
    let (content, calls) = message.map(|m| (m.content, m.tool_calls)).unwrap_or_default();
    let tool_calls: Vec<ToolCall> = calls.into_iter().map(tool_call).collect();
    Ok(ChatCompletion {
        content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
        finish_reason: finish(&answer, !tool_calls.is_empty()),
        usage: usage(&answer),
        tool_calls,
    })
}

/// One NDJSON line: text, or whole tool calls (each its own index, from its id, so that calls
/// in different lines stay apart), and on the last line the reason and counts. (Ollama ends a
/// stream that called tools in an earlier line with `stop`; the host reports `tool_calls` for a
/// stream that had any.)
pub fn parse_chat_event(_event: Option<&str>, data: &[u8]) -> Result<ChatChunk, PluginError> {
    let mut answer = parse(data)?;
    let mut out = empty_chunk();
    if let Some(message) = answer.message.take() {
        out.content = message.content;
        out.tool_calls = message
            .tool_calls
            .into_iter()
            .map(|call| {
                let call = tool_call(call);
                ToolCallDelta {
                    index: fnv(&call.id) as u32,
                    id: Some(call.id),
                    name: Some(call.name),
                    arguments: call.arguments,
                }
            })
            .collect();
    }
    out.finish_reason = finish(&answer, !out.tool_calls.is_empty());
    out.usage = usage(&answer);
    out.done = answer.done;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Sampling;
    use aigw_plugin_sdk::chat::{Content, Tool};
    use serde_json::{Value, json};

    fn message(role: ChatRole, text: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: Some(Content::Text(text.into())),
            name: None,
            tool_calls: vec![],
            tool_call_id: None,
        }
    }

    #[test]
    fn a_tool_round_trip_is_sent_as_ollama_has_it() {
        let request = ChatRequest {
            model: "qwen3:8b".into(),
            messages: vec![
                message(ChatRole::User, "What is #42?"),
                ChatMessage {
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_issue".into(),
                        arguments: "{\"iid\": 42}".into(),
                    }],
                    ..message(ChatRole::Assistant, "")
                },
                ChatMessage { tool_call_id: Some("call_1".into()), ..message(ChatRole::Tool, "open") },
            ],
            tools: vec![Tool {
                name: "get_issue".into(),
                description: None,
                parameters: Some("{\"type\":\"object\"}".into()),
                strict: None,
            }],
            tool_choice: None,
            parallel_tool_calls: None,
            sampling: Sampling { max_tokens: None, temperature: None, top_p: None, stop: vec![] },
            seed: Some(3),
            response_format: Some(r#"{"type":"json_object"}"#.into()),
            user: None,
            extra: None,
            stream: true,
        };
        let body: Value = serde_json::from_slice(&build_chat_request(&request).unwrap().body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "qwen3:8b",
                "messages": [
                    {"role": "user", "content": "What is #42?"},
                    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_issue", "arguments": {"iid": 42}}}]},
                    {"role": "tool", "content": "open", "tool_name": "get_issue"}
                ],
                "tools": [{"type": "function", "function": {"name": "get_issue", "parameters": {"type": "object"}}}],
                "stream": true,
                "options": {"seed": 3},
                "format": "json"
            })
        );
    }

    #[test]
    fn whole_tool_calls_are_parsed_with_an_id() {
        let line = br#"{"model":"qwen3:8b","message":{"role":"assistant","content":"","tool_calls":[
            {"function":{"name":"get_issue","arguments":{"iid":42}}}]},"done":true,"done_reason":"stop",
            "prompt_eval_count":20,"eval_count":8}"#;
        let whole = parse_chat_response(line).unwrap();
        assert!(whole.content.is_none());
        assert!(whole.tool_calls[0].id.starts_with("call_"));
        assert_eq!(whole.tool_calls[0].arguments, r#"{"iid":42}"#);
        assert!(matches!(whole.finish_reason, Some(ChatFinishReason::ToolCalls)));
        let streamed = parse_chat_event(None, line).unwrap();
        assert_eq!(
            streamed.tool_calls[0].id.as_deref(),
            Some(whole.tool_calls[0].id.as_str()),
            "the same id both ways"
        );
        assert!(streamed.done);
    }
}
