//! Authentication and authorisation as GitLab's gateway does them: every 401 message, the 403,
//! expiry, unknown and rotated keys, header cross-checks, and the key cache's refresh rules.

use aigw_tests::{Answer, INSTANCE_ID, Setup, TestGateway, TestKey, instance_claims, now};
use serde_json::{Value, json};

async fn with_headers(t: &TestGateway, headers: Vec<(String, String)>) -> Answer {
    t.post("/v2/code/completions", &headers, &t.completion_body("codestral", None, false)).await
}

async fn with_token(t: &TestGateway, token: &str) -> Answer {
    with_headers(t, t.gitlab_headers(token)).await
}

fn assert_401(answer: &Answer, message: &str) {
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert_eq!(answer.json(), json!({"error": message}));
}

fn without(headers: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    headers.into_iter().filter(|(n, _)| n != name).collect()
}

fn replaced(headers: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    let mut headers = without(headers, name);
    headers.push((name.to_string(), value.to_string()));
    headers
}

#[tokio::test]
async fn header_failures_have_gitlabs_messages() {
    let t = TestGateway::start().await;
    let good = t.gitlab_headers(&t.token(&["complete_code"]));

    assert_401(&with_headers(&t, without(good.clone(), "authorization")).await, "No authorization header presented");
    let basic = replaced(good.clone(), "authorization", "Basic dXNlcjpwYXNz");
    assert_401(&with_headers(&t, basic).await, "Invalid authorization header");
    let empty = replaced(good.clone(), "authorization", "Bearer ");
    assert_401(&with_headers(&t, empty).await, "Invalid authorization header");
    let no_type = without(good.clone(), "x-gitlab-authentication-type");
    assert_401(&with_headers(&t, no_type).await, "Invalid authentication token type - only OIDC is supported");
    let wrong_type = replaced(good.clone(), "x-gitlab-authentication-type", "gitlab-pat");
    assert_401(&with_headers(&t, wrong_type).await, "Invalid authentication token type - only OIDC is supported");
    assert!(t.model.requests().is_empty(), "no refused request reached the model");

    assert_eq!(with_headers(&t, good).await.status, 200);
}

#[tokio::test]
async fn bad_tokens_are_forbidden_by_auth_provider() {
    let t = TestGateway::start().await;
    let issuer = t.gitlab.url();
    let mut cases: Vec<(&str, String)> = Vec::new();

    let mut expired = instance_claims(&issuer, &["complete_code"]);
    expired["exp"] = json!(now() - 120);
    expired["nbf"] = json!(now() - 3600);
    cases.push(("expired", t.key.sign(&expired)));

    let mut future = instance_claims(&issuer, &["complete_code"]);
    future["nbf"] = json!(now() + 600);
    cases.push(("not yet valid", t.key.sign(&future)));

    let mut audience = instance_claims(&issuer, &["complete_code"]);
    audience["aud"] = json!(["gitlab-ci"]);
    cases.push(("wrong audience", t.key.sign(&audience)));

    cases.push(("wrong issuer", t.key.sign(&instance_claims("https://evil.example.com", &["complete_code"]))));

    let mut no_nbf = instance_claims(&issuer, &["complete_code"]);
    no_nbf.as_object_mut().unwrap().remove("nbf");
    cases.push(("missing nbf", t.key.sign(&no_nbf)));

    let mut no_exp = instance_claims(&issuer, &["complete_code"]);
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push(("missing exp", t.key.sign(&no_exp)));

    let stranger = TestKey::generate("stranger-key");
    cases.push(("unknown key", stranger.sign(&instance_claims(&issuer, &["complete_code"]))));

    let impostor = TestKey::generate(&t.key.kid);
    cases.push(("same kid, other key", impostor.sign(&instance_claims(&issuer, &["complete_code"]))));

    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(t.key.kid.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &instance_claims(&issuer, &["complete_code"]),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    cases.push(("HS256", hs256));

    let good = t.token(&["complete_code"]);
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let mut forged_claims = instance_claims(&issuer, &["complete_code", "generate_code"]);
    forged_claims["exp"] = json!(now() + 86_400 * 365);
    let forged_payload = base64_url(&forged_claims);
    cases.push(("tampered payload", format!("{head}.{forged_payload}.{signature}")));
    cases.push(("garbage", "not.a.jwt".to_string()));

    for (case, token) in cases {
        let answer = with_token(&t, &token).await;
        assert_eq!(answer.status, 401, "{case}: {}", answer.text());
        assert_eq!(answer.json(), json!({"error": "Forbidden by auth provider"}), "{case}");
    }
    assert!(t.model.requests().is_empty());
}

fn base64_url(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn claim_and_header_disagreements_are_header_mismatches() {
    let t = TestGateway::start().await;
    let token = t.token(&["complete_code"]);
    let realm = replaced(t.gitlab_headers(&token), "x-gitlab-realm", "saas");
    assert_401(&with_headers(&t, realm).await, "Header mismatch 'X-Gitlab-Realm'");
    let instance = replaced(t.gitlab_headers(&token), "x-gitlab-instance-id", "another-instance");
    assert_401(&with_headers(&t, instance).await, "Header mismatch 'X-Gitlab-Instance-Id'");
    let missing = without(t.gitlab_headers(&token), "x-gitlab-instance-id");
    assert_401(&with_headers(&t, missing).await, "Header mismatch 'X-Gitlab-Instance-Id'");

    // A token without the optional claims needs no matching headers.
    let mut bare = instance_claims(&t.gitlab.url(), &["complete_code"]);
    for claim in ["gitlab_realm", "gitlab_instance_id", "sub"] {
        bare.as_object_mut().unwrap().remove(claim);
    }
    let headers = without(without(t.gitlab_headers(&t.key.sign(&bare)), "x-gitlab-realm"), "x-gitlab-instance-id");
    assert_eq!(with_headers(&t, headers).await.status, 200);
    assert_eq!(INSTANCE_ID.len(), 36);
}

#[tokio::test]
async fn scopes_gate_code_completion() {
    let t = TestGateway::start().await;
    let answer = with_token(&t, &t.token(&["duo_chat", "generate_code"])).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json(), json!({"detail": "Unauthorized to access code suggestions"}));
    assert!(t.model.requests().is_empty());

    assert_eq!(with_token(&t, &t.token(&["code_suggestions"])).await.status, 200, "the older scope name");
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200);
}

