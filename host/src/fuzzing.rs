//! The fuzz targets' way in (`fuzz/`, `make fuzz`): each function feeds arbitrary input to one
//! parser or decision exactly as a request would reach it, and must return, never panic or hang.
//! Not an API: the functions exist for the fuzzer and may change with the code they reach.

#![allow(clippy::expect_used, reason = "a fuzz target reports a broken invariant by panicking")]

use crate::auth::keys::DevClaims;
use crate::auth::{SigningKey, Verifier};
use crate::plugins::wit;
use crate::upstream::framing::Decoder;
use futures_util::FutureExt;
use std::sync::LazyLock;

/// The issuer the fuzzed tokens claim.
const ISSUER: &str = "https://gitlab.fuzz.test";

/// One key, generated once per process (RSA key generation takes a while), and a verifier that
/// trusts it as an instance's key; a well-formed development token must pass it, once, so that
/// the harness itself is known to be sound.
static TRUST: LazyLock<(SigningKey, Verifier)> = LazyLock::new(|| {
    let key = SigningKey::generate().expect("an RSA key can be generated");
    let verifier = Verifier::new().trust_local_key(ISSUER, key.kid(), key.decoding_key().clone());
    let good = key.sign(&DevClaims::new(ISSUER, std::time::Duration::from_secs(60))).expect("signs");
    let outcome = verifier.authenticate(&headers(&good)).now_or_never().expect("ready");
    assert!(outcome.is_ok(), "a valid token is accepted: {outcome:?}");
    (key, verifier)
});

/// The headers GitLab sends with `token`.
fn headers(token: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    headers.insert("x-gitlab-authentication-type", http::HeaderValue::from_static("oidc"));
    headers
}

/// Authenticate a request whose bearer token is `token`: header decoding, the refusals before
/// the key is looked up, the key lookup and the signature check. (With a local key nothing
/// awaits, so the future is ready at once.)
pub fn jwt(token: &[u8]) {
    let Ok(token) = std::str::from_utf8(token) else { return };
    let verifier = &TRUST.1;
    let outcome = verifier.authenticate(&headers(token)).now_or_never();
    assert!(outcome.is_some(), "authentication with a local key never waits");
}

/// Sign `claims` (any JSON) with the trusted key and authenticate it: what the claim checks do
/// with every shape of claims a signature can carry (types, realms, scopes, CI claims, times).
pub fn signed_claims(claims: &[u8]) {
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims) else { return };
    let (key, verifier) = &*TRUST;
    let Ok(token) = key.sign(&claims) else { return };
    let outcome = verifier.authenticate(&headers(&token)).now_or_never();
    assert!(outcome.is_some(), "authentication with a local key never waits");
}

/// Parse `body` as the request of the endpoint `selector` picks (v2 completions and
/// generations, v3/v4, the chat agent, `/v1/prompts`, `/v1/chat`), with every check that needs
/// no model call, and the model fields through the same resolution the handlers use.
pub fn request_body(selector: u8, body: &[u8]) {
    use crate::api;
    use crate::pipeline::ModelTarget;
    let principal = crate::auth::Principal::unrestricted();
    match selector % 5 {
        0 => {
            if let Ok(request) = api::code::parse_v2(body) {
                let _ = ModelTarget::resolve(request.model_fields(), true);
            }
        }
        1 => drop(api::code::parse_v3(body, &principal)),
        2 => drop(api::agent::parse(body, &principal)),
        3 => drop(api::prompts::parse(body)),
        _ => {
            if let Ok((request, _)) = api::chat::parse(body) {
                let _ = ModelTarget::resolve(request.model_fields(), true);
            }
        }
    }
}

/// Feed `stream` to the frame decoder `selector` picks (SSE, NDJSON, AWS event stream), in
/// pieces cut where the input's own bytes say, as a model server's chunks arrive.
pub fn stream_frames(selector: u8, stream: &[u8]) {
    let framing = match selector % 3 {
        0 => wit::Framing::Sse,
        1 => wit::Framing::Ndjson,
        _ => wit::Framing::AwsEventStream,
    };
    let mut decoder = Decoder::for_framing(framing);
    let cut = usize::from(selector / 3).max(1);
    for chunk in stream.chunks(cut) {
        if decoder.push(chunk).is_err() {
            return;
        }
        while let Ok(Some(_)) = decoder.next_event() {}
    }
    let _ = decoder.finish();
}

/// Parse `text` as a `model_endpoint` and, for a host the URL names without a resolver, take
/// the egress decision under the default policy and under one that allows loopback only.
pub fn endpoint_egress(text: &[u8]) {
    use crate::upstream::EgressPolicy;
    use crate::upstream::egress::{canonical, literal_address};
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(uri) = crate::pipeline::parse_endpoint(text) else { return };
    let host = uri.host().expect("a parsed endpoint has a host");
    let Some(Ok(address)) = literal_address(host) else { return };
    let loopback_only = EgressPolicy::new(vec!["127.0.0.0/8".parse().expect("a network")]);
    for policy in [EgressPolicy::any_but_always_refused(), loopback_only] {
        let verdict = policy.check(address);
        // A mapped address is decided as the address it carries.
        assert_eq!(verdict.is_ok(), policy.check(canonical(address)).is_ok(), "{address} and its canonical form");
    }
}

/// Load `text` as one prompt file of each registry: aigw's own TOML (with an operator's
/// `families.toml` beside it), and GitLab's YAML definition (`selector` even) or `models.yml`.
pub fn prompt_files(selector: u8, text: &[u8]) {
    let Ok(text) = std::str::from_utf8(text) else { return };
    let own = [("fuzz/base/1.0.0.toml".to_string(), text.to_string())];
    let _ = crate::prompts::PromptRegistry::from_files(own);
    let _ = crate::prompts::Families::default().merge(text);
    let definition = |text: &str| vec![("code_suggestions/completions/base/1.0.0.yml".to_string(), text.to_string())];
    let _ = if selector.is_multiple_of(2) {
        crate::prompts::load_gitlab_texts("models: []\n", &definition(text))
    } else {
        crate::prompts::load_gitlab_texts(text, &definition("name: fuzz\nmodel: {}\nprompt_template: {}\n"))
    };
}

#[cfg(test)]
mod tests {
    /// A fuzz target as the fuzzer calls it: the whole input.
    type Target = fn(&[u8]);

    /// Every committed seed of every target (a crash the fuzzer found is kept as one), run
    /// through its target as the fuzzer runs it: the first byte picks the variant where the
    /// target has variants.
    #[test]
    fn every_seed_runs_clean() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let targets: [(&str, Target); 6] = [
            ("jwt", super::jwt),
            ("signed_claims", super::signed_claims),
            ("endpoint_egress", super::endpoint_egress),
            ("request_body", |data| data.split_first().map_or((), |(s, rest)| super::request_body(*s, rest))),
            ("stream_frames", |data| data.split_first().map_or((), |(s, rest)| super::stream_frames(*s, rest))),
            ("prompt_files", |data| data.split_first().map_or((), |(s, rest)| super::prompt_files(*s, rest))),
        ];
        for (target, run) in targets {
            let dir = seeds.join(target);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut count = 0;
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                run(&std::fs::read(&path).expect("a seed file"));
                count += 1;
            }
            assert!(count >= 3, "{target} has seeds ({count})");
        }
    }
}
