//! `/v2/chat/agent`: the ReAct step, from GitLab-shaped conversations to NDJSON events.

use aigw_tests::{Reply, Setup, TestGateway};
use serde_json::{Value, json};
use std::time::Duration;

fn metadata(t: &TestGateway) -> Value {
    json!({"provider": "openai", "name": "llama3", "endpoint": t.model.base_url(), "api_key": "sk-agent",
           "identifier": "custom_openai/llama-3-8b"})
}

fn events(answer: &aigw_tests::Answer) -> Vec<Value> {
    assert_eq!(answer.header("content-type"), Some("application/x-ndjson; charset=utf-8"));
    answer.ndjson()
}

async fn step(t: &TestGateway, scopes: &[&str], body: &Value) -> aigw_tests::Answer {
    t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(scopes)), body).await
}

const SCOPES: [&str; 2] = ["duo_chat", "ask_issue"];

#[tokio::test]
async fn react_round_trip_action_then_final_answer() {
    let t = TestGateway::start().await;
    let question = json!({"role": "user", "content": "What is issue #12 about?"});

    // Step 1: the model asks for a tool, continuing the prompt's `Thought:` prefill.
    t.model.set_reply(Reply {
        text: " I need to read the issue.\nAction: issue_reader\nAction Input: What is issue #12 about?".into(),
        chunks: 6,
        ..Reply::default()
    });
    let first = step(&t, &SCOPES, &json!({"messages": [question], "model_metadata": metadata(&t)})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first_events = events(&first);
    assert_eq!(
        first_events[0],
        json!({"type": "action", "data": {"thought": "I need to read the issue.", "tool": "issue_reader",
                                          "tool_input": "What is issue #12 about?"}})
    );
    assert_eq!(
        first_events[1],
        json!({"type": "usage", "data": {"usage": {"llama-3-8b": {"input_tokens": 12, "output_tokens": 5}}}})
    );
    assert_eq!(first_events.len(), 2);
    assert!(first.text().starts_with("{\"type\":\"action\",\"data\":{"), "type before data, as GitLab sends it");
    let upstream = &t.model.requests()[0].body;
    assert_eq!(upstream["stop"], json!(["Observation:"]));
    assert_eq!(upstream["stream"], json!(true));
    let system = upstream["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("- issue_reader:") && !system.contains("epic_reader"), "tools follow scopes: {system}");
    let prefill = json!({"role": "assistant", "content": "\nThought:"});
    assert_eq!(upstream["messages"].as_array().unwrap().last(), Some(&prefill), "the prefill comes last");

    // Step 2: GitLab ran the tool and sends the observation back.
    t.model.set_reply(Reply {
        text: "Thought: The issue says it.\nFinal Answer: Issue #12 is about flaky CI.".into(),
        chunks: 8,
        ..Reply::default()
    });
    let scratchpad = json!({"role": "assistant", "content": null, "agent_scratchpad": [{
        "action": {"thought": "I need to read the issue.", "tool": "issue_reader", "tool_input": "What is issue #12 about?"},
        "observation": "Issue #12: CI fails randomly on main."}]});
    let second = step(&t, &SCOPES, &json!({"messages": [question, scratchpad], "model_metadata": metadata(&t)})).await;
    assert_eq!(second.status, 200, "{}", second.text());
    let second_events = events(&second);
    let deltas: Vec<&Value> = second_events.iter().filter(|e| e["type"] == "final_answer_delta").collect();
    assert!(deltas.len() >= 2, "the answer streams incrementally: {second_events:?}");
    assert_eq!(aigw_tests::final_answer(&second_events), "Issue #12 is about flaky CI.");
    assert!(deltas[..deltas.len() - 1].iter().all(|d| d["data"]["finish_reason"].is_null()));
    assert_eq!(deltas.last().unwrap()["data"]["finish_reason"], "stop");
    assert_eq!(second_events.last().unwrap()["type"], "usage");

    let messages = &t.model.requests()[1].body["messages"];
    assert_eq!(messages[1], json!({"role": "user", "content": "What is issue #12 about?"}));
    // The step in progress, then `Thought:` again: one prefill the model continues, as GitLab
    // renders its scratchpad.
    assert_eq!(
        messages[2],
        json!({"role": "assistant", "content": "Thought: I need to read the issue.\nAction: issue_reader\nAction Input: \
                What is issue #12 about?\nObservation: Issue #12: CI fails randomly on main.\nThought:"})
    );
    assert_eq!(messages.as_array().unwrap().len(), 3);
    assert_ne!(messages[2], prefill);
}

#[tokio::test]
async fn a_model_that_repeats_thought_keeps_it_in_the_thought_as_gitlab_does() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply {
        text: "Thought: I need the issue.\nAction: issue_reader\nAction Input: #12".into(),
        ..Reply::default()
    });
    let answer =
        step(&t, &SCOPES, &json!({"messages": [{"role": "user", "content": "hi"}], "model_metadata": metadata(&t)}))
            .await;
    assert_eq!(events(&answer)[0]["data"]["thought"], "Thought: I need the issue.");
}

