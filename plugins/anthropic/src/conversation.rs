//! Conversations with tools in the Anthropic Messages API: `tools` with `input_schema`,
//! `tool_choice`, assistant `tool_use` blocks and the user's `tool_result` blocks on the way out;
//! `tool_use` blocks and `input_json_delta` pieces on the way back.

use crate::translate::{API_VERSION, DEFAULT_MAX_TOKENS};
use crate::types::{Credential, Header, Method, PluginError, UpstreamRequest, Usage};
use aigw_plugin_sdk::chat::{
    AnswerShape, ChatChunk, ChatCompletion, ChatFinishReason, ChatRequest, ChatRole, ToolCall, ToolCallDelta,
    ToolChoice,
};
use aigw_plugin_sdk::openai_chat::{content_text, empty_chunk, extra_fields, json_text};
use aigw_plugin_sdk::{invalid, malformed, model_rules, to_json, unsupported};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Anthropic's answers are its own: the host writes OpenAI's from the parsed results.
pub fn answers() -> AnswerShape {
    AnswerShape::Canonical
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    stream: bool,
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text { text: std::borrow::Cow<'a, str> },
    ToolUse { id: &'a str, name: &'a str, input: &'a RawValue },
    ToolResult { tool_use_id: &'a str, content: std::borrow::Cow<'a, str> },
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a RawValue,
}

#[derive(Serialize)]
struct WireToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

/// A tool's arguments as the object `tool_use.input` must be (`{}` for none).
fn tool_input<'a>(arguments: &'a str, id: &str) -> Result<&'a RawValue, PluginError> {
    let arguments = if arguments.trim().is_empty() { "{}" } else { arguments };
    let input = json_text(arguments, &format_args!("the arguments of tool call {id:?}"))?;
    if !input.get().trim_start().starts_with('{') {
        return Err(invalid(format!("the arguments of tool call {id:?} are not a JSON object")));
    }
    Ok(input)
}

