//! Parses a model's streamed ReAct text (Thought / Action / Action Input / Final Answer) into
//! Duo Chat's agent events as it arrives.

use crate::plugins::wit;
use serde_json::{Value, json};

const FINAL_ANSWER: &str = "Final Answer:";
const ACTION: &str = "Action:";
const ACTION_INPUT: &str = "Action Input:";
const THOUGHT: &str = "Thought:";

/// One agent event, serialised as `{"type": …, "data": …}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AgentEvent {
    /// The model wants a tool run.
    Action {
        /// Why.
        thought: String,
        /// Which tool.
        tool: String,
        /// Its input.
        tool_input: String,
    },
    /// A piece of the final answer; the last one carries a finish reason.
    FinalAnswerDelta {
        /// Text.
        text: String,
        /// `Some("stop")` on the last delta.
        finish_reason: Option<String>,
    },
    /// Text in neither shape.
    Unknown {
        /// The model's whole text.
        text: String,
    },
}

impl AgentEvent {
    /// The NDJSON object.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            AgentEvent::Action { thought, tool, tool_input } => {
                json!({"type": "action", "data": {"thought": thought, "tool": tool, "tool_input": tool_input}})
            }
            AgentEvent::FinalAnswerDelta { text, finish_reason } => {
                json!({"type": "final_answer_delta", "data": {"text": text, "finish_reason": finish_reason}})
            }
            AgentEvent::Unknown { text } => json!({"type": "unknown", "data": {"text": text}}),
        }
    }
}

/// Incremental parser: [`ReactParser::push`] each piece, then [`ReactParser::finish`].
#[derive(Debug, Default)]
pub(crate) struct ReactParser {
    /// The prompt ended with the `Thought:` prefill, so the model's text continues the thought.
    prefilled: bool,
    /// Everything received.
    text: String,
    /// Byte offset of the final answer's first character, once `Final Answer:` was seen.
    answer_from: Option<usize>,
    /// How much of the final answer was already emitted.
    emitted: usize,
}

impl ReactParser {
    /// A parser for the answer to a prompt that ends with the `Thought:` prefill (`prefilled`),
    /// or one where the model writes `Thought:` itself.
    pub(crate) fn new(prefilled: bool) -> Self {
        ReactParser { prefilled, ..ReactParser::default() }
    }

    /// Take a piece of model text; returns the final-answer delta it completes, if any.
    pub(crate) fn push(&mut self, piece: &str) -> Option<AgentEvent> {
        self.text.push_str(piece);
        if self.answer_from.is_none() {
            let marker = self.text.find(FINAL_ANSWER)?;
            // An action announced before the final answer wins: the model must wait for its
            // observation, so whatever follows is not an answer yet.
            if self.text[..marker].contains(ACTION_INPUT) {
                return None;
            }
            let start = marker + FINAL_ANSWER.len();
            let skip = self.text[start..].len() - self.text[start..].trim_start().len();
            // Leading whitespace is dropped only once text follows it.
            if self.text[start + skip..].is_empty() {
                return None;
            }
            self.answer_from = Some(start + skip);
            self.emitted = start + skip;
        }
        // Trailing whitespace waits for what follows it: the answer GitLab's gateway streams is
        // the text so far with its end trimmed, so a delta never ends in a space or newline.
        let end = self.text.trim_end().len();
        if end <= self.emitted {
            return None;
        }
        let delta = self.text[self.emitted..end].to_string();
        self.emitted = end;
        Some(AgentEvent::FinalAnswerDelta { text: delta, finish_reason: None })
    }

    /// The end of the model's text: the closing final-answer delta (with the model's finish
    /// reason, `stop` when it gave none), the action, or `unknown`.
    pub(crate) fn finish(self, finish_reason: Option<&wit::FinishReason>) -> AgentEvent {
        if self.answer_from.is_some() {
            let reason = match finish_reason {
                None | Some(wit::FinishReason::Stop) => "stop".to_string(),
                Some(wit::FinishReason::Length) => "length".to_string(),
                Some(wit::FinishReason::Other(other)) => other.clone(),
            };
            // Only held-back trailing whitespace can be left, and the answer ends trimmed.
            return AgentEvent::FinalAnswerDelta {
                text: self.text[self.emitted..].trim_end().to_string(),
                finish_reason: Some(reason),
            };
        }
        match parse_action(&self.text, self.prefilled) {
            Some(action) => action,
            None => AgentEvent::Unknown { text: self.text },
        }
    }
}

fn field<'a>(text: &'a str, marker: &str, until: &[&str]) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    let end = until.iter().filter_map(|m| rest.find(m)).min().unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Models escape underscores as Markdown (`issue\_reader`); tool names and thoughts go back to
/// Rails unescaped.
fn unescape(text: &str) -> String {
    text.replace("\\_", "_")
}

