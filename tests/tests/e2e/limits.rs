//! Request and upstream limits, each with both sides.

use aigw_tests::{Reply, Setup, TestGateway, metric};
use bytes::Bytes;
use http::Method;
use serde_json::json;
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

/// A body's parse may take four times the body limit: a small body of many tiny values (which
/// would take some 50 times its size once parsed) is refused before it is parsed.
#[tokio::test]
async fn parse_budget_obeyed_and_violated() {
    let t = Setup::default().env("AIGW_SERVER__MAX_BODY_BYTES", "4096").start().await;
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let with_numbers = |count: usize| {
        let mut body = t.completion_body("codestral", None, false);
        body["extra"] = json!(vec![0; count]);
        body
    };
    // Within: 100 numbers; past: 200, in a body still far below the size limit.
    assert_eq!(t.post("/v2/code/completions", &headers, &with_numbers(100)).await.status, 200);
    let past = with_numbers(200);
    assert!(past.to_string().len() < 1200);
    let answer = t.post("/v2/code/completions", &headers, &past).await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    let detail = answer.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.ends_with("once parsed, more than the 16 KiB allowed (4 × AIGW_SERVER__MAX_BODY_BYTES)"),
        "{detail}"
    );
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

    // Stalled before its first piece: nothing has reached the caller, so the answer is an error
    // with a status.
    t.model.set_reply(Reply { chunk_delay: Duration::from_millis(1500), chunks: 4, ..Reply::default() });
    let before_first = t.complete(&t.completion_body("codestral", None, true)).await;
    assert_eq!(before_first.status, 504, "{}", before_first.text());
    assert_eq!(before_first.json()["detail"], "The model server did not answer in time");

    // Stalled once the answer has begun: the head is out, the stream is cut off.
    t.model.set_reply(Reply {
        chunk_delay: Duration::from_millis(1500),
        first_chunk_at_once: true,
        chunks: 4,
        ..Reply::default()
    });
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
async fn a_connection_dropped_before_any_byte_is_retried_within_the_bound() {
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
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3, "two retries, no more");
    assert_eq!(answer.json()["detail"], "The model server could not be reached (after 3 calls)");
}

/// Each timeout answers in the endpoint's own form, and the metric says which one fired.
#[tokio::test]
async fn timeouts_answer_in_each_endpoints_form_and_are_counted_by_phase() {
    let t = Setup::default()
        .env("AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "400")
        .env("AIGW_UPSTREAM__IDLE_TIMEOUT_MS", "400")
        .start()
        .await;
    let chat = aigw_tests::agent_body(&t.model.base_url());
    let headers = t.gitlab_headers(&t.token(&["duo_chat"]));

    // Within both limits: a whole answer.
    t.model.set_reply(Reply {
        text: "Thought: easy\nFinal Answer: Use git bisect.".into(),
        chunk_delay: Duration::from_millis(30),
        ..Reply::default()
    });
    let ok = t.post("/v2/chat/agent", &headers, &chat).await;
    assert_eq!(aigw_tests::final_answer(&ok.ndjson()), "Use git bisect.");

    // Before the first byte: code answers 504 JSON; chat reports it in its 200 stream.
    t.model.set_reply(Reply { head_delay: Duration::from_millis(1500), ..Reply::default() });
    let late = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(late.status, 504);
    assert_eq!(late.json(), serde_json::json!({"detail": "The model server did not answer in time"}));
    let late = t.post("/v2/chat/agent", &headers, &chat).await;
    assert_eq!(late.status, 200);
    assert_eq!(
        late.ndjson(),
        vec![
            serde_json::json!({"type": "error", "data": {"message": "The model server did not answer in time", "retryable": false}})
        ]
    );

    // After the stream started: chat ends with its NDJSON error event.
    t.model.set_reply(Reply { chunk_delay: Duration::from_millis(1500), ..Reply::default() });
    let stalled = t.post("/v2/chat/agent", &headers, &chat).await;
    assert_eq!(stalled.status, 200, "the head went out before the stall");
    let events = stalled.ndjson();
    assert_eq!(
        events.last().unwrap(),
        &serde_json::json!({"type": "error", "data": {"message": "The model server did not answer in time", "retryable": false}})
    );

    let text = t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text();
    let failures = |reason: &str| {
        metric(&text, &format!("aigw_upstream_failures_total{{provider=\"custom_openai\",reason=\"{reason}\"}}"))
    };
    assert_eq!(failures("first_byte_timeout"), Some(2.0), "{text}");
    assert_eq!(failures("idle_timeout"), Some(1.0), "{text}");
}

/// A loopback listener that never accepts, with its accept queue filled: Linux drops further
/// SYNs, so a connection attempt hangs as it would towards a firewalled model server.
async fn unanswering_listener() -> (std::net::SocketAddr, tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => return (addr, listener, queued),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test]
async fn connect_timeout_obeyed_and_violated() {
    let t = Setup::default().env("AIGW_UPSTREAM__CONNECT_TIMEOUT_MS", "300").start().await;
    // Within the limit: a listening model server.
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200);

    let (addr, _listener, _queued) = unanswering_listener().await;
    let mut body = t.completion_body("codestral", None, false);
    body["model_endpoint"] = serde_json::json!(format!("http://{addr}/v1"));
    let started = std::time::Instant::now();
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.json()["detail"], "The model server did not answer in time (after 3 calls)");
    assert!(started.elapsed() < Duration::from_secs(5), "the connect timeout, not the total one, fired");
    let text = t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text();
    let series = "aigw_upstream_failures_total{provider=\"custom_openai\",reason=\"connect_timeout\"}";
    assert_eq!(metric(&text, series), Some(1.0), "{text}");
}

