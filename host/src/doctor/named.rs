//! `aigw doctor --model NAME`: a named model of the models file checked end to end as the model
//! API would serve it: plugin, egress, reachability, a short answer, and a tool call.

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
    let catalog = match ModelCatalog::load(&path, &lookup) {
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
    let endpoint = match pipeline::endpoint_for(&target, &identity, &config.aws) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            section.push(Step::fail(format!("no endpoint: {error}"), "give the model an endpoint in the models file"));
            return section;
        }
    };
    if egress_and_reach(&config, &endpoint, &mut section).await.is_none() {
        return section;
    }
    let timeout = config.model_api.total_timeout.min(Duration::from_secs(60));
    let state = match test_state(config, loaded, metrics) {
        Ok(state) => state,
        Err(error) => {
            section.push(Step::fail(format!("the outbound client cannot be set up: {error}"), "report this as a bug"));
            return section;
        }
    };
    let state = state.for_worker(0);
    let started = Instant::now();
    match pipeline::converse(&state, &target, request(&target.model, false), timeout).await {
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
    section.push(match pipeline::converse(&state, &target, request(&target.model, true), timeout).await {
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
