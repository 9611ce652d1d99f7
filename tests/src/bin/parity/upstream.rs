//! Compares the requests aigw sent to the model server with those GitLab's gateway sent for the
//! same case: method, path, credential placement, and the JSON body, whole (the security block's
//! random suffix and the date masked) or by its structure alone, and says where they differ.

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

/// How much of the body is compared.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Body {
    /// Every byte, as when aigw renders GitLab's own prompts.
    Whole,
    /// Everything but the prose of system and user messages (see [`structure`]), as when aigw
    /// renders its own prompts in its own words.
    Structure,
}

/// The first call of `case` against the first request aigw sent, and where they differ.
/// `base_path` is the endpoint's path (`/v1`), which GitLab's recording leaves out.
pub fn compare(
    case: &Case,
    sent: &[Recorded],
    base_path: &str,
    api_key: Option<&str>,
    body: Body,
) -> (Upstream, Vec<String>) {
    let (Some(theirs), Some(ours)) = (case.model_calls.first(), sent.first()) else {
        return match (case.model_calls.is_empty(), sent.is_empty()) {
            (true, true) => (Upstream::NoCall, Vec::new()),
            (false, _) => (Upstream::Different, vec!["aigw called no model server".into()]),
            (true, false) => (Upstream::Different, vec!["GitLab's gateway called no model server".into()]),
        };
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
        let line = format!(
            "request: GitLab {} {} (credential {:?}), aigw {} {path} (credential as GitLab's: {credential_equal})",
            theirs.method, theirs.path, theirs.auth, ours.method
        );
        return (Upstream::Different, vec![line]);
    }
    let mut found = Vec::new();
    match body {
        Body::Whole => differences("body", &theirs.request_body, &ours.body, &mut found),
        Body::Structure => found = structural_differences(&theirs.request_body, &ours.body),
    }
    if found.is_empty() { (Upstream::Identical, found) } else { (Upstream::SameShape, found) }
}

/// Where `ours` differs from `theirs`, as JSON paths with both values (long texts shortened to
/// the first place they part).
fn differences(path: &str, theirs: &Value, ours: &Value, found: &mut Vec<String>) {
    match (theirs, ours) {
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{index}]"), x, y, found);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => differences(&format!("{path}.{key}"), value, other, found),
                    None => found.push(format!("{path}.{key}: GitLab {}, aigw has none", short(value))),
                }
            }
            for (key, value) in b.iter().filter(|(key, _)| !a.contains_key(*key)) {
                found.push(format!("{path}.{key}: GitLab has none, aigw {}", short(value)));
            }
        }
        (Value::String(a), Value::String(b)) => {
            if let Some((theirs_at, ours_at)) = mismatch(a, b) {
                // A little before the parting, on character boundaries.
                let excerpt = |text: &str, at: usize| {
                    let start = (0..=at.saturating_sub(20)).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
                    text[start..].chars().take(60).collect::<String>()
                };
                found.push(format!(
                    "{path}: texts part at byte {theirs_at} of {} / {ours_at} of {}: GitLab {:?}, aigw {:?}",
                    a.len(),
                    b.len(),
                    excerpt(a, theirs_at),
                    excerpt(b, ours_at)
                ));
            }
        }
        _ if masked(theirs, ours) => {}
        _ => found.push(format!("{path}: GitLab {}, aigw {}", short(theirs), short(ours))),
    }
}

/// Where the structure of `ours` differs from that of `theirs` (see [`structure`]).
pub fn structural_differences(theirs: &Value, ours: &Value) -> Vec<String> {
    let mut found = Vec::new();
    differences("body", &structure(theirs), &structure(ours), &mut found);
    found
}

