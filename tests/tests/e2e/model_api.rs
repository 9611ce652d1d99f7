//! The OpenAI-compatible model API: named models, client keys, tool calls through the
//! openai-compatible plugin, streamed and whole, OpenAI's error object, and the route it shares
//! with GitLab's `/v1/chat/{invokable}`.

use aigw::models::key_sha256_hex;
use aigw_mock::{MockModelServer, MockToolCall, Reply};
use aigw_tests::{Setup, TestGateway, component};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "sk-aigw-test-key-0123456789";
const NARROW_KEY: &str = "sk-aigw-narrow-key-0123456789";
const FAR_KEY: &str = "sk-aigw-far-away-key-0123456789";

/// A models file: `coder` at the mock (vLLM's shape), `other` nowhere reachable, a key for
/// every model, a key for `coder` only, a key usable from 10.0.0.0/8 only.
fn models_file(mock: &MockModelServer) -> String {
    std::fs::write(std::env::temp_dir().join("aigw-model-api-upstream-key"), "upstream-secret\n").unwrap();
    format!(
        r#"
gateway_urls = ["http://aigw.test:5052/v1"]

[[models]]
name = "coder"
identifier = "custom_openai/Qwen/Qwen3-Coder-30B"
endpoint = "{base}"
api_key_file = "{key_file}"

[[models]]
name = "other"
identifier = "custom_openai/other"
endpoint = "http://127.0.0.1:9/v1"

[[keys]]
id = "all-models"
sha256 = "{all}"
models = ["*"]

[[keys]]
id = "coder-only"
sha256 = "{narrow}"
models = ["coder"]

[[keys]]
id = "private-network"
sha256 = "{far}"
models = ["*"]
networks = ["10.0.0.0/8"]
"#,
        base = mock.base_url(),
        key_file = std::env::temp_dir().join("aigw-model-api-upstream-key").display(),
        all = key_sha256_hex(KEY),
        narrow = key_sha256_hex(NARROW_KEY),
        far = key_sha256_hex(FAR_KEY),
    )
}

async fn gateway() -> TestGateway {
    Setup::default().models(models_file).start().await
}

fn bearer(key: &str) -> Vec<(String, String)> {
    vec![("authorization".to_string(), format!("Bearer {key}")), ("content-type".into(), "application/json".into())]
}

async fn chat(t: &TestGateway, key: &str, body: &Value) -> aigw_tests::Answer {
    t.post("/v1/chat/completions", &bearer(key), body).await
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|event| event.strip_prefix("data: ")).map(str::to_string).collect()
}

fn tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_work_item",
        "description": "Read a work item.",
        "parameters": {"type": "object", "properties": {"project_id": {"type": "integer"}, "work_item_iid": {"type": "integer"}}}
    }}])
}

fn calling(arguments: &str) -> Reply {
    Reply {
        tool_calls: vec![MockToolCall {
            id: "call_b6d9".into(),
            name: "get_work_item".into(),
            arguments: arguments.into(),
        }],
        finish_reason: "tool_calls".into(),
        chunks: 3,
        ..Reply::default()
    }
}

#[tokio::test]
async fn a_named_model_answers_whole_as_the_model_server_did() {
    let t = gateway().await;
    let answer = chat(&t, KEY, &json!({"model": "coder", "messages": [{"role": "user", "content": "add"}]})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "return a + b");
    assert_eq!(body["usage"]["prompt_tokens"], 12);
    let sent = &t.model.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["model"], "Qwen/Qwen3-Coder-30B", "the name is mapped to the server's model");
    assert_eq!(sent.headers["authorization"], "Bearer upstream-secret", "the named model's own credential");
}

