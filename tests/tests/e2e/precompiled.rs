//! The cache of compiled plugins (`AIGW_PLUGINS__CACHE_DIR`): a restart loads what an earlier
//! run compiled, a damaged entry is compiled again and replaced, a swapped plugin's old entry goes.

use aigw_tests::{Setup, TestGateway, component, with_new_digest};
use bytes::Bytes;
use http::Method;
use std::path::Path;
use std::time::Duration;

async fn metric(t: &TestGateway, series: &str) -> f64 {
    let text = t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text();
    aigw_tests::metric(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// The openai-compatible and Ollama plugins, compiled code kept in `cache`.
async fn start(cache: &Path) -> TestGateway {
    Setup::default()
        .plugin(component("plugins/ollama.wasm"), "ollama.wasm")
        .env("AIGW_PLUGINS__CACHE_DIR", &cache.display().to_string())
        .start()
        .await
}

fn entries(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    entries.sort();
    entries
}

async fn serves(t: &TestGateway) {
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn a_restart_loads_compiled_plugins_from_the_cache_and_recompiles_a_damaged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("compiled");
    const LOADED: &str = "aigw_plugin_reloads_total{outcome=\"loaded\"}";
    const FROM_CACHE: &str = "aigw_plugin_precompiled_loads_total";

    let cold = start(&cache).await;
    assert_eq!((metric(&cold, LOADED).await, metric(&cold, FROM_CACHE).await), (2.0, 0.0), "a cold cache compiles");
    assert_eq!(entries(&cache).len(), 2, "and keeps both compilations");
    serves(&cold).await;
    cold.gateway.shutdown().await;

    let warm = start(&cache).await;
    assert_eq!(
        (metric(&warm, LOADED).await, metric(&warm, FROM_CACHE).await),
        (2.0, 2.0),
        "a restart compiles nothing"
    );
    serves(&warm).await;
    warm.gateway.shutdown().await;

    // One bit flipped in the middle of an entry's machine code.
    let damaged = entries(&cache)[0].clone();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&damaged, &bytes).unwrap();
    let after_damage = start(&cache).await;
    assert_eq!(metric(&after_damage, FROM_CACHE).await, 1.0, "the damaged entry is not loaded");
    assert_eq!(metric(&after_damage, LOADED).await, 2.0, "its plugin is compiled instead");
    serves(&after_damage).await;
    after_damage.gateway.shutdown().await;
    let repaired = start(&cache).await;
    assert_eq!(metric(&repaired, FROM_CACHE).await, 2.0, "and its entry was replaced");

    // A new build of a plugin: its compilation replaces the old one's entry.
    let before = entries(&cache);
    let openai = std::fs::read(component("plugins/openai-compatible.wasm")).unwrap();
    aigw_tests::deploy(&repaired.plugins.path().join("openai-compatible.wasm"), &with_new_digest(&openai, "rebuilt"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&repaired, LOADED).await < 3.0 {
        assert!(tokio::time::Instant::now() < deadline, "the new build was loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serves(&repaired).await;
    let after = entries(&cache);
    assert_eq!(after.len(), 2, "one entry per loaded plugin: {after:?}");
    assert_eq!(after.iter().filter(|entry| before.contains(entry)).count(), 1, "the old build's entry is gone");
}

#[tokio::test]
async fn a_cache_directory_that_cannot_be_made_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let env = vec![
        ("AIGW_GITLAB_URL".to_string(), "http://127.0.0.1:9".to_string()),
        ("AIGW_FASTAPI__API_PORT".to_string(), "0".to_string()),
        ("AIGW_PLUGINS__DIR".to_string(), aigw_tests::workspace().join("target/plugins").display().to_string()),
        ("AIGW_PLUGINS__CACHE_DIR".to_string(), file.join("cache").display().to_string()),
    ];
    let config = aigw::config::Config::load(None, env, false).unwrap();
    let Err(error) = aigw::Gateway::start(config, aigw::StartOptions::default()).await else {
        panic!("a cache directory inside a file was accepted");
    };
    assert!(error.to_string().contains("AIGW_PLUGINS__CACHE_DIR"), "{error}");
}
