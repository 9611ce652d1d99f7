//! The `ollama` plugin end to end: native `/api/generate` (with `suffix`) for completion,
//! `/api/chat` for chat, NDJSON streams decoded by the host whatever their chunking.

use aigw_tests::{Reply, Setup, TestGateway, component};
use serde_json::json;

async fn ollama_gateway() -> TestGateway {
    Setup::default().plugin(component("plugins/ollama.wasm"), "ollama.wasm").start().await
}

fn ollama_completion(t: &TestGateway, stream: bool) -> serde_json::Value {
    let mut body = t.completion_body("qwen", Some("ollama/qwen2.5-coder:7b"), stream);
    body["model_endpoint"] = json!(format!("http://{}", t.model.addr()));
    body
}

/// Whatever the family's prompt (Qwen's is the chat-style base one, with its sampling), Ollama
/// gets the raw prefix and suffix and applies the model's own fill-in-the-middle template.
#[tokio::test]
async fn completion_uses_native_fill_in_the_middle() {
    let t = ollama_gateway().await;
    let answer = t.complete(&ollama_completion(&t, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["text"], "return a + b");
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.path, "/api/generate");
    assert_eq!(
        upstream.body,
        json!({"model": "qwen2.5-coder:7b", "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n",
               "stream": false,
               "options": {"temperature": 0.0, "num_predict": 128}})
    );
}

#[tokio::test]
async fn ndjson_streams_are_decoded_whatever_the_chunking() {
    let t = ollama_gateway().await;
    for chunks in [1, 4, 12] {
        t.model.set_reply(Reply { text: "return a + b".into(), chunks, ..Reply::default() });
        let answer = t.complete(&ollama_completion(&t, true)).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "return a + b"), "{chunks} chunks");
    }
    assert_eq!(t.model.open_streams(), 0);
}

#[tokio::test]
async fn chat_goes_to_api_chat_and_the_agent_reports_ollamas_token_counts() {
    let t = ollama_gateway().await;
    let endpoint = format!("http://{}", t.model.addr());
    t.model.set_reply(Reply { text: "Thought: simple\nFinal Answer: Hello!".into(), chunks: 5, ..Reply::default() });
    let body = json!({"messages": [{"role": "user", "content": "hi"}],
                      "model_metadata": {"provider": "ollama", "name": "llama3", "endpoint": endpoint,
                                         "identifier": "ollama/llama3.1:8b"}});
    let answer = t.post("/v2/chat/agent", &t.gitlab_headers(&t.token(&["duo_chat"])), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.ndjson();
    let text = aigw_tests::final_answer(&events);
    assert_eq!(text, "Hello!");
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "usage", "data": {"usage": {"llama3.1:8b": {"input_tokens": 12, "output_tokens": 5}}}})
    );
    let upstream = &t.model.requests()[0];
    assert_eq!(upstream.path, "/api/chat");
    assert_eq!(upstream.body["options"]["stop"], json!(["Observation:"]));
    assert_eq!(upstream.body["messages"][1], json!({"role": "user", "content": "hi"}));
}
