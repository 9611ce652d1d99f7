//! Prometheus metrics: labelled counters and histograms kept in memory per gateway, rendered in
//! the text exposition format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s output (Prometheus text format 0.0.4).
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency buckets, seconds: 100 µs to 60 s.
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Label values, in the order of the family's label names.
type Labels = Vec<String>;

/// Most series of a family whose labels the caller chooses (models); past it, `other`.
const MAX_CALLER_SERIES: usize = 512;

/// The label value that stands for every value past [`MAX_CALLER_SERIES`].
const OTHER: &str = "other";

/// Separates label values in a series key; a value containing it has it replaced.
const SEPARATOR: char = '\u{1f}';

thread_local! {
    /// Where series keys are assembled, so that updating an existing series allocates nothing.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Replace `key` with `labels` joined by [`SEPARATOR`] (a separator inside a label becomes U+FFFD).
fn write_key<'a>(key: &mut String, labels: impl Iterator<Item = &'a str>) {
    key.clear();
    for (i, label) in labels.enumerate() {
        if i > 0 {
            key.push(SEPARATOR);
        }
        if label.contains(SEPARATOR) {
            key.push_str(&label.replace(SEPARATOR, "\u{fffd}"));
        } else {
            key.push_str(label);
        }
    }
}

#[derive(Debug)]
struct Family<T> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    /// Series by their label values joined with [`SEPARATOR`].
    series: Mutex<BTreeMap<Box<str>, T>>,
}

impl<T: Default + Clone> Family<T> {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Family { name, help, labels, series: Mutex::new(BTreeMap::new()) }
    }

    fn with(&self, labels: &[&str], update: impl FnOnce(&mut T)) {
        self.with_capped(labels, usize::MAX, update);
    }

    /// Like [`Family::with`], but once the family has `max_series` series a new one is not
    /// created and the update goes to the series whose first label is `other` instead: for
    /// labels a caller chooses (a model name), so no request can grow the metrics without bound.
    fn with_capped(&self, labels: &[&str], max_series: usize, update: impl FnOnce(&mut T)) {
        KEY.with_borrow_mut(|key| {
            write_key(key, labels.iter().copied());
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(value) = series.get_mut(key.as_str()) {
                return update(value);
            }
            if series.len() >= max_series {
                write_key(key, std::iter::once(OTHER).chain(labels.iter().skip(1).copied()));
            }
            update(series.entry(key.as_str().into()).or_default());
        });
    }

    fn snapshot(&self) -> BTreeMap<Labels, T> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let split = |key: &str| -> Labels {
            if self.labels.is_empty() { Vec::new() } else { key.split(SEPARATOR).map(str::to_string).collect() }
        };
        series.iter().map(|(key, value)| (split(key), value.clone())).collect()
    }
}

/// `{name="value",…}` with each value escaped as Prometheus's text format asks (nothing when
/// there are no labels).
pub(crate) fn label_text(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{v}\""));
    }
    if pairs.is_empty() { String::new() } else { format!("{{{}}}", pairs.join(",")) }
}

/// Every metric the gateway keeps.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Family<u64>,
    request_seconds: Family<Histogram>,
    overhead_seconds: Family<Histogram>,
    upstream_seconds: Family<Histogram>,
    first_token_seconds: Family<Histogram>,
    per_token_seconds: Family<Histogram>,
    plugin_call_seconds: Family<Histogram>,
    plugin_failures: Family<u64>,
    tokens: Family<u64>,
    reloads: Family<u64>,
    precompiled_loads: Family<u64>,
    egress_refusals: Family<u64>,
    upstream_failures: Family<u64>,
    upstream_retries: Family<u64>,
    connections_refused: Family<u64>,
    connections_dropped: Family<u64>,
    jwks_refreshes: Family<u64>,
    model_api_requests: Family<u64>,
    model_api_tokens: Family<u64>,
    model_api_first_token_seconds: Family<Histogram>,
    /// Values read when rendered, from the parts that own them (the plugin pool).
    gauges: std::sync::RwLock<Vec<Gauge>>,
    /// Whole families written when rendered by the parts that own them (the model pools).
    sections: std::sync::RwLock<Vec<Section>>,
}

/// Writes families of its own into the rendered text.
struct Section(Box<dyn Fn(&mut String) + Send + Sync>);

impl std::fmt::Debug for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Section")
    }
}