/// Chat's total limit is GitLab's `AIGW_DUO_CHAT__MODEL_REQUEST_TIMEOUT` (seconds).
#[tokio::test]
async fn total_timeout_ends_a_stream_that_never_goes_quiet() {
    let t = Setup::default()
        .env("AIGW_UPSTREAM__IDLE_TIMEOUT_MS", "900")
        .env("AIGW_DUO_CHAT__MODEL_REQUEST_TIMEOUT", "1")
        .start()
        .await;
    let chat = aigw_tests::agent_body(&t.model.base_url());
    let headers = t.gitlab_headers(&t.token(&["duo_chat"]));
    let text = "Thought: easy\nFinal Answer: Use git bisect.".to_string();

    // Within: 4 chunks 50 ms apart.
    t.model.set_reply(Reply {
        text: text.clone(),
        chunks: 4,
        chunk_delay: Duration::from_millis(50),
        ..Reply::default()
    });
    let ok = t.post("/v2/chat/agent", &headers, &chat).await;
    assert_eq!(aigw_tests::final_answer(&ok.ndjson()), "Use git bisect.");

    // Past: 20 chunks 200 ms apart; never idle for 900 ms, but 4 s in all.
    t.model.set_reply(Reply { text, chunks: 20, chunk_delay: Duration::from_millis(200), ..Reply::default() });
    let started = std::time::Instant::now();
    let cut = t.post("/v2/chat/agent", &headers, &chat).await;
    assert!(started.elapsed() < Duration::from_secs(3), "ended by the total timeout: {:?}", started.elapsed());
    assert_eq!(cut.ndjson().last().unwrap()["type"], "error");
    let metrics = t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text();
    let series = "aigw_upstream_failures_total{provider=\"custom_openai\",reason=\"total_timeout\"}";
    assert_eq!(metric(&metrics, series), Some(1.0), "{metrics}");
}

/// A stream idle for longer than 100 ms gives its plugin store back and parses what comes next
/// on a fresh one; the answer is the same.
#[tokio::test]
async fn a_stream_that_pauses_continues_on_a_fresh_store() {
    let t = Setup::default().start().await;
    t.model.set_reply(Reply { chunk_delay: Duration::from_millis(150), chunks: 4, ..Reply::default() });
    let answer = t.complete(&t.completion_body("codestral", None, true)).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "return a + b"));

    let chat = aigw_tests::agent_body(&t.model.base_url());
    t.model.set_reply(Reply {
        text: "Thought: easy\nFinal Answer: Use git bisect.".into(),
        chunks: 3,
        chunk_delay: Duration::from_millis(150),
        ..Reply::default()
    });
    let answer = t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &chat).await;
    let events = answer.ndjson();
    assert_eq!(aigw_tests::final_answer(&events), "Use git bisect.");
    assert_eq!(events.last().unwrap()["type"], "usage", "usage still summed across the stores");
}

