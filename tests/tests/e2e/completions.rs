//! `/v2/code/completions`: the upstream request the model server receives and the answer GitLab gets.

use aigw_tests::{Reply, TestGateway, now};
use serde_json::json;

#[tokio::test]
async fn codestral_completion_sends_fim_prompt_and_answers_gitlab_shape() {
    let t = TestGateway::start().await;
    let answer = t.complete(&t.completion_body("codestral", Some("custom_openai/codestral-22b"), false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));

    let requests = t.model.requests();
    assert_eq!(requests.len(), 1);
    let upstream = &requests[0];
    assert_eq!(upstream.method, "POST");
    assert_eq!(upstream.path, "/v1/chat/completions");
    assert_eq!(upstream.headers.get("authorization").unwrap(), "Bearer sk-test-key");
    // A system message that opens with the content guard, then the fill-in-the-middle tokens, as
    // GitLab sends Codestral.
    let mut body = upstream.body.clone();
    let system = body["messages"][0]["content"].take();
    let system = system.as_str().unwrap();
    assert!(system.starts_with("<content_policy_") && system.contains("python"), "{system}");
    assert_eq!(
        body,
        json!({
            "model": "codestral-22b",
            "messages": [{"role": "system", "content": null},
                         {"role": "user",
                          "content": "<s>[SUFFIX]\n\nprint(add(1, 2))\n[PREFIX]def add(a, b):\n    "}],
            "max_tokens": 64,
            "temperature": 0.32,
            // The prompt's fifth stop sequence does not fit OpenAI's API, which takes four; a
            // whole answer is asked for by leaving `stream` out.
            "stop": ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]"],
        })
    );

    let body = answer.json();
    let created = body["created"].as_u64().unwrap();
    assert!(created.abs_diff(now()) < 60, "created is the current unix time");
    assert_eq!(
        body,
        json!({
            "id": "id",
            "model": {"engine": "litellm", "name": "codestral", "lang": "python",
                      "tokens_consumption_metadata": {"input_tokens": 12, "output_tokens": 5,
                                                      "max_output_tokens_used": false,
                                                      "context_tokens_sent": 0, "context_tokens_used": 0},
                      "region": null},
            "experiments": [],
            "object": "text_completion",
            "created": created,
            "choices": [{"text": "return a + b", "index": 0, "finish_reason": "length"}],
            "metadata": {"enabled_feature_flags": []},
        })
    );
}

#[tokio::test]
async fn codegemma_bare_identifier_and_empty_key_use_the_placeholder() {
    let t = TestGateway::start().await;
    let mut body = t.completion_body("codegemma", Some("codegemma:7b-code"), false);
    body["model_api_key"] = json!("");
    body["current_file"]["language_identifier"] = json!(null);
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model"]["lang"], "python", "language from the .py extension");

    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.headers.get("authorization").unwrap(), "Bearer dummy_key");
    assert_eq!(upstream.body["model"], "codegemma:7b-code");
    assert_eq!(
        upstream.body["messages"],
        json!([{"role": "user",
                "content": "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"}])
    );
    assert_eq!(upstream.body["temperature"], json!(0.95));
    assert_eq!(upstream.body["max_tokens"], json!(128));
    assert_eq!(
        upstream.body["stop"],
        json!(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>"])
    );
}

#[tokio::test]
async fn codellama_streams_raw_text_as_it_arrives() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "    return a + b  # sum".into(), chunks: 5, ..Reply::default() });
    let answer = t.complete(&t.completion_body("codellama", Some("custom_openai/codellama-7b"), true)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("text/event-stream; charset=utf-8"));
    assert_eq!(answer.text(), "    return a + b  # sum", "raw text, no SSE framing");

    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.body["stream"], json!(true));
    assert_eq!(upstream.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        upstream.body["messages"][0]["content"],
        "<PRE> def add(a, b):\n     <SUF> \n\nprint(add(1, 2))\n <MID>"
    );
    assert_eq!(upstream.body["stop"], json!(["<PRE>", "<SUF>", "<MID>", "<EOT>"]));
}