/// The body with the prose taken out: each system or user message's text (and Ollama's
/// `prompt`) becomes what a prompt's structure consists of, namely whether it starts with a
/// content guard (GitLab's tool-output policy or aigw's own, both a tag with 16 random hex
/// digits) and the model's special tokens in order (`[SUFFIX]`, `<|fim_prefix|>`, `<PRE>`, …).
/// Assistant messages (the prefill and the ReAct scratchpad: the parser's grammar and the
/// request's own data) and every other field stay as they are.
pub fn structure(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        for message in messages {
            let role = message["role"].as_str().unwrap_or_default().to_owned();
            if role != "assistant"
                && let Some(text) = message["content"].as_str()
            {
                message["content"] = skeleton(text);
            }
        }
    }
    if let Some(text) = body.get("prompt").and_then(Value::as_str) {
        body["prompt"] = skeleton(text);
    }
    body
}

fn skeleton(text: &str) -> Value {
    serde_json::json!({ "guarded": starts_with_guard(text), "special_tokens": special_tokens(text) })
}

/// Whether `text` opens with a tag named `<word_…_<16 hex digits>>` (or the recording's
/// `<sfx>` in their place).
fn starts_with_guard(text: &str) -> bool {
    let Some(tag) = text.strip_prefix('<').and_then(|rest| rest.split_once('>')).map(|(tag, _)| tag) else {
        return false;
    };
    let suffix = tag.strip_suffix("<sfx").map(|name| (name, "")).or_else(|| {
        let cut = tag.len().checked_sub(16)?;
        tag.is_char_boundary(cut).then(|| (&tag[..cut], &tag[cut..]))
    });
    suffix.is_some_and(|(name, digits)| {
        name.len() > 1
            && name.ends_with('_')
            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            && digits.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The model-format tokens in `text`, in order: `<|…|>` and `<｜…｜>` tokens, `[INST]`-style
/// upper-case bracket tokens, Code Llama's `<PRE>`/`<SUF>`/`<MID>`/`<EOT>`, and `<s>`/`</s>`.
fn special_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(['<', '[']) {
        rest = &rest[start..];
        let token = ["<|", "<｜"]
            .iter()
            .zip(["|>", "｜>"])
            .find_map(|(open, close)| {
                let inner = rest.strip_prefix(open)?;
                let end = inner.find(close)?;
                let name = &inner[..end];
                (!name.is_empty() && !name.contains(char::is_whitespace))
                    .then(|| rest[..open.len() + end + close.len()].to_owned())
            })
            .or_else(|| {
                let end = rest.find(']')?;
                let name = rest[1..end].strip_prefix('/').unwrap_or(&rest[1..end]);
                (rest.starts_with('[') && name.len() > 1 && name.bytes().all(|b| b.is_ascii_uppercase()))
                    .then(|| rest[..=end].to_owned())
            })
            .or_else(|| {
                ["<PRE>", "<SUF>", "<MID>", "<EOT>", "<s>", "</s>"]
                    .iter()
                    .find(|token| rest.starts_with(**token))
                    .map(|token| (*token).to_owned())
            });
        let advance = token.as_ref().map_or_else(|| rest.chars().next().map_or(1, char::len_utf8), String::len);
        tokens.extend(token);
        rest = &rest[advance..];
    }
    tokens
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 { format!("{}…", text.chars().take(80).collect::<String>()) } else { text }
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
    mismatch(pattern, text).is_none()
}

/// Where `text` stops matching `pattern` (placeholders standing for their values): the byte
/// offsets in both, or `None` when it matches.
fn mismatch(pattern: &str, text: &str) -> Option<(usize, usize)> {
    // The pattern cut at its placeholders: (offset, literal, the placeholder after it).
    let mut parts = Vec::new();
    let mut at = 0;
    loop {
        let rest = &pattern[at..];
        let next = ["<sfx>", "<current_date>"].iter().filter_map(|p| rest.find(p).map(|i| (i, *p))).min();
        match next {
            Some((index, placeholder)) => {
                parts.push((at, &rest[..index], Some(placeholder)));
                at += index + placeholder.len();
            }
            None => {
                parts.push((at, rest, None));
                break;
            }
        }
    }
    let mut consumed = 0;
    for (index, (offset, literal, placeholder)) in parts.iter().enumerate() {
        let rest = &text[consumed..];
        if !rest.starts_with(literal) {
            let common = literal.bytes().zip(rest.bytes()).take_while(|(a, b)| a == b).count();
            return Some((offset + common, consumed + common));
        }
        consumed += literal.len();
        match placeholder {
            None => {}
            Some("<sfx>") => {
                // 16 hex digits: ASCII, so the cut after them is a character boundary.
                let digits = text.as_bytes().get(consumed..consumed + 16);
                if !digits.is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit)) {
                    return Some((offset + literal.len(), consumed));
                }
                consumed += 16;
            }
            Some(_) => {
                // The date runs to the start of the next literal (its first few characters, so
                // that a difference further on is reported where it is).
                let next = parts.get(index + 1).map_or("", |(_, literal, _)| *literal);
                let next = &next[..(0..=next.len().min(8)).rev().find(|i| next.is_char_boundary(*i)).unwrap_or(0)];
                let end = if next.is_empty() { Some(text.len() - consumed) } else { text[consumed..].find(next) };
                let Some(end) = end else {
                    return Some((offset + literal.len(), consumed));
                };
                consumed += end;
            }
        }
    }
    (consumed != text.len()).then_some((pattern.len(), consumed))
}