/// A conversation for `POST /v1/messages`: system and developer messages become `system`, the
/// assistant's tool calls `tool_use` blocks, tool results `tool_result` blocks of the next user
/// turn (Anthropic alternates user and assistant, so consecutive user-side messages are merged).
pub fn build_chat_request(request: &ChatRequest) -> Result<UpstreamRequest, PluginError> {
    if request.model.is_empty() {
        return Err(invalid("the model id is empty"));
    }
    if let Some(extra) = extra_fields(request)? {
        let names: Vec<&str> = extra.keys().map(String::as_str).collect();
        return Err(unsupported(format!("the anthropic plugin cannot carry the field(s) {}", names.join(", "))));
    }
    if request.seed.is_some() {
        return Err(unsupported("the anthropic plugin cannot carry seed: the Messages API has none"));
    }
    if request.response_format.as_deref().is_some_and(|format| !format.contains("\"text\"")) {
        return Err(unsupported(
            "the anthropic plugin cannot carry response_format: the Messages API has no JSON mode",
        ));
    }
    let mut system = Vec::new();
    let mut messages: Vec<Turn<'_>> = Vec::new();
    for message in &request.messages {
        let text = message.content.as_ref().map(content_text);
        let (role, blocks) = match message.role {
            ChatRole::System | ChatRole::Developer => {
                system.extend(text);
                continue;
            }
            ChatRole::User => ("user", text.into_iter().map(|text| Block::Text { text }).collect::<Vec<_>>()),
            ChatRole::Tool => {
                let id = message.tool_call_id.as_deref().ok_or_else(|| invalid("a tool result names no call"))?;
                ("user", vec![Block::ToolResult { tool_use_id: id, content: text.unwrap_or_default() }])
            }
            ChatRole::Assistant => {
                let mut blocks: Vec<Block<'_>> =
                    text.filter(|text| !text.is_empty()).map(|text| Block::Text { text }).into_iter().collect();
                for call in &message.tool_calls {
                    blocks.push(Block::ToolUse {
                        id: &call.id,
                        name: &call.name,
                        input: tool_input(&call.arguments, &call.id)?,
                    });
                }
                ("assistant", blocks)
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(Turn { role, content: blocks }),
        }
    }
    if messages.first().is_none_or(|turn| turn.role != "user") {
        return Err(invalid("the Messages API needs a conversation that starts with the user"));
    }
    // A closing assistant text turn is a prefill; a model that refuses one gets it as the user's.
    if let Some(last) = messages.last_mut()
        && last.role == "assistant"
        && !model_rules::accepts_assistant_prefill(&request.model)
        && last.content.iter().all(|block| matches!(block, Block::Text { .. }))
    {
        let text: String = last
            .content
            .iter()
            .map(|block| match block {
                Block::Text { text } => text.as_ref(),
                _ => "",
            })
            .collect();
        *last = Turn { role: "user", content: vec![Block::Text { text: model_rules::prefill_as_user(&text).into() }] };
    }
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            let schema = tool.parameters.as_deref().unwrap_or(r#"{"type": "object"}"#);
            let input_schema = json_text(schema, &format_args!("the parameters of tool {:?}", tool.name))?;
            Ok(WireTool { name: &tool.name, description: tool.description.as_deref(), input_schema })
        })
        .collect::<Result<Vec<_>, PluginError>>()?;
    let no_parallel = (request.parallel_tool_calls == Some(false)).then_some(true);
    let tool_choice = match (&request.tool_choice, no_parallel) {
        (None, None) => None,
        (None, Some(_)) => Some(WireToolChoice { kind: "auto", name: None, disable_parallel_tool_use: no_parallel }),
        (Some(choice), _) => Some(match choice {
            ToolChoice::Auto => WireToolChoice { kind: "auto", name: None, disable_parallel_tool_use: no_parallel },
            ToolChoice::Required => WireToolChoice { kind: "any", name: None, disable_parallel_tool_use: no_parallel },
            ToolChoice::None => WireToolChoice { kind: "none", name: None, disable_parallel_tool_use: None },
            ToolChoice::Function(name) => {
                WireToolChoice { kind: "tool", name: Some(name), disable_parallel_tool_use: no_parallel }
            }
        }),
    };
    let sampling = &request.sampling;
    let body = Body {
        model: &request.model,
        max_tokens: sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        tools,
        tool_choice,
        temperature: sampling.temperature.filter(|_| model_rules::accepts_temperature(&request.model)),
        top_p: sampling.top_p,
        stop_sequences: &sampling.stop,
        metadata: request.user.as_deref().map(|user_id| Metadata { user_id }),
        stream: request.stream,
    };
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/v1/messages".to_string(),
        headers: vec![Header { name: "anthropic-version".to_string(), value: API_VERSION.to_string() }],
        body: to_json(&body)?,
        credential: Credential::Header("x-api-key".to_string()),
    })
}

