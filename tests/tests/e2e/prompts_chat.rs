//! Registry prompts (`/v1|v2/prompts/{id}`, GitLab's "Test connection"), one-shot chat
//! (`/v1/chat/{invokable}`), and the public monitoring and catalogue endpoints.

use aigw_tests::{Reply, Setup, TestGateway};
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn call(t: &TestGateway, path: &str, scopes: &[&str], body: &Value) -> aigw_tests::Answer {
    t.post(path, &t.gitlab_headers(&t.token(scopes)), body).await
}

#[tokio::test]
async fn test_connection_works_with_the_percent_encoded_id() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "OK".into(), ..Reply::default() });
    let answer =
        call(&t, "/v1/prompts/model_configuration%2Fcheck", &["complete_code"], &t.test_connection_body(false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "\"OK\"", "v1 answers a JSON string");
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.body["model"], "mistral-small");
    // A system and a user message, as GitLab's check sends; the system one opens with the guard.
    let messages = upstream.body["messages"].as_array().unwrap();
    assert_eq!(messages[1], json!({"role": "user", "content": "Reply with the single word OK."}));
    assert!(messages[0]["content"].as_str().unwrap().starts_with("<content_policy_"), "{messages:?}");
    assert_eq!(upstream.headers.get("authorization").unwrap(), "Bearer sk-check");

    let literal =
        call(&t, "/v1/prompts/model_configuration/check", &["complete_code"], &t.test_connection_body(false)).await;
    assert_eq!(literal.status, 200, "a literal / works too");
}

#[tokio::test]
async fn v2_prompts_answer_content_and_usage_keyed_as_gitlab_keys_them() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "OK then".into(), chunks: 2, usage: (9, 2), ..Reply::default() });
    let answer =
        call(&t, "/v2/prompts/model_configuration%2Fcheck", &["complete_code"], &t.test_connection_body(false)).await;
    // A whole answer's usage is keyed by the family the instance named …
    assert_eq!(
        answer.json(),
        json!({"content": "OK then", "usage": {"mistral": {"input_tokens": 9, "output_tokens": 2}}})
    );

    // … a stream's by the model that answered, on a last line after one line per model event
    // (the two pieces, the finish event, the usage event), as GitLab's gateway streams it.
    let stream =
        call(&t, "/v2/prompts/model_configuration%2Fcheck", &["complete_code"], &t.test_connection_body(true)).await;
    assert_eq!(stream.header("content-type"), Some("text/event-stream; charset=utf-8"));
    assert_eq!(
        stream.text(),
        "{\"content\":\"OK t\"}\n{\"content\":\"hen\"}\n{\"content\":\"\"}\n{\"content\":\"\"}\n\
         {\"content\":\"\",\"usage\":{\"mistral-small\":{\"input_tokens\":9,\"output_tokens\":2}}}\n"
    );

    let v1_stream =
        call(&t, "/v1/prompts/model_configuration%2Fcheck", &["complete_code"], &t.test_connection_body(true)).await;
    assert_eq!(v1_stream.text(), "OK then");
}

#[tokio::test]
async fn prompt_errors_have_gitlabs_statuses() {
    let t = TestGateway::start().await;
    let unknown = call(&t, "/v1/prompts/does%2Fnot_exist", &["complete_code"], &t.test_connection_body(false)).await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.json()),
        (
            400,
            json!({"detail": "Failed to load prompt definition for 'does/not_exist': no such prompt in the registry"})
        )
    );

    let mut bad_version = t.test_connection_body(false);
    for (constraint, detail) in [
        ("^7.0.0", "No version matching '^7.0.0' (available: ['1.0.0'])"),
        (
            "not-a-version",
            "Version 'not-a-version' is not a valid PEP 440 constraint and no exact match found (available: ['1.0.0'])",
        ),
    ] {
        bad_version["prompt_version"] = json!(constraint);
        let refused = call(&t, "/v1/prompts/model_configuration%2Fcheck", &["complete_code"], &bad_version).await;
        assert_eq!((refused.status.as_u16(), refused.json()), (400, json!({"detail": detail})));
    }
    bad_version["prompt_version"] = json!("^1.0.0");
    assert_eq!(call(&t, "/v1/prompts/model_configuration%2Fcheck", &["complete_code"], &bad_version).await.status, 200);

    t.model.set_reply(Reply { status: 500, ..Reply::default() });
    let failed =
        call(&t, "/v1/prompts/model_configuration%2Fcheck", &["complete_code"], &t.test_connection_body(false)).await;
    assert_eq!((failed.status.as_u16(), failed.json()), (421, json!({"detail": "500: Internal Server Error"})));

    // Every model-server HTTP error is a 421 that names it, 429 included: Rails shows the text as
    // what the model server returned.
    for (status, detail) in
        [(429, "429: Too Many Requests"), (401, "401: Unauthorized"), (503, "503: Service Unavailable")]
    {
        t.model.set_reply(Reply { status, retry_after: Some("3".into()), ..Reply::default() });
        for api in ["v1", "v2"] {
            for stream in [false, true] {
                let path = format!("/{api}/prompts/model_configuration%2Fcheck");
                let failed = call(&t, &path, &["complete_code"], &t.test_connection_body(stream)).await;
                assert_eq!(
                    (failed.status.as_u16(), failed.json(), failed.header("retry-after")),
                    (421, json!({"detail": detail}), None),
                    "{path} stream={stream}"
                );
            }
        }
    }
}

