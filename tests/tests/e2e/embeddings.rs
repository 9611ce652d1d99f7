//! GitLab's code-embeddings endpoints through the whole gateway: every plugin that can embed,
//! in its provider's wire format against the mock (which derives each text's vector from its
//! SHA-256, so the vectors GitLab gets are checked value for value); GitLab's provider rules and
//! scope; the bounds on both sides; the model server's refusals; a plugin that cannot embed (the
//! Anthropic one, a component built against WIT 0.2.0) and one that answers wrongly.

use aigw_mock::{mock_vector, sigv4};
use aigw_tests::{Answer, Reply, Setup, TestGateway, component};
use serde_json::{Value, json};

const SCOPE: &str = "generate_embeddings_codebase";

/// Every plugin, and the 0.2.0 guest, in one plugins directory.
async fn gateway() -> TestGateway {
    let mut setup = Setup::default()
        .env("AWS_ACCESS_KEY_ID", sigv4::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", sigv4::SECRET_ACCESS_KEY)
        .env("AWS_REGION", "eu-central-1");
    for plugin in ["ollama", "anthropic", "azure-openai", "mistral", "bedrock"] {
        setup = setup.plugin(component(&format!("plugins/{plugin}.wasm")), &format!("{plugin}.wasm"));
    }
    setup
        .plugin(component("test-guests/previous.wasm"), "previous.wasm")
        .plugin(component("test-guests/hostile.wasm"), "hostile.wasm")
        .start()
        .await
}

fn body(identifier: &str, endpoint: &str, contents: &[&str]) -> Value {
    json!({"model_metadata": {"provider": "litellm", "name": "embedding", "identifier": identifier,
                              "endpoint": endpoint, "api_key": "sk-emb"},
           "litellm_drop_params": true, "contents": contents})
}

async fn embed(t: &TestGateway, path: &str, body: &Value) -> Answer {
    t.post(&format!("/v1/embeddings/code_embeddings{path}"), &t.gitlab_headers(&t.token(&[SCOPE])), body).await
}

/// The predictions GitLab should get for `contents` with vectors `dimensions` long.
fn predictions(contents: &[&str], dimensions: usize) -> Value {
    let predictions: Vec<Value> = contents
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"embedding": mock_vector(text, dimensions), "index": index}))
        .collect();
    json!(predictions)
}

/// One provider's embeddings call as the mock must see it.
struct WireCase<'a> {
    identifier: &'a str,
    endpoint: String,
    texts: &'a [&'a str],
    dimensions: Option<u32>,
    path: &'a str,
    /// The header carrying the credential, and what it holds (the mock verifies Bedrock's SigV4
    /// signature itself).
    credential: (&'a str, &'a str),
}

#[tokio::test]
async fn every_plugin_that_can_embed_does_so_in_its_providers_wire_format() {
    let t = gateway().await;
    let texts = ["def parse(text):\n    return text.split()\n", "SELECT max(total) FROM orders; -- Größte 中文"];
    let (root, bearer, sigv4) =
        (t.model.root_url(), ("authorization", "Bearer sk-emb"), ("authorization", "AWS4-HMAC-SHA256 Credential="));
    let case = |identifier, endpoint: &str, dimensions, path, credential| WireCase {
        identifier,
        endpoint: endpoint.to_string(),
        texts: &texts,
        dimensions,
        path,
        credential,
    };
    let cases = [
        case("openai/jina-code", &t.model.base_url(), None, "/v1/embeddings", bearer),
        case("custom_openai/jina-code", &t.model.base_url(), Some(12), "/v1/embeddings", bearer),
        case(
            "azure/embed-small",
            &root,
            Some(16),
            "/openai/deployments/embed-small/embeddings?api-version=2024-10-21",
            ("api-key", "sk-emb"),
        ),
        case("mistral/codestral-embed", &t.model.mistral_url(), Some(24), "/mistral/v1/embeddings", bearer),
        case("ollama/nomic-embed-text", &root, None, "/api/embed", bearer),
        case("bedrock/cohere.embed-v4:0", &root, Some(32), "/model/cohere.embed-v4%3A0/invoke", sigv4),
        WireCase {
            texts: &texts[..1],
            ..case(
                "bedrock/amazon.titan-embed-text-v2:0",
                &root,
                None,
                "/model/amazon.titan-embed-text-v2%3A0/invoke",
                sigv4,
            )
        },
    ];
    for WireCase { identifier, endpoint, texts, dimensions, path, credential: (header, holds) } in cases {
        t.model.clear_requests();
        let mut request = body(identifier, &endpoint, texts);
        if let Some(dimensions) = dimensions {
            request["dimensions"] = json!(dimensions);
        }
        let answer = embed(&t, "/index", &request).await;
        assert_eq!(answer.status, 200, "{identifier}: {}", answer.text());
        assert_eq!(
            answer.json(),
            json!({"model": {"engine": "litellm_embedding", "name": "embedding", "identifier": identifier},
                   "predictions": predictions(texts, dimensions.unwrap_or(8) as usize)}),
            "{identifier}"
        );
        let sent = t.model.requests();
        assert_eq!(sent.len(), 1, "{identifier}: one call for every text");
        assert_eq!(sent[0].path, path, "{identifier}");
        let credential = sent[0].headers.get(header).map(|v| v.to_str().unwrap().to_string());
        assert!(credential.as_deref().is_some_and(|c| c.contains(holds)), "{identifier}: {header} = {credential:?}");
    }
}

