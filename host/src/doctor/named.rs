//! `aigw doctor --model NAME`: a named model of the models file checked end to end as the model
//! API would serve it: plugin, each model server's egress, reachability, health and load, a
//! short answer, and a tool call.

use super::loads::Loaded;
use super::model::{egress_and_reach, test_state};
use super::{Section, Step};
use crate::config::Config;
use crate::models::ModelCatalog;
use crate::pipeline::{self, ChatAnswer, ModelTarget};
use crate::plugins::{chat, wit};
use crate::telemetry::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tool the test asks the model to call.
const TOOL: &str = "aigw_doctor_echo";

/// Check the named model `name`, reading credentials' variables from `env`.
pub(super) async fn check(
    config: Config,
    name: &str,
    env: &[(String, String)],
    loaded: Loaded,
    metrics: Arc<Metrics>,
) -> Section {
    let mut section = Section::new(format!("Named model {name}"));
    let Some(path) = config.model_api.file.clone() else {
        section.push(Step::fail("AIGW_MODELS__FILE is not set", "name the models file that declares this model"));
        return section;
    };
    let lookup = |variable: &str| env.iter().find(|(key, _)| key == variable).map(|(_, value)| value.clone());
    let catalog = match ModelCatalog::load(&path, &lookup, None) {
        Ok(catalog) => catalog,
        Err(error) => {
            section.push(Step::fail(error.to_string(), "see the model API section above"));
            return section;
        }
    };
    let Some(named) = catalog.models().find(|model| model.name == name) else {
        let names: Vec<&str> = catalog.models().map(|model| model.name.as_str()).collect();
        section.push(Step::fail(
            format!("no model is named {name:?} in {}", path.display()),
            format!("the models file names: {}", names.join(", ")),
        ));
        return section;
    };
    let target = ModelTarget::named(named, name);
    let plugin = match loaded.registry.snapshot().resolve(&target.provider) {
        Ok(plugin) => plugin,
        Err(error) => {
            section.push(Step::fail(format!("provider {:?}: {error}", target.provider), "add the provider's plugin"));
            return section;
        }
    };
    let identity = plugin.identity().clone();
    let mut found = Step::ok(format!(
        "{name}: {}/{} through plugin {} {}",
        target.provider, target.model, identity.name, identity.version
    ))
    .detail(format!("credential: {}", named.credential_source));
    if let Some(missing) = identity.missing() {
        found = found.detail(format!("the plugin was built for aigw:plugin@{}: {missing}", identity.wit_version));
    }
    section.push(found);
    let timeout = config.model_api.total_timeout.min(Duration::from_secs(60));
    let state = match test_state(config, loaded, metrics) {
        Ok(state) => state,
        Err(error) => {
            section.push(Step::fail(format!("the outbound client cannot be set up: {error}"), "report this as a bug"));
            return section;
        }
    };
    let state = state.for_worker(0);
    let endpoints = match &named.pool {
        Some(pool) => {
            crate::fleet::list_members(pool, state.upstream).await;
            let members: Vec<http::Uri> = pool.members().iter().map(|member| member.endpoint().clone()).collect();
            if members.is_empty() {
                section.push(Step::fail(
                    "the pool has no member: its DNS name resolves to no address the egress policy allows",
                    "check the name in `dns` and AIGW_EGRESS__ALLOW",
                ));
                return section;
            }
            members
        }
        None => match pipeline::endpoint_for(&target, &identity, &state.config.aws) {
            Ok(endpoint) => vec![endpoint],
            Err(error) => {
                section
                    .push(Step::fail(format!("no endpoint: {error}"), "give the model an endpoint in the models file"));
                return section;
            }
        },
    };
    let mut reachable = 0;
    for endpoint in &endpoints {
        if endpoints.len() > 1 {
            section.push(Step::ok(format!("member {endpoint}")));
        }
        if egress_and_reach(&state.config, endpoint, &mut section).await.is_some() {
            reachable += 1;
            if let Some(pool) = &named.pool {
                section.push(member_state(pool, endpoint, state.upstream).await);
            }
        }
    }
    if reachable == 0 {
        return section;
    }
    let started = Instant::now();
    match pipeline::converse(&state, &target, request(&target.model, false), timeout, chat_work()).await {
        Ok(ChatAnswer::Whole { completion, .. }) => section.push(Step::ok(format!(
            "answered in {} ms: {:?}",
            started.elapsed().as_millis(),
            completion.content.unwrap_or_default()
        ))),
        Ok(ChatAnswer::Stream { .. }) => section.push(Step::ok("answered (as a stream)")),
        Err(error) => {
            section.push(Step::fail(
                format!("the test conversation failed: {error}"),
                "check the model's identifier, endpoint and credential in the models file",
            ));
            return section;
        }
    }
    let started = Instant::now();
    section.push(match pipeline::converse(&state, &target, request(&target.model, true), timeout, chat_work()).await {
        Ok(ChatAnswer::Whole { completion, .. }) => match completion.tool_calls.first() {
            Some(call) if call.name == TOOL => Step::ok(format!(
                "tool call answered in {} ms: {}({})",
                started.elapsed().as_millis(),
                call.name,
                call.arguments
            )),
            Some(call) => Step::warn(
                format!("the model called {:?}, not the tool it was offered", call.name),
                "agents need a model that follows tool schemas",
            ),
            None => Step::warn(
                "the model answered in text instead of calling the tool it was offered",
                "Agentic Chat and every Duo agent and flow call tools: serve a model with tool calling (for \
                 vLLM, start it with --enable-auto-tool-choice and the model's --tool-call-parser)",
            ),
        },
        Ok(ChatAnswer::Stream { .. }) => Step::ok("tool call answered (as a stream)"),
        Err(error) => Step::fail(
            format!("a request offering a tool failed: {error}"),
            "the provider or its plugin cannot carry tools; Agentic Chat and Duo agents need them",
        ),
    });
    section
}

