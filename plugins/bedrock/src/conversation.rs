//! Conversations with tools in Bedrock's Converse API: `toolConfig` (`toolSpec` with its
//! `inputSchema.json`, `toolChoice`), assistant `toolUse` blocks and the user's `toolResult`
//! blocks on the way out; `toolUse` blocks and ConverseStream's `toolUse` input pieces back.

use crate::translate::{SIGNING_SERVICE, path_segment};
use crate::types::{Credential, Method, PluginError, UpstreamRequest, Usage};
use aigw_plugin_sdk::chat::{
    AnswerShape, ChatChunk, ChatCompletion, ChatFinishReason, ChatRequest, ChatRole, ToolCall, ToolCallDelta,
    ToolChoice,
};
use aigw_plugin_sdk::openai_chat::{content_text, empty_chunk, extra_fields, json_text};
use aigw_plugin_sdk::{invalid, malformed, model_rules, to_json, unsupported};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Bedrock's answers are its own: the host writes OpenAI's from the parsed results.
pub fn answers() -> AnswerShape {
    AnswerShape::Canonical
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_config: Option<InferenceConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
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

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Block<'a> {
    Text(std::borrow::Cow<'a, str>),
    ToolUse(ToolUse<'a>),
    ToolResult(ToolResult<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse<'a> {
    tool_use_id: &'a str,
    name: &'a str,
    input: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResult<'a> {
    tool_use_id: &'a str,
    content: [ResultText<'a>; 1],
}

#[derive(Serialize)]
struct ResultText<'a> {
    text: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTool<'a> {
    tool_spec: ToolSpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: InputSchema<'a>,
}

#[derive(Serialize)]
struct InputSchema<'a> {
    json: &'a RawValue,
}

/// A tool's arguments as the object `toolUse.input` must be (`{}` for none).
fn tool_input<'a>(arguments: &'a str, id: &str) -> Result<&'a RawValue, PluginError> {
    let arguments = if arguments.trim().is_empty() { "{}" } else { arguments };
    let input = json_text(arguments, &format_args!("the arguments of tool call {id:?}"))?;
    if !input.get().trim_start().starts_with('{') {
        return Err(invalid(format!("the arguments of tool call {id:?} are not a JSON object")));
    }
    Ok(input)
}

