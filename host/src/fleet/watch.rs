//! Reading a pool's members in the background: each model server's own load from its metrics,
//! its health endpoint, and the addresses a DNS name resolves to (a headless Service's pods).

use super::{Pool, ServerLoad};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// What a pool reads in the background, and how often (the `[models.pool]` table).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct WatchSettings {
    /// The servers' Prometheus metrics, a path on each member's origin (`/metrics`).
    pub(crate) metrics_path: Option<String>,
    pub(crate) scrape_interval: Duration,
    /// A health endpoint, a path on each member's origin (`/health`): 2xx brings an ejected
    /// member back, anything else counts as a failure.
    pub(crate) health_path: Option<String>,
    pub(crate) health_interval: Duration,
    /// A name whose addresses are the members (`http://vllm.ns.svc:8000/v1`), re-resolved.
    pub(crate) dns: Option<http::Uri>,
    pub(crate) dns_interval: Duration,
}

impl WatchSettings {
    /// Whether there is anything to read.
    pub(crate) fn any(&self) -> bool {
        self.metrics_path.is_some() || self.health_path.is_some() || self.dns.is_some()
    }

    /// Figures older than this are ignored: three scrapes missed.
    pub(crate) fn freshness(&self) -> Duration {
        self.scrape_interval * 3
    }
}

/// Most bytes of a metrics page read (vLLM's is ~30 KB).
const MAX_METRICS_BYTES: usize = 1 << 20;

/// The longest one read may take, whatever the interval.
const MAX_READ_TIME: Duration = Duration::from_secs(2);

/// How the watcher reaches members (the gateway's egress-policed client, in production).
pub(crate) trait Reader: Send + Sync + 'static {
    /// GET `url`: its body when the answer is 2xx, else why not.
    fn get(&self, url: http::Uri, max_bytes: usize, timeout: Duration) -> BoxFuture<'_, Result<bytes::Bytes, String>>;
    /// Whether the egress policy lets the gateway call `address`.
    fn allowed(&self, address: std::net::IpAddr) -> bool;
}

/// A boxed future, for [`Reader`].
pub(crate) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl Reader for crate::upstream::Upstream {
    fn get(&self, url: http::Uri, max_bytes: usize, timeout: Duration) -> BoxFuture<'_, Result<bytes::Bytes, String>> {
        Box::pin(async move { self.get_bytes(url, max_bytes, timeout).await.map_err(|e| e.to_string()) })
    }

    fn allowed(&self, address: std::net::IpAddr) -> bool {
        self.egress_allows(address)
    }
}

/// Read `pool`'s members in the background, for as long as the pool is in use, if its settings
/// ask for anything. Needs a Tokio runtime (none: nothing is started).
pub(crate) fn start(pool: &Arc<Pool>, reader: Arc<dyn Reader>) {
    if !pool.settings.watch.any() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(run(Arc::downgrade(pool), reader));
}

