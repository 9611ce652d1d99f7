//! Named models as pools of model servers: requests spread over the members, fail over before
//! the first byte, keep a file's completions on one member, and wait in class order (or are
//! refused with `Retry-After` in their front door's shape) when every member is busy.

use aigw::models::key_sha256_hex;
use aigw_mock::{MockModelServer, Reply};
use aigw_tests::{Setup, TestGateway, free_port, metric};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

const KEY: &str = "sk-aigw-fleet-key-0123456789";

/// A models file with `coder` served by `endpoints`, its pool table `pool`.
fn models_file(endpoints: &[String], pool: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        r#"
gateway_urls = ["http://aigw.test:5052/v1"]

[[models]]
name = "coder"
identifier = "custom_openai/Qwen/Qwen2.5-Coder-7B"
endpoints = [{}]

[models.pool]
{pool}

[[keys]]
id = "dws"
sha256 = "{}"
models = ["*"]
"#,
        endpoints.join(", "),
        key_sha256_hex(KEY)
    )
}

async fn chat(t: &TestGateway) -> aigw_tests::Answer {
    let headers = vec![
        ("authorization".to_string(), format!("Bearer {KEY}")),
        ("content-type".into(), "application/json".into()),
    ];
    let body = json!({"model": "coder", "messages": [{"role": "user", "content": "hello"}]});
    t.post("/v1/chat/completions", &headers, &body).await
}

/// The gateway with `coder` served by its own mock and a second one (returned), its pool table
/// `pool`.
async fn two_members(pool: &'static str) -> (TestGateway, MockModelServer) {
    let second = MockModelServer::start().await.unwrap();
    let second_url = second.base_url();
    let t = Setup::default().models(move |mock| models_file(&[mock.base_url(), second_url], pool)).start().await;
    (t, second)
}

/// A chat request sent in the background: its status, when it ends.
fn chat_in_background(t: &std::sync::Arc<TestGateway>) -> tokio::task::JoinHandle<StatusCode> {
    let t = std::sync::Arc::clone(t);
    tokio::spawn(async move { chat(&t).await.status })
}

