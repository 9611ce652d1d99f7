//! Hot reload under bounded concurrent load: swap a plugin, drop a corrupt file, delete and re-add
//! a plugin — no good request fails, and the new version serves after the swap.

use aigw_tests::{Setup, TestGateway, component, deploy};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const WORKERS: usize = 4;
/// Bounds on the load: whichever comes first.
const MAX_REQUESTS_PER_WORKER: usize = 5_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(60);
const TAG: &str = "# load ";

fn version_of(t: &TestGateway, provider: &str) -> Option<String> {
    t.gateway.plugins().snapshot().resolve(provider).ok().map(|p| p.identity().version.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_never_fails_a_good_request() {
    let t = Arc::new(Setup::default().plugin(component("test-guests/hostile.wasm"), "hostile.wasm").start().await);
    assert_eq!(version_of(&t, "hostile").as_deref(), Some("0.1.0"));
    let dir = t.plugins.path().to_path_buf();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (t, stop, served) = (Arc::clone(&t), Arc::clone(&stop), Arc::clone(&served));
        workers.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut failures = Vec::new();
            for n in 0..MAX_REQUESTS_PER_WORKER {
                if stop.load(Ordering::SeqCst) || started.elapsed() > MAX_LOAD_TIME {
                    break;
                }
                let mut body = t.completion_body("codestral", Some("hostile/good"), worker % 2 == 0);
                // Tag each request so the model server's record shows who sent what, in order.
                body["current_file"]["content_above_cursor"] = serde_json::json!(format!("{TAG}{worker}:{n}\n"));
                let answer = t.complete(&body).await;
                if answer.status != 200 {
                    failures.push(format!("{}: {}", answer.status, answer.text()));
                }
                served.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    let wait_served = |n: usize| {
        let served = Arc::clone(&served);
        async move {
            let target = served.load(Ordering::SeqCst) + n;
            while served.load(Ordering::SeqCst) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_served(50).await;

    // 1. Swap to version 0.2.0.
    let v2 = std::fs::read(component("test-guests/hostile-v2.wasm")).unwrap();
    deploy(&dir.join("hostile.wasm"), &v2);
    t.wait_for_plugins("hostile 0.2.0 published", |s| {
        s.resolve("hostile").is_ok_and(|p| p.identity().version == "0.2.0")
    })
    .await;
    wait_served(50).await;

    // 2. A corrupt file beside it, and corrupt bytes over the working plugin: neither replaces it.
    std::fs::write(dir.join("broken.wasm"), b"\0asm\x0d\0\x01\0 truncated").unwrap();
    deploy(&dir.join("hostile.wasm"), b"this is not a component");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(version_of(&t, "hostile").as_deref(), Some("0.2.0"), "the last good version stays");
    wait_served(50).await;

    // 3. Delete a plugin (it unloads) and add it back (it loads), while the other serves.
    std::fs::remove_file(dir.join("openai-compatible.wasm")).unwrap();
    t.wait_for_plugins("openai-compatible unloaded", |s| s.resolve("custom_openai").is_err()).await;
    let openai = std::fs::read(component("plugins/openai-compatible.wasm")).unwrap();
    deploy(&dir.join("openai-compatible.wasm"), &openai);
    t.wait_for_plugins("openai-compatible back", |s| s.resolve("custom_openai").is_ok()).await;
    wait_served(50).await;

    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    assert!(failures.is_empty(), "{} failed requests, first: {:?}", failures.len(), failures.first());
    assert!(served.load(Ordering::SeqCst) >= 200);

    // Each worker's requests are sequential, so each worker must have been served by 0.1.0, then
    // by 0.2.0, and never by 0.1.0 again once 0.2.0 served it. (Across workers the record
    // interleaves: a request that resolved 0.1.0 before the swap finishes on 0.1.0 after it.)
    let mut by_worker: Vec<Vec<(usize, String)>> = vec![Vec::new(); WORKERS];
    for request in t.model.requests() {
        let content = request.body.to_string();
        let Some(tag) = content.split(TAG).nth(1) else { continue };
        let (worker, rest) = tag.split_once(':').unwrap();
        let n: usize = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        let version = request.headers.get("x-hostile-version").unwrap().to_str().unwrap().to_string();
        by_worker[worker.parse::<usize>().unwrap()].push((n, version));
    }
    let v1_served = by_worker.iter().flatten().filter(|(_, v)| v == "0.1.0").count();
    assert!(v1_served > 0, "0.1.0 served before the swap");
    for (worker, mut served) in by_worker.into_iter().enumerate() {
        served.sort();
        let versions: Vec<&str> = served.iter().map(|(_, v)| v.as_str()).collect();
        let first_v2 =
            versions.iter().position(|v| *v == "0.2.0").unwrap_or_else(|| panic!("worker {worker} never saw 0.2.0"));
        assert!(versions[first_v2..].iter().all(|v| *v == "0.2.0"), "worker {worker} went back to 0.1.0: {versions:?}");
    }
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200, "re-added plugin serves");
}

#[tokio::test]
async fn a_file_that_never_loaded_does_not_block_the_others() {
    let t = TestGateway::start().await;
    std::fs::write(t.plugins.path().join("aaa-garbage.wasm"), b"garbage").unwrap();
    std::fs::write(t.plugins.path().join("core-module.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let report = t.gateway.plugins().reload().await;
    assert_eq!(report.rejected.len(), 2);
    assert!(report.rejected.iter().any(|(_, e)| e.to_string().contains("core Wasm module, not a component")));
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_finishes_on_the_version_it_started_with() {
    let t = Arc::new(Setup::default().plugin(component("test-guests/hostile.wasm"), "hostile.wasm").start().await);
    t.model.set_reply(aigw_tests::Reply { chunks: 4, chunk_delay: Duration::from_millis(250), ..Default::default() });
    let in_flight = {
        let t = Arc::clone(&t);
        tokio::spawn(async move { t.complete(&t.completion_body("codestral", Some("hostile/good"), true)).await })
    };
    while t.model.open_streams() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    deploy(&t.plugins.path().join("hostile.wasm"), &std::fs::read(component("test-guests/hostile-v2.wasm")).unwrap());
    t.wait_for_plugins("0.2.0 published", |s| s.resolve("hostile").is_ok_and(|p| p.identity().version == "0.2.0"))
        .await;
    assert_eq!(t.model.open_streams(), 1, "the old stream is still running after the swap");
    let answer = in_flight.await.unwrap();
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "return a + b"));
    assert_eq!(t.model.open_streams(), 0);
    assert_eq!(t.model.requests()[0].headers.get("x-hostile-version").unwrap(), "0.1.0");
    t.model.set_reply(aigw_tests::Reply::default());
    assert_eq!(t.complete(&t.completion_body("codestral", Some("hostile/good"), false)).await.status, 200);
    assert_eq!(t.model.requests()[1].headers.get("x-hostile-version").unwrap(), "0.2.0");
}

/// Several plugin directories, as the Kubernetes manifests use them (the operator's, then the
/// image's): the earlier directory wins a provider name whatever the file names, and each
/// directory is watched.
#[tokio::test]
async fn an_earlier_plugin_directory_wins_a_provider_and_every_directory_is_watched() {
    let (operator, image) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // By name alone, a-hostile (0.1.0) would win over z-hostile (0.2.0).
    std::fs::copy(component("test-guests/hostile-v2.wasm"), operator.path().join("z-hostile.wasm")).unwrap();
    std::fs::copy(component("test-guests/hostile.wasm"), image.path().join("a-hostile.wasm")).unwrap();
    let dirs = format!("{}:{}", operator.path().display(), image.path().display());
    let t = Setup::default().env("AIGW_PLUGINS__DIR", &dirs).start().await;
    assert_eq!(version_of(&t, "hostile").as_deref(), Some("0.2.0"), "the operator's directory comes first");
    assert_eq!(version_of(&t, "custom_openai"), None, "the default directory is replaced, not added");

    std::fs::remove_file(operator.path().join("z-hostile.wasm")).unwrap();
    t.wait_for_plugins("the image's hostile plugin", |s| {
        s.resolve("hostile").is_ok_and(|p| p.identity().version == "0.1.0")
    })
    .await;
    deploy(
        &image.path().join("openai-compatible.wasm"),
        &std::fs::read(component("plugins/openai-compatible.wasm")).unwrap(),
    );
    t.wait_for_plugins("a plugin added to the second directory", |s| s.resolve("custom_openai").is_ok()).await;
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}
