//! Code generation (v2) and the prompt-components endpoints (v3 completions, v4 suggestions).

use aigw_tests::{Reply, Setup, TestGateway};
use serde_json::{Value, json};

const FENCED: &str = "```python\ndef sub(a, b):\n    return a - b\n```";
const BARE: &str = "def sub(a, b):\n    return a - b\n";

fn generation_body(t: &TestGateway, stream: bool) -> Value {
    let mut body = t.completion_body("codestral", Some("custom_openai/codestral-22b"), stream);
    body["current_file"]["content_above_cursor"] = json!("# subtract b from a\n");
    body["current_file"]["content_below_cursor"] = json!("");
    body
}

async fn generate(t: &TestGateway, body: &Value) -> aigw_tests::Answer {
    let headers = t.gitlab_headers(&t.token(&["generate_code"]));
    t.post("/v2/code/generations", &headers, body).await
}

#[tokio::test]
async fn generation_renders_the_template_and_strips_the_fence() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: FENCED.into(), ..Reply::default() });
    let answer = generate(&t, &generation_body(&t, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["choices"], json!([{"text": BARE, "index": 0, "finish_reason": "length"}]));
    let upstream = &t.model.requests()[0].body;
    // A system message (the content guard, then the instruction) and the file, as GitLab sends
    // Codestral; GitLab's sampling for the family.
    let messages = upstream["messages"].as_array().unwrap();
    assert_eq!((messages.len(), &messages[0]["role"]), (2, &json!("system")));
    let system = messages[0]["content"].as_str().unwrap();
    assert!(system.starts_with("<content_policy_"), "{system}");
    assert!(system.contains(">\n\nYou write python code inside an editor."), "{system}");
    let content = messages[1]["content"].as_str().unwrap();
    assert_eq!(content, "File: src/calc.py\n# subtract b from a\n<CURSOR>");
    assert_eq!((upstream["temperature"].clone(), upstream["max_tokens"].clone()), (json!(0.3), json!(256)));
}

#[tokio::test]
async fn a_whole_generation_starts_on_a_new_line_when_the_cursors_line_has_code() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: FENCED.into(), ..Reply::default() });
    let mut body = generation_body(&t, false);
    body["current_file"]["content_above_cursor"] = json!("# subtract b from a");
    let answer = generate(&t, &body).await;
    assert_eq!(answer.json()["choices"][0]["text"], format!("\n{BARE}"), "{}", answer.text());
    t.model.set_reply(Reply { text: "```python\n   \n```".into(), ..Reply::default() });
    let answer = generate(&t, &body).await;
    assert_eq!(answer.json()["choices"][0]["text"], "", "only whitespace is no code: {}", answer.text());
}

#[tokio::test]
async fn generation_stream_strips_a_fence_split_across_chunks() {
    let t = TestGateway::start().await;
    for chunks in [1, 3, 7, FENCED.len()] {
        t.model.set_reply(Reply { text: FENCED.into(), chunks, ..Reply::default() });
        let answer = generate(&t, &generation_body(&t, true)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), BARE, "{chunks} chunks");
    }
}

#[tokio::test]
async fn prompt_versions_2_and_3_send_the_instances_prompt() {
    let t = TestGateway::start().await;
    let mut v2 = generation_body(&t, false);
    v2["prompt_version"] = json!(2);
    v2["prompt"] = json!("Write a subtract function in Python.");
    assert_eq!(generate(&t, &v2).await.status, 200);
    assert_eq!(
        t.model.requests()[0].body["messages"],
        json!([{"role": "user", "content": "Write a subtract function in Python."}])
    );

    let mut v3 = generation_body(&t, false);
    v3["prompt_version"] = json!(3);
    v3["prompt"] = json!([{"role": "system", "content": "You write Python."}, {"role": "user", "content": "subtract"}]);
    assert_eq!(generate(&t, &v3).await.status, 200);
    // The instance's own messages go as it wrote them (Codestral's template has a system role).
    assert_eq!(
        t.model.requests()[1].body["messages"],
        json!([{"role": "system", "content": "You write Python."}, {"role": "user", "content": "subtract"}])
    );

    let mut bad = generation_body(&t, false);
    bad["prompt_version"] = json!(3);
    bad["prompt"] = json!("not a list");
    assert_eq!(generate(&t, &bad).await.status, 422);
    assert_eq!(t.model.requests().len(), 2);
}

