//! The prompt registry as GitLab's features reach it: the chat sub-feature prompts called by id,
//! each model family's own templates and defaults, and version constraints over pre-releases.

use aigw_tests::{Reply, Setup, TestGateway};
use serde_json::{Value, json};

fn metadata(t: &TestGateway, family: &str, model: &str) -> Value {
    json!({"provider": "openai", "name": family, "endpoint": t.model.base_url(), "api_key": "sk-registry",
           "identifier": format!("custom_openai/{model}")})
}

async fn call(t: &TestGateway, path: &str, scopes: &[&str], body: &Value) -> aigw_tests::Answer {
    t.post(path, &t.gitlab_headers(&t.token(scopes)), body).await
}

/// What GitLab sends for a Duo Chat slash command on selected code.
fn slash_command_inputs() -> Value {
    json!({
        "input": "Explain what the selected code does.",
        "selected_text": "total = sum(x * 2 for x in values)",
        "language_info": "The code is written in Python.",
        "file_content": "Here is the content of the file the user is working with:\n<file>\nvalues = [1, 2]\n</file>",
        "file_content_reuse": "",
    })
}

#[tokio::test]
async fn explain_code_renders_gitlabs_inputs_and_gates_on_its_scope() {
    let t = TestGateway::start().await;
    t.model.set_reply(Reply { text: "It doubles and sums the values.".into(), usage: (40, 7), ..Reply::default() });
    let body = json!({"inputs": slash_command_inputs(), "prompt_version": "^1.0.0", "stream": false,
                      "model_metadata": metadata(&t, "mistral", "mistral-7b")});

    let refused = call(&t, "/v2/prompts/chat%2Fexplain_code", &["include_file_context"], &body).await;
    assert_eq!(
        (refused.status.as_u16(), refused.json()),
        (403, json!({"detail": "Unauthorized to access 'chat/explain_code'"}))
    );

    // The feature's own unit primitive is enough; so is duo_chat (older instances). The id may
    // arrive percent-encoded or with a literal slash.
    for (scope, path) in
        [("explain_code", "/v2/prompts/chat%2Fexplain_code"), ("duo_chat", "/v2/prompts/chat/explain_code")]
    {
        let answer = call(&t, path, &[scope], &body).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(
            answer.json(),
            json!({"content": "It doubles and sums the values.",
                   "usage": {"mistral": {"input_tokens": 40, "output_tokens": 7}}})
        );
    }
    let upstream = &t.model.requests()[0].body;
    assert_eq!(upstream["model"], "mistral-7b");
    // A system message (the content guard, then the instruction) and the user's message.
    let messages = upstream["messages"].as_array().unwrap();
    assert_eq!((messages.len(), &messages[0]["role"]), (2, &json!("system")));
    let system = messages[0]["content"].as_str().unwrap();
    assert!(system.starts_with("<content_policy_"), "{system}");
    assert!(system.contains(">\n\nYou explain code to a software developer"), "{system}");
    let content: String = messages.iter().filter_map(|m| m["content"].as_str()).collect();
    for part in [
        "The code is written in Python.",
        "<file>\nvalues = [1, 2]\n</file>",
        "<selected_code>\ntotal = sum(x * 2 for x in values)\n</selected_code>",
        "Explain what the selected code does.",
    ] {
        assert!(content.contains(part), "missing {part:?} in {content}");
    }

    let mut missing = body.clone();
    missing["inputs"].as_object_mut().unwrap().remove("selected_text");
    let answer = call(&t, "/v2/prompts/chat%2Fexplain_code", &["explain_code"], &missing).await;
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(answer.json()["detail"].as_str().unwrap().contains("chat/explain_code/base"), "{}", answer.text());
    assert_eq!(t.model.requests().len(), 2, "a prompt that cannot be rendered calls no model");
}

