//! A mock model server speaking every provider's wire format over loopback (OpenAI chat
//! completions, Azure OpenAI, Mistral chat and fill-in-the-middle, Ollama native, Anthropic
//! Messages, Bedrock Converse with SigV4 checks and event-stream framing, and each provider's
//! embeddings), for tests, benchmarks and the quick start. It records every request it receives and answers with a scripted reply,
//! whole or streamed in the provider's own framing.

#![forbid(unsafe_code)]

mod embeddings;
pub mod event_stream;
pub mod sigv4;
pub mod simulated;

pub use embeddings::mock_vector;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// What the mock answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Generated text.
    pub text: String,
    /// Number of stream chunks the text is split into (by characters).
    pub chunks: usize,
    /// Pause before each stream chunk.
    pub chunk_delay: Duration,
    /// Send the first stream chunk without that pause: a model that stalls once its answer has
    /// begun.
    pub first_chunk_at_once: bool,
    /// The exact body of an OpenAI-style stream, instead of the one made from `text` (a stream
    /// that ends short, or an empty one).
    pub raw_stream: Option<String>,
    /// Pause before the response head.
    pub head_delay: Duration,
    /// Status code; non-2xx answers carry an OpenAI-style error body.
    pub status: u16,
    /// `Retry-After` sent with the status, if any.
    pub retry_after: Option<String>,
    /// `error.message` of a non-2xx answer's body.
    pub error_message: String,
    /// Why the model stopped, as OpenAI-style servers name it (`stop`, `length`, …).
    pub finish_reason: String,
    /// Reported (prompt, completion) tokens.
    pub usage: (u32, u32),
    /// Tools the model calls instead of answering with text (then `finish_reason` should be
    /// `tool_calls`); each call's arguments stream in `chunks` pieces.
    pub tool_calls: Vec<MockToolCall>,
    /// Behave as an agent's model in any provider's format: a request that offers tools and
    /// carries no tool result yet gets `tool_calls` (finish `tool_calls`); any other gets `text`
    /// (finish `stop`). For clients that drive a whole tool round trip themselves.
    pub agent: bool,
}

/// A tool call the mock model makes.
#[derive(Debug, Clone)]
pub struct MockToolCall {
    /// The call's id.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments' JSON text.
    pub arguments: String,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            text: "return a + b".to_string(),
            chunks: 3,
            chunk_delay: Duration::ZERO,
            first_chunk_at_once: false,
            raw_stream: None,
            head_delay: Duration::ZERO,
            status: 200,
            retry_after: None,
            error_message: "mock error".to_string(),
            finish_reason: "stop".to_string(),
            usage: (12, 5),
            tool_calls: Vec::new(),
            agent: false,
        }
    }
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body parsed as JSON (`Value::Null` when it is not JSON).
    pub body: Value,
}

/// A recorded model-server answer, served as it is (status, content type, body), whatever the
/// request was: for replaying another gateway's transcripts.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Status code.
    pub status: u16,
    /// `Content-Type` header.
    pub content_type: String,
    /// The whole body; an SSE or NDJSON body is sent one event per frame.
    pub body: String,
}

#[derive(Debug, Default)]
struct State {
    reply: Mutex<Reply>,
    /// Answers to serve in order before `reply`; the last one stays for every later request.
    replay: Mutex<std::collections::VecDeque<Recording>>,
    requests: Mutex<Vec<Recorded>>,
    open_streams: AtomicUsize,
    connections: AtomicUsize,
    /// What `/metrics` reports, vLLM's way: (waiting, running, KV-cache use).
    load: Mutex<(u32, u32, f64)>,
    /// `/health` answers 503.
    unhealthy: std::sync::atomic::AtomicBool,
    /// Requests to `/metrics` and `/health` (never in `requests`).
    probes: AtomicUsize,
}