#[tokio::test]
async fn generation_by_prompt_id_uses_the_registry_prompt() {
    let t = TestGateway::start().await;
    let mut body = generation_body(&t, false);
    body["prompt_id"] = json!("code_suggestions/generations");
    let answer = generate(&t, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let upstream = &t.model.requests()[0].body;
    let content = upstream["messages"][1]["content"].as_str().unwrap();
    assert!(content.ends_with("File: src/calc.py\n# subtract b from a\n<CURSOR>"), "{content}");
    assert_eq!(upstream["max_tokens"], json!(256), "the family's generation prompt serves GitLab's id");

    body["prompt_id"] = json!("code_suggestions/no_such_prompt");
    let answer = generate(&t, &body).await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()),
        (
            400,
            json!({"detail": "Failed to load prompt definition for 'code_suggestions/no_such_prompt': no such prompt in the registry"})
        )
    );
    assert_eq!(t.model.requests().len(), 1);
}

#[tokio::test]
async fn generation_needs_its_own_scope() {
    let t = TestGateway::start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let answer = t.post("/v2/code/generations", &headers, &generation_body(&t, false)).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json(), json!({"detail": "Unauthorized to access code generations"}));
}

fn v3_body(t: &TestGateway, kind: &str, stream: bool) -> Value {
    json!({
        "prompt_components": [
            {"type": kind, "metadata": {"source": "GitLab EE", "version": "18.5.0"},
             "payload": {"file_name": "src/calc.py", "content_above_cursor": "def add(a, b):\n    ",
                         "content_below_cursor": "\n", "language_identifier": "python", "stream": stream}},
            {"type": "code_context", "payload": {"content": "import math"}},
        ],
        "model_metadata": {"provider": "openai", "name": "codestral", "endpoint": t.model.base_url(),
                           "api_key": "sk-v3", "identifier": "custom_openai/codestral-22b"},
    })
}

#[tokio::test]
async fn v3_completion_answers_choices_and_metadata() {
    let t = TestGateway::start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let answer = t.post("/v3/code/completions", &headers, &v3_body(&t, "code_editor_completion", false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let text = answer.text();
    let timestamp = answer.json()["metadata"]["timestamp"].as_u64().unwrap();
    assert_eq!(
        text,
        format!(
            "{{\"choices\":[{{\"text\":\"return a + b\",\"index\":0,\"finish_reason\":\"length\"}}],\
             \"metadata\":{{\"model\":{{\"engine\":\"openai\",\"name\":\"codestral\",\"lang\":\"python\"}},\"timestamp\":{timestamp},\
             \"enabled_feature_flags\":[],\"region\":null}},\
             \"model\":{{\"engine\":\"openai\",\"name\":\"codestral\",\"lang\":\"python\"}}}}"
        ),
        "exact bytes, GitLab's field order"
    );
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.headers.get("authorization").unwrap(), "Bearer sk-v3");
    assert_eq!(upstream.body["messages"][1]["content"], "<s>[SUFFIX]\n[PREFIX]def add(a, b):\n    ");

    let stream = t.post("/v3/code/completions", &headers, &v3_body(&t, "code_editor_completion", true)).await;
    assert_eq!((stream.status.as_u16(), stream.text().as_str()), (200, "return a + b"));
}

#[tokio::test]
async fn v4_streams_crlf_framed_sse() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "return a + b".into(), chunks: 2, ..Reply::default() });
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let answer = t.post("/v4/code/suggestions", &headers, &v3_body(&t, "code_editor_completion", true)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-streaming-format"), Some("sse"));
    assert_eq!(answer.header("content-type"), Some("text/event-stream; charset=utf-8"));
    let text = answer.text();
    let events: Vec<&str> = text.split("\r\n\r\n").collect();
    // As GitLab's gateway streams a completion: a content_chunk per model event (the two pieces
    // of text, the finish event, the usage event), an empty one, the end, and the empty tail.
    assert_eq!(events.len(), 8, "{text:?}");
    assert!(events[0].starts_with(
        "event: stream_start\r\ndata: {\"metadata\":{\"model\":{\"engine\":\"agent\",\"name\":\"Codestral 22B Code Completions\"},\"timestamp\":"
    ), "{}", events[0]);
    assert!(events[0].ends_with(",\"enabled_feature_flags\":[],\"region\":null}}"), "{}", events[0]);
    let chunk = |text: &str| {
        format!("event: content_chunk\r\ndata: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}},\"index\":0}}]}}")
    };
    assert_eq!(events[1..6], [chunk("return"), chunk(" a + b"), chunk(""), chunk(""), chunk("")]);
    assert_eq!(events[6], "event: stream_end\r\ndata: null");
    assert_eq!(events[7], "");
}

