//! `aigw doctor`, run as an operator runs it (the binary, its environment, its exit status)
//! against the mock GitLab and the mock model server: every verdict, each failure with its fix.

use aigw_tests::{MockGitLab, MockModelServer, Reply, TestKey, component, free_port, instance_claims, workspace};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A working set-up: a GitLab instance publishing two keys, a model server, and a plugins
/// directory holding the OpenAI-compatible plugin (one plugin keeps each run quick).
struct Fixture {
    gitlab: MockGitLab,
    model: MockModelServer,
    key: TestKey,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let (key, other) = (TestKey::generate("kid-a"), TestKey::generate("kid-b"));
        let gitlab = MockGitLab::start(&[&key, &other]).await;
        let model = MockModelServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        std::fs::copy(component("plugins/openai-compatible.wasm"), dir.path().join("plugins/openai-compatible.wasm"))
            .unwrap();
        Fixture { gitlab, model, key, dir }
    }

    fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// The environment GitLab's gateway would run with.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AIGW_GITLAB_URL".into(), self.gitlab.url()),
            ("AIGW_PLUGINS__DIR".into(), self.plugins().display().to_string()),
        ]
    }

    /// The model arguments for the mock model server's OpenAI-compatible API.
    fn model_args(&self) -> Vec<String> {
        let endpoint = self.model.base_url();
        [
            "--model-endpoint",
            &endpoint,
            "--model-identifier",
            "custom_openai/codestral-22b",
            "--model-name",
            "codestral",
        ]
        .map(String::from)
        .to_vec()
    }

    async fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Outcome {
        let mut all = self.env();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        doctor(&all, args).await
    }

    /// The whole doctor with a model, with `env` over the working environment.
    async fn run_with_model(&self, env: &[(&str, &str)]) -> Outcome {
        let args = self.model_args();
        self.run(env, &args.iter().map(String::as_str).collect::<Vec<_>>()).await
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
}

impl Outcome {
    /// The line starting with `start` (verdict and title), with the details and fix under it.
    fn step(&self, start: &str) -> String {
        let mut lines = self.stdout.lines().skip_while(|line| !line.trim_start().starts_with(start));
        let Some(first) = lines.next() else {
            panic!("no step starting {start:?} in:\n{}", self.stdout);
        };
        let under: Vec<&str> = lines.take_while(|line| line.starts_with("        ")).collect();
        std::iter::once(first).chain(under).collect::<Vec<_>>().join("\n")
    }

    /// Keep the output in target/doctor/NAME.txt: the README shows these.
    fn save(&self, name: &str) {
        let dir = workspace().join("target/doctor");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.txt")), &self.stdout).unwrap();
    }

    fn failed(&self) -> bool {
        self.code == Some(1)
    }

    fn passed(&self) -> bool {
        self.code == Some(0) && !self.stdout.contains("  FAIL  ")
    }
}