#[tokio::test]
async fn rotated_key_is_fetched_on_its_first_use() {
    let t = TestGateway::start().await;
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200);
    let next = TestKey::generate("gitlab-key-2");
    t.gitlab.publish(&[&t.key, &next]);
    let rotated = next.sign(&instance_claims(&t.gitlab.url(), &["complete_code"]));
    let answer = with_token(&t, &rotated).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    // The old key leaves the set; after the next refresh its tokens stop working.
    t.gitlab.publish(&[&next]);
    let third = TestKey::generate("gitlab-key-3");
    let _ = with_token(&t, &third.sign(&instance_claims(&t.gitlab.url(), &["complete_code"]))).await;
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 401);
}

#[tokio::test]
async fn unknown_kids_refresh_at_a_bounded_rate() {
    let t = Setup::default().env("AIGW_AUTH__JWKS_MIN_REFRESH_MS", "600000").start().await;
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200);
    let baseline = t.gitlab.jwks_fetches();
    assert!(baseline >= 1);
    let stranger = TestKey::generate("forged");
    for i in 0..20 {
        let stranger = stranger.with_kid(&format!("forged-{i}"));
        let answer = with_token(&t, &stranger.sign(&instance_claims(&t.gitlab.url(), &["complete_code"]))).await;
        assert_eq!(answer.status, 401);
    }
    assert!(
        t.gitlab.jwks_fetches() <= baseline + 1,
        "20 unknown kids caused {} fetches",
        t.gitlab.jwks_fetches() - baseline
    );
}

#[tokio::test]
async fn cached_keys_serve_while_gitlab_is_unreachable() {
    let t = TestGateway::start().await;
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200);
    t.gitlab.set_down(true);
    // An unknown kid makes the gateway try (and fail) to refresh...
    let stranger = TestKey::generate("stranger");
    assert_eq!(with_token(&t, &stranger.sign(&instance_claims(&t.gitlab.url(), &["complete_code"]))).await.status, 401);
    // ...and the cached key still verifies the instance's tokens.
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200);
}

#[tokio::test]
async fn a_verified_token_stops_working_once_its_key_is_withdrawn() {
    let t = TestGateway::start().await;
    let token = t.token(&["complete_code"]);
    assert_eq!(with_token(&t, &token).await.status, 200);
    assert_eq!(with_token(&t, &token).await.status, 200, "the same token again (served from the verified cache)");
    let next = TestKey::generate("gitlab-key-2");
    t.gitlab.publish(&[&next]);
    // Any unknown kid makes the gateway refresh; the withdrawn key's tokens must fail from then on.
    assert_eq!(with_token(&t, &next.sign(&instance_claims(&t.gitlab.url(), &["complete_code"]))).await.status, 200);
    let answer = with_token(&t, &token).await;
    assert_eq!(answer.status, 401, "a cached verification does not outlive the key: {}", answer.text());
}