#[tokio::test]
async fn the_search_path_embeds_a_query_where_the_provider_tells_them_apart() {
    let t = gateway().await;
    let request = body("bedrock/cohere.embed-english-v3", &t.model.root_url(), &["where is the duration parsed?"]);
    let answer = embed(&t, "/search", &request).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["predictions"], predictions(&["where is the duration parsed?"], 8));
    assert_eq!(t.model.requests()[0].body["input_type"], "search_query");
    embed(&t, "", &request).await;
    assert_eq!(t.model.requests()[1].body["input_type"], "search_document", "the base path indexes");
}

#[tokio::test]
async fn a_plugin_without_embeddings_is_named_and_nothing_is_sent() {
    let t = gateway().await;
    for (identifier, said) in [
        ("anthropic/claude-sonnet-4-5", "Anthropic's Messages API has no embeddings API"),
        ("previous/any-model", "plugin previous cannot embed: it was built against aigw:plugin@0.2.0"),
        ("bedrock/amazon.titan-embed-text-v2:0", "Titan embeds one text per call and 2 were sent"),
    ] {
        let answer = embed(&t, "/index", &body(identifier, &t.model.root_url(), &["a", "b"])).await;
        assert_eq!(answer.status, 422, "{identifier}: {}", answer.text());
        let detail = answer.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(said), "{identifier}: {detail}");
    }
    assert!(t.model.requests().is_empty());
}

#[tokio::test]
async fn a_component_built_against_the_previous_wit_keeps_serving_chat() {
    let t = gateway().await;
    let body = json!({"prompt_components": [{"type": "prompt", "payload": {
        "content": [{"role": "user", "content": "Explain: a + b"}], "provider": "litellm", "model": "mistral",
        "model_endpoint": t.model.base_url(), "model_api_key": "k", "model_identifier": "previous/old-model"}}]});
    let answer = t.post("/v1/chat/explain_code", &t.gitlab_headers(&t.token(&["duo_chat"])), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["response"], "return a + b");
    assert_eq!(t.model.requests()[0].body["model"], "old-model");
    let identity = t.gateway.plugins().snapshot().resolve("previous").unwrap().identity().clone();
    assert_eq!((identity.wit_version, identity.can_embed()), ("0.2.0", false));
}