async fn doctor(env: &[(String, String)], args: &[&str]) -> Outcome {
    let binary = workspace().join("target/release/aigw");
    assert!(binary.is_file(), "{} is missing: run `make test`", binary.display());
    let output = tokio::process::Command::new(binary)
        .arg("doctor")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    Outcome { code: output.status.code(), stdout }
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

#[tokio::test]
async fn a_healthy_set_up_passes_every_step_with_a_one_token_completion() {
    let f = Fixture::start().await;
    let settings = write(&f.dir.path().join("aigw.toml"), "[plugins]\nmemory_limit_mb = 32\n");
    let token = f.key.sign(&instance_claims(&f.gitlab.url(), &["complete_code"]));
    let mut args = vec!["--config".to_string(), settings.display().to_string(), "--token".into(), token];
    args.extend(f.model_args());
    let out = f.run(&[], &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    out.save("healthy");
    assert!(out.passed(), "{}", out.stdout);
    assert!(out.stdout.ends_with("\nEvery check passed.\n"), "{}", out.stdout);
    let settings_step = out.step("ok    valid:");
    assert!(settings_step.contains(&format!("valid: 2 set in the environment, 1 in {}", settings.display())));
    assert!(settings_step.contains(&format!("AIGW_GITLAB_URL                {}  (environment)", f.gitlab.url())));
    assert!(settings_step.contains(&format!("AIGW_PLUGINS__MEMORY_LIMIT_MB  32  (file {})", settings.display())));
    assert!(out.step("skip  TLS").contains("http:// on loopback"));
    assert!(out.step("ok    OIDC discovery").contains(&format!("jwks_uri {}", f.gitlab.jwks_url())));
    assert!(out.stdout.contains("  ok    key set: 2 keys, 2 usable for RS256 tokens: kid-a, kid-b\n"));
    assert!(out.step("ok    token: verified with kid kid-a").contains("scopes: complete_code"));
    assert!(out.stdout.contains("  ok    openai-compatible 0.1.0: serves custom_openai, openai\n"));
    assert!(out.stdout.contains("  ok    loaded: built in; 12 model families\n"));
    assert!(out.stdout.contains(
        "  ok    custom_openai/codestral-22b: plugin openai-compatible 0.1.0 serves provider custom_openai, model \"codestral-22b\", family codestral\n"
    ));
    assert!(out.stdout.contains("  ok    egress: 127.0.0.1 is inside AIGW_EGRESS__ALLOW\n"));
    assert!(out.stdout.contains(&format!("  ok    reachable: connected to {} in", f.model.addr())));
    let completion = out.step("ok    test completion answered");
    assert!(completion.contains("\"return a + b\""), "{completion}");
    assert!(completion.contains("tokens: 12 in, 5 out"), "{completion}");
    // One real request, through the plugin, asking for one token.
    let requests = f.model.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].body["model"], "codestral-22b");
    assert_eq!(requests[0].body["max_tokens"], 1);
}

#[tokio::test]
async fn without_a_model_the_model_step_says_how_to_ask_for_one() {
    let f = Fixture::start().await;
    let out = f.run(&[], &[]).await;
    assert!(out.passed(), "{}", out.stdout);
    assert!(out.step("skip  no model given").contains("--model-endpoint URL --model-identifier"));
}

#[tokio::test]
async fn an_invalid_setting_fails_naming_it_and_where_it_was_set() {
    let f = Fixture::start().await;
    let out = f.run(&[("AIGW_FASTAPI__API_PORT", "fifty")], &[]).await;
    assert!(out.failed());
    let step = out.step("FAIL  invalid setting AIGW_FASTAPI__API_PORT");
    assert!(step.contains("\"fifty\" is not a TCP port"), "{step}");
    assert!(step.contains("fix: correct AIGW_FASTAPI__API_PORT where it is set: environment"), "{step}");
    assert!(out.stdout.contains("skip  not run: they read the settings"), "{}", out.stdout);

    let settings = write(&f.dir.path().join("bad.toml"), "[plugins]\nmemory_limit_mb = \"lots\"\n");
    let from_file = f.run(&[], &["--config", &settings.display().to_string()]).await;
    assert!(from_file.failed());
    assert!(from_file.step("FAIL  invalid setting --config").contains("fix: correct the settings file named above"));

    let missing = doctor(&[], &[]).await;
    assert!(missing.failed());
    let step = missing.step("FAIL  invalid setting AIGW_GITLAB_URL");
    assert!(step.contains("is required"), "{step}");
    assert!(step.contains("fix: set AIGW_GITLAB_URL"), "{step}");
}

#[tokio::test]
async fn a_misspelt_variable_warns_with_the_setting_it_meant_and_gitlab_variables_are_listed() {
    let f = Fixture::start().await;
    let out = f
        .run(&[("AIGW_EGRES__ALLOW", "10.0.0.0/8"), ("AIGW_GOOGLE_CLOUD_PLATFORM__PROJECT", "gitlab-project")], &[])
        .await;
    assert_eq!(out.code, Some(0), "warnings do not fail: {}", out.stdout);
    let step = out.step("warn  AIGW_EGRES__ALLOW is not an aigw setting");
    assert!(step.contains("fix: did you mean AIGW_EGRESS__ALLOW?"), "{step}");
    assert!(
        out.step("ok    valid:")
            .contains("not read by aigw (GitLab's gateway may read them): AIGW_GOOGLE_CLOUD_PLATFORM__PROJECT")
    );
    assert!(out.stdout.ends_with("\nEvery check passed, with 1 warning.\n"), "{}", out.stdout);
}

