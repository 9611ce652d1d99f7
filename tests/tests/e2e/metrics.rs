//! `GET /metrics`: a request increments what it should, in the Prometheus text format.

use aigw_tests::{Setup, component};
use bytes::Bytes;
use http::Method;
use serde_json::json;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn requests_plugins_tokens_refusals_and_reloads_are_counted() {
    let t = Setup::default().plugin(component("test-guests/hostile.wasm"), "hostile.wasm").start().await;
    let identifier = Some("custom_openai/codestral-22b");
    assert_eq!(t.complete(&t.completion_body("codestral", identifier, false)).await.status, 200);
    assert_eq!(t.complete(&t.completion_body("codestral", identifier, true)).await.status, 200);
    assert_eq!(t.complete(&t.completion_body("codestral", Some("hostile/trap"), false)).await.status, 502);
    let mut refused = t.completion_body("codestral", None, false);
    refused["model_endpoint"] = json!("http://169.254.169.254/v1");
    assert_eq!(t.complete(&refused).await.status, 403);

    let answer = t.request(Method::GET, "/metrics", &[], Bytes::new()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = answer.text();
    assert_eq!(value(&text, "aigw_requests_total{endpoint=\"/v2/code/completions\",status=\"200\"}"), 2.0);
    assert_eq!(value(&text, "aigw_requests_total{endpoint=\"/v2/code/completions\",status=\"502\"}"), 1.0);
    assert_eq!(value(&text, "aigw_requests_total{endpoint=\"/v2/code/completions\",status=\"403\"}"), 1.0);
    assert_eq!(value(&text, "aigw_request_duration_seconds_count{endpoint=\"/v2/code/completions\"}"), 4.0);
    let calls = |function: &str| {
        value(
            &text,
            &format!("aigw_plugin_call_duration_seconds_count{{plugin=\"openai-compatible\",function=\"{function}\"}}"),
        )
    };
    assert_eq!(calls("build_request"), 3.0, "two completions and the refused one were built");
    assert_eq!(calls("parse_response"), 1.0);
    assert!(calls("parse_event") >= 3.0);
    assert_eq!(value(&text, "aigw_upstream_duration_seconds_count{provider=\"custom_openai\"}"), 2.0);
    assert_eq!(value(&text, "aigw_tokens_total{model=\"codestral-22b\",direction=\"input\"}"), 24.0);
    assert_eq!(value(&text, "aigw_tokens_total{model=\"codestral-22b\",direction=\"output\"}"), 10.0);
    assert_eq!(value(&text, "aigw_plugin_failures_total{plugin=\"hostile\",kind=\"trap\"}"), 1.0);
    assert_eq!(value(&text, "aigw_egress_refusals_total"), 1.0);
    assert_eq!(value(&text, "aigw_plugin_reloads_total{outcome=\"loaded\"}"), 2.0);
    assert!(value(&text, "aigw_jwks_refreshes_total{outcome=\"ok\"}") >= 1.0);
    // The gateway's own share, per request; the stream's first token and its pace after it.
    assert_eq!(value(&text, "aigw_overhead_seconds_count{endpoint=\"/v2/code/completions\"}"), 4.0);
    assert_eq!(value(&text, "aigw_time_to_first_token_seconds_count{provider=\"custom_openai\"}"), 1.0);
    assert_eq!(value(&text, "aigw_time_per_output_token_seconds_count{provider=\"custom_openai\"}"), 1.0);
    assert!(!text.contains("sk-test-key"), "no secret in metrics");
}

#[tokio::test]
async fn answers_carry_the_request_id_and_the_gateways_own_overhead() {
    let t = aigw_tests::TestGateway::start().await;
    t.model.set_reply(aigw_tests::Reply { head_delay: std::time::Duration::from_millis(200), ..Default::default() });
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.header("x-request-id"), Some("req-1"), "the instance's id is echoed");
    let overhead: f64 = answer.header("x-aigw-overhead-ms").unwrap().parse().unwrap();
    assert!((0.0..200.0).contains(&overhead), "the model server's 200 ms are not the gateway's: {overhead}");

    let bare = t.request(Method::GET, "/monitoring/healthz", &[], Bytes::new()).await;
    let generated = bare.header("x-request-id").unwrap();
    assert_eq!(generated.len(), 32, "a new id when the caller sent none: {generated}");
}