#[cfg(test)]
mod tests {
    use super::{mismatch, special_tokens, starts_with_guard, structure, text_matches};
    use serde_json::json;

    #[test]
    fn placeholders_stand_for_the_values_that_change() {
        assert!(text_matches("<tag_<sfx>>x</tag_<sfx>>", "<tag_0123456789abcdef>x</tag_0123456789abcdef>"));
        assert!(!text_matches("<tag_<sfx>>x", "<tag_0123>x"));
        assert!(text_matches("Today is <current_date>.", "Today is Tuesday, December, 01, 2026."));
        assert!(text_matches("plain", "plain") && !text_matches("plain", "other"));
        assert_eq!(mismatch("ab<sfx>cd", "ab0123456789abcdefce"), Some((8, 19)));
        assert_eq!(mismatch("abc", "abcd"), Some((3, 3)));
    }

    #[test]
    fn structure_keeps_roles_tokens_guard_and_prefill_but_not_prose() {
        assert_eq!(special_tokens("<s>[SUFFIX]b[PREFIX]a [x] [I]"), ["<s>", "[SUFFIX]", "[PREFIX]"]);
        assert_eq!(
            special_tokens("<|fim_prefix|>a<|fim_suffix|><| x |><PRE> <SUF>"),
            ["<|fim_prefix|>", "<|fim_suffix|>", "<PRE>", "<SUF>"]
        );
        assert_eq!(special_tokens("<｜fim▁begin｜>é<｜fim▁hole｜>"), ["<｜fim▁begin｜>", "<｜fim▁hole｜>"]);
        assert!(starts_with_guard("<tool_output_policy_<sfx>>\nrules"));
        assert!(starts_with_guard("<content_policy_0123456789abcdef>rules"));
        assert!(!starts_with_guard("<content_policy_0123>rules") && !starts_with_guard("You are"));
        let theirs = json!({"model": "m", "messages": [
            {"role": "system", "content": "One wording."},
            {"role": "user", "content": "[SUFFIX]x[PREFIX]y"},
            {"role": "assistant", "content": "Thought:"}]});
        let ours = json!({"model": "m", "messages": [
            {"role": "system", "content": "Another wording."},
            {"role": "user", "content": "[SUFFIX]other code[PREFIX]y"},
            {"role": "assistant", "content": "Thought:"}]});
        assert_eq!(structure(&theirs), structure(&ours));
        let mut no_prefill = ours.clone();
        no_prefill["messages"][2]["content"] = json!("Thought: ");
        assert_ne!(structure(&theirs), structure(&no_prefill));
    }
}
