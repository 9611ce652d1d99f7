//! Model servers that misbehave at the HTTP level: oversized answers, a stream that never
//! finishes an event, redirects and garbage. Each ends its own request with a clear error, in
//! bounded memory, and nothing is followed or retried that should not be.

use aigw_tests::{Setup, TestGateway, agent_body};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback server that reads each request head and answers with `head`, then with `body_len`
/// bytes of `fill` (written in 64 KiB pieces, stopping when the peer hangs up), then closes.
/// Returns its address and the number of requests it has seen.
async fn scripted_server(head: String, fill: u8, body_len: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            let head = head.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![fill; 64 * 1024];
                let mut left = body_len;
                while left > 0 {
                    let n = left.min(piece.len());
                    if stream.write_all(&piece[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    (addr, seen)
}

async fn complete_at(t: &TestGateway, endpoint: &str) -> aigw_tests::Answer {
    let mut body = t.completion_body("codestral", None, false);
    body["model_endpoint"] = json!(endpoint);
    t.complete(&body).await
}

#[tokio::test]
async fn an_answer_past_16_mib_is_refused_not_buffered() {
    let t = Setup::default().start().await;
    let size = 17 << 20;
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n");
    let (addr, _) = scripted_server(head, b' ', size).await;
    let answer = complete_at(&t, &format!("http://{addr}/v1")).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json(), json!({"detail": "The model server's answer could not be read"}));
}

#[tokio::test]
async fn a_stream_event_that_never_ends_is_cut_at_1_mib() {
    let t = Setup::default().start().await;
    // `data: xxxx…` with no line end, 4 MiB of it.
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 4194310\r\n\r\ndata: ".to_string();
    let (addr, _) = scripted_server(head, b'x', 4 << 20).await;
    let answer = t
        .post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &agent_body(&format!("http://{addr}/v1")))
        .await;
    assert_eq!(answer.status, 200, "the stream had started");
    let last = answer.ndjson().pop().unwrap();
    assert_eq!(
        last,
        json!({"type": "error", "data": {"message": "The model server's answer could not be read", "retryable": false}})
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let t = Setup::default().start().await;
    let (target, target_seen) = scripted_server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into(), b' ', 0).await;
    let head = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{target}/v1/chat/completions\r\ncontent-length: 0\r\n\r\n"
    );
    let (addr, seen) = scripted_server(head, b' ', 0).await;
    let answer = complete_at(&t, &format!("http://{addr}/v1")).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json(), json!({"detail": "The model server answered 307 Temporary Redirect"}));
    assert_eq!((seen.load(Ordering::SeqCst), target_seen.load(Ordering::SeqCst)), (1, 0));
}

#[tokio::test]
async fn garbage_instead_of_http_is_a_502() {
    let t = Setup::default().start().await;
    let (addr, seen) = scripted_server("SSH-2.0-OpenSSH_9.6\r\n".into(), b' ', 0).await;
    let answer = complete_at(&t, &format!("http://{addr}/v1")).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json(), json!({"detail": "The model server could not be reached (after 3 calls)"}));
    assert_eq!(seen.load(Ordering::SeqCst), 3, "the call and its two retries, no more");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_saying_tls_failed_and_is_not_retried() {
    let t = Setup::default().start().await;
    // Any HTTPS server with a certificate nothing trusts: the mock GitLab over TLS serves.
    let (untrusted, _certificate) = aigw_tests::MockGitLab::start_tls(&[]).await;
    let answer = complete_at(&t, &format!("{}/v1", untrusted.url())).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json(), json!({"detail": "The TLS handshake with the model server failed"}));
    let metrics = t.request(http::Method::GET, "/metrics", &[], bytes::Bytes::new()).await.text();
    let failures = r#"aigw_upstream_failures_total{provider="custom_openai",reason="tls_handshake"}"#;
    assert_eq!(aigw_tests::metric(&metrics, failures), Some(1.0), "one call, not retried: {metrics}");
}
