//! The completion every benchmark measures, shared by `aigw-bench` and the Criterion
//! micro-benchmarks: ~7.5 KB of code before the cursor, the request the host hands the plugin
//! (as host and as native plugin types) and a model answer.

use aigw::plugins::wit;
use openai_compatible::types as native;

/// Code before the cursor: about 7.5 KB of Python.
pub fn prefix() -> String {
    code_of_length(7_500)
}

/// At least `bytes` bytes of numbered Python handlers.
pub fn code_of_length(bytes: usize) -> String {
    let unit =
        "def handler_{n}(request):\n    payload = request.json()\n    return {\"id\": {n}, \"ok\": bool(payload)}\n\n";
    let mut text = String::new();
    let mut n = 0;
    while text.len() < bytes {
        text.push_str(&unit.replace("{n}", &n.to_string()));
        n += 1;
    }
    text
}

/// A chat completion answer, as the model server sends it.
pub const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"codestral-22b","choices":[{"index":0,"message":{"role":"assistant","content":"    payload = request.json()\n    return {\"id\": 99, \"ok\": bool(payload)}\n"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2100,"completion_tokens":24,"total_tokens":2124}}"#;

/// The canonical request the host hands the plugin for this completion.
pub fn wit_request(prefix: &str) -> wit::ModelRequest {
    wit::ModelRequest {
        model: "codestral-22b".into(),
        messages: vec![wit::Message { role: wit::Role::User, content: format!("<s>[SUFFIX]\n[PREFIX]{prefix}") }],
        fill_in_middle: Some(wit::FillInMiddle { prefix: prefix.to_string(), suffix: "\n".into() }),
        sampling: wit::Sampling {
            max_tokens: Some(64),
            temperature: Some(0.32),
            top_p: None,
            stop: ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"].map(String::from).to_vec(),
        },
        stream: false,
    }
}

/// The same request as the plugin crate's own types, for the native comparison.
pub fn native_request(prefix: &str) -> native::ModelRequest {
    native::ModelRequest {
        model: "codestral-22b".into(),
        messages: vec![native::Message { role: native::Role::User, content: format!("<s>[SUFFIX]\n[PREFIX]{prefix}") }],
        fill_in_middle: Some(native::FillInMiddle { prefix: prefix.to_string(), suffix: "\n".into() }),
        sampling: native::Sampling {
            max_tokens: Some(64),
            temperature: Some(0.32),
            top_p: None,
            stop: ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"].map(String::from).to_vec(),
        },
        stream: false,
    }
}