/// `(slots in use, stores alive)` as `/metrics` reports them.
async fn sandbox_gauges(t: &TestGateway) -> (u64, u64) {
    let text = t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text();
    let gauge = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing"));
        line[name.len()..].trim().parse::<u64>().unwrap()
    };
    (gauge("aigw_plugin_slots_in_use "), gauge("aigw_plugin_stores_alive "))
}

/// `aigw_plugin_stores_ready` once it has settled at `expected` (it moves just after answers are
/// written).
async fn stores_ready_settle_at(t: &TestGateway, expected: u64) {
    let ready = || async {
        let text = t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text();
        metric(&text, "aigw_plugin_stores_ready").unwrap() as u64
    };
    for _ in 0..100 {
        if ready().await == expected {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(ready().await, expected, "aigw_plugin_stores_ready moved past {expected}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("aigw_plugin_stores_ready never settled at {expected} (it is {})", ready().await);
}

/// Stores are instantiated ahead of requests: none before the first, one for the next request
/// after each, at most four per plugin however many requests end at once, none left once their
/// plugin is unloaded; requests never wait on them (slots and live stores as before).
#[tokio::test]
async fn stores_made_ready_ahead_are_bounded_and_leave_with_their_plugin() {
    let t = std::sync::Arc::new(Setup::default().start().await);
    stores_ready_settle_at(&t, 0).await;
    let body = t.completion_body("codestral", None, false);
    for _ in 0..3 {
        assert_eq!(t.complete(&body).await.status, 200);
        stores_ready_settle_at(&t, 1).await;
    }
    let burst: Vec<_> = (0..32)
        .map(|_| {
            let (t, body) = (std::sync::Arc::clone(&t), body.clone());
            tokio::spawn(async move { t.complete(&body).await.status })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    stores_ready_settle_at(&t, 4).await;
    assert_eq!(sandbox_gauges(&t).await, (0, 0), "ready stores hold neither a request's slot nor a live store");

    std::fs::remove_file(t.plugins.path().join("openai-compatible.wasm")).unwrap();
    t.gateway.plugins().reload().await;
    stores_ready_settle_at(&t, 0).await;
}

#[tokio::test]
async fn requests_waiting_on_the_model_hold_a_slot_but_no_store() {
    let t = Setup::default().start().await;
    assert_eq!(sandbox_gauges(&t).await, (0, 0));

    // A whole answer slow to come: the store is freed while the head is awaited, and a fresh
    // one parses the answer.
    t.model.set_reply(Reply { head_delay: Duration::from_millis(400), ..Reply::default() });
    let body = t.completion_body("codestral", None, false);
    let (answer, waiting) = tokio::join!(t.complete(&body), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sandbox_gauges(&t).await
    });
    assert_eq!((answer.status.as_u16(), answer.json()["choices"][0]["text"].clone()), (200, "return a + b".into()));
    assert_eq!(waiting, (1, 0), "a slot held, no store, while the model server thinks");

    // A stream that pauses between pieces: the same, and it still arrives whole.
    t.model.set_reply(Reply { chunks: 3, chunk_delay: Duration::from_millis(300), ..Reply::default() });
    let body = t.completion_body("codestral", None, true);
    let (answer, waiting) = tokio::join!(t.complete(&body), async {
        tokio::time::sleep(Duration::from_millis(450)).await;
        sandbox_gauges(&t).await
    });
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "return a + b"));
    assert_eq!(waiting, (1, 0));
    assert_eq!(sandbox_gauges(&t).await, (0, 0), "everything returned at the end");
}

#[tokio::test]
async fn shutdown_drains_streams_in_flight_then_closes_the_port() {
    let t = Setup::default().env("AIGW_SERVER__WORKERS", "2").start().await;
    t.model.set_reply(Reply {
        text: "abcdefgh".into(),
        chunks: 8,
        chunk_delay: Duration::from_millis(40),
        ..Reply::default()
    });
    let addr = t.gateway.addr();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = http::Request::builder().method(Method::POST).uri(format!("http://{addr}/v2/code/completions"));
    for (name, value) in &t.gitlab_headers(&t.token(&["complete_code"])) {
        request = request.header(name, value);
    }
    let body = Bytes::from(t.completion_body("codestral", None, true).to_string());
    let response = client.request(request.body(http_body_util::Full::new(body)).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(t.model.open_streams(), 1);

    // Shut down while the stream is still coming: it finishes whole, then the port closes.
    let TestGateway { gateway, model, .. } = t;
    let (drained, streamed) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), gateway.shutdown()),
        http_body_util::BodyExt::collect(response.into_body()),
    );
    assert!(drained.is_ok(), "the drain ends once the last request has");
    assert_eq!(streamed.unwrap().to_bytes(), "abcdefgh");
    assert_eq!(model.open_streams(), 0);
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "nothing listens once the gateway has shut down");
}

