//! Criterion micro-benchmarks of the pieces on a request's path: the plugin round trip (fresh
//! store, build + parse) against the same translation in native Rust, JWT verification with a
//! cached and an uncached token, prompt rendering, and stream frame decoding.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark set-up: failing loudly is the point")]

use aigw::plugins::{PluginRuntime, SandboxLimits};
use aigw::upstream::framing::Decoder;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

#[path = "../src/workload.rs"]
mod workload;

use workload::{ANSWER, native_request, prefix, wit_request};

fn plugin_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bytes = std::fs::read("../target/plugins/openai-compatible.wasm")
        .or_else(|_| std::fs::read("target/plugins/openai-compatible.wasm"))
        .expect("target/plugins/openai-compatible.wasm (run `make build`)");
    let plugin = runtime.block_on(async { PluginRuntime::new(SandboxLimits::default())?.load(bytes).await }).unwrap();
    let prefix = prefix();
    let (request, native) = (wit_request(&prefix), native_request(&prefix));
    let mut group = c.benchmark_group("plugin_round_trip");
    group.bench_function("wasm_fresh_store", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut session = plugin.session().await.unwrap();
                let built = session.build_request(&request).await.unwrap();
                black_box((built, session.parse_response(ANSWER.as_bytes()).await.unwrap()))
            })
        })
    });
    group.bench_function("native", |b| {
        b.iter(|| {
            let built = openai_compatible::translate::build_request(&native).unwrap();
            black_box((built, openai_compatible::translate::parse_response(ANSWER.as_bytes()).unwrap()))
        })
    });
    group.finish();
}

fn jwt_verification(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let key = aigw::auth::SigningKey::generate().unwrap();
    let token = key.sign(&aigw::auth::keys::DevClaims::new(aigw::DEV_ISSUER, Duration::from_secs(3600))).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("x-gitlab-authentication-type", "oidc".parse().unwrap());
    let verifier =
        || aigw::auth::Verifier::new().trust_local_key(aigw::DEV_ISSUER, key.kid(), key.decoding_key().clone());
    let mut group = c.benchmark_group("jwt_verification");
    let cached = verifier();
    runtime.block_on(cached.authenticate(&headers)).unwrap();
    group.bench_function("cached_token", |b| b.iter(|| runtime.block_on(cached.authenticate(&headers)).unwrap()));
    group.bench_function("uncached_rs256", |b| {
        b.iter_batched(verifier, |fresh| runtime.block_on(fresh.authenticate(&headers)).unwrap(), BatchSize::SmallInput)
    });
    group.finish();
}

fn prompt_rendering(c: &mut Criterion) {
    let registry = aigw::prompts::PromptRegistry::embedded().unwrap();
    let prefix = prefix();
    let mut group = c.benchmark_group("prompt_rendering");
    for family in ["codestral", "qwen", "llama3"] {
        let prompt = registry.code_completion(family).unwrap();
        let variables =
            minijinja::context! { prefix => prefix, suffix => "\n", language => "python", file_name => "app.py" };
        group.bench_function(family, |b| b.iter(|| black_box(registry.render(prompt, &variables).unwrap())));
    }
    group.finish();
}

fn stream_framing(c: &mut Criterion) {
    let mut sse = Vec::new();
    for i in 0..100 {
        sse.extend_from_slice(
            format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\r\n\r\n").as_bytes(),
        );
    }
    let mut aws = Vec::new();
    for i in 0..100 {
        aws.extend(aigw_mock::event_stream::event(
            "contentBlockDelta",
            &serde_json::json!({"contentBlockIndex": 0, "delta": {"text": format!("tok{i} ")}}),
        ));
    }
    let mut group = c.benchmark_group("stream_framing_100_events");
    for (name, bytes, decoder) in
        [("sse", &sse, Decoder::sse as fn() -> Decoder), ("aws_event_stream", &aws, Decoder::aws_event_stream)]
    {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut decoder = decoder();
                let mut events = 0;
                // Pieces of 512 bytes, as a socket delivers them.
                for piece in bytes.chunks(512) {
                    decoder.push(piece).unwrap();
                    while decoder.next_event().unwrap().is_some() {
                        events += 1;
                    }
                }
                black_box(events)
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1))
}

criterion_group! { name = micro; config = config(); targets = plugin_round_trip, jwt_verification, prompt_rendering, stream_framing }
criterion_main!(micro);
