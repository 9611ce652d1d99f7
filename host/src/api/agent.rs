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
use crate::prompts::{Prompt, PromptRegistry, fit_conversation};
use crate::response::Body;
use crate::state::RequestState;
use crate::upstream::UpstreamError;
use bytes::Bytes;
use hyper::body::Frame;
use serde::Deserialize;
use serde_json::{Value, json};

/// A tool the agent may offer the model. Rails runs the tools; the gateway only describes them.
struct Tool {
    /// The name the model answers with (GitLab's, which Rails dispatches on).
    name: &'static str,
    /// The scope that grants it.
    scope: &'static str,
    /// What it reads, for prompts that list the resources the model can reach.
    resource: &'static str,
    /// The oldest GitLab version whose Rails runs it.
    since: Option<(u64, u64)>,
    /// What it does and what to pass it, for the model (aigw's words).
    description: &'static str,
    /// One step that uses it, in the output grammar the parser reads (aigw's words).
    example: &'static str,
}

/// The tools, in the order GitLab's gateway offers them.
const TOOLS: [Tool; 7] = [
    Tool {
        name: "build_reader",
        scope: "ask_build",
        resource: "builds",
        since: Some((17, 5)),
        description: "Reads one CI job (also called a build) and its log. Use it only when the user gives a job ID or \
                      URL or is looking at a job; never to search for jobs. Input: the user's question as asked.",
        example: "Question: Why did https://gitlab.example.com/group/app/-/jobs/42 fail?\nThought: The question is about \
                  one job, which build_reader reads.\nAction: build_reader\nAction Input: Why did \
                  https://gitlab.example.com/group/app/-/jobs/42 fail?",
    },
    Tool {
        name: "epic_reader",
        scope: "ask_epic",
        resource: "epics",
        since: None,
        description: "Reads one epic and its child items. Use it only when the user gives an epic reference or URL or \
                      is looking at an epic; never to search for epics. Input: the user's question as asked.",
        example: "Question: What is left to do in &7?\nThought: The question is about one epic, which epic_reader \
                  reads.\nAction: epic_reader\nAction Input: What is left to do in &7?",
    },
    Tool {
        name: "issue_reader",
        scope: "ask_issue",
        resource: "issues",
        since: None,
        description: "Reads one issue: its description, comments and labels. Use it only when the user gives an issue \
                      reference or URL or is looking at an issue; never to search for issues. Input: the user's \
                      question as asked.",
        example: "Question: Who reported #123?\nThought: The question is about one issue, which issue_reader \
                  reads.\nAction: issue_reader\nAction Input: Who reported #123?",
    },
    Tool {
        name: "merge_request_reader",
        scope: "ask_merge_request",
        resource: "merge_requests",
        since: Some((17, 5)),
        description: "Reads one merge request: its description, changes and discussion. Use it only when the user \
                      gives a merge request reference or URL or is looking at one; never to search for them. Input: \
                      the user's question as asked.",
        example: "Question: Summarize !45.\nThought: The question is about one merge request, which \
                  merge_request_reader reads.\nAction: merge_request_reader\nAction Input: Summarize !45.",
    },
    Tool {
        name: "commit_reader",
        scope: "ask_commit",
        resource: "commits",
        since: Some((17, 5)),
        description: "Reads one commit: its message and changes. Use it only when the user gives a commit SHA or URL \
                      or is looking at a commit; never to search for commits. Input: the user's question as asked.",
        example: "Question: What does commit 1a2b3c4 change?\nThought: The question is about one commit, which \
                  commit_reader reads.\nAction: commit_reader\nAction Input: What does commit 1a2b3c4 change?",
    },
    Tool {
        name: "work_item_reader",
        scope: "ask_work_item",
        resource: "work_items",
        since: Some((18, 5)),
        description: "Reads one work item (a task, an objective, a key result, …). Use it only when the user gives a \
                      work item ID or URL or is looking at one; never to search for them. Input: the user's question \
                      as asked.",
        example: "Question: Who owns https://gitlab.example.com/group/app/-/work_items/9?\nThought: The question is \
                  about one work item, which work_item_reader reads.\nAction: work_item_reader\nAction Input: Who \
                  owns https://gitlab.example.com/group/app/-/work_items/9?",
    },
    Tool {
        name: "gitlab_documentation",
        scope: "documentation_search",
        resource: "documentation answers",
        since: None,
        description: "Searches GitLab's documentation, for questions about how GitLab and its features work. Input: \
                      a short search phrase.",
        example: "Question: How do I protect a branch?\nThought: This is about how GitLab works, which its \
                  documentation answers.\nAction: gitlab_documentation\nAction Input: protect a branch",
    },
];

