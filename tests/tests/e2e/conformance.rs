//! The shared provider conformance suite: every plugin in `target/plugins/` runs, in the real
//! sandbox, against its golden fixtures in `tests/conformance/<plugin>/*.json`. A fixture holds a
//! canonical request, the exact upstream request expected (method, path, credential placement,
//! headers, body) for the complete and the streamed call, a recorded-style complete answer and
//! stream, and the canonical result both must give. Streams are fed through the host's own frame
//! decoder whole and cut into chunks at every few bytes, so chunk boundaries inside UTF-8
//! sequences and frame headers are part of every run. A plugin without fixtures fails the suite.

use aigw::plugins::{PluginRuntime, PluginSession, SandboxLimits, wit};
use aigw::upstream::framing::Decoder;
use aigw_mock::event_stream;
use aigw_tests::{component, workspace};
use serde_json::{Value, json};
use std::path::Path;

fn role(name: &str) -> wit::Role {
    match name {
        "system" => wit::Role::System,
        "user" => wit::Role::User,
        "assistant" => wit::Role::Assistant,
        other => panic!("fixture role {other:?}"),
    }
}

fn model_request(fixture: &Value, stream: bool) -> wit::ModelRequest {
    let request = &fixture["request"];
    let sampling = &request["sampling"];
    wit::ModelRequest {
        model: request["model"].as_str().unwrap().to_string(),
        messages: request["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| wit::Message {
                role: role(m["role"].as_str().unwrap()),
                content: m["content"].as_str().unwrap().to_string(),
            })
            .collect(),
        fill_in_middle: request["fill_in_middle"].as_object().map(|fim| wit::FillInMiddle {
            prefix: fim["prefix"].as_str().unwrap().to_string(),
            suffix: fim["suffix"].as_str().unwrap().to_string(),
        }),
        sampling: wit::Sampling {
            max_tokens: sampling["max_tokens"].as_u64().map(|n| n as u32),
            temperature: sampling["temperature"].as_f64().map(|t| t as f32),
            top_p: sampling["top_p"].as_f64().map(|t| t as f32),
            stop: sampling["stop"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect(),
        },
        stream,
    }
}

fn credential(credential: &wit::Credential) -> Value {
    match credential {
        wit::Credential::None => json!("none"),
        wit::Credential::Bearer => json!("bearer"),
        wit::Credential::Header(name) => json!({"header": name}),
        wit::Credential::AwsSigv4(service) => json!({"aws-sigv4": service}),
    }
}

fn finish(reason: &Option<wit::FinishReason>) -> Value {
    match reason {
        None => Value::Null,
        Some(wit::FinishReason::Stop) => json!("stop"),
        Some(wit::FinishReason::Length) => json!("length"),
        Some(wit::FinishReason::Other(other)) => json!(other),
    }
}

/// The request as the fixtures write it.
fn upstream(built: &wit::UpstreamRequest) -> Value {
    let method = match built.method {
        wit::Method::Get => "GET",
        wit::Method::Post => "POST",
    };
    let headers: serde_json::Map<String, Value> =
        built.headers.iter().map(|h| (h.name.to_ascii_lowercase(), json!(h.value))).collect();
    let body: Value = serde_json::from_slice(&built.body).expect("the upstream body is JSON");
    json!({"method": method, "path": built.path, "credential": credential(&built.credential), "headers": headers, "body": body})
}

/// The stream bytes of a fixture, in the plugin's framing.
fn stream_bytes(stream: &Value) -> Vec<u8> {
    if let Some(text) = stream.get("sse").or_else(|| stream.get("ndjson")) {
        return text.as_str().unwrap().as_bytes().to_vec();
    }
    let events = stream["aws-event-stream"].as_array().expect("sse, ndjson or aws-event-stream");
    events.iter().flat_map(|e| event_stream::event(e["event"].as_str().unwrap(), &e["payload"])).collect()
}

fn decoder(framing: wit::Framing) -> Decoder {
    match framing {
        wit::Framing::Sse => Decoder::sse(),
        wit::Framing::Ndjson => Decoder::ndjson(),
        wit::Framing::AwsEventStream => Decoder::aws_event_stream(),
    }
}

