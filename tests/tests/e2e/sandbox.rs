//! The plugin sandbox: a runaway loop, memory past the cap and a trap each fail their own request
//! with a generic 502, while good requests through the same plugin keep succeeding.

use aigw_tests::{Setup, TestGateway, component};
use serde_json::json;
use std::time::{Duration, Instant};

const GENERIC: &str = "The model provider plugin failed to handle this request";

async fn hostile_gateway(extra: &[(&str, &str)]) -> TestGateway {
    let mut setup = Setup::default().plugin(component("test-guests/hostile.wasm"), "hostile.wasm");
    for (name, value) in extra {
        setup = setup.env(name, value);
    }
    setup.start().await
}

async fn hostile(t: &TestGateway, behaviour: &str) -> aigw_tests::Answer {
    t.complete(&t.completion_body("codestral", Some(&format!("hostile/{behaviour}")), false)).await
}

#[tokio::test]
async fn each_misbehaviour_fails_only_its_request() {
    let t = hostile_gateway(&[]).await;
    for behaviour in ["loop", "oom", "trap"] {
        let answer = hostile(&t, behaviour).await;
        assert_eq!(answer.status, 502, "{behaviour}: {}", answer.text());
        assert_eq!(answer.json(), json!({"detail": GENERIC}), "{behaviour}: no internals leak");
        // The same plugin, a fresh store: the next good request works.
        let good = hostile(&t, "good").await;
        assert_eq!(good.status, 200, "after {behaviour}: {}", good.text());
    }
    assert_eq!(t.model.requests().len(), 3, "only the good requests reached the model");
}

#[tokio::test]
async fn good_requests_succeed_while_bad_ones_run_concurrently() {
    let t = std::sync::Arc::new(hostile_gateway(&[]).await);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let behaviour = ["loop", "oom", "trap", "good", "good", "good"][i % 6];
        let bad = std::sync::Arc::clone(&t);
        tasks.push(tokio::spawn(async move { (behaviour, hostile(&bad, behaviour).await.status) }));
        let good = std::sync::Arc::clone(&t);
        tasks.push(tokio::spawn(async move {
            ("openai", good.complete(&good.completion_body("codestral", None, false)).await.status)
        }));
    }
    for task in tasks {
        let (behaviour, status) = task.await.unwrap();
        let expected = if matches!(behaviour, "good" | "openai") { 200 } else { 502 };
        assert_eq!(status, expected, "{behaviour}");
    }
}

/// Stores are instantiated ahead of requests, but each is used by one request only: the guest's
/// own count of the requests it built is 1 for every one of them, one after another (each
/// finding a store made ready when the one before ended) and many at once.
#[tokio::test]
async fn every_request_gets_a_store_no_other_request_touched() {
    let t = std::sync::Arc::new(hostile_gateway(&[]).await);
    for _ in 0..12 {
        assert_eq!(hostile(&t, "good").await.status, 200);
    }
    let burst: Vec<_> = (0..24)
        .map(|_| {
            let t = std::sync::Arc::clone(&t);
            tokio::spawn(async move { hostile(&t, "good").await.status })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    let requests = t.model.requests();
    assert_eq!(requests.len(), 36);
    for request in requests {
        assert_eq!(request.headers.get("x-hostile-builds").unwrap(), "1", "a store served a second request");
    }
}

#[tokio::test]
async fn call_deadline_obeyed_and_violated() {
    let t = hostile_gateway(&[("AIGW_PLUGINS__CALL_TIMEOUT_MS", "200")]).await;
    let started = Instant::now();
    assert_eq!(hostile(&t, "loop").await.status, 502);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "stopped at the deadline, not before ({took:?})");
    assert!(took < Duration::from_secs(5), "a runaway call is stopped ({took:?})");
    assert_eq!(hostile(&t, "good").await.status, 200, "a normal call fits well within 200 ms");
}

#[tokio::test]
async fn the_deadline_holds_after_an_idle_spell_put_the_epoch_ticker_to_sleep() {
    use aigw::plugins::{PluginError, PluginRuntime, SandboxLimits, wit};
    // An idle gateway's ticker sleeps; the first store after must wake it, or this runaway call
    // would never be stopped.
    let runtime =
        PluginRuntime::new(SandboxLimits { call_deadline: Duration::from_millis(100), ..Default::default() }).unwrap();
    let plugin = runtime.load(std::fs::read(component("test-guests/hostile.wasm")).unwrap()).await.unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    while !runtime.epoch_ticker_asleep() {
        assert!(Instant::now() < give_up, "the ticker of an idle runtime goes to sleep");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runaway = wit::ModelRequest {
        model: "loop".into(),
        messages: Vec::new(),
        fill_in_middle: None,
        sampling: wit::Sampling { max_tokens: None, temperature: None, top_p: None, stop: Vec::new() },
        stream: false,
    };
    // On a thread of its own: were the ticker not woken, the call would spin forever and the
    // test must fail, not hang.
    let (done, outcome) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let calling = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = calling.block_on(async { plugin.session().await?.build_request(&runaway).await });
        let _ = done.send(result.map(|_| ()));
    });
    let error = outcome.recv_timeout(Duration::from_secs(10)).expect("the runaway call was stopped").unwrap_err();
    assert!(matches!(error, PluginError::Deadline(_)), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(100), "not before the deadline");
    assert!(!runtime.epoch_ticker_asleep());
}

