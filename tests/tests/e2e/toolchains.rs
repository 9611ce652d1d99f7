//! The openai-compatible plugin built by `cargo component` and by plain cargo for wasm32-wasip2:
//! both load and give identical results for identical inputs.

use aigw::plugins::{PluginRuntime, SandboxLimits, wit};
use aigw_tests::component;

fn request(stream: bool) -> wit::ModelRequest {
    wit::ModelRequest {
        model: "qwen2.5-coder:7b".into(),
        messages: vec![
            wit::Message { role: wit::Role::System, content: "Complete the code.".into() },
            wit::Message { role: wit::Role::User, content: "fn main() {\n    println!(\"é\");\n".into() },
        ],
        fill_in_middle: Some(wit::FillInMiddle { prefix: "fn main() {".into(), suffix: "}".into() }),
        sampling: wit::Sampling {
            max_tokens: Some(96),
            temperature: Some(0.2),
            top_p: Some(0.9),
            stop: vec!["\n\n".into()],
        },
        stream,
    }
}

#[tokio::test]
async fn cargo_component_and_wasip2_builds_behave_the_same() {
    let runtime = PluginRuntime::new(SandboxLimits::default()).unwrap();
    let mut outputs = Vec::new();
    for file in ["plugins/openai-compatible.wasm", "test-guests/openai-compatible.cargo-component.wasm"] {
        let plugin = runtime.load(std::fs::read(component(file)).unwrap()).await.unwrap();
        let mut session = plugin.session().await.unwrap();
        let identity = plugin.identity().clone();
        let built = session.build_request(&request(false)).await.unwrap();
        let streamed = session.build_request(&request(true)).await.unwrap();
        let parsed = session
            .parse_response(br#"{"choices":[{"message":{"content":"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1}}"#)
            .await
            .unwrap();
        let event = session
            .parse_event(None, br#"{"choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#)
            .await
            .unwrap();
        let done = session.parse_event(None, b"[DONE]").await.unwrap();
        let malformed = session.parse_response(b"<html>").await.unwrap_err().to_string();
        outputs.push(format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {}",
            (identity.name, identity.version, identity.providers, identity.framing),
            built.path,
            String::from_utf8(built.body).unwrap(),
            built.credential,
            String::from_utf8(streamed.body).unwrap(),
            parsed,
            event,
            done,
            malformed
        ));
    }
    assert_eq!(outputs[0], outputs[1]);
    // Debug-formatted, so the JSON's quotes appear escaped.
    assert!(outputs[0].contains(r#"\"stream_options\":{\"include_usage\":true}"#), "{}", outputs[0]);
}