#[tokio::test]
async fn keys_in_settings_are_never_printed() {
    let f = Fixture::start().await;
    let key = TestKey::generate("gateway");
    let out = f.run(&[("AIGW_SELF_SIGNED_JWT__SIGNING_KEY", &key.pem)], &[]).await;
    assert!(out.passed(), "{}", out.stdout);
    assert!(out.stdout.contains("AIGW_SELF_SIGNED_JWT__SIGNING_KEY  (set, not shown)  (environment)"));
    assert!(!out.stdout.contains("PRIVATE KEY"), "{}", out.stdout);
}

#[tokio::test]
async fn authentication_turned_off_warns() {
    let f = Fixture::start().await;
    let out = f.run(&[("AIGW_AUTH__BYPASS_EXTERNAL", "true")], &[]).await;
    assert_eq!(out.code, Some(0));
    assert!(out.step("warn  AIGW_AUTH__BYPASS_EXTERNAL is true").contains("isolated test set-up"));
}

#[tokio::test]
async fn an_unreachable_instance_fails_discovery_with_the_url_to_check() {
    let f = Fixture::start().await;
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = f.run(&[("AIGW_GITLAB_URL", &url)], &[]).await;
    assert!(out.failed());
    let step = out.step("FAIL  OIDC discovery at");
    assert!(step.contains("unreachable: "), "{step}");
    assert!(step.contains(&format!("fix: nothing answered at {url}: check AIGW_GITLAB_URL")), "{step}");
}

#[tokio::test]
async fn an_instance_that_is_down_fails_with_its_status() {
    let f = Fixture::start().await;
    f.gitlab.set_down(true);
    let out = f.run(&[], &[]).await;
    assert!(out.failed());
    let step = out.step("FAIL  OIDC discovery at");
    assert!(step.contains("the instance answered 503 Service Unavailable"), "{step}");
    assert!(step.contains("is it up?"), "{step}");
}

#[tokio::test]
async fn a_key_set_on_another_origin_fails_naming_the_setting_that_allows_it() {
    let f = Fixture::start().await;
    f.gitlab.set_jwks_uri("http://127.0.0.2:8443/oauth/discovery/keys");
    let out = f.run(&[], &[]).await;
    assert!(out.failed());
    let step = out.step("FAIL  OIDC discovery at");
    assert!(step.contains("is not on the instance's origin"), "{step}");
    assert!(step.contains("set AIGW_AUTH__JWKS_ORIGIN=http://127.0.0.2:8443"), "{step}");
}

#[tokio::test]
async fn a_key_set_without_a_usable_key_fails_and_says_why_of_each() {
    let f = Fixture::start().await;
    let mut encryption = f.key.jwk().clone();
    encryption["use"] = json!("enc");
    let mut no_kid = f.key.jwk().clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    f.gitlab.publish_documents(vec![encryption, no_kid]);
    let out = f.run(&[], &[]).await;
    assert!(out.failed());
    let step = out.step("FAIL  key set: 2 keys, none aigw can verify RS256 tokens with");
    assert!(step.contains("kid kid-a: not used, it is marked for another use than signatures"), "{step}");
    assert!(step.contains("kid (no kid): not used, it has no kid"), "{step}");
    assert!(step.contains("fix: GitLab signs AI gateway tokens with an RSA key"), "{step}");
}

#[tokio::test]
async fn pinned_key_ids_the_instance_does_not_publish_fail_as_unknown_kids() {
    let f = Fixture::start().await;
    let out = f.run_with_model(&[("AIGW_AUTH__ALLOWED_KIDS", "kid-old")]).await;
    out.save("unknown-kid");
    assert!(out.failed());
    let step = out.step("FAIL  AIGW_AUTH__ALLOWED_KIDS: unknown kid kid-old");
    assert!(step.contains("every token is refused"), "{step}");
    assert!(step.contains("key ids the instance publishes (kid-a, kid-b)"), "{step}");

    let some = f.run(&[("AIGW_AUTH__ALLOWED_KIDS", "kid-a,kid-old")], &[]).await;
    assert_eq!(some.code, Some(0), "{}", some.stdout);
    assert!(
        some.stdout.contains("  warn  AIGW_AUTH__ALLOWED_KIDS: unknown kid kid-old, not published by the instance\n")
    );

    let all = f.run(&[("AIGW_AUTH__ALLOWED_KIDS", "kid-b,kid-a")], &[]).await;
    assert!(all.passed());
    assert!(all.stdout.contains("  ok    AIGW_AUTH__ALLOWED_KIDS: every pinned kid is published (kid-b, kid-a)"));
}