/// A rolling restart as a load balancer sees it: readiness turns 503 at once, the port still
/// takes new requests for the drain delay (each answer closing its connection), then it closes,
/// and a stream begun before the signal still ends whole.
#[tokio::test]
async fn shutdown_drains_with_readiness_503_and_the_port_open_for_the_drain_delay() {
    const DRAIN: Duration = Duration::from_millis(1500);
    let t = Setup::default().env("AIGW_SERVER__DRAIN_DELAY_MS", &DRAIN.as_millis().to_string()).start().await;
    let base = format!("http://{}", t.gateway.addr());
    let client = aigw_tests::http_client();
    // The instance's keys are fetched in the background at start; a request waits for them,
    // readiness does not (it answers 503 until they are there).
    let kept_alive = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(kept_alive.header("connection"), None, "before the drain, connections are kept alive");
    let ready =
        aigw_tests::http_request(&client, Method::GET, &format!("{base}/monitoring/ready"), &[], Bytes::new()).await;
    assert_eq!((ready.status.as_u16(), ready.json()["status"].clone()), (200, json!("ok")));

    // A stream that outlasts the drain delay.
    t.model.set_reply(Reply {
        text: "abcdefgh".into(),
        chunks: 8,
        chunk_delay: Duration::from_millis(250),
        ..Reply::default()
    });
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let stream_body = Bytes::from(t.completion_body("codestral", None, true).to_string());
    let completion_body = Bytes::from(t.completion_body("codestral", None, false).to_string());
    let url = format!("{base}/v2/code/completions");
    let streaming = tokio::spawn({
        let (client, url, headers) = (client.clone(), url.clone(), headers.clone());
        async move { aigw_tests::http_request(&client, Method::POST, &url, &headers, stream_body).await }
    });
    let TestGateway { gateway, model, .. } = t;
    for _ in 0..100 {
        if model.open_streams() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(model.open_streams(), 1, "the stream began before the signal");
    let began = std::time::Instant::now();
    let during = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ready =
            aigw_tests::http_request(&client, Method::GET, &format!("{base}/monitoring/ready"), &[], Bytes::new())
                .await;
        let fresh = aigw_tests::http_request(&client, Method::POST, &url, &headers, completion_body).await;
        assert!(began.elapsed() < DRAIN, "checked within the drain delay");
        tokio::time::sleep(DRAIN + Duration::from_millis(300) - began.elapsed()).await;
        let after = tokio::net::TcpStream::connect(gateway_addr(&base)).await;
        (ready, fresh, after.is_err())
    };
    let (stopped, streamed, (ready, fresh, refused)) =
        tokio::join!(tokio::time::timeout(Duration::from_secs(10), gateway.shutdown()), streaming, during);
    assert_eq!((ready.status.as_u16(), ready.json()["status"].clone()), (503, json!("draining: shutting down")));
    assert_eq!(fresh.status, 200, "the port still serves during the drain delay: {}", fresh.text());
    assert_eq!(fresh.header("connection"), Some("close"), "and sends the caller elsewhere for its next request");
    assert!(refused, "after the drain delay the port is closed");
    assert!(stopped.is_ok(), "the shutdown ends once the last stream has");
    assert!(began.elapsed() >= DRAIN, "not before the drain delay");
    let streamed = streamed.unwrap();
    assert_eq!(
        (streamed.status.as_u16(), streamed.text().as_str(), streamed.body_error.clone()),
        (200, "abcdefgh", None)
    );
    assert_eq!(model.open_streams(), 0);
}

