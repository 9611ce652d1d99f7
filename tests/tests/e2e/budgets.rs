//! Context budgets in model tokens: the caller's code and conversation reach the model server
//! cut to what the family's context window leaves, keeping what is nearest the cursor or newest.

use aigw_tests::{Setup, TestGateway};
use serde_json::{Value, json};

/// Tokens in the vocabulary the gateway budgets in.
fn tokens(text: &str) -> usize {
    bpe_openai::cl100k_base().count(text)
}

/// `n` lines of Python, numbered so that a test can tell which survived.
fn code(lines: std::ops::Range<usize>) -> String {
    lines.map(|n| format!("def step_{n}(values):\n    return [v * {n} for v in values if v > {n}]\n")).collect()
}

fn every_content(body: &Value) -> String {
    body["messages"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn a_long_file_reaches_a_small_window_model_as_no_more_tokens_than_the_window_leaves() {
    let t = TestGateway::start().await;
    // CodeLlama's window is 16,000 tokens (GitLab's figure). 96,000 characters of code are
    // about 30,000 tokens: a budget of characters let such a file through whole.
    let above = code(0..1_400);
    assert!(above.len() > 96_000 && tokens(&above) > 30_000, "{} bytes, {} tokens", above.len(), tokens(&above));
    let below = code(2_000..2_400);
    let mut body = t.completion_body("codellama", Some("custom_openai/codellama-13b"), false);
    body["current_file"]["content_above_cursor"] = json!(above);
    body["current_file"]["content_below_cursor"] = json!(below);
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let sent = t.model.requests()[0].body.clone();
    let prompt = every_content(&sent);
    let max_tokens = sent["max_tokens"].as_u64().unwrap() as usize;
    let used = tokens(&prompt);
    assert!(used + max_tokens <= 16_000, "{used} prompt tokens + {max_tokens} of answer fit the window");
    assert!(used > 15_000, "the window is used, not wasted: {used} tokens");
    // The code nearest the cursor is what stays, on both sides, in GitLab's 93/7 shares.
    assert!(prompt.contains(&code(1_399..1_400)) && !prompt.contains("def step_0("), "the prefix keeps its end");
    assert!(prompt.contains(&code(2_000..2_001)) && !prompt.contains("def step_2399("), "the suffix its start");
    let suffix_kept = (2_000..2_400).filter(|n| prompt.contains(&format!("def step_{n}("))).count();
    let suffix_tokens = tokens(&code(2_000..2_000 + suffix_kept));
    assert!((900..=1_200).contains(&suffix_tokens), "about 7 % of the budget is suffix: {suffix_tokens} tokens");
}

#[tokio::test]
async fn an_operator_states_the_window_their_server_runs_and_text_within_it_is_untouched() {
    let prompts = tempfile::tempdir().unwrap();
    // The operator's vLLM runs Mistral with --max-model-len 4096.
    let families = "[[family]]\nname = \"mistral\"\nparams = { temperature = 0.0, max_tokens = 4096 }\n\
                    context_tokens = 4096\n";
    aigw_tests::deploy(&prompts.path().join("families.toml"), families.as_bytes());
    let t = Setup::default().env("AIGW_PROMPTS__DIR", prompts.path().to_str().unwrap()).start().await;

    let send = |above: String| {
        let mut body = t.completion_body("mistral", Some("custom_openai/mistral-7b"), false);
        body["current_file"]["content_above_cursor"] = json!(above);
        body["current_file"]["content_below_cursor"] = json!("");
        body
    };
    // Within the window: sent as it is.
    let small = code(0..60);
    assert_eq!(t.complete(&send(small.clone())).await.status, 200);
    assert!(every_content(&t.model.requests()[0].body).contains(&small), "text within the budget is untouched");
    // Past it: cut to the window less the answer (64 tokens) and the prompt's own text.
    let large = code(0..400);
    assert!(tokens(&large) > 4_096);
    assert_eq!(t.complete(&send(large.clone())).await.status, 200);
    let prompt = every_content(&t.model.requests()[1].body);
    let used = tokens(&prompt);
    assert!(used + 64 <= 4_096 && used > 3_500, "{used} tokens of a 4,096-token window");
    assert!(prompt.contains(&code(399..400)) && !prompt.contains("def step_0("));
}

#[tokio::test]
async fn a_long_conversation_loses_its_oldest_turns_and_keeps_the_question() {
    let prompts = tempfile::tempdir().unwrap();
    // Llama 3 served with an 8,192-token window; the ReAct prompt asks 4,096 tokens of answer.
    let families = "[[family]]\nname = \"llama3\"\nparams = { temperature = 0.0, max_tokens = 4096 }\n\
                    context_tokens = 8192\n";
    aigw_tests::deploy(&prompts.path().join("families.toml"), families.as_bytes());
    let t = Setup::default().env("AIGW_PROMPTS__DIR", prompts.path().to_str().unwrap()).start().await;
    let mut messages = Vec::new();
    for turn in 0..12 {
        messages.push(json!({"role": "user", "content": format!("Question {turn}: explain this.\n{}", code(0..40))}));
        messages.push(json!({"role": "assistant", "content": format!("Answer {turn}: it maps and filters.")}));
    }
    messages.push(json!({"role": "user", "content": "Which question came first?"}));
    let metadata = json!({"provider": "openai", "name": "llama3", "endpoint": t.model.base_url(),
                          "api_key": "sk-agent", "identifier": "custom_openai/llama-3-8b"});
    let body = json!({"messages": messages, "model_metadata": metadata});
    let answer = t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let sent = t.model.requests()[0].body.clone();
    let used = tokens(&every_content(&sent));
    assert!(used + 4_096 <= 8_192 && used > 3_000, "{used} tokens of conversation before a 4,096-token answer");
    let sent_messages = sent["messages"].as_array().unwrap();
    let roles: Vec<&str> = sent_messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles[..2], ["system", "user"], "the system prompt stays and a user turn opens: {roles:?}");
    let text = every_content(&sent);
    assert!(!text.contains("Question 0:") && text.contains("Question 11:"), "the oldest turns went first");
    let last_user = sent_messages.iter().rev().find(|m| m["role"] == "user").unwrap();
    assert!(last_user["content"].as_str().unwrap().contains("Which question came first?"));
}