#[tokio::test]
async fn a_token_signed_by_a_key_the_instance_does_not_publish_fails_as_an_unknown_kid() {
    let f = Fixture::start().await;
    let stranger = TestKey::generate("kid-other");
    let token = stranger.sign(&instance_claims(&f.gitlab.url(), &["complete_code"]));
    let out = f.run(&[], &["--token", &token]).await;
    assert!(out.failed());
    let step = out.step("FAIL  token refused: no trusted key with kid \"kid-other\"");
    assert!(step.contains("fix: unknown kid kid-other: the instance publishes kid-a, kid-b"), "{step}");

    let mut claims = instance_claims(&f.gitlab.url(), &["complete_code"]);
    claims["exp"] = json!(aigw_tests::now() - 3600);
    let expired = f.run(&[], &["--token", &f.key.sign(&claims)]).await;
    assert!(expired.failed());
    assert!(expired.step("FAIL  token refused: ").contains("ExpiredSignature"), "{}", expired.stdout);
}

#[tokio::test]
async fn an_untrusted_instance_certificate_fails_tls_and_ssl_cert_file_mends_it() {
    let f = Fixture::start().await;
    let (gitlab, certificate) = MockGitLab::start_tls(&[&f.key]).await;
    let untrusted = f.run(&[("AIGW_GITLAB_URL", &gitlab.url())], &[]).await;
    assert!(untrusted.failed());
    let step = untrusted.step("FAIL  TLS: the handshake with 127.0.0.1 failed");
    assert!(step.contains("invalid peer certificate"), "{step}");
    assert!(step.contains("SSL_CERT_FILE"), "{step}");

    let bundle = write(&f.dir.path().join("ca.pem"), &certificate);
    let bundle = bundle.display().to_string();
    let trusted = f.run(&[("AIGW_GITLAB_URL", &gitlab.url()), ("SSL_CERT_FILE", &bundle)], &[]).await;
    assert!(trusted.passed(), "{}", trusted.stdout);
    assert!(trusted.stdout.contains("  ok    TLS: 127.0.0.1's certificate is trusted"));
    assert!(trusted.stdout.contains("  ok    key set: 1 keys, 1 usable for RS256 tokens: kid-a"));
}

#[tokio::test]
async fn a_plugin_that_does_not_load_fails_and_the_others_still_serve() {
    let f = Fixture::start().await;
    write(&f.plugins().join("broken.wasm"), "not a component");
    std::fs::copy(component("test-guests/stale.wasm"), f.plugins().join("stale.wasm")).unwrap();
    let copy =
        aigw_tests::with_new_digest(&std::fs::read(component("plugins/openai-compatible.wasm")).unwrap(), "copy");
    std::fs::write(f.plugins().join("second-openai.wasm"), copy).unwrap();
    let out = f.run(&[], &[]).await;
    assert!(out.failed());
    let broken = out.step(&format!("FAIL  {} does not load", f.plugins().join("broken.wasm").display()));
    assert!(broken.contains("rebuild it for aigw:plugin@0.4.0 or remove it"), "{broken}");
    let stale = out.step(&format!("FAIL  {} does not load", f.plugins().join("stale.wasm").display()));
    assert!(stale.contains("aigw:plugin@0.4.0"), "{stale}");
    assert!(out.stdout.contains("  ok    openai-compatible 0.1.0: serves custom_openai, openai\n"));
    let lost = out.step(&format!(
        "warn  {}: custom_openai, openai also served",
        f.plugins().join("second-openai.wasm").display()
    ));
    assert!(lost.contains("the earlier directory in AIGW_PLUGINS__DIR (then the earlier file name)"), "{lost}");
}