/// A value read at render time.
struct Gauge {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauge").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::new(
                "aigw_requests_total",
                "Requests answered, by endpoint, status and the provider of their model call (none: no call).",
                &["endpoint", "status", "provider"],
            ),
            request_seconds: Family::new(
                "aigw_request_duration_seconds",
                "Time from request to response head (streams: until the head), by endpoint.",
                &["endpoint"],
            ),
            overhead_seconds: Family::new(
                "aigw_overhead_seconds",
                "The gateway's own time to the response head (total minus model server time), by endpoint.",
                &["endpoint"],
            ),
            first_token_seconds: Family::new(
                "aigw_time_to_first_token_seconds",
                "Streams: from sending the model request to the first generated text, by provider.",
                &["provider"],
            ),
            per_token_seconds: Family::new(
                "aigw_time_per_output_token_seconds",
                "Streams: time per generated token after the first, by provider.",
                &["provider"],
            ),
            upstream_seconds: Family::new(
                "aigw_upstream_duration_seconds",
                "Model server time to response head, by provider.",
                &["provider"],
            ),
            plugin_call_seconds: Family::new(
                "aigw_plugin_call_duration_seconds",
                "Plugin call time (fresh store included for build_request), by plugin and function.",
                &["plugin", "function"],
            ),
            plugin_failures: Family::new(
                "aigw_plugin_failures_total",
                "Plugin traps, deadlines, memory-limit hits and capacity refusals.",
                &["plugin", "kind"],
            ),
            tokens: Family::new("aigw_tokens_total", "Tokens reported by model servers.", &["model", "direction"]),
            reloads: Family::new("aigw_plugin_reloads_total", "Plugin file reload outcomes.", &["outcome"]),
            precompiled_loads: Family::new(
                "aigw_plugin_precompiled_loads_total",
                "Plugins loaded with machine code from AIGW_PLUGINS__CACHE_DIR instead of compiled.",
                &[],
            ),
            egress_refusals: Family::new(
                "aigw_egress_refusals_total",
                "Model endpoints refused by the egress policy.",
                &[],
            ),
            upstream_failures: Family::new(
                "aigw_upstream_failures_total",
                "Model calls that failed, by provider and reason (a timeout phase, connect, refused, status class, body, signing, TLS handshake).",
                &["provider", "reason"],
            ),
            upstream_retries: Family::new(
                "aigw_upstream_retries_total",
                "Model calls made again after a passing failure before the answer began, by provider and the failure's reason.",
                &["provider", "reason"],
            ),
            connections_refused: Family::new(
                "aigw_connections_refused_total",
                "Client connections closed on arrival: the cap (AIGW_SERVER__MAX_CONNECTIONS, fitted to the open-file limit) was reached and every connection had a request in progress.",
                &[],
            ),
            connections_dropped: Family::new(
                "aigw_connections_dropped_total",
                "Client connections the gateway dropped, by reason (write_idle: the caller stopped reading; deadline: a stream read so slowly it outlived its model call's deadline; idle_at_cap: an idle connection gave way to a newcomer at the connection cap).",
                &["reason"],
            ),
            jwks_refreshes: Family::new(
                "aigw_jwks_refreshes_total",
                "Signing key set refreshes, by outcome.",
                &["outcome"],
            ),
            model_api_requests: Family::new(
                "aigw_model_api_requests_total",
                "Requests for named models (the model API, and GitLab requests served from a named model), by model, client key id and status; `none` where the request named no known model or key.",
                &["model", "key", "status"],
            ),
            model_api_tokens: Family::new(
                "aigw_model_api_tokens_total",
                "Tokens reported for named models, by model, client key id and direction.",
                &["model", "key", "direction"],
            ),
            model_api_first_token_seconds: Family::new(
                "aigw_model_api_time_to_first_token_seconds",
                "Named models' streams: from sending the model request to the first output (text or a tool call), by model.",
                &["model"],
            ),
            gauges: std::sync::RwLock::new(Vec::new()),
            sections: std::sync::RwLock::new(Vec::new()),
        }
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

impl Metrics {
    /// One answered request.
    pub(crate) fn request(&self, endpoint: &str, status: u16, provider: Option<&str>, elapsed: Duration) {
        self.requests.with(&[endpoint, &status.to_string(), provider.unwrap_or("none")], |c| *c += 1);
        self.request_seconds.with(&[endpoint], |h| h.observe(seconds(elapsed)));
    }

    /// The gateway's own share of a request's time to the response head.
    pub(crate) fn overhead(&self, endpoint: &str, elapsed: Duration) {
        self.overhead_seconds.with(&[endpoint], |h| h.observe(seconds(elapsed)));
    }

    /// A stream's first generated text arrived `elapsed` after the model request was sent.
    pub(crate) fn first_token(&self, provider: &str, elapsed: Duration) {
        self.first_token_seconds.with(&[provider], |h| h.observe(seconds(elapsed)));
    }