fn chat_body(t: &TestGateway, content: Value, stream: bool) -> Value {
    json!({
        "prompt_components": [{
            "type": "prompt",
            "metadata": {"source": "GitLab EE", "version": "18.5.0"},
            "payload": {"content": content, "provider": "litellm", "model": "mistral",
                        "model_endpoint": t.model.base_url(), "model_api_key": "sk-chat",
                        "model_identifier": "custom_openai/mistral-7b",
                        "params": {"stop_sequences": ["</answer>"], "temperature": 0.1, "max_tokens_to_sample": 512}},
        }],
        "stream": stream,
    })
}

#[tokio::test]
async fn chat_invokable_sends_the_prompt_with_its_params() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "This adds two numbers.".into(), ..Reply::default() });
    let answer = call(&t, "/v1/chat/explain_code", &["duo_chat"], &chat_body(&t, json!("Explain: a + b"), false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    let timestamp = json["metadata"]["timestamp"].as_u64().unwrap();
    assert_eq!(
        answer.text(),
        format!(
            "{{\"response\":\"This adds two numbers.\",\"metadata\":{{\"provider\":\"litellm\",\"model\":\"mistral\",\"timestamp\":{timestamp}}}}}"
        )
    );
    let upstream = &t.model.requests()[0].body;
    assert_eq!(upstream["messages"], json!([{"role": "user", "content": "Explain: a + b"}]));
    assert_eq!(
        (upstream["stop"].clone(), upstream["temperature"].clone(), upstream["max_tokens"].clone()),
        (json!(["</answer>"]), json!(0.1), json!(512))
    );

    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain: a + b"}]);
    let stream = call(&t, "/v1/chat/agent", &["duo_chat"], &chat_body(&t, messages.clone(), true)).await;
    assert_eq!((stream.status.as_u16(), stream.text().as_str()), (200, "This adds two numbers."));
    // The instance's messages go as it wrote them: Mistral's template has a system role.
    assert_eq!(t.model.requests()[1].body["messages"], messages);
}

#[tokio::test]
async fn chat_refuses_unknown_invokables_missing_scope_and_extra_components() {
    let t = TestGateway::start().await;
    let body = chat_body(&t, json!("hi"), false);
    assert_eq!(call(&t, "/v1/chat/make_coffee", &["duo_chat"], &body).await.status, 404);
    let refused = call(&t, "/v1/chat/explain_code", &["complete_code"], &body).await;
    assert_eq!((refused.status.as_u16(), refused.json()), (403, json!({"detail": "Unauthorized to access duo chat"})));
    assert_eq!(
        call(&t, "/v1/chat/explain_code", &["explain_code"], &body).await.status,
        200,
        "the invokable's own scope"
    );
    let mut two = body.clone();
    two["prompt_components"] = json!([body["prompt_components"][0], body["prompt_components"][0]]);
    assert_eq!(call(&t, "/v1/chat/explain_code", &["duo_chat"], &two).await.status, 422);
    assert_eq!(t.model.requests().len(), 1);
}

async fn ready(t: &TestGateway) -> (u16, Value) {
    let answer = t.request(Method::GET, "/monitoring/ready", &[], Bytes::new()).await;
    (answer.status.as_u16(), answer.json())
}

#[tokio::test]
async fn readiness_needs_keys_and_a_plugin() {
    let t = TestGateway::start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ready(&t).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready: {:?}", ready(&t).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(t.plugins.path().join("openai-compatible.wasm")).unwrap();
    t.gateway.plugins().reload().await;
    assert_eq!(ready(&t).await, (503, json!({"status": "no provider plugin is loaded", "providers": []})));

    let offline = Setup::default().gitlab_down().start().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = ready(&offline).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "no signing key could be loaded from the GitLab instance yet");
    let healthz = offline.request(Method::GET, "/monitoring/healthz", &[], Bytes::new()).await;
    assert_eq!(healthz.status, 200, "liveness does not depend on GitLab");
}

