//! `make restart-test`: a rolling restart as Kubernetes does one. Two `aigw serve` processes sit
//! behind nginx on loopback (its passive health checks, pooled upstream connections and
//! connect-error retry, as a Service or an ingress in front of replicas); callers send a bounded
//! load of completions and streams through nginx while each replica in turn gets SIGTERM, must
//! turn its readiness 503 at once, exit 0 once drained and is started again. Every request must
//! succeed and every stream end whole; the counts go to `target/restart/report.json`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test: failing loudly is the point")]

use aigw_tests::{
    MockGitLab, MockModelServer, Reply, TestKey, free_port, gitlab_headers, instance_claims, ready_status, workspace,
};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a draining replica keeps accepting: longer than nginx takes to stop choosing it is
/// not needed here (nginx retries a refused connect on the other replica), but a real balancer
/// needs it, so the test runs with it.
const DRAIN_DELAY: Duration = Duration::from_millis(2_000);
const GRACE: Duration = Duration::from_millis(10_000);
/// Callers sending at once, and the run's bounds. Two thirds of the callers stream, each
/// stream landing on either replica: that no stream at all is in flight across either SIGTERM
/// has a chance of about 2^-16.
const CALLERS: usize = 12;
const MAX_REQUESTS: u64 = 200_000;
const MAX_RUN: Duration = Duration::from_secs(120);
/// Each stream: this many chunks this far apart, so that streams are in flight at every signal.
const STREAM_CHUNKS: usize = 6;
const CHUNK_DELAY: Duration = Duration::from_millis(150);
const ANSWER: &str = "return a + b";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One `aigw serve` process and how to start it again on the same port.
struct Replica {
    name: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Replica {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = tokio::process::Command::new(workspace().join("target/release/aigw"));
        command.arg("serve").envs(self.env.iter().cloned()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(command.kill_on_drop(true).spawn().expect("target/release/aigw starts"));
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self, client: &HttpClient) -> Duration {
        let started = Instant::now();
        while ready_status(client, &self.base()).await != Some(StatusCode::OK) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} ready within 30 s: {}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, readiness 503 at once, exit 0 within the drain delay and the grace period; then
    /// started again and ready. The balancer takes it out of rotation once its readiness says
    /// 503 and back once it says 200, as Kubernetes' endpoints and ingress controllers do.
    /// Returns what it measured.
    async fn restart(&mut self, client: &HttpClient, balancer: &mut Balancer, index: usize) -> Value {
        let pid = self.child.as_ref().unwrap().id().unwrap();
        let signalled = Instant::now();
        let signalled_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let kill = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(kill.success(), "kill -TERM {pid}");
        let mut not_ready = None;
        while not_ready.is_none() && signalled.elapsed() < DRAIN_DELAY {
            if ready_status(client, &self.base()).await == Some(StatusCode::SERVICE_UNAVAILABLE) {
                not_ready = Some(signalled.elapsed());
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let not_ready = not_ready.unwrap_or_else(|| panic!("{}: readiness 503 within the drain delay", self.name));
        balancer.route(index, false);
        let mut child = self.child.take().unwrap();
        let status = tokio::time::timeout(DRAIN_DELAY + GRACE + Duration::from_secs(5), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} exited within drain delay + grace: {}", self.name, self.log_tail()))
            .unwrap();
        let exited = signalled.elapsed();
        assert_eq!(status.code(), Some(0), "{} exit status after SIGTERM: {}", self.name, self.log_tail());
        assert!(exited >= DRAIN_DELAY, "{} kept accepting for the drain delay ({exited:?})", self.name);
        self.spawn();
        let ready = self.wait_ready(client).await;
        balancer.route(index, true);
        println!(
            "{}: readiness 503 after {} ms, exit 0 after {} ms, started again and ready in {} ms",
            self.name,
            not_ready.as_millis(),
            exited.as_millis(),
            ready.as_millis()
        );
        json!({"not_ready_ms": not_ready.as_millis(), "exit_ms": exited.as_millis(), "ready_again_ms": ready.as_millis(),
               "signalled_at": signalled_at})
    }
}

/// nginx in front of the replicas, configured as an operator would: pooled HTTP/1.1 upstream
/// connections, no buffering (streams pass through as they come), and a replica that refused a
/// connection set aside for a moment with the request tried on the other. Taking a replica out of
/// rotation rewrites the upstream and reloads nginx, which is what an ingress controller does
/// when an endpoint turns not ready.
struct Balancer {
    dir: PathBuf,
    listen: u16,
    /// Each replica's port and whether it is in rotation.
    upstream: Vec<(u16, bool)>,
}

impl Balancer {
    fn conf(&self) -> String {
        let servers: String = self
            .upstream
            .iter()
            .map(|(port, up)| {
                let down = if *up { "" } else { " down" };
                format!("        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s{down};\n")
            })
            .collect();
        let (d, listen) = (self.dir.display(), self.listen);
        format!(
            "daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format upstreams '$status $upstream_addr $upstream_status $msec $request_time';
    access_log {d}/access.log upstreams;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream aigw {{
{servers}        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://aigw;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_read_timeout 30s;
        }}
    }}
}}
"
        )
    }

    fn args(&self) -> Vec<String> {
        let error_log = self.dir.join("error.log").display().to_string();
        vec!["-p".into(), self.dir.display().to_string(), "-c".into(), "nginx.conf".into(), "-e".into(), error_log]
    }

    fn start(&self) -> tokio::process::Child {
        std::fs::write(self.dir.join("nginx.conf"), self.conf()).unwrap();
        tokio::process::Command::new("nginx")
            .args(self.args())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx (Debian's nginx-light) starts")
    }

    /// Put replica `index` in or out of rotation. nginx's reload is graceful: the old worker
    /// finishes what it carries and new requests go to the new worker.
    fn route(&mut self, index: usize, up: bool) {
        self.upstream[index].1 = up;
        std::fs::write(self.dir.join("nginx.conf"), self.conf()).unwrap();
        let reload = std::process::Command::new("nginx").args(self.args()).args(["-s", "reload"]).output().unwrap();
        assert!(reload.status.success(), "nginx -s reload: {}", String::from_utf8_lossy(&reload.stderr));
    }
}

