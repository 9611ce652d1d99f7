//! `make image-test`: aigw's container image run the way an operator runs it (podman, host
//! network, read-only root filesystem, no capabilities, its non-root user, the plugins on a
//! mounted volume) against the mock GitLab and the mock model server on loopback. It checks a
//! real completion, readiness, the metrics port, a plugin swapped on the volume, a stop on
//! SIGTERM with a stream in flight, JSON log lines, and a refusal to start on a bad setting;
//! it writes what it measured to `target/image/report.json`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test: failing loudly is the point")]

use aigw_tests::{
    MockGitLab, MockModelServer, Reply, TestKey, free_port, gitlab_headers, http_client, http_request, instance_claims,
    with_new_digest, workspace,
};
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// How long the container may take to stop after SIGTERM: its grace period and a margin.
const GRACE: Duration = Duration::from_secs(10);

/// podman with what these machines need: runc (crun fails on hybrid cgroups) and a
/// `containers.conf` that sets no default ulimits (the sandbox refuses to raise them).
fn podman(conf: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("podman");
    command.env("CONTAINERS_CONF", conf).args(["--runtime", "runc"]).kill_on_drop(true);
    command
}

async fn run(conf: &Path, args: &[&str], limit: Duration) -> Output {
    let output = podman(conf).args(args).output();
    tokio::time::timeout(limit, output)
        .await
        .unwrap_or_else(|_| panic!("podman {args:?} ended within {limit:?}"))
        .unwrap()
}

