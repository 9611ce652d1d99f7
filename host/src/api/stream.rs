//! GitLab's streaming answer formats: raw text, the v4 CRLF-framed SSE events and the registry
//! prompts' JSON lines, fed by a model stream (with a generation's code fence stripped on the
//! way).

use super::fence::FenceStripper;
use crate::error::GatewayError;
use crate::pipeline::ChunkStream;
use crate::plugins::wit;
use crate::response::{Body, EVENT_STREAM, streamed_response, with_deadline};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hyper::body::Frame;
use serde_json::{Value, json};

/// The model's text as it arrives, fence-stripped when `fence` is given. An error ends the stream
/// after it is yielded.
fn text_pieces(
    chunks: ChunkStream,
    fence: Option<FenceStripper>,
) -> impl Stream<Item = Result<String, GatewayError>> + Send {
    futures_util::stream::unfold(Some((chunks, fence)), |state| async move {
        let (mut chunks, mut fence) = state?;
        loop {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    let text = match fence.as_mut() {
                        Some(fence) => fence.push(&chunk.text),
                        None => chunk.text,
                    };
                    if !text.is_empty() {
                        return Some((Ok(text), Some((chunks, fence))));
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(?error, "stream ended by an error after the response started");
                    return Some((Err(error), None));
                }
                None => {
                    let tail = fence.as_mut().map(FenceStripper::finish).unwrap_or_default();
                    return (!tail.is_empty()).then_some((Ok(tail), None));
                }
            }
        }
    })
}

/// Raw model text streamed as it arrives under `text/event-stream` (no SSE framing: GitLab's
/// code and chat endpoints send the bare text). A failure after the head has gone out aborts the
/// body, so the client sees an incomplete answer rather than a silently truncated one.
pub(crate) fn raw_text_response(chunks: ChunkStream, fence: Option<FenceStripper>) -> http::Response<Body> {
    let deadline = chunks.deadline();
    let pieces = text_pieces(chunks, fence).map(|piece| piece.map(|text| Frame::data(Bytes::from(text))));
    with_deadline(streamed_response(EVENT_STREAM, pieces), deadline)
}

/// One event; `data` is serialised from a struct or `json!` value (structs keep GitLab's field order).
fn sse_event(event: &str, data: &impl serde::Serialize) -> Frame<Bytes> {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".to_string());
    Frame::data(Bytes::from(format!("event: {event}\r\ndata: {data}\r\n\r\n")))
}

/// Every chunk's text as it arrives, empty ones included (one per model event), then one empty
/// piece at the end: GitLab's gateway streams completions and registry prompts this way. The
/// usage the model reported travels with the last piece. An error ends the stream after it.
fn every_chunk(chunks: ChunkStream) -> impl Stream<Item = Result<(String, Option<wit::Usage>), GatewayError>> + Send {
    let usage: Option<wit::Usage> = None;
    futures_util::stream::unfold(Some((chunks, usage)), |state| async move {
        let (mut chunks, mut usage) = state?;
        match chunks.next().await {
            Some(Ok(chunk)) => {
                add_usage(&mut usage, chunk.usage);
                Some((Ok((chunk.text, None)), Some((chunks, usage))))
            }
            Some(Err(error)) => {
                tracing::warn!(?error, "stream ended by an error after the response started");
                Some((Err(error), None))
            }
            None => Some((Ok((String::new(), usage)), None)),
        }
    })
}

/// The whole text of a stream as one piece at its end (fence-stripped when `fence` is given):
/// GitLab's gateway post-processes a generation whole before it sends it.
fn whole_text(
    chunks: ChunkStream,
    fence: Option<FenceStripper>,
) -> impl Stream<Item = Result<String, GatewayError>> + Send {
    futures_util::stream::once(async move {
        let mut text = String::new();
        let mut pieces = std::pin::pin!(text_pieces(chunks, fence));
        while let Some(piece) = pieces.next().await {
            text.push_str(&piece?);
        }
        Ok(text)
    })
}

/// How `/v4/code/suggestions` streams the model's text.
pub(crate) enum V4Content {
    /// One `content_chunk` per model event, then an empty one (completions).
    EveryChunk,
    /// One `content_chunk` with the whole text (generations).
    Whole,
}

/// `/v4/code/suggestions` streaming: `stream_start` with the metadata, the `content_chunk`s,
/// `stream_end`; events separated by CRLF CRLF; header `X-Streaming-Format: sse`.
pub(crate) fn v4_sse_response(
    chunks: ChunkStream,
    content: V4Content,
    fence: Option<FenceStripper>,
    metadata: impl serde::Serialize + Send + 'static,
) -> http::Response<Body> {
    #[derive(serde::Serialize)]
    struct Start<M> {
        metadata: M,
    }
    let deadline = chunks.deadline();
    let start = futures_util::stream::once(async move { Ok(sse_event("stream_start", &Start { metadata })) });
    let chunk_event =
        |text: String| sse_event("content_chunk", &json!({"choices": [{"delta": {"content": text}, "index": 0}]}));
    let content: std::pin::Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, GatewayError>> + Send>> = match content {
        V4Content::EveryChunk => {
            Box::pin(every_chunk(chunks).map(move |piece| piece.map(|(text, _)| chunk_event(text))))
        }
        V4Content::Whole => Box::pin(whole_text(chunks, fence).map(move |text| text.map(chunk_event))),
    };
    let end = futures_util::stream::once(async { Ok(sse_event("stream_end", &Value::Null)) });
    let mut response = streamed_response(EVENT_STREAM, start.chain(content).chain(end));
    response.headers_mut().insert("x-streaming-format", http::HeaderValue::from_static("sse"));
    with_deadline(response, deadline)
}

/// `/v2/prompts/{id}` streaming, as GitLab's gateway sends it under `text/event-stream`: one
/// `{"content": …}` line per model event, then a last line with empty content and the usage
/// keyed by `model`.
pub(crate) fn prompt_lines_response(chunks: ChunkStream, model: String) -> http::Response<Body> {
    let deadline = chunks.deadline();
    let lines = every_chunk(chunks).map(move |piece| {
        piece.map(|(text, usage)| {
            let mut line = json!({ "content": text });
            if let Some(usage) = usage {
                line["usage"] = usage_by_model(&model, &usage);
            }
            let mut line = line.to_string();
            line.push('\n');
            Frame::data(Bytes::from(line))
        })
    });
    with_deadline(streamed_response(EVENT_STREAM, lines), deadline)
}

/// Add a stream event's usage to the stream's total: providers may split usage over several
/// events, and the parts add up.
pub(crate) fn add_usage(total: &mut Option<wit::Usage>, more: Option<wit::Usage>) {
    if let Some(more) = more {
        let total = total.get_or_insert(wit::Usage { input_tokens: 0, output_tokens: 0 });
        total.input_tokens += more.input_tokens;
        total.output_tokens += more.output_tokens;
    }
}

/// `{"<model>": {"input_tokens", "output_tokens"}}`, GitLab's usage report.
pub(crate) fn usage_by_model(model: &str, usage: &wit::Usage) -> Value {
    let mut per_model = serde_json::Map::new();
    per_model
        .insert(model.to_string(), json!({"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}));
    Value::Object(per_model)
}