#[tokio::test]
async fn alias_path_serves_the_same_endpoint() {
    let t = TestGateway::start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let answer = t.post("/v2/completions", &headers, &t.completion_body("mistral", None, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["text"], "return a + b");
    assert_eq!(t.model.requests()[0].body["model"], "mistral", "no identifier: the family is the model");
}

#[tokio::test]
async fn unknown_language_answers_no_choices_and_calls_no_model() {
    let t = TestGateway::start().await;
    let mut body = t.completion_body("codestral", None, false);
    body["current_file"]["file_name"] = json!("NOTES");
    body["current_file"]["language_identifier"] = json!("plaintext");
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 200);
    let json = answer.json();
    assert_eq!(json["choices"], json!([]));
    assert_eq!(json["model"]["lang"], json!(""), "GitLab's gateway reports no language as \"\"");
    assert_eq!(json["model"]["tokens_consumption_metadata"], json!(null));
    assert!(t.model.requests().is_empty(), "no model call");
}

#[tokio::test]
async fn unsupported_family_is_422_and_calls_no_model() {
    let t = TestGateway::start().await;
    let answer = t.complete(&t.completion_body("gpt-neox", None, false)).await;
    assert_eq!(answer.status, 422);
    let detail = answer.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("'gpt-neox' is not supported"), "{detail}");
    assert!(t.model.requests().is_empty());
}

#[tokio::test]
async fn instruction_families_send_the_instruction_prompt() {
    let t = TestGateway::start().await;
    let answer = t.complete(&t.completion_body("llama3", Some("custom_openai/llama3-8b"), false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let messages = &t.model.requests()[0].body["messages"];
    assert_eq!(messages[0]["role"], "system");
    let user = messages[1]["content"].as_str().unwrap();
    assert!(user.contains("\ndef add(a, b):\n    <CURSOR>\n\nprint(add(1, 2))\n"), "{user}");
    assert!(messages[0]["content"].as_str().unwrap().contains("python code in the file src/calc.py"));
}

#[tokio::test]
async fn malformed_bodies_are_422_in_fastapi_shape() {
    let t = TestGateway::start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let answer = t.post("/v2/code/completions", &headers, &json!({"model_name": "codestral"})).await;
    assert_eq!(answer.status, 422);
    let detail = &answer.json()["detail"][0];
    assert_eq!(detail["loc"], json!(["body"]));
    assert!(detail["msg"].as_str().unwrap().contains("current_file"));

    let mut too_long = t.completion_body("codestral", None, false);
    too_long["current_file"]["content_above_cursor"] = json!("x".repeat(100_001));
    let answer = t.complete(&too_long).await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.json()["detail"][0]["loc"], json!(["body", "current_file", "content_above_cursor"]));

    let mut not_self_hosted = t.completion_body("codestral", None, false);
    not_self_hosted["model_provider"] = json!("anthropic");
    assert_eq!(t.complete(&not_self_hosted).await.status, 422);
    assert!(t.model.requests().is_empty());
}

#[tokio::test]
async fn unknown_provider_names_the_loaded_ones() {
    let t = TestGateway::start().await;
    let answer = t.complete(&t.completion_body("codestral", Some("vertex_ai/codestral"), false)).await;
    assert_eq!(answer.status, 422);
    let detail = answer.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("'vertex_ai'") && detail.contains("custom_openai, openai"), "{detail}");
}

#[tokio::test]
async fn model_server_errors_map_to_gateway_statuses() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { status: 429, retry_after: Some("7".into()), ..Reply::default() });
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("7"));

    t.model.set_reply(Reply { status: 500, ..Reply::default() });
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 502);
    assert!(!answer.text().contains("mock error"), "upstream bodies are never echoed");

    t.model.set_reply(Reply::default());
    let mut body = t.completion_body("codestral", None, false);
    body["model_endpoint"] = json!(format!("http://{}", t.model.addr()));
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 422);
    assert!(answer.json()["detail"].as_str().unwrap().contains("/v1"), "missing /v1 hint: {}", answer.text());
}