/// A running mock model server; stops when dropped.
#[derive(Debug)]
pub struct MockModelServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockModelServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decrements the open-stream count when a streamed body is dropped (finished or cancelled).
struct StreamGuard(Arc<State>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MockModelServer {
    /// What `GET /metrics` reports from now on: vLLM's `vllm:num_requests_waiting`,
    /// `vllm:num_requests_running` and `vllm:kv_cache_usage_perc`.
    pub fn set_load(&self, waiting: u32, running: u32, kv_cache_usage: f64) {
        *self.state.load.lock().unwrap_or_else(|p| p.into_inner()) = (waiting, running, kv_cache_usage);
    }

    /// Make `GET /health` answer 503 (`false`) or 200 (`true`, the default).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// How many `/metrics` and `/health` requests it answered.
    pub fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// Start on `127.0.0.1` with an ephemeral port.
    pub async fn start() -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Start on `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(MockModelServer { addr, state, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI-compatible base URL, `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The base URL of the Mistral dialect (strict about unknown fields, usage sent unasked),
    /// `/v1` included as for Mistral's own API.
    pub fn mistral_url(&self) -> String {
        format!("http://{}/mistral/v1", self.addr)
    }

    /// The base URL for everything else (Azure, Anthropic, Ollama, Bedrock): no path.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replace the scripted reply.
    pub fn set_reply(&self, reply: Reply) {
        *self.state.reply.lock().unwrap_or_else(|p| p.into_inner()) = reply;
    }

    /// Serve `answers` in order, whatever the requests are; the last one answers every request
    /// after it. An empty list goes back to the scripted reply.
    pub fn replay(&self, answers: Vec<Recording>) {
        *self.state.replay.lock().unwrap_or_else(|p| p.into_inner()) = answers.into();
    }

    /// Forget the requests received so far.
    pub fn clear_requests(&self) {
        self.state.requests.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Streamed answers still being sent.
    pub fn open_streams(&self) -> usize {
        self.state.open_streams.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(state, request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type MockBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &'static str, body: String) -> Response<MockBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// vLLM's own endpoints beside the model API: its metrics and its health check.
fn server_endpoint(state: &State, method: &Method, path: &str) -> Option<Response<MockBody>> {
    if method != Method::GET || !matches!(path, "/metrics" | "/health") {
        return None;
    }
    state.probes.fetch_add(1, Ordering::SeqCst);
    if path == "/health" {
        let healthy = !state.unhealthy.load(Ordering::SeqCst);
        let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return Some(full(status, "text/plain", String::new()));
    }
    let (waiting, running, kv) = *state.load.lock().unwrap_or_else(|p| p.into_inner());
    Some(full(StatusCode::OK, "text/plain; version=0.0.4", vllm_gauges(waiting, running, kv)))
}

/// vLLM's queue and KV-cache gauges in Prometheus's text format.
fn vllm_gauges(waiting: u32, running: u32, kv_cache_usage: f64) -> String {
    let model = "model_name=\"mock\"";
    let kv = kv_cache_usage;
    format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{model}}} {running}.0\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{model}}} {waiting}.0\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{model}}} {kv}\n"
    )
}

async fn answer(state: Arc<State>, request: Request<Incoming>) -> Response<MockBody> {
    if let Some(response) = server_endpoint(&state, request.method(), request.uri().path()) {
        return response;
    }
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    state.requests.lock().unwrap_or_else(|p| p.into_inner()).push(Recorded {
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body: json.clone(),
    });
    if let Some(recording) = next_recording(&state) {
        return recorded_answer(state, recording);
    }
    let mut reply = state.reply.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if reply.agent {
        reply = agent_turn(reply, &json);
    }
    if !reply.head_delay.is_zero() {
        tokio::time::sleep(reply.head_delay).await;
    }
    let Some(wire) = Wire::of(&parts.method, parts.uri.path()) else {
        return full(StatusCode::NOT_FOUND, "application/json", json!({"detail": "Not Found"}).to_string());
    };
    if let Wire::Bedrock { .. } | Wire::Embeddings(embeddings::Api::BedrockInvoke { .. }) = wire
        && let Err(why) = sigv4::verify(&parts.headers, &parts.uri, &bytes)
    {
        return full(StatusCode::FORBIDDEN, "application/json", json!({"message": why}).to_string());
    }
    let mistral_field = match &wire {
        Wire::Mistral { fim } => mistral_unknown_field(&json, *fim),
        Wire::Embeddings(embeddings::Api::Mistral) => embeddings::mistral_unknown_field(&json),
        _ => None,
    };
    if let Some(field) = mistral_field {
        let detail = json!({"detail": [{"type": "extra_forbidden", "loc": ["body", field], "msg": "Extra inputs are not permitted"}]});
        return full(StatusCode::UNPROCESSABLE_ENTITY, "application/json", detail.to_string());
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !status.is_success() {
        let mut response = full(
            status,
            "application/json",
            json!({"error": {"message": reply.error_message, "type": "mock", "code": reply.status}}).to_string(),
        );
        if let Some(retry_after) = reply.retry_after.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, retry_after);
        }
        return response;
    }
    let stream = json.get("stream").and_then(Value::as_bool);
    match wire {
        Wire::Embeddings(api) => {
            let (status, body) = embeddings::answer(&api, &json);
            full(status, "application/json", body.to_string())
        }
        Wire::Ollama { generate } => {
            ollama_answer(state, reply, json_model(&json, "mock"), generate, stream != Some(false))
        }
        Wire::Anthropic => anthropic_answer(state, reply, json_model(&json, "mock"), stream == Some(true)),
        Wire::Bedrock { stream } => bedrock_answer(state, reply, stream),
        Wire::OpenAi => {
            let include_usage = json.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
            openai_answer(state, reply, json_model(&json, "mock"), stream == Some(true), include_usage)
        }
        Wire::Azure { deployment } => {
            let include_usage = json.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
            openai_answer(state, reply, deployment, stream == Some(true), include_usage)
        }
        // Mistral reports usage in the last chunk without being asked.
        Wire::Mistral { .. } => openai_answer(state, reply, json_model(&json, "mock"), stream == Some(true), true),
    }
}