fn finish_reason(reason: &str) -> ChatFinishReason {
    match reason {
        "end_turn" | "stop_sequence" => ChatFinishReason::Stop,
        "max_tokens" => ChatFinishReason::Length,
        "tool_use" => ChatFinishReason::ToolCalls,
        "refusal" => ChatFinishReason::ContentFilter,
        other => ChatFinishReason::Other(other.to_string()),
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    content: Vec<AnswerBlock>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct AnswerBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
}

/// A whole answer: the text blocks joined, each `tool_use` block a tool call whose arguments are
/// its `input` as JSON text.
pub fn parse_chat_response(body: &[u8]) -> Result<ChatCompletion, PluginError> {
    let answer: Answer = serde_json::from_slice(body).map_err(malformed)?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in answer.content {
        match block.kind.as_str() {
            "text" => text.get_or_insert_default().push_str(block.text.as_deref().unwrap_or_default()),
            "tool_use" => tool_calls.push(ToolCall {
                id: block.id.ok_or_else(|| malformed("a tool_use block has no id"))?,
                name: block.name.ok_or_else(|| malformed("a tool_use block has no name"))?,
                arguments: block.input.map_or_else(|| "{}".to_string(), |input| input.get().to_string()),
            }),
            _ => {}
        }
    }
    Ok(ChatCompletion {
        content: text,
        tool_calls,
        finish_reason: answer.stop_reason.as_deref().map(finish_reason),
        usage: answer.usage.map(|u| Usage { input_tokens: u.input_tokens, output_tokens: u.output_tokens }),
    })
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    index: Option<u32>,
    message: Option<StartMessage>,
    content_block: Option<AnswerBlock>,
    delta: Option<Delta>,
    usage: Option<WireUsage>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct StartMessage {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    partial_json: Option<String>,
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

/// One SSE event. A tool call's pieces carry the content block's index (text blocks count too:
/// the host numbers the calls densely for the client); its id and name come with
/// `content_block_start`, its arguments with each `input_json_delta`.
pub fn parse_chat_event(event: Option<&str>, data: &[u8]) -> Result<ChatChunk, PluginError> {
    let parsed: Event = serde_json::from_slice(data).map_err(malformed)?;
    let kind = event.unwrap_or(&parsed.kind);
    let mut out = empty_chunk();
    let index = parsed.index.unwrap_or(0);
    match kind {
        "message_start" => {
            let usage = parsed.message.and_then(|m| m.usage).unwrap_or_default();
            out.usage = Some(Usage { input_tokens: usage.input_tokens, output_tokens: 0 });
        }
        "content_block_start" => match parsed.content_block {
            Some(block) if block.kind == "tool_use" => {
                out.tool_calls.push(ToolCallDelta { index, id: block.id, name: block.name, arguments: String::new() })
            }
            Some(block) if block.kind == "text" => out.content = block.text.unwrap_or_default(),
            _ => {}
        },
        "content_block_delta" => match parsed.delta {
            Some(delta) if delta.kind.as_deref() == Some("text_delta") => out.content = delta.text.unwrap_or_default(),
            Some(delta) if delta.kind.as_deref() == Some("input_json_delta") => out.tool_calls.push(ToolCallDelta {
                index,
                id: None,
                name: None,
                arguments: delta.partial_json.unwrap_or_default(),
            }),
            _ => {}
        },
        "message_delta" => {
            out.finish_reason = parsed.delta.and_then(|d| d.stop_reason).as_deref().map(finish_reason);
            out.usage = parsed.usage.map(|u| Usage { input_tokens: 0, output_tokens: u.output_tokens });
        }
        "message_stop" => out.done = true,
        "error" => {
            let message = parsed.error.and_then(|e| e.message).unwrap_or_else(|| "unknown error".into());
            return Err(malformed(format!("the model server reported an error: {message}")));
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Sampling;
    use aigw_plugin_sdk::chat::{ChatMessage, Content, Tool};
    use serde_json::{Value, json};

    fn message(role: ChatRole, text: Option<&str>) -> ChatMessage {
        ChatMessage {
            role,
            content: text.map(|t| Content::Text(t.to_string())),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    fn round_trip() -> ChatRequest {
        ChatRequest {
            model: "claude-sonnet-4-5".into(),
            messages: vec![
                message(ChatRole::System, Some("You help.")),
                message(ChatRole::User, Some("What is #42?")),
                ChatMessage {
                    tool_calls: vec![
                        ToolCall { id: "toolu_1".into(), name: "get_issue".into(), arguments: "{\"iid\": 42}".into() },
                        ToolCall { id: "toolu_2".into(), name: "get_issue".into(), arguments: String::new() },
                    ],
                    ..message(ChatRole::Assistant, Some(""))
                },
                ChatMessage {
                    tool_call_id: Some("toolu_1".into()),
                    ..message(ChatRole::Tool, Some("{\"state\": \"open\"}"))
                },
                ChatMessage { tool_call_id: Some("toolu_2".into()), ..message(ChatRole::Tool, Some("none")) },
            ],
            tools: vec![Tool {
                name: "get_issue".into(),
                description: Some("Read an issue.".into()),
                parameters: Some(r#"{"type":"object","properties":{"iid":{"type":"integer"}}}"#.into()),
                strict: None,
            }],
            tool_choice: Some(ToolChoice::Required),
            parallel_tool_calls: Some(false),
            sampling: Sampling { max_tokens: None, temperature: Some(0.0), top_p: None, stop: Vec::new() },
            seed: None,
            response_format: None,
            user: Some("user-7".into()),
            extra: None,
            stream: true,
        }
    }

    #[test]
    fn a_tool_round_trip_becomes_tool_use_and_tool_result_blocks() {
        let body: Value = serde_json::from_slice(&build_chat_request(&round_trip()).unwrap().body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": DEFAULT_MAX_TOKENS,
                "system": "You help.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "What is #42?"}]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "get_issue", "input": {"iid": 42}},
                        {"type": "tool_use", "id": "toolu_2", "name": "get_issue", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "{\"state\": \"open\"}"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "none"}
                    ]}
                ],
                "tools": [{"name": "get_issue", "description": "Read an issue.",
                           "input_schema": {"type": "object", "properties": {"iid": {"type": "integer"}}}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "temperature": 0.0,
                "metadata": {"user_id": "user-7"},
                "stream": true
            })
        );
    }

    #[test]
    fn what_the_messages_api_cannot_carry_is_refused_by_name() {
        let mut extra = round_trip();
        extra.extra = Some(r#"{"top_k": 5}"#.into());
        assert!(matches!(build_chat_request(&extra), Err(PluginError::Unsupported(m)) if m.contains("top_k")));
        let mut seeded = round_trip();
        seeded.seed = Some(1);
        assert!(matches!(build_chat_request(&seeded), Err(PluginError::Unsupported(m)) if m.contains("seed")));
        let mut bad = round_trip();
        bad.messages[2].tool_calls[0].arguments = "[1, 2]".into();
        assert!(matches!(build_chat_request(&bad), Err(PluginError::InvalidInput(m)) if m.contains("toolu_1")));
    }

    #[test]
    fn a_whole_answer_with_tool_use_is_parsed() {
        let answer = br#"{"id":"msg_1","type":"message","role":"assistant","content":[
            {"type":"text","text":"Let me look."},
            {"type":"tool_use","id":"toolu_9","name":"get_issue","input":{"iid":42}}],
            "stop_reason":"tool_use","usage":{"input_tokens":50,"output_tokens":12}}"#;
        let parsed = parse_chat_response(answer).unwrap();
        assert_eq!(parsed.content.as_deref(), Some("Let me look."));
        assert_eq!(
            (parsed.tool_calls[0].id.as_str(), parsed.tool_calls[0].arguments.as_str()),
            ("toolu_9", r#"{"iid":42}"#)
        );
        assert!(matches!(parsed.finish_reason, Some(ChatFinishReason::ToolCalls)));
    }

    #[test]
    fn streamed_tool_use_is_parsed_into_pieces() {
        let start = parse_chat_event(
            Some("content_block_start"),
            br#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_9","name":"get_issue","input":{}}}"#,
        )
        .unwrap();
        assert_eq!((start.tool_calls[0].index, start.tool_calls[0].id.as_deref()), (1, Some("toolu_9")));
        let piece = parse_chat_event(
            Some("content_block_delta"),
            br#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"iid\": 4"}}"#,
        )
        .unwrap();
        assert_eq!(piece.tool_calls[0].arguments, "{\"iid\": 4");
        let end = parse_chat_event(
            Some("message_delta"),
            br#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
        )
        .unwrap();
        assert!(matches!(end.finish_reason, Some(ChatFinishReason::ToolCalls)));
    }
}