#[tokio::test]
async fn a_stream_passes_through_as_sent_with_usage_only_when_asked() {
    let t = gateway().await;
    let body = json!({"model": "coder", "stream": true, "messages": [{"role": "user", "content": "add"}]});
    let answer = chat(&t, KEY, &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.header("content-type").unwrap().starts_with("text/event-stream"));
    let events = sse_data(&answer.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "return a + b");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "no usage chunk unasked: {events:?}");
    assert_eq!(chunks[0]["model"], "Qwen/Qwen3-Coder-30B", "the server's own chunks");
    assert_eq!(t.model.requests()[0].body["stream_options"], json!({"include_usage": true}), "aigw counts tokens");

    let mut asked = body.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let events = sse_data(&chat(&t, KEY, &asked).await.text());
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!((usage["choices"].clone(), usage["usage"]["completion_tokens"].clone()), (json!([]), json!(5)));
}

#[tokio::test]
async fn a_tool_round_trip_reaches_the_model_server_and_the_client_intact() {
    let t = gateway().await;
    t.model.set_reply(calling(r#"{"project_id": 1000, "work_item_iid": 42}"#));
    let ask = json!({
        "model": "coder",
        "messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": "What is #42?"}],
        "tools": tools(),
        "temperature": 0.0,
        "max_tokens": 32768,
    });
    let whole = chat(&t, KEY, &ask).await.json();
    let call = &whole["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], r#"{"project_id": 1000, "work_item_iid": 42}"#);
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    let sent = t.model.requests()[0].body.clone();
    assert_eq!(sent["tools"], tools(), "the schemas as the client sent them");
    assert_eq!((sent["temperature"].clone(), sent["max_tokens"].clone()), (json!(0.0), json!(32768)));

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let events = sse_data(&chat(&t, KEY, &streamed).await.text());
    let pieces: Vec<Value> =
        events.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
    let arguments: String = pieces
        .iter()
        .filter_map(|p| p["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, r#"{"project_id": 1000, "work_item_iid": 42}"#);
    assert_eq!(pieces[0]["choices"][0]["delta"]["tool_calls"][0]["id"], "call_b6d9");

    t.model.set_reply(Reply { text: "Issue 42 is open.".into(), ..Reply::default() });
    let mut answered = ask.clone();
    let messages = answered["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "call_b6d9", "function": {"name": "get_work_item", "arguments": "{\"work_item_iid\": 42}"}}
    ]}));
    messages.push(json!({"role": "tool", "tool_call_id": "call_b6d9", "content": "{\"state\": \"OPEN\"}"}));
    let last = chat(&t, KEY, &answered).await.json();
    assert_eq!(last["choices"][0]["message"]["content"], "Issue 42 is open.");
    let sent = t.model.requests().last().unwrap().body.clone();
    let mut expected = answered["messages"].clone();
    expected[2]["content"] = json!("");
    assert_eq!(sent["messages"], expected, "the assistant's call and the tool's result as the client sent them");
}

#[tokio::test]
async fn fields_aigw_does_not_read_reach_the_model_server() {
    let t = gateway().await;
    let body = json!({
        "model": "coder",
        "messages": [{"role": "user", "content": "x"}],
        "top_k": 20,
        "chat_template_kwargs": {"enable_thinking": false},
        "seed": 7,
        "response_format": {"type": "json_object"},
    });
    assert_eq!(chat(&t, KEY, &body).await.status, StatusCode::OK);
    let sent = t.model.requests()[0].body.clone();
    assert_eq!(sent["top_k"], 20);
    assert_eq!(sent["chat_template_kwargs"], json!({"enable_thinking": false}));
    assert_eq!((sent["seed"].clone(), sent["response_format"].clone()), (json!(7), json!({"type": "json_object"})));
}

/// OpenAI's error object with `status`, and its `code` and `param`.
async fn refused(answer: aigw_tests::Answer, status: StatusCode) -> Value {
    assert_eq!(answer.status, status, "{}", answer.text());
    let error = answer.json()["error"].clone();
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    assert!(error["type"].is_string(), "{error}");
    error
}

