//! Compares aigw's answer with the one GitLab's gateway gave: the headers GitLab Rails reads, and
//! the body read the way the transcript recorded it (JSON, NDJSON events, SSE events or text),
//! masking only what the recording masked.

use aigw_tests::Answer;
use serde_json::Value;

/// What the recording wrote for values that change on every request (`id`, `created`,
/// `timestamp`): any value is equal to it.
const VOLATILE: &str = "<volatile>";

/// GitLab's error events carry the text of the Python exception its model library raised (e.g.
/// `litellm.RateLimitError: …`); no other gateway can or should send that text. Such a message
/// is equal to any non-empty message.
const PYTHON_EXCEPTION_PREFIX: &str = "litellm.";

/// GitLab's text for a template missing variables is LangChain's exception message (with the
/// names in a Python set's unstable order); aigw names the problem in its own words. Equal to
/// any non-empty message.
const LANGCHAIN_MISSING_VARIABLES: &str = "\"Input to ChatPromptTemplate is missing variables";

/// GitLab's error texts name its install directory (`<ai-assist>` in the recording) after the
/// part that says what went wrong: only that part is compared, up to the quoted id it names.
const INSTALL_DIRECTORY: &str = "<ai-assist>";

/// Every way `answer` differs from GitLab's `expected` answer, one line each; empty when equal.
pub fn differences(expected: &Value, answer: &Answer) -> Vec<String> {
    let mut found = Vec::new();
    if expected["status"].as_u64() != Some(u64::from(answer.status.as_u16())) {
        found.push(format!("status: GitLab {}, aigw {}", expected["status"], answer.status.as_u16()));
    }
    for (field, header) in
        [("content_type", "content-type"), ("x_streaming_format", "x-streaming-format"), ("retry_after", "retry-after")]
    {
        let ours = answer.header(header);
        if expected[field].as_str() != ours {
            found.push(format!("{header}: GitLab {}, aigw {}", expected[field], ours.map_or("null".into(), quote)));
        }
    }
    let text = answer.text();
    match expected["body_kind"].as_str() {
        Some("json") => match serde_json::from_str::<Value>(&text) {
            Ok(ours) => diff("body", &expected["body"], &ours, &mut found),
            Err(_) => found.push(format!("body: GitLab JSON, aigw {}", quote(&text))),
        },
        Some("ndjson") => {
            match text.lines().map(serde_json::from_str).collect::<Result<Vec<Value>, _>>() {
                Ok(events) => diff("events", &expected["body"], &Value::Array(events), &mut found),
                Err(_) => found.push(format!("body: GitLab NDJSON, aigw {}", quote(&text))),
            }
            if expected.pointer("/framing/trailing_newline") == Some(&Value::Bool(true)) && !text.ends_with('\n') {
                found.push("framing: GitLab ends the NDJSON body with a newline, aigw does not".into());
            }
        }
        Some("sse") => {
            diff("events", &expected["body"], &Value::Array(sse_events(&text)), &mut found);
            if expected.pointer("/framing/line_separator").and_then(Value::as_str) == Some("CRLF")
                && text.replace("\r\n", "").contains('\n')
            {
                found.push("framing: GitLab ends SSE lines with CRLF, aigw with LF".into());
            }
        }
        Some("text") => {
            if expected["body"].as_str() != Some(text.as_str()) {
                found.push(format!("body: GitLab {}, aigw {}", expected["body"], quote(&text)));
            }
        }
        other => found.push(format!("the transcript's body_kind {other:?} is unknown to this runner")),
    }
    found
}

/// Whether `expected` holds the value GitLab masked as changing per request.
fn masked(expected: &Value, ours: &Value) -> bool {
    match expected.as_str() {
        Some(VOLATILE) => !ours.is_null(),
        Some(message)
            if message.starts_with(PYTHON_EXCEPTION_PREFIX) || message.starts_with(LANGCHAIN_MISSING_VARIABLES) =>
        {
            ours.as_str().is_some_and(|m| !m.is_empty())
        }
        Some(message) if message.contains(INSTALL_DIRECTORY) => {
            // "Failed to load prompt definition for 'x': <what, with the directory>"
            let what = message.find("': ").map_or(message, |end| &message[..end + 2]);
            ours.as_str().is_some_and(|m| m.starts_with(what))
        }
        _ => false,
    }
}

/// Structural comparison: object keys both ways, arrays element by element.
fn diff(path: &str, expected: &Value, ours: &Value, found: &mut Vec<String>) {
    if masked(expected, ours) {
        return;
    }
    match (expected, ours) {
        (Value::Object(theirs), Value::Object(mine)) => {
            for (key, value) in theirs {
                match mine.get(key) {
                    Some(our_value) => diff(&format!("{path}.{key}"), value, our_value, found),
                    None => {
                        found.push(format!("{path}.{key}: GitLab {}, aigw has no such field", excerpt_value(value)))
                    }
                }
            }
            for key in mine.keys().filter(|key| !theirs.contains_key(*key)) {
                found.push(format!("{path}.{key}: aigw sends {}, GitLab has no such field", excerpt_value(&mine[key])));
            }
        }
        (Value::Array(theirs), Value::Array(mine)) if theirs.len() == mine.len() => {
            for (index, (value, our_value)) in theirs.iter().zip(mine).enumerate() {
                diff(&format!("{path}[{index}]"), value, our_value, found);
            }
        }
        (Value::Array(theirs), Value::Array(mine)) => found.push(format!(
            "{path}: GitLab {} items {}, aigw {} items {}",
            theirs.len(),
            excerpt_value(expected),
            mine.len(),
            excerpt_value(ours)
        )),
        _ if expected != ours => {
            found.push(format!("{path}: GitLab {}, aigw {}", excerpt_value(expected), excerpt_value(ours)));
        }
        _ => {}
    }
}

/// SSE events as the transcripts record them: `{"event", "data"}`, data parsed as JSON where it
/// is JSON, `null` where there is none.
fn sse_events(text: &str) -> Vec<Value> {
    let normalised = text.replace("\r\n", "\n");
    normalised
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = Value::Null;
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = Value::String(name.trim_start().to_string());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            let data = data.join("\n");
            let data =
                if data.is_empty() { Value::Null } else { serde_json::from_str(&data).unwrap_or(Value::String(data)) };
            serde_json::json!({"event": event, "data": data})
        })
        .collect()
}

fn quote(text: &str) -> String {
    excerpt_value(&Value::String(text.to_string()))
}

/// A value as JSON, cut to a readable length.
fn excerpt_value(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 240 { text } else { format!("{}…", text.chars().take(240).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn volatile_values_match_anything_but_absence() {
        let mut found = Vec::new();
        diff("body", &json!({"id": VOLATILE, "n": 1}), &json!({"id": "abc", "n": 1}), &mut found);
        assert!(found.is_empty(), "{found:?}");
        diff("body", &json!({"id": VOLATILE}), &json!({}), &mut found);
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn extra_and_missing_fields_are_both_differences() {
        let mut found = Vec::new();
        diff("body", &json!({"a": 1}), &json!({"b": 1}), &mut found);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn sse_events_read_crlf_and_empty_data() {
        let events = sse_events("event: stream_start\r\ndata: {\"a\":1}\r\n\r\nevent: stream_end\r\ndata: \r\n\r\n");
        assert_eq!(
            events,
            vec![json!({"event": "stream_start", "data": {"a": 1}}), json!({"event": "stream_end", "data": null})]
        );
    }
}