/// Feed `bytes` in chunks of `step` through the decoder and the plugin, as the host does; the
/// result is the joined text, the last finish reason and the summed usage.
async fn run_stream(session: &mut PluginSession, framing: wit::Framing, bytes: &[u8], step: usize) -> Value {
    let mut decoder = decoder(framing);
    let (mut text, mut finish_reason, mut usage, mut done) = (String::new(), Value::Null, (0u32, 0u32), false);
    let mut chunks = bytes.chunks(step).map(Some).chain(std::iter::once(None));
    while !done && let Some(chunk) = chunks.next() {
        let events = match chunk {
            Some(chunk) => {
                decoder.push(chunk).unwrap();
                std::iter::from_fn(|| decoder.next_event().unwrap()).collect::<Vec<_>>()
            }
            None => decoder.finish().into_iter().collect(),
        };
        for event in events {
            let parsed = session.parse_event(event.name.as_deref(), &event.data).await.unwrap();
            text.push_str(&parsed.text);
            if parsed.finish_reason.is_some() {
                finish_reason = finish(&parsed.finish_reason);
            }
            if let Some(u) = parsed.usage {
                usage = (usage.0 + u.input_tokens, usage.1 + u.output_tokens);
            }
            if parsed.done {
                done = true;
                break;
            }
        }
    }
    json!({"text": text, "finish_reason": finish_reason, "usage": [usage.0, usage.1]})
}

async fn check_fixture(runtime: &std::sync::Arc<PluginRuntime>, plugin_name: &str, path: &Path) {
    let case = format!("{plugin_name}/{}", path.file_name().unwrap().to_string_lossy());
    let fixture: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let plugin = runtime.load(std::fs::read(component(&format!("plugins/{plugin_name}.wasm"))).unwrap()).await.unwrap();
    let framing = plugin.identity().framing;

    let mut session = plugin.session().await.unwrap();
    let built = session.build_request(&model_request(&fixture, false)).await.unwrap();
    assert_eq!(upstream(&built), fixture["upstream"], "{case}: upstream request");
    let streamed = upstream(&session.build_request(&model_request(&fixture, true)).await.unwrap());
    let expected_stream = &fixture["stream_upstream"];
    assert_eq!(streamed["path"], expected_stream["path"], "{case}: streamed upstream path");
    assert_eq!(streamed["body"], expected_stream["body"], "{case}: streamed upstream body");

    let answer = serde_json::to_vec(&fixture["answer"]).unwrap();
    let completion = session.parse_response(&answer).await.unwrap();
    let usage = completion.usage.map(|u| json!([u.input_tokens, u.output_tokens])).unwrap_or(Value::Null);
    let whole = json!({"text": completion.text, "finish_reason": finish(&completion.finish_reason), "usage": usage});
    assert_eq!(whole, fixture["expected"], "{case}: complete answer");

    let bytes = stream_bytes(&fixture["stream"]);
    for step in [bytes.len().max(1), 1, 3, 7, 64] {
        let mut session = plugin.session().await.unwrap();
        let result = run_stream(&mut session, framing, &bytes, step).await;
        assert_eq!(result, fixture["expected"], "{case}: stream in chunks of {step} bytes");
    }
}

#[tokio::test]
async fn every_plugin_passes_its_golden_fixtures() {
    let runtime = PluginRuntime::new(SandboxLimits::default()).unwrap();
    let mut plugins: Vec<String> = std::fs::read_dir(workspace().join("target/plugins"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wasm"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    plugins.sort();
    assert_eq!(
        plugins,
        ["anthropic", "azure-openai", "bedrock", "mistral", "ollama", "openai-compatible"],
        "every provider of the README has a plugin"
    );
    let mut cases = 0;
    for plugin in &plugins {
        let dir = workspace().join("tests/conformance").join(plugin);
        let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("plugin {plugin} has no fixtures in {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .collect();
        fixtures.sort();
        assert!(!fixtures.is_empty(), "plugin {plugin} has no fixtures");
        for fixture in fixtures {
            check_fixture(&runtime, plugin, &fixture).await;
            cases += 1;
        }
    }
    assert_eq!(cases, 8);
}
