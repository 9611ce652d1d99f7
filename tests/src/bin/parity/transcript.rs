//! Reads GitLab's recorded transcripts (`gitlab-transcripts/*.json`, format in that directory's
//! README) into cases this runner can replay.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// One recorded request with what GitLab's gateway asked the model server and answered.
#[derive(Debug)]
pub struct Case {
    /// The transcript file it came from.
    pub file: String,
    /// The case's name, unique across the files.
    pub name: String,
    /// HTTP method of the GitLab request.
    pub method: String,
    /// Path (and query) as GitLab Rails sent it.
    pub path: String,
    /// Headers as sent; `Bearer <token>` stands for the token.
    pub headers: Vec<(String, String)>,
    /// The body, with `{model_endpoint}` still in it.
    pub body: String,
    /// Scopes of the token this case used.
    pub scopes: Vec<String>,
    /// The token's subject and instance id.
    pub instance_id: String,
    /// Each model-server call GitLab's gateway made, in order.
    pub model_calls: Vec<ModelCall>,
    /// What GitLab's gateway answered.
    pub answer: Value,
}

/// A model-server call as recorded.
#[derive(Debug)]
pub struct ModelCall {
    /// HTTP method GitLab's gateway used.
    pub method: String,
    /// Path relative to the model endpoint.
    pub path: String,
    /// The credential header it sent (`None`: none), and whether its value was the request's key.
    pub auth: Option<(String, bool)>,
    /// The JSON body it sent (`<sfx>` and `<current_date>` as the recording wrote them).
    pub request_body: Value,
    /// Status of the recorded answer.
    pub status: u16,
    /// Content type of the recorded answer.
    pub content_type: String,
    /// The whole recorded answer body.
    pub body: String,
    /// How often GitLab's gateway made this call in a row (its retries).
    pub times: usize,
}

impl Case {
    /// Whether the model endpoint is the server root (Ollama's native API) rather than an
    /// OpenAI-style base URL ending in `/v1`.
    pub fn endpoint_is_server_root(&self) -> bool {
        self.model_calls.iter().any(|call| call.path.starts_with("/api/"))
    }
}

/// Every case of every `*.json` file in `directory`, in file then recording order.
pub fn load(directory: &Path) -> Result<Vec<Case>> {
    let mut files: Vec<_> = std::fs::read_dir(directory)
        .with_context(|| format!("reading {}", directory.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no transcript (*.json)", directory.display());
    }
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let document: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for case in document["cases"].as_array().with_context(|| format!("{file}: no `cases` list"))? {
            cases.push(case_of(&file, &document["token"], case).with_context(|| format!("{file}: {}", case["name"]))?);
        }
    }
    Ok(cases)
}

fn case_of(file: &str, token: &Value, case: &Value) -> Result<Case> {
    let request = &case["request"];
    let text = |value: &Value, what: &str| value.as_str().map(str::to_string).with_context(|| format!("no {what}"));
    let headers = request["headers"]
        .as_object()
        .context("no request headers")?
        .iter()
        .map(|(name, value)| Ok((name.clone(), text(value, "header value")?)))
        .collect::<Result<_>>()?;
    let body = match (&request["body"], &request["body_text"]) {
        (Value::Null, Value::String(raw)) => raw.clone(),
        (Value::Null, _) => String::new(),
        (json, _) => json.to_string(),
    };
    let scopes = case.get("token_scopes").unwrap_or(&token["scopes"]);
    let scopes = scopes
        .as_array()
        .context("no token scopes")?
        .iter()
        .map(|scope| text(scope, "scope"))
        .collect::<Result<_>>()?;
    let model_calls = case["model_server"]
        .as_array()
        .context("no model_server list")?
        .iter()
        .map(|call| {
            let auth = &call["request"]["auth"];
            let auth = auth["header"]
                .as_str()
                .map(|header| (header.to_ascii_lowercase(), auth["value_is_request_api_key"].as_bool() == Some(true)));
            let request_body = match &call["request"]["body"] {
                Value::String(text) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
                other => other.clone(),
            };
            Ok(ModelCall {
                method: text(&call["request"]["method"], "model call method")?,
                path: text(&call["request"]["path"], "model call path")?,
                auth,
                request_body,
                status: u16::try_from(call["answer"]["status"].as_u64().context("no answer status")?)?,
                content_type: text(&call["answer"]["content_type"], "answer content type")?,
                body: text(&call["answer"]["body"], "answer body")?,
                times: call["times"].as_u64().map_or(1, |n| n as usize),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Case {
        file: file.to_string(),
        name: text(&case["name"], "name")?,
        method: text(&request["method"], "method")?,
        path: text(&request["path"], "path")?,
        headers,
        body,
        scopes,
        instance_id: text(&token["gitlab_instance_id"], "token instance id")?,
        model_calls,
        answer: case["gitlab_answer"].clone(),
    })
}