/// An agent's model's turn for `request`, in any provider's format: call the tools while none
/// has answered yet, then answer in text.
fn agent_turn(mut reply: Reply, request: &Value) -> Reply {
    let text = request.to_string();
    let offers_tools = request.get("tools").is_some() || request.get("toolConfig").is_some();
    let answered = ["\"tool_result\"", "\"toolResult\"", "\"role\":\"tool\""].iter().any(|mark| text.contains(mark));
    if offers_tools && !answered {
        reply.finish_reason = "tool_calls".to_string();
    } else {
        reply.tool_calls.clear();
        reply.finish_reason = "stop".to_string();
    }
    reply
}

/// The next recorded answer to serve, if a replay is set: the last one is kept.
fn next_recording(state: &State) -> Option<Recording> {
    let mut replay = state.replay.lock().unwrap_or_else(|p| p.into_inner());
    if replay.len() > 1 { replay.pop_front() } else { replay.front().cloned() }
}

/// `recording` as an answer; a stream is cut into its events (blank-line separated for SSE,
/// lines for NDJSON) so that the gateway reads it in pieces, as from a real server.
fn recorded_answer(state: Arc<State>, recording: Recording) -> Response<MockBody> {
    let status = StatusCode::from_u16(recording.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = http::HeaderValue::from_str(&recording.content_type)
        .unwrap_or(http::HeaderValue::from_static("application/octet-stream"));
    let separator = if recording.content_type.starts_with("text/event-stream") {
        Some("\n\n")
    } else if recording.content_type.starts_with("application/x-ndjson") {
        Some("\n")
    } else {
        None
    };
    let mut response = match separator {
        Some(separator) if status.is_success() => {
            let events: Vec<String> = recording.body.split_inclusive(separator).map(str::to_string).collect();
            streamed(state, events, &Reply::default(), "text/event-stream")
        }
        _ => Response::new(Full::new(Bytes::from(recording.body)).boxed_unsync()),
    };
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response
}

/// Which provider's API a request is for, from its path.
#[derive(Debug)]
enum Wire {
    OpenAi,
    Azure { deployment: String },
    Mistral { fim: bool },
    Ollama { generate: bool },
    Anthropic,
    Bedrock { stream: bool },
    Embeddings(embeddings::Api),
}

impl Wire {
    fn of(method: &Method, path: &str) -> Option<Wire> {
        if method != Method::POST {
            return None;
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if let Some(api) = embeddings::Api::of(&segments) {
            return Some(Wire::Embeddings(api));
        }
        Some(match segments.as_slice() {
            ["mistral", "v1", "chat", "completions"] => Wire::Mistral { fim: false },
            ["mistral", "v1", "fim", "completions"] => Wire::Mistral { fim: true },
            ["openai", "deployments", deployment, "chat", "completions"] => {
                Wire::Azure { deployment: deployment.to_string() }
            }
            ["model", _, "converse"] => Wire::Bedrock { stream: false },
            ["model", _, "converse-stream"] => Wire::Bedrock { stream: true },
            [.., "api", "chat"] => Wire::Ollama { generate: false },
            [.., "api", "generate"] => Wire::Ollama { generate: true },
            [.., "v1", "messages"] => Wire::Anthropic,
            [.., "v1", "chat", "completions"] => Wire::OpenAi,
            _ => return None,
        })
    }
}

fn json_model(request: &Value, default: &str) -> String {
    request.get("model").and_then(Value::as_str).unwrap_or(default).to_string()
}

/// The first body field Mistral's API would refuse, if any.
fn mistral_unknown_field(request: &Value, fim: bool) -> Option<String> {
    const COMMON: [&str; 7] = ["model", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed"];
    const CHAT: [&str; 8] = [
        "messages",
        "response_format",
        "tools",
        "tool_choice",
        "safe_prompt",
        "presence_penalty",
        "frequency_penalty",
        "n",
    ];
    const FIM: [&str; 3] = ["prompt", "suffix", "min_tokens"];
    let known = |field: &str| COMMON.contains(&field) || if fim { FIM.contains(&field) } else { CHAT.contains(&field) };
    request.as_object()?.keys().find(|field| !known(field)).cloned()
}

fn openai_answer(
    state: Arc<State>,
    reply: Reply,
    model: String,
    stream: bool,
    include_usage: bool,
) -> Response<MockBody> {
    if stream {
        return stream_answer(state, reply, model, include_usage);
    }
    let message = if reply.tool_calls.is_empty() {
        json!({"role": "assistant", "content": reply.text})
    } else {
        let calls: Vec<Value> = reply
            .tool_calls
            .iter()
            .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}))
            .collect();
        json!({"role": "assistant", "content": null, "tool_calls": calls})
    };
    let body = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        "usage": {"prompt_tokens": reply.usage.0, "completion_tokens": reply.usage.1,
                  "total_tokens": reply.usage.0 + reply.usage.1},
    });
    full(StatusCode::OK, "application/json", body.to_string())
}