fn gateway_addr(base: &str) -> std::net::SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

/// A stream that fails before anything reached the caller is an HTTP error with a status; one
/// that ends without its end marker and without a finish reason was cut short, not complete.
#[tokio::test]
async fn streams_that_break_early_or_end_short_are_failures() {
    let t = TestGateway::start().await;
    let stream_body = t.completion_body("codestral", None, true);
    // An empty 200 stream.
    t.model.set_reply(Reply { raw_stream: Some(String::new()), ..Reply::default() });
    let empty = t.complete(&stream_body).await;
    assert_eq!(
        (empty.status.as_u16(), empty.json()["detail"].clone()),
        (502, json!("The model server's answer could not be read"))
    );
    // Text, then the connection closes: no [DONE], no finish reason.
    let text_only = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"return a\"}}]}\n\n";
    t.model.set_reply(Reply { raw_stream: Some(text_only.into()), ..Reply::default() });
    let cut = t.complete_allowing_abort(&stream_body).await;
    assert_eq!(cut.status, 200, "the first piece went out");
    assert!(cut.body_error.is_some(), "the body is aborted, not completed: {:?}", cut.text());
    // The same text with its finish reason and no [DONE] is a complete answer.
    let finished_text =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"return a\"},\"finish_reason\":\"stop\"}]}\n\n";
    t.model.set_reply(Reply { raw_stream: Some(finished_text.into()), ..Reply::default() });
    let finished = t.complete(&stream_body).await;
    assert_eq!(
        (finished.status.as_u16(), finished.text().as_str(), finished.body_error.is_none()),
        (200, "return a", true)
    );
    let metrics = t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text();
    assert!(
        metrics.contains("aigw_upstream_failures_total{provider=\"custom_openai\",reason=\"body\"} 2"),
        "{metrics}"
    );
}

/// Write `parts` to a fresh connection to the gateway, `pause` apart, then read what comes back
/// until the gateway closes the connection (bounded by a 10 s guard against a hang).
async fn raw_exchange(addr: std::net::SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        stream.write_all(part).await.unwrap();
    }
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the gateway closed the connection instead of holding it open");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn a_request_head_or_body_must_arrive_in_time() {
    let t = Setup::default()
        .env("AIGW_SERVER__HEADER_READ_TIMEOUT_MS", "600")
        .env("AIGW_SERVER__BODY_READ_TIMEOUT_MS", "600")
        .start()
        .await;
    let addr = t.gateway.addr();
    // A head sent in two parts inside the limit is served; one that stops half-way is closed.
    let probe: [&[u8]; 2] = [b"GET /monitoring/healthz HTTP/1.1\r\nHost: a", b"igw\r\nConnection: close\r\n\r\n"];
    assert!(raw_exchange(addr, &probe, Duration::from_millis(100)).await.starts_with("HTTP/1.1 200"));
    let slowloris = raw_exchange(addr, &[b"GET /monitoring/healthz HTTP/1.1\r\nHost: aigw\r\n"], Duration::ZERO).await;
    assert!(!slowloris.contains("200 OK"), "{slowloris}");
    // The same for a body: whole in time is answered; stalled part-way is a 408.
    let body = t.completion_body("codestral", None, false).to_string();
    let head = completion_head(&t, &format!("Content-Length: {}", body.len()));
    let (first, rest) = body.split_at(body.len() / 2);
    let whole =
        raw_exchange(addr, &[head.as_bytes(), first.as_bytes(), rest.as_bytes()], Duration::from_millis(100)).await;
    assert!(whole.starts_with("HTTP/1.1 200"), "{whole}");
    let stalled = raw_exchange(addr, &[head.as_bytes(), first.as_bytes()], Duration::ZERO).await;
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains("the request body did not arrive within 600 ms"), "{stalled}");
    // Meanwhile, ordinary requests are served.
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200);
}

