//! GitLab's gateway settings that aigw honours: client allowlist, auth bypass, custom models
//! off, streaming off, the chat model timeout.

use aigw_tests::{Reply, Setup};
use bytes::Bytes;
use http::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn clients_outside_the_ingress_allowlist_get_403_before_any_token_work() {
    let t = Setup::default().env("AIGW_INGRESS__ALLOW", "10.0.0.0/8, 192.168.0.0/16").start().await;
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!((answer.status.as_u16(), answer.json()), (403, json!({"detail": "Forbidden"})));
    let no_token = t.request(Method::POST, "/v2/code/completions", &[], Bytes::new()).await;
    assert_eq!(no_token.status, 403, "refused before authentication");
    assert!(t.model.requests().is_empty());

    let allowed = Setup::default().env("AIGW_INGRESS__ALLOW", "127.0.0.0/8").start().await;
    assert_eq!(allowed.complete(&allowed.completion_body("codestral", None, false)).await.status, 200);
}

#[tokio::test]
async fn bypassing_authentication_serves_without_a_token() {
    let t = Setup::default().env("AIGW_AUTH__BYPASS_EXTERNAL", "true").start().await;
    let headers = vec![("content-type".to_string(), "application/json".to_string())];
    let answer = t.post("/v2/code/completions", &headers, &t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn disabled_streaming_asks_for_whole_answers_and_still_streams_to_the_caller() {
    let t = Setup::default().env("AIGW_CUSTOM_MODELS__DISABLE_STREAMING", "true").start().await;
    let answer = t.complete(&t.completion_body("codestral", None, true)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream; charset=utf-8"));
    assert_eq!(answer.text(), "return a + b");
    assert_eq!(t.model.requests()[0].body.get("stream"), None, "a whole answer is asked for");
}

#[tokio::test]
async fn chat_model_timeout_obeyed_and_violated() {
    let t = Setup::default().env("AIGW_DUO_CHAT__MODEL_REQUEST_TIMEOUT", "1").start().await;
    let chat = json!({"prompt_components": [{"type": "prompt", "payload": {
        "content": "hi", "provider": "litellm", "model": "mistral", "model_endpoint": t.model.base_url()}}]});
    let headers = t.gitlab_headers(&t.token(&["duo_chat", "complete_code"]));
    t.model.set_reply(Reply { head_delay: Duration::from_millis(100), ..Reply::default() });
    assert_eq!(t.post("/v1/chat/explain_code", &headers, &chat).await.status, 200, "within 1 s");

    t.model.set_reply(Reply { head_delay: Duration::from_millis(1600), ..Reply::default() });
    let slow = t.post("/v1/chat/explain_code", &headers, &chat).await;
    assert_eq!(slow.status, 504, "past the chat timeout");
    let code = t.post("/v2/code/completions", &headers, &t.completion_body("codestral", None, false)).await;
    assert_eq!(code.status, 200, "code keeps its own (60 s) timeout");
}

#[tokio::test]
async fn with_custom_models_disabled_a_request_may_not_name_an_endpoint_or_key() {
    let t = Setup::default().env("AIGW_CUSTOM_MODELS__ENABLED", "false").start().await;
    let refused = json!({"detail": "specifying custom models endpoint is disabled"});
    let with_endpoint = t.completion_body("codestral", Some("custom_openai/codestral-22b"), false);
    let answer = t.complete(&with_endpoint).await;
    assert_eq!((answer.status.as_u16(), answer.json()), (422, refused.clone()));

    let mut key_only = with_endpoint.clone();
    key_only.as_object_mut().unwrap().remove("model_endpoint");
    let answer = t.complete(&key_only).await;
    assert_eq!((answer.status.as_u16(), answer.json()), (422, refused.clone()));

    // Neither: the setting has nothing to refuse, and what is missing is named instead.
    let mut neither = key_only.clone();
    neither.as_object_mut().unwrap().remove("model_api_key");
    let answer = t.complete(&neither).await;
    assert_eq!(answer.status, 422);
    assert_ne!(answer.json(), refused, "{}", answer.text());
    assert!(t.model.requests().is_empty());
}
