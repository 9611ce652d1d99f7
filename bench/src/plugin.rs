//! One plugin round trip as the gateway does it per request (fresh store + instance,
//! `build-request`, `parse-response`) for an ~8 KB completion request, against the same
//! translation called natively.

use crate::load::summarize;
use crate::workload::{ANSWER, native_request, prefix, wit_request};
use aigw::plugins::{PluginRuntime, SandboxLimits};
use anyhow::Context as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Run it and write `output`.
pub async fn run(component: PathBuf, iterations: usize, output: PathBuf) -> anyhow::Result<()> {
    let iterations = iterations.clamp(100, 1_000_000);
    let bytes = std::fs::read(&component).with_context(|| format!("{} (run `make build`)", component.display()))?;
    let runtime = PluginRuntime::new(SandboxLimits::default())?;
    let plugin = runtime.load(bytes).await?;
    let prefix = prefix();
    let request = wit_request(&prefix);
    let native_req = native_request(&prefix);
    let request_bytes =
        openai_compatible::translate::build_request(&native_req).map_err(|e| anyhow::anyhow!("{e:?}"))?.body.len();

    let mut wasm = Vec::with_capacity(iterations);
    let mut phases: [Vec<Duration>; 4] = std::array::from_fn(|_| Vec::with_capacity(iterations));
    let mut native_samples = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
        let mut session = plugin.session().await?;
        let instantiated = started.elapsed();
        let built = session.build_request(&request).await?;
        let after_build = started.elapsed();
        let parsed = session.parse_response(ANSWER.as_bytes()).await?;
        let after_parse = started.elapsed();
        drop(session);
        let total = started.elapsed();

        let _ = std::hint::black_box((built, parsed));

        let started = Instant::now();
        let built = openai_compatible::translate::build_request(&native_req);
        let parsed = openai_compatible::translate::parse_response(ANSWER.as_bytes());
        let native_total = started.elapsed();
        let _ = std::hint::black_box((built, parsed));

        if i >= iterations / 10 {
            wasm.push(total);
            let splits = [instantiated, after_build - instantiated, after_parse - after_build, total - after_parse];
            for (phase, split) in phases.iter_mut().zip(splits) {
                phase.push(split);
            }
            native_samples.push(native_total);
        }
    }
    let wasm = summarize(wasm);
    let [instantiate, build, parse, teardown] = phases.map(summarize);
    let native_summary = summarize(native_samples);
    println!("plugin round trip: fresh store + build-request + parse-response, {iterations} iterations");
    println!("  request JSON body: {request_bytes} bytes; answer {} bytes", ANSWER.len());
    println!("  {:<28} {:>9} {:>9} {:>9}", "", "p50 µs", "p99 µs", "mean µs");
    let rows = [
        ("wasm (fresh store per call)", wasm),
        ("  instantiate", instantiate),
        ("  build-request", build),
        ("  parse-response", parse),
        ("  store teardown", teardown),
        ("native Rust", native_summary),
    ];
    for (name, s) in rows {
        println!("  {name:<28} {:>9.1} {:>9.1} {:>9.1}", s.p50, s.p99, s.mean);
    }
    let (event_wasm, event_native) = stream_event(&plugin, iterations).await?;
    println!(
        "  one stream event in an open store ({} bytes, every piece after a stream's first): \
         wasm p50 {:.2} µs, mean {:.2} µs; native p50 {:.2} µs",
        STREAM_EVENT.len(),
        event_wasm.p50,
        event_wasm.mean,
        event_native.p50
    );
    let ratio = wasm.p50 / native_summary.p50;
    // Both batches stay alive together, so neither lands on slots the other has made resident.
    let (fresh_store, fresh_batch) = resident_per_store(&plugin, 400, false).await?;
    let (live_store, live_batch) = resident_per_store(&plugin, 400, true).await?;
    drop((fresh_batch, live_batch));
    println!(
        "  resident memory per store: {:.1} KiB instantiated, {:.1} KiB once it has parsed one stream event",
        fresh_store as f64 / 1024.0,
        live_store as f64 / 1024.0
    );
    println!(
        "  ratio wasm/native (p50): {ratio:.2}x; added per request (p50): {:.1} µs",
        wasm.p50 - native_summary.p50
    );
    let json = serde_json::json!({
        "benchmark": "plugin-roundtrip",
        "iterations": iterations,
        "request_body_bytes": request_bytes,
        "wasm_us": {"p50": wasm.p50, "p99": wasm.p99, "mean": wasm.mean},
        "phases_p50_us": {"instantiate": instantiate.p50, "build_request": build.p50,
                          "parse_response": parse.p50, "teardown": teardown.p50},
        "native_us": {"p50": native_summary.p50, "p99": native_summary.p99, "mean": native_summary.mean},
        "ratio_p50": ratio,
        "stream_event_us": {"wasm": event_wasm, "native": event_native},
        "resident_bytes_per_store": {"instantiated": fresh_store, "after_one_stream_event": live_store},
    });
    crate::write_results(&output, &json)?;
    Ok(())
}

/// A streamed piece as an OpenAI-compatible server sends it (the mock's chat chunk, with a model
/// name of typical length).
const STREAM_EVENT: &[u8] = br#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":"codestral-22b","choices":[{"index":0,"delta":{"content":"xx"},"finish_reason":null}]}"#;

/// `parse-event` of one [`STREAM_EVENT`] in a store kept open across calls, as a stream's
/// pieces after its first are parsed, against the same parse in native Rust: the least each
/// further piece of a stream costs in the sandbox.
async fn stream_event(
    plugin: &aigw::plugins::LoadedPlugin,
    iterations: usize,
) -> anyhow::Result<(crate::load::Summary, crate::load::Summary)> {
    let mut session = plugin.session().await?;
    let (mut wasm, mut native) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
        let chunk = session.parse_event(None, STREAM_EVENT).await?;
        let in_wasm = started.elapsed();
        anyhow::ensure!(chunk.text == "xx", "the plugin parsed {:?} from the event", chunk.text);
        let started = Instant::now();
        let parsed = openai_compatible::translate::parse_event(None, STREAM_EVENT);
        let in_native = started.elapsed();
        let _ = std::hint::black_box(parsed);
        if i >= iterations / 10 {
            wasm.push(in_wasm);
            native.push(in_native);
        }
    }
    Ok((summarize(wasm), summarize(native)))
}

/// Resident memory one store holds, as an open stream holds it: `count` stores (each having parsed
/// one stream event when `used`), measured together and returned alive.
async fn resident_per_store(
    plugin: &aigw::plugins::LoadedPlugin,
    count: usize,
    used: bool,
) -> anyhow::Result<(u64, Vec<aigw::plugins::PluginSession>)> {
    let event = br#"{"choices":[{"index":0,"delta":{"content":"ret"},"finish_reason":null}]}"#;
    let pid = std::process::id();
    let before = crate::procfs::rss(pid);
    let mut stores = Vec::with_capacity(count);
    for _ in 0..count {
        let mut session = plugin.session().await?;
        if used {
            session.parse_event(None, event).await?;
        }
        stores.push(session);
    }
    let held = crate::procfs::rss(pid);
    Ok((held.saturating_sub(before) / count as u64, stores))
}
