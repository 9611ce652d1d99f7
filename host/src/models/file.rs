//! The models file (`AIGW_MODELS__FILE`, TOML): its shape, checked field by field into a
//! [`ModelCatalog`], with each provider credential read from its variable or file.

use super::{Allowed, ClientKey, ModelCatalog, NamedModel, Secret};
use crate::fleet::{EjectionPolicy, Pool, PoolSettings, Strategy, WatchSettings, WorkClass};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why the models file cannot be used; it names the entry and the field.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", .path.display())]
pub struct ModelsError {
    path: PathBuf,
    problem: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    gateway_urls: Vec<String>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    identifier: String,
    endpoint: Option<String>,
    /// Several model servers serving the model: a pool.
    endpoints: Option<Vec<String>>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    pool: Option<RawPool>,
}

/// How a model's pool places requests; every field has a default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPool {
    picker: Option<Strategy>,
    max_concurrency: Option<u32>,
    learn_concurrency: Option<bool>,
    affinity_bound: Option<f64>,
    queue_wait_ms: Option<RawWaits>,
    eject_after: Option<u32>,
    eject_base_ms: Option<u64>,
    eject_max_ms: Option<u64>,
    metrics_path: Option<String>,
    scrape_interval_ms: Option<u64>,
    health_path: Option<String>,
    health_interval_ms: Option<u64>,
    dns: Option<String>,
    dns_interval_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWaits {
    completion: Option<u64>,
    chat: Option<u64>,
    agent: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    sha256: String,
    models: Vec<String>,
    networks: Option<Vec<String>>,
    /// The class of the key's requests when its model's pool is saturated (default `agent`).
    class: Option<WorkClass>,
}

/// The most requests a pool member may be given at once, and the longest wait in a pool's line.
const MAX_CONCURRENCY: u32 = 100_000;
const MAX_QUEUE_WAIT_MS: u64 = 600_000;

/// Names clients and logs use: letters, digits and `-_.:/@+`, at most 128 characters.
fn is_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+".contains(&b))
}