#[tokio::test]
async fn a_missing_or_empty_plugins_directory_fails() {
    let f = Fixture::start().await;
    let out = f.run(&[("AIGW_PLUGINS__DIR", "/nonexistent/aigw-plugins")], &[]).await;
    assert!(out.failed());
    assert!(out.step("FAIL  /nonexistent/aigw-plugins is not a directory").contains("correct AIGW_PLUGINS__DIR"));

    let empty = tempfile::tempdir().unwrap();
    let out = f.run(&[("AIGW_PLUGINS__DIR", &empty.path().display().to_string())], &[]).await;
    assert!(out.failed());
    assert!(out.step("FAIL  no plugin: the gateway can serve no model").contains("*.wasm"));
}

#[tokio::test]
async fn the_compiled_plugin_cache_is_reported_cold_then_warm() {
    let f = Fixture::start().await;
    let cache = f.dir.path().join("cache");
    let cache_env = cache.display().to_string();
    let cold = f.run(&[("AIGW_PLUGINS__CACHE_DIR", &cache_env)], &[]).await;
    assert!(cold.passed(), "{}", cold.stdout);
    assert!(cold.stdout.contains(&format!("  ok    compiled-plugin cache {cache_env}: 0 of 1 loaded from it")));
    let warm = f.run(&[("AIGW_PLUGINS__CACHE_DIR", &cache_env)], &[]).await;
    assert!(warm.stdout.contains(&format!("  ok    compiled-plugin cache {cache_env}: 1 of 1 loaded from it")));
    assert!(warm.step("ok    openai-compatible").contains("compiled code from the cache"));
}

#[tokio::test]
async fn prompts_that_do_not_load_fail_and_the_model_step_is_not_run() {
    let f = Fixture::start().await;
    let prompts = f.dir.path().join("prompts");
    std::fs::create_dir(&prompts).unwrap();
    write(&prompts.join("families.toml"), "[[family]\nname = ");
    let out = f.run_with_model(&[("AIGW_PROMPTS__DIR", &prompts.display().to_string())]).await;
    assert!(out.failed());
    assert!(out.step("FAIL  the prompts do not load").contains("families.toml"), "{}", out.stdout);
    assert!(out.stdout.contains("  skip  not run: the plugins or prompts above do not load"));
    assert!(f.model.requests().is_empty());
}

#[tokio::test]
async fn an_endpoint_outside_the_egress_allowlist_fails_with_the_entry_to_add() {
    let f = Fixture::start().await;
    let out = f.run_with_model(&[("AIGW_EGRESS__ALLOW", "10.0.0.0/8")]).await;
    out.save("outside-egress");
    assert!(out.failed());
    let step = out.step("FAIL  egress refused: model endpoint address 127.0.0.1 is outside");
    assert!(step.contains("outside the egress allowlist"), "{step}");
    assert!(step.contains("fix: add 127.0.0.1 (or its network) to AIGW_EGRESS__ALLOW, which allows 10.0.0.0/8 now"));
    assert!(f.model.requests().is_empty(), "nothing is sent where egress refuses");
}

#[tokio::test]
async fn a_metadata_endpoint_fails_as_always_refused() {
    let f = Fixture::start().await;
    let args = ["--model-endpoint", "http://169.254.169.254/v1", "--model-identifier", "custom_openai/m"];
    let out = f.run(&[], &args).await;
    assert!(out.failed());
    let step = out.step("FAIL  egress refused: model endpoint address 169.254.169.254");
    assert!(step.contains("always refused"), "{step}");
    assert!(step.contains("fix: no setting allows it"), "{step}");
}

#[tokio::test]
async fn an_endpoint_nothing_listens_on_fails_as_unreachable() {
    let f = Fixture::start().await;
    let endpoint = format!("http://127.0.0.1:{}/v1", free_port());
    let out = f.run(&[], &["--model-endpoint", &endpoint, "--model-identifier", "custom_openai/m"]).await;
    assert!(out.failed());
    let step = out.step("FAIL  unreachable: 127.0.0.1:");
    assert!(step.contains("fix: start the model server"), "{step}");
    assert!(!out.stdout.contains("test completion"), "{}", out.stdout);
}

