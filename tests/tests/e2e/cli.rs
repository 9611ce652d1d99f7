//! The `aigw` binary: `plugin check`, start-up errors, and the development mode's token flow.

use aigw_tests::{MockModelServer, component, free_port, workspace};
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

fn aigw() -> tokio::process::Command {
    let binary = workspace().join("target/release/aigw");
    assert!(binary.is_file(), "{} is missing: run `make test`", binary.display());
    let mut command = tokio::process::Command::new(binary);
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).kill_on_drop(true);
    command
}

#[tokio::test]
async fn plugin_check_prints_what_a_component_serves_or_why_not() {
    let ok = aigw().args(["plugin", "check"]).arg(component("plugins/openai-compatible.wasm")).output().await.unwrap();
    assert!(ok.status.success());
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("plugin:    openai-compatible 0.1.0"), "{stdout}");
    assert!(stdout.contains("providers: custom_openai, openai"), "{stdout}");

    let text = workspace().join("Cargo.toml");
    let bad = aigw().args(["plugin", "check"]).arg(&text).output().await.unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("not a WebAssembly binary"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "a clean message, not a backtrace: {stderr}");
}

#[tokio::test]
async fn bad_settings_stop_start_up_naming_the_setting() {
    let missing = aigw().arg("serve").output().await.unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("AIGW_GITLAB_URL"));

    let bad_port = aigw()
        .arg("serve")
        .env("AIGW_GITLAB_URL", "http://127.0.0.1:9")
        .env("AIGW_FASTAPI__API_PORT", "fifty")
        .output()
        .await
        .unwrap();
    assert_eq!(bad_port.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad_port.stderr);
    assert!(stderr.contains("AIGW_FASTAPI__API_PORT") && stderr.contains("TCP port"), "{stderr}");

    let no_plugins = aigw()
        .arg("serve")
        .env("AIGW_GITLAB_URL", "http://127.0.0.1:9")
        .env("AIGW_FASTAPI__API_PORT", "0")
        .env("AIGW_PLUGINS__DIR", "/nonexistent/aigw-plugins")
        .output()
        .await
        .unwrap();
    assert_eq!(no_plugins.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&no_plugins.stderr);
    assert!(stderr.contains("/nonexistent/aigw-plugins is not a directory (AIGW_PLUGINS__DIR"), "{stderr}");
}

/// A model key that must reach the model server and nothing else (no log line at any level).
const CANARY_KEY: &str = "sk-canary-7f3a9c2e51d8";

/// The status of a completion request, or why there was none.
async fn complete(port: u16, token: &str, endpoint: &str) -> Result<u16, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let body = json!({
        "current_file": {"file_name": "add.py", "content_above_cursor": "def add(a, b):\n    ", "content_below_cursor": ""},
        "model_provider": "litellm", "model_name": "codestral", "model_endpoint": endpoint,
        "model_api_key": CANARY_KEY,
    });
    let request = http::Request::post(format!("http://127.0.0.1:{port}/v2/code/completions"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-gitlab-authentication-type", "oidc")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    client.request(request).await.map(|response| response.status().as_u16()).map_err(|e| format!("{e:?}"))
}

/// The development token a starting `aigw serve --dev` prints on its stdout.
async fn printed_token(server: &mut tokio::process::Child) -> String {
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(token) = line.strip_prefix("export AIGW_TOKEN=") {
                return token.to_string();
            }
        }
        panic!("the server exited without printing a token");
    })
    .await
    .expect("a token within 30 s")
}

