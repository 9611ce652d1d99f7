//! The `anthropic` plugin end to end: Messages API request shape, `x-api-key` credential, and its
//! SSE event sequence (usage split over two events) turned into GitLab's answers.

use aigw_tests::{Reply, Setup, TestGateway, component};
use serde_json::json;

async fn anthropic_gateway() -> TestGateway {
    Setup::default().plugin(component("plugins/anthropic.wasm"), "anthropic.wasm").start().await
}

fn endpoint(t: &TestGateway) -> String {
    format!("http://{}", t.model.addr())
}

#[tokio::test]
async fn chat_sends_a_messages_request_with_the_key_in_x_api_key() {
    let t = anthropic_gateway().await;
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain: a + b"}]);
    let body = json!({"prompt_components": [{"type": "prompt", "payload": {
        "content": messages, "provider": "litellm", "model": "claude_3", "model_endpoint": endpoint(&t),
        "model_api_key": "sk-ant-test", "model_identifier": "anthropic/claude-3-5-sonnet",
        "params": {"max_tokens_to_sample": 300}}}]});
    let answer = t.post("/v1/chat/explain_code", &t.gitlab_headers(&t.token(&["duo_chat"])), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["response"], "return a + b");
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.path, "/v1/messages");
    assert_eq!(upstream.headers.get("x-api-key").unwrap(), "sk-ant-test");
    assert_eq!(upstream.headers.get("anthropic-version").unwrap(), "2023-06-01");
    assert!(upstream.headers.get("authorization").is_none(), "the key goes only where the plugin said");
    assert_eq!(
        upstream.body,
        json!({"model": "claude-3-5-sonnet", "max_tokens": 300, "system": "Be brief.",
               "messages": [{"role": "user", "content": "Explain: a + b"}], "stream": false})
    );
}

#[tokio::test]
async fn agent_stream_sums_usage_split_over_events() {
    let t = anthropic_gateway().await;
    t.model.set_reply(Reply {
        text: "Thought: easy\nFinal Answer: Use git bisect.".into(),
        chunks: 6,
        ..Reply::default()
    });
    let body = json!({"messages": [{"role": "user", "content": "How do I find the bad commit?"}],
                      "model_metadata": {"provider": "anthropic", "name": "claude_3", "endpoint": endpoint(&t),
                                         "api_key": "sk-ant-test", "identifier": "anthropic/claude-sonnet-4-5"}});
    let answer = t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.ndjson();
    let text = aigw_tests::final_answer(&events);
    assert_eq!(text, "Use git bisect.");
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "usage", "data": {"usage": {"claude-sonnet-4-5": {"input_tokens": 12, "output_tokens": 5}}}})
    );
    let upstream = &t.model.requests()[0].body;
    assert!(upstream["system"].as_str().unwrap().contains("GitLab Duo Chat"), "the system prompt is top-level");
    // The `Thought:` prefill is a last assistant turn, which the Messages API continues (Claude
    // 4.5 still accepts one; 4.6 and later get it as the user's words, see the plugin's tests).
    assert_eq!(
        upstream["messages"],
        json!([{"role": "user", "content": "How do I find the bad commit?"},
               {"role": "assistant", "content": "\nThought:"}])
    );
}

#[tokio::test]
async fn code_completion_streams_through_the_messages_api() {
    let t = anthropic_gateway().await;
    let mut body = t.completion_body("claude_3", Some("anthropic/claude-3-5-haiku"), true);
    body["model_endpoint"] = json!(endpoint(&t));
    let answer = t.complete(&body).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "return a + b"));
    assert_eq!(t.model.requests()[0].body["max_tokens"], 128, "the base prompt's limit");
}
