//! Client connections under pressure: the cap on open connections, slow and hostile clients cut
//! at their timeouts, and requests that keep succeeding meanwhile.

use aigw_tests::{Setup, TestGateway};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain HTTP/1.1 GET on a fresh connection: the status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await.unwrap().unwrap();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// A gauge or counter from the metrics listener.
async fn metric(t: &TestGateway, series: &str) -> Option<f64> {
    let (_, text) = get(t.gateway.metrics_addr().unwrap(), "/metrics").await;
    aigw_tests::metric(&text, series)
}

async fn wait_for_open_connections(t: &TestGateway, open: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(t, "aigw_open_connections").await != Some(open) {
        assert!(tokio::time::Instant::now() < deadline, "never {open} open connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the server ends `stream` (or answers `408`) within `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0_u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(n)) if buffer[..n].starts_with(b"HTTP/1.1 408") => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// At the cap an idle connection gives way to a newcomer; only when every connection has a
/// request in progress is the newcomer closed at once.
#[tokio::test]
async fn at_the_connection_cap_an_idle_connection_gives_way_and_a_busy_one_does_not() {
    let t = Setup::default()
        .env("AIGW_SERVER__MAX_CONNECTIONS", "3")
        .env("AIGW_METRICS__LISTEN", "127.0.0.1:0")
        .start()
        .await;
    let addr = t.gateway.addr();
    // Within the cap: three idle connections are held open, the first one longest.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.unwrap());
        wait_for_open_connections(&t, idle.len() as f64).await;
    }
    assert!(!closed_by_server(&mut idle[0], Duration::from_millis(300)).await, "held open within the cap");

    // Past it: the connection idle longest gives way, and the newcomer is served.
    let (status, _) = get(addr, "/monitoring/healthz").await;
    assert_eq!(status, 200);
    assert!(closed_by_server(&mut idle[0], Duration::from_secs(2)).await, "the oldest idle connection stayed open");
    assert!(!closed_by_server(&mut idle[2], Duration::from_millis(100)).await, "a younger one was closed");
    assert_eq!(metric(&t, "aigw_connections_dropped_total{reason=\"idle_at_cap\"}").await, Some(1.0));
    drop(idle);
    wait_for_open_connections(&t, 0.0).await;

    // Three streams in flight, their callers reading nothing: a newcomer finds no idle
    // connection and is closed on arrival, counted; the probe answers on the metrics listener.
    t.model.set_reply(long_answer());
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(start_stream(&t).await);
    }
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(&mut fourth, Duration::from_secs(2)).await, "the fourth connection was not closed");
    assert!(metric(&t, "aigw_connections_refused_total").await >= Some(1.0));
    let (status, body) = get(t.gateway.metrics_addr().unwrap(), "/monitoring/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(&t, "aigw_connections_dropped_total{reason=\"idle_at_cap\"}").await, Some(1.0));

    // Places come free as connections close.
    drop(busy);
    wait_for_open_connections(&t, 0.0).await;
    t.model.set_reply(aigw_tests::Reply::default());
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// The metrics listener holds a few connections; past them an idle one gives way, so a flood
/// of idle connections there cannot keep the probe from answering.
#[tokio::test]
async fn the_metrics_listener_answers_its_probe_past_a_flood_of_idle_connections() {
    let t = Setup::default().env("AIGW_METRICS__LISTEN", "127.0.0.1:0").start().await;
    let metrics_addr = t.gateway.metrics_addr().unwrap();
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(metrics_addr).await.unwrap());
    }
    for _ in 0..5 {
        let (status, body) = get(metrics_addr, "/monitoring/healthz").await;
        assert_eq!(status, 200, "{body}");
    }
    // The connections past the listener's 32 were the ones to give way: the first is closed.
    assert!(closed_by_server(&mut flood[0], Duration::from_secs(2)).await, "the oldest idle connection stayed open");
}