/// `aigw serve --dev` on a free port with its key and log in `state`, plus `(name, value)`
/// settings; returns the process, its port and the token it printed.
async fn dev_server(state: &std::path::Path, settings: &[(&str, &str)]) -> (tokio::process::Child, u16, String) {
    let port = free_port();
    let mut command = aigw();
    command
        .args(["serve", "--dev"])
        .env("AIGW_FASTAPI__API_PORT", port.to_string())
        .env("AIGW_PLUGINS__DIR", workspace().join("target/plugins"))
        .env("AIGW_DEV__KEY_FILE", state.join("dev-key.pem"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(state.join("aigw.log")).unwrap());
    for (name, value) in settings {
        command.env(name, value);
    }
    let mut server = command.spawn().unwrap();
    let token = printed_token(&mut server).await;
    (server, port, token)
}

#[tokio::test]
async fn dev_mode_prints_a_token_that_works_and_token_mint_agrees_and_keys_stay_out_of_logs() {
    let model = MockModelServer::start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let (key_file, log_file) = (state.path().join("dev-key.pem"), state.path().join("aigw.log"));
    let (mut server, port, token) = dev_server(state.path(), &[("AIGW_LOGGING__LEVEL", "trace")]).await;
    assert_eq!(complete(port, &token, &model.base_url()).await, Ok(200));

    let minted = aigw().args(["token", "mint"]).env("AIGW_DEV__KEY_FILE", &key_file).output().await.unwrap();
    assert!(minted.status.success());
    let minted = String::from_utf8(minted.stdout).unwrap();
    assert_eq!(complete(port, minted.trim(), &model.base_url()).await, Ok(200));
    assert_eq!(complete(port, "not-a-token", &model.base_url()).await, Ok(401));
    assert_eq!(model.requests().len(), 2);
    for request in model.requests() {
        assert_eq!(request.headers.get("authorization").unwrap(), &format!("Bearer {CANARY_KEY}"));
    }

    #[cfg(unix)]
    {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the private key is readable by its owner only");
    }
    server.kill().await.unwrap();
    let _ = server.wait().await;
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("/v2/code/completions"), "request lines are logged");
    assert!(!log.contains('\u{1b}'), "a log written to a file carries no terminal colour codes");
    assert!(!log.contains(CANARY_KEY), "the model API key appears in the trace-level log");
    assert!(!log.contains(&token), "the caller's token appears in the log");
}

#[tokio::test]
async fn a_perf_map_of_the_plugins_is_written_only_when_asked_for() {
    let state = tempfile::tempdir().unwrap();
    for (setting, wanted) in [("false", false), ("true", true)] {
        let (mut server, _port, _token) = dev_server(state.path(), &[("AIGW_PLUGINS__PERF_MAP", setting)]).await;
        // The plugins are compiled before the server announces itself, and each compiled
        // function is written to the map as it is published.
        let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", server.id().unwrap()));
        let written = std::fs::read_to_string(&map).ok();
        server.kill().await.unwrap();
        let _ = server.wait().await;
        let _ = std::fs::remove_file(&map);
        let names_plugin_code = written.as_deref().is_some_and(|m| m.lines().any(|l| l.contains(" wasm[")));
        assert_eq!(names_plugin_code, wanted, "AIGW_PLUGINS__PERF_MAP={setting}: {written:?}");
    }
}

#[tokio::test]
async fn the_benchmark_runs_in_smoke_mode() {
    // A short run proves the benchmark still works; its timings are never asserted here.
    let binary = workspace().join("target/release/aigw-bench");
    assert!(binary.is_file(), "{} is missing: run `make test`", binary.display());
    let out = tempfile::tempdir().unwrap();
    for (mode, file, extra) in
        [("plugin", "plugin.json", &[][..]), ("gateway", "gateway.json", &["--open-streams", "50"][..])]
    {
        let output = out.path().join(file);
        let run = tokio::process::Command::new(&binary)
            .current_dir(workspace())
            .args([mode, "--iterations", "100"])
            .args(extra)
            .arg("--output")
            .arg(&output)
            .output()
            .await
            .unwrap();
        assert!(run.status.success(), "{mode}: {}", String::from_utf8_lossy(&run.stderr));
        let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
        let p50 = if mode == "plugin" { &results["wasm_us"]["p50"] } else { &results["aigw_us"]["p50"] };
        assert!(p50.as_f64().is_some_and(|v| v > 0.0), "{mode}: {results}");
        if mode == "plugin" {
            let event = &results["stream_event_us"];
            for side in ["wasm", "native"] {
                assert!(event[side]["p50"].as_f64().is_some_and(|v| v > 0.0), "stream event, {side}: {event}");
            }
        }
        if mode == "gateway" {
            assert!(results["legs"]["bare_proxy"]["c64"]["requests_per_second"].as_f64().is_some_and(|v| v > 0.0));
            assert_eq!(results["budget"].as_array().map(Vec::len), Some(8), "every budget line is reported");
            // The breakdown comes from aigw's own /metrics: its plugin calls and its share were seen.
            let inside = &results["c1_breakdown_us"]["aigw_histograms"];
            for part in ["build_request", "parse_response", "gateway_own", "model_server"] {
                assert!(inside[part].as_f64().is_some_and(|v| v > 0.0), "{part}: {inside}");
            }
            assert_eq!(
                results["memory"]["streams_closed_after_hang_up"], true,
                "50 hung-up streams all closed upstream"
            );
        }
    }
}

