//! Request and upstream limits, each with both sides.

use aigw_tests::{Reply, Setup, TestGateway};
use bytes::Bytes;
use http::Method;
use std::time::Duration;

#[tokio::test]
async fn body_size_limit_obeyed_and_violated() {
    let t = Setup::default().env("AIGW_SERVER__MAX_BODY_BYTES", "4096").start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let within = t.completion_body("codestral", None, false);
    assert!(within.to_string().len() < 4096);
    assert_eq!(t.post("/v2/code/completions", &headers, &within).await.status, 200);

    let mut past = t.completion_body("codestral", None, false);
    past["current_file"]["content_above_cursor"] = serde_json::json!("x".repeat(5000));
    let answer = t.post("/v2/code/completions", &headers, &past).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["detail"], "request body larger than 4096 bytes");
    assert_eq!(t.model.requests().len(), 1);
}

#[tokio::test]
async fn first_byte_timeout_obeyed_and_violated() {
    let t = Setup::default().env("AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "300").start().await;
    t.model.set_reply(Reply { head_delay: Duration::from_millis(50), ..Reply::default() });
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200);
    t.model.set_reply(Reply { head_delay: Duration::from_millis(1500), ..Reply::default() });
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.json()["detail"], "The model server did not answer in time");
}

#[tokio::test]
async fn idle_timeout_ends_a_stalled_stream() {
    let t = Setup::default().env("AIGW_UPSTREAM__IDLE_TIMEOUT_MS", "300").start().await;
    t.model.set_reply(Reply { chunk_delay: Duration::from_millis(20), chunks: 4, ..Reply::default() });
    let ok = t.complete(&t.completion_body("codestral", None, true)).await;
    assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "return a + b"));

    t.model.set_reply(Reply { chunk_delay: Duration::from_millis(1500), chunks: 4, ..Reply::default() });
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let body = Bytes::from(t.completion_body("codestral", None, true).to_string());
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let mut request = http::Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/v2/code/completions", t.gateway.addr()));
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let response = client.request(request.body(http_body_util::Full::new(body)).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200, "the head went out before the stall");
        http_body_util::BodyExt::collect(response.into_body()).await.map(|c| c.to_bytes())
    })
    .await
    .expect("the stalled stream was ended, not left hanging");
    assert!(result.is_err(), "the stream is cut off, not completed: {result:?}");
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let t = TestGateway::start().await;
    let answer = t.request(Method::GET, "/v2/nope", &[], Bytes::new()).await;
    assert_eq!((answer.status.as_u16(), answer.json()), (404, serde_json::json!({"detail": "Not Found"})));
    let answer = t.request(Method::GET, "/v2/code/completions", &[], Bytes::new()).await;
    assert_eq!((answer.status.as_u16(), answer.json()), (405, serde_json::json!({"detail": "Method Not Allowed"})));
    let answer = t.request(Method::GET, "/monitoring/healthz", &[], Bytes::new()).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn sandbox_slots_obeyed_and_exhausted() {
    let t = Setup::default().env("AIGW_PLUGINS__MAX_CONCURRENT", "1").start().await;
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200, "one at a time works");

    // A slow stream holds the only sandbox slot for its whole life...
    t.model.set_reply(Reply { chunk_delay: Duration::from_millis(300), chunks: 4, ..Reply::default() });
    let t = std::sync::Arc::new(t);
    let holder = {
        let t = std::sync::Arc::clone(&t);
        tokio::spawn(async move { t.complete(&t.completion_body("codestral", None, true)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a second request is turned away cleanly instead of queueing without bound.
    let refused = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(holder.await.unwrap().text(), "return a + b");
    t.model.set_reply(Reply::default());
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200, "the slot is free again");
}

#[tokio::test]
async fn a_caller_hanging_up_cancels_the_upstream_stream() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { chunks: 50, chunk_delay: Duration::from_millis(100), ..Reply::default() });
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request =
        http::Request::builder().method(Method::POST).uri(format!("http://{}/v2/code/completions", t.gateway.addr()));
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let body = Bytes::from(t.completion_body("codestral", None, true).to_string());
    let response = client.request(request.body(http_body_util::Full::new(body)).unwrap()).await.unwrap();
    let mut body = response.into_body();
    let first = http_body_util::BodyExt::frame(&mut body).await.unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(t.model.open_streams(), 1);
    drop(body);
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while t.model.open_streams() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the upstream stream outlived its caller");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A model server that closes the first `drop_first` connections without a byte, then answers
/// every request with a fixed OpenAI-style completion. Returns its address and a connection count.
async fn flaky_server(drop_first: usize) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            if seen.fetch_add(1, Ordering::SeqCst) < drop_first {
                drop(stream);
                continue;
            }
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Read the head and the body its Content-Length announces.
                loop {
                    let Ok(n) = stream.read(&mut buffer).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"second time lucky"},"finish_reason":"stop"}]}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_connection_dropped_before_any_byte_is_retried_once() {
    let t = TestGateway::start().await;
    let (addr, connections) = flaky_server(1).await;
    let mut body = t.completion_body("codestral", None, false);
    body["model_endpoint"] = serde_json::json!(format!("http://{addr}/v1"));
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["text"], "second time lucky");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);

    let (addr, connections) = flaky_server(usize::MAX).await;
    body["model_endpoint"] = serde_json::json!(format!("http://{addr}/v1"));
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2, "one retry, no more");
}
