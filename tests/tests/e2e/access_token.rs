//! IDE direct access: `/v1/code/user_access_token` mints a gateway-signed token that then works
//! for code completion, with GitLab's cross-check and refusals, through a key rotation.

use aigw::auth::SigningKey;
use aigw::auth::keys::UserAccessClaims;
use aigw_tests::{Setup, TestGateway, TestKey, now};
use base64::Engine as _;
use serde_json::{Value, json};

async fn gateway_with_keys(signing: &TestKey, validation: &TestKey) -> TestGateway {
    Setup::default()
        .env("AIGW_SELF_SIGNED_JWT__SIGNING_KEY", &signing.pem)
        .env("AIGW_SELF_SIGNED_JWT__VALIDATION_KEY", &validation.pem)
        .start()
        .await
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The headers an IDE sends with a gateway-issued token.
fn ide_headers(token: &str, user: &str) -> Vec<(String, String)> {
    vec![
        ("authorization".into(), format!("Bearer {token}")),
        ("x-gitlab-authentication-type".into(), "oidc".into()),
        ("x-gitlab-global-user-id".into(), user.into()),
        ("x-gitlab-realm".into(), "self-managed".into()),
        ("content-type".into(), "application/json".into()),
    ]
}

async fn mint(t: &TestGateway, scopes: &[&str]) -> aigw_tests::Answer {
    t.request(
        http::Method::POST,
        "/v1/code/user_access_token",
        &t.gitlab_headers(&t.token(scopes)),
        bytes::Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn minted_token_works_for_completion_of_its_user_only() {
    let (signing, validation) = (TestKey::generate("s"), TestKey::generate("v"));
    let t = gateway_with_keys(&signing, &validation).await;
    let answer = mint(&t, &["complete_code", "duo_chat"]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let token = body["token"].as_str().unwrap().to_string();
    let expires_at = body["expires_at"].as_u64().unwrap();
    assert!(expires_at.abs_diff(now() + 3600) < 60, "one hour");
    let claims = claims_of(&token);
    assert_eq!(
        (claims["iss"].clone(), claims["aud"].clone()),
        (json!("gitlab-ai-gateway"), json!("gitlab-ai-gateway"))
    );
    assert_eq!(claims["sub"], "user-42", "the caller's X-Gitlab-Global-User-Id");
    assert_eq!(claims["scopes"], json!(["complete_code"]), "completion scopes only");

    let completion = t.completion_body("codestral", None, false);
    let ok = t.post("/v2/code/completions", &ide_headers(&token, "user-42"), &completion).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let other = t.post("/v2/code/completions", &ide_headers(&token, "user-7"), &completion).await;
    assert_eq!(
        (other.status.as_u16(), other.json()),
        (401, json!({"error": "Header mismatch 'X-Gitlab-Global-User-Id'"}))
    );
}

#[tokio::test]
async fn gateway_tokens_are_refused_where_gitlab_refuses_them() {
    let (signing, validation) = (TestKey::generate("s"), TestKey::generate("v"));
    let t = gateway_with_keys(&signing, &validation).await;
    let token = mint(&t, &["complete_code"]).await.json()["token"].as_str().unwrap().to_string();
    let headers = ide_headers(&token, "user-42");
    let generation = t.post("/v2/code/generations", &headers, &t.completion_body("codestral", None, false)).await;
    assert_eq!(generation.status, 403);
    let again = t.request(http::Method::POST, "/v1/code/user_access_token", &headers, bytes::Bytes::new()).await;
    assert_eq!(again.status, 403, "a gateway token cannot mint another");
    assert_eq!(mint(&t, &["duo_chat"]).await.status, 403, "the instance token needs a completion scope");
    assert!(t.model.requests().is_empty());
}

#[tokio::test]
async fn tokens_signed_with_the_validation_key_still_verify() {
    let (signing, validation) = (TestKey::generate("s"), TestKey::generate("v"));
    let t = gateway_with_keys(&signing, &validation).await;
    let previous = SigningKey::from_pem(&validation.pem).unwrap();
    let old = previous.sign(&UserAccessClaims::new("user-42", None, vec!["complete_code".into()])).unwrap();
    let answer = t
        .post("/v2/code/completions", &ide_headers(&old, "user-42"), &t.completion_body("codestral", None, false))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let stranger = SigningKey::from_pem(&TestKey::generate("x").pem).unwrap();
    let forged = stranger.sign(&UserAccessClaims::new("user-42", None, vec!["complete_code".into()])).unwrap();
    let refused = t
        .post("/v2/code/completions", &ide_headers(&forged, "user-42"), &t.completion_body("codestral", None, false))
        .await;
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn without_a_signing_key_minting_is_unavailable() {
    let t = TestGateway::start().await;
    let answer = mint(&t, &["complete_code"]).await;
    assert_eq!(answer.status, 503);
    assert!(answer.json()["detail"].as_str().unwrap().contains("AIGW_SELF_SIGNED_JWT__SIGNING_KEY"));
}

#[tokio::test]
async fn gateway_tokens_reach_completion_prompts_but_never_generation_prompts() {
    let (signing, validation) = (TestKey::generate("s"), TestKey::generate("v"));
    let t = gateway_with_keys(&signing, &validation).await;
    let minted = mint(&t, &["complete_code"]).await.json()["token"].as_str().unwrap().to_string();
    // Minting grants completion scopes only; a gateway token that somehow carried the generation
    // scope must still be refused generation, as /v2/code/generations refuses it.
    let key = SigningKey::from_pem(&signing.pem).unwrap();
    let generation = key.sign(&UserAccessClaims::new("user-42", None, vec!["generate_code".into()])).unwrap();
    let body = json!({"inputs": {"prefix": "def f():", "suffix": "", "language": "python", "file_name": "a.py"},
                      "model_metadata": {"provider": "openai", "name": "codestral", "endpoint": t.model.base_url(),
                                         "api_key": "k", "identifier": "custom_openai/codestral"}});
    for token in [&minted, &generation] {
        for id in ["code_generations", "code_suggestions%2Fgenerations"] {
            let answer = t.post(&format!("/v1/prompts/{id}"), &ide_headers(token, "user-42"), &body).await;
            assert_eq!(answer.status, 403, "{id}: {}", answer.text());
        }
    }
    let refused = t.post("/v2/code/generations", &ide_headers(&generation, "user-42"), &json!({})).await;
    assert_eq!(refused.status, 403, "the endpoint refuses it the same way");
    assert!(t.model.requests().is_empty());
    let answer = t.post("/v1/prompts/code_completions", &ide_headers(&minted, "user-42"), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // The instance's own token with the generation scope does reach generation.
    let instance = t.gitlab_headers(&t.token(&["generate_code"]));
    assert_eq!(t.post("/v1/prompts/code_generations", &instance, &body).await.status, 200);
}