#[tokio::test]
async fn every_chat_sub_feature_gitlab_calls_has_a_prompt() {
    let t = TestGateway::start().await;
    let diff = json!({"diff": "--- a/app.rb\n+++ b/app.rb\n@@ -1 +1 @@\n-puts 1\n+puts 2\n", "mr_title": "Print 2"});
    let features: [(&str, &str, Value); 10] = [
        ("chat/write_tests", "write_tests", slash_command_inputs()),
        ("chat/refactor_code", "refactor_code", slash_command_inputs()),
        ("chat/fix_code", "fix_code", slash_command_inputs()),
        ("chat/troubleshoot_job", "troubleshoot_job", json!({"job_log": "$ bundle exec rspec\nexit code 1"})),
        ("chat/summarize_comments", "summarize_comments", json!({"notes_content": "LGTM\nneeds a test"})),
        ("chat/explain_vulnerability", "explain_vulnerability", json!({"name": "SQL injection", "code": "q(x)"})),
        ("generate_commit_message", "generate_commit_message", diff.clone()),
        ("summarize_new_merge_request", "summarize_new_merge_request", diff.clone()),
        ("review_merge_request", "review_merge_request", diff.clone()),
        ("summarize_review", "summarize_review", json!({"draft_notes_content": "Rename x"})),
    ];
    for (index, (id, scope, inputs)) in features.into_iter().enumerate() {
        let body = json!({"inputs": inputs, "prompt_version": "^1.0.0",
                          "model_metadata": metadata(&t, "llama3", "llama-3-8b")});
        let path = format!("/v1/prompts/{}", id.replace('/', "%2F"));
        let answer = call(&t, &path, &[scope], &body).await;
        assert_eq!(answer.status, 200, "{id}: {}", answer.text());
        assert_eq!(answer.json(), json!("return a + b"), "{id}: v1 answers a JSON string");
        let upstream = &t.model.requests()[index].body;
        let messages = upstream["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system", "{id}: llama3 keeps the system role");
        let shown: String = messages.iter().filter_map(|m| m["content"].as_str()).collect();
        for value in inputs.as_object().unwrap().values().filter_map(Value::as_str).filter(|v| !v.is_empty()) {
            assert!(shown.contains(value), "{id}: the model is shown {value:?}: {shown}");
        }
    }
}

#[tokio::test]
async fn families_bring_their_own_prompt_defaults() {
    let t = TestGateway::start().await;
    // Generation for llama3: its 128,000-token window takes a 30,000-character file whole (the
    // `budgets` tests cut files to small windows).
    let mut generation = t.completion_body("llama3", Some("custom_openai/llama-3-8b"), false);
    let above = format!("{}# add a and b\n", "x".repeat(30_000));
    generation["current_file"]["content_above_cursor"] = json!(above);
    generation["current_file"]["content_below_cursor"] = json!("");
    let answer = t.post("/v2/code/generations", &t.gitlab_headers(&t.token(&["generate_code"])), &generation).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let upstream = t.model.requests()[0].body.clone();
    assert_eq!(
        (upstream["messages"][0]["role"].clone(), upstream["max_tokens"].clone()),
        (json!("system"), json!(256))
    );
    let user = upstream["messages"][1]["content"].as_str().unwrap();
    let kept = user.trim_start_matches("File: src/calc.py\n").trim_end_matches("<CURSOR>");
    assert_eq!(kept, above);

    // Completion answer limits (GitLab's): llama3 and gpt 64 tokens, claude_3 128.
    for (family, max_tokens) in [("llama3", 64), ("gpt", 64), ("claude_3", 128)] {
        let answer = t.complete(&t.completion_body(family, Some("custom_openai/m"), false)).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(t.model.requests().last().unwrap().body["max_tokens"], max_tokens, "{family}");
    }

    // Duo Chat on codegemma: GitLab's answer limit, and the ReAct instructions in the user's first
    // message, because Gemma's chat template refuses a system role.
    t.model.set_reply(Reply { text: "Thought: easy.\nFinal Answer: Use git bisect.".into(), ..Reply::default() });
    let chat = json!({"messages": [{"role": "user", "content": "How do I find the bad commit?"}],
                      "model_metadata": metadata(&t, "codegemma", "codegemma-7b")});
    let answer = t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &chat).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(aigw_tests::final_answer(&answer.ndjson()), "Use git bisect.");
    let upstream = t.model.requests().last().unwrap().body.clone();
    assert_eq!(upstream["max_tokens"], 8192);
    assert_eq!(upstream["stop"], json!(["Observation:"]));
    let messages = upstream["messages"].as_array().unwrap();
    assert_eq!((messages.len(), &messages[0]["role"]), (2, &json!("user")), "the question, then the prefill");
    let content = messages[0]["content"].as_str().unwrap();
    assert!(content.starts_with("You are GitLab Duo Chat") && content.ends_with("How do I find the bad commit?"));
    assert_eq!(messages[1], json!({"role": "assistant", "content": "\nThought:"}));
}