/// Wait until `mock` has answered two more metrics scrapes than now (it reads its load since).
async fn scraped_twice(mock: &MockModelServer) {
    let scrapes = mock.probes();
    while mock.probes() < scrapes + 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(t: &TestGateway) -> String {
    t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text()
}

fn member_series(name: &str, member: &str) -> String {
    format!("{name}{{model=\"coder\",member=\"{member}\"}}")
}

fn authority(url: &str) -> String {
    url.trim_start_matches("http://").split('/').next().unwrap().to_string()
}

#[tokio::test]
async fn a_member_that_refuses_connections_is_failed_over_and_ejected() {
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let dead_member = authority(&dead);
    let t = Setup::default()
        .models(move |mock| {
            // Ejected for longer than the test runs, so no probe brings it back meanwhile.
            models_file(
                &[mock.base_url(), dead],
                "picker = \"round-robin\"\neject_base_ms = 60000\neject_max_ms = 60000",
            )
        })
        .start()
        .await;
    for round in 0..8 {
        let answer = chat(&t).await;
        assert_eq!(answer.status, StatusCode::OK, "request {round}: {}", answer.text());
    }
    assert_eq!(t.model.requests().len(), 8, "every request reached the live member");
    let text = metrics(&t).await;
    let failovers = metric(&text, &member_series("aigw_pool_failovers_total", &dead_member)).unwrap();
    assert!(failovers >= 3.0, "{text}");
    assert_eq!(metric(&text, &member_series("aigw_pool_ejections_total", &dead_member)), Some(1.0), "{text}");
    assert_eq!(metric(&text, &member_series("aigw_pool_member_ejected", &dead_member)), Some(1.0));
    let live = authority(&t.model.base_url());
    assert_eq!(metric(&text, &member_series("aigw_pool_picks_total", &live)), Some(8.0));
    assert_eq!(metric(&text, &member_series("aigw_pool_outstanding", &live)), Some(0.0), "places are given back");
}

#[tokio::test]
async fn a_5xx_before_the_first_byte_goes_to_another_member_and_a_4xx_does_not() {
    let (t, second) = two_members("picker = \"round-robin\"").await;
    t.model.set_reply(Reply { status: 503, ..Reply::default() });
    for _ in 0..4 {
        assert_eq!(chat(&t).await.status, StatusCode::OK);
    }
    assert_eq!(second.requests().len(), 4, "each request ended on the healthy member");
    assert!(t.model.requests().len() >= 2, "round-robin sent some to the failing one first");
    // A 400 is the request's own fault: passed on, not retried elsewhere.
    t.model.set_reply(Reply { status: 400, ..Reply::default() });
    second.set_reply(Reply { status: 400, ..Reply::default() });
    let before = t.model.requests().len() + second.requests().len();
    let refused = chat(&t).await;
    assert!(refused.text().contains("answered 400"), "{}", refused.text());
    assert_eq!(t.model.requests().len() + second.requests().len(), before + 1, "one call only");
}

#[tokio::test]
async fn a_saturated_pool_makes_requests_wait_then_refuses_them_with_retry_after() {
    let t = Setup::default()
        .models(|mock| {
            models_file(
                &[mock.base_url()],
                "max_concurrency = 1\nqueue_wait_ms = { completion = 300, chat = 300, agent = 300 }",
            )
        })
        .start()
        .await;
    t.model.set_reply(Reply { head_delay: Duration::from_millis(1500), ..Reply::default() });
    let t = std::sync::Arc::new(t);
    let busy = chat_in_background(&t);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Past the limit: the model API's shape…
    let refused = chat(&t).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    let error = &refused.json()["error"];
    assert_eq!(error["type"], "rate_limit_error");
    assert!(error["message"].as_str().unwrap().contains("busy"), "{error}");
    // …and GitLab's, for a code completion served from the same named model.
    let mut body = t.completion_body("codestral", Some("custom_openai/coder"), false);
    body["model_endpoint"] = json!("http://aigw.test:5052/v1");
    body["model_api_key"] = json!(KEY);
    let gitlab = t.complete(&body).await;
    assert_eq!(gitlab.status, StatusCode::TOO_MANY_REQUESTS, "{}", gitlab.text());
    assert_eq!(gitlab.header("retry-after"), Some("1"));
    assert!(gitlab.json()["detail"].as_str().unwrap().contains("busy"));
    // Within the limit, the first request was served.
    assert_eq!(busy.await.unwrap(), StatusCode::OK);
    assert_eq!(t.model.requests().len(), 1, "the refused requests never reached the model server");
    // A wait within the bound ends in an answer.
    t.model.set_reply(Reply { head_delay: Duration::from_millis(100), ..Reply::default() });
    let (first, second) = tokio::join!(chat(&t), chat(&t));
    assert_eq!((first.status, second.status), (StatusCode::OK, StatusCode::OK));
}

#[tokio::test]
async fn a_files_completions_stay_on_one_member_and_files_spread() {
    let (t, second) = two_members("").await;
    let completion = |file: &str, user: &str| {
        let mut body = t.completion_body("codestral", Some("custom_openai/coder"), false);
        body["model_endpoint"] = json!("http://aigw.test:5052/v1");
        body["model_api_key"] = json!(KEY);
        body["current_file"]["file_name"] = json!(file);
        let mut headers = t.gitlab_headers(&t.token(&["complete_code"]));
        headers.retain(|(name, _)| name != "x-gitlab-global-user-id");
        headers.push(("x-gitlab-global-user-id".to_string(), user.to_string()));
        (headers, body)
    };
    let mut homes = Vec::new();
    for file in 0..12 {
        let before = (t.model.requests().len(), second.requests().len());
        for _ in 0..3 {
            let (headers, body) = completion(&format!("src/file_{file}.py"), "user-1");
            let answer = t.post("/v2/code/completions", &headers, &body).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        }
        let after = (t.model.requests().len(), second.requests().len());
        let (first_got, second_got) = (after.0 - before.0, after.1 - before.1);
        assert!(first_got == 3 || second_got == 3, "file {file} split: {first_got} and {second_got}");
        homes.push(first_got == 3);
    }
    assert!(homes.contains(&true) && homes.contains(&false), "twelve files all on one member: {homes:?}");
    let text = metrics(&t).await;
    let hits: f64 = [authority(&t.model.base_url()), authority(&second.base_url())]
        .iter()
        .map(|member| metric(&text, &member_series("aigw_pool_affinity_hits_total", member)).unwrap_or(0.0))
        .sum();
    assert_eq!(hits, 36.0, "{text}");
}

#[tokio::test]
async fn a_reload_adds_a_member_without_dropping_a_request_in_flight() {
    let second = MockModelServer::start().await.unwrap();
    let t = Setup::default().models(|mock| models_file(&[mock.base_url()], "picker = \"round-robin\"")).start().await;
    t.model.set_reply(Reply { head_delay: Duration::from_millis(800), ..Reply::default() });
    let t = std::sync::Arc::new(t);
    let in_flight = chat_in_background(&t);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let file = t.models_dir.as_ref().unwrap().path().join("models.toml");
    std::fs::write(&file, models_file(&[t.model.base_url(), second.base_url()], "picker = \"round-robin\"")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while second.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the added member never got a request");
        assert_eq!(chat(&t).await.status, StatusCode::OK);
    }
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK, "the request in flight finished");
    let text = metrics(&t).await;
    assert!(text.contains(&member_series("aigw_pool_picks_total", &authority(&second.base_url()))), "{text}");
}

