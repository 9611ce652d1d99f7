//! A model answer being streamed: upstream bytes → frames → the plugin's `parse-event` (or
//! `parse-chat-event`) → chunks. The core of it, [`EventParser`], is transport-free, so the
//! conformance suite drives the same code with recorded bytes.

use super::observe::Observer;
use crate::error::GatewayError;
use crate::plugins::{PluginError, PluginLease, PluginSession, chat, wit};
use crate::upstream::framing::{Decoder, Event, FramingError};
use crate::upstream::{UpstreamError, UpstreamResponse};
use std::collections::VecDeque;
use std::time::Instant;

/// What one stream event is parsed into: a text chunk for GitLab's endpoints ([`wit::StreamChunk`]),
/// a chat piece for the model API ([`ChatPiece`]).
pub trait Parsed: Sized + Send + 'static {
    /// The plugin export that parses it, for metrics.
    const EXPORT: &'static str;
    /// Parse `event` in the plugin's sandbox.
    fn parse(
        session: &mut PluginSession,
        event: Event,
    ) -> impl std::future::Future<Output = Result<Self, PluginError>> + Send;
    /// Usage the event reports.
    fn usage(&self) -> Option<&wit::Usage>;
    /// Whether the event carries output (text, or a piece of a tool call).
    fn has_output(&self) -> bool;
    /// Whether the event ends the stream.
    fn ends(&self) -> bool;
    /// Whether the event says why generation stopped.
    fn finishes(&self) -> bool;
}

impl Parsed for wit::StreamChunk {
    const EXPORT: &'static str = "parse_event";

    async fn parse(session: &mut PluginSession, event: Event) -> Result<Self, PluginError> {
        session.parse_event(event.name.as_deref(), &event.data).await
    }

    fn usage(&self) -> Option<&wit::Usage> {
        self.usage.as_ref()
    }

    fn has_output(&self) -> bool {
        !self.text.is_empty()
    }

    fn ends(&self) -> bool {
        self.done
    }

    fn finishes(&self) -> bool {
        self.finish_reason.is_some()
    }
}

/// One event of a conversation's answer: what the plugin parsed, and the event's own bytes (an
/// OpenAI-shaped provider's chunk, which can be forwarded as it came).
#[derive(Debug)]
pub struct ChatPiece {
    /// The parsed event.
    pub chunk: chat::ChatChunk,
    /// The event's payload as the model server sent it.
    pub data: bytes::Bytes,
}

impl Parsed for ChatPiece {
    const EXPORT: &'static str = "parse_chat_event";

    async fn parse(session: &mut PluginSession, event: Event) -> Result<Self, PluginError> {
        // A plugin built before `chat` existed parses text events, which are chat events
        // without tool calls.
        let chunk = if session.identity().can_chat() {
            session.parse_chat_event(event.name.as_deref(), &event.data).await?
        } else {
            super::chat::text_chunk(session.parse_event(event.name.as_deref(), &event.data).await?)
        };
        Ok(ChatPiece { chunk, data: bytes::Bytes::from(event.data) })
    }

    fn usage(&self) -> Option<&wit::Usage> {
        self.chunk.usage.as_ref()
    }

    fn has_output(&self) -> bool {
        !self.chunk.content.is_empty() || !self.chunk.tool_calls.is_empty()
    }

    fn ends(&self) -> bool {
        self.chunk.done
    }

    fn finishes(&self) -> bool {
        self.chunk.finish_reason.is_some()
    }
}

/// Stream bytes in, parsed events out: the plugin's framing decoded, each event parsed by the
/// plugin in its sandbox, the end marker and usage kept track of, every step observed.
pub struct EventParser<P = wit::StreamChunk> {
    /// The plugin that parses the events, and its store (freed while a stream waits).
    lease: PluginLease,
    decoder: Decoder,
    ready: VecDeque<P>,
    /// The plugin said the answer is complete; later bytes are not parsed.
    done: bool,
    observer: Observer,
    /// When the model request was sent, and when its first text arrived.
    sent: Instant,
    first_text: Option<Instant>,
    output_tokens: u32,
    /// Some event carried a finish reason: the model said why it stopped.
    finish_reason_seen: bool,
}