/// Split `text` into `n` pieces of about equal character counts.
pub fn split_text(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1).min(chars.len().max(1));
    let size = chars.len().div_ceil(n).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn stream_answer(state: Arc<State>, reply: Reply, model: String, include_usage: bool) -> Response<MockBody> {
    if let Some(raw) = &reply.raw_stream {
        let events: Vec<String> = if raw.is_empty() { Vec::new() } else { vec![raw.clone()] };
        return streamed(state, events, &reply, "text/event-stream");
    }
    let chunk = |delta: Value, finish: Value| {
        let event = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {event}\n\n")
    };
    let mut events: Vec<String> = if reply.tool_calls.is_empty() {
        split_text(&reply.text, reply.chunks)
            .into_iter()
            .map(|piece| chunk(json!({"content": piece}), Value::Null))
            .collect()
    } else {
        // As vLLM streams them: the id and name first with empty arguments, then the
        // arguments in pieces.
        let mut events = Vec::new();
        for (index, call) in reply.tool_calls.iter().enumerate() {
            let head = json!({"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}});
            let role = if index == 0 {
                json!({"role": "assistant", "content": null, "tool_calls": [head]})
            } else {
                json!({"tool_calls": [head]})
            };
            events.push(chunk(role, Value::Null));
            for piece in split_text(&call.arguments, reply.chunks) {
                events.push(chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
        }
        events
    };
    events.push(chunk(json!({}), json!(reply.finish_reason)));
    if include_usage {
        let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
                           "choices": [], "usage": {"prompt_tokens": reply.usage.0, "completion_tokens": reply.usage.1,
                           "total_tokens": reply.usage.0 + reply.usage.1}});
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    streamed(state, events, &reply, "text/event-stream")
}

/// Ollama's native answers: whole, or NDJSON lines ending with `"done": true` and the counts.
/// Ollama streams unless the request says `"stream": false`.
fn ollama_answer(state: Arc<State>, reply: Reply, model: String, generate: bool, stream: bool) -> Response<MockBody> {
    let piece = |text: &str, done: bool| {
        let mut line = json!({"model": model, "created_at": "2026-01-01T00:00:00Z"});
        if generate {
            line["response"] = json!(text);
        } else {
            line["message"] = json!({"role": "assistant", "content": text});
        }
        line["done"] = json!(done);
        if done {
            line["done_reason"] = json!("stop");
            line["prompt_eval_count"] = json!(reply.usage.0);
            line["eval_count"] = json!(reply.usage.1);
        }
        line
    };
    // Ollama sends a call whole, with its arguments as an object and (before 0.12) no id.
    let calls: Vec<Value> = reply
        .tool_calls
        .iter()
        .map(|call| {
            let arguments: Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
            json!({"function": {"name": call.name, "arguments": arguments}})
        })
        .collect();
    if !stream {
        let mut whole = piece(&reply.text, true);
        if !calls.is_empty() {
            whole["message"]["tool_calls"] = json!(calls);
        }
        return full(StatusCode::OK, "application/json", whole.to_string());
    }
    let mut lines: Vec<String> =
        split_text(&reply.text, reply.chunks).iter().map(|text| format!("{}\n", piece(text, false))).collect();
    if !calls.is_empty() {
        let mut line = piece("", false);
        line["message"]["tool_calls"] = json!(calls);
        lines.push(format!("{line}\n"));
    }
    lines.push(format!("{}\n", piece("", true)));
    streamed(state, lines, &reply, "application/x-ndjson")
}

/// The Anthropic Messages API: a message object, or its SSE event sequence.
fn anthropic_answer(state: Arc<State>, reply: Reply, model: String, stream: bool) -> Response<MockBody> {
    let (input, output) = reply.usage;
    // A model that calls tools says a few words first, as Claude does, then one `tool_use`
    // block per call.
    let stop_reason = if reply.tool_calls.is_empty() { "end_turn" } else { "tool_use" };
    if !stream {
        let mut content = vec![json!({"type": "text", "text": reply.text})];
        for call in &reply.tool_calls {
            let input: Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
            content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
        }
        let body = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                          "content": content, "stop_reason": stop_reason,
                          "usage": {"input_tokens": input, "output_tokens": output}});
        return full(StatusCode::OK, "application/json", body.to_string());
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "model": model,
                                       "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for piece in split_text(&reply.text, reply.chunks) {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    for (position, call) in reply.tool_calls.iter().enumerate() {
        let index = position + 1;
        events.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}}),
        ));
        for piece in split_text(&call.arguments, reply.chunks) {
            events.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        events.push(event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
    }
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason},
                                              "usage": {"output_tokens": output}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    streamed(state, events, &reply, "text/event-stream")
}