#[tokio::test]
async fn v4_generation_strips_the_fence_only_as_it_streams_and_needs_generate_code() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: FENCED.into(), chunks: 5, ..Reply::default() });
    let body = v3_body(&t, "code_editor_generation", false);
    let refused = t.post("/v4/code/suggestions", &t.gitlab_headers(&t.token(&["complete_code"])), &body).await;
    assert_eq!(refused.status, 403);
    let headers = t.gitlab_headers(&t.token(&["generate_code"]));
    let answer = t.post("/v4/code/suggestions", &headers, &body).await;
    // A whole v4 answer is the model's text as it is, named by the prompt that made it; a
    // streamed one loses its fence, as GitLab's gateway post-processes v4 streams.
    let json = answer.json();
    assert_eq!(json["choices"][0]["text"], FENCED);
    let model = json!({"engine": "agent", "name": "Codestral 22B Code Generations", "lang": "python"});
    assert_eq!((&json["model"], &json["metadata"]["model"]), (&model, &model));

    let streamed = v3_body(&t, "code_editor_generation", true);
    let stream = t.post("/v4/code/suggestions", &headers, &streamed).await;
    let text = stream.text();
    let events: Vec<&str> = text.split("\r\n\r\n").collect();
    assert_eq!(events.len(), 4, "start, the whole text in one chunk, end, tail: {text:?}");
    let whole = serde_json::to_string(BARE).unwrap();
    assert_eq!(
        events[1],
        format!("event: content_chunk\r\ndata: {{\"choices\":[{{\"delta\":{{\"content\":{whole}}},\"index\":0}}]}}")
    );
}

#[tokio::test]
async fn v3_needs_exactly_one_editor_component() {
    let t = TestGateway::start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let mut body = v3_body(&t, "code_editor_completion", false);
    body["prompt_components"] = json!([{"type": "code_context", "payload": {}}]);
    let answer = t.post("/v3/code/completions", &headers, &body).await;
    assert_eq!(answer.status, 422);
    assert!(t.model.requests().is_empty());
}

