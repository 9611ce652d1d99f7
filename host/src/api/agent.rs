//! `POST /v2/chat/agent`: one step of Duo Chat's ReAct loop. Renders the conversation (with the
//! scratchpad of earlier actions and observations, the page or file in view, additional context,
//! and the tools the caller's scopes allow) and streams the model's text back as NDJSON events.

use super::model::ModelMetadata;
use super::parse_json;
use super::react::ReactParser;
use crate::auth::{AuthError, Principal};
use crate::error::GatewayError;
use crate::pipeline::{self, ChunkStream, Deadline, ModelJob};
use crate::plugins::{PluginError, wit};
use crate::response::Body;
use crate::state::RequestState;
use crate::upstream::UpstreamError;
use bytes::Bytes;
use hyper::body::Frame;
use serde::Deserialize;
use serde_json::{Value, json};

/// Tools the agent may offer: (name, scope that grants it, description for the model).
const TOOLS: [(&str, &str, &str); 6] = [
    (
        "issue_reader",
        "ask_issue",
        "Reads a GitLab issue (description, comments, labels). Input: the issue reference or URL and what you want to know about it.",
    ),
    (
        "epic_reader",
        "ask_epic",
        "Reads a GitLab epic and its child items. Input: the epic reference or URL and what you want to know about it.",
    ),
    (
        "merge_request_reader",
        "ask_merge_request",
        "Reads a merge request (description, diff summary, discussion). Input: the merge request reference or URL and what you want to know.",
    ),
    (
        "commit_reader",
        "ask_commit",
        "Reads a commit (message and changes). Input: the commit SHA or URL and what you want to know.",
    ),
    ("build_reader", "ask_build", "Reads a CI job and its log. Input: the job URL or ID and what you want to know."),
    ("gitlab_documentation", "documentation_search", "Searches GitLab's documentation. Input: a search question."),
];

/// The ReAct prompt: the system message, per family (`chat/react/<family>`, else `base`).
const PROMPT_ID: &str = "chat/react";

#[derive(Debug, Deserialize)]
struct AgentRequest {
    messages: Vec<AgentMessage>,
    model_metadata: Option<ModelMetadata>,
    #[serde(default)]
    unavailable_resources: Vec<String>,
    /// Older GitLab instances send the step in progress here rather than in the last message.
    options: Option<AgentOptions>,
}

#[derive(Debug, Deserialize)]
struct AgentOptions {
    agent_scratchpad: Option<OptionsScratchpad>,
}

#[derive(Debug, Deserialize)]
struct OptionsScratchpad {
    #[serde(default)]
    steps: Vec<OptionsStep>,
}

/// A step as older instances send it: the action's fields and the observation side by side.
#[derive(Debug, Deserialize)]
struct OptionsStep {
    #[serde(default)]
    thought: String,
    tool: String,
    tool_input: String,
    observation: String,
}

impl From<OptionsStep> for ScratchpadStep {
    fn from(step: OptionsStep) -> Self {
        ScratchpadStep {
            action: ScratchpadAction { thought: step.thought, tool: step.tool, tool_input: step.tool_input },
            observation: step.observation,
        }
    }
}

#[derive(Debug, Deserialize)]
struct AgentMessage {
    role: String,
    content: Option<String>,
    current_file: Option<CurrentFile>,
    #[serde(default)]
    additional_context: Vec<AdditionalContext>,
    #[serde(default)]
    agent_scratchpad: Vec<ScratchpadStep>,
}

#[derive(Debug, Deserialize)]
struct CurrentFile {
    file_path: String,
    #[serde(default)]
    data: String,
    #[serde(default)]
    selected_code: bool,
}

#[derive(Debug, Deserialize)]
struct AdditionalContext {
    category: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    content: String,
}

#[derive(Debug, Deserialize)]
struct ScratchpadStep {
    action: ScratchpadAction,
    observation: String,
}

#[derive(Debug, Deserialize)]
struct ScratchpadAction {
    #[serde(default)]
    thought: String,
    tool: String,
    tool_input: String,
}