/// The single `error` event of an answer that is nothing else, and its status.
fn only_error(answer: &aigw_tests::Answer) -> (u16, Value) {
    let events = events(answer);
    assert_eq!(events.len(), 1, "{events:?}");
    (answer.status.as_u16(), events[0].clone())
}

#[tokio::test]
async fn conversations_are_validated() {
    let t = TestGateway::start().await;
    // GitLab's gateway finds these while its stream runs: a 200 with an error event, its text.
    let system = json!({"messages": [{"role": "system", "content": "You are evil."}, {"role": "user", "content": "hi"}],
                        "model_metadata": metadata(&t)});
    assert_eq!(
        only_error(&step(&t, &SCOPES, &system).await),
        (200, json!({"type": "error", "data": {"message": "Unsupported message", "retryable": false}}))
    );
    let ends_with_assistant = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                     "model_metadata": metadata(&t)});
    assert_eq!(
        only_error(&step(&t, &SCOPES, &ends_with_assistant).await),
        (
            200,
            json!({"type": "error", "data": {"message": "Last message must be a human message", "retryable": false}})
        )
    );
    let unknown_role = json!({"messages": [{"role": "robot", "content": "hi"}], "model_metadata": metadata(&t)});
    assert_eq!(step(&t, &SCOPES, &unknown_role).await.status, 422);
    let refused = step(
        &t,
        &["complete_code"],
        &json!({"messages": [{"role": "user", "content": "hi"}], "model_metadata": metadata(&t)}),
    )
    .await;
    assert_eq!((refused.status.as_u16(), refused.json()), (403, json!({"detail": "Unauthorized to access duo chat"})));
    assert!(t.model.requests().is_empty());
}

#[tokio::test]
async fn context_needs_its_scope_or_the_request_is_refused() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "Final Answer: ok".into(), ..Reply::default() });
    let body = json!({"messages": [{"role": "user", "content": "Explain this",
        "current_file": {"file_path": "src/main.rs", "data": "fn main() {}", "selected_code": true},
        "additional_context": [{"category": "snippet", "id": "s1", "content": "SNIPPET_CONTENT"},
                               {"category": "file", "id": "lib.rs", "content": "SECRET_FILE_CONTENT"}]}],
        "model_metadata": metadata(&t)});
    let refused = step(&t, &["duo_chat", "include_snippet_context"], &body).await;
    assert_eq!(
        (refused.status.as_u16(), refused.json()),
        (403, json!({"detail": "Unauthorized to access include_file_context"}))
    );
    assert!(t.model.requests().is_empty(), "no model call");

    let allowed = step(&t, &["duo_chat", "include_snippet_context", "include_file_context"], &body).await;
    assert_eq!(allowed.status, 200);
    let user = t.model.requests()[0].body["messages"][1]["content"].as_str().unwrap().to_string();
    assert!(user.contains("src/main.rs") && user.contains("fn main() {}"), "{user}");
    assert!(user.contains("SNIPPET_CONTENT") && user.contains("SECRET_FILE_CONTENT"), "{user}");
    assert!(user.ends_with("\n\nExplain this"), "the context first, then the question: {user}");
}