#[tokio::test]
async fn the_profiling_load_drives_a_bounded_keep_alive_load_and_refuses_unknown_headers() {
    let binary = workspace().join("target/release/aigw-bench");
    assert!(binary.is_file(), "{} is missing: run `make test`", binary.display());
    let model = MockModelServer::start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let body = state.path().join("body.json");
    std::fs::write(&body, r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
    let drive = |header: &str| {
        tokio::process::Command::new(&binary)
            .args(["drive", "--url", &format!("{}/chat/completions", model.base_url()), "--header", header])
            .arg("--body-file")
            .arg(&body)
            .args(["--requests", "40", "--concurrency", "2"])
            .output()
    };
    let run = drive("content-type: application/json").await.unwrap();
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && printed.starts_with("40 requests in "),
        "{printed} {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(model.requests().len(), 40, "every request reached the model server");
    let run = drive("x-anything: 1").await.unwrap();
    assert!(!run.status.success(), "an unknown header is refused");
    assert!(String::from_utf8_lossy(&run.stderr).contains("is not one of"), "{}", String::from_utf8_lossy(&run.stderr));
}

#[tokio::test]
async fn json_logs_carry_one_structured_line_per_request() {
    let model = MockModelServer::start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let log_file = state.path().join("aigw.log");
    let (mut server, port, token) = dev_server(state.path(), &[("AIGW_LOGGING__FORMAT_JSON", "true")]).await;
    let status = complete(port, &token, &model.base_url()).await;
    server.kill().await.unwrap();
    let _ = server.wait().await;

    let log = std::fs::read_to_string(&log_file).unwrap();
    assert_eq!(status, Ok(200), "server log:\n{log}");
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let request = entries
        .iter()
        .find(|e| e["message"] == "request" && e["path"] == "/v2/code/completions")
        .unwrap_or_else(|| panic!("no request line in {log}"));
    assert_eq!(request["status"], 200);
    assert_eq!(request["level"], "INFO");
    assert!(request["request_id"].as_str().is_some_and(|id| id.len() == 32), "an id was assigned: {request}");
    assert!(request["overhead_ms"].as_f64().is_some() && request["upstream_ms"].as_f64().is_some());
    assert!(request["duration_ms"].as_f64().unwrap() >= request["head_ms"].as_f64().unwrap());
    assert_eq!(request["provider"], "custom_openai");
    assert_eq!(request["model"], "codestral");
    assert_eq!(request["plugin"], "openai-compatible@0.1.0");
    assert_eq!((request["input_tokens"].as_u64(), request["output_tokens"].as_u64()), (Some(12), Some(5)));
    assert_eq!(request["outcome"], "completed");
    assert!(!log.contains(CANARY_KEY));
}

#[tokio::test]
async fn a_failed_model_call_logs_the_servers_reason_and_counts_its_time_as_upstream() {
    let model = MockModelServer::start().await.unwrap();
    let message = format!("Incorrect API key provided: {CANARY_KEY}.\nSee\u{1b}[31m the docs. {}", "x".repeat(2000));
    model.set_reply(aigw_mock::Reply {
        status: 500,
        head_delay: Duration::from_millis(400),
        error_message: message,
        ..aigw_mock::Reply::default()
    });
    let state = tempfile::tempdir().unwrap();
    let (mut server, port, token) = dev_server(state.path(), &[("AIGW_LOGGING__FORMAT_JSON", "true")]).await;
    let status = complete(port, &token, &model.base_url()).await;
    server.kill().await.unwrap();
    let _ = server.wait().await;

    let log = std::fs::read_to_string(state.path().join("aigw.log")).unwrap();
    assert_eq!(status, Ok(502), "server log:\n{log}");
    let request = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|e| e["message"] == "request" && e["path"] == "/v2/code/completions")
        .unwrap_or_else(|| panic!("no request line in {log}"));
    let reason = request["upstream_error"].as_str().unwrap_or_else(|| panic!("no upstream_error: {request}"));
    assert!(reason.starts_with("model server answered 500"), "{reason}");
    assert!(reason.contains("Incorrect API key provided: <redacted>."), "{reason}");
    assert!(reason.len() < 400 && reason.ends_with('…'), "bounded: {} bytes", reason.len());
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    // The 400 ms the model server took are its own, not the gateway's.
    assert!(request["upstream_ms"].as_f64().unwrap() >= 400.0, "{request}");
    let (head, overhead) = (request["head_ms"].as_f64().unwrap(), request["overhead_ms"].as_f64().unwrap());
    assert!(overhead <= head - 400.0 + 0.01, "{request}");
    assert!(!log.contains(CANARY_KEY));
}