#[tokio::test]
async fn model_definitions_list_families_without_auth() {
    let t = TestGateway::start().await;
    let answer = t.request(Method::GET, "/v1/models/definitions", &[], Bytes::new()).await;
    assert_eq!(answer.status, 200);
    let json = answer.json();
    assert!(json["models"].as_array().unwrap().iter().any(|m| m["identifier"] == "codestral"));
    assert_eq!(json["providers"], json!(["custom_openai", "openai"]));
    // This year's rows of GitLab's supported-models list, each under the family GitLab maps it to.
    let family_of = |model: &str| {
        let families = json["models"].as_array().unwrap();
        let found = families.iter().find(|f| f["models"].as_array().unwrap().iter().any(|m| m == model));
        found.map(|family| family["name"].as_str().unwrap().to_string())
    };
    for (model, family) in [
        ("GLM-5.1", "general"),
        ("Kimi-K2.5", "general"),
        ("Kimi-K2.6", "general"),
        ("MiniMax-M2.7", "general"),
        ("Gemma-4-31B", "general"),
        ("Qwen3.6", "qwen"),
        ("Mistral Medium 3.5", "mistral"),
        ("Mistral Small 24B Instruct 2506", "mistral"),
        ("GPT-5.2", "gpt"),
        ("GPT-oss-120B", "gpt"),
    ] {
        assert_eq!(family_of(model).as_deref(), Some(family), "{model}");
    }
}

#[tokio::test]
async fn this_years_models_are_served_with_their_familys_prompt() {
    let t = TestGateway::start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    for (family, identifier, system_text) in [
        ("general", "custom_openai/zai-org/GLM-5.1", true),
        ("general", "custom_openai/moonshotai/Kimi-K2.6", true),
        ("qwen", "custom_openai/Qwen/Qwen3.6-27B", true),
        ("gpt", "custom_openai/openai/gpt-oss-120b", true),
        ("deepseekcoder", "custom_openai/deepseek-ai/deepseek-coder-6.7b-base", false),
    ] {
        t.model.clear_requests();
        let body = json!({"prompt_components": [{"type": "code_editor_completion", "payload": {
            "file_name": "main.py", "content_above_cursor": "def add(a, b):\n    ", "content_below_cursor": "\n",
            "language_identifier": "Python", "stream": false}}],
            "model_metadata": {"provider": "openai", "name": family, "endpoint": t.model.base_url(),
                               "api_key": "k", "identifier": identifier}});
        let answer = t.post("/v4/code/suggestions", &headers, &body).await;
        assert_eq!(answer.status, 200, "{identifier}: {}", answer.text());
        assert_eq!(answer.json()["model"]["name"], family, "{identifier}");
        let sent = &t.model.requests()[0].body;
        assert_eq!(sent["model"], identifier.split_once('/').unwrap().1, "{identifier}");
        let first_role = sent["messages"][0]["role"].as_str().unwrap();
        assert_eq!(first_role == "system", system_text, "{identifier}: the family's prompt shape");
    }
}

#[tokio::test]
async fn operator_prompts_render_inputs_and_gate_on_their_unit_primitive() {
    let prompts = tempfile::tempdir().unwrap();
    // A newer version of a built-in prompt, in the registry's layout (`<id>/<family or base>/`).
    let dir = prompts.path().join("chat/summarize_comments/base");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("2.0.0.toml"),
        "unit_primitive = \"summarize_comments\"\n[params]\nmax_tokens = 200\n\n[[messages]]\nrole = \"user\"\n\
         content = \"Summarize these comments:\\n{% for c in comments %}- {{ c }}\\n{% endfor %}\"\n",
    )
    .unwrap();
    let t = Setup::default().env("AIGW_PROMPTS__DIR", prompts.path().to_str().unwrap()).start().await;
    let mut body = t.test_connection_body(false);
    body["inputs"] = json!({"comments": ["LGTM", "needs tests"]});

    let refused = call(&t, "/v1/prompts/chat%2Fsummarize_comments", &["duo_chat"], &body).await;
    assert_eq!(
        (refused.status.as_u16(), refused.json()),
        (403, json!({"detail": "Unauthorized to access 'chat/summarize_comments'"}))
    );

    let answer = call(&t, "/v1/prompts/chat%2Fsummarize_comments", &["summarize_comments"], &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        t.model.requests()[0].body["messages"][0]["content"],
        "Summarize these comments:\n- LGTM\n- needs tests\n"
    );
    assert_eq!(t.model.requests()[0].body["max_tokens"], 200);

    body["inputs"] = json!({});
    let missing = call(&t, "/v1/prompts/chat%2Fsummarize_comments", &["summarize_comments"], &body).await;
    assert_eq!(missing.status, 422, "a missing variable: {}", missing.text());
    assert_eq!(t.model.requests().len(), 1);
}

