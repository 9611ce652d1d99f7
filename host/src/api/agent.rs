//! `POST /v2/chat/agent`: one step of Duo Chat's ReAct loop. Renders the conversation (with the
//! scratchpad of earlier actions and observations, the page or file in view, additional context,
//! and the tools the caller's scopes allow) and streams the model's text back as NDJSON events.

use super::model::ModelMetadata;
use super::parse_json;
use super::react::ReactParser;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::pipeline::{self, ChunkStream, Deadline, ModelJob};
use crate::plugins::wit;
use crate::response::Body;
use crate::state::RequestState;
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

fn unprocessable(message: &str) -> GatewayError {
    GatewayError::Unprocessable(message.to_string())
}

/// A user message with the file in view and the additional context the caller may share.
fn user_content(message: &AgentMessage, principal: &Principal) -> String {
    let mut content = message.content.clone().unwrap_or_default();
    if let Some(file) = &message.current_file {
        let what = if file.selected_code { "selected code" } else { "file" };
        content.push_str(&format!(
            "\n\nThe user is looking at this {what} from {}:\n<code>\n{}\n</code>",
            file.file_path, file.data
        ));
    }
    for item in &message.additional_context {
        // Each category of additional context needs its own scope, as in GitLab's gateway.
        let scope = format!("include_{}_context", item.category.to_ascii_lowercase());
        if principal.has_scope(&scope) {
            content.push_str(&format!(
                "\n\n<additional_context category=\"{}\" id=\"{}\">\n{}\n</additional_context>",
                item.category, item.id, item.content
            ));
        }
    }
    content
}

/// The conversation as chat messages: the scratchpad of the step in progress becomes assistant
/// actions answered by user observations.
fn conversation(messages: &[AgentMessage], principal: &Principal) -> Result<Vec<wit::Message>, GatewayError> {
    let mut rendered = Vec::new();
    for message in messages {
        match message.role.as_str() {
            "user" => rendered.push(wit::Message { role: wit::Role::User, content: user_content(message, principal) }),
            "assistant" => {
                if let Some(content) = &message.content {
                    rendered.push(wit::Message { role: wit::Role::Assistant, content: content.clone() });
                }
                for step in &message.agent_scratchpad {
                    let a = &step.action;
                    rendered.push(wit::Message {
                        role: wit::Role::Assistant,
                        content: format!("Thought: {}\nAction: {}\nAction Input: {}", a.thought, a.tool, a.tool_input),
                    });
                    rendered.push(wit::Message {
                        role: wit::Role::User,
                        content: format!("Observation: {}", step.observation),
                    });
                }
            }
            "system" => {
                return Err(unprocessable("system messages are not accepted; the gateway writes the system prompt"));
            }
            other => return Err(GatewayError::Unprocessable(format!("unknown message role {other:?}"))),
        }
    }
    match rendered.last() {
        Some(last) if matches!(last.role, wit::Role::User) => Ok(rendered),
        _ => Err(unprocessable("the conversation must end with the user's message or an observation")),
    }
}

/// Handle one agent step.
pub(crate) async fn handle(
    state: &RequestState<'_>,
    principal: &Principal,
    body: &[u8],
) -> Result<http::Response<Body>, GatewayError> {
    let request: AgentRequest = parse_json(body)?;
    let mut messages = conversation(&request.messages, principal)?;
    let (target, _) = ModelMetadata::resolve(request.model_metadata, state.config.custom_models_enabled)?;
    let tools: Vec<Value> = TOOLS
        .iter()
        .filter(|(_, scope, _)| principal.has_scope(scope))
        .map(|(name, _, description)| json!({"name": name, "description": description}))
        .collect();
    let prompts = state.prompts();
    let prompt = prompts.for_family(PROMPT_ID, &target.family, None)?;
    let variables = minijinja::context! { tools => tools, unavailable_resources => request.unavailable_resources };
    let mut system = prompts.render(prompt, &variables)?;
    system.append(&mut messages);
    let mut sampling = prompt.sampling();
    if sampling.stop.is_empty() {
        // The model must stop where the observation, which GitLab supplies, would begin.
        sampling.stop.push("Observation:".to_string());
    }
    let model = target.model.clone();
    let chunks = pipeline::stream(state, ModelJob::new(target, system, sampling, Deadline::Chat)).await?;
    Ok(events_response(chunks, model))
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
                    if let Some(usage) = chunk.usage {
                        // Providers may split usage over several events; the parts add up.
                        let total = self.usage.get_or_insert(wit::Usage { input_tokens: 0, output_tokens: 0 });
                        total.input_tokens += usage.input_tokens;
                        total.output_tokens += usage.output_tokens;
                    }
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
                    let (status, body) = error.status_and_body();
                    let message = body["detail"].as_str().unwrap_or("The model request failed").to_string();
                    let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                    self.pending
                        .push_back(json!({"type": "error", "data": {"message": message, "retryable": retryable}}));
                    self.done = true;
                }
                None => {
                    if let Some(parser) = self.parser.take() {
                        self.pending.push_back(parser.finish(self.finish_reason.as_ref()).to_json());
                    }
                    if let Some(usage) = self.usage.take() {
                        let mut per_model = serde_json::Map::new();
                        per_model.insert(
                            self.model.clone(),
                            json!({"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}),
                        );
                        self.pending.push_back(json!({"type": "usage", "data": {"usage": per_model}}));
                    }
                    self.done = true;
                }
            }
        }
    }
}

fn events_response(chunks: ChunkStream, model: String) -> http::Response<Body> {
    let state = EventStream {
        chunks,
        parser: Some(ReactParser::default()),
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
    crate::response::streamed_response(crate::response::NDJSON, lines)
}