#[derive(Default)]
struct Counts {
    completions: AtomicU64,
    streams: AtomicU64,
    failed: AtomicU64,
}

/// One request through the balancer; `Err` says what went wrong with it.
async fn call(
    client: &HttpClient,
    url: &str,
    headers: &[(String, String)],
    body: Bytes,
    stream: bool,
) -> Result<(), String> {
    let mut builder = Request::post(url);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let call = async {
        let response =
            client.request(builder.body(Full::new(body)).unwrap()).await.map_err(|e| format!("request: {e:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("{status}, body cut: {e}"))?.to_bytes();
        let text = String::from_utf8_lossy(&body).to_string();
        if status != StatusCode::OK {
            return Err(format!("{status}: {text}"));
        }
        let answered = if stream {
            text
        } else {
            serde_json::from_str::<Value>(&text).map_err(|e| format!("not JSON ({e}): {text}"))?["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        if answered == ANSWER { Ok(()) } else { Err(format!("answered {answered:?}")) }
    };
    tokio::time::timeout(Duration::from_secs(30), call).await.unwrap_or_else(|_| Err("no answer within 30 s".into()))
}

#[tokio::main]
async fn main() {
    let out_dir = workspace().join("target/restart");
    std::fs::create_dir_all(&out_dir).unwrap();
    let work = tempfile::tempdir_in(&out_dir).unwrap();
    // nginx's workers run as nobody: they write their temporary files here.
    std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    let key = TestKey::generate("restart-key-1");
    let gitlab = MockGitLab::start(&[&key]).await;
    let model = MockModelServer::start().await.unwrap();
    model.set_reply(Reply { text: ANSWER.into(), chunks: STREAM_CHUNKS, chunk_delay: CHUNK_DELAY, ..Reply::default() });

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Both replicas share one cache of compiled plugins, as pods on one volume would: the first
    // start compiles, the second loads what the first compiled.
    let cache = work.path().join("compiled-plugins");
    let mut replicas = Vec::new();
    let mut start_to_ready = Vec::new();
    for name in ["replica A", "replica B"] {
        let port = free_port();
        let env = [
            ("AIGW_GITLAB_URL", gitlab.url()),
            ("AIGW_FASTAPI__API_HOST", "127.0.0.1".into()),
            ("AIGW_FASTAPI__API_PORT", port.to_string()),
            ("AIGW_PLUGINS__DIR", workspace().join("target/plugins").display().to_string()),
            ("AIGW_PLUGINS__CACHE_DIR", cache.display().to_string()),
            ("AIGW_SERVER__DRAIN_DELAY_MS", DRAIN_DELAY.as_millis().to_string()),
            ("AIGW_SERVER__SHUTDOWN_GRACE_MS", GRACE.as_millis().to_string()),
        ];
        let env = env.into_iter().map(|(name, value)| (name.to_string(), value)).collect();
        let log = work.path().join(format!("{}.log", name.replace(' ', "-")));
        let mut replica = Replica { name, port, env, log, child: None };
        replica.spawn();
        start_to_ready.push(replica.wait_ready(&client).await);
        replicas.push(replica);
    }
    let (cold, warm) = (start_to_ready[0].as_millis(), start_to_ready[1].as_millis());
    println!("start to ready: {cold} ms compiling six plugins (cold cache), {warm} ms loading them (warm cache)");

    let mut balancer = Balancer {
        dir: work.path().to_path_buf(),
        listen: free_port(),
        upstream: replicas.iter().map(|replica| (replica.port, true)).collect(),
    };
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let balancer_port = balancer.listen;
    let mut nginx = balancer.start();
    let front = format!("http://127.0.0.1:{balancer_port}");
    let began = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", balancer_port)).await.is_err() {
        assert!(began.elapsed() < Duration::from_secs(10), "nginx listens within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let headers = Arc::new(gitlab_headers(&key.sign(&instance_claims(&gitlab.url(), &["complete_code"]))));
    let body = |stream: bool| {
        Bytes::from(
            json!({
                "current_file": {"file_name": "calc.py", "language_identifier": "python",
                                 "content_above_cursor": "def add(a, b):\n    ", "content_below_cursor": "\n"},
                "model_provider": "litellm", "model_name": "codestral", "model_endpoint": model.base_url(),
                "model_api_key": "sk-restart", "model_identifier": "custom_openai/codestral-22b", "stream": stream,
            })
            .to_string(),
        )
    };
    let (completion, stream) = (body(false), body(true));
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let url = format!("{front}/v2/code/completions");
    // Callers open a connection per request to nginx: a reload makes nginx's old worker close
    // the idle connections its callers keep, which is nginx's own behaviour, not aigw's, and
    // not what this test measures. Between nginx and aigw, connections are pooled.
    let callers_client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (client, url, headers, counts, stop, failures) =
                (callers_client.clone(), url.clone(), headers.clone(), counts.clone(), stop.clone(), failures.clone());
            let (completion, stream) = (completion.clone(), stream.clone());
            tokio::spawn(async move {
                let streaming = caller % 3 != 0;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
                    let sent = counts.completions.load(Ordering::Relaxed) + counts.streams.load(Ordering::Relaxed);
                    if sent >= MAX_REQUESTS {
                        break;
                    }
                    let body = if streaming { stream.clone() } else { completion.clone() };
                    let outcome = call(&client, &url, &headers, body, streaming).await;
                    let counter = if streaming { &counts.streams } else { &counts.completions };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Err(why) = outcome {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap().push(format!("{:.1} s: {why}", started.elapsed().as_secs_f64()));
                    }
                }
            })
        })
        .collect();

    // Load settles, then each replica in turn, with time between for nginx to take the
    // restarted one back (its fail_timeout).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut restarts = Vec::new();
    for (index, replica) in replicas.iter_mut().enumerate() {
        let measured = replica.restart(&client, &mut balancer, index).await;
        restarts.push(json!({"replica": replica.name, "measured": measured}));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let elapsed = started.elapsed();
    // TERM, not the KILL of kill_on_drop: nginx's master then stops its worker too.
    let master = nginx.id().unwrap().to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &master]).status();
    let _ = tokio::time::timeout(Duration::from_secs(10), nginx.wait()).await;

    // Which replica nginx sent each request to, and how many it had to try a second time.
    let access = std::fs::read_to_string(work.path().join("access.log")).unwrap_or_default();
    let retried = access.lines().filter(|line| line.contains(", ")).count();
    let per_replica: Vec<usize> =
        ports.iter().map(|port| access.lines().filter(|l| l.contains(&format!(":{port} "))).count()).collect();
    // Streams (the requests that took longer than a few chunks) that replica had begun before
    // its SIGTERM and finished after it: each ended whole, or it would be counted as failed.
    let straddling: Vec<usize> = restarts
        .iter()
        .zip(&ports)
        .map(|(restart, port)| {
            let signalled_at = restart["measured"]["signalled_at"].as_f64().unwrap();
            access
                .lines()
                .filter(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    let [_, upstream, _, ended, took] = fields[..] else { return false };
                    let (Ok(ended), Ok(took)) = (ended.parse::<f64>(), took.parse::<f64>()) else { return false };
                    upstream == format!("127.0.0.1:{port}")
                        && took >= (CHUNK_DELAY * 3).as_secs_f64()
                        && ended - took < signalled_at
                        && signalled_at < ended
                })
                .count()
        })
        .collect();
    let (completions, streams, failed) = (
        counts.completions.load(Ordering::Relaxed),
        counts.streams.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "{:.1} s through nginx: {completions} completions and {streams} streams, {failed} failed; \
         replica A answered {}, replica B {}; nginx retried {retried} refused connects on the other replica; \
         streams in flight across each replica's SIGTERM: {straddling:?}",
        elapsed.as_secs_f64(),
        per_replica[0],
        per_replica[1]
    );
    let report = json!({
        "seconds": elapsed.as_secs_f64(), "callers": CALLERS, "completions": completions, "streams": streams,
        "failed": failed, "answered_by": {"replica A": per_replica[0], "replica B": per_replica[1]},
        "retried_by_nginx": retried, "restarts": restarts, "streams_across_sigterm": straddling,
        "drain_delay_ms": DRAIN_DELAY.as_millis(), "grace_ms": GRACE.as_millis(),
        "start_to_ready_ms": {"cold_cache": cold, "warm_cache": warm},
    });
    let path = out_dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let failures = failures.lock().unwrap();
    for failure in failures.iter().take(20) {
        eprintln!("failed: {}", failure.lines().next().unwrap_or_default());
    }
    if failed > 0 {
        let errors = std::fs::read_to_string(work.path().join("error.log")).unwrap_or_default();
        eprintln!("nginx's error log:\n{errors}");
        for replica in &replicas {
            eprintln!("{}'s log, last lines:\n{}", replica.name, replica.log_tail());
        }
    }
    assert_eq!(failed, 0, "no request failed during the rolling restart");
    assert!(streams > 0 && completions > 0, "both kinds were sent");
    assert!(
        straddling.iter().all(|&n| n > 0),
        "each replica had streams in flight when it was signalled: {straddling:?}"
    );
    println!("rolling restart test passed; report in {}", path.display());
}