#[tokio::test]
async fn keys_models_and_networks_are_refused_in_openais_shape() {
    let t = gateway().await;
    let ask = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
    let none = t.post("/v1/chat/completions", &[], &ask("coder")).await;
    assert_eq!(refused(none, StatusCode::UNAUTHORIZED).await["code"], "invalid_api_key");
    let unknown = chat(&t, "sk-not-a-key", &ask("coder")).await;
    assert_eq!(refused(unknown, StatusCode::UNAUTHORIZED).await["code"], "invalid_api_key");
    let missing = chat(&t, KEY, &ask("ghost")).await;
    assert_eq!(refused(missing, StatusCode::NOT_FOUND).await["code"], "model_not_found");
    let not_allowed = chat(&t, NARROW_KEY, &ask("other")).await;
    refused(not_allowed, StatusCode::FORBIDDEN).await;
    assert_eq!(chat(&t, NARROW_KEY, &ask("coder")).await.status, StatusCode::OK, "its own model");
    let far = chat(&t, FAR_KEY, &ask("coder")).await;
    refused(far, StatusCode::FORBIDDEN).await;
    assert!(t.model.requests().len() == 1, "no refused request reached the model server");

    let two = chat(&t, KEY, &json!({"model": "coder", "n": 2, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(refused(two, StatusCode::BAD_REQUEST).await["param"], "n");
    let image = json!({"model": "coder", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
    assert_eq!(refused(chat(&t, KEY, &image).await, StatusCode::BAD_REQUEST).await["param"], "messages[0].content[0]");
    let text = t.request(Method::POST, "/v1/chat/completions", &bearer(KEY), Bytes::from_static(b"{not json")).await;
    refused(text, StatusCode::BAD_REQUEST).await;

    let metrics = t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text();
    let count = |series: &str| aigw_tests::metric(&metrics, series);
    assert_eq!(count(r#"aigw_model_api_requests_total{model="none",key="none",status="401"}"#), Some(2.0), "{metrics}");
    assert_eq!(count(r#"aigw_model_api_requests_total{model="none",key="all-models",status="404"}"#), Some(1.0));
    assert_eq!(count(r#"aigw_model_api_requests_total{model="none",key="coder-only",status="403"}"#), Some(1.0));
    assert_eq!(count(r#"aigw_model_api_requests_total{model="none",key="private-network",status="403"}"#), Some(1.0));
    assert_eq!(count(r#"aigw_model_api_requests_total{model="coder",key="coder-only",status="200"}"#), Some(1.0));
    assert_eq!(count(r#"aigw_model_api_tokens_total{model="coder",key="coder-only",direction="output"}"#), Some(5.0));
}

#[tokio::test]
async fn a_body_past_the_model_api_limit_is_a_413_in_openais_shape() {
    let t = Setup::default().models(models_file).env("AIGW_MODELS__MAX_BODY_BYTES", "200000").start().await;
    let body = |size: usize| json!({"model": "coder", "messages": [{"role": "user", "content": "x".repeat(size)}]});
    assert_eq!(chat(&t, KEY, &body(150_000)).await.status, StatusCode::OK, "within the limit");
    refused(chat(&t, KEY, &body(250_000)).await, StatusCode::PAYLOAD_TOO_LARGE).await;
}

#[tokio::test]
async fn gitlabs_chat_and_the_model_api_share_v1_chat_and_each_keeps_its_callers() {
    let t = gateway().await;
    let gitlab = t.gitlab_headers(&t.token(&["duo_chat"]));
    let classic = json!({
        "prompt_components": [{"type": "prompt", "metadata": {"source": "GitLab EE", "version": "18.5.0"},
            "payload": {"content": "Explain: a + b", "provider": "litellm", "model": "mistral",
                        "model_endpoint": t.model.base_url(), "model_identifier": "custom_openai/m"}}],
        "stream": false,
    });
    let answered = t.post("/v1/chat/explain_code", &gitlab, &classic).await;
    assert_eq!(answered.status, StatusCode::OK, "GitLab's invokable: {}", answered.text());
    let with_token = t.post("/v1/chat/completions", &gitlab, &json!({"model": "coder", "messages": []})).await;
    assert_eq!(refused(with_token, StatusCode::UNAUTHORIZED).await["code"], "invalid_api_key", "a JWT is no key");
    let with_key = t.post("/v1/chat/explain_code", &bearer(KEY), &classic).await;
    assert_eq!(with_key.status, StatusCode::UNAUTHORIZED, "a key is no GitLab token");
    assert!(with_key.json().get("error").is_some_and(Value::is_string), "GitLab's shape: {}", with_key.text());
}

#[tokio::test]
async fn the_models_list_shows_what_the_key_may_use() {
    let t = gateway().await;
    let list = t.request(Method::GET, "/v1/models", &bearer(NARROW_KEY), Bytes::new()).await.json();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["coder"]);
    let all = t.request(Method::GET, "/v1/models", &bearer(KEY), Bytes::new()).await.json();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let one = t.request(Method::GET, "/v1/models/coder", &bearer(KEY), Bytes::new()).await;
    assert_eq!(one.json()["id"], "coder");
    let definitions = t.request(Method::GET, "/v1/models/definitions", &[], Bytes::new()).await;
    assert_eq!(definitions.status, StatusCode::OK, "GitLab's own catalogue stays public");
    assert!(definitions.json().get("models").is_some());
}

#[tokio::test]
async fn plugins_built_before_tool_calling_serve_text_and_refuse_tools_naming_themselves() {
    // aigw:plugin@0.2.0 and @0.3.0 components, as authors who have not rebuilt have them.
    for (file, plugin) in [("previous.wasm", "previous"), ("previous-v3.wasm", "previous3")] {
        let t = Setup::default()
            .plugin(component(&format!("test-guests/{file}")), file)
            .models(move |mock| {
                format!(
                    "[[models]]\nname = \"old\"\nidentifier = \"{plugin}/m\"\nendpoint = \"{}\"\n\n[[keys]]\nid = \"k\"\nsha256 = \"{}\"\nmodels = [\"*\"]\n",
                    mock.base_url(),
                    key_sha256_hex(KEY)
                )
            })
            .start()
            .await;
        let text = chat(&t, KEY, &json!({"model": "old", "messages": [{"role": "user", "content": "x"}]})).await;
        assert_eq!(text.status, StatusCode::OK, "{plugin}: {}", text.text());
        assert_eq!(text.json()["choices"][0]["message"]["content"], "return a + b");
        let streamed =
            chat(&t, KEY, &json!({"model": "old", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
                .await;
        let events = sse_data(&streamed.text());
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{plugin}");
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!((first["object"].clone(), first["model"].clone()), (json!("chat.completion.chunk"), json!("old")));
        let tools =
            chat(&t, KEY, &json!({"model": "old", "tools": tools(), "messages": [{"role": "user", "content": "x"}]}))
                .await;
        let error = refused(tools, StatusCode::BAD_REQUEST).await;
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(&format!("plugin {plugin} ")) && message.contains("rebuild"), "{error}");
        // Embeddings: a 0.2.0 component has none; a 0.3.0 one's export is found by its own
        // version's interface name and called (this one answers that it cannot embed).
        let embedded = t.post("/v1/embeddings", &bearer(KEY), &json!({"model": "old", "input": "x"})).await;
        let error = refused(embedded, StatusCode::BAD_REQUEST).await;
        let expected = if plugin == "previous" { "cannot embed" } else { "previous3 has no embeddings" };
        assert!(error["message"].as_str().unwrap().contains(expected), "{plugin}: {error}");
    }
}

#[tokio::test]
async fn keys_and_models_change_on_reload_without_a_restart() {
    let t = gateway().await;
    let ask = json!({"model": "coder", "messages": [{"role": "user", "content": "x"}]});
    let new_key = "sk-aigw-added-later-0123456789";
    assert_eq!(chat(&t, new_key, &ask).await.status, StatusCode::UNAUTHORIZED);
    let file = t.models_dir.as_ref().unwrap().path().join("models.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let added =
        format!("{text}\n[[keys]]\nid = \"added\"\nsha256 = \"{}\"\nmodels = [\"coder\"]\n", key_sha256_hex(new_key));
    std::fs::write(&file, added).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while chat(&t, new_key, &ask).await.status != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "the new key never worked");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    std::fs::write(&file, "this is [not toml").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(chat(&t, new_key, &ask).await.status, StatusCode::OK, "a broken file keeps the last good set");
}

#[tokio::test]
async fn a_gitlab_request_naming_the_gateway_is_served_from_the_named_model_in_process() {
    let t = gateway().await;
    let mut body = t.completion_body("codestral", Some("custom_openai/coder"), false);
    body["model_endpoint"] = json!("http://aigw.test:5052/v1");
    body["model_api_key"] = json!(KEY);
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let sent = &t.model.requests()[0];
    assert_eq!(sent.body["model"], "Qwen/Qwen3-Coder-30B");
    assert_eq!(
        sent.headers["authorization"], "Bearer upstream-secret",
        "the named model's credential, not GitLab's key"
    );

    body["model_api_key"] = json!("sk-wrong");
    assert_eq!(t.complete(&body).await.status, StatusCode::UNAUTHORIZED, "GitLab's key is checked as a client key");
    body["model_api_key"] = json!(NARROW_KEY);
    body["model_identifier"] = json!("custom_openai/other");
    assert_eq!(t.complete(&body).await.status, StatusCode::FORBIDDEN);
    assert_eq!(t.model.requests().len(), 1);
}

#[tokio::test]
async fn an_agent_history_of_several_megabytes_fits_the_default_limit() {
    let t = gateway().await;
    // 400 tool round trips of ~12 KB each: an agent's long session, about 5 MB of JSON.
    let mut messages = vec![json!({"role": "user", "content": "Fix the pipeline."})];
    for turn in 0..400 {
        let id = format!("call_{turn}");
        messages.push(json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "get_job_logs", "arguments": format!("{{\"job_id\": {turn}}}")}}
        ]}));
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": "log line\n".repeat(1300)}));
    }
    let body = json!({"model": "coder", "messages": messages, "tools": tools(), "stream": true});
    assert!(body.to_string().len() > 4_500_000);
    let answer = chat(&t, KEY, &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(sse_data(&answer.text()).last().map(String::as_str), Some("[DONE]"));
    let received = t.model.requests()[0].body.clone();
    assert_eq!(received["messages"].as_array().unwrap().len(), 801);
    assert_eq!(received["messages"][800], body["messages"][800]);
}

/// A gateway whose model `claude` is served by the mock in Anthropic's Messages format.
async fn anthropic_gateway() -> TestGateway {
    Setup::default()
        .plugin(component("plugins/anthropic.wasm"), "anthropic.wasm")
        .models(|mock| {
            format!(
                "[[models]]\nname = \"claude\"\nidentifier = \"anthropic/claude-sonnet-4-5\"\nendpoint = \"{}\"\n\n\
                 [[keys]]\nid = \"k\"\nsha256 = \"{}\"\nmodels = [\"*\"]\n",
                mock.root_url(),
                key_sha256_hex(KEY)
            )
        })
        .start()
        .await
}

/// The tool calls an OpenAI client assembles from a stream's chunks: (id, name, arguments) by index.
fn assembled_calls(events: &[String]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        for piece in chunk["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = piece["index"].as_u64().unwrap() as usize;
            if calls.len() <= index {
                calls.resize(index + 1, Default::default());
            }
            let call = &mut calls[index];
            if let Some(id) = piece["id"].as_str() {
                call.0 = id.to_string();
            }
            if let Some(name) = piece["function"]["name"].as_str() {
                call.1 = name.to_string();
            }
            call.2.push_str(piece["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    calls
}

#[tokio::test]
async fn an_anthropic_tool_call_reaches_an_openai_client_intact_and_back() {
    let t = anthropic_gateway().await;
    t.model.set_reply(Reply { text: "Let me look.".into(), ..calling(r#"{"project_id": 1000, "work_item_iid": 42}"#) });
    let ask = json!({
        "model": "claude",
        "messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": "What is #42?"}],
        "tools": tools(),
    });
    let whole = chat(&t, KEY, &ask).await.json();
    let message = &whole["choices"][0]["message"];
    assert_eq!(message["content"], "Let me look.");
    assert_eq!(message["tool_calls"][0]["id"], "call_b6d9");
    assert_eq!(message["tool_calls"][0]["function"]["arguments"], r#"{"project_id":1000,"work_item_iid":42}"#);
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    let sent = t.model.requests()[0].body.clone();
    assert_eq!(sent["tools"][0]["input_schema"], tools()[0]["function"]["parameters"]);
    assert_eq!(sent["system"], "You help.");

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = sse_data(&chat(&t, KEY, &streamed).await.text());
    assert_eq!(
        assembled_calls(&events),
        [(
            "call_b6d9".to_string(),
            "get_work_item".to_string(),
            r#"{"project_id": 1000, "work_item_iid": 42}"#.to_string()
        )],
        "the call is index 0 for the client though Anthropic's block index is 1"
    );
    let finish: Vec<&str> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_string))
        .map(|reason| if reason == "tool_calls" { "tool_calls" } else { "other" })
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 12);

    t.model.set_reply(Reply { text: "Issue 42 is open.".into(), ..Reply::default() });
    let mut answered = ask.clone();
    let messages = answered["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
        {"type": "function", "id": "call_b6d9", "function": {"name": "get_work_item", "arguments": "{\"work_item_iid\": 42}"}}
    ]}));
    messages.push(json!({"role": "tool", "tool_call_id": "call_b6d9", "content": "{\"state\": \"OPEN\"}"}));
    let last = chat(&t, KEY, &answered).await.json();
    assert_eq!(last["choices"][0]["message"]["content"], "Issue 42 is open.");
    let sent = t.model.requests().last().unwrap().body.clone();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "What is #42?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_b6d9", "name": "get_work_item", "input": {"work_item_iid": 42}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_b6d9", "content": "{\"state\": \"OPEN\"}"}]}
        ])
    );
    let refused =
        chat(&t, KEY, &json!({"model": "claude", "top_k": 3, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("top_k"), "{}", refused.text());
}

/// Every plugin, a tool call whole and streamed, and the round trip back: the client always sees
/// OpenAI's shapes, whatever the provider speaks.
#[tokio::test]
async fn every_plugin_takes_a_tool_round_trip() {
    use aigw_mock::sigv4;
    let plugins = ["anthropic", "azure-openai", "bedrock", "mistral", "ollama"];
    let mut setup = Setup::default()
        .env("AWS_ACCESS_KEY_ID", sigv4::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", sigv4::SECRET_ACCESS_KEY)
        .env("AWS_REGION", "eu-central-1");
    for plugin in plugins {
        setup = setup.plugin(component(&format!("plugins/{plugin}.wasm")), &format!("{plugin}.wasm"));
    }
    let t = setup
        .models(|mock| {
            let models = [
                ("openai", "custom_openai/qwen3-coder", mock.base_url()),
                ("anthropic", "anthropic/claude-sonnet-4-5", mock.root_url()),
                ("azure", "azure/gpt-4o", mock.root_url()),
                ("bedrock", "bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0", mock.root_url()),
                ("mistral", "mistral/mistral-large-latest", mock.mistral_url()),
                ("ollama", "ollama/qwen3:8b", mock.root_url()),
            ];
            let mut file = String::new();
            for (name, identifier, endpoint) in models {
                file.push_str(&format!(
                    "[[models]]\nname = \"{name}\"\nidentifier = \"{identifier}\"\nendpoint = \"{endpoint}\"\n\n"
                ));
            }
            file + &format!("[[keys]]\nid = \"k\"\nsha256 = \"{}\"\nmodels = [\"*\"]\n", key_sha256_hex(KEY))
        })
        .start()
        .await;
    let arguments = r#"{"project_id": 1000, "work_item_iid": 42}"#;
    for model in ["openai", "anthropic", "azure", "bedrock", "mistral", "ollama"] {
        t.model.set_reply(calling(arguments));
        let ask = json!({"model": model, "tools": tools(), "messages": [{"role": "user", "content": "What is #42?"}]});
        let whole = chat(&t, KEY, &ask).await;
        assert_eq!(whole.status, StatusCode::OK, "{model}: {}", whole.text());
        let whole = whole.json();
        let call = &whole["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_work_item", "{model}: {whole}");
        let sent: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(sent, serde_json::from_str::<Value>(arguments).unwrap(), "{model}");
        assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls", "{model}");
        let id = call["id"].as_str().unwrap().to_string();

        let mut streamed = ask.clone();
        streamed["stream"] = json!(true);
        let events = sse_data(&chat(&t, KEY, &streamed).await.text());
        let calls = assembled_calls(&events);
        assert_eq!(calls.len(), 1, "{model}: {events:?}");
        assert_eq!(calls[0].1, "get_work_item", "{model}");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].2).unwrap(),
            serde_json::from_str::<Value>(arguments).unwrap(),
            "{model}"
        );
        let finish: Vec<String> = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_string))
            .collect();
        assert_eq!(finish, ["tool_calls"], "{model}");

        t.model.set_reply(Reply { text: "Issue 42 is open.".into(), ..Reply::default() });
        t.model.clear_requests();
        let mut answered = ask.clone();
        let messages = answered["messages"].as_array_mut().unwrap();
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"type": "function", "id": id, "function": {"name": "get_work_item", "arguments": arguments}}
        ]}));
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": "{\"state\": \"OPEN\"}"}));
        let last = chat(&t, KEY, &answered).await;
        assert_eq!(last.status, StatusCode::OK, "{model}: {}", last.text());
        assert_eq!(last.json()["choices"][0]["message"]["content"], "Issue 42 is open.", "{model}");
        let sent = t.model.requests()[0].body.to_string();
        assert!(
            sent.contains("OPEN") && sent.contains("get_work_item"),
            "{model}: the result and the call went: {sent}"
        );
    }
}

