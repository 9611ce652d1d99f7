//! A simulated model server for the fleet benchmark: a fixed number of running slots behind a
//! queue, one prefill at a time whose length is the prompt tokens its LRU prefix cache does not
//! hold, a decode time per output token, and vLLM's queue and KV-cache gauges on `/metrics`.
//!
//! It speaks OpenAI's chat and text completions, streamed (the head at once, as vLLM sends it,
//! then the first token after the prefill) or whole. The request's class, for the server's own
//! tallies, is read from a marker its prompt carries (`#sim:completion`, `#sim:chat`,
//! `#sim:agent`); so is the number of tokens it generates.

use super::{MockBody, full, vllm_gauges};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Mutex as FairMutex, Semaphore};

/// Bytes of prompt per token (English and code, roughly).
pub const BYTES_PER_TOKEN: usize = 4;

/// Tokens per KV-cache block (vLLM's default block size).
const BLOCK_TOKENS: usize = 16;

/// What the simulated GPU can do. The defaults are published vLLM figures for a 7–8B model
/// (Llama 3 8B, Qwen2.5 7B) in bf16 on one A100 40 GB; see the README's fleet table.
#[derive(Debug, Clone, Copy)]
pub struct SimParams {
    /// Requests in the running batch at once (`--max-num-seqs`, as the KV cache allows).
    pub slots: usize,
    /// Prefill throughput, prompt tokens per second.
    pub prefill_tokens_per_second: f64,
    /// Time per output token of one request while decoding.
    pub decode_per_token: Duration,
    /// Tokens the prefix cache holds (the KV cache left after the weights).
    pub cache_tokens: usize,
    /// Every duration is multiplied by this (0.25: four times faster than real), so that a run
    /// of simulated minutes takes seconds; arrival rates are scaled alike by the workload.
    pub time_scale: f64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            slots: 16,
            prefill_tokens_per_second: 10_000.0,
            decode_per_token: Duration::from_millis(15),
            cache_tokens: 150_000,
            time_scale: 1.0,
        }
    }
}

/// The classes the server tallies, in the order of [`SimStats::classes`].
pub const CLASSES: [&str; 3] = ["completion", "chat", "agent"];

/// Output tokens per class: a line of code, a chat answer, an agent's turn.
const OUTPUT_TOKENS: [usize; 3] = [32, 150, 200];

/// What one class of requests cost the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClassStats {
    /// Requests served.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Prompt tokens found in the prefix cache.
    pub cached_tokens: u64,
}

/// The server's tallies.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimStats {
    /// By class, as [`CLASSES`].
    pub classes: [ClassStats; 3],
}

/// An LRU set of KV-cache blocks, each named by the hash of the prompt up to its end.
#[derive(Debug, Default)]
struct PrefixCache {
    capacity_blocks: usize,
    last_use: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
    tick: u64,
}

impl PrefixCache {
    fn touch(&mut self, block: u64) {
        self.tick += 1;
        if let Some(old) = self.last_use.insert(block, self.tick) {
            self.by_age.remove(&old);
        }
        self.by_age.insert(self.tick, block);
    }

    /// How many of `blocks` (a prompt's, in order) are cached from its start; those are
    /// touched.
    fn hit(&mut self, blocks: &[u64]) -> usize {
        let found = blocks.iter().take_while(|block| self.last_use.contains_key(block)).count();
        for &block in &blocks[..found] {
            self.touch(block);
        }
        found
    }

    /// Keep `blocks`, evicting the least recently used beyond the capacity.
    fn insert(&mut self, blocks: &[u64]) {
        for &block in blocks {
            self.touch(block);
        }
        while self.last_use.len() > self.capacity_blocks {
            let Some((&age, &block)) = self.by_age.iter().next() else { break };
            self.by_age.remove(&age);
            self.last_use.remove(&block);
        }
    }
}

/// A prompt's blocks: each full block's hash chained on the previous one, as vLLM names them.
fn blocks(prompt: &[u8]) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    let mut previous = 0u64;
    prompt
        .chunks_exact(BLOCK_TOKENS * BYTES_PER_TOKEN)
        .map(|chunk| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            previous.hash(&mut hasher);
            chunk.hash(&mut hasher);
            previous = hasher.finish();
            previous
        })
        .collect()
}

