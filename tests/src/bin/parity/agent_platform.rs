//! GitLab's Duo Workflow Service through the model API: every model call it made in
//! `agent-platform/` (Agentic Chat turns, with and without a tool call, streamed and whole) is
//! sent to aigw's `/v1/chat/completions` as DWS sent it, with the recorded answer served by the
//! mock model server. Each must reach the model server as DWS sent it (the model name mapped,
//! nothing else changed) and come back to the client as the server sent it, event by event.

use aigw_tests::{Recording, Setup, TestGateway};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Method;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// The client key the replay uses, and the model name DWS is configured with.
const KEY: &str = "sk-aigw-parity-dws-0123456789";
const NAME: &str = "duo-agent";

async fn gateway(upstream_key: &str, server_model: &str) -> Result<(TestGateway, tempfile::TempDir)> {
    let secrets = tempfile::tempdir()?;
    let key_file = secrets.path().join("upstream-key");
    std::fs::write(&key_file, upstream_key)?;
    let server_model = server_model.to_string();
    let gateway = Setup::default()
        .models(move |mock| {
            format!(
                "[[models]]\nname = \"{NAME}\"\nidentifier = \"custom_openai/{server_model}\"\nendpoint = \"{}\"\n\
                 api_key_file = \"{}\"\n\n[[keys]]\nid = \"dws\"\nsha256 = \"{}\"\nmodels = [\"{NAME}\"]\n",
                mock.base_url(),
                key_file.display(),
                aigw::models::key_sha256_hex(KEY)
            )
        })
        .start()
        .await;
    Ok((gateway, secrets))
}

/// The `data:` payloads of an SSE body, in order.
fn events(body: &str) -> Vec<&str> {
    body.split("\n\n").filter_map(|event| event.trim_start_matches('\n').strip_prefix("data: ")).collect()
}

/// Replays every recording; returns the failures and the report's section.
pub(crate) async fn run(reference: &Path) -> Result<(usize, String)> {
    let directory = reference.join("agent-platform");
    let mut files: Vec<_> = std::fs::read_dir(&directory)
        .with_context(|| format!("GitLab's Agent Platform recordings are not at {}", directory.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no recordings in {}", directory.display());
    }
    let mut report = String::from("\nGitLab's Duo Workflow Service through the model API (agent-platform/):\n");
    let (mut calls, mut requests_same, mut answers_same, mut failed) = (0, 0, 0, 0);
    let mut largest = 0;
    for file in &files {
        let recording: Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        for (index, call) in recording["model_calls"].as_array().context("no model_calls")?.iter().enumerate() {
            calls += 1;
            let sent_body = &call["body"];
            let server_model = sent_body["model"].as_str().context("no model")?;
            let upstream_key = call["headers"]["authorization"]
                .as_str()
                .and_then(|value| value.strip_prefix("Bearer "))
                .unwrap_or_default();
            let (gateway, _secrets) = gateway(upstream_key, server_model).await?;
            let response = &call["response"];
            let recorded_answer = response["body"].as_str().context("no response body")?;
            gateway.model.replay(vec![Recording {
                status: response["status"].as_u64().unwrap_or(200) as u16,
                content_type: response["content_type"].as_str().unwrap_or("application/json").to_string(),
                body: recorded_answer.to_string(),
            }]);
            let mut client_body = sent_body.clone();
            client_body["model"] = Value::String(NAME.to_string());
            let text = serde_json::to_vec(&client_body)?;
            largest = largest.max(text.len());
            let headers = vec![
                ("authorization".to_string(), format!("Bearer {KEY}")),
                ("content-type".to_string(), "application/json".to_string()),
                ("user-agent".to_string(), call["headers"]["user-agent"].as_str().unwrap_or("").to_string()),
            ];
            let answer = gateway.request(Method::POST, "/v1/chat/completions", &headers, Bytes::from(text)).await;
            let mut problems = Vec::new();
            match gateway.model.requests().as_slice() {
                [received] => {
                    if received.path != call["path"].as_str().unwrap_or_default() {
                        problems.push(format!("path {} where DWS called {}", received.path, call["path"]));
                    }
                    let authorization = received.headers.get("authorization").and_then(|v| v.to_str().ok());
                    if authorization != call["headers"]["authorization"].as_str() {
                        problems.push("the model server got another credential".into());
                    }
                    if received.body == *sent_body {
                        requests_same += 1;
                    } else {
                        problems.push(differing_fields(sent_body, &received.body));
                    }
                }
                other => problems.push(format!("{} model-server requests where DWS made one", other.len())),
            }
            let streamed = response["content_type"].as_str().is_some_and(|t| t.starts_with("text/event-stream"));
            let answered = answer.text();
            let same_answer = if streamed {
                events(&answered) == events(recorded_answer)
            } else {
                serde_json::from_str::<Value>(&answered).ok() == serde_json::from_str::<Value>(recorded_answer).ok()
            };
            if answer.status.as_u16() != response["status"].as_u64().unwrap_or(200) as u16 {
                problems.push(format!("status {}", answer.status));
            } else if same_answer {
                answers_same += 1;
            } else {
                problems.push(format!(
                    "the answer differs: {} events where the server sent {}",
                    events(&answered).len(),
                    events(recorded_answer).len()
                ));
            }
            if problems.is_empty() {
                writeln!(report, "equal      {name} call {} ({} bytes)", index + 1, client_body.to_string().len())?;
            } else {
                failed += 1;
                writeln!(report, "DIFFERENT  {name} call {}", index + 1)?;
                for problem in problems {
                    writeln!(report, "             {problem}")?;
                }
            }
        }
    }
    writeln!(
        report,
        "{calls} model calls replayed: {requests_same} reached the model server as DWS sent them, {answers_same} \
         came back to the client as the server sent them (largest request {} KB)",
        largest / 1000
    )?;
    Ok((failed, report))
}

/// The top-level fields (and messages) where `expected` and `got` differ.
fn differing_fields(expected: &Value, got: &Value) -> String {
    let keys = |value: &Value| value.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let mut names: Vec<String> = keys(expected).into_iter().chain(keys(got)).collect();
    names.sort();
    names.dedup();
    let differing: Vec<String> = names.into_iter().filter(|name| expected.get(name) != got.get(name)).collect();
    format!("the model server's request differs in {differing:?}")
}