#[tokio::test]
async fn an_agent_stream_ended_by_an_error_event_is_logged_as_a_stream_error() {
    let model = MockModelServer::start().await.unwrap();
    model.set_reply(aigw_mock::Reply {
        text: "Thought: hmm\nFinal Answer: this takes a while".into(),
        chunks: 4,
        chunk_delay: Duration::from_millis(800),
        first_chunk_at_once: true,
        ..aigw_mock::Reply::default()
    });
    let state = tempfile::tempdir().unwrap();
    let settings = [("AIGW_LOGGING__FORMAT_JSON", "true"), ("AIGW_UPSTREAM__IDLE_TIMEOUT_MS", "300")];
    let (mut server, port, token) = dev_server(state.path(), &settings).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = http::Request::post(format!("http://127.0.0.1:{port}/v2/chat/agent"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-gitlab-authentication-type", "oidc")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(aigw_tests::agent_body(&model.base_url()).to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    let last = String::from_utf8_lossy(&body).lines().last().unwrap_or_default().to_string();
    assert!(last.contains("\"type\":\"error\""), "the stream ends with its error event: {last}");
    server.kill().await.unwrap();
    let _ = server.wait().await;

    let log = std::fs::read_to_string(state.path().join("aigw.log")).unwrap();
    let request = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|e| e["message"] == "request" && e["path"] == "/v2/chat/agent")
        .unwrap_or_else(|| panic!("no request line in {log}"));
    assert_eq!(request["outcome"], "stream_error", "{request}");
    assert!(request["upstream_error"].as_str().is_some_and(|e| e.contains("timed out")), "{request}");
}

#[tokio::test]
async fn the_dev_server_keeps_serving_when_nobody_reads_its_stdout() {
    // A script that took the token and closed the pipe (or `| head -3`): printing the banner fails
    // with a broken pipe, and the gateway must serve regardless.
    let model = MockModelServer::start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let key_file = state.path().join("dev-key.pem");
    let port = free_port();
    let mut server = aigw()
        .args(["serve", "--dev"])
        .env("AIGW_FASTAPI__API_PORT", port.to_string())
        .env("AIGW_PLUGINS__DIR", workspace().join("target/plugins"))
        .env("AIGW_DEV__KEY_FILE", &key_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(server.stdout.take());
    let listening = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), listening).await.expect("the gateway listens");
    let minted = aigw().args(["token", "mint"]).env("AIGW_DEV__KEY_FILE", &key_file).output().await.unwrap();
    let token = String::from_utf8(minted.stdout).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(complete(port, token.trim(), &model.base_url()).await, Ok(200));
    assert!(server.try_wait().unwrap().is_none(), "still running");
    server.kill().await.unwrap();
}