#[tokio::test]
async fn an_openai_compatible_endpoint_without_v1_fails_with_the_corrected_url() {
    let f = Fixture::start().await;
    let root = f.model.root_url();
    let out = f.run(&[], &["--model-endpoint", &root, "--model-identifier", "custom_openai/codestral-22b"]).await;
    out.save("missing-v1");
    assert!(out.failed());
    let step = out.step("FAIL  test completion to");
    assert!(step.contains("404 Not Found"), "{step}");
    assert!(
        step.contains(&format!(
            "fix: vLLM and other OpenAI-compatible servers serve their API under /v1: use {root}/v1,"
        ))
    );
    assert!(out.stdout.contains("family general (no --model-name)"), "{}", out.stdout);
}

#[tokio::test]
async fn a_refused_key_fails_saying_which_key_to_give() {
    let f = Fixture::start().await;
    f.model.set_reply(Reply { status: 401, error_message: "invalid api key".into(), ..Reply::default() });
    let out = f.run_with_model(&[("AIGW_DOCTOR_MODEL_API_KEY", "sk-wrong-key")]).await;
    assert!(out.failed());
    let step = out.step("FAIL  test completion to");
    assert!(step.contains("401 Unauthorized"), "{step}");
    assert!(step.contains("invalid api key"), "the model server's own words: {step}");
    assert!(step.contains("fix: the model server refused the key"), "{step}");
    assert!(!out.stdout.contains("sk-wrong-key"));
    assert!(!out.stdout.contains("AIGW_DOCTOR_MODEL_API_KEY  "), "the doctor's own input is no setting");
    assert_eq!(f.model.requests()[0].headers["authorization"], "Bearer sk-wrong-key");
}