/// A conversation for `POST /model/{id}/converse` (or `converse-stream`), signed by the host.
/// System and developer messages become `system` blocks; the assistant's tool calls `toolUse`
/// blocks; tool results `toolResult` blocks of the next user turn (Converse alternates roles, so
/// consecutive user-side messages are merged).
pub fn build_chat_request(request: &ChatRequest) -> Result<UpstreamRequest, PluginError> {
    if request.model.is_empty() {
        return Err(invalid("the model id is empty"));
    }
    let refuse = |what: &str| Err(unsupported(format!("the bedrock plugin cannot carry {what}")));
    if let Some(extra) = extra_fields(request)? {
        let names: Vec<&str> = extra.keys().map(String::as_str).collect();
        return refuse(&format!("the field(s) {}", names.join(", ")));
    }
    if request.seed.is_some() {
        return refuse("seed: the Converse API has none");
    }
    if request.response_format.is_some() {
        return refuse("response_format: the Converse API has no JSON mode");
    }
    if request.user.is_some() {
        return refuse("user: the Converse API has no field for it");
    }
    if request.parallel_tool_calls == Some(false) {
        return refuse("parallel_tool_calls false: the Converse API cannot turn parallel calls off");
    }
    let mut system = Vec::new();
    let mut messages: Vec<Turn<'_>> = Vec::new();
    for message in &request.messages {
        let text = message.content.as_ref().map(content_text);
        let (role, blocks) = match message.role {
            ChatRole::System | ChatRole::Developer => {
                system.extend(text.map(Block::Text));
                continue;
            }
            ChatRole::User => ("user", text.into_iter().map(Block::Text).collect::<Vec<_>>()),
            ChatRole::Tool => {
                let id = message.tool_call_id.as_deref().ok_or_else(|| invalid("a tool result names no call"))?;
                let content = [ResultText { text: text.unwrap_or_default() }];
                ("user", vec![Block::ToolResult(ToolResult { tool_use_id: id, content })])
            }
            ChatRole::Assistant => {
                let mut blocks: Vec<Block<'_>> =
                    text.filter(|text| !text.is_empty()).map(Block::Text).into_iter().collect();
                for call in &message.tool_calls {
                    let input = tool_input(&call.arguments, &call.id)?;
                    blocks.push(Block::ToolUse(ToolUse { tool_use_id: &call.id, name: &call.name, input }));
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
        return Err(invalid("the Converse API needs a conversation that starts with the user"));
    }
    // A closing assistant text turn is a prefill; a model that refuses one gets it as the user's,
    // appended to the user turn before it.
    let prefill_refused = messages.last().is_some_and(|last| {
        last.role == "assistant"
            && last.content.iter().all(|block| matches!(block, Block::Text(_)))
            && !model_rules::accepts_assistant_prefill(&request.model)
    });
    if prefill_refused && let Some(last) = messages.pop() {
        let text: String = last
            .content
            .iter()
            .map(|block| match block {
                Block::Text(text) => text.as_ref(),
                _ => "",
            })
            .collect();
        let block = Block::Text(model_rules::prefill_as_user(&text).into());
        match messages.last_mut() {
            Some(previous) => previous.content.push(block),
            None => messages.push(Turn { role: "user", content: vec![block] }),
        }
    }
    let tool_choice = match &request.tool_choice {
        None | Some(ToolChoice::Auto) => None,
        Some(ToolChoice::Required) => Some(serde_json::json!({"any": {}})),
        Some(ToolChoice::Function(name)) => Some(serde_json::json!({"tool": {"name": name}})),
        Some(ToolChoice::None) => {
            return refuse("tool_choice none: the Converse API has no such choice; offer no tools");
        }
    };
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            let schema = tool.parameters.as_deref().unwrap_or(r#"{"type": "object"}"#);
            let json = json_text(schema, &format_args!("the parameters of tool {:?}", tool.name))?;
            Ok(WireTool {
                tool_spec: ToolSpec {
                    name: &tool.name,
                    description: tool.description.as_deref(),
                    input_schema: InputSchema { json },
                },
            })
        })
        .collect::<Result<Vec<_>, PluginError>>()?;
    let sampling = &request.sampling;
    let inference_config = InferenceConfig {
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature.filter(|_| model_rules::accepts_temperature(&request.model)),
        top_p: sampling.top_p,
        stop_sequences: &sampling.stop,
    };
    let inference_config = (inference_config.max_tokens.is_some()
        || inference_config.temperature.is_some()
        || inference_config.top_p.is_some()
        || !inference_config.stop_sequences.is_empty())
    .then_some(inference_config);
    let body = Body {
        messages,
        system,
        inference_config,
        tool_config: (!tools.is_empty()).then_some(ToolConfig { tools, tool_choice }),
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

fn finish_reason(reason: &str) -> ChatFinishReason {
    match reason {
        "end_turn" | "stop_sequence" => ChatFinishReason::Stop,
        "max_tokens" => ChatFinishReason::Length,
        "tool_use" => ChatFinishReason::ToolCalls,
        "content_filtered" | "guardrail_intervened" => ChatFinishReason::ContentFilter,
        other => ChatFinishReason::Other(other.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputBlock {
    text: Option<String>,
    tool_use: Option<OutputToolUse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputToolUse {
    tool_use_id: String,
    name: String,
    input: Option<Box<RawValue>>,
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

/// A whole Converse answer: its text blocks joined, each `toolUse` block a tool call.
pub fn parse_chat_response(body: &[u8]) -> Result<ChatCompletion, PluginError> {
    let answer: Answer = serde_json::from_slice(body).map_err(malformed)?;
    let message = answer.output.and_then(|o| o.message).ok_or_else(|| malformed("the answer has no output message"))?;
    let mut content: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in message.content {
        if let Some(text) = block.text {
            content.get_or_insert_default().push_str(&text);
        }
        if let Some(tool) = block.tool_use {
            let arguments = tool.input.map_or_else(|| "{}".to_string(), |input| input.get().to_string());
            tool_calls.push(ToolCall { id: tool.tool_use_id, name: tool.name, arguments });
        }
    }
    Ok(ChatCompletion {
        content,
        tool_calls,
        finish_reason: answer.stop_reason.as_deref().map(finish_reason),
        usage: answer.usage.map(Usage::from),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamEvent {
    content_block_index: Option<u32>,
    start: Option<Start>,
    delta: Option<Delta>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Start {
    tool_use: Option<StartToolUse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartToolUse {
    tool_use_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delta {
    text: Option<String>,
    tool_use: Option<DeltaToolUse>,
}

#[derive(Deserialize)]
struct DeltaToolUse {
    input: Option<String>,
}

/// One ConverseStream event: a tool call's id and name come with `contentBlockStart`, its
/// arguments in `contentBlockDelta` pieces, each carrying the content block's index.
pub fn parse_chat_event(event: Option<&str>, data: &[u8]) -> Result<ChatChunk, PluginError> {
    let Some(name) = event else {
        return Ok(empty_chunk());
    };
    let parsed = || serde_json::from_slice::<StreamEvent>(data).map_err(malformed);
    if name.ends_with("Exception") {
        let message = parsed().ok().and_then(|e| e.message).unwrap_or_else(|| "(no message)".to_string());
        return Err(malformed(format!("Bedrock reported {name}: {message}")));
    }
    let mut out = empty_chunk();
    match name {
        "contentBlockStart" => {
            let event = parsed()?;
            if let Some(tool) = event.start.and_then(|start| start.tool_use) {
                out.tool_calls.push(ToolCallDelta {
                    index: event.content_block_index.unwrap_or(0),
                    id: Some(tool.tool_use_id),
                    name: Some(tool.name),
                    arguments: String::new(),
                });
            }
        }
        "contentBlockDelta" => {
            let event = parsed()?;
            let index = event.content_block_index.unwrap_or(0);
            if let Some(delta) = event.delta {
                out.content = delta.text.unwrap_or_default();
                if let Some(tool) = delta.tool_use {
                    out.tool_calls.push(ToolCallDelta {
                        index,
                        id: None,
                        name: None,
                        arguments: tool.input.unwrap_or_default(),
                    });
                }
            }
        }
        "messageStop" => out.finish_reason = parsed()?.stop_reason.as_deref().map(finish_reason),
        "metadata" => {
            out.usage = parsed()?.usage.map(Usage::from);
            out.done = true;
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
            model: "anthropic.claude-sonnet-4-5-20250929-v1:0".into(),
            messages: vec![
                message(ChatRole::System, Some("You help.")),
                message(ChatRole::User, Some("What is #42?")),
                ChatMessage {
                    tool_calls: vec![ToolCall {
                        id: "tooluse_1".into(),
                        name: "get_issue".into(),
                        arguments: "{\"iid\": 42}".into(),
                    }],
                    ..message(ChatRole::Assistant, None)
                },
                ChatMessage { tool_call_id: Some("tooluse_1".into()), ..message(ChatRole::Tool, Some("open")) },
            ],
            tools: vec![Tool {
                name: "get_issue".into(),
                description: None,
                parameters: Some(r#"{"type":"object"}"#.into()),
                strict: None,
            }],
            tool_choice: Some(ToolChoice::Function("get_issue".into())),
            parallel_tool_calls: None,
            sampling: Sampling { max_tokens: Some(100), temperature: None, top_p: None, stop: Vec::new() },
            seed: None,
            response_format: None,
            user: None,
            extra: None,
            stream: false,
        }
    }

    #[test]
    fn a_tool_round_trip_becomes_tool_use_and_tool_result_blocks() {
        let built = build_chat_request(&round_trip()).unwrap();
        assert_eq!(built.path, "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse");
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(
            body,
            json!({
                "messages": [
                    {"role": "user", "content": [{"text": "What is #42?"}]},
                    {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_issue", "input": {"iid": 42}}}]},
                    {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "open"}]}}]}
                ],
                "system": [{"text": "You help."}],
                "inferenceConfig": {"maxTokens": 100},
                "toolConfig": {
                    "tools": [{"toolSpec": {"name": "get_issue", "inputSchema": {"json": {"type": "object"}}}}],
                    "toolChoice": {"tool": {"name": "get_issue"}}
                }
            })
        );
        let mut none = round_trip();
        none.tool_choice = Some(ToolChoice::None);
        assert!(matches!(build_chat_request(&none), Err(PluginError::Unsupported(m)) if m.contains("tool_choice")));
    }

    #[test]
    fn tool_use_is_parsed_whole_and_streamed() {
        let whole = parse_chat_response(
            br#"{"output":{"message":{"role":"assistant","content":[{"text":"Looking."},
            {"toolUse":{"toolUseId":"tooluse_9","name":"get_issue","input":{"iid":42}}}]}},
            "stopReason":"tool_use","usage":{"inputTokens":5,"outputTokens":3}}"#,
        )
        .unwrap();
        assert_eq!(whole.content.as_deref(), Some("Looking."));
        assert_eq!(whole.tool_calls[0].arguments, r#"{"iid":42}"#);
        assert!(matches!(whole.finish_reason, Some(ChatFinishReason::ToolCalls)));
        let start = parse_chat_event(
            Some("contentBlockStart"),
            br#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_9","name":"get_issue"}}}"#,
        )
        .unwrap();
        assert_eq!((start.tool_calls[0].index, start.tool_calls[0].id.as_deref()), (1, Some("tooluse_9")));
        let piece = parse_chat_event(
            Some("contentBlockDelta"),
            br#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"iid\""}}}"#,
        )
        .unwrap();
        assert_eq!(piece.tool_calls[0].arguments, "{\"iid\"");
    }
}