#[tokio::test]
async fn pre_releases_are_served_only_when_asked_for_by_name() {
    let prompts = tempfile::tempdir().unwrap();
    let dir = prompts.path().join("greeting/base");
    std::fs::create_dir_all(&dir).unwrap();
    for (version, text) in [("1.0.0", "stable"), ("1.1.0-dev", "unreleased")] {
        let file = format!("unit_primitive = \"duo_chat\"\n[[messages]]\nrole = \"user\"\ncontent = \"{text}\"\n");
        std::fs::write(dir.join(format!("{version}.toml")), file).unwrap();
    }
    let t = Setup::default().env("AIGW_PROMPTS__DIR", prompts.path().to_str().unwrap()).start().await;
    let mut sent = Vec::new();
    for constraint in ["^1.0.0", "1.1.0-dev", "^1.1.0"] {
        let body = json!({"inputs": {}, "prompt_version": constraint,
                          "model_metadata": metadata(&t, "general", "m")});
        let answer = call(&t, "/v1/prompts/greeting", &["duo_chat"], &body).await;
        sent.push((constraint, answer.status.as_u16()));
    }
    assert_eq!(sent, [("^1.0.0", 200), ("1.1.0-dev", 200), ("^1.1.0", 400)]);
    let contents: Vec<Value> = t.model.requests().iter().map(|r| r.body["messages"][0]["content"].clone()).collect();
    assert_eq!(contents, [json!("stable"), json!("unreleased")]);
}