/// `aigw serve --dev` under `prlimit`'s open-file limit of 1,024, as a small container gives it;
/// returns the process, its API and metrics ports, the token and the log file.
async fn dev_server_with_1024_files(
    state: &std::path::Path,
    settings: &[(&str, &str)],
) -> (tokio::process::Child, u16, u16, String) {
    let (port, metrics_port) = (free_port(), free_port());
    let mut command = tokio::process::Command::new("prlimit");
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .kill_on_drop(true)
        .arg("--nofile=1024:1024")
        .arg(workspace().join("target/release/aigw"))
        .args(["serve", "--dev"])
        .env("AIGW_FASTAPI__API_PORT", port.to_string())
        .env("AIGW_METRICS__LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("AIGW_PLUGINS__DIR", workspace().join("target/plugins"))
        .env("AIGW_DEV__KEY_FILE", state.join("dev-key.pem"))
        .env("AIGW_LOGGING__FORMAT_JSON", "true")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(state.join("aigw.log")).unwrap());
    for (name, value) in settings {
        command.env(name, value);
    }
    let mut server = command.spawn().expect("prlimit (util-linux) runs");
    let token = printed_token(&mut server).await;
    (server, port, metrics_port, token)
}

async fn http_get(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await.ok()?.ok()?;
    answer.get(9..12)?.parse().ok()
}

/// One value from the metrics listener's text.
async fn scraped(metrics_port: u16, series: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port)).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text)).await.ok()?.ok()?;
    aigw_tests::metric(&text, series)
}

/// Started with a systemd service's default of 1,024 descriptors, the gateway's connection cap
/// shrinks to fit them, and a flood of idle connections that send nothing (more than the
/// process could open) gives way to every caller that sends a request.
#[tokio::test]
async fn with_1024_file_descriptors_a_flood_of_idle_connections_gives_way_to_requests() {
    let state = tempfile::tempdir().unwrap();
    // A cap the operator set above what fits is lowered with a warning...
    let (asked, _, metrics_port, _) =
        dev_server_with_1024_files(state.path(), &[("AIGW_SERVER__MAX_CONNECTIONS", "1000")]).await;
    // Two descriptors per connection and 256 kept free: (1,024 − 256) / 2.
    assert_eq!(scraped(metrics_port, "aigw_connection_cap").await, Some(384.0));
    drop(asked);
    let log = std::fs::read_to_string(state.path().join("aigw.log")).unwrap();
    assert!(log.contains("lowered to fit the open-file limit") && log.contains("WARN"), "{log}");
    // ...and the default is fitted without one.
    let (_server, port, metrics_port, token) = dev_server_with_1024_files(state.path(), &[]).await;
    let log = std::fs::read_to_string(state.path().join("aigw.log")).unwrap();
    assert!(log.contains("the connection cap fits the open-file limit") && !log.contains("WARN"), "{log}");
    assert_eq!(scraped(metrics_port, "aigw_connection_cap").await, Some(384.0));
    let model = MockModelServer::start().await.unwrap();
    assert_eq!(complete(port, &token, &model.base_url()).await, Ok(200), "served before the flood");

    // 1,100 idle connections, then 50 more between every two callers.
    let mut flood = Vec::new();
    let mut connect_flood = async |count: usize| {
        for _ in 0..count {
            if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                flood.push(stream);
            }
        }
    };
    connect_flood(1100).await;
    let mut failures = Vec::new();
    for _ in 0..10 {
        connect_flood(50).await;
        let probe = http_get(port, "/monitoring/healthz").await;
        let completion = complete(port, &token, &model.base_url()).await;
        if probe != Some(200) || completion != Ok(200) {
            failures.push(format!("probe {probe:?}, completion {completion:?}"));
        }
    }
    assert!(failures.is_empty(), "every caller during the flood is served: {failures:#?}");
    assert_eq!(http_get(metrics_port, "/monitoring/healthz").await, Some(200), "liveness answers on the metrics port");
    let open = scraped(metrics_port, "aigw_open_connections").await.unwrap();
    assert!(open <= 384.0 + 32.0, "{open} open connections, past the cap and its moment of giving way");
    let gave_way = scraped(metrics_port, "aigw_connections_dropped_total{reason=\"idle_at_cap\"}").await.unwrap_or(0.0);
    assert!(gave_way >= 1000.0, "idle connections gave way to newcomers: {gave_way}");
    drop(flood);
}

