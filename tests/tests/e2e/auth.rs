//! Authentication and authorisation as GitLab's gateway does them: every 401 message, the 403,
//! expiry, unknown and rotated keys, header cross-checks, and the key cache's refresh rules.

use aigw_tests::{Answer, INSTANCE_ID, Setup, TestGateway, TestKey, instance_claims, now};
use bytes::Bytes;
use http::Method;
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

    // A token without the optional claims needs no matching header. The realm is not optional:
    // every AI-gateway token the instance signs names it (see only_tokens_shaped_as_ai_gateway_tokens_pass).
    let mut bare = instance_claims(&t.gitlab.url(), &["complete_code"]);
    for claim in ["gitlab_instance_id", "sub"] {
        bare.as_object_mut().unwrap().remove(claim);
    }
    let headers = without(t.gitlab_headers(&t.key.sign(&bare)), "x-gitlab-instance-id");
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

/// A GitLab CI job's `id_token` whose author chose `aud: gitlab-ai-gateway`: the instance signs it
/// with a key from the same published set as its AI-gateway tokens.
fn ci_job_claims(issuer: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer, "aud": "gitlab-ai-gateway", "iat": now, "nbf": now - 5, "exp": now + 300,
        "jti": "ci-jti", "sub": "project_path:grp/proj:ref_type:branch:ref:main",
        "namespace_id": "7", "namespace_path": "grp", "project_id": "42", "project_path": "grp/proj",
        "user_id": "3", "user_login": "dev", "pipeline_id": "1001", "pipeline_source": "push",
        "job_id": "5005", "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main",
        "ref_protected": "true", "runner_id": 9, "runner_environment": "self-hosted", "sha": "abc123",
    })
}

const TEST_CONNECTION: &str = "/v1/prompts/model_configuration%2Fcheck";

#[tokio::test]
async fn ci_job_tokens_are_not_ai_gateway_tokens() {
    let t = TestGateway::start().await;
    let issuer = t.gitlab.url();
    let ci = ci_job_claims(&issuer);
    // The same CI claims with everything an AI-gateway token has added, and CI claims one by one.
    let mut dressed = ci.clone();
    dressed["scopes"] = json!(["complete_code", "generate_code"]);
    dressed["gitlab_realm"] = json!("self-managed");
    dressed["sub"] = json!(INSTANCE_ID);
    let mut one_claim = instance_claims(&issuer, &["complete_code"]);
    one_claim["pipeline_id"] = json!("1001");
    let mut ci_subject = instance_claims(&issuer, &["complete_code"]);
    ci_subject["sub"] = json!("project_path:grp/proj:ref_type:branch:ref:main");
    let cases = [("CI job token", ci), ("CI token with scopes and realm", dressed), ("one CI claim", one_claim)];
    for (case, claims) in cases {
        let token = t.key.sign(&claims);
        for (path, body) in [
            (TEST_CONNECTION, t.test_connection_body(false)),
            ("/v1/prompts/code_generations", t.test_connection_body(false)),
            ("/v2/code/completions", t.completion_body("codestral", None, false)),
        ] {
            let answer = t.post(path, &t.gitlab_headers(&token), &body).await;
            assert_eq!(answer.status, 401, "{case} on {path}: {}", answer.text());
            assert_eq!(answer.json(), json!({"error": "Forbidden by auth provider"}), "{case} on {path}");
        }
    }
    // A CI subject is refused even when the instance id header matches nothing.
    let headers = without(t.gitlab_headers(&t.key.sign(&ci_subject)), "x-gitlab-instance-id");
    assert_401(&with_headers(&t, headers).await, "Forbidden by auth provider");
    assert!(t.model.requests().is_empty(), "no CI token reached the model");
}