#[tokio::test]
async fn an_operator_adds_a_family_through_the_prompts_directory_alone() {
    let prompts = tempfile::tempdir().unwrap();
    let t = Setup::default().env("AIGW_PROMPTS__DIR", prompts.path().to_str().unwrap()).start().await;
    let completion = |t: &TestGateway| t.completion_body("starcoder2", Some("custom_openai/starcoder2-15b"), false);
    let unknown = t.complete(&completion(&t)).await;
    assert_eq!(unknown.status, 422, "not a family yet: {}", unknown.text());
    assert!(unknown.text().contains("supported: mistral"), "{}", unknown.text());

    // A family whose chat template has no system role, with a completion prompt of its own; its
    // generation and chat prompts are the built-in `base` ones.
    let dir = prompts.path().join("code_completions/starcoder2");
    std::fs::create_dir_all(&dir).unwrap();
    let fim = "unit_primitive = \"complete_code\"\n[params]\nmax_tokens = 32\nstop = [\"<file_sep>\"]\n\
               [[messages]]\nrole = \"user\"\ncontent = \"<fim_prefix>{{ prefix }}<fim_suffix>{{ suffix }}<fim_middle>\"\n";
    aigw_tests::deploy(&dir.join("1.0.0.toml"), fim.as_bytes());
    let families = "[[family]]\nname = \"starcoder2\"\nsystem_role = false\n";
    aigw_tests::deploy(&prompts.path().join("families.toml"), families.as_bytes());

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let answer = loop {
        let answer = t.complete(&completion(&t)).await;
        if answer.status == 200 {
            break answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new family was never picked up: {}", answer.text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(answer.json()["model"]["name"], "starcoder2");
    let sent = t.model.requests().last().unwrap().body.clone();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>"}])
    );
    assert_eq!((sent["max_tokens"].clone(), sent["stop"].clone()), (json!(32), json!(["<file_sep>"])));

    let mut generation = completion(&t);
    generation["current_file"]["content_above_cursor"] = json!("# add two numbers\n");
    let headers = t.gitlab_headers(&t.token(&["generate_code"]));
    let answer = t.post("/v2/code/generations", &headers, &generation).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let mut agent = aigw_tests::agent_body(&t.model.base_url());
    agent["model_metadata"]["name"] = json!("starcoder2");
    let answer = t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &agent).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let requests = t.model.requests();
    for (what, request) in [("generation", &requests[requests.len() - 2]), ("chat", &requests[requests.len() - 1])] {
        let roles: Vec<&str> =
            request.body["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert!(!roles.contains(&"system"), "{what}: the family has no system role: {roles:?}");
        assert_eq!(roles[0], "user", "{what}");
    }
    let definitions = t.request(http::Method::GET, "/v1/models/definitions", &[], bytes::Bytes::new()).await.json();
    assert!(definitions["models"].as_array().unwrap().iter().any(|m| m["name"] == "starcoder2"));
}

/// The tag name and suffix of the content guard a system message opens with, if it opens with one.
fn guard_tag(system: &str) -> Option<(String, String)> {
    let tag = system.strip_prefix('<')?.split_once('>')?.0;
    let (name, suffix) = tag.rsplit_once('_')?;
    (suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (name.into(), suffix.into()))
}

#[tokio::test]
async fn the_content_guard_leads_system_messages_with_a_suffix_per_file_of_a_user() {
    let t = TestGateway::start().await;
    let system_of = |index: usize| {
        let messages = t.model.requests()[index].body["messages"].clone();
        let first = &messages[0];
        (first["role"] == "system").then(|| first["content"].as_str().unwrap().to_string())
    };
    let mut suffixes = Vec::new();
    for (index, file) in ["src/calc.py", "src/calc.py", "src/other.py"].into_iter().enumerate() {
        let mut body = t.completion_body("codestral", Some("custom_openai/codestral-22b"), false);
        body["current_file"]["file_name"] = serde_json::json!(file);
        let answer = t.complete(&body).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let system = system_of(index).expect("Codestral's completion has a system message");
        let (name, suffix) = guard_tag(&system).unwrap_or_else(|| panic!("no guard: {system}"));
        assert_eq!(name, "content_policy");
        // Closed with the same suffix, then a blank line before the prompt's own system text.
        assert!(system.contains(&format!("</content_policy_{suffix}>\n\nYou complete python code")), "{system}");
        suffixes.push(suffix);
    }
    // Each keystroke in a file starts its prompt alike, for the model server's prefix cache;
    // another file (or user) gets tags of its own.
    assert_eq!(suffixes[0], suffixes[1], "one file's completions share their suffix");
    assert_ne!(suffixes[1], suffixes[2], "another file has its own");

    // The bare fill-in-the-middle prompts have no system message, so no guard.
    assert_eq!(t.complete(&t.completion_body("codellama", Some("custom_openai/cl"), false)).await.status, 200);
    let messages = t.model.requests()[3].body["messages"].clone();
    assert_eq!(messages.as_array().unwrap().len(), 1);
    assert!(messages[0]["content"].as_str().unwrap().starts_with("<PRE> "), "{messages}");

    // Neither has the ReAct prompt, as GitLab's has no block there.
    let answer = call(&t, "/v2/chat/agent", &["duo_chat"], &aigw_tests::agent_body(&t.model.base_url())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let react = system_of(4).expect("the ReAct prompt's system message");
    assert!(react.starts_with("You are GitLab Duo Chat"), "{react}");
}

#[tokio::test]
async fn an_operator_replaces_the_guard_or_turns_it_off_for_a_prompt() {
    let prompts = tempfile::tempdir().unwrap();
    let write = |relative: &str, text: &str| {
        let path = prompts.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "common/content_guard/1.0.0.toml",
        "[[messages]]\nrole = \"system\"\ncontent = \"<house_rules_{{ suffix }}>Ours.</house_rules_{{ suffix }}>\"\n",
    );
    write(
        "code_completions/llama3/1.0.0.toml",
        "unit_primitive = \"complete_code\"\nguard = false\n[params]\nmax_tokens = 8\n\
         [[messages]]\nrole = \"system\"\ncontent = \"Complete.\"\n[[messages]]\nrole = \"user\"\ncontent = \"{{ prefix }}\"\n",
    );
    let t = Setup::default().env("AIGW_PROMPTS__DIR", prompts.path().to_str().unwrap()).start().await;
    assert_eq!(t.complete(&t.completion_body("codestral", Some("custom_openai/c"), false)).await.status, 200);
    let system = t.model.requests()[0].body["messages"][0]["content"].as_str().unwrap().to_string();
    let (name, suffix) = guard_tag(&system).unwrap_or_else(|| panic!("no guard: {system}"));
    assert_eq!(name, "house_rules", "{system}");
    assert!(system.starts_with(&format!("<house_rules_{suffix}>Ours.</house_rules_{suffix}>\n\n")), "{system}");

    assert_eq!(t.complete(&t.completion_body("llama3", Some("custom_openai/l"), false)).await.status, 200);
    let messages = t.model.requests()[1].body["messages"].clone();
    assert_eq!(messages[0], json!({"role": "system", "content": "Complete."}), "guard = false: none");
}