async fn run(pool: Weak<Pool>, reader: Arc<dyn Reader>) {
    let now = Instant::now();
    let (mut next_dns, mut next_scrape, mut next_health) = (now, now, now);
    loop {
        let Some(pool) = pool.upgrade() else { return };
        let settings = &pool.settings.watch;
        let now = Instant::now();
        if let Some(name) = settings.dns.as_ref().filter(|_| now >= next_dns) {
            resolve(&pool, name, reader.as_ref()).await;
            next_dns = now + settings.dns_interval;
        }
        if let Some(path) = settings.metrics_path.as_deref().filter(|_| now >= next_scrape) {
            let timeout = settings.scrape_interval.min(MAX_READ_TIME);
            for member in pool.members().iter() {
                match reader.get(at_origin(member.endpoint(), path), MAX_METRICS_BYTES, timeout).await {
                    Ok(body) => match parse_load(&String::from_utf8_lossy(&body)) {
                        Some(load) => member.set_server_load(load, pool.settings.learn_concurrency),
                        None => tracing::debug!(member = member.label(), "no vLLM or SGLang load in the metrics"),
                    },
                    Err(why) => tracing::debug!(member = member.label(), %why, "metrics not read"),
                }
            }
            // A learned limit may have moved.
            pool.gate.changed.notify_waiters();
            next_scrape = now + settings.scrape_interval;
        }
        if let Some(path) = settings.health_path.as_deref().filter(|_| now >= next_health) {
            let timeout = settings.health_interval.min(MAX_READ_TIME);
            for member in pool.members().iter() {
                let healthy = reader.get(at_origin(member.endpoint(), path), 64 << 10, timeout).await.is_ok();
                member.health_checked(healthy, &pool.settings.ejection, pool.model());
            }
            pool.gate.changed.notify_waiters();
            next_health = now + settings.health_interval;
        }
        let mut next = [next_dns, next_scrape, next_health]
            .into_iter()
            .zip([settings.dns.is_some(), settings.metrics_path.is_some(), settings.health_path.is_some()])
            .filter_map(|(at, wanted)| wanted.then_some(at))
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        // Wake now and then to notice that the pool was replaced.
        next = next.min(Instant::now() + Duration::from_secs(5));
        drop(pool);
        tokio::time::sleep_until(next).await;
    }
}

/// A member's health and load, read once (for `doctor`): `None` where the pool reads neither.
pub(crate) struct MemberReport {
    pub(crate) healthy: Option<Result<(), String>>,
    pub(crate) load: Option<Result<ServerLoad, String>>,
}

/// Read the member at `endpoint` as the pool's watcher would.
pub(crate) async fn read_member(pool: &Pool, endpoint: &http::Uri, reader: &dyn Reader) -> MemberReport {
    let settings = &pool.settings.watch;
    let healthy = match settings.health_path.as_deref() {
        Some(path) => Some(reader.get(at_origin(endpoint, path), 64 << 10, MAX_READ_TIME).await.map(drop)),
        None => None,
    };
    let load = match settings.metrics_path.as_deref() {
        Some(path) => {
            Some(reader.get(at_origin(endpoint, path), MAX_METRICS_BYTES, MAX_READ_TIME).await.and_then(|body| {
                parse_load(&String::from_utf8_lossy(&body))
                    .ok_or_else(|| "no vLLM or SGLang queue figures in it".to_string())
            }))
        }
        None => None,
    };
    MemberReport { healthy, load }
}

/// List a DNS pool's members now (for `doctor`, which has no watcher running).
pub(crate) async fn list_members(pool: &Pool, reader: &dyn Reader) {
    if let Some(name) = &pool.settings.watch.dns {
        resolve(pool, name, reader).await;
    }
}

/// `path` on the origin (scheme, host, port) of `endpoint`.
fn at_origin(endpoint: &http::Uri, path: &str) -> http::Uri {
    let scheme = endpoint.scheme_str().unwrap_or("http");
    let authority = endpoint.authority().map(|a| a.as_str()).unwrap_or_default();
    format!("{scheme}://{authority}{path}").parse().unwrap_or_else(|_| endpoint.clone())
}

/// Re-resolve `name` (as the connector resolves a model endpoint) and make its addresses (those
/// the egress policy allows) the members.
async fn resolve(pool: &Pool, name: &http::Uri, reader: &dyn Reader) {
    let addresses = match crate::upstream::connector::resolve(name).await {
        Ok(addresses) => addresses,
        Err(error) => {
            // Members stay as they were: a resolver hiccup must not empty the pool.
            tracing::warn!(model = pool.model(), %name, %error, "pool DNS name not resolved; members unchanged");
            return;
        }
    };
    let scheme = name.scheme_str().unwrap_or("http");
    let path = name.path().trim_end_matches('/');
    let mut endpoints = Vec::new();
    for address in addresses {
        if !reader.allowed(address.ip()) {
            tracing::warn!(model = pool.model(), %address, "a pool address the egress policy refuses is left out");
            continue;
        }
        // A socket address prints as `ip:port`, an IPv6 one in brackets, as a URL has it.
        if let Ok(endpoint) = format!("{scheme}://{address}{path}").parse::<http::Uri>()
            && !endpoints.contains(&endpoint)
        {
            endpoints.push(endpoint);
        }
    }
    endpoints.sort_by_key(ToString::to_string);
    pool.set_members(endpoints);
}