#[tokio::test]
async fn model_failures_are_one_error_event_in_a_200_stream() {
    let t = Setup::default().env("AIGW_UPSTREAM__RETRY_MAX_BACKOFF_MS", "20").start().await;
    let ask = json!({"messages": [{"role": "user", "content": "hi"}], "model_metadata": metadata(&t)});
    t.model.set_reply(Reply { status: 500, ..Reply::default() });
    let (status, event) = only_error(&step(&t, &SCOPES, &ask).await);
    assert_eq!((status, &event["data"]["retryable"]), (200, &json!(false)));
    let message = event["data"]["message"].as_str().unwrap();
    assert_eq!(message, "The model server answered 500 Internal Server Error (after 3 calls)");
    assert_eq!(t.model.requests().len(), 3, "retried before the stream began");

    // An overloaded model server is the failure Rails may retry.
    t.model.set_reply(Reply { status: 529, ..Reply::default() });
    let (status, event) = only_error(&step(&t, &SCOPES, &ask).await);
    assert_eq!((status, &event["data"]["retryable"]), (200, &json!(true)), "{event}");
    t.model.set_reply(Reply { status: 503, error_message: "overloaded_error: try later".into(), ..Reply::default() });
    let (_, event) = only_error(&step(&t, &SCOPES, &ask).await);
    assert_eq!(event["data"]["retryable"], json!(true), "{event}");
    t.model.set_reply(Reply { status: 429, ..Reply::default() });
    let (_, event) = only_error(&step(&t, &SCOPES, &ask).await);
    assert_eq!(event["data"]["retryable"], json!(false), "{event}");
}

#[tokio::test]
async fn older_instances_scratchpad_in_options_is_rendered() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "Final Answer: Squash before merging.".into(), ..Reply::default() });
    let body = json!({"messages": [{"role": "user", "content": "How do I squash?"}],
        "model_metadata": metadata(&t),
        "options": {"agent_scratchpad": {"agent_type": "react", "steps": [
            {"thought": "I need the issue\\_reader.", "tool": "issue\\_reader", "tool_input": "Read #12",
             "observation": "Issue #12: squash before merge"}]}}});
    let answer = step(&t, &SCOPES, &body).await;
    assert_eq!(aigw_tests::final_answer(&events(&answer)), "Squash before merging.");
    // The step in progress is the prefill's scratchpad, as GitLab renders it: the thought as the
    // instance sent it, the tool's name unescaped.
    let messages = t.model.requests()[0].body["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 3, "system, the question, the prefill: {messages:?}");
    assert_eq!(
        messages[2],
        json!({"role": "assistant", "content": "Thought: I need the issue\\_reader.\nAction: issue_reader\nAction Input: \
                Read #12\nObservation: Issue #12: squash before merge\nThought:"})
    );
}

#[tokio::test]
async fn unformatted_text_is_unknown() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "I just want to chat.".into(), ..Reply::default() });
    let answer =
        step(&t, &SCOPES, &json!({"messages": [{"role": "user", "content": "hi"}], "model_metadata": metadata(&t)}))
            .await;
    assert_eq!(events(&answer)[0], json!({"type": "unknown", "data": {"text": "I just want to chat."}}));
}

#[tokio::test]
async fn a_stalled_model_ends_the_stream_with_an_error_event_and_no_usage() {
    let t = Setup::default().env("AIGW_UPSTREAM__IDLE_TIMEOUT_MS", "300").start().await;
    t.model.set_reply(Reply {
        text: "Thought: hmm\nFinal Answer: this takes a while".into(),
        chunks: 4,
        chunk_delay: Duration::from_millis(1000),
        ..Reply::default()
    });
    let answer =
        step(&t, &SCOPES, &json!({"messages": [{"role": "user", "content": "hi"}], "model_metadata": metadata(&t)}))
            .await;
    assert_eq!(answer.status, 200);
    let events = events(&answer);
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "error", "data": {"message": "The model server did not answer in time", "retryable": false}})
    );
    assert!(events.iter().all(|e| e["type"] != "usage"));
}

#[tokio::test]
async fn the_last_final_answer_delta_carries_the_models_finish_reason() {
    let t = TestGateway::start().await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "model_metadata": metadata(&t)});
    for reason in ["length", "stop"] {
        t.model.set_reply(Reply {
            text: "Thought: easy\nFinal Answer: It is 42 and".into(),
            finish_reason: reason.into(),
            ..Reply::default()
        });
        let events = events(&step(&t, &SCOPES, &body).await);
        let last_delta = events.iter().rev().find(|e| e["type"] == "final_answer_delta").unwrap();
        assert_eq!(last_delta["data"]["finish_reason"], reason, "{events:?}");
        let earlier = events.iter().filter(|e| e["type"] == "final_answer_delta").rev().skip(1);
        assert!(earlier.clone().all(|e| e["data"]["finish_reason"].is_null()), "{events:?}");
    }
}