struct SimState {
    params: SimParams,
    slots: Semaphore,
    /// One prefill at a time, first come first served.
    prefill: FairMutex<()>,
    cache: Mutex<PrefixCache>,
    waiting: std::sync::atomic::AtomicU32,
    running: std::sync::atomic::AtomicU32,
    /// Prompt tokens of the running requests (their KV cache).
    running_tokens: std::sync::atomic::AtomicU64,
    stats: Mutex<SimStats>,
    /// Tasks serving connections, aborted by [`SimulatedServer::kill`].
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// A running simulated model server; stops when dropped or killed.
pub struct SimulatedServer {
    addr: SocketAddr,
    state: Arc<SimState>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for SimulatedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl SimulatedServer {
    /// Start on `127.0.0.1` with an ephemeral port.
    pub async fn start(params: SimParams) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState {
            params,
            slots: Semaphore::new(params.slots),
            prefill: FairMutex::new(()),
            cache: Mutex::new(PrefixCache {
                capacity_blocks: params.cache_tokens / BLOCK_TOKENS,
                ..PrefixCache::default()
            }),
            waiting: 0.into(),
            running: 0.into(),
            running_tokens: 0.into(),
            stats: Mutex::new(SimStats::default()),
            connections: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(SimulatedServer { addr, state, accept })
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Its tallies so far.
    pub fn stats(&self) -> SimStats {
        *self.state.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Die as a crashed process does: stop accepting and drop every connection, answers
    /// half-sent included.
    pub fn kill(&self) {
        self.accept.abort();
        for connection in self.state.connections.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            connection.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<SimState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&serving);
                async move { Ok::<_, Infallible>(answer(state, request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut connections = state.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.retain(|connection| !connection.is_finished());
        connections.push(task.abort_handle());
    }
}

/// The prompt's text: the messages' contents in order, or a text completion's prompt.
fn prompt_text(request: &Value) -> String {
    if let Some(prompt) = request.get("prompt").and_then(Value::as_str) {
        return prompt.to_string();
    }
    let mut text = String::new();
    for message in request.get("messages").and_then(Value::as_array).into_iter().flatten() {
        match message.get("content") {
            Some(Value::String(content)) => text.push_str(content),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).for_each(|t| text.push_str(t));
            }
            _ => {}
        }
        text.push('\n');
    }
    text
}

fn class_of(prompt: &str) -> usize {
    CLASSES.iter().position(|class| prompt.contains(&format!("#sim:{class}"))).unwrap_or(1)
}

async fn answer(state: Arc<SimState>, request: Request<Incoming>) -> Response<MockBody> {
    if request.method() == http::Method::GET {
        return match request.uri().path() {
            "/metrics" => full(StatusCode::OK, "text/plain; version=0.0.4", metrics(&state)),
            "/health" => full(StatusCode::OK, "text/plain", String::new()),
            _ => full(StatusCode::NOT_FOUND, "application/json", "{}".into()),
        };
    }
    let chat = request.uri().path().ends_with("/chat/completions");
    let bytes = request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
        return full(
            StatusCode::BAD_REQUEST,
            "application/json",
            json!({"error": {"message": "not JSON"}}).to_string(),
        );
    };
    let prompt = prompt_text(&body);
    let class = class_of(&prompt);
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let model = body.get("model").and_then(Value::as_str).unwrap_or("sim").to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let work = tokio::spawn(serve(Arc::clone(&state), prompt, class, tx));
    if !stream {
        let mut rx = rx;
        while rx.recv().await.is_some() {}
        let _ = work.await;
        let generated = words(OUTPUT_TOKENS[class]);
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": generated}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": generated, "finish_reason": "stop"})
        };
        let object = if chat { "chat.completion" } else { "text_completion" };
        let answer = json!({"id": "sim", "object": object, "model": model, "choices": [choice]});
        return full(StatusCode::OK, "application/json", answer.to_string());
    }
    // The head goes at once, as vLLM's does; events follow as the simulation produces them.
    let events = futures_util::stream::unfold((rx, false), move |(mut rx, done)| {
        let model = model.clone();
        async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(piece) => {
                    let text = String::from_utf8_lossy(&piece).into_owned();
                    let choice = if chat {
                        json!({"index": 0, "delta": {"content": text}, "finish_reason": null})
                    } else {
                        json!({"index": 0, "text": text, "finish_reason": null})
                    };
                    let event =
                        json!({"id": "sim", "object": "chat.completion.chunk", "model": model, "choices": [choice]});
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {event}\n\n")))), (rx, false)))
                }
                None => {
                    let end = Bytes::from_static(b"data: [DONE]\n\n");
                    Some((Ok(Frame::data(end)), (rx, true)))
                }
            }
        }
    });
    let mut response = Response::new(StreamBody::new(events).boxed_unsync());
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    response
}

