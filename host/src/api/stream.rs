//! GitLab's streaming answer formats: raw text and the v4 CRLF-framed SSE events, fed by a model
//! stream (with a generation's code fence stripped on the way).

use super::fence::FenceStripper;
use crate::error::GatewayError;
use crate::pipeline::ChunkStream;
use crate::response::{Body, EVENT_STREAM, NDJSON, streamed_response};
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
    let pieces = text_pieces(chunks, fence).map(|piece| piece.map(|text| Frame::data(Bytes::from(text))));
    streamed_response(EVENT_STREAM, pieces)
}

/// One event; `data` is serialised from a struct or `json!` value (structs keep GitLab's field order).
fn sse_event(event: &str, data: &impl serde::Serialize) -> Frame<Bytes> {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".to_string());
    Frame::data(Bytes::from(format!("event: {event}\r\ndata: {data}\r\n\r\n")))
}

/// `/v4/code/suggestions` streaming: `stream_start` with the metadata, one `content_chunk` per
/// piece, `stream_end`; events separated by CRLF CRLF; header `X-Streaming-Format: sse`.
pub(crate) fn v4_sse_response(
    chunks: ChunkStream,
    fence: Option<FenceStripper>,
    metadata: impl serde::Serialize + Send + 'static,
) -> http::Response<Body> {
    #[derive(serde::Serialize)]
    struct Start<M> {
        metadata: M,
    }
    let start = futures_util::stream::once(async move { Ok(sse_event("stream_start", &Start { metadata })) });
    let content = text_pieces(chunks, fence).map(|piece| {
        piece.map(|text| sse_event("content_chunk", &json!({"choices": [{"delta": {"content": text}, "index": 0}]})))
    });
    let end = futures_util::stream::once(async { Ok(sse_event("stream_end", &Value::Null)) });
    let mut response = streamed_response(EVENT_STREAM, start.chain(content).chain(end));
    response.headers_mut().insert("x-streaming-format", http::HeaderValue::from_static("sse"));
    response
}

/// Newline-delimited JSON: one object per text piece, made by `shape`.
pub(crate) fn ndjson_response(chunks: ChunkStream, shape: fn(String) -> Value) -> http::Response<Body> {
    let lines = text_pieces(chunks, None).map(move |piece| {
        piece.map(|text| {
            let mut line = shape(text).to_string();
            line.push('\n');
            Frame::data(Bytes::from(line))
        })
    });
    streamed_response(NDJSON, lines)
}