#[tokio::test]
async fn memory_cap_obeyed_and_violated() {
    let t = hostile_gateway(&[("AIGW_PLUGINS__MEMORY_LIMIT_MB", "16")]).await;
    assert_eq!(hostile(&t, "oom").await.status, 502, "growing past 16 MiB fails");
    assert_eq!(hostile(&t, "good").await.status, 200, "a normal call fits in 16 MiB");
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200);
}

#[tokio::test]
async fn plugin_output_goes_to_the_log_not_the_answer() {
    let t = hostile_gateway(&[]).await;
    let answer = hostile(&t, "print").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(!answer.text().contains("hostile guest says"));
}

#[tokio::test]
async fn a_component_that_imports_sockets_is_refused_at_load() {
    let t = Setup::default().plugin(component("test-guests/networked.wasm"), "networked.wasm").start().await;
    let snapshot = t.gateway.plugins().snapshot();
    assert!(snapshot.resolve("networked").is_err(), "never loaded");
    assert_eq!(snapshot.provider_names(), ["custom_openai", "openai"], "the others load regardless");
    let report = t.gateway.plugins().reload().await;
    let (_, error) = report.rejected.iter().find(|(path, _)| path.ends_with("networked.wasm")).unwrap();
    assert!(error.to_string().contains("wasi:sockets"), "{error}");
}

#[tokio::test]
async fn a_component_built_against_another_wit_version_is_refused_with_the_versions_named() {
    let t = Setup::default().plugin(component("test-guests/stale.wasm"), "stale.wasm").start().await;
    let report = t.gateway.plugins().reload().await;
    let (_, error) = report.rejected.iter().find(|(path, _)| path.ends_with("stale.wasm")).unwrap();
    let error = error.to_string();
    assert!(error.contains("aigw:plugin/types@0.1.0") && error.contains("aigw:plugin@0.4.0"), "{error}");
    assert_eq!(t.gateway.plugins().snapshot().provider_names(), ["custom_openai", "openai"]);
}

#[tokio::test]
async fn plugins_cannot_set_framing_or_credential_headers_or_leave_the_endpoint() {
    let t = hostile_gateway(&[]).await;
    let answer = hostile(&t, "headers").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let upstream = &t.model.requests()[0];
    let header = |name: &str| upstream.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(header("authorization").as_deref(), Some("Bearer sk-test-key"), "only the host injects credentials");
    assert_eq!(header("host"), Some(t.model.addr().to_string()));
    assert_eq!(header("x-api-key"), None);
    assert_eq!(header("transfer-encoding"), None);
    assert_eq!(header("x-custom").as_deref(), Some("kept"), "ordinary headers pass");

    let escape = hostile(&t, "escape").await;
    assert_eq!(escape.status, 502, "{}", escape.text());
    assert_eq!(t.model.requests().len(), 1, "nothing was sent for the escaping path");
}

#[tokio::test]
async fn plugin_headers_are_limited_in_count_and_size_and_never_split() {
    let t = hostile_gateway(&[]).await;
    let at_limit = hostile(&t, "headers-at-limit").await;
    assert_eq!(at_limit.status, 200, "{}", at_limit.text());
    assert_eq!(t.model.requests()[0].headers.get("x-ok-31").unwrap(), &"y".repeat(100));
    for misbehaviour in ["header-flood", "header-crlf"] {
        let answer = hostile(&t, misbehaviour).await;
        assert_eq!(answer.status, 502, "{misbehaviour}: {}", answer.text());
    }
    assert_eq!(t.model.requests().len(), 1, "nothing was sent for the refused requests");
}