/// Current GitLab sends code generation through v3 and v4 as a registry prompt id with a version
/// constraint string, the way the v1 prompts endpoint takes one.
#[tokio::test]
async fn v3_and_v4_generation_pick_the_prompt_version_the_constraint_names() {
    let prompts = tempfile::tempdir().unwrap();
    let dir = prompts.path().join("code_suggestions/generations/base");
    std::fs::create_dir_all(&dir).unwrap();
    let second = "unit_primitive = \"generate_code\"\ngateway_tokens = false\n[params]\nmax_tokens = 64\n\
                  [[messages]]\nrole = \"user\"\ncontent = \"version two: {{ prefix }}\"\n";
    std::fs::write(dir.join("2.0.0.toml"), second).unwrap();
    let t = Setup::default().env("AIGW_PROMPTS__DIR", prompts.path().to_str().unwrap()).start().await;
    t.model.set_reply(Reply { text: FENCED.into(), ..Reply::default() });
    let headers = t.gitlab_headers(&t.token(&["generate_code"]));
    let body = |version: Value, stream: bool| {
        let mut body = v3_body(&t, "code_editor_generation", stream);
        let payload = &mut body["prompt_components"][0]["payload"];
        payload["prompt_id"] = json!("code_suggestions/generations");
        payload["prompt_version"] = version;
        body
    };
    let last_user_message = || {
        let requests = t.model.requests();
        let messages = requests.last().unwrap().body["messages"].as_array().unwrap().clone();
        messages.last().unwrap()["content"].as_str().unwrap().to_string()
    };

    for path in ["/v4/code/suggestions", "/v3/code/completions"] {
        let answer = t.post(path, &headers, &body(json!("^1.0.0"), false)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert_eq!(answer.json()["choices"][0]["text"], FENCED, "{path}");
        assert!(!last_user_message().starts_with("version two"), "^1.0.0 is the built-in 1.0.0");
        for constraint in ["^2.0.0", "2.0.0", "*"] {
            assert_eq!(t.post(path, &headers, &body(json!(constraint), false)).await.status, 200, "{constraint}");
            assert!(last_user_message().starts_with("version two: def add"), "{path} {constraint}");
        }
        let streamed = t.post(path, &headers, &body(json!("^1.0.0"), true)).await;
        assert_eq!(streamed.status, 200, "{path} stream");
        // An integer is still accepted: with a prompt id, the highest stable version serves.
        assert_eq!(t.post(path, &headers, &body(json!(1), false)).await.status, 200);
        assert!(last_user_message().starts_with("version two"));
    }

    // A constraint no version meets is answered as the prompts endpoint answers it.
    let calls = t.model.requests().len();
    let unmet = t.post("/v4/code/suggestions", &headers, &body(json!("^3.0.0"), false)).await;
    let mut by_prompt_path = t.test_connection_body(false);
    by_prompt_path["prompt_version"] = json!("^3.0.0");
    let reference = t
        .post(
            "/v1/prompts/model_configuration%2Fcheck",
            &t.gitlab_headers(&t.token(&["generate_code"])),
            &by_prompt_path,
        )
        .await;
    assert_eq!((unmet.status, reference.status), (http::StatusCode::BAD_REQUEST, http::StatusCode::BAD_REQUEST));
    assert_eq!(
        unmet.json()["detail"],
        json!("No version matching '^3.0.0' (available: ['1.0.0', '2.0.0'])"),
        "{}",
        unmet.text()
    );
    assert_eq!(t.model.requests().len(), calls, "no model call for an unmet constraint");
}

/// A v4 completion as GitLab 19.5+ sends every one: the file, Rails' language name, no stream.
fn current_completion(t: &TestGateway, file_name: &str, language: &str, context: &[&str]) -> Value {
    let mut components = vec![json!({"type": "code_editor_completion", "payload": {
        "file_name": file_name, "content_above_cursor": "fn main() {\n    ", "content_below_cursor": "\n}\n",
        "language_identifier": language, "stream": false}})];
    for content in context {
        components.push(json!({"type": "code_context", "payload": {"type": "file", "name": "x", "content": content}}));
    }
    json!({"prompt_components": components, "model_metadata": {"provider": "openai", "name": "codestral",
           "endpoint": t.model.base_url(), "api_key": "sk-v4", "identifier": "custom_openai/codestral-2508"}})
}

#[tokio::test]
async fn v4_completes_every_file_with_an_extension_and_reports_gitlabs_language() {
    let t = TestGateway::start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    // (file, Rails' language name, `lang` GitLab reports, whether the model is asked)
    for (file_name, language, lang, called) in [
        ("src/ring.zig", "Zig", "zig", true),
        ("src/Temperature.fs", "F#", "fsharp", true),
        ("Sources/APIClient.m", "Objective-C", "objc", true),
        ("deploy/nginx/site.conf", "", "", true),
        ("Cargo.toml", "Rust", "", true),
        ("app/main.py", "Python", "python", true),
        ("Procfile", "", "", false),
    ] {
        t.model.clear_requests();
        let answer = t.post("/v4/code/suggestions", &headers, &current_completion(&t, file_name, language, &[])).await;
        assert_eq!(answer.status, 200, "{file_name}: {}", answer.text());
        let json = answer.json();
        assert_eq!(json["model"]["lang"], lang, "{file_name}");
        assert_eq!(t.model.requests().len(), usize::from(called), "{file_name}");
        let expected =
            if called { json!([{"text": "return a + b", "index": 0, "finish_reason": "length"}]) } else { json!([]) };
        assert_eq!(json["choices"], expected, "{file_name}");
    }
}

#[tokio::test]
async fn code_context_reaches_the_prompt_from_language_server_7_17_1_on() {
    let t = TestGateway::start().await;
    let body = current_completion(&t, "src/ring.zig", "Zig", &["const Ring = struct {};\n", "// helper\n"]);
    for (version, used) in [(Some("7.17.1"), true), (Some("8.0.0"), true), (Some("7.17.0"), false), (None, false)] {
        t.model.clear_requests();
        let mut headers = t.gitlab_headers(&t.token(&["complete_code"]));
        if let Some(version) = version {
            headers.push(("x-gitlab-language-server-version".into(), version.into()));
        }
        let answer = t.post("/v4/code/suggestions", &headers, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let prompt = t.model.requests()[0].body["messages"][1]["content"].as_str().unwrap().to_string();
        let with_context = "[PREFIX]const Ring = struct {};\n\n// helper\n\nfn main() {\n    ";
        assert_eq!(prompt.contains(with_context), used, "{version:?}: {prompt}");
        assert!(prompt.ends_with("[PREFIX]fn main() {\n    ") != used, "{version:?}: {prompt}");
    }
}