    /// A finished stream generated `tokens` tokens in `elapsed` after its first one.
    pub(crate) fn tokens_after_first(&self, provider: &str, tokens: u32, elapsed: Duration) {
        if tokens > 0 {
            self.per_token_seconds.with(&[provider], |h| h.observe(seconds(elapsed) / f64::from(tokens)));
        }
    }

    /// A model server's time to response head.
    pub(crate) fn upstream(&self, provider: &str, elapsed: Duration) {
        self.upstream_seconds.with(&[provider], |h| h.observe(seconds(elapsed)));
    }

    /// One plugin call.
    pub(crate) fn plugin_call(&self, plugin: &str, function: &str, elapsed: Duration) {
        self.plugin_call_seconds.with(&[plugin, function], |h| h.observe(seconds(elapsed)));
    }

    /// A plugin failure of `kind` (`trap`, `deadline`, `memory_limit`, `capacity`).
    pub(crate) fn plugin_failure(&self, plugin: &str, kind: &str) {
        self.plugin_failures.with(&[plugin, kind], |c| *c += 1);
    }

    /// Tokens a model server reported.
    /// The model id comes from the request, so its series are capped (see [`MAX_CALLER_SERIES`]).
    pub(crate) fn tokens(&self, model: &str, input: u32, output: u32) {
        self.tokens.with_capped(&[model, "input"], MAX_CALLER_SERIES, |c| *c += u64::from(input));
        self.tokens.with_capped(&[model, "output"], MAX_CALLER_SERIES, |c| *c += u64::from(output));
    }

    /// A request for a named model (`model` and `key` come from the operator's models file, or
    /// are `none`), answered with `status`.
    pub(crate) fn model_api_request(&self, model: &str, key: &str, status: u16) {
        self.model_api_requests.with(&[model, key, &status.to_string()], |c| *c += 1);
    }

    /// Tokens a model server reported for a named model.
    pub(crate) fn model_api_tokens(&self, model: &str, key: &str, input: u32, output: u32) {
        self.model_api_tokens.with(&[model, key, "input"], |c| *c += u64::from(input));
        self.model_api_tokens.with(&[model, key, "output"], |c| *c += u64::from(output));
    }

    /// A named model's stream began `elapsed` after its model request was sent.
    pub(crate) fn model_api_first_token(&self, model: &str, elapsed: Duration) {
        self.model_api_first_token_seconds.with(&[model], |h| h.observe(seconds(elapsed)));
    }

    /// Plugin reload outcomes: files loaded (and how many of them from the compiled-code
    /// cache), rejected, unloaded.
    pub(crate) fn reloads(&self, report: &crate::plugins::registry::ReloadReport) {
        let outcomes =
            [("loaded", report.loaded.len()), ("rejected", report.rejected.len()), ("unloaded", report.unloaded.len())];
        for (outcome, count) in outcomes {
            self.reloads.with(&[outcome], |c| *c += count as u64);
        }
        self.precompiled_loads.with(&[], |c| *c += report.from_cache as u64);
    }

    /// A refused model endpoint.
    pub(crate) fn egress_refused(&self) {
        self.egress_refusals.with(&[], |c| *c += 1);
    }

    /// A failed model call, before or during the answer.
    pub(crate) fn upstream_failure(&self, provider: &str, reason: &str) {
        self.upstream_failures.with(&[provider, reason], |c| *c += 1);
    }

    /// A model call about to be made again after `reason`.
    pub(crate) fn upstream_retry(&self, provider: &str, reason: &str) {
        self.upstream_retries.with(&[provider, reason], |c| *c += 1);
    }