#[tokio::test]
async fn gitlabs_provider_rules_and_scope_refuse_before_any_call() {
    let t = gateway().await;
    let endpoint = t.model.base_url();
    let good = body("openai/jina-code", &endpoint, &["a"]);
    let with = |pointer: &str, value: Value| {
        let mut changed = good.clone();
        *changed.pointer_mut(pointer).unwrap() = value;
        changed
    };
    for (request, status, detail) in [
        (with("/model_metadata/provider", json!("ollama")), 422, "Allowed providers are: gitlab|litellm."),
        (
            with("/model_metadata/name", json!("code_embeddings")),
            422,
            "Model `name` must be 'embedding' when using `litellm` provider.",
        ),
        (with("/model_metadata/name", Value::Null), 422, "Model `name` must be set when using `litellm` provider."),
        (
            with("/model_metadata/endpoint", Value::Null),
            422,
            "Model `endpoint` must be set when using `litellm` provider.",
        ),
    ] {
        let answer = embed(&t, "/index", &request).await;
        assert_eq!((answer.status.as_u16(), answer.json()["detail"].as_str()), (status, Some(detail)));
    }
    let answer = embed(&t, "/index", &with("/model_metadata/provider", json!("gitlab"))).await;
    assert_eq!(answer.status, 422);
    assert!(answer.json()["detail"].as_str().unwrap().contains("provider `litellm`"), "{}", answer.text());
    let answer = embed(&t, "/index", &json!({"model_metadata": good["model_metadata"]})).await;
    assert_eq!(answer.status, 422, "contents are required: {}", answer.text());
    let headers = t.gitlab_headers(&t.token(&["complete_code", "duo_chat"]));
    let answer = t.post("/v1/embeddings/code_embeddings/search", &headers, &good).await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()["detail"].as_str()),
        (403, Some("Unauthorized to access code embeddings"))
    );
    let answer = t.request(http::Method::GET, "/v1/embeddings/code_embeddings", &headers, Default::default()).await;
    assert_eq!(answer.status, 405);
    assert!(t.model.requests().is_empty());
}

#[tokio::test]
async fn contents_and_dimensions_are_bounded_on_both_sides() {
    let t = gateway().await;
    let endpoint = t.model.base_url();
    let many = |n: usize| body("openai/e", &endpoint, &vec!["x"; n]);
    assert_eq!(embed(&t, "/index", &many(256)).await.status, 200);
    let answer = embed(&t, "/index", &many(257)).await;
    assert_eq!(answer.status, 422);
    assert!(answer.json()["detail"].as_str().unwrap().contains("at most 256"), "{}", answer.text());
    let half = "y".repeat(1 << 20);
    assert_eq!(embed(&t, "/index", &body("openai/e", &endpoint, &[&half, &half])).await.status, 200);
    let answer = embed(&t, "/index", &body("openai/e", &endpoint, &[&half, &half, "z"])).await;
    assert_eq!(answer.status, 422);
    assert!(answer.json()["detail"].as_str().unwrap().contains("2097152"), "{}", answer.text());
    let mut dimensions = body("openai/e", &endpoint, &["a"]);
    dimensions["dimensions"] = json!(8192);
    let answer = embed(&t, "/index", &dimensions).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["predictions"][0]["embedding"].as_array().unwrap().len(), 8192);
    for refused in [8193, -3] {
        dimensions["dimensions"] = json!(refused);
        let answer = embed(&t, "/index", &dimensions).await;
        assert_eq!(answer.status, 422, "{refused}");
        assert!(answer.json()["detail"].as_str().unwrap().contains("`dimensions` must be from 1 to 8192"));
    }
    let calls = t.model.requests().len();
    assert_eq!(calls, 3, "only the requests within the bounds reached the model server");
}

#[tokio::test]
async fn the_model_servers_refusals_keep_their_status() {
    let t = Setup::default().env("AIGW_UPSTREAM__RETRIES", "0").start().await;
    let request = body("openai/e", &t.model.base_url(), &["a"]);
    for (status, expected, said) in [
        (400, 400, "400 Bad Request"),
        (401, 401, "check the model's API key"),
        (429, 429, "rate limiting"),
        (500, 502, "The model server answered 500"),
    ] {
        t.model.set_reply(Reply { status, retry_after: Some("7".into()), ..Reply::default() });
        let answer = embed(&t, "/index", &request).await;
        assert_eq!(answer.status.as_u16(), expected, "{}", answer.text());
        let detail = answer.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(said) && !detail.contains("mock error"), "{status}: {detail}");
        assert_eq!(answer.header("retry-after"), (status == 429).then_some("7"), "{status}");
    }
}

#[tokio::test]
async fn an_answer_that_does_not_fit_the_request_is_a_bad_gateway() {
    let t = gateway().await;
    let endpoint = t.model.base_url();
    for model in ["short", "ragged", "trap"] {
        let answer = embed(&t, "/index", &body(&format!("hostile/{model}"), &endpoint, &["a", "b"])).await;
        assert_eq!(answer.status, 502, "{model}: {}", answer.text());
    }
    let answer = embed(&t, "/index", &body("hostile/fine", &endpoint, &["a", "b"])).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["predictions"], predictions(&["a", "b"], 8));
}
