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
    /// Everything received.
    text: String,
    /// Byte offset of the final answer's first character, once `Final Answer:` was seen.
    answer_from: Option<usize>,
    /// How much of the final answer was already emitted.
    emitted: usize,
}

impl ReactParser {
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
        let end = self.text.len();
        if end == self.emitted {
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
            return AgentEvent::FinalAnswerDelta {
                text: self.text[self.emitted..].to_string(),
                finish_reason: Some(reason),
            };
        }
        match parse_action(&self.text) {
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

fn parse_action(text: &str) -> Option<AgentEvent> {
    let tool = field(text, ACTION, &[ACTION_INPUT, "\n"])?;
    let tool_input = field(text, ACTION_INPUT, &["Observation:"])?;
    if tool.is_empty() {
        return None;
    }
    let thought = field(text, THOUGHT, &[ACTION]).unwrap_or_default();
    Some(AgentEvent::Action {
        thought: thought.to_string(),
        tool: tool.to_string(),
        tool_input: tool_input.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str]) -> Vec<AgentEvent> {
        let mut parser = ReactParser::default();
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
        let text = "Thought: I need the issue.\nAction: issue_reader\nAction Input: Summarize issue #42\n";
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