/// What the member at `endpoint` says of its health and load, as the pool's settings read them.
async fn member_state(pool: &crate::fleet::Pool, endpoint: &http::Uri, upstream: &crate::upstream::Upstream) -> Step {
    let report = crate::fleet::read_member(pool, endpoint, upstream).await;
    let mut facts = Vec::new();
    match report.healthy {
        Some(Ok(())) => facts.push("health endpoint: passing".to_string()),
        Some(Err(why)) => {
            return Step::fail(
                format!("{endpoint}: its health endpoint fails: {why}"),
                "the pool ejects a member whose health check fails: start the server, or fix health_path",
            );
        }
        None => facts.push("no health_path: health is judged by the answers".to_string()),
    }
    match report.load {
        Some(Ok(load)) => facts.push(format!(
            "load: {} waiting, {} running, KV cache {:.0}% used",
            load.waiting,
            load.running,
            load.kv_cache_usage * 100.0
        )),
        Some(Err(why)) => {
            return Step::warn(
                format!("{endpoint}: its metrics cannot be read: {why}"),
                "the pool then picks by its own count of requests in flight; check metrics_path (vLLM: /metrics)",
            );
        }
        None => facts.push("no metrics_path: picked by the gateway's own count of requests in flight".to_string()),
    }
    Step::ok(format!("{endpoint}: {}", facts.join("; ")))
}

/// A short conversation; with `tool`, one function the model is asked to call.
fn request(model: &str, tool: bool) -> chat::ChatRequest {
    let text = if tool { "Call the tool with the value 42." } else { "Reply with the single word OK." };
    let tools = if tool {
        vec![chat::Tool {
            name: TOOL.to_string(),
            description: Some("Echo a value back.".to_string()),
            parameters: Some(
                r#"{"type":"object","properties":{"value":{"type":"integer"}},"required":["value"]}"#.into(),
            ),
            strict: None,
        }]
    } else {
        Vec::new()
    };
    chat::ChatRequest {
        model: model.to_string(),
        messages: vec![chat::ChatMessage {
            role: chat::ChatRole::User,
            content: Some(chat::Content::Text(text.to_string())),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }],
        tools,
        tool_choice: None,
        parallel_tool_calls: None,
        sampling: wit::Sampling { max_tokens: Some(64), temperature: Some(0.0), top_p: None, stop: Vec::new() },
        seed: None,
        response_format: None,
        user: None,
        extra: None,
        stream: false,
    }
}

/// Doctor's calls wait in a saturated pool as a chat turn would.
fn chat_work() -> crate::fleet::Work {
    crate::fleet::Work::of(crate::fleet::WorkClass::Chat)
}