impl EventParser {
    /// A parser for bytes in the leased plugin's framing, outside any request (its numbers go
    /// to metrics of its own): what the conformance suite runs.
    pub fn new(lease: PluginLease) -> Self {
        Self::unrecorded(lease)
    }
}

impl<P: Parsed> EventParser<P> {
    /// A parser into `P`, outside any request.
    pub fn unrecorded(lease: PluginLease) -> Self {
        let observer = Observer::unrecorded(lease.identity());
        Self::observed(lease, observer, Instant::now())
    }

    fn observed(lease: PluginLease, observer: Observer, sent: Instant) -> Self {
        EventParser {
            decoder: Decoder::for_framing(lease.identity().framing),
            lease,
            ready: VecDeque::new(),
            done: false,
            observer,
            sent,
            first_text: None,
            output_tokens: 0,
            finish_reason_seen: false,
        }
    }

    /// Decode `bytes` and parse every event they complete, up to the end marker.
    pub async fn push(&mut self, bytes: &[u8]) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        self.decoder.push(bytes).map_err(|e| self.framing_failed(e))?;
        while let Some(event) = self.decoder.next_event().map_err(|e| self.framing_failed(e))? {
            self.parse(event).await?;
            if self.done {
                break;
            }
        }
        Ok(())
    }

    /// The input ended: parse what the decoder still holds. An answer that ends without its end
    /// marker and without a finish reason was cut short (a close-delimited body, a server that
    /// died, an empty 200): a failed stream, not a complete answer.
    pub async fn finish(&mut self) -> Result<(), GatewayError> {
        if !self.done
            && let Some(event) = self.decoder.finish()
        {
            self.parse(event).await?;
        }
        let cut_short = !self.done && !self.finish_reason_seen;
        self.done = true;
        if cut_short {
            let error = UpstreamError::Body("the model stream ended before its end marker".into());
            self.observer.upstream_failed(&error);
            return Err(error.into());
        }
        Ok(())
    }

    /// The next parsed chunk.
    pub fn next_chunk(&mut self) -> Option<P> {
        self.ready.pop_front()
    }

    /// Whether the answer is complete (the end marker, or the end of the input).
    pub fn done(&self) -> bool {
        self.done
    }

    /// A stream that cannot be decoded ends like a broken one, and is counted.
    fn framing_failed(&self, error: FramingError) -> UpstreamError {
        let error = UpstreamError::Body(error.to_string());
        self.observer.upstream_failed(&error);
        error
    }

    /// At the end of a stream: time per generated token after the first.
    fn report_pace(&mut self) {
        if let Some(first) = self.first_text.take() {
            self.observer.pace(self.output_tokens.saturating_sub(1), first.elapsed());
        }
    }

    async fn parse(&mut self, event: Event) -> Result<(), GatewayError> {
        let parsing = Instant::now();
        let lease = &mut self.lease;
        let chunk = async { P::parse(lease.session().await?, event).await }
            .await
            .map_err(|e| self.observer.plugin_failed(e))?;
        self.observer.plugin_call(P::EXPORT, parsing.elapsed());
        if let Some(usage) = chunk.usage() {
            self.observer.tokens(usage);
            self.output_tokens += usage.output_tokens;
        }
        if chunk.has_output() && self.first_text.is_none() {
            self.first_text = Some(Instant::now());
            self.observer.first_token(self.sent.elapsed());
        }
        if chunk.ends() {
            self.done = true;
        }
        self.finish_reason_seen |= chunk.finishes();
        // Every event the model server sent is a chunk, empty ones too (GitLab's gateway answers
        // one line or SSE event per model event); only a bare end marker is not.
        let bare_end = chunk.ends() && !chunk.has_output() && !chunk.finishes() && chunk.usage().is_none();
        if !bare_end {
            self.ready.push_back(chunk);
        }
        Ok(())
    }
}