/// A conversation the agent cannot continue. GitLab's gateway finds these while its stream runs,
/// so they are `error` events in a 200 stream, with GitLab's texts.
#[derive(Debug)]
struct UnsupportedConversation(&'static str);

/// Every category of additional context needs its own scope (`include_<category>_context`), as
/// in GitLab's gateway: without it the request is refused before any model call, rather than
/// the context being dropped without a word.
fn authorize_additional_context(messages: &[AgentMessage], principal: &Principal) -> Result<(), GatewayError> {
    for item in messages.iter().flat_map(|message| &message.additional_context) {
        let scope = format!("include_{}_context", item.category.to_ascii_lowercase());
        if !principal.has_scope(&scope) {
            return Err(AuthError::MissingContextScope(scope).into());
        }
    }
    Ok(())
}

/// A user message with the file in view and the additional context (which
/// [`authorize_additional_context`] has allowed).
fn user_content(message: &AgentMessage) -> String {
    let mut content = message.content.clone().unwrap_or_default();
    if let Some(file) = &message.current_file {
        let what = if file.selected_code { "selected code" } else { "file" };
        content.push_str(&format!(
            "\n\nThe user is looking at this {what} from {}:\n<code>\n{}\n</code>",
            file.file_path, file.data
        ));
    }
    for item in &message.additional_context {
        content.push_str(&format!(
            "\n\n<additional_context category=\"{}\" id=\"{}\">\n{}\n</additional_context>",
            item.category, item.id, item.content
        ));
    }
    content
}

/// An action the model took and the observation GitLab made for it: the assistant's action,
/// then the observation as the user's answer. Markdown-escaped underscores (`issue\\_reader`)
/// go to the model unescaped, as GitLab's gateway sends them.
fn render_step(step: &ScratchpadStep, rendered: &mut Vec<wit::Message>) {
    let a = &step.action;
    rendered.push(wit::Message {
        role: wit::Role::Assistant,
        content: format!(
            "Thought: {}\nAction: {}\nAction Input: {}",
            a.thought.replace("\\_", "_"),
            a.tool.replace("\\_", "_"),
            a.tool_input
        ),
    });
    rendered.push(wit::Message { role: wit::Role::User, content: format!("Observation: {}", step.observation) });
}

/// The roles a message may have; anything else is a validation error, as in GitLab's schema.
fn check_roles(messages: &[AgentMessage]) -> Result<(), GatewayError> {
    match messages.iter().find(|m| !matches!(m.role.as_str(), "user" | "assistant" | "system")) {
        Some(message) => Err(GatewayError::Unprocessable(format!("unknown message role {:?}", message.role))),
        None => Ok(()),
    }
}

/// The conversation as chat messages: the scratchpad of the step in progress becomes assistant
/// actions answered by user observations. The step in progress comes from `options` when an
/// older instance sent it there.
fn conversation(
    messages: &[AgentMessage],
    options_steps: &[ScratchpadStep],
) -> Result<Vec<wit::Message>, UnsupportedConversation> {
    let mut rendered = Vec::new();
    for message in messages {
        match message.role.as_str() {
            "user" => rendered.push(wit::Message { role: wit::Role::User, content: user_content(message) }),
            "assistant" => {
                if let Some(content) = &message.content {
                    rendered.push(wit::Message { role: wit::Role::Assistant, content: content.clone() });
                }
                for step in &message.agent_scratchpad {
                    render_step(step, &mut rendered);
                }
            }
            // The gateway writes the system prompt; a caller's own is not accepted.
            _ => return Err(UnsupportedConversation("Unsupported message")),
        }
    }
    for step in options_steps {
        render_step(step, &mut rendered);
    }
    match rendered.last() {
        Some(last) if matches!(last.role, wit::Role::User) => Ok(rendered),
        _ => Err(UnsupportedConversation("Last message must be a human message")),
    }
}

/// Handle one agent step.
pub(crate) async fn handle(
    state: &RequestState<'_>,
    principal: &Principal,
    body: &[u8],
) -> Result<http::Response<Body>, GatewayError> {
    let mut request: AgentRequest = parse_json(body)?;
    check_roles(&request.messages)?;
    authorize_additional_context(&request.messages, principal)?;
    let options_steps: Vec<ScratchpadStep> = request
        .options
        .take()
        .and_then(|options| options.agent_scratchpad)
        .map(|scratchpad| scratchpad.steps.into_iter().map(ScratchpadStep::from).collect())
        .unwrap_or_default();
    let (target, _) = ModelMetadata::resolve(request.model_metadata, state.config.custom_models_enabled)?;
    let mut messages = match conversation(&request.messages, &options_steps) {
        Ok(messages) => messages,
        Err(UnsupportedConversation(message)) => return Ok(error_response(message.to_string(), false)),
    };
    let tools: Vec<Value> = TOOLS
        .iter()
        .filter(|(_, scope, _)| principal.has_scope(scope))
        .map(|(name, _, description)| json!({"name": name, "description": description}))
        .collect();
    let prompts = state.prompts();
    let prompt = prompts.for_family(PROMPT_ID, &target.family, None)?;
    let variables = minijinja::context! { tools => tools, unavailable_resources => request.unavailable_resources };
    let mut system = prompts.render(prompt, &variables)?;
    // A last assistant message in the prompt is its prefill: it goes after the conversation.
    let prefill = match system.last() {
        Some(last) if system.len() > 1 && matches!(last.role, wit::Role::Assistant) => system.pop(),
        _ => None,
    };
    system.append(&mut messages);
    system.extend(prefill);
    let mut sampling = prompt.sampling();
    if sampling.stop.is_empty() {
        // The model must stop where the observation, which GitLab supplies, would begin.
        sampling.stop.push("Observation:".to_string());
    }
    let model = target.model.clone();
    let prefilled = system
        .last()
        .is_some_and(|last| matches!(last.role, wit::Role::Assistant) && last.content.trim_end().ends_with("Thought:"));
    match pipeline::stream(state, ModelJob::new(target, system, sampling, Deadline::Chat)).await {
        Ok(chunks) => Ok(events_response(chunks, model, ReactParser::new(prefilled))),
        // GitLab's gateway has already answered 200 when its model call fails, and Rails reads
        // the failure from the stream; aigw answers the same way.
        Err(error) if is_model_call_failure(&error) => {
            tracing::warn!(?error, "agent model call failed before its first byte");
            let (message, retryable) = error_event_fields(&error);
            Ok(error_response(message, retryable))
        }
        Err(other) => Err(other),
    }
}

/// Failures of the model call itself (the model server, the network, the provider plugin), as
/// against requests the gateway refuses before calling anything.
fn is_model_call_failure(error: &GatewayError) -> bool {
    match error {
        GatewayError::Upstream { .. } => true,
        GatewayError::Plugin(plugin) => matches!(
            plugin,
            PluginError::Guest(wit::PluginError::MalformedResponse(_))
                | PluginError::Trap(_)
                | PluginError::Deadline(_)
                | PluginError::MemoryLimit(_)
        ),
        _ => false,
    }
}

/// The `message` and `retryable` of the `error` event that reports `error`. Retryable means the
/// model server said it is overloaded (HTTP 529, or an `overloaded_error` body as Anthropic
/// sends), the one failure GitLab's gateway marks retryable: Rails may then try the step again.
/// The gateway has already retried what it retries (see `upstream::retry`) by then.
fn error_event_fields(error: &GatewayError) -> (String, bool) {
    let (_, body) = error.status_and_body();
    let message = body["detail"].as_str().unwrap_or("The model request failed").to_string();
    let retryable = matches!(
        error,
        GatewayError::Upstream { error: UpstreamError::Status { status, excerpt, .. }, .. }
            if status.as_u16() == 529 || excerpt.contains("overloaded_error")
    );
    (message, retryable)
}

fn error_event(message: String, retryable: bool) -> Value {
    json!({"type": "error", "data": {"message": message, "retryable": retryable}})
}

/// A 200 NDJSON stream holding one `error` event.
fn error_response(message: String, retryable: bool) -> http::Response<Body> {
    let line = Bytes::from(format!("{}\n", error_event(message, retryable)));
    let lines = futures_util::stream::once(async move { Ok::<_, GatewayError>(Frame::data(line)) });
    crate::response::streamed_response(crate::response::NDJSON, lines)
}

/// State of the event stream.
struct EventStream {
    chunks: ChunkStream,
    parser: Option<ReactParser>,
    usage: Option<wit::Usage>,
    /// The model's last finish reason, for the closing final-answer delta.
    finish_reason: Option<wit::FinishReason>,
    model: String,
    pending: std::collections::VecDeque<Value>,
    done: bool,
}

impl EventStream {
    /// The next NDJSON object, or `None` at the end.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            match self.chunks.next().await {
                Some(Ok(chunk)) => {
                    super::stream::add_usage(&mut self.usage, chunk.usage);
                    if chunk.finish_reason.is_some() {
                        self.finish_reason = chunk.finish_reason;
                    }
                    if let Some(delta) = self.parser.as_mut().and_then(|p| p.push(&chunk.text)) {
                        self.pending.push_back(delta.to_json());
                    }
                }
                Some(Err(error)) => {
                    // After the head went out, a failure is the stream's last event; no usage follows.
                    tracing::warn!(?error, "agent stream ended by an error");
                    let (message, retryable) = error_event_fields(&error);
                    self.pending.push_back(error_event(message, retryable));
                    self.done = true;
                }
                None => {
                    if let Some(parser) = self.parser.take() {
                        self.pending.push_back(parser.finish(self.finish_reason.as_ref()).to_json());
                    }
                    if let Some(usage) = self.usage.take() {
                        let per_model = super::stream::usage_by_model(&self.model, &usage);
                        self.pending.push_back(json!({"type": "usage", "data": {"usage": per_model}}));
                    }
                    self.done = true;
                }
            }
        }
    }
}

fn events_response(chunks: ChunkStream, model: String, parser: ReactParser) -> http::Response<Body> {
    let deadline = chunks.deadline();
    let state = EventStream {
        chunks,
        parser: Some(parser),
        usage: None,
        finish_reason: None,
        model,
        pending: Default::default(),
        done: false,
    };
    let lines = futures_util::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok::<_, GatewayError>(Frame::data(Bytes::from(format!("{event}\n")))), state))
    });
    crate::response::with_deadline(crate::response::streamed_response(crate::response::NDJSON, lines), deadline)
}