async fn greet(t: &TestGateway) -> http::StatusCode {
    call(t, "/v1/prompts/greeting", &["duo_chat"], &t.test_connection_body(false)).await.status
}

#[tokio::test]
async fn the_prompts_directory_hot_reloads_and_keeps_the_last_good_set() {
    let prompts = tempfile::tempdir().unwrap();
    let dir = prompts.path().join("greeting");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |version: &str, text: &str| {
        let body = format!("unit_primitive = \"duo_chat\"\n[[messages]]\nrole = \"user\"\ncontent = \"{text}\"\n");
        aigw_tests::deploy(&dir.join(format!("{version}.toml")), body.as_bytes());
    };
    write("1.0.0", "say A");
    let t = Setup::default().env("AIGW_PROMPTS__DIR", prompts.path().to_str().unwrap()).start().await;
    let sent = |t: &TestGateway| t.model.requests().last().unwrap().body["messages"][0]["content"].clone();
    assert_eq!(greet(&t).await, 200);
    assert_eq!(sent(&t), "say A");

    write("1.1.0", "say B");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(greet(&t).await, 200);
        if sent(&t) == "say B" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new version was never picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::write(dir.join("1.2.0.toml"), "this is [not toml").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(greet(&t).await, 200, "a broken file never replaces the working set");
    assert_eq!(sent(&t), "say B");
}

/// Every prompt id the built-in registry serves, from its data directory (`<id>/<version>.toml`).
fn builtin_prompt_ids() -> Vec<String> {
    let root = aigw_tests::workspace().join("host/prompts");
    let mut ids = std::collections::BTreeSet::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") && dir != root {
                // Files at the root (the family list) are not prompts.
                ids.insert(dir.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    ids.into_iter().collect()
}

#[tokio::test]
async fn a_token_without_scopes_reaches_only_the_open_prompts() {
    let t = TestGateway::start().await;
    let ids = builtin_prompt_ids();
    assert!(ids.len() > 40, "the walk found the registry: {ids:?}");
    let open = ["model_configuration/check"];
    // The ids as callers send them: each folder, and each family-less id GitLab names.
    let mut called: Vec<String> = ids.clone();
    called.extend(["code_completions", "code_generations", "chat/react"].map(String::from));
    for id in &called {
        let path = format!("/v1/prompts/{}", id.replace('/', "%2F"));
        let answer = call(&t, &path, &[], &t.test_connection_body(false)).await;
        if open.contains(&id.as_str()) {
            assert_eq!(answer.status, 200, "{id} is open: {}", answer.text());
        } else {
            assert_eq!(answer.status, 403, "{id}: {}", answer.text());
            assert_eq!(answer.json(), json!({"detail": format!("Unauthorized to access '{id}'")}), "{id}");
        }
    }
    assert_eq!(t.model.requests().len(), open.len(), "only the open prompts called the model");
}

#[tokio::test]
async fn code_prompts_by_id_need_the_code_endpoints_scopes() {
    let t = TestGateway::start().await;
    let inputs = json!({"prefix": "def f():", "suffix": "", "language": "python", "file_name": "a.py",
                        "instruction": "", "user_instruction": "", "context": ""});
    let mut body = t.test_connection_body(false);
    body["inputs"] = inputs;
    // One unit primitive each, as GitLab's registry declares them.
    for (id, granted, refused) in [
        ("code_completions", "complete_code", ["generate_code", "duo_chat"]),
        ("code_completions/codestral", "complete_code", ["generate_code", "duo_chat"]),
        ("code_generations", "generate_code", ["complete_code", "duo_chat"]),
        ("code_suggestions/generations", "generate_code", ["complete_code", "duo_chat"]),
    ] {
        let path = format!("/v1/prompts/{}", id.replace('/', "%2F"));
        let answer = call(&t, &path, &[granted], &body).await;
        assert_eq!(answer.status, 200, "{id} with {granted}: {}", answer.text());
        for scope in refused {
            assert_eq!(call(&t, &path, &[scope], &body).await.status, 403, "{id} with {scope}");
        }
    }
}