fn parse_action(text: &str, prefilled: bool) -> Option<AgentEvent> {
    let tool = field(text, ACTION, &[ACTION_INPUT, "\n"])?;
    let tool_input = field(text, ACTION_INPUT, &["Observation:"])?;
    if tool.is_empty() {
        return None;
    }
    // After the `Thought:` prefill the model's text is the thought itself up to its action, and
    // a model that writes `Thought:` again keeps it in the thought, as GitLab's gateway keeps it
    // (Rails sends the thought back in the next step as it got it). Without the prefill, the
    // model's own `Thought:` is the marker.
    let text = text.trim_start();
    let text = if prefilled { text } else { text.strip_prefix(THOUGHT).unwrap_or(text) };
    let thought =
        [ACTION, FINAL_ANSWER].iter().filter_map(|marker| text.find(marker)).min().map_or("", |end| &text[..end]);
    // Some models name the merge request tool in CamelCase, as older GitLab prompts did.
    let tool = if tool == "MergeRequestReader" { "merge_request_reader".to_string() } else { unescape(tool) };
    Some(AgentEvent::Action { thought: unescape(thought.trim()), tool, tool_input: tool_input.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str]) -> Vec<AgentEvent> {
        run_after(true, pieces)
    }

    fn run_after(prefilled: bool, pieces: &[&str]) -> Vec<AgentEvent> {
        let mut parser = ReactParser::new(prefilled);
        let mut events: Vec<AgentEvent> = pieces.iter().filter_map(|p| parser.push(p)).collect();
        events.push(parser.finish(None));
        events
    }

    fn answer_text(events: &[AgentEvent]) -> String {
        events
            .iter()
            .map(|e| match e {
                AgentEvent::FinalAnswerDelta { text, .. } => text.as_str(),
                _ => "",
            })
            .collect()
    }

    #[test]
    fn final_answer_streams_as_deltas() {
        let events = run(&["Thought: I know this.\nFinal An", "swer: Use", " `git rebase`", "."]);
        assert_eq!(answer_text(&events), "Use `git rebase`.");
        assert!(events.len() >= 3, "{events:?}");
        assert_eq!(
            events.last(),
            Some(&AgentEvent::FinalAnswerDelta { text: String::new(), finish_reason: Some("stop".into()) })
        );
    }

    #[test]
    fn the_last_delta_carries_the_models_finish_reason() {
        let last = |reason| {
            let mut parser = ReactParser::default();
            parser.push("Thought: ok\nFinal Answer: It is");
            parser.finish(reason)
        };
        let reason_of = |event: AgentEvent| match event {
            AgentEvent::FinalAnswerDelta { finish_reason, .. } => finish_reason,
            other => panic!("not a delta: {other:?}"),
        };
        assert_eq!(reason_of(last(Some(&wit::FinishReason::Length))).as_deref(), Some("length"));
        assert_eq!(reason_of(last(Some(&wit::FinishReason::Stop))).as_deref(), Some("stop"));
        assert_eq!(reason_of(last(None)).as_deref(), Some("stop"));
        assert_eq!(
            reason_of(last(Some(&wit::FinishReason::Other("content_filter".into())))).as_deref(),
            Some("content_filter")
        );
    }

    #[test]
    fn action_is_parsed_at_the_end() {
        let text = " I need the issue.\nAction: issue_reader\nAction Input: Summarize issue #42\n";
        for cut in 0..text.len() {
            let events = run(&[&text[..cut], &text[cut..]]);
            assert_eq!(
                events,
                vec![AgentEvent::Action {
                    thought: "I need the issue.".into(),
                    tool: "issue_reader".into(),
                    tool_input: "Summarize issue #42".into(),
                }],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_repeated_thought_prefix_stays_in_the_thought() {
        let events = run(&["Thought: I need the issue.\nAction: issue\\_reader\nAction Input: #12"]);
        assert_eq!(
            events,
            vec![AgentEvent::Action {
                thought: "Thought: I need the issue.".into(),
                tool: "issue_reader".into(),
                tool_input: "#12".into(),
            }]
        );
        // Without the prefill, the model's `Thought:` is only the marker.
        let unprefilled = run_after(false, &["Thought: I need the issue.\nAction: issue_reader\nAction Input: #12"]);
        assert!(matches!(&unprefilled[0], AgentEvent::Action { thought, .. } if thought == "I need the issue."));
        let camel = run(&["Need it.\nAction: MergeRequestReader\nAction Input: !3"]);
        assert!(matches!(&camel[0], AgentEvent::Action { tool, .. } if tool == "merge_request_reader"), "{camel:?}");
    }

    #[test]
    fn trailing_whitespace_waits_for_the_next_word() {
        let mut parser = ReactParser::default();
        let deltas: Vec<_> = ["Final Answer: Use `gi", "t rebase ", "-i` ", "\n"]
            .iter()
            .filter_map(|piece| parser.push(piece))
            .map(|event| event.to_json()["data"]["text"].clone())
            .collect();
        assert_eq!(deltas, vec![json!("Use `gi"), json!("t rebase"), json!(" -i`")]);
        assert_eq!(parser.finish(None).to_json()["data"]["text"], json!(""));
    }

    #[test]
    fn every_split_gives_the_same_answer() {
        let text = "Thought: easy\nFinal Answer: It is 42.";
        for cut in 0..text.len() {
            assert_eq!(answer_text(&run(&[&text[..cut], &text[cut..]])), "It is 42.", "cut at {cut}");
        }
    }

    #[test]
    fn other_text_is_unknown() {
        assert_eq!(
            run(&["I refuse to follow ", "the format."]),
            vec![AgentEvent::Unknown { text: "I refuse to follow the format.".into() }]
        );
    }

    #[test]
    fn events_serialise_in_gitlabs_shape() {
        let delta = AgentEvent::FinalAnswerDelta { text: "hi".into(), finish_reason: None };
        assert_eq!(
            delta.to_json(),
            json!({"type": "final_answer_delta", "data": {"text": "hi", "finish_reason": null}})
        );
    }
}
