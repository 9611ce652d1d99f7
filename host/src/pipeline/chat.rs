//! A conversation through the model API: a chat request for a named model, built by the plugin's
//! `chat` export (by its text export, for a plugin built before `chat` existed, when the
//! conversation is text only), answered whole or as a stream of chat pieces.

use super::events::{ChatPiece, ChunkStream};
use super::{Call, ModelTarget, Prepared};
use crate::error::GatewayError;
use crate::fleet::Work;
use crate::plugins::runtime::PluginIdentity;
use crate::plugins::{PluginError, chat, wit};
use crate::state::RequestState;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// The model's answer to a conversation.
pub(crate) enum ChatAnswer {
    /// The whole answer.
    Whole {
        /// What the plugin parsed.
        completion: chat::ChatCompletion,
        /// The model server's body, when it is OpenAI's own answer (it may be forwarded as it came).
        openai_body: Option<Bytes>,
    },
    /// The answer as it streams, its first piece already read.
    Stream {
        /// The pieces.
        pieces: Box<ChunkStream<ChatPiece>>,
        /// Whether each piece's bytes are OpenAI's own chunk (they may be forwarded as they came).
        openai_events: bool,
    },
}

/// Send `request` (its `stream` decides the answer's form) to `target` within `total_timeout`,
/// placed in the target's pool (if it has one) as `work`.
pub(crate) async fn converse(
    state: &RequestState<'_>,
    target: &ModelTarget,
    mut request: chat::ChatRequest,
    total_timeout: Duration,
    work: Work,
) -> Result<ChatAnswer, GatewayError> {
    // With streaming disabled by the operator, the model server is asked for a whole answer,
    // which a stream then carries as one piece.
    let stream = request.stream && !state.config.disable_streaming;
    let piece_of_whole = request.stream && !stream;
    request.stream = stream;
    let building = Instant::now();
    let Prepared { destination, observer, mut lease } = Prepared::new(state, target).await?;
    let identity = lease.identity().clone();
    let built = async {
        let session = lease.session().await?;
        if identity.can_chat() {
            session.build_chat_request(&request).await
        } else {
            session.build_request(&text_request(request, &identity)?).await
        }
    }
    .await
    .map_err(|e| observer.plugin_failed(e))?;
    observer.plugin_call("build_chat_request", building.elapsed());
    let call = Call::dispatch(state, target, &destination, built, lease, observer, Some(total_timeout), work).await?;
    if stream {
        call.observer.waited(call.sent.elapsed());
        let pieces = ChunkStream::new(call.lease, call.response, call.observer, call.sent).first_piece().await?;
        return Ok(ChatAnswer::Stream { pieces: Box::new(pieces), openai_events: identity.answers_as_openai() });
    }
    let sent = call.sent;
    let (body, mut lease, observer) = call.body().await?;
    let parsing = Instant::now();
    let completion = async {
        let session = lease.session().await?;
        if identity.can_chat() {
            session.parse_chat_response(&body).await
        } else {
            session.parse_response(&body).await.map(text_completion)
        }
    }
    .await
    .map_err(|e| observer.plugin_failed(e))?;
    observer.plugin_call("parse_chat_response", parsing.elapsed());
    if let Some(usage) = &completion.usage {
        observer.tokens(usage);
    }
    if piece_of_whole {
        let piece = ChatPiece { chunk: whole_as_chunk(completion), data: Bytes::new() };
        let pieces = ChunkStream::whole(lease, observer, sent, piece);
        return Ok(ChatAnswer::Stream { pieces: Box::new(pieces), openai_events: false });
    }
    let openai_body = identity.answers_as_openai().then_some(body);
    Ok(ChatAnswer::Whole { completion, openai_body })
}

/// A whole answer as the one piece of a stream.
fn whole_as_chunk(completion: chat::ChatCompletion) -> chat::ChatChunk {
    chat::ChatChunk {
        content: completion.content.unwrap_or_default(),
        tool_calls: completion
            .tool_calls
            .into_iter()
            .zip(0..)
            .map(|(call, index)| chat::ToolCallDelta {
                index,
                id: Some(call.id),
                name: Some(call.name),
                arguments: call.arguments,
            })
            .collect(),
        finish_reason: completion.finish_reason,
        // Already counted; carried on for the client's usage report.
        usage: completion.usage,
        done: true,
    }
}

/// A conversation as the text request a plugin built before `chat` takes, when it is one: no
/// tools, tool calls or results, no fields beyond text. Otherwise the plugin cannot carry it.
fn text_request(request: chat::ChatRequest, plugin: &PluginIdentity) -> Result<wit::ModelRequest, PluginError> {
    let cannot = || PluginError::NoChat { plugin: plugin.name.clone(), wit_version: plugin.wit_version };
    let beyond_text = !request.tools.is_empty()
        || request.tool_choice.is_some()
        || request.parallel_tool_calls.is_some()
        || request.seed.is_some()
        || request.response_format.is_some()
        || request.extra.is_some();
    if beyond_text {
        return Err(cannot());
    }
    let messages = request
        .messages
        .into_iter()
        .map(|message| {
            let role = match message.role {
                chat::ChatRole::System | chat::ChatRole::Developer => wit::Role::System,
                chat::ChatRole::User => wit::Role::User,
                chat::ChatRole::Assistant if message.tool_calls.is_empty() => wit::Role::Assistant,
                chat::ChatRole::Assistant | chat::ChatRole::Tool => return Err(cannot()),
            };
            let content = match message.content {
                Some(chat::Content::Text(text)) => text,
                Some(chat::Content::Parts(parts)) => parts.concat(),
                None => String::new(),
            };
            Ok(wit::Message { role, content })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(wit::ModelRequest {
        model: request.model,
        messages,
        fill_in_middle: None,
        sampling: request.sampling,
        stream: request.stream,
    })
}

fn text_finish_reason(reason: wit::FinishReason) -> chat::ChatFinishReason {
    match reason {
        wit::FinishReason::Stop => chat::ChatFinishReason::Stop,
        wit::FinishReason::Length => chat::ChatFinishReason::Length,
        wit::FinishReason::Other(other) => chat::ChatFinishReason::Other(other),
    }
}

/// A text answer as a conversation's.
fn text_completion(completion: wit::Completion) -> chat::ChatCompletion {
    chat::ChatCompletion {
        content: Some(completion.text),
        tool_calls: Vec::new(),
        finish_reason: completion.finish_reason.map(text_finish_reason),
        usage: completion.usage,
    }
}

/// A text stream event as a conversation's.
pub(super) fn text_chunk(chunk: wit::StreamChunk) -> chat::ChatChunk {
    chat::ChatChunk {
        content: chunk.text,
        tool_calls: Vec::new(),
        finish_reason: chunk.finish_reason.map(text_finish_reason),
        usage: chunk.usage,
        done: chunk.done,
    }
}