/// The `major.minor` of an `X-Gitlab-Version` header (`18.5.0`, `17.5.0-pre`).
fn instance_version(headers: &http::HeaderMap) -> Option<(u64, u64)> {
    let text = headers.get("x-gitlab-version")?.to_str().ok()?;
    let mut parts = text.split(['.', '-']);
    Some((parts.next()?.trim().parse().ok()?, parts.next()?.trim().parse().ok()?))
}

/// The tools a caller may use: granted by its scopes, and run by its instance's version (an
/// instance that does not say is offered only the tools every version has).
fn offered_tools(principal: &Principal, headers: &http::HeaderMap) -> Vec<Value> {
    let version = instance_version(headers);
    TOOLS
        .iter()
        .filter(|tool| principal.has_scope(tool.scope))
        .filter(|tool| tool.since.is_none_or(|since| version.is_some_and(|v| v >= since)))
        .map(|tool| {
            json!({"name": tool.name, "resource": tool.resource, "description": tool.description, "example": tool.example})
        })
        .collect()
}

/// The ReAct prompt: the system message, per family (`chat/react/<family>`, else `base`).
const PROMPT_ID: &str = "chat/react";

#[derive(Debug, Deserialize)]
pub(crate) struct AgentRequest {
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

impl AgentMessage {
    /// The message with every field a template may read: `content`, `current_file` (or none)
    /// and `additional_context` (which [`authorize_additional_context`] has allowed).
    fn as_value(&self) -> Value {
        json!({
            "content": self.content.as_deref().unwrap_or_default(),
            "current_file": self.current_file.as_ref().map(|file| json!({
                "file_path": file.file_path, "data": file.data, "selected_code": file.selected_code,
            })),
            "additional_context": self.additional_context.iter().map(|item| json!({
                "category": item.category, "id": item.id, "content": item.content,
            })).collect::<Vec<_>>(),
        })
    }
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

/// The roles a message may have; anything else is a validation error, as in GitLab's schema.
fn check_roles(messages: &[AgentMessage]) -> Result<(), GatewayError> {
    match messages.iter().find(|m| !matches!(m.role.as_str(), "user" | "assistant" | "system")) {
        Some(message) => Err(GatewayError::Unprocessable(format!("unknown message role {:?}", message.role))),
        None => Ok(()),
    }
}

/// The ReAct prompt rendered a turn at a time, as GitLab's gateway renders its own: the `system`
/// template (tools, unavailable resources, today's date), the `user` template for each user
/// message, the `assistant` template for each assistant message that has content (its scratchpad
/// and answer), and the `assistant` template once more at the end with the step in progress: the
/// `Thought:` prefill. GitLab's templates get each message object as the instance sent it;
/// aigw's get it with every field present (its templates refuse undefined values).
fn conversation(
    prompts: &PromptRegistry,
    prompt: &Prompt,
    request: &AgentRequest,
    raw_messages: &[Value],
    options_steps: &[ScratchpadStep],
    tools: &[Value],
) -> Result<Result<Vec<wit::Message>, UnsupportedConversation>, GatewayError> {
    let step_value = |step: &ScratchpadStep| {
        json!({
            "action": {
                "thought": step.action.thought,
                "tool": step.action.tool.replace("\\_", "_"),
                "tool_input": step.action.tool_input,
            },
            "observation": step.observation,
        })
    };
    let mut rendered = Vec::new();
    let system_variables = minijinja::context! {
        tools => tools,
        unavailable_resources => &request.unavailable_resources,
        current_date => super::date::Date::today().with_weekday(),
    };
    if let Some(system) = prompts.render_role(prompt, wit::Role::System, &system_variables)? {
        rendered.push(wit::Message { role: wit::Role::System, content: system });
    }
    // A last assistant message without an answer holds the step in progress (newer instances
    // send it there rather than in `options`): it is the prefill's scratchpad, not a turn.
    let (turns, in_progress) = match request.messages.split_last() {
        Some((last, earlier)) if last.role == "assistant" && last.content.is_none() => (earlier, Some(last)),
        _ => (&request.messages[..], None),
    };
    for (message, raw) in turns.iter().zip(raw_messages) {
        match message.role.as_str() {
            "user" => {
                let variables = if prompt.is_gitlab() {
                    minijinja::context! { message => raw }
                } else {
                    minijinja::context! { message => message.as_value() }
                };
                let content = prompts.render_role(prompt, wit::Role::User, &variables)?.unwrap_or_default();
                rendered.push(wit::Message { role: wit::Role::User, content });
            }
            "assistant" => {
                let Some(answer) = &message.content else { continue };
                let steps: Vec<Value> = message.agent_scratchpad.iter().map(step_value).collect();
                let variables = minijinja::context! { agent_scratchpad => steps, final_answer => answer };
                let content = prompts.render_role(prompt, wit::Role::Assistant, &variables)?.unwrap_or_default();
                rendered.push(wit::Message { role: wit::Role::Assistant, content });
            }
            _ => return Ok(Err(UnsupportedConversation("Unsupported message"))),
        }
    }
    if !rendered.last().is_some_and(|last| matches!(last.role, wit::Role::User)) {
        return Ok(Err(UnsupportedConversation("Last message must be a human message")));
    }
    let steps: Vec<Value> =
        options_steps.iter().chain(in_progress.iter().flat_map(|m| &m.agent_scratchpad)).map(step_value).collect();
    let variables = minijinja::context! { agent_scratchpad => steps, final_answer => () };
    if let Some(prefill) = prompts.render_role(prompt, wit::Role::Assistant, &variables)? {
        rendered.push(wit::Message { role: wit::Role::Assistant, content: prefill });
    }
    Ok(Ok(rendered))
}

/// The request, its roles checked and its additional context allowed for `principal`, with its
/// message objects as sent (GitLab's ReAct template renders each turn from them). The body is
/// parsed once: a long chat history parsed twice, and its messages copied a third time, held
/// three times its parsed size for the whole request.
pub(crate) fn parse(body: &[u8], principal: &Principal) -> Result<(AgentRequest, Vec<Value>), GatewayError> {
    let parsed = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|raw| AgentRequest::deserialize(&raw).ok().map(|request| (request, raw)));
    let Some((request, mut raw)) = parsed else {
        // Parsed from the bytes again, only to word the error as every endpoint does.
        return Err(parse_json::<AgentRequest>(body)
            .err()
            .unwrap_or_else(|| GatewayError::Unprocessable("the request does not match the agent schema".into())));
    };
    check_roles(&request.messages)?;
    authorize_additional_context(&request.messages, principal)?;
    let raw_messages = match raw.get_mut("messages").map(Value::take) {
        Some(Value::Array(messages)) => messages,
        _ => Vec::new(),
    };
    Ok((request, raw_messages))
}

/// Handle one agent step.
pub(crate) async fn handle(
    state: &RequestState<'_>,
    principal: &Principal,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<http::Response<Body>, GatewayError> {
    let (mut request, raw_messages) = parse(body, principal)?;
    let options_steps: Vec<ScratchpadStep> = request
        .options
        .take()
        .and_then(|options| options.agent_scratchpad)
        .map(|scratchpad| scratchpad.steps.into_iter().map(ScratchpadStep::from).collect())
        .unwrap_or_default();
    let (target, _) = ModelMetadata::resolve(request.model_metadata.take(), state.config.custom_models_enabled)?;
    let tools = offered_tools(principal, headers);
    let prompts = state.prompts();
    let prompt = prompts.for_family(PROMPT_ID, &target.family, None)?;
    let rendered = conversation(&prompts, prompt, &request, &raw_messages, &options_steps, &tools)?;
    let mut system = match rendered {
        Ok(messages) => messages,
        Err(UnsupportedConversation(message)) => return Ok(error_response(message.to_string(), false)),
    };
    let mut sampling = prompts.sampling(prompt, &target.family);
    if sampling.stop.is_empty() && !prompt.is_gitlab() {
        // The model must stop where the observation, which GitLab supplies, would begin.
        // (GitLab's own prompts say for themselves: its `gpt` one sends no stop at all.)
        sampling.stop.push("Observation:".to_string());
    }
    let budget = prompts.conversation_budget(&target.family, &sampling);
    if fit_conversation(&mut system, budget) {
        tracing::info!(budget, family = %target.family, "conversation cut to the model's context window");
    }
    let model = target.model.clone();
    let prefilled = system
        .last()
        .is_some_and(|last| matches!(last.role, wit::Role::Assistant) && last.content.trim_end().ends_with("Thought:"));
    let mut job = ModelJob::new(target, system, sampling, Deadline::Chat);
    if prompt.is_gitlab() {
        job = job.with_roles_as_rendered();
    }
    match pipeline::stream(state, job).await {
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
