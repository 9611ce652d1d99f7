//! Compares the requests aigw sent to the model server with those GitLab's gateway sent for the
//! same case: method, path, credential placement, and the JSON body whole (the security block's
//! random suffix and the date masked). Reported, not enforced, until the prompt-parity work
//! makes them equal: the body carries the prompt text, which is aigw's own.

use crate::transcript::Case;
use aigw_tests::Recorded;
use serde_json::Value;

/// How the first model-server request of a case compares.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Upstream {
    /// Neither gateway called the model server.
    NoCall,
    /// Method, path, credential and body all equal.
    Identical,
    /// Method, path and credential equal; the body differs.
    SameShape,
    /// The method, path or credential differs, or only one gateway called.
    Different,
}

/// The first call of `case` against the first request aigw sent. `base_path` is the endpoint's
/// path (`/v1`), which GitLab's recording leaves out.
pub fn compare(case: &Case, sent: &[Recorded], base_path: &str, api_key: Option<&str>) -> Upstream {
    let (Some(theirs), Some(ours)) = (case.model_calls.first(), sent.first()) else {
        return if case.model_calls.is_empty() && sent.is_empty() { Upstream::NoCall } else { Upstream::Different };
    };
    let path = ours.path.strip_prefix(base_path).unwrap_or(&ours.path);
    let credential = |(header, is_key): &(String, bool)| {
        let value = ours.headers.get(header.as_str()).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let carries_key = api_key.is_some_and(|key| !key.is_empty() && value.contains(key));
        !value.is_empty() && carries_key == *is_key
    };
    let credential_equal = match &theirs.auth {
        Some(auth) => credential(auth),
        None => !ours.headers.contains_key("authorization"),
    };
    if ours.method.as_str() != theirs.method || path != theirs.path || !credential_equal {
        return Upstream::Different;
    }
    if masked(&theirs.request_body, &ours.body) { Upstream::Identical } else { Upstream::SameShape }
}

/// Equal, where the recording's `<sfx>` (16 hex digits) and `<current_date>` stand for any value.
fn masked(theirs: &Value, ours: &Value) -> bool {
    match (theirs, ours) {
        (Value::String(a), Value::String(b)) => text_matches(a, b),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| masked(x, y)),
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(key, value)| b.get(key).is_some_and(|other| masked(value, other)))
        }
        _ => theirs == ours,
    }
}

/// `pattern` with `<sfx>` and `<current_date>` placeholders against `text`.
fn text_matches(pattern: &str, text: &str) -> bool {
    // The pattern cut at its placeholders: (literal, the placeholder after it).
    let mut parts = Vec::new();
    let mut rest = pattern;
    loop {
        let next = ["<sfx>", "<current_date>"].iter().filter_map(|p| rest.find(p).map(|at| (at, *p))).min();
        match next {
            Some((at, placeholder)) => {
                parts.push((&rest[..at], Some(placeholder)));
                rest = &rest[at + placeholder.len()..];
            }
            None => {
                parts.push((rest, None));
                break;
            }
        }
    }
    let mut text = text;
    for (index, (literal, placeholder)) in parts.iter().enumerate() {
        let Some(after) = text.strip_prefix(literal) else {
            return false;
        };
        text = after;
        match placeholder {
            None => {}
            Some("<sfx>") => {
                // 16 hex digits: ASCII, so the cut after them is a character boundary.
                if !text.as_bytes().get(..16).is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                text = &text[16..];
            }
            Some(_) => {
                // The date runs to the next literal.
                let next = parts.get(index + 1).map_or("", |(literal, _)| *literal);
                let end = if next.is_empty() { Some(text.len()) } else { text.find(next) };
                let Some(end) = end else {
                    return false;
                };
                text = &text[end..];
            }
        }
    }
    text.is_empty()
}

#[cfg(test)]
mod tests {
    use super::text_matches;

    #[test]
    fn placeholders_stand_for_the_values_that_change() {
        assert!(text_matches("<tag_<sfx>>x</tag_<sfx>>", "<tag_0123456789abcdef>x</tag_0123456789abcdef>"));
        assert!(!text_matches("<tag_<sfx>>x", "<tag_0123>x"));
        assert!(text_matches("Today is <current_date>.", "Today is Tuesday, December, 01, 2026."));
        assert!(text_matches("plain", "plain") && !text_matches("plain", "other"));
    }
}