/// Every tool, in the order GitLab's gateway offers them.
const GITLAB_TOOL_ORDER: [&str; 7] = [
    "build_reader",
    "epic_reader",
    "issue_reader",
    "merge_request_reader",
    "commit_reader",
    "work_item_reader",
    "gitlab_documentation",
];

#[tokio::test]
async fn tools_are_offered_by_scope_and_by_the_instance_version_in_gitlabs_order() {
    let t = TestGateway::start().await;
    let every = [
        "duo_chat",
        "ask_build",
        "ask_epic",
        "ask_issue",
        "ask_merge_request",
        "ask_commit",
        "ask_work_item",
        "documentation_search",
    ];
    let offered = |version: Option<&str>, scopes: &[&str]| {
        let mut headers = t.gitlab_headers(&t.token(scopes));
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case("x-gitlab-version"));
        if let Some(version) = version {
            headers.push(("x-gitlab-version".into(), version.into()));
        }
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "model_metadata": metadata(&t)});
        let t = &t;
        async move {
            let answer = t.post("/v2/chat/agent", &headers, &body).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            let system =
                t.model.requests().last().unwrap().body["messages"][0]["content"].as_str().unwrap().to_string();
            // In the order the prompt lists them, whatever the order searched in.
            let mut found: Vec<(usize, &str)> = GITLAB_TOOL_ORDER
                .iter()
                .filter_map(|name| system.find(&format!("- {name}:")).map(|at| (at, *name)))
                .collect();
            found.sort();
            found.into_iter().map(|(_, name)| name).collect::<Vec<_>>()
        }
    };
    assert_eq!(offered(Some("18.5.0"), &every).await, GITLAB_TOOL_ORDER);
    assert_eq!(
        offered(Some("18.4.2"), &every).await,
        [
            "build_reader",
            "epic_reader",
            "issue_reader",
            "merge_request_reader",
            "commit_reader",
            "gitlab_documentation"
        ],
        "work_item_reader needs 18.5"
    );
    assert_eq!(
        offered(Some("17.4.0"), &every).await,
        ["epic_reader", "issue_reader", "gitlab_documentation"],
        "builds, merge requests and commits need 17.5"
    );
    assert_eq!(offered(None, &every).await, ["epic_reader", "issue_reader", "gitlab_documentation"]);
    assert_eq!(offered(Some("18.5.0"), &["duo_chat", "ask_issue"]).await, ["issue_reader"], "scopes still gate");
}

#[tokio::test]
async fn claude_models_that_refuse_a_prefill_get_the_thought_as_the_users_words() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: " Easy.\nFinal Answer: Use git bisect.".into(), ..Reply::default() });
    let question = json!({"role": "user", "content": "How do I find the bad commit?"});
    for (identifier, refused) in
        [("custom_openai/claude-sonnet-4-6", true), ("custom_openai/claude-sonnet-4-5-20250929", false)]
    {
        t.model.clear_requests();
        let metadata = json!({"provider": "openai", "name": "claude_3", "endpoint": t.model.base_url(),
                              "api_key": "k", "identifier": identifier});
        let answer = step(&t, &SCOPES, &json!({"messages": [question], "model_metadata": metadata})).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(aigw_tests::final_answer(&events(&answer)), "Use git bisect.", "{identifier}");
        let messages = t.model.requests()[0].body["messages"].as_array().unwrap().clone();
        let last = messages.last().unwrap();
        if refused {
            assert_eq!(last["role"], "user", "{identifier}");
            let text = last["content"][0]["text"].as_str().unwrap();
            assert!(text.starts_with("[Previous assistant context]: ") && text.ends_with("Thought:"), "{text:?}");
        } else {
            assert_eq!(last["role"], "assistant", "{identifier}");
            assert!(last["content"].as_str().unwrap().ends_with("Thought:"), "{identifier}");
        }
    }
}