/// A model answer being streamed from the model server, pulled on demand. Dropping it drops the
/// upstream response, which cancels the upstream request at once.
pub struct ChunkStream<P = wit::StreamChunk> {
    parser: EventParser<P>,
    /// `None` once the upstream body has ended, or when the whole answer was read up front
    /// (streaming disabled).
    response: Option<UpstreamResponse>,
    /// The stream is over (its end, or an error was yielded).
    finished: bool,
    /// The call's total deadline: past it no more is yielded, even what was already read (a
    /// caller that reads slowly cannot stretch the call), and the error it ends with.
    deadline: Option<(tokio::time::Instant, UpstreamError)>,
}

impl<P: Parsed> ChunkStream<P> {
    /// A stream over `response`, parsed by the leased plugin.
    pub(super) fn new(lease: PluginLease, response: UpstreamResponse, observer: Observer, sent: Instant) -> Self {
        let deadline = Some(response.deadline());
        ChunkStream {
            parser: EventParser::observed(lease, observer, sent),
            response: Some(response),
            finished: false,
            deadline,
        }
    }

    /// A whole answer delivered as a stream of one piece (streaming disabled by the operator).
    pub(super) fn whole(lease: PluginLease, observer: Observer, sent: Instant, whole: P) -> Self {
        let mut parser = EventParser::observed(lease, observer, sent);
        parser.ready.push_back(whole);
        parser.done = true;
        ChunkStream { parser, response: None, finished: false, deadline: None }
    }

    /// Wait for the answer's first piece (or its proper end) before the caller's response head
    /// goes out, so that a model call failing before it is an HTTP error with a status, not a
    /// connection that closes before any status line.
    pub(crate) async fn first_piece(mut self) -> Result<Self, GatewayError> {
        let waiting = Instant::now();
        let mut filled = Ok(());
        while filled.is_ok() && self.parser.ready.is_empty() && !self.parser.done() {
            filled = self.fill().await;
        }
        self.parser.observer.waited(waiting.elapsed());
        filled.map(|()| self)
    }

    /// The next chunk (text, metadata, or an empty event the model server sent); `None` at the
    /// end of the answer.
    pub(crate) async fn next(&mut self) -> Option<Result<P, GatewayError>> {
        loop {
            let more = !self.parser.ready.is_empty() || !(self.finished || self.parser.done());
            if more && let Some(error) = self.past_deadline() {
                self.finished = true;
                self.parser.observer.upstream_failed(&error);
                self.parser.observer.stream_failed();
                return Some(Err(error.into()));
            }
            if let Some(chunk) = self.parser.next_chunk() {
                return Some(Ok(chunk));
            }
            if self.finished || self.parser.done() {
                self.finished = true;
                self.parser.report_pace();
                return None;
            }
            if let Err(error) = self.fill().await {
                self.finished = true;
                self.parser.observer.stream_failed();
                return Some(Err(error));
            }
        }
    }

    /// When the call must end, if it is still reading from the model server.
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline.as_ref().map(|(deadline, _)| *deadline)
    }

    /// The deadline's error, once the deadline has passed (then only once).
    fn past_deadline(&mut self) -> Option<UpstreamError> {
        let (deadline, _) = self.deadline.as_ref()?;
        if tokio::time::Instant::now() < *deadline {
            return None;
        }
        self.deadline.take().map(|(_, error)| error)
    }

    /// Read one upstream chunk into the parser.
    async fn fill(&mut self) -> Result<(), GatewayError> {
        let Some(response) = self.response.as_mut() else {
            return self.parser.finish().await;
        };
        let next = self.parser.lease.wait(response.next_chunk()).await;
        match next.inspect_err(|e| self.parser.observer.upstream_failed(e))? {
            Some(bytes) => self.parser.push(&bytes).await,
            None => {
                self.response = None;
                self.parser.finish().await
            }
        }
    }
}