    /// A client connection closed on arrival: the cap was reached.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.with(&[], |c| *c += 1);
    }

    /// A client connection dropped by the gateway for `reason`.
    pub(crate) fn connection_dropped(&self, reason: &str) {
        self.connections_dropped.with(&[reason], |c| *c += 1);
    }

    /// A key set refresh (`ok` or `failed`).
    pub(crate) fn jwks_refresh(&self, outcome: &str) {
        self.jwks_refreshes.with(&[outcome], |c| *c += 1);
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for counter in [
            &self.requests,
            &self.plugin_failures,
            &self.tokens,
            &self.reloads,
            &self.precompiled_loads,
            &self.egress_refusals,
            &self.upstream_failures,
            &self.upstream_retries,
            &self.connections_refused,
            &self.connections_dropped,
            &self.jwks_refreshes,
            &self.model_api_requests,
            &self.model_api_tokens,
        ] {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter", counter.name, counter.help, counter.name);
            for (labels, value) in counter.snapshot() {
                let _ = writeln!(out, "{}{} {value}", counter.name, label_text(counter.labels, &labels, None));
            }
        }
        for histogram in [
            &self.request_seconds,
            &self.overhead_seconds,
            &self.upstream_seconds,
            &self.first_token_seconds,
            &self.per_token_seconds,
            &self.plugin_call_seconds,
            &self.model_api_first_token_seconds,
        ] {
            let name = histogram.name;
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", histogram.help);
            for (labels, h) in histogram.snapshot() {
                for (bound, count) in BUCKETS.iter().zip(h.counts) {
                    let le = bound.to_string();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        label_text(histogram.labels, &labels, Some(("le", &le)))
                    );
                }
                let all = label_text(histogram.labels, &labels, Some(("le", "+Inf")));
                let plain = label_text(histogram.labels, &labels, None);
                let _ = writeln!(
                    out,
                    "{name}_bucket{all} {}\n{name}_sum{plain} {}\n{name}_count{plain} {}",
                    h.count, h.sum, h.count
                );
            }
        }
        if let Ok(gauges) = self.gauges.read() {
            for gauge in gauges.iter() {
                let (name, help) = (gauge.name, gauge.help);
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", (gauge.read)());
            }
        }
        if let Ok(sections) = self.sections.read() {
            for section in sections.iter() {
                (section.0)(&mut out);
            }
        }
        out
    }

    /// Let `write` add families of its own (with their HELP and TYPE lines) whenever the
    /// metrics are rendered.
    pub(crate) fn section(&self, write: impl Fn(&mut String) + Send + Sync + 'static) {
        if let Ok(mut sections) = self.sections.write() {
            sections.push(Section(Box::new(write)));
        }
    }

    /// Expose `read()` as the gauge `name`, read whenever the metrics are rendered.
    pub(crate) fn gauge(&self, name: &'static str, help: &'static str, read: impl Fn() -> u64 + Send + Sync + 'static) {
        if let Ok(mut gauges) = self.gauges.write() {
            gauges.push(Gauge { name, help, read: Box::new(read) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let metrics = Metrics::default();
        metrics.request("/v2/code/completions", 200, Some("custom_openai"), Duration::from_micros(300));
        metrics.request("/v2/code/completions", 200, Some("custom_openai"), Duration::from_millis(2));
        metrics.egress_refused();
        let text = metrics.render();
        assert!(
            text.contains(
                "aigw_requests_total{endpoint=\"/v2/code/completions\",status=\"200\",provider=\"custom_openai\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("aigw_egress_refusals_total 1"));
        assert!(
            text.contains("aigw_request_duration_seconds_bucket{endpoint=\"/v2/code/completions\",le=\"0.0005\"} 1")
        );
        assert!(
            text.contains("aigw_request_duration_seconds_bucket{endpoint=\"/v2/code/completions\",le=\"0.0025\"} 2")
        );
        assert!(text.contains("aigw_request_duration_seconds_count{endpoint=\"/v2/code/completions\"} 2"));
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::default();
        metrics.tokens("we\"ird\nmodel", 1, 2);
        assert!(metrics.render().contains("model=\"we\\\"ird\\nmodel\""));
    }

    #[test]
    fn series_keys_survive_any_label_text() {
        let metrics = Metrics::default();
        let odd_model = "model\u{1f}with\u{1f}separators\"and quotes";
        metrics.tokens(odd_model, 3, 4);
        metrics.tokens(odd_model, 1, 1);
        metrics.tokens("plain", 1, 0);
        let text = metrics.render();
        let line = |direction: &str| {
            text.lines()
                .find(|l| l.starts_with("aigw_tokens_total{model=\"model\u{fffd}with") && l.contains(direction))
                .map(str::to_string)
        };
        assert_eq!(
            line("input").as_deref(),
            Some(
                "aigw_tokens_total{model=\"model\u{fffd}with\u{fffd}separators\\\"and quotes\",direction=\"input\"} 4"
            )
        );
        assert!(line("output").is_some_and(|l| l.ends_with(" 5")));
        assert!(text.contains("aigw_tokens_total{model=\"plain\",direction=\"input\"} 1"));
    }

    #[test]
    fn caller_chosen_models_cannot_grow_the_series_without_bound() {
        let metrics = Metrics::default();
        for n in 0..2_000 {
            metrics.tokens(&format!("model-{n}"), 1, 1);
        }
        let text = metrics.render();
        let series = text.lines().filter(|l| l.starts_with("aigw_tokens_total{")).count();
        assert!(series <= MAX_CALLER_SERIES + 2, "{series} series");
        assert!(
            text.contains("aigw_tokens_total{model=\"model-0\",direction=\"input\"} 1"),
            "early models keep theirs"
        );
        let other = text.lines().find(|l| l.starts_with("aigw_tokens_total{model=\"other\",direction=\"input\"}"));
        assert_eq!(other, Some("aigw_tokens_total{model=\"other\",direction=\"input\"} 1744"));
    }
}
