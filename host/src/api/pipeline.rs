//! The one model pipeline every endpoint shares: plugin builds the request, the host sends it,
//! the plugin parses the answer (whole, or event by event as it streams).

use super::AppState;
use super::model::ModelTarget;
use crate::error::GatewayError;
use crate::plugins::runtime::PluginIdentity;
use crate::plugins::{PluginError, PluginSession, wit};
use crate::upstream::framing::Decoder;
use crate::upstream::{ModelCall, UpstreamError, UpstreamResponse, client::MAX_ANSWER_BYTES};
use std::collections::VecDeque;

/// A canonical model request bound for a target.
#[derive(Debug)]
pub struct ModelJob {
    /// Where it goes.
    pub target: ModelTarget,
    /// What is asked.
    pub request: wit::ModelRequest,
    /// The whole model call's time limit, when the endpoint has its own (chat).
    pub total_timeout: Option<std::time::Duration>,
}

/// What the model answered.
pub enum Outcome {
    /// A complete answer.
    Complete(wit::Completion),
    /// A stream of chunks, pulled on demand.
    Stream(Box<ChunkStream>),
}

/// Run a job up to the answer (complete) or up to the response head (streaming).
pub async fn run(state: &AppState, mut job: ModelJob) -> Result<Outcome, GatewayError> {
    // With streaming disabled the model server is asked for a whole answer, which a caller that
    // asked for a stream then receives as a single piece.
    let deliver_as_stream = job.request.stream;
    if state.config.disable_streaming {
        job.request.stream = false;
    }
    let plugin = state.plugins.snapshot().resolve(&job.target.provider)?;
    let mut session = plugin.session().await.map_err(|e| log_plugin_failure(plugin.identity(), e))?;
    let built = session.build_request(&job.request).await.map_err(|e| log_plugin_failure(session.identity(), e))?;
    let call = ModelCall {
        endpoint: &job.target.endpoint,
        request: built,
        api_key: &job.target.api_key,
        total_timeout: job.total_timeout,
    };
    let response = state.upstream.send(call).await.map_err(|e| hint_missing_v1(e, &job.target))?;
    if !job.request.stream {
        let body = response.collect(MAX_ANSWER_BYTES).await?;
        let completion = session.parse_response(&body).await.map_err(|e| log_plugin_failure(session.identity(), e))?;
        if !deliver_as_stream {
            return Ok(Outcome::Complete(completion));
        }
        let whole = wit::StreamChunk {
            text: completion.text,
            finish_reason: completion.finish_reason,
            usage: completion.usage,
            done: true,
        };
        return Ok(Outcome::Stream(Box::new(ChunkStream {
            session,
            response: None,
            decoder: Decoder::sse(),
            ready: VecDeque::from([whole]),
            finished: true,
        })));
    }
    let decoder = match session.identity().framing {
        wit::Framing::Sse => Decoder::sse(),
        wit::Framing::Ndjson => Decoder::ndjson(),
    };
    Ok(Outcome::Stream(Box::new(ChunkStream {
        session,
        response: Some(response),
        decoder,
        ready: VecDeque::new(),
        finished: false,
    })))
}

/// Plugin traps and limits are logged with the plugin's identity; the caller gets a generic body.
fn log_plugin_failure(identity: &PluginIdentity, error: PluginError) -> GatewayError {
    match &error {
        PluginError::Guest(_) | PluginError::UnknownProvider { .. } => {}
        PluginError::Invalid(_)
        | PluginError::BadInfo(_)
        | PluginError::Capacity
        | PluginError::Trap(_)
        | PluginError::Deadline(_)
        | PluginError::MemoryLimit(_) => {
            tracing::error!(plugin = %identity.name, version = %identity.version, %error, "plugin call failed");
        }
    }
    GatewayError::Plugin(error)
}

/// A 404 from an OpenAI-compatible endpoint without `/v1` is the most common misconfiguration.
fn hint_missing_v1(error: UpstreamError, target: &ModelTarget) -> GatewayError {
    let not_found = matches!(&error, UpstreamError::Status { status, .. } if *status == http::StatusCode::NOT_FOUND);
    if not_found && !target.endpoint.path().trim_end_matches('/').ends_with("/v1") {
        return GatewayError::Unprocessable(format!(
            "The model server answered 404 Not Found at {}; OpenAI-compatible endpoints usually end with /v1",
            target.endpoint
        ));
    }
    GatewayError::Upstream(error)
}

/// A model answer being streamed: upstream bytes → frames → plugin → chunks. Dropping it drops
/// the upstream response, which cancels the upstream request at once.
pub struct ChunkStream {
    session: PluginSession,
    /// `None` when the whole answer was already read (streaming disabled).
    response: Option<UpstreamResponse>,
    decoder: Decoder,
    ready: VecDeque<wit::StreamChunk>,
    finished: bool,
}

impl ChunkStream {
    /// The next chunk with text or metadata; `None` at the end of the answer.
    pub async fn next(&mut self) -> Option<Result<wit::StreamChunk, GatewayError>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(Ok(chunk));
            }
            if self.finished {
                return None;
            }
            if let Err(error) = self.fill().await {
                self.finished = true;
                return Some(Err(error));
            }
        }
    }

    /// Read one upstream chunk and parse every complete event it finishes.
    async fn fill(&mut self) -> Result<(), GatewayError> {
        let Some(response) = self.response.as_mut() else {
            self.finished = true;
            return Ok(());
        };
        let bytes = match response.next_chunk().await? {
            Some(bytes) => bytes,
            None => {
                self.finished = true;
                if let Some(event) = self.decoder.finish() {
                    self.parse(event).await?;
                }
                return Ok(());
            }
        };
        self.decoder.push(&bytes).map_err(|e| UpstreamError::Body(e.to_string()))?;
        while let Some(event) = self.decoder.next_event().map_err(|e| UpstreamError::Body(e.to_string()))? {
            self.parse(event).await?;
            if self.finished {
                break;
            }
        }
        Ok(())
    }

    async fn parse(&mut self, event: crate::upstream::framing::Event) -> Result<(), GatewayError> {
        let chunk = self
            .session
            .parse_event(event.name.as_deref(), &event.data)
            .await
            .map_err(|e| log_plugin_failure(self.session.identity(), e))?;
        if chunk.done {
            self.finished = true;
        }
        if !chunk.text.is_empty() || chunk.finish_reason.is_some() || chunk.usage.is_some() {
            self.ready.push_back(chunk);
        }
        Ok(())
    }
}