/// Bedrock's Converse answer, or its ConverseStream events in AWS event-stream framing.
fn bedrock_answer(state: Arc<State>, reply: Reply, stream: bool) -> Response<MockBody> {
    let (input, output) = reply.usage;
    let usage = json!({"inputTokens": input, "outputTokens": output, "totalTokens": input + output});
    let stop_reason = if reply.tool_calls.is_empty() { "end_turn" } else { "tool_use" };
    if !stream {
        let mut content = vec![json!({"text": reply.text})];
        for call in &reply.tool_calls {
            let input: Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
            content.push(json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": input}}));
        }
        let body = json!({"output": {"message": {"role": "assistant", "content": content}},
                          "stopReason": stop_reason, "usage": usage, "metrics": {"latencyMs": 1}});
        return full(StatusCode::OK, "application/json", body.to_string());
    }
    // Bedrock pads events with a `p` field so that their sizes do not reveal the text.
    let mut events = vec![event_stream::event("messageStart", &json!({"role": "assistant", "p": "abcdefgh"}))];
    for piece in split_text(&reply.text, reply.chunks) {
        events.push(event_stream::event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": piece}, "p": "abcd"}),
        ));
    }
    events.push(event_stream::event("contentBlockStop", &json!({"contentBlockIndex": 0, "p": "ab"})));
    for (position, call) in reply.tool_calls.iter().enumerate() {
        let index = position + 1;
        events.push(event_stream::event(
            "contentBlockStart",
            &json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": call.id, "name": call.name}}, "p": "a"}),
        ));
        for piece in split_text(&call.arguments, reply.chunks) {
            events.push(event_stream::event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}, "p": "ab"}),
            ));
        }
        events.push(event_stream::event("contentBlockStop", &json!({"contentBlockIndex": index, "p": "ab"})));
    }
    events.push(event_stream::event("messageStop", &json!({"stopReason": stop_reason, "p": "abc"})));
    events.push(event_stream::event("metadata", &json!({"usage": usage, "metrics": {"latencyMs": 1}, "p": "a"})));
    streamed(state, events, &reply, "application/vnd.amazon.eventstream")
}

/// Send `events` one by one, `delay` apart, counting the stream as open until it is dropped.
fn streamed(
    state: Arc<State>,
    events: Vec<impl Into<Bytes> + Send + 'static>,
    reply: &Reply,
    content_type: &'static str,
) -> Response<MockBody> {
    state.open_streams.fetch_add(1, Ordering::SeqCst);
    let guard = StreamGuard(state);
    let (delay, at_once) = (reply.chunk_delay, reply.first_chunk_at_once);
    let events = events.into_iter().enumerate();
    let stream = futures_util::stream::unfold((events, guard), move |(mut events, guard)| async move {
        let (index, event) = events.next()?;
        let pause = !delay.is_zero() && (index > 0 || !at_once);
        if pause {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, Infallible>(Frame::data(event.into())), (events, guard)))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::split_text;

    #[test]
    fn split_covers_the_text() {
        assert_eq!(split_text("return a + b", 3).concat(), "return a + b");
        assert_eq!(split_text("abc", 10).len(), 3);
        assert!(split_text("", 3).is_empty());
    }
}