/// Read `path`. Pools of models `previous` (the catalog in force) also has keep their members'
/// counters and health, and their waiting lines.
pub(super) fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    previous: Option<&ModelCatalog>,
) -> Result<ModelCatalog, ModelsError> {
    let fail = |problem: String| ModelsError { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let raw: RawFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let gateway_urls = raw
        .gateway_urls
        .iter()
        .map(|url| {
            crate::upstream::endpoint::parse(url)
                .map(|uri| uri.to_string().trim_end_matches('/').to_string())
                .map_err(|why| fail(format!("gateway_urls: {url:?} is not usable: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut models = HashMap::new();
    let mut order = Vec::new();
    for raw in raw.models {
        let before = previous.and_then(|catalog| catalog.models.get(&raw.name)).and_then(|model| model.pool.as_deref());
        let model = named_model(raw, base, env, before).map_err(fail)?;
        if models.contains_key(&model.name) {
            return Err(fail(format!("models: {:?} is named twice", model.name)));
        }
        order.push(model.name.clone());
        models.insert(model.name.clone(), model);
    }
    let mut keys: Vec<ClientKey> = Vec::new();
    for raw in raw.keys {
        let key = client_key(raw, &models).map_err(fail)?;
        if keys.iter().any(|other| other.id == key.id) {
            return Err(fail(format!("keys: the id {:?} is used twice", key.id)));
        }
        if keys.iter().any(|other| other.digest == key.digest) {
            return Err(fail(format!("keys: {:?} has the same sha256 as another key", key.id)));
        }
        keys.push(key);
    }
    Ok(ModelCatalog { models, order, keys, gateway_urls, source: Some(path.to_path_buf()) })
}

fn named_model(
    raw: RawModel,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    previous: Option<&Pool>,
) -> Result<NamedModel, String> {
    let entry = format!("models {:?}", raw.name);
    if !is_name(&raw.name) {
        return Err(format!("{entry}: a name is letters, digits and -_.:/@+ (at most 128)"));
    }
    let (provider, model) = raw
        .identifier
        .split_once('/')
        .filter(|(provider, model)| !provider.is_empty() && !model.is_empty())
        .ok_or_else(|| format!("{entry}: identifier {:?} must be <provider>/<model>", raw.identifier))?;
    let listed = match (raw.endpoint, raw.endpoints) {
        (Some(_), Some(_)) => return Err(format!("{entry}: set endpoint or endpoints, not both")),
        (Some(endpoint), None) => vec![endpoint],
        (None, Some(endpoints)) if endpoints.is_empty() => {
            return Err(format!("{entry}: endpoints is empty (leave it out for the plugin's default endpoint)"));
        }
        (None, Some(endpoints)) => endpoints,
        (None, None) => Vec::new(),
    };
    let mut endpoints: Vec<http::Uri> = Vec::new();
    for endpoint in &listed {
        let uri = crate::upstream::endpoint::parse(endpoint)
            .map_err(|why| format!("{entry}: endpoint {endpoint:?} is not usable: {why}"))?;
        if endpoints.contains(&uri) {
            return Err(format!("{entry}: endpoint {endpoint:?} is listed twice"));
        }
        endpoints.push(uri);
    }
    let settings = pool_settings(raw.pool.unwrap_or_default()).map_err(|why| format!("{entry}: pool: {why}"))?;
    let has_servers = !endpoints.is_empty() || settings.watch.dns.is_some();
    let pool = has_servers.then(|| Arc::new(Pool::new(&raw.name, settings, endpoints, previous)));
    let (api_key, credential_source) = match (&raw.api_key_env, &raw.api_key_file) {
        (Some(_), Some(_)) => return Err(format!("{entry}: set api_key_env or api_key_file, not both")),
        (Some(variable), None) => {
            let value = env(variable).ok_or_else(|| format!("{entry}: the variable {variable} is not set"))?;
            (value, format!("environment variable {variable}"))
        }
        (None, Some(file)) => {
            let file = base.join(file);
            let value = std::fs::read_to_string(&file)
                .map_err(|e| format!("{entry}: cannot read api_key_file {}: {e}", file.display()))?;
            (value.trim_end_matches(['\r', '\n']).to_string(), format!("file {}", file.display()))
        }
        (None, None) => (String::new(), "none".to_string()),
    };
    // It travels in a header.
    if !api_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{entry}: the API key may hold printable ASCII characters only"));
    }
    Ok(NamedModel {
        name: raw.name,
        provider: provider.to_string(),
        model: model.to_string(),
        pool,
        api_key: Secret(api_key),
        credential_source,
    })
}

fn pool_settings(raw: RawPool) -> Result<PoolSettings, String> {
    let defaults = PoolSettings::default();
    if raw.max_concurrency.is_some_and(|limit| limit == 0 || limit > MAX_CONCURRENCY) {
        return Err(format!("max_concurrency must be 1 to {MAX_CONCURRENCY}"));
    }
    let affinity_bound = raw.affinity_bound.unwrap_or(defaults.affinity_bound);
    if !(1.0..=10.0).contains(&affinity_bound) {
        return Err(
            "affinity_bound must be 1.0 to 10.0 (1.25: a file's member may carry a quarter more than the average)"
                .into(),
        );
    }
    let mut queue_wait = defaults.queue_wait;
    if let Some(waits) = raw.queue_wait_ms {
        for (class, wait) in
            [(WorkClass::Completion, waits.completion), (WorkClass::Chat, waits.chat), (WorkClass::Agent, waits.agent)]
        {
            if let Some(ms) = wait {
                if ms > MAX_QUEUE_WAIT_MS {
                    return Err(format!("queue_wait_ms.{} must be at most {MAX_QUEUE_WAIT_MS}", class.name()));
                }
                queue_wait[class as usize] = Duration::from_millis(ms);
            }
        }
    }
    let ejection = EjectionPolicy {
        after_failures: raw.eject_after.unwrap_or(defaults.ejection.after_failures),
        base: raw.eject_base_ms.map_or(defaults.ejection.base, Duration::from_millis),
        max: raw.eject_max_ms.map_or(defaults.ejection.max, Duration::from_millis),
    };
    if ejection.after_failures == 0 || ejection.base.is_zero() || ejection.base > ejection.max {
        return Err("eject_after must be at least 1, and 0 < eject_base_ms <= eject_max_ms".into());
    }
    let path = |field: &str, path: Option<String>| match path {
        Some(path)
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.parse::<http::Uri>().is_err() =>
        {
            Err(format!("{field} must be a path such as /{}", field.trim_end_matches("_path")))
        }
        other => Ok(other),
    };
    let interval = |field: &str, ms: Option<u64>, default: u64, range: std::ops::RangeInclusive<u64>| {
        let ms = ms.unwrap_or(default);
        if range.contains(&ms) {
            Ok(Duration::from_millis(ms))
        } else {
            Err(format!("{field} must be {} to {}", range.start(), range.end()))
        }
    };
    let dns = raw
        .dns
        .map(|name| crate::upstream::endpoint::parse(&name).map_err(|why| format!("dns {name:?} is not usable: {why}")))
        .transpose()?;
    let watch = WatchSettings {
        metrics_path: path("metrics_path", raw.metrics_path)?,
        scrape_interval: interval("scrape_interval_ms", raw.scrape_interval_ms, 1000, 100..=60_000)?,
        health_path: path("health_path", raw.health_path)?,
        health_interval: interval("health_interval_ms", raw.health_interval_ms, 5000, 100..=600_000)?,
        dns,
        dns_interval: interval("dns_interval_ms", raw.dns_interval_ms, 10_000, 1000..=3_600_000)?,
    };
    let learn_concurrency = raw.learn_concurrency.unwrap_or(false);
    if learn_concurrency && (raw.max_concurrency.is_some() || watch.metrics_path.is_none()) {
        return Err(
            "learn_concurrency needs metrics_path (the limit comes from the servers' metrics) and no max_concurrency"
                .into(),
        );
    }
    Ok(PoolSettings {
        learn_concurrency,
        watch,
        strategy: raw.picker.unwrap_or(defaults.strategy),
        max_concurrency: raw.max_concurrency,
        affinity_bound,
        queue_wait,
        ejection,
    })
}

fn client_key(raw: RawKey, models: &HashMap<String, NamedModel>) -> Result<ClientKey, String> {
    let entry = format!("keys {:?}", raw.id);
    if !is_name(&raw.id) {
        return Err(format!("{entry}: an id is letters, digits and -_.:/@+ (at most 128)"));
    }
    let digest = decode_sha256(&raw.sha256).ok_or_else(|| {
        format!("{entry}: sha256 must be 64 hex digits, the SHA-256 of the key (`aigw key new` prints one)")
    })?;
    let allowed = if raw.models.iter().any(|name| name == "*") {
        Allowed::All
    } else {
        if let Some(unknown) = raw.models.iter().find(|name| !models.contains_key(name.as_str())) {
            return Err(format!("{entry}: no model is named {unknown:?}"));
        }
        Allowed::Only(raw.models)
    };
    let networks = raw
        .networks
        .map(|networks| crate::config::parse_allowlist(&format!("{entry} networks"), &networks.join(",")))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(ClientKey { id: raw.id, digest, models: allowed, networks, class: raw.class.unwrap_or(WorkClass::Agent) })
}

fn decode_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<ModelCatalog, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("key.txt"), "file-secret\n").unwrap();
        load(&path, &|_| None, None).map_err(|e| e.to_string())
    }

    const DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn a_key_file_is_read_relative_to_the_models_file() {
        let catalog = load_text(
            "[[models]]\nname = \"m\"\nidentifier = \"anthropic/claude-sonnet-4-5\"\napi_key_file = \"key.txt\"\n",
        )
        .unwrap();
        let model = catalog.models().find(|model| model.name == "m").unwrap();
        assert_eq!(model.api_key.expose(), "file-secret");
        assert!(model.credential_source.starts_with("file ") && model.pool.is_none());
    }

    #[test]
    fn every_bad_entry_names_itself_and_the_field() {
        let cases = [
            ("[[models]]\nname = \"m\"\nidentifier = \"nope\"\n", "identifier \"nope\""),
            ("[[models]]\nname = \"a b\"\nidentifier = \"x/y\"\n", "models \"a b\""),
            ("[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"ftp://h\"\n", "endpoint \"ftp://h\""),
            ("[[models]]\nname = \"m\"\nidentifier = \"x/y\"\napi_key_env = \"UNSET\"\n", "UNSET is not set"),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\n[[models]]\nname = \"m\"\nidentifier = \"x/z\"\n",
                "named twice",
            ),
            ("[[keys]]\nid = \"k\"\nsha256 = \"abc\"\nmodels = [\"*\"]\n", "64 hex digits"),
            (
                &format!("[[keys]]\nid = \"k\"\nsha256 = \"{DIGEST}\"\nmodels = [\"ghost\"]\n"),
                "no model is named \"ghost\"",
            ),
            (
                &format!(
                    "[[keys]]\nid = \"k\"\nsha256 = \"{DIGEST}\"\nmodels = [\"*\"]\nnetworks = [\"10.0.0.0/33\"]\n"
                ),
                "networks",
            ),
            ("gateway_urls = [\"not a url\"]\n", "gateway_urls"),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\n[models.pool]\nlearn_concurrency = true\n",
                "learn_concurrency needs metrics_path",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\nendpoints = [\"http://b\"]\n",
                "not both",
            ),
            ("[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoints = []\n", "endpoints is empty"),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoints = [\"http://a/v1\", \"http://a/v1/\"]\n",
                "listed twice",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\n[models.pool]\nmax_concurrency = 0\n",
                "max_concurrency",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\n[models.pool]\naffinity_bound = 0.5\n",
                "affinity_bound",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\n[models.pool]\nqueue_wait_ms = { chat = 600001 }\n",
                "queue_wait_ms.chat",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\n[models.pool]\npicker = \"random\"\n",
                "unknown variant",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\n[models.pool]\nmetrics_path = \"metrics\"\n",
                "metrics_path",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\n[models.pool]\nscrape_interval_ms = 10\n",
                "scrape_interval_ms must be 100 to 60000",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\n[models.pool]\ndns = \"ftp://vllm\"\n",
                "dns \"ftp://vllm\"",
            ),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"http://a\"\n[models.pool]\neject_base_ms = 5000\neject_max_ms = 100\n",
                "eject_base_ms",
            ),
            ("[[model]]\nname = \"m\"\n", "unknown field"),
        ];
        for (text, expected) in cases {
            let error = load_text(text).map(|_| ()).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
