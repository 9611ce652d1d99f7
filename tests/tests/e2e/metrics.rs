//! `GET /metrics`: a request increments what it should, in the Prometheus text format.

use aigw_tests::{Setup, component};
use bytes::Bytes;
use http::Method;
use serde_json::json;

fn value(text: &str, series: &str) -> f64 {
    aigw_tests::metric(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
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
    let requests = |status: &str, provider: &str| {
        value(
            &text,
            &format!(
                "aigw_requests_total{{endpoint=\"/v2/code/completions\",status=\"{status}\",provider=\"{provider}\"}}"
            ),
        )
    };
    assert_eq!(requests("200", "custom_openai"), 2.0);
    assert_eq!(requests("502", "hostile"), 1.0);
    assert_eq!(requests("403", "custom_openai"), 1.0, "refused by the egress policy, after routing");
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

async fn get(url: &str) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_can_move_to_a_listener_of_their_own() {
    let t = Setup::default().env("AIGW_METRICS__LISTEN", "127.0.0.1:0").start().await;
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200);
    let on_api_port = t.request(Method::GET, "/metrics", &[], Bytes::new()).await;
    assert_eq!(on_api_port.status, 404, "API clients no longer see the metrics");

    let addr = t.gateway.metrics_addr().unwrap();
    let (status, text) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    let series = "aigw_requests_total{endpoint=\"/v2/code/completions\",status=\"200\",provider=\"custom_openai\"}";
    assert_eq!(value(&text, series), 1.0);
    assert_eq!(get(&format!("http://{addr}/v2/code/completions")).await.0, 404, "only metrics on that port");
}

#[tokio::test]
async fn gitlabs_metrics_host_and_port_variables_move_them_too() {
    let t = Setup::default()
        .env("AIGW_FASTAPI__METRICS_HOST", "127.0.0.1")
        .env("AIGW_FASTAPI__METRICS_PORT", "0")
        .start()
        .await;
    assert_eq!(t.request(Method::GET, "/metrics", &[], Bytes::new()).await.status, 404);
    let addr = t.gateway.metrics_addr().unwrap();
    assert!(addr.ip().is_loopback(), "on the host GitLab's variable names: {addr}");
    let (status, text) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(text.contains("aigw_"), "{text}");
}
