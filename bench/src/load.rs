//! The load generator: bounded sequential and concurrent request loops on loopback, timing each
//! request to its first body byte and to its end.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The benchmark's HTTP client (keep-alive, pooled).
pub type BenchClient = Client<HttpConnector, Full<Bytes>>;

/// A new client whose pool can hold `connections` idle connections per host.
pub fn client(connections: usize) -> BenchClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new()).pool_max_idle_per_host(connections).build(connector)
}

/// Where requests go and what they carry.
#[derive(Debug, Clone)]
pub struct Target {
    /// Full URL.
    pub url: String,
    /// Request headers.
    pub headers: Vec<(&'static str, String)>,
}

/// One request's timings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// To the first non-empty body piece (the first token of a stream).
    pub first_byte: Duration,
    /// To the end of the body.
    pub total: Duration,
    /// Body pieces received.
    pub pieces: usize,
}

/// POST `body` to `target` and read the whole answer; a non-2xx status is an error.
pub async fn post(client: &BenchClient, target: &Target, body: &Bytes) -> anyhow::Result<Timing> {
    let mut request = http::Request::post(&target.url);
    for (name, value) in &target.headers {
        request = request.header(*name, value);
    }
    let started = Instant::now();
    let response = client.request(request.body(Full::new(body.clone()))?).await?;
    read_answer(&target.url, response, started).await
}

/// Read an answer to its end, timing its first body piece and its end from `started`; a
/// non-2xx status is an error.
async fn read_answer(
    url: &str,
    response: http::Response<hyper::body::Incoming>,
    started: Instant,
) -> anyhow::Result<Timing> {
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    let mut body = response.into_body();
    let (mut first_byte, mut pieces) = (None, 0);
    while let Some(frame) = body.frame().await {
        if frame?.data_ref().is_some_and(|data| !data.is_empty()) {
            first_byte.get_or_insert_with(|| started.elapsed());
            pieces += 1;
        }
    }
    let total = started.elapsed();
    Ok(Timing { first_byte: first_byte.unwrap_or(total), total, pieces })
}

/// GET `url` and return its body as text; a non-2xx status is an error.
pub async fn get_text(client: &BenchClient, url: &str) -> anyhow::Result<String> {
    let response = client.request(http::Request::get(url).body(Full::new(Bytes::new()))?).await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `count` requests one after another, on one connection of their own.
pub async fn sequential(target: &Target, body: &Bytes, count: usize) -> anyhow::Result<Vec<Timing>> {
    let mut caller = Caller::connect(target).await?;
    let mut timings = Vec::with_capacity(count);
    for _ in 0..count {
        timings.push(caller.post(body).await?);
    }
    Ok(timings)
}

/// Up to `total` requests from `concurrency` callers, each on a connection of its own, stopping
/// early at `time_cap`. Returns the latencies and the wall time the run took.
pub async fn concurrent(
    target: &Target,
    body: &Bytes,
    total: usize,
    concurrency: usize,
    time_cap: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (target, body, issued) = (target.clone(), body.clone(), Arc::clone(&issued));
        workers.spawn(async move {
            let mut caller = Caller::connect(&target).await?;
            let mut latencies = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < total && started.elapsed() < time_cap {
                latencies.push(caller.post(&body).await?.total);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(worker) = workers.join_next().await {
        latencies.extend(worker??);
    }
    Ok((latencies, started.elapsed()))
}

/// One caller's keep-alive connection to one target. A request is sent only once the
/// connection is idle again, so every request of a measured run reuses it. (The pooled client
/// hands a connection back from its own task after a streamed answer ends; a caller asking again
/// at once often found none and opened another, about one stream in ten, which the measured
/// servers paid for in accepts and the bare proxy in a fresh upstream connection.)
pub struct Caller {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The target's URL, for errors.
    url: String,
    /// The request line's path and query.
    path: String,
    /// The target's headers, `Host` first.
    headers: Vec<(&'static str, String)>,
}

impl Caller {
    /// Connect to `target`'s host (its URL is `http://host:port/...`), with `TCP_NODELAY`.
    pub async fn connect(target: &Target) -> anyhow::Result<Caller> {
        let uri: http::Uri = target.url.parse()?;
        let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("{} has no host", target.url))?;
        let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut headers = vec![("host", authority.to_string())];
        headers.extend(target.headers.iter().cloned());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Caller { sender, url: target.url.clone(), path, headers })
    }

    /// POST `body` to the target and read the whole answer, as [`post`] does.
    pub async fn post(&mut self, body: &Bytes) -> anyhow::Result<Timing> {
        let mut request = http::Request::post(self.path.as_str());
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        self.sender.ready().await?;
        let started = Instant::now();
        let response = self.sender.send_request(request.body(Full::new(body.clone()))?).await?;
        read_answer(&self.url, response, started).await
    }
}

/// Drive `requests` POSTs of the file `body_file` to `url` from `concurrency` callers (at most
/// ten minutes) and print the rate and latencies.
pub async fn drive(
    url: String,
    headers: Vec<String>,
    body_file: std::path::PathBuf,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    const HEADER_NAMES: &[&str] = &["authorization", "content-type", "x-gitlab-authentication-type", "accept"];
    let mut target = Target { url, headers: Vec::new() };
    for header in &headers {
        let (name, value) =
            header.split_once(':').ok_or_else(|| anyhow::anyhow!("header {header:?} is not `name: value`"))?;
        let name = name.trim().to_ascii_lowercase();
        let name = HEADER_NAMES
            .iter()
            .find(|known| **known == name)
            .ok_or_else(|| anyhow::anyhow!("header {name:?} is not one of {HEADER_NAMES:?}"))?;
        target.headers.push((name, value.trim().to_owned()));
    }
    let body = Bytes::from(std::fs::read(&body_file)?);
    let (latencies, took) = concurrent(&target, &body, requests, concurrency, Duration::from_secs(600)).await?;
    let (count, summary) = (latencies.len(), summarize(latencies));
    println!(
        "{count} requests in {:.2} s ({:.0}/s), p50 {:.0} µs, p99 {:.0} µs",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64(),
        summary.p50,
        summary.p99
    );
    Ok(())
}

/// Percentiles and mean of a set of durations, in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

/// Summarize `samples` (at least one).
pub fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    if samples.is_empty() {
        return Summary { p50: f64::NAN, p99: f64::NAN, mean: f64::NAN };
    }
    let at = |q: f64| micros(samples[((samples.len() as f64 - 1.0) * q).round() as usize]);
    let mean = samples.iter().map(|d| micros(*d)).sum::<f64>() / samples.len() as f64;
    Summary { p50: at(0.50), p99: at(0.99), mean }
}
