//! The model's answer in OpenAI's shapes: a `chat.completion`, or `chat.completion.chunk` events
//! ending with `[DONE]`. An OpenAI-shaped provider's answer is forwarded as it came; any other is
//! written from the parsed results.

use crate::error::GatewayError;
use crate::pipeline::{ChatAnswer, ChatPiece, ChunkStream};
use crate::plugins::{chat, wit};
use crate::response::{Body, json_response, streamed_response, with_deadline};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use hyper::body::Frame;
use serde::Serialize;

/// `text/event-stream`, as OpenAI labels its streams.
const EVENT_STREAM: &str = "text/event-stream";

/// What every rendered object of one answer shares.
struct Identity {
    id: String,
    created: u64,
    model: String,
}

impl Identity {
    fn new(model: &str) -> Self {
        Identity {
            id: format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32),
            created: crate::api::unix_now(),
            model: model.to_string(),
        }
    }
}

/// The answer for a client that asked for `model`, with a final usage chunk when it asked for one.
pub(super) fn respond(answer: ChatAnswer, model: &str, include_usage: bool) -> http::Response<Body> {
    match answer {
        ChatAnswer::Whole { openai_body: Some(body), .. } => json_response(http::StatusCode::OK, body),
        ChatAnswer::Whole { completion, openai_body: None } => {
            let body = serde_json::to_vec(&whole(&completion, &Identity::new(model))).unwrap_or_default();
            json_response(http::StatusCode::OK, body.into())
        }
        ChatAnswer::Stream { pieces, openai_events } => {
            let deadline = pieces.deadline();
            let events = events(*pieces, Renderer::new(model, openai_events, include_usage));
            with_deadline(streamed_response(EVENT_STREAM, events), deadline)
        }
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [WholeChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct WholeChoice<'a> {
    index: u32,
    message: AnswerMessage<'a>,
    finish_reason: Option<&'a str>,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct AnswerMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize, Clone, Copy, Default)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl From<&wit::Usage> for Usage {
    fn from(usage: &wit::Usage) -> Self {
        Usage {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
        }
    }
}

/// OpenAI's word for why the model stopped.
fn finish_reason(reason: &chat::ChatFinishReason) -> &str {
    match reason {
        chat::ChatFinishReason::Stop => "stop",
        chat::ChatFinishReason::Length => "length",
        chat::ChatFinishReason::ToolCalls => "tool_calls",
        chat::ChatFinishReason::ContentFilter => "content_filter",
        chat::ChatFinishReason::Other(other) => other,
    }
}

fn whole<'a>(completion: &'a chat::ChatCompletion, identity: &'a Identity) -> Completion<'a> {
    let tool_calls = completion
        .tool_calls
        .iter()
        .map(|call| ToolCall {
            index: None,
            id: Some(&call.id),
            kind: Some("function"),
            function: Function { name: Some(&call.name), arguments: &call.arguments },
        })
        .collect();
    Completion {
        id: &identity.id,
        object: "chat.completion",
        created: identity.created,
        model: &identity.model,
        choices: [WholeChoice {
            index: 0,
            message: AnswerMessage { role: "assistant", content: completion.content.as_deref(), tool_calls },
            finish_reason: completion.finish_reason.as_ref().map(finish_reason),
            logprobs: None,
        }],
        usage: completion.usage.as_ref().map(Usage::from),
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'a str>,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
}

/// Turns each piece of a stream into the client's events.
struct Renderer {
    identity: Identity,
    /// Forward OpenAI's own chunks as they came.
    forward: bool,
    include_usage: bool,
    /// The first rendered chunk carries the assistant's role.
    role_sent: bool,
    usage: Option<wit::Usage>,
    done_sent: bool,
    /// The plugin's index of each tool call, in order of appearance: the client's index is the
    /// position here (providers number content blocks, text included; OpenAI numbers the calls).
    tool_indices: Vec<u32>,
}

impl Renderer {
    fn new(model: &str, forward: bool, include_usage: bool) -> Self {
        Renderer {
            identity: Identity::new(model),
            forward,
            include_usage,
            role_sent: false,
            usage: None,
            done_sent: false,
            tool_indices: Vec::new(),
        }
    }

    /// The client's index for the plugin's tool-call `index`.
    fn dense_index(&mut self, index: u32) -> u32 {
        let position = match self.tool_indices.iter().position(|known| *known == index) {
            Some(position) => position,
            None => {
                self.tool_indices.push(index);
                self.tool_indices.len() - 1
            }
        };
        u32::try_from(position).unwrap_or(u32::MAX)
    }

    /// The events for one piece (none, for a piece the client did not ask for).
    fn piece(&mut self, piece: &ChatPiece, out: &mut BytesMut) {
        let chunk = &piece.chunk;
        if let Some(usage) = &chunk.usage {
            let total = self.usage.get_or_insert(wit::Usage { input_tokens: 0, output_tokens: 0 });
            total.input_tokens = total.input_tokens.saturating_add(usage.input_tokens);
            total.output_tokens = total.output_tokens.saturating_add(usage.output_tokens);
        }
        let carries = !chunk.content.is_empty() || !chunk.tool_calls.is_empty() || chunk.finish_reason.is_some();
        if self.forward && !piece.data.is_empty() {
            if chunk.done {
                self.done(out);
            } else if carries || self.include_usage || chunk.usage.is_none() {
                // A usage-only chunk is the provider's answer to aigw's own request for usage;
                // the client gets it only if it asked.
                event(out, &piece.data);
            }
            return;
        }
        if carries {
            let role = (!self.role_sent).then_some("assistant");
            self.role_sent = true;
            let indices: Vec<u32> = chunk.tool_calls.iter().map(|call| self.dense_index(call.index)).collect();
            let tool_calls = chunk
                .tool_calls
                .iter()
                .zip(indices)
                .map(|(call, index)| ToolCall {
                    index: Some(index),
                    id: call.id.as_deref(),
                    kind: call.id.as_ref().map(|_| "function"),
                    function: Function { name: call.name.as_deref(), arguments: &call.arguments },
                })
                .collect();
            let content = (!chunk.content.is_empty()).then_some(chunk.content.as_str());
            // A turn that called tools ends with `tool_calls`, as OpenAI's do, whatever word
            // the provider used for it (Ollama says `stop`).
            let finish = chunk.finish_reason.as_ref().map(|reason| match reason {
                chat::ChatFinishReason::Stop if !self.tool_indices.is_empty() => "tool_calls",
                reason => finish_reason(reason),
            });
            let choice = ChunkChoice {
                index: 0,
                delta: Delta { role, content, tool_calls },
                finish_reason: finish,
                logprobs: None,
            };
            self.chunk(out, vec![choice], None);
        }
    }

    fn chunk(&self, out: &mut BytesMut, choices: Vec<ChunkChoice<'_>>, usage: Option<Usage>) {
        let chunk = Chunk {
            id: &self.identity.id,
            object: "chat.completion.chunk",
            created: self.identity.created,
            model: &self.identity.model,
            choices,
            usage,
        };
        out.put_slice(b"data: ");
        // Serialising plain structs of strings and numbers cannot fail.
        let _ = serde_json::to_writer((&mut *out).writer(), &chunk);
        out.put_slice(b"\n\n");
    }

    /// The stream's end: the usage chunk (if asked and written here) and `[DONE]`.
    fn end(&mut self, out: &mut BytesMut) {
        if !self.forward && self.include_usage {
            let usage = self.usage.as_ref().map(Usage::from).unwrap_or_default();
            self.chunk(out, Vec::new(), Some(usage));
        }
        self.done(out);
    }

    fn done(&mut self, out: &mut BytesMut) {
        if !self.done_sent {
            self.done_sent = true;
            out.put_slice(b"data: [DONE]\n\n");
        }
    }

    /// An error after the answer began: OpenAI's error object as an event (the SDKs raise it),
    /// and no `[DONE]`.
    fn error(&mut self, error: &GatewayError, out: &mut BytesMut) {
        let (_, body) = super::errors::status_and_body(error);
        event(out, body.to_string().as_bytes());
        self.done_sent = true;
    }
}

fn event(out: &mut BytesMut, data: &[u8]) {
    out.put_slice(b"data: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
}

/// The client's events: one frame per model event, then the end.
fn events(
    pieces: ChunkStream<ChatPiece>,
    renderer: Renderer,
) -> impl Stream<Item = Result<Frame<Bytes>, GatewayError>> + Send {
    futures_util::stream::unfold(Some((pieces, renderer)), |state| async move {
        let (mut pieces, mut renderer) = state?;
        let mut out = BytesMut::new();
        loop {
            match pieces.next().await {
                Some(Ok(piece)) => {
                    renderer.piece(&piece, &mut out);
                    if !out.is_empty() {
                        return Some((Ok(Frame::data(out.freeze())), Some((pieces, renderer))));
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(?error, "model API stream ended by an error after the response started");
                    renderer.error(&error, &mut out);
                    return Some((Ok(Frame::data(out.freeze())), None));
                }
                None => {
                    renderer.end(&mut out);
                    return (!out.is_empty()).then(|| (Ok(Frame::data(out.freeze())), None));
                }
            }
        }
    })
}