#[tokio::test]
async fn embeddings_come_back_as_floats_or_base64_as_openai_clients_ask() {
    use aigw_mock::mock_vector;
    use base64::Engine as _;
    let t = gateway().await;
    let t = &t;
    let post = |body: Value| async move { t.post("/v1/embeddings", &bearer(KEY), &body).await };
    let floats = post(json!({"model": "coder", "input": ["fn main() {}", "query"]})).await;
    assert_eq!(floats.status, StatusCode::OK, "{}", floats.text());
    let floats = floats.json();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], "coder");
    let first: Vec<f32> =
        floats["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(first, mock_vector("fn main() {}", 8));
    assert_eq!(floats["data"][1]["index"], 1);
    let sent = t.model.requests()[0].clone();
    assert_eq!((sent.path.as_str(), sent.body["model"].clone()), ("/v1/embeddings", json!("Qwen/Qwen3-Coder-30B")));

    let encoded =
        post(json!({"model": "coder", "input": "query", "encoding_format": "base64", "dimensions": 12})).await.json();
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(encoded["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(decoded, mock_vector("query", 12));

    let tokens = post(json!({"model": "coder", "input": [[1, 2, 3]]})).await;
    assert_eq!((tokens.status, tokens.json()["error"]["param"].clone()), (StatusCode::BAD_REQUEST, json!("input")));
    let too_many = post(json!({"model": "coder", "input": vec!["x"; 257]})).await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    assert_eq!(post(json!({"model": "coder", "input": vec!["x"; 256]})).await.status, StatusCode::OK, "within");
    let narrow = t.post("/v1/embeddings", &bearer(NARROW_KEY), &json!({"model": "other", "input": "x"})).await;
    assert_eq!(narrow.status, StatusCode::FORBIDDEN);
}