#[tokio::test]
async fn slowloris_and_slow_posts_are_closed_at_their_timeouts_while_requests_keep_succeeding() {
    let t = Setup::default()
        .env("AIGW_SERVER__HEADER_READ_TIMEOUT_MS", "1000")
        .env("AIGW_SERVER__BODY_READ_TIMEOUT_MS", "1000")
        .start()
        .await;
    let addr = t.gateway.addr();
    let token = t.token(&["complete_code"]);
    let mut slow = Vec::new();
    // 500 heads that never end, and 100 bodies that stop after 10 of 1,000 bytes.
    for _ in 0..500 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"POST /v2/code/completions HTTP/1.1\r\nHost: a\r\nX-Slow: 1\r\n").await.unwrap();
        slow.push(stream);
    }
    for _ in 0..100 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v2/code/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
             X-Gitlab-Authentication-Type: oidc\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"current_"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // Meanwhile the gateway serves as usual.
    for _ in 0..5 {
        let answer = t.complete(&t.completion_body("codestral", None, false)).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let mut closed = 0;
    for stream in &mut slow {
        if closed_by_server(stream, Duration::from_secs(10)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 600, "every slow connection is closed at its timeout");
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn an_endless_chunk_size_line_is_refused() {
    let t = TestGateway::start().await;
    let token = t.token(&["complete_code"]);
    let mut stream = TcpStream::connect(t.gateway.addr()).await.unwrap();
    let head = format!(
        "POST /v2/code/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
         X-Gitlab-Authentication-Type: oidc\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A chunk-size line of hex digits that never ends: written until the server stops reading.
    let digits = vec![b'f'; 16 * 1024];
    let mut written = 0;
    while written < (4 << 20) {
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&digits)).await {
            Ok(Ok(())) => written += digits.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    assert!(written < (4 << 20), "the server kept reading a chunk-size line of {written} bytes");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    let served = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(served.status, 200, "the gateway serves on");
}

/// A streamed completion request written on a raw connection, its answer left to the caller.
/// The connection's receive buffer is small, as a slow client's is full: what the caller has
/// not read cannot pile up in the kernel and hide how the gateway behaves.
async fn start_stream(t: &TestGateway) -> TcpStream {
    start_stream_with(t, Some(4096)).await
}

/// [`start_stream`] with the receive buffer given, or the kernel's own (`None`).
async fn start_stream_with(t: &TestGateway, receive_buffer: Option<u32>) -> TcpStream {
    let body = t.completion_body("codestral", None, true).to_string();
    let headers: String = t
        .gitlab_headers(&t.token(&["complete_code"]))
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut stream = socket.connect(t.gateway.addr()).await.unwrap();
    let request = format!(
        "POST /v2/code/completions HTTP/1.1\r\nHost: a\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the stream started");
    stream
}

async fn wait_for_metric(t: &TestGateway, series: &str, at_least: f64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while metric(t, series).await.is_none_or(|value| value < at_least) {
        assert!(tokio::time::Instant::now() < deadline, "{series} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A model that answers fast and long: 8 MiB of text in 2,048 pieces, more than the kernel's
/// buffers between the gateway and a caller hold.
fn long_answer() -> aigw_tests::Reply {
    aigw_tests::Reply { text: "x".repeat(8 << 20), chunks: 2048, ..aigw_tests::Reply::default() }
}

#[tokio::test]
async fn a_caller_that_stops_reading_is_dropped_and_its_model_call_released() {
    let t = Setup::default()
        .env("AIGW_SERVER__WRITE_IDLE_TIMEOUT_MS", "500")
        .env("AIGW_METRICS__LISTEN", "127.0.0.1:0")
        .start()
        .await;
    t.model.set_reply(long_answer());
    let stream = start_stream(&t).await;
    // The caller reads nothing more. Once the kernel's buffers are full the gateway cannot
    // write; half a second later it drops the connection, and with it the model call.
    wait_for_metric(&t, "aigw_connections_dropped_total{reason=\"write_idle\"}", 1.0, Duration::from_secs(15)).await;
    wait_for_open_connections(&t, 0.0).await;
    wait_for_metric(&t, "aigw_plugin_slots_in_use", 0.0, Duration::from_secs(5)).await;
    assert_eq!(metric(&t, "aigw_plugin_slots_in_use").await, Some(0.0), "the plugin slot is free");
    drop(stream);

    // A caller that keeps reading is not dropped, however long the answer takes.
    t.model.set_reply(aigw_tests::Reply {
        text: "y".repeat(1 << 20),
        chunks: 256,
        chunk_delay: Duration::from_millis(5),
        ..aigw_tests::Reply::default()
    });
    let mut reader = start_stream(&t).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the answer ended");
    assert!(answer.len() > 1 << 20, "the whole answer arrived: {} bytes", answer.len());
    assert_eq!(metric(&t, "aigw_connections_dropped_total{reason=\"write_idle\"}").await, Some(1.0));
}

/// The caller reads, slowly (1 KiB every 50 ms, which would take minutes for the whole answer),
/// with the kernel's own buffers, as a real client has them. The gateway ends the call at its
/// deadline and resets the connection: the caller then reads only what its own kernel had
/// already received. A plain close would let the gateway's send buffer (megabytes on loopback)
/// trickle out after it: without the reset, this caller was still receiving after 15 s.
#[tokio::test]
async fn a_slow_reader_stops_receiving_at_the_total_deadline() {
    let t = Setup::default()
        .env("AIGW_UPSTREAM__TOTAL_TIMEOUT_MS", "1000")
        .env("AIGW_METRICS__LISTEN", "127.0.0.1:0")
        .start()
        .await;
    // The model sends everything at once: only the deadline itself can end the call.
    t.model.set_reply(long_answer());
    let mut stream = start_stream_with(&t, None).await;
    let started = tokio::time::Instant::now();
    let mut received = 0_usize;
    let mut buffer = vec![0_u8; 1024];
    // Bounded: at this pace 15 s would bring 300 KiB, far less than the answer.
    let reading = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(n @ 1..) = stream.read(&mut buffer).await {
            received += n;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reading.is_ok(), "still receiving after 15 s: {received} bytes");
    // By the cut (the 1 s deadline and the watchdog's next look, within 2 s) the caller has
    // read 40 KiB; after it, at most what its kernel's receive buffer holds by default.
    let receive_buffer: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(131_072);
    let ended = started.elapsed();
    assert!(received <= (40 << 10) + receive_buffer, "{received} bytes until {ended:?}");
    assert_eq!(metric(&t, "aigw_connections_dropped_total{reason=\"deadline\"}").await, Some(1.0));
    wait_for_open_connections(&t, 0.0).await;
    wait_for_metric(&t, "aigw_plugin_slots_in_use", 0.0, Duration::from_secs(5)).await;
    assert_eq!(metric(&t, "aigw_plugin_slots_in_use").await, Some(0.0), "the plugin slot is free");

    // Within the deadline, a slow reader of a short answer gets all of it.
    t.model.set_reply(aigw_tests::Reply { text: "z".repeat(8 << 10), chunks: 16, ..aigw_tests::Reply::default() });
    let mut stream = start_stream_with(&t, None).await;
    let mut answer = Vec::new();
    // Until the last chunk of the chunked answer: the connection itself stays open.
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !answer.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the connection ended before the answer");
            answer.extend_from_slice(&buffer[..n]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(read.is_ok(), "the answer did not end");
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches('z').count(), 8 << 10, "the whole answer arrived");
    assert_eq!(metric(&t, "aigw_connections_dropped_total{reason=\"deadline\"}").await, Some(1.0));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_head_timeout_and_reusable_before_it() {
    let t = Setup::default().env("AIGW_SERVER__HEADER_READ_TIMEOUT_MS", "1000").start().await;
    let mut stream = TcpStream::connect(t.gateway.addr()).await.unwrap();
    let probe = b"GET /monitoring/healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut buffer = vec![0_u8; 4096];
    // Within the timeout the connection serves a second request.
    for _ in 0..2 {
        stream.write_all(probe).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await.unwrap().unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buffer[..n]));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Idle past it, the connection is closed by the gateway.
    let started = std::time::Instant::now();
    assert!(closed_by_server(&mut stream, Duration::from_secs(5)).await, "the idle connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(500), "not closed before the timeout");
}