/// A model server's load from its Prometheus text: vLLM's gauges (`vllm:num_requests_waiting`,
/// `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` or the older
/// `vllm:gpu_cache_usage_perc`) or SGLang's (`sglang:num_queue_reqs`, `sglang:num_running_reqs`,
/// `sglang:token_usage`), summed over their label sets (the KV cache: the highest). `None` when
/// neither server's queue figures are there.
pub(crate) fn parse_load(text: &str) -> Option<ServerLoad> {
    let (mut waiting, mut running, mut kv) = (None::<f64>, None::<f64>, 0.0f64);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite()) else {
            continue;
        };
        match name {
            "vllm:num_requests_waiting" | "sglang:num_queue_reqs" => *waiting.get_or_insert(0.0) += value,
            "vllm:num_requests_running" | "sglang:num_running_reqs" => *running.get_or_insert(0.0) += value,
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" | "sglang:token_usage" => kv = kv.max(value),
            _ => {}
        }
    }
    let count = |value: f64| value.clamp(0.0, f64::from(u32::MAX)) as u32;
    Some(ServerLoad {
        waiting: count(waiting?),
        running: count(running.unwrap_or(0.0)),
        kv_cache_usage: kv.clamp(0.0, 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_and_sglang_metrics_give_the_servers_load() {
        let vllm = "# HELP vllm:num_requests_waiting Number of requests waiting.\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{model_name=\"qwen\",engine=\"0\"} 3.0\n\
            vllm:num_requests_waiting{model_name=\"qwen\",engine=\"1\"} 1.0\n\
            vllm:num_requests_running{model_name=\"qwen\"} 12.0\n\
            vllm:kv_cache_usage_perc{model_name=\"qwen\"} 0.42\n\
            vllm:iteration_tokens_total_sum{model_name=\"qwen\"} 99.0\n";
        assert_eq!(parse_load(vllm), Some(ServerLoad { waiting: 4, running: 12, kv_cache_usage: 0.42 }));
        let older = "vllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 0.97\n";
        assert_eq!(parse_load(older), Some(ServerLoad { waiting: 0, running: 0, kv_cache_usage: 0.97 }));
        let sglang = "sglang:num_queue_reqs{model_name=\"m\"} 2\nsglang:num_running_reqs{model_name=\"m\"} 5\nsglang:token_usage 0.5\n";
        assert_eq!(parse_load(sglang), Some(ServerLoad { waiting: 2, running: 5, kv_cache_usage: 0.5 }));
    }

    #[test]
    fn metrics_without_a_queue_or_with_junk_give_nothing_usable() {
        assert_eq!(parse_load("process_cpu_seconds_total 12.5\n"), None);
        assert_eq!(parse_load(""), None);
        let junk = "vllm:num_requests_waiting{a=\"b\"} NaN\nvllm:num_requests_waiting -5\nvllm:kv_cache_usage_perc 7\n";
        assert_eq!(parse_load(junk), Some(ServerLoad { waiting: 0, running: 0, kv_cache_usage: 1.0 }));
    }

    #[test]
    fn paths_are_read_at_the_members_origin() {
        let endpoint: http::Uri = "http://10.0.0.7:8000/v1".parse().unwrap();
        assert_eq!(at_origin(&endpoint, "/metrics").to_string(), "http://10.0.0.7:8000/metrics");
    }
}
