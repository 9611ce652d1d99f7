//! The `chat` interface for a provider that carries text only: a conversation without tools
//! becomes the canonical model request its `build-request` already handles, and the answers
//! become chat results. Anything beyond text is refused naming the field, never dropped.

use crate::chat::{ChatChunk, ChatCompletion, ChatFinishReason, ChatRequest, ChatRole};
use crate::openai_chat::{content_text, extra_fields};
use crate::types::{Completion, FinishReason, Message, ModelRequest, PluginError, Role, StreamChunk};
use crate::unsupported;

/// `request` as a text conversation for `api` (named in errors), or why it is not one.
pub fn as_model_request(request: &ChatRequest, api: &str) -> Result<ModelRequest, PluginError> {
    let refused = |what: &str| unsupported(format!("the {api} plugin cannot carry {what}"));
    if !request.tools.is_empty() || request.tool_choice.is_some() {
        return Err(refused("tools"));
    }
    if request.seed.is_some() {
        return Err(refused("seed"));
    }
    if request.response_format.is_some() {
        return Err(refused("response_format"));
    }
    if let Some(extra) = extra_fields(request)? {
        let names: Vec<&str> = extra.keys().map(String::as_str).collect();
        return Err(refused(&format!("the field(s) {}", names.join(", "))));
    }
    let messages = request
        .messages
        .iter()
        .map(|message| {
            let role = match message.role {
                ChatRole::System | ChatRole::Developer => Role::System,
                ChatRole::User => Role::User,
                ChatRole::Assistant if message.tool_calls.is_empty() => Role::Assistant,
                ChatRole::Assistant | ChatRole::Tool => return Err(refused("tool calls or tool results")),
            };
            let content =
                message.content.as_ref().map(|content| content_text(content).into_owned()).unwrap_or_default();
            Ok(Message { role, content })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModelRequest {
        model: request.model.clone(),
        messages,
        fill_in_middle: None,
        sampling: request.sampling.clone(),
        stream: request.stream,
    })
}

/// A canonical finish reason as a chat one.
pub fn chat_finish_reason(reason: FinishReason) -> ChatFinishReason {
    match reason {
        FinishReason::Stop => ChatFinishReason::Stop,
        FinishReason::Length => ChatFinishReason::Length,
        FinishReason::Other(other) => ChatFinishReason::Other(other),
    }
}

/// A whole text answer as a chat one.
pub fn completion(completion: Completion) -> ChatCompletion {
    ChatCompletion {
        content: Some(completion.text),
        tool_calls: Vec::new(),
        finish_reason: completion.finish_reason.map(chat_finish_reason),
        usage: completion.usage,
    }
}

/// A text stream event as a chat one.
pub fn chunk(chunk: StreamChunk) -> ChatChunk {
    ChatChunk {
        content: chunk.text,
        tool_calls: Vec::new(),
        finish_reason: chunk.finish_reason.map(chat_finish_reason),
        usage: chunk.usage,
        done: chunk.done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{ChatMessage, Content, Tool, ToolCall};
    use crate::types::Sampling;

    fn request() -> ChatRequest {
        let message = |role, text: &str| ChatMessage {
            role,
            content: Some(Content::Parts(vec![text.into(), "!".into()])),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        ChatRequest {
            model: "m".into(),
            messages: vec![message(ChatRole::Developer, "be brief"), message(ChatRole::User, "hi")],
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            sampling: Sampling { max_tokens: Some(5), temperature: None, top_p: None, stop: Vec::new() },
            seed: None,
            response_format: None,
            user: None,
            extra: None,
            stream: true,
        }
    }

    #[test]
    fn a_text_conversation_becomes_a_model_request_and_the_rest_is_refused_by_name() {
        let text = as_model_request(&request(), "example").unwrap();
        assert!(matches!(text.messages[0].role, Role::System));
        assert_eq!((text.messages[1].content.as_str(), text.sampling.max_tokens), ("hi!", Some(5)));
        let mut tools = request();
        tools.tools.push(Tool { name: "f".into(), description: None, parameters: None, strict: None });
        assert!(
            matches!(as_model_request(&tools, "example"), Err(PluginError::Unsupported(m)) if m.contains("example plugin cannot carry tools"))
        );
        let mut called = request();
        called.messages[1].role = ChatRole::Assistant;
        called.messages[1].tool_calls.push(ToolCall { id: "c".into(), name: "f".into(), arguments: "{}".into() });
        assert!(as_model_request(&called, "example").is_err());
        let mut extra = request();
        extra.extra = Some(r#"{"top_k": 1}"#.into());
        assert!(matches!(as_model_request(&extra, "example"), Err(PluginError::Unsupported(m)) if m.contains("top_k")));
    }
}
