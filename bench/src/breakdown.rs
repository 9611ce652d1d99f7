//! Where aigw's time per request goes, from its own `/metrics` histograms: the `_sum` and
//! `_count` of each series before and after a run, turned into a mean per request.

use std::collections::HashMap;

/// Every histogram series' `(sum, count)` in a Prometheus text exposition, keyed by the metric
/// name and labels as written (`aigw_upstream_duration_seconds{provider="custom_openai"}`).
#[derive(Debug, Default, Clone)]
pub struct Histograms(HashMap<String, (f64, f64)>);

impl Histograms {
    /// Read the `_sum` and `_count` lines of `text`; other lines are ignored.
    pub fn parse(text: &str) -> Histograms {
        let mut series: HashMap<String, (f64, f64)> = HashMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = key.split_once('{').map_or((key, ""), |(name, rest)| (name, rest));
            let labels = if labels.is_empty() { String::new() } else { format!("{{{labels}") };
            if let Some(base) = name.strip_suffix("_sum") {
                series.entry(format!("{base}{labels}")).or_default().0 = value;
            } else if let Some(base) = name.strip_suffix("_count") {
                series.entry(format!("{base}{labels}")).or_default().1 = value;
            }
        }
        Histograms(series)
    }

    /// Mean of the observations `self` has beyond `before`, over every series whose key starts
    /// with `metric` and contains each of `labels`, in microseconds. `None` when nothing new was
    /// observed.
    pub fn mean_since(&self, before: &Histograms, metric: &str, labels: &[&str]) -> Option<f64> {
        let (mut sum, mut count) = (0.0, 0.0);
        for (key, (now_sum, now_count)) in &self.0 {
            if !key.starts_with(metric) || !labels.iter().all(|label| key.contains(label)) {
                continue;
            }
            let (then_sum, then_count) = before.0.get(key).copied().unwrap_or_default();
            sum += now_sum - then_sum;
            count += now_count - then_count;
        }
        (count > 0.0).then(|| sum * 1e6 / count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE aigw_plugin_call_duration_seconds histogram\n\
        aigw_plugin_call_duration_seconds_bucket{plugin=\"openai\",function=\"build_request\",le=\"0.001\"} 1\n\
        aigw_plugin_call_duration_seconds_sum{plugin=\"openai\",function=\"build_request\"} 0.00001\n\
        aigw_plugin_call_duration_seconds_count{plugin=\"openai\",function=\"build_request\"} 1\n";
    const AFTER: &str = "aigw_plugin_call_duration_seconds_sum{plugin=\"openai\",function=\"build_request\"} 0.00004\n\
        aigw_plugin_call_duration_seconds_count{plugin=\"openai\",function=\"build_request\"} 4\n\
        aigw_plugin_call_duration_seconds_sum{plugin=\"openai\",function=\"parse_response\"} 0.000006\n\
        aigw_plugin_call_duration_seconds_count{plugin=\"openai\",function=\"parse_response\"} 3\n\
        aigw_plugin_slots_in_use 0\n";

    #[test]
    fn means_are_taken_over_the_new_observations_only() {
        let (before, after) = (Histograms::parse(BEFORE), Histograms::parse(AFTER));
        let build = after.mean_since(&before, "aigw_plugin_call_duration_seconds", &["build_request"]);
        assert!((build.unwrap() - 10.0).abs() < 1e-9, "3 new calls took 30 µs: {build:?}");
        // Both functions: 36 µs over 6 calls.
        let both = after.mean_since(&before, "aigw_plugin_call_duration_seconds", &[]);
        assert!((both.unwrap() - 6.0).abs() < 1e-9, "{both:?}");
        assert_eq!(after.mean_since(&after, "aigw_plugin_call_duration_seconds", &[]), None, "nothing new");
        assert_eq!(after.mean_since(&before, "aigw_tokens", &[]), None, "no such series");
    }
}