/// Wait until `condition` holds on the gateway's metrics text.
async fn until_metrics(t: &TestGateway, what: &str, condition: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(t).await;
        if condition(&text) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_servers_own_load_steers_requests_to_the_less_busy_member() {
    let (t, second) = two_members("metrics_path = \"/metrics\"\nscrape_interval_ms = 100").await;
    // The first server reports a long queue of its own (other clients' requests).
    t.model.set_load(20, 64, 0.5);
    scraped_twice(&t.model).await;
    scraped_twice(&second).await;
    for _ in 0..5 {
        assert_eq!(chat(&t).await.status, StatusCode::OK);
    }
    assert_eq!((t.model.requests().len(), second.requests().len()), (0, 5), "all to the member with no queue");
    // The other way round.
    t.model.set_load(0, 0, 0.1);
    second.set_load(20, 64, 0.5);
    scraped_twice(&second).await;
    for _ in 0..5 {
        assert_eq!(chat(&t).await.status, StatusCode::OK);
    }
    assert_eq!((t.model.requests().len(), second.requests().len()), (5, 5));
}

#[tokio::test]
async fn a_failing_health_check_ejects_a_member_and_a_passing_one_brings_it_back() {
    let (t, second) = two_members(
        "picker = \"round-robin\"\nhealth_path = \"/health\"\nhealth_interval_ms = 100\neject_after = 1\n\
         eject_base_ms = 60000\neject_max_ms = 60000",
    )
    .await;
    let first = member_series("aigw_pool_member_ejected", &authority(&t.model.base_url()));
    t.model.set_healthy(false);
    until_metrics(&t, "the ejection", |text| metric(text, &first) == Some(1.0)).await;
    for _ in 0..4 {
        assert_eq!(chat(&t).await.status, StatusCode::OK);
    }
    assert_eq!((t.model.requests().len(), second.requests().len()), (0, 4), "an ejected member takes nothing");
    // Passing again brings it back long before its ejection would have run out.
    t.model.set_healthy(true);
    until_metrics(&t, "the return", |text| metric(text, &first) == Some(0.0)).await;
    for _ in 0..4 {
        assert_eq!(chat(&t).await.status, StatusCode::OK);
    }
    assert_eq!(t.model.requests().len(), 2, "round-robin again");
}

#[tokio::test]
async fn members_come_from_a_dns_name() {
    let t = Setup::default()
        .models(|mock| {
            let port = mock.addr().port();
            let dns = format!("dns = \"http://localhost:{port}/v1\"\ndns_interval_ms = 1000");
            models_file(&[], &dns).replace("endpoints = []\n", "")
        })
        .start()
        .await;
    for _ in 0..3 {
        let answer = chat(&t).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    assert_eq!(t.model.requests().len(), 3);
    let text = metrics(&t).await;
    let member = format!("127.0.0.1:{}", t.model.addr().port());
    assert!(text.contains(&member_series("aigw_pool_picks_total", &member)), "{text}");
}

#[tokio::test]
async fn a_limit_learned_from_the_servers_metrics_makes_requests_wait_in_the_gateway() {
    let t = Setup::default()
        .models(|mock| {
            models_file(
                &[mock.base_url()],
                "metrics_path = \"/metrics\"\nscrape_interval_ms = 100\nlearn_concurrency = true\n\
                 queue_wait_ms = { agent = 5000 }",
            )
        })
        .start()
        .await;
    // The server runs one request and queues others of its own: its limit is one.
    t.model.set_load(2, 1, 0.3);
    scraped_twice(&t.model).await;
    t.model.set_reply(Reply { head_delay: Duration::from_millis(600), ..Reply::default() });
    let t = std::sync::Arc::new(t);
    let first = chat_in_background(&t);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = chat_in_background(&t);
    let queued = "aigw_pool_queued{model=\"coder\",class=\"agent\"}";
    until_metrics(&t, "the second request waiting in line", |text| metric(text, queued) == Some(1.0)).await;
    assert_eq!(t.model.requests().len(), 1, "the second waits in aigw, not in the server");
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(t.model.requests().len(), 2);
}

#[tokio::test]
async fn a_stream_is_never_sent_again_once_its_first_bytes_came_but_a_dead_member_before_them_is() {
    use aigw_mock::simulated::{SimParams, SimulatedServer};
    use http_body_util::{BodyExt, Full};
    // Slow decoding: a chat answer streams for seconds after its first bytes.
    let params = SimParams { decode_per_token: Duration::from_millis(40), ..SimParams::default() };
    let (first, second) =
        (SimulatedServer::start(params).await.unwrap(), SimulatedServer::start(params).await.unwrap());
    let urls = [first.base_url(), second.base_url()];
    let t = Setup::default().models(move |_| models_file(&urls, "picker = \"round-robin\"")).start().await;
    let request = || {
        let body = json!({"model": "coder", "stream": true, "messages": [{"role": "user", "content": "hello"}]});
        http::Request::post(format!("http://{}/v1/chat/completions", t.gateway.addr()))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let client = aigw_tests::http_client();
    let response = client.request(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.is_empty() {
        let frame = body.frame().await.unwrap().unwrap();
        received.extend_from_slice(frame.data_ref().map(|d| d.as_ref()).unwrap_or_default());
    }
    // The answer began: its server dies. The rest of the stream is lost, and is not asked of
    // the other server (nothing is sent twice once the caller has bytes).
    first.kill();
    while let Some(Ok(frame)) = body.frame().await {
        received.extend_from_slice(frame.data_ref().map(|d| d.as_ref()).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains("<END>"), "the answer cannot have finished: {text}");
    assert_eq!(second.stats().classes[1].requests, 0, "not retried on the other server");
    // Before the first bytes it is: round-robin gives the dead server every other turn, and each
    // of those fails over to the live one.
    for _ in 0..2 {
        let answer = chat(&t).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    assert_eq!(second.stats().classes[1].requests, 2);
    let dead = member_series("aigw_pool_failovers_total", &authority(&first.base_url()));
    assert_eq!(metric(&metrics(&t).await, &dead), Some(1.0));
}