#[tokio::test]
async fn model_fields_keep_gitlabs_limits_and_lose_a_trailing_slash() {
    let t = TestGateway::start().await;
    let base = t.model.base_url();
    let pad = |text: &str, len: usize, fill: char| format!("{text}{}", fill.to_string().repeat(len - text.len()));
    let metadata = |name: String, endpoint: String, api_key: String, identifier: String| {
        json!({"inputs": {}, "model_metadata": {"provider": "openai", "name": name, "endpoint": endpoint,
                                                "api_key": api_key, "identifier": identifier}})
    };
    let at_limit =
        metadata(pad("", 255, 'n'), pad(&base, 255, '/'), pad("", 2000, 'k'), pad("custom_openai/", 1000, 'm'));
    let headers = t.gitlab_headers(&t.token(&["duo_chat"]));
    let answer = t.post("/v1/prompts/model_configuration%2Fcheck", &headers, &at_limit).await;
    assert_eq!(answer.status, 200, "every field at its limit: {}", answer.text());
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.path, "/v1/chat/completions", "the trailing slashes are dropped");
    assert_eq!(upstream.body["model"], pad("", 986, 'm'));

    let over = [
        ("name", pad("", 256, 'n'), "model_name must be at most 255 characters"),
        ("endpoint", pad(&base, 256, '/'), "model_endpoint must be at most 255 characters"),
        ("api_key", pad("", 2001, 'k'), "model_api_key must be at most 2000 characters"),
        ("identifier", pad("custom_openai/", 1001, 'm'), "model_identifier must be at most 1000 characters"),
    ];
    for (field, value, detail) in over {
        let mut body = at_limit.clone();
        body["model_metadata"][field] = json!(value);
        let answer = t.post("/v1/prompts/model_configuration%2Fcheck", &headers, &body).await;
        assert_eq!((answer.status.as_u16(), answer.json()), (422, json!({"detail": detail})), "{field}");
    }
    assert_eq!(t.model.requests().len(), 1);
}

#[tokio::test]
async fn caller_mistakes_in_the_model_fields_are_422_naming_the_field() {
    let t = TestGateway::start().await;
    let port = t.model.addr().port();
    let cases = [
        ("model_api_key", json!("sk-line\nbreak"), "model_api_key"),
        ("model_api_key", json!("sk-clé"), "model_api_key"),
        ("model_endpoint", json!(format!("http://127.0.0.1:{port}x/v1")), "model_endpoint"),
        ("model_endpoint", json!("http://127.0.0.1:http/v1"), "model_endpoint"),
        ("model_endpoint", json!(format!("http://[fe80::1%25lo]:{port}/v1")), "model_endpoint"),
    ];
    for (field, value, named) in cases {
        let mut body = t.completion_body("codestral", None, false);
        body[field] = value.clone();
        let answer = t.complete(&body).await;
        assert_eq!(answer.status, 422, "{field} = {value}: {}", answer.text());
        assert!(answer.json()["detail"].as_str().unwrap().starts_with(named), "{}", answer.text());
    }
    assert!(t.model.requests().is_empty(), "none of them reached a model server");
    let mut good = t.completion_body("codestral", None, false);
    good["model_api_key"] = json!("sk-AZaz09_-.~+/=");
    assert_eq!(t.complete(&good).await.status, 200);
}

#[tokio::test]
async fn an_openai_compatible_endpoint_without_v1_is_answered_with_the_hint() {
    let t = TestGateway::start().await;
    let mut body = t.completion_body("codestral", Some("custom_openai/codestral-22b"), false);
    body["model_endpoint"] = json!(t.model.root_url());
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"detail": format!(
            "The model server answered 404 Not Found at {}; OpenAI-compatible endpoints usually end with /v1",
            t.model.root_url()
        )})
    );
    // With /v1 the same server answers: the hint named the fix.
    assert_eq!(
        t.complete(&t.completion_body("codestral", Some("custom_openai/codestral-22b"), false)).await.status,
        200
    );
}
