//! The azure-openai, mistral and bedrock plugins through the whole gateway against the mock
//! model server speaking each wire format: where the request goes, where the credential goes
//! (a header, a bearer key, a SigV4 signature the mock verifies), and the answers GitLab gets.

use aigw_mock::sigv4;
use aigw_tests::{Reply, Setup, TestGateway, component};
use serde_json::{Value, json};

async fn gateway_with(plugin: &str, env: &[(&str, &str)]) -> TestGateway {
    let mut setup = Setup::default().plugin(component(&format!("plugins/{plugin}.wasm")), &format!("{plugin}.wasm"));
    for (name, value) in env {
        setup = setup.env(name, value);
    }
    setup.start().await
}

fn agent_body(metadata: Value) -> Value {
    json!({"messages": [{"role": "user", "content": "How do I find the bad commit?"}], "model_metadata": metadata})
}

const BEDROCK_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", sigv4::ACCESS_KEY_ID),
    ("AWS_SECRET_ACCESS_KEY", sigv4::SECRET_ACCESS_KEY),
    ("AWS_REGION", "eu-central-1"),
];

#[tokio::test]
async fn azure_deployment_gets_the_request_with_its_api_key_header() {
    let t = gateway_with("azure-openai", &[]).await;
    let body = json!({"prompt_components": [{"type": "prompt", "payload": {
        "content": [{"role": "user", "content": "Explain: a + b"}], "provider": "litellm", "model": "gpt",
        "model_endpoint": t.model.root_url(), "model_api_key": "azure-key-1", "model_identifier": "azure/gpt-4o-prod"}}]});
    let answer = t.post("/v1/chat/explain_code", &t.gitlab_headers(&t.token(&["duo_chat"])), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["response"], "return a + b");
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.path, "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21");
    assert_eq!(upstream.headers.get("api-key").unwrap(), "azure-key-1");
    assert!(upstream.headers.get("authorization").is_none());
    assert_eq!(upstream.body.get("model"), None, "Azure names the deployment in the path");
}

#[tokio::test]
async fn codestral_completion_uses_mistral_fill_in_the_middle() {
    let t = gateway_with("mistral", &[]).await;
    let mut body = t.completion_body("codestral", Some("codestral/codestral-latest"), false);
    body["model_endpoint"] = json!(t.model.mistral_url());
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["text"], "return a + b");
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.path, "/mistral/v1/fim/completions");
    assert_eq!(upstream.headers.get("authorization").unwrap(), "Bearer sk-test-key");
    assert_eq!(upstream.body["prompt"], "def add(a, b):\n    ");
    assert_eq!(upstream.body["suffix"], "\n\nprint(add(1, 2))\n");
}

#[tokio::test]
async fn mistral_chat_streams_with_usage_it_was_not_asked_for() {
    let t = gateway_with("mistral", &[]).await;
    t.model.set_reply(Reply {
        text: "Thought: easy\nFinal Answer: Use git bisect.".into(),
        chunks: 5,
        ..Reply::default()
    });
    let metadata = json!({"provider": "mistral", "name": "mistral", "endpoint": t.model.mistral_url(),
                          "api_key": "mistral-key", "identifier": "mistral/mistral-large-latest"});
    let answer = t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &agent_body(metadata)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.ndjson();
    assert_eq!(aigw_tests::final_answer(&events), "Use git bisect.");
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "usage", "data": {"usage": {"mistral-large-latest": {"input_tokens": 12, "output_tokens": 5}}}})
    );
    // The mock refuses unknown fields as Mistral does, so this also proves none were sent.
    assert_eq!(t.model.requests()[0].path, "/mistral/v1/chat/completions");
}

#[tokio::test]
async fn bedrock_stream_is_signed_and_decoded_from_aws_event_stream() {
    let t = gateway_with("bedrock", &BEDROCK_ENV).await;
    t.model.set_reply(Reply {
        text: "Thought: easy\nFinal Answer: Use git bisect.".into(),
        chunks: 7,
        ..Reply::default()
    });
    let metadata = json!({"provider": "bedrock", "name": "claude_3", "endpoint": t.model.root_url(),
                          "identifier": "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0"});
    let answer = t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &agent_body(metadata)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.ndjson();
    assert_eq!(aigw_tests::final_answer(&events), "Use git bisect.");
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "usage", "data": {"usage": {"anthropic.claude-3-5-sonnet-20240620-v1:0":
            {"input_tokens": 12, "output_tokens": 5}}}})
    );
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.path, "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream");
    let authorization = upstream.headers.get("authorization").unwrap().to_str().unwrap();
    let scope = format!("Credential={}/", sigv4::ACCESS_KEY_ID);
    assert!(authorization.starts_with(&format!("AWS4-HMAC-SHA256 {scope}")), "{authorization}");
    assert!(authorization.contains("/eu-central-1/bedrock/aws4_request"), "{authorization}");
    // Claude 3.5 Sonnet is outside the models that keep a prefill (as in GitLab's gateway), so the
    // `Thought:` prefill joins the user's turn, Converse wanting the roles to alternate.
    assert_eq!(
        upstream.body["messages"],
        json!([{"role": "user", "content": [{"text": "How do I find the bad commit?"},
                                            {"text": "[Previous assistant context]: \nThought:"}]}])
    );
}

#[tokio::test]
async fn bedrock_signature_with_the_wrong_secret_is_refused_upstream() {
    let env = [BEDROCK_ENV[0], ("AWS_SECRET_ACCESS_KEY", "not-the-secret"), BEDROCK_ENV[2]];
    let t = gateway_with("bedrock", &env).await;
    let mut body = t.completion_body("claude_3", Some("bedrock/anthropic.claude-3-haiku-20240307-v1:0"), false);
    body["model_endpoint"] = json!(t.model.root_url());
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json(), json!({"detail": "The model server answered 403 Forbidden"}));
    assert_eq!(t.model.requests().len(), 1, "the request was sent, and refused by the mock's signature check");

    // The same request with the right secret is accepted: the check above has both sides.
    let t = gateway_with("bedrock", &BEDROCK_ENV).await;
    body["model_endpoint"] = json!(t.model.root_url());
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["text"], "return a + b");
}

#[tokio::test]
async fn bedrock_without_endpoint_or_region_says_what_is_missing() {
    let t = gateway_with("bedrock", &BEDROCK_ENV[..2]).await;
    let mut body = t.completion_body("claude_3", Some("bedrock/anthropic.claude-3-haiku-20240307-v1:0"), false);
    body.as_object_mut().unwrap().remove("model_endpoint");
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json(), json!({"detail": "AWS signing needs AWS_REGION in the gateway's environment"}));
    assert!(t.model.requests().is_empty());

    // A provider whose plugin has no default endpoint needs one in the request.
    let t = TestGateway::start().await;
    let mut body = t.completion_body("codestral", Some("custom_openai/codestral"), false);
    body.as_object_mut().unwrap().remove("model_endpoint");
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(answer.text().contains("model_endpoint is required for provider"), "{}", answer.text());
}