#[tokio::test]
async fn the_log_takes_realm_and_namespace_from_the_token_and_drops_a_malformed_host() {
    use aigw_tests::{MockGitLab, TestKey, gitlab_headers, http_client, http_request, instance_claims, ready_status};
    let key = TestKey::generate("gitlab-key-1");
    let gitlab = MockGitLab::start(&[&key]).await;
    let model = MockModelServer::start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let log_file = state.path().join("aigw.log");
    let port = free_port();
    let mut server = aigw()
        .arg("serve")
        .env("AIGW_GITLAB_URL", gitlab.url())
        .env("AIGW_FASTAPI__API_PORT", port.to_string())
        .env("AIGW_PLUGINS__DIR", workspace().join("target/plugins"))
        .env("AIGW_LOGGING__FORMAT_JSON", "true")
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    let (client, base) = (http_client(), format!("http://127.0.0.1:{port}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ready_status(&client, &base).await != Some(http::StatusCode::OK) {
        assert!(std::time::Instant::now() < deadline, "not ready: {}", std::fs::read_to_string(&log_file).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut claims = instance_claims(&gitlab.url(), &["complete_code"]);
    claims["gitlab_root_namespace_id"] = json!(9970);
    let token = key.sign(&claims);
    let body = json!({
        "current_file": {"file_name": "add.py", "content_above_cursor": "def add(a, b):\n    ", "content_below_cursor": ""},
        "model_provider": "litellm", "model_name": "codestral", "model_endpoint": model.base_url(), "model_api_key": "k",
    });
    let post = |headers: Vec<(String, String)>| {
        let (client, url, body) = (&client, format!("{base}/v2/code/completions"), body.to_string());
        async move { http_request(client, http::Method::POST, &url, &headers, body.into()).await }
    };
    // Headers that say otherwise than the token: another root namespace, and (a second request)
    // another realm, which the token's claim overrules with a 401.
    let mut headers = gitlab_headers(&token);
    headers.push(("x-gitlab-root-namespace-id".into(), "1".into()));
    assert_eq!(post(headers.clone()).await.status, 200);
    // A malformed Host (a path in it) is dropped before anything reads it; a well-formed one is kept.
    let mut forged = headers.clone();
    forged.push(("host".into(), "aigw.internal/monitoring/healthz?".into()));
    assert_eq!(post(forged).await.status, 200);
    headers.retain(|(name, _)| name != "x-gitlab-realm");
    headers.push(("x-gitlab-realm".into(), "saas".into()));
    headers.push(("host".into(), "aigw.internal:5052".into()));
    assert_eq!(post(headers).await.status, 401);
    server.kill().await.unwrap();
    let _ = server.wait().await;

    let log = std::fs::read_to_string(&log_file).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let requests: Vec<&serde_json::Value> =
        lines.iter().filter(|e| e["message"] == "request" && e["path"] == "/v2/code/completions").collect();
    assert_eq!(requests.len(), 3, "{log}");
    assert_eq!(requests[0]["status"], 200);
    assert_eq!(
        (&requests[0]["gitlab_realm"], &requests[0]["root_namespace_id"]),
        (&json!("self-managed"), &json!("9970"))
    );
    assert_eq!(requests[0]["host"], format!("127.0.0.1:{port}"));
    assert_eq!(requests[1]["status"], 200);
    assert!(requests[1].get("host").is_none_or(serde_json::Value::is_null), "dropped: {}", requests[1]);
    assert_eq!(requests[2]["status"], 401);
    assert_eq!(requests[2]["host"], "aigw.internal:5052");
    assert!(
        requests[2].get("gitlab_realm").is_none_or(serde_json::Value::is_null),
        "not authenticated: {}",
        requests[2]
    );
}