#[tokio::test]
async fn only_tokens_shaped_as_ai_gateway_tokens_pass() {
    let t = TestGateway::start().await;
    let issuer = t.gitlab.url();
    let mut no_scopes = instance_claims(&issuer, &["complete_code"]);
    no_scopes.as_object_mut().unwrap().remove("scopes");
    let mut scopes_string = instance_claims(&issuer, &["complete_code"]);
    scopes_string["scopes"] = json!("complete_code");
    let mut scopes_numbers = instance_claims(&issuer, &["complete_code"]);
    scopes_numbers["scopes"] = json!([1, 2]);
    let mut no_realm = instance_claims(&issuer, &["complete_code"]);
    no_realm.as_object_mut().unwrap().remove("gitlab_realm");
    let mut empty_realm = instance_claims(&issuer, &["complete_code"]);
    empty_realm["gitlab_realm"] = json!("");
    for (case, claims) in [
        ("no scopes", no_scopes),
        ("scopes as a string", scopes_string),
        ("scopes as numbers", scopes_numbers),
        ("no realm", no_realm),
        ("empty realm", empty_realm),
    ] {
        for (path, body) in [
            (TEST_CONNECTION, t.test_connection_body(false)),
            ("/v2/code/completions", t.completion_body("codestral", None, false)),
        ] {
            let answer = t.post(path, &t.gitlab_headers(&t.key.sign(&claims)), &body).await;
            assert_eq!(answer.status, 401, "{case} on {path}: {}", answer.text());
            assert_eq!(answer.json(), json!({"error": "Forbidden by auth provider"}), "{case}");
        }
    }
    assert!(t.model.requests().is_empty());
    // The shape the instance really sends, an empty scope list included, authenticates.
    let answer = t.post(TEST_CONNECTION, &t.gitlab_headers(&t.token(&[])), &t.test_connection_body(false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn allowed_kids_pin_the_instance_keys() {
    let t = Setup::default().env("AIGW_AUTH__ALLOWED_KIDS", "gitlab-key-1, gitlab-key-0").start().await;
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200, "a pinned kid");
    // The instance publishes a second key (its CI key, say); tokens it signs are refused.
    let ci_key = TestKey::generate("gitlab-ci-key");
    t.gitlab.publish(&[&t.key, &ci_key]);
    let fetches = t.gitlab.jwks_fetches();
    let answer = with_token(&t, &ci_key.sign(&instance_claims(&t.gitlab.url(), &["complete_code"]))).await;
    assert_401(&answer, "Forbidden by auth provider");
    assert_eq!(t.gitlab.jwks_fetches(), fetches, "a kid outside the pin never refreshes the key set");
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200);

    // Without the pin, the same token would pass: the pin is what refuses it.
    let open = TestGateway::start().await;
    let other = TestKey::generate("gitlab-key-2");
    open.gitlab.publish(&[&open.key, &other]);
    assert_eq!(
        with_token(&open, &other.sign(&instance_claims(&open.gitlab.url(), &["complete_code"]))).await.status,
        200
    );
}

#[tokio::test]
async fn critical_header_parameters_are_refused() {
    let t = TestGateway::start().await;
    let claims = instance_claims(&t.gitlab.url(), &["complete_code"]);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.crit = Some(vec!["b64".to_string()]);
    assert_401(&with_token(&t, &t.key.sign_with_header(header, &claims)).await, "Forbidden by auth provider");
    let plain = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    assert_eq!(with_token(&t, &t.key.sign_with_header(plain, &claims)).await.status, 200);
}

#[tokio::test]
async fn issue_time_and_lifetime_are_bounded() {
    let t = Setup::default().env("AIGW_AUTH__MAX_TOKEN_LIFETIME_SECS", "7200").start().await;
    let signed = |iat: u64, exp: u64| {
        let mut claims = instance_claims(&t.gitlab.url(), &["complete_code"]);
        claims["iat"] = json!(iat);
        claims["exp"] = json!(exp);
        t.key.sign(&claims)
    };
    let now = now();
    // iat a little ahead (clock skew) passes; far ahead does not.
    assert_eq!(with_token(&t, &signed(now + 10, now + 3600)).await.status, 200);
    assert_401(&with_token(&t, &signed(now + 600, now + 3600)).await, "Forbidden by auth provider");
    // A lifetime of exactly the maximum passes; a second more does not.
    assert_eq!(with_token(&t, &signed(now, now + 7200)).await.status, 200);
    assert_401(&with_token(&t, &signed(now, now + 7201)).await, "Forbidden by auth provider");
    // Without iat (signed by the instance's own key, so not forged) a token is refused: GitLab's
    // tokens always carry it, and the lifetime bound would have nothing to count from.
    let mut no_issue_time = instance_claims(&t.gitlab.url(), &["complete_code"]);
    no_issue_time.as_object_mut().map(|claims| claims.remove("iat"));
    assert_401(&with_token(&t, &t.key.sign(&no_issue_time)).await, "Forbidden by auth provider");
    no_issue_time.as_object_mut().map(|claims| claims.remove("nbf"));
    assert_401(&with_token(&t, &t.key.sign(&no_issue_time)).await, "Forbidden by auth provider");

    // The default allows the development token's day and refuses a token minted for a week.
    let default = TestGateway::start().await;
    let signed = |exp: u64| {
        let mut claims = instance_claims(&default.gitlab.url(), &["complete_code"]);
        claims["exp"] = json!(exp);
        default.key.sign(&claims)
    };
    assert_eq!(with_token(&default, &signed(now + 24 * 3600)).await.status, 200);
    assert_401(&with_token(&default, &signed(now + 7 * 24 * 3600)).await, "Forbidden by auth provider");
    assert!(t.model.requests().len() == 2 && default.model.requests().len() == 1);
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let t = TestGateway::start().await;
    let token = t.token(&["complete_code"]);
    let mut headers = t.gitlab_headers(&token);
    headers.push(("authorization".to_string(), format!("Bearer {token}")));
    assert_401(&with_headers(&t, headers).await, "Invalid authorization header");
    assert_eq!(with_token(&t, &token).await.status, 200);
}

async fn jwks_refreshes(t: &TestGateway, outcome: &str) -> f64 {
    let text = t.request(http::Method::GET, "/metrics", &[], bytes::Bytes::new()).await.text();
    let series = format!("aigw_jwks_refreshes_total{{outcome=\"{outcome}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&series)).map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn the_key_set_is_fetched_from_the_instance_origin_only() {
    let elsewhere_key = TestKey::generate("elsewhere-key");
    let elsewhere = aigw_tests::MockGitLab::start(&[&elsewhere_key]).await;
    let token_from = |t: &TestGateway| elsewhere_key.sign(&instance_claims(&t.gitlab.url(), &["complete_code"]));

    // Discovery naming a key set on another origin is not followed.
    let t = TestGateway::start().await;
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200);
    let failed = jwks_refreshes(&t, "failed").await;
    t.gitlab.set_jwks_uri(&elsewhere.jwks_url());
    assert_401(&with_token(&t, &token_from(&t)).await, "Forbidden by auth provider");
    assert_eq!(elsewhere.jwks_fetches(), 0, "nothing was fetched from the other origin");
    assert_eq!(jwks_refreshes(&t, "failed").await, failed + 1.0);
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200, "the instance's keys still serve");

    // The operator can name that origin.
    let allowed = Setup::default().env("AIGW_AUTH__JWKS_ORIGIN", &elsewhere.url()).start().await;
    allowed.gitlab.set_jwks_uri(&elsewhere.jwks_url());
    let answer = with_token(&allowed, &token_from(&allowed)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(elsewhere.jwks_fetches() >= 1);
}

#[tokio::test]
async fn an_unusable_key_set_never_replaces_a_good_one() {
    let t = TestGateway::start().await;
    assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200);
    let failed = jwks_refreshes(&t, "failed").await;
    let mut wrong_algorithm = t.key.jwk().clone();
    wrong_algorithm["alg"] = json!("RS384");
    wrong_algorithm["kid"] = json!("rs384");
    let mut encryption = t.key.jwk().clone();
    encryption["use"] = json!("enc");
    encryption["kid"] = json!("enc");
    let elliptic = json!({"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
                          "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                          "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
    let stranger = TestKey::generate("stranger");
    for (round, documents) in [vec![], vec![wrong_algorithm, encryption, elliptic]].into_iter().enumerate() {
        t.gitlab.publish_documents(documents);
        // An unknown kid makes the gateway refresh and find nothing it can use...
        let answer = with_token(&t, &stranger.sign(&instance_claims(&t.gitlab.url(), &["complete_code"]))).await;
        assert_401(&answer, "Forbidden by auth provider");
        assert_eq!(jwks_refreshes(&t, "failed").await, failed + 1.0 + round as f64, "counted as a failed refresh");
        // ...and a token it has never seen, signed by the key it held, still verifies.
        assert_eq!(with_token(&t, &t.token(&["complete_code"])).await.status, 200, "round {round}");
    }
}

#[tokio::test]
async fn a_malformed_host_header_is_dropped_and_routing_follows_the_request_line() {
    let t = TestGateway::start().await;
    // A Host that carries a path cannot make a protected endpoint public, nor the reverse.
    let forged = vec![("host".to_string(), "127.0.0.1/monitoring/healthz?".to_string())];
    let protected = t.request(Method::POST, "/v2/code/completions", &forged, Bytes::from_static(b"{}")).await;
    assert_eq!(protected.status, 401, "{}", protected.text());
    let forged = vec![("host".to_string(), "gitlab.example.com/v2/code/completions?x=".to_string())];
    let public = t.request(Method::GET, "/monitoring/healthz", &forged, Bytes::new()).await;
    assert_eq!(public.status, 200);
    // A well-formed Host and the instance's headers: served as ever.
    let mut headers = t.gitlab_headers(&t.token(&["complete_code"]));
    headers.push(("host".to_string(), "aigw.internal:5052".to_string()));
    let body = t.completion_body("codestral", None, false);
    let answer = t.request(Method::POST, "/v2/code/completions", &headers, Bytes::from(body.to_string())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}