#[tokio::test]
async fn a_model_slower_than_the_timeout_fails_as_such() {
    let f = Fixture::start().await;
    f.model.set_reply(Reply { head_delay: std::time::Duration::from_secs(3), ..Reply::default() });
    let out = f.run_with_model(&[("AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "200")]).await;
    assert!(out.failed());
    let step = out.step("FAIL  test completion to");
    assert!(step.contains("timed out"), "{step}");
    assert!(step.contains("AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS"), "{step}");
}

#[tokio::test]
async fn a_provider_no_plugin_serves_fails_listing_the_ones_loaded() {
    let f = Fixture::start().await;
    let endpoint = f.model.base_url();
    let out = f.run(&[], &["--model-endpoint", &endpoint, "--model-identifier", "vertex/gemini"]).await;
    assert!(out.failed());
    let step = out.step("FAIL  provider \"vertex\"");
    assert!(step.contains("the plugins loaded serve: custom_openai, openai"), "{step}");
}

#[tokio::test]
async fn model_fields_gitlab_would_refuse_fail() {
    let f = Fixture::start().await;
    let endpoint = f.model.base_url();
    let bad = f.run(&[], &["--model-endpoint", &endpoint, "--model-identifier", "custom_openai/"]).await;
    assert!(bad.failed());
    assert!(bad.step("FAIL  the model fields are refused").contains("must be <provider>/<model>"));

    let disabled = f.run_with_model(&[("AIGW_CUSTOM_MODELS__ENABLED", "false")]).await;
    assert!(disabled.failed());
    assert!(disabled.step("FAIL  the model fields are refused").contains("AIGW_CUSTOM_MODELS__ENABLED is false"));

    let no_endpoint = f.run(&[], &["--model-identifier", "custom_openai/codestral-22b"]).await;
    assert!(no_endpoint.failed());
    assert!(no_endpoint.step("FAIL  no endpoint").contains("give --model-endpoint"));

    let family = ["--model-endpoint", &endpoint, "--model-identifier", "custom_openai/m", "--model-name", "cobol"];
    let unknown = f.run(&[], &family).await;
    assert!(unknown.failed());
    assert!(unknown.step("FAIL  family cobol").contains("--model-name is the model family"));
}

#[tokio::test]
async fn an_instance_url_that_is_not_gitlab_or_that_redirects_gets_its_own_fix() {
    let f = Fixture::start().await;
    // A model server where the instance should be: discovery is not there.
    let not_gitlab = f.run(&[("AIGW_GITLAB_URL", &f.model.root_url())], &[]).await;
    assert!(not_gitlab.failed());
    let step = not_gitlab.step("FAIL  OIDC discovery at");
    assert!(step.contains("the instance answered 404 Not Found"), "{step}");
    assert!(step.contains("AIGW_GITLAB_URL must be its root URL"), "{step}");

    // An instance answering http:// with a redirect to https://, which aigw never follows.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let redirector = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head).await;
            let answer =
                "HTTP/1.1 301 Moved Permanently\r\nlocation: https://gitlab.example.com/\r\ncontent-length: 0\r\n\r\n";
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    let redirected = f.run(&[("AIGW_GITLAB_URL", &url)], &[]).await;
    redirector.abort();
    assert!(redirected.failed());
    let step = redirected.step("FAIL  OIDC discovery at");
    assert!(step.contains("the instance answered 301 Moved Permanently"), "{step}");
    assert!(step.contains("a redirect (often from http:// to https://), which aigw never follows"), "{step}");
}

#[tokio::test]
async fn an_https_instance_that_does_not_answer_skips_tls_and_a_metadata_url_is_refused() {
    let f = Fixture::start().await;
    let https = format!("https://127.0.0.1:{}", free_port());
    let out = f.run(&[("AIGW_GITLAB_URL", &https)], &[]).await;
    assert!(out.failed());
    assert!(out.stdout.contains("  skip  TLS: not checked, the instance did not answer\n"), "{}", out.stdout);
    assert!(out.step("FAIL  OIDC discovery at").contains("unreachable"));

    let metadata = f.run(&[("AIGW_GITLAB_URL", "http://169.254.169.254")], &[]).await;
    assert!(metadata.failed());
    let step = metadata.step("FAIL  OIDC discovery at http://169.254.169.254");
    assert!(step.contains("always refused"), "{step}");
    assert!(step.contains("fix: AIGW_GITLAB_URL may not name a link-local, metadata or unspecified address"), "{step}");
}

#[tokio::test]
async fn each_failing_model_server_answer_gets_its_own_fix() {
    let f = Fixture::start().await;
    let cases = [
        (
            404,
            "404 Not Found",
            "no such route or model: check the endpoint's path and that it serves model \"codestral-22b\"",
        ),
        (400, "400 Bad Request", "did not accept the request: check that it speaks custom_openai's API"),
        (503, "503 Service Unavailable", "overloaded or failing: see its own log"),
    ];
    for (status, said, fix) in cases {
        f.model.set_reply(Reply { status, ..Reply::default() });
        let out = f.run_with_model(&[("AIGW_UPSTREAM__RETRIES", "0")]).await;
        assert!(out.failed(), "{status}");
        let step = out.step("FAIL  test completion to");
        assert!(step.contains(said) && step.contains(fix), "{status}: {step}");
    }
    // An answer the plugin cannot read: the endpoint speaks another API.
    f.model.replay(vec![aigw_tests::Recording {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"reply": "not OpenAI's shape"}"#.into(),
    }]);
    let out = f.run_with_model(&[]).await;
    assert!(out.failed());
    let step = out.step("FAIL  test completion to");
    assert!(
        step.contains("fix: the plugin could not read the answer: the endpoint does not speak custom_openai's API"),
        "{step}"
    );
}

#[tokio::test]
async fn a_signed_provider_without_aws_credentials_fails_naming_them() {
    let f = Fixture::start().await;
    std::fs::copy(component("plugins/bedrock.wasm"), f.plugins().join("bedrock.wasm")).unwrap();
    let endpoint = f.model.root_url();
    let args = ["--model-endpoint", &endpoint, "--model-identifier", "bedrock/anthropic.claude-3-haiku-20240307-v1:0"];
    let out = f.run(&[], &args).await;
    assert!(out.failed());
    let step = out.step("FAIL  test completion to");
    assert!(step.contains("not signed"), "{step}");
    assert!(step.contains("fix: set the AWS credentials the gateway signs with: AWS_ACCESS_KEY_ID"), "{step}");
    assert!(f.model.requests().is_empty(), "nothing unsigned is sent");
}

#[tokio::test]
async fn an_instance_that_accepts_but_never_answers_fails_on_its_timeout() {
    let f = Fixture::start().await;
    // Accepts the connection and reads, never answers: the instance's fetch timeout (10 s) ends it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let out = f.run(&[("AIGW_GITLAB_URL", &url)], &[]).await;
    silent.abort();
    assert!(out.failed());
    let step = out.step("FAIL  OIDC discovery at");
    assert!(step.contains("no answer within 10s"), "{step}");
    assert!(step.contains("fix: the instance did not answer within 10s: check the network path"), "{step}");
}

#[tokio::test]
async fn a_named_model_is_checked_end_to_end_with_a_tool_call() {
    let f = Fixture::start().await;
    let models = f.dir.path().join("models.toml");
    std::fs::write(
        &models,
        format!(
            "[[models]]\nname = \"agent\"\nidentifier = \"custom_openai/qwen3-coder\"\nendpoint = \"{}\"\n\
             api_key_env = \"VLLM_KEY\"\n",
            f.model.base_url()
        ),
    )
    .unwrap();
    let models = models.display().to_string();
    f.model.set_reply(Reply { text: "OK".into(), ..agent_calling_the_doctors_tool() });
    let env = [("AIGW_MODELS__FILE", models.as_str()), ("VLLM_KEY", "sk-canary-vllm-secret")];
    let out = f.run(&env, &["--model", "agent"]).await;
    out.save("named-model");
    assert!(out.passed(), "{}", out.stdout);
    let found = out.step("ok    agent: custom_openai/qwen3-coder through plugin openai-compatible");
    assert!(found.contains("credential: environment variable VLLM_KEY"), "{found}");
    assert!(out.step("ok    answered in").contains("\"OK\""));
    assert!(out.step("ok    tool call answered in").contains("aigw_doctor_echo({\"value\": 42})"));
    assert!(!out.stdout.contains("sk-canary-vllm-secret"), "the credential never shows");
    let sent = f.model.requests();
    assert_eq!(sent.last().unwrap().headers["authorization"], "Bearer sk-canary-vllm-secret");

    // A model that answers in text when offered a tool: a warning with what to do.
    f.model.set_reply(Reply { text: "OK".into(), ..Reply::default() });
    let out = f.run(&env, &["--model", "agent"]).await;
    let warned = out.step("warn  the model answered in text instead of calling the tool");
    assert!(warned.contains("--enable-auto-tool-choice"), "{warned}");
    let missing = f.run(&env, &["--model", "ghost"]).await;
    assert!(missing.failed());
    assert!(missing.step("FAIL  no model is named \"ghost\"").contains("the models file names: agent"));
}

#[tokio::test]
async fn a_pool_is_checked_member_by_member_with_its_health_and_load() {
    let f = Fixture::start().await;
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let models = f.dir.path().join("models.toml");
    std::fs::write(
        &models,
        format!(
            "[[models]]\nname = \"coder\"\nidentifier = \"custom_openai/qwen3-coder\"\nendpoints = [\"{}\", \"{dead}\"]\n\
             [models.pool]\nmetrics_path = \"/metrics\"\nhealth_path = \"/health\"\n",
            f.model.base_url()
        ),
    )
    .unwrap();
    let models = models.display().to_string();
    f.model.set_load(3, 12, 0.42);
    f.model.set_reply(agent_calling_the_doctors_tool());
    let out = f.run(&[("AIGW_MODELS__FILE", models.as_str())], &["--model", "coder"]).await;
    out.save("pool");
    let live = f.model.base_url();
    let state = out.step(&format!("ok    {live}: health endpoint: passing"));
    assert!(state.contains("load: 3 waiting, 12 running, KV cache 42% used"), "{state}");
    assert!(out.stdout.contains(&format!("member {dead}")), "{}", out.stdout);
    assert!(out.failed(), "a member that cannot be reached fails the check:\n{}", out.stdout);
    // The pool still answers through the member that is up.
    assert!(out.step("ok    tool call answered in").contains("aigw_doctor_echo"), "{}", out.stdout);
}

/// A model that calls the tool doctor offers it (and answers in text otherwise).
fn agent_calling_the_doctors_tool() -> Reply {
    Reply {
        tool_calls: vec![aigw_mock::MockToolCall {
            id: "call_1".into(),
            name: "aigw_doctor_echo".into(),
            arguments: "{\"value\": 42}".into(),
        }],
        agent: true,
        ..Reply::default()
    }
}