#[tokio::test]
async fn shutdown_ends_within_its_grace_period_whatever_a_client_holds_open() {
    let t = Setup::default()
        .env("AIGW_SERVER__HEADER_READ_TIMEOUT_MS", "60000")
        .env("AIGW_SERVER__SHUTDOWN_GRACE_MS", "1500")
        .start()
        .await;
    let addr = t.gateway.addr();
    t.model.set_reply(Reply { head_delay: Duration::from_millis(300), ..Reply::default() });
    // A connection that will never finish its request head...
    let mut half_sent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half_sent, b"POST /v2/code/completions HTTP/1.1\r\nHost: aigw\r\n")
        .await
        .unwrap();
    // ...and a request in flight that finishes inside the grace period.
    let body = t.completion_body("codestral", None, false);
    let headers = t.gitlab_headers(&t.token(&["complete_code"]));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = http::Request::post(format!("http://{addr}/v2/code/completions"));
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let in_flight =
        tokio::spawn(client.request(request.body(http_body_util::Full::new(Bytes::from(body.to_string()))).unwrap()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let aigw_tests::TestGateway { gateway, model: _model, gitlab: _gitlab, .. } = t;
    let stopped = tokio::time::timeout(Duration::from_secs(10), gateway.shutdown()).await;
    assert!(stopped.is_ok(), "a half-sent request head kept the gateway from stopping");
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200, "the request in flight finished");
}

/// The head of a completion request for a raw connection, with the instance's headers and
/// `framing` (its `Content-Length` or `Transfer-Encoding`), up to the blank line.
fn completion_head(t: &TestGateway, framing: &str) -> String {
    let mut head = format!(
        "POST /v2/code/completions HTTP/1.1\r\nHost: aigw\r\nConnection: close\r\nContent-Type: application/json\r\n{framing}\r\n"
    );
    for (name, value) in t.gitlab_headers(&t.token(&["complete_code"])) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head + "\r\n"
}

/// A chunked completion request on a raw connection: its head, then `chunks` as written.
fn chunked_request(t: &TestGateway, chunks: &str) -> String {
    completion_head(t, "Transfer-Encoding: chunked") + chunks
}

/// A chunk size is a promise of bytes to come: one past the body limit is refused when it is
/// declared, not after the body timeout, and the connection closes.
#[tokio::test]
async fn a_chunk_declared_past_the_body_limit_is_refused_at_once() {
    let t = Setup::default()
        .env("AIGW_SERVER__MAX_BODY_BYTES", "4096")
        .env("AIGW_SERVER__BODY_READ_TIMEOUT_MS", "30000")
        .start()
        .await;
    let addr = t.gateway.addr();
    // Within: the body in two chunks, 4,096 bytes in all, is served.
    let mut body = t.completion_body("codestral", None, false);
    body["current_file"]["content_above_cursor"] = json!("");
    let padding = 4096 - body.to_string().len();
    body["current_file"]["content_above_cursor"] = json!("p".repeat(padding));
    let body = body.to_string();
    assert_eq!(body.len(), 4096);
    let (first, rest) = body.split_at(1000);
    let chunks = format!("{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n", first.len(), rest.len());
    let served = raw_exchange(addr, &[chunked_request(&t, &chunks).as_bytes()], Duration::ZERO).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");

    // Past: one byte more declared, or the largest size a chunk line can carry, followed by a
    // few bytes and silence. The answer comes at once (the 10 s guard of `raw_exchange` is a
    // third of the body timeout) and the connection closes.
    for (declared, then) in [(4097_u64, "x".repeat(10)), (u64::MAX, "{}".to_string())] {
        let request = chunked_request(&t, &format!("{declared:x}\r\n{then}"));
        let started = std::time::Instant::now();
        let refused = raw_exchange(addr, &[request.as_bytes()], Duration::ZERO).await;
        assert!(refused.starts_with("HTTP/1.1 413"), "{declared:x}: {refused}");
        assert!(refused.contains("request body larger than 4096 bytes"), "{refused}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // Declared over two chunks: the sum counts.
    let two = chunked_request(&t, &format!("800\r\n{}\r\n801\r\n", "y".repeat(2048)));
    assert!(raw_exchange(addr, &[two.as_bytes()], Duration::ZERO).await.starts_with("HTTP/1.1 413"));
    assert_eq!(t.model.requests().len(), 1, "only the request within the limit reached the model");
}