/// The container, removed however the test ends.
struct Container {
    name: String,
    conf: PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "runc", "rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

/// The sum of `aigw_plugin_reloads_total{outcome="loaded"}`.
fn loaded(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("aigw_plugin_reloads_total{") && line.contains("outcome=\"loaded\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn completion_body(model: &MockModelServer, stream: bool) -> Value {
    json!({
        "current_file": {"file_name": "calc.py", "language_identifier": "python",
                         "content_above_cursor": "def add(a, b):\n    ", "content_below_cursor": "\n"},
        "model_provider": "litellm", "model_name": "codestral", "model_endpoint": model.base_url(),
        "model_api_key": "sk-image", "model_identifier": "custom_openai/codestral-22b", "stream": stream,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let image = std::env::args().nth(1).unwrap_or_else(|| "localhost/aigw:latest".to_string());
    let out_dir = workspace().join("target/image");
    std::fs::create_dir_all(&out_dir).unwrap();
    let conf = out_dir.join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    let mut report = serde_json::Map::new();

    let inspect = run(&conf, &["image", "inspect", "--format", "{{.Size}}", &image], Duration::from_secs(30)).await;
    assert!(inspect.status.success(), "the image {image} exists: {}", String::from_utf8_lossy(&inspect.stderr));
    let size: u64 = String::from_utf8_lossy(&inspect.stdout).trim().parse().unwrap();
    println!("image {image}: {:.1} MB", size as f64 / 1e6);
    report.insert("image_bytes".into(), json!(size));

    // A bad setting: a clear message naming it, and a non-zero exit.
    let refused = run(
        &conf,
        &[
            "run",
            "--rm",
            "--network",
            "host",
            "-e",
            "AIGW_GITLAB_URL=http://127.0.0.1:9",
            "-e",
            "AIGW_FASTAPI__API_PORT=http",
            &image,
        ],
        Duration::from_secs(60),
    )
    .await;
    let said = format!("{}{}", String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
    assert!(!refused.status.success(), "a bad setting stops the container: {said}");
    assert!(said.contains("AIGW_FASTAPI__API_PORT"), "the message names the setting: {said}");
    println!("bad setting: exit {:?}, message names AIGW_FASTAPI__API_PORT", refused.status.code());

    let key = TestKey::generate("image-key-1");
    let gitlab = MockGitLab::start(&[&key]).await;
    let model = MockModelServer::start().await.unwrap();
    // The plugins volume: readable by the image's user.
    let plugins = tempfile::tempdir_in(&out_dir).unwrap();
    let plugin = plugins.path().join("openai-compatible.wasm");
    let component = std::fs::read(workspace().join("target/plugins/openai-compatible.wasm")).unwrap();
    std::fs::write(&plugin, &component).unwrap();
    for (path, mode) in [(plugins.path(), 0o755), (plugin.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let (port, metrics_port) = (free_port(), free_port());
    let name = format!("aigw-image-test-{}", std::process::id());
    let container = Container { name: name.clone(), conf: conf.clone() };
    let volume = format!("{}:/opt/aigw/plugins:ro", plugins.path().display());
    let env = [
        format!("AIGW_GITLAB_URL={}", gitlab.url()),
        "AIGW_FASTAPI__API_HOST=127.0.0.1".to_string(),
        format!("AIGW_FASTAPI__API_PORT={port}"),
        "AIGW_FASTAPI__METRICS_HOST=127.0.0.1".to_string(),
        format!("AIGW_FASTAPI__METRICS_PORT={metrics_port}"),
        "AIGW_PLUGINS__RELOAD_DEBOUNCE_MS=100".to_string(),
        format!("AIGW_SERVER__SHUTDOWN_GRACE_MS={}", GRACE.as_millis() - 2_000),
        // GitLab's gateway reads this; aigw does not, and an environment written for GitLab's
        // image must still start it.
        "AIGW_GOOGLE_CLOUD_PROFILER__ENABLED=false".to_string(),
    ];
    let mut args: Vec<String> = [
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--volume",
        &volume,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for variable in &env {
        args.extend(["--env".to_string(), variable.clone()]);
    }
    args.push(image.clone());
    let started = Instant::now();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let launched = run(&conf, &args, Duration::from_secs(60)).await;
    assert!(launched.status.success(), "the container starts: {}", String::from_utf8_lossy(&launched.stderr));

    let client = http_client();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while aigw_tests::ready_status(&client, &base).await != Some(http::StatusCode::OK) {
        assert!(Instant::now() < deadline, "ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_ms = started.elapsed().as_millis();
    println!("ready {ready_ms} ms after `podman run`");
    report.insert("run_to_ready_ms".into(), json!(ready_ms));

    let token = key.sign(&instance_claims(&gitlab.url(), &["complete_code"]));
    let headers = gitlab_headers(&token);
    let completions = format!("{base}/v2/code/completions");
    let complete = |stream: bool| {
        let body = Bytes::from(completion_body(&model, stream).to_string());
        http_request(&client, Method::POST, &completions, &headers, body)
    };
    model.set_reply(Reply { text: "return a + b".into(), ..Reply::default() });
    let answer = complete(false).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["text"], "return a + b");
    assert_eq!(model.requests().last().unwrap().headers.get("authorization").unwrap(), "Bearer sk-image");
    println!("completion: 200, the model's answer");

    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let metrics = http_request(&client, Method::GET, &metrics_url, &[], Bytes::new()).await;
    assert_eq!(metrics.status, 200);
    let loads_before = loaded(&metrics.text());
    println!("metrics on GitLab's metrics port: 200");

    // A new build of the plugin written to the volume is picked up without a restart.
    let staging = plugins.path().join("openai-compatible.staging");
    std::fs::write(&staging, with_new_digest(&component, "aigw-image-test")).unwrap();
    std::fs::set_permissions(&staging, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&staging, &plugin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while loaded(&http_request(&client, Method::GET, &metrics_url, &[], Bytes::new()).await.text()) <= loads_before {
        assert!(Instant::now() < deadline, "the swapped plugin was loaded within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(complete(false).await.status, 200, "the new plugin serves");
    println!("plugin swapped on the volume: loaded without a restart, serving");

    // The doctor, run where operators run it: inside the running container, with its environment.
    let endpoint = model.base_url();
    let doctor = run(
        &conf,
        &[
            "exec",
            &name,
            "/usr/local/bin/aigw",
            "doctor",
            "--model-endpoint",
            &endpoint,
            "--model-identifier",
            "custom_openai/codestral-22b",
            "--model-name",
            "codestral",
        ],
        Duration::from_secs(60),
    )
    .await;
    let printed = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "the doctor passes inside the container:\n{printed}");
    assert!(printed.contains("  ok    test completion answered in"), "{printed}");
    assert!(printed.contains("/opt/aigw/plugins  (environment)"), "{printed}");
    std::fs::write(out_dir.join("doctor.txt"), printed.as_bytes()).unwrap();
    println!("aigw doctor inside the container: every check passed (target/image/doctor.txt)");

    // SIGTERM with a stream in flight: the stream finishes, the container exits 0 in its grace.
    model.set_reply(Reply {
        text: "return a + b".into(),
        chunks: 12,
        chunk_delay: Duration::from_millis(150),
        ..Reply::default()
    });
    let stream = complete(true);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let stopping = Instant::now();
        let killed = run(&conf, &["kill", "--signal", "TERM", &name], Duration::from_secs(10)).await;
        assert!(killed.status.success(), "{}", String::from_utf8_lossy(&killed.stderr));
        stopping
    };
    let (streamed, stopping) = tokio::join!(stream, stop);
    assert_eq!(streamed.status, 200);
    assert!(streamed.body_error.is_none(), "the stream was not cut: {:?}", streamed.body_error);
    assert_eq!(streamed.text(), "return a + b", "the whole answer, streamed as raw text");
    let waited = run(&conf, &["wait", &name], GRACE + Duration::from_secs(5)).await;
    let exit = String::from_utf8_lossy(&waited.stdout).trim().to_string();
    let stop_ms = stopping.elapsed().as_millis();
    assert_eq!(exit, "0", "exit status after SIGTERM");
    assert!(stopping.elapsed() <= GRACE, "stopped within its grace period: {stop_ms} ms");
    println!("SIGTERM with a stream in flight: the stream finished, exit 0 after {stop_ms} ms");
    report.insert("sigterm_to_exit_ms".into(), json!(stop_ms));

    let logs = run(&conf, &["logs", &name], Duration::from_secs(30)).await;
    let text = format!("{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    assert!(!text.contains('\u{1b}'), "no colour codes in a container's logs");
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "aigw logged");
    for line in &lines {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "a JSON log line: {line}");
    }
    println!("logs: {} JSON lines, no colour codes", lines.len());
    report.insert("log_lines".into(), json!(lines.len()));
    drop(container);

    let path = out_dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&Value::Object(report)).unwrap()).unwrap();
    println!("image test passed; report in {}", path.display());
}