/// `count` generated tokens of text, the last one `<END>` (a client can tell a whole answer).
fn words(count: usize) -> String {
    let mut text = "x ".repeat(count.saturating_sub(1));
    text.push_str("<END>");
    text
}

/// Serve one request: wait for a slot and the prefill, prefill what the cache lacks, then
/// decode, sending the generated text to `out` in a few pieces.
async fn serve(state: Arc<SimState>, prompt: String, class: usize, out: tokio::sync::mpsc::Sender<Bytes>) {
    use std::sync::atomic::Ordering::Relaxed;
    let scale = |duration: Duration| duration.mul_f64(state.params.time_scale);
    let prompt_blocks = blocks(prompt.as_bytes());
    let prompt_tokens = (prompt.len() / BYTES_PER_TOKEN) as u64;
    state.waiting.fetch_add(1, Relaxed);
    let Ok(_slot) = state.slots.acquire().await else { return };
    let cached_tokens = {
        let _prefill = state.prefill.lock().await;
        state.waiting.fetch_sub(1, Relaxed);
        state.running.fetch_add(1, Relaxed);
        state.running_tokens.fetch_add(prompt_tokens, Relaxed);
        let cached = state.cache.lock().unwrap_or_else(|p| p.into_inner()).hit(&prompt_blocks) * BLOCK_TOKENS;
        let cached = (cached as u64).min(prompt_tokens);
        let uncached = prompt_tokens - cached;
        let prefill = Duration::from_secs_f64(uncached as f64 / state.params.prefill_tokens_per_second);
        tokio::time::sleep(scale(prefill)).await;
        state.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(&prompt_blocks);
        cached
    };
    {
        let mut stats = state.stats.lock().unwrap_or_else(|p| p.into_inner());
        let tally = &mut stats.classes[class];
        tally.requests += 1;
        tally.prompt_tokens += prompt_tokens;
        tally.cached_tokens += cached_tokens;
    }
    let finish = |state: &SimState| {
        state.running.fetch_sub(1, Relaxed);
        state.running_tokens.fetch_sub(prompt_tokens, Relaxed);
    };
    // The first token comes with the prefill; the rest, decoded, in up to eight pieces.
    let output = OUTPUT_TOKENS[class];
    let generated = words(output);
    let pieces = 8.min(output);
    let per_piece = generated.len().div_ceil(pieces);
    let mut rest = generated.as_bytes().chunks(per_piece);
    if let Some(first) = rest.next()
        && out.send(Bytes::copy_from_slice(first)).await.is_err()
    {
        return finish(&state);
    }
    let tokens_per_piece = (output - 1) as u32 / (pieces as u32 - 1).max(1);
    for piece in rest {
        tokio::time::sleep(scale(state.params.decode_per_token * tokens_per_piece)).await;
        if out.send(Bytes::copy_from_slice(piece)).await.is_err() {
            break;
        }
    }
    finish(&state);
}

fn metrics(state: &SimState) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let kv = state.running_tokens.load(Relaxed) as f64 / state.params.cache_tokens.max(1) as f64;
    vllm_gauges(state.waiting.load(Relaxed), state.running.load(Relaxed), kv.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_cache_finds_a_shared_start_and_evicts_the_least_recent() {
        let mut cache = PrefixCache { capacity_blocks: 8, ..PrefixCache::default() };
        let file = "a".repeat(64 * 4);
        let typed = format!("{file}{}", "b".repeat(64 * 2));
        cache.insert(&blocks(file.as_bytes()));
        assert_eq!(cache.hit(&blocks(typed.as_bytes())), 4, "the file's start is found, the new end is not");
        let other = "c".repeat(64 * 6);
        cache.insert(&blocks(other.as_bytes()));
        assert_eq!(cache.hit(&blocks(file.as_bytes())), 0, "evicted: the cache holds 8 blocks");
        assert_eq!(blocks(b"short").len(), 0, "a partial block is never cached");
    }

    #[test]
    fn a_prompt_says_its_class() {
        assert_eq!(class_of("def f():\n#sim:completion"), 0);
        assert_eq!(class_of("#sim:agent tools…"), 2);
        assert_eq!(class_of("anything else"), 1);
        assert_eq!(words(3), "x x <END>");
    }
}
