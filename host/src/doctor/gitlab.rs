//! The doctor's GitLab steps: the instance answers OIDC discovery, over trusted TLS, with a key set
//! aigw can verify its tokens with, the pinned key ids are among them, and a given token verifies.

use super::{Section, Step};
use crate::auth::Verifier;
use crate::auth::jwks::JwksError;
use crate::config::Config;
use crate::telemetry::Metrics;
use crate::upstream::UpstreamError;
use crate::upstream::egress::literal_address;
use std::sync::Arc;
use std::time::Instant;

/// Check the instance `AIGW_GITLAB_URL` names.
pub(super) async fn check(config: &Config, token: Option<&str>, metrics: &Arc<Metrics>) -> Section {
    let Some(url) = config.gitlab_url.as_deref() else {
        let mut section = Section::new("GitLab instance");
        section.push(Step::skip("development mode without AIGW_GITLAB_URL: only the local development key is trusted"));
        return section;
    };
    let mut section = Section::new(format!("GitLab instance (AIGW_GITLAB_URL {url})"));
    let cache = match crate::instance_keys(config, url, metrics) {
        Ok(cache) => Arc::new(cache),
        Err(error) => {
            section.push(Step::fail(format!("the TLS client cannot be set up: {error}"), "report this as a bug"));
            return section;
        }
    };
    let host = url.parse::<http::Uri>().ok().and_then(|uri| uri.host().map(str::to_string)).unwrap_or_default();
    let https = url.starts_with("https://");
    let started = Instant::now();
    let discovered = cache.discover().await;
    let discovery_ms = started.elapsed().as_millis();
    // TLS first: every later answer rests on it.
    match (&discovered, https) {
        (Err(JwksError::Fetch(UpstreamError::Handshake(why))), true) => {
            section.push(Step::fail(
                format!("TLS: the handshake with {host} failed: {why}"),
                super::untrusted_certificate_fix("the instance's"),
            ));
            return section;
        }
        (Ok(_), true) => {
            section.push(Step::ok(format!("TLS: {host}'s certificate is trusted (the system's trust store)")));
        }
        (Err(_), true) => section.push(Step::skip("TLS: not checked, the instance did not answer")),
        (_, false) if is_loopback(&host) => section.push(Step::skip("TLS: not used (http:// on loopback)")),
        (_, false) => section.push(Step::warn(
            "TLS: not used: the instance's keys are fetched over plain http://",
            "use the instance's https:// URL: a key set fetched in the clear can be replaced on the way, and \
             with it every token",
        )),
    }
    let jwks_uri = match discovered {
        Ok(jwks_uri) => {
            section.push(
                Step::ok(format!("OIDC discovery answered in {discovery_ms} ms"))
                    .detail(format!("jwks_uri {jwks_uri}")),
            );
            jwks_uri
        }
        Err(error) => {
            let fix = fix_for(&error, url);
            section.push(Step::fail(format!("OIDC discovery at {}: {}", cache.discovery_url(), describe(&error)), fix));
            return section;
        }
    };
    let published = match cache.fetch_keys(&jwks_uri).await {
        Ok(published) => published,
        Err(error) => {
            section.push(Step::fail(format!("key set at {jwks_uri}: {}", describe(&error)), fix_for(&error, url)));
            return section;
        }
    };
    let usable = published.usable_kids();
    let mut step = if usable.is_empty() {
        Step::fail(
            format!("key set: {} keys, none aigw can verify RS256 tokens with", published.keys.len()),
            "GitLab signs AI gateway tokens with an RSA key it publishes with a kid: check that AIGW_GITLAB_URL \
             names the GitLab instance (and not a proxy or another identity provider)",
        )
    } else {
        Step::ok(format!(
            "key set: {} keys, {} usable for RS256 tokens: {}",
            published.keys.len(),
            usable.len(),
            usable.join(", ")
        ))
    };
    for key in published.keys.iter().filter(|key| key.unusable.is_some()) {
        let kid = key.kid.as_deref().unwrap_or("(no kid)");
        step = step.detail(format!("kid {kid}: not used, {}", key.unusable.unwrap_or_default()));
    }
    section.push(step);
    if usable.is_empty() {
        return section;
    }
    if let Some(allowed) = &config.allowed_kids {
        let unknown: Vec<&str> = allowed.iter().map(String::as_str).filter(|kid| !usable.contains(kid)).collect();
        let fix = format!(
            "set AIGW_AUTH__ALLOWED_KIDS to key ids the instance publishes ({}), or unset it to accept any of them",
            usable.join(", ")
        );
        let unknown_kids =
            format!("AIGW_AUTH__ALLOWED_KIDS: unknown kid {}, not published by the instance", unknown.join(", "));
        section.push(if unknown.len() == allowed.len() {
            Step::fail(format!("{unknown_kids}: every token is refused"), fix)
        } else if !unknown.is_empty() {
            Step::warn(unknown_kids, fix)
        } else {
            Step::ok(format!("AIGW_AUTH__ALLOWED_KIDS: every pinned kid is published ({})", allowed.join(", ")))
        });
    }
    if let Some(token) = token {
        let verifier = Verifier::new().max_token_lifetime(config.max_token_lifetime).trust_instance(
            url,
            Arc::clone(&cache),
            config.allowed_kids.clone(),
        );
        let kid = jsonwebtoken::decode_header(token.trim()).ok().and_then(|header| header.kid);
        section.push(match verifier.verify_token_only(token).await {
            Ok((scopes, expires)) => {
                let left = expires.saturating_sub(jsonwebtoken::get_current_timestamp()) / 60;
                Step::ok(format!(
                    "token: verified with kid {}, valid for {left} more minutes",
                    kid.as_deref().unwrap_or_default()
                ))
                .detail(format!("scopes: {}", scopes.join(", ")))
            }
            Err(error) => {
                let reason = match &error {
                    crate::auth::AuthError::Forbidden { reason } => reason.clone(),
                    other => other.to_string(),
                };
                let fix = match kid {
                    Some(kid) if !usable.contains(&kid.as_str()) => format!(
                        "unknown kid {kid}: the instance publishes {}; the token was signed by another instance, or \
                         with a key this one no longer publishes: check that AIGW_GITLAB_URL names the instance \
                         GitLab's AI gateway URL points here from",
                        usable.join(", ")
                    ),
                    _ => "the reason names the claim: tokens must be the instance's AI gateway tokens (audience \
                          gitlab-ai-gateway, issuer AIGW_GITLAB_URL), current, and within \
                          AIGW_AUTH__MAX_TOKEN_LIFETIME_SECS"
                        .to_string(),
                };
                Step::fail(format!("token refused: {reason}"), fix)
            }
        });
    }
    section
}

/// A failed fetch from the instance, in its words (the outbound client's errors speak of model
/// servers).
fn describe(error: &JwksError) -> String {
    match error {
        JwksError::Fetch(UpstreamError::Connect(why)) => format!("unreachable: {why}"),
        JwksError::Fetch(UpstreamError::Timeout { after, .. }) => format!("no answer within {after:?}"),
        JwksError::Fetch(UpstreamError::Status { status, .. }) => format!("the instance answered {status}"),
        JwksError::Fetch(UpstreamError::Body(why)) => format!("unusable answer: {why}"),
        other => other.to_string(),
    }
}

/// What to do about a failed fetch from the instance.
fn fix_for(error: &JwksError, url: &str) -> String {
    match error {
        JwksError::ForeignKeySet(jwks_uri) => {
            let origin = jwks_uri
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?.as_str())));
            format!(
                "if the instance does serve its keys from there, set AIGW_AUTH__JWKS_ORIGIN={}",
                origin.unwrap_or_else(|| "<that origin>".to_string())
            )
        }
        JwksError::Malformed(_) => {
            "the answer is not GitLab's OIDC discovery or key set: check that AIGW_GITLAB_URL names the GitLab instance"
                .to_string()
        }
        JwksError::Fetch(fetch) => match fetch {
            UpstreamError::Connect(_) => format!(
                "nothing answered at {url}: check AIGW_GITLAB_URL, and that this environment reaches the instance \
                 (DNS, proxies, a NetworkPolicy's egress rules)"
            ),
            UpstreamError::Timeout { after, .. } => {
                format!("the instance did not answer within {after:?}: check the network path from here to it")
            }
            UpstreamError::Status { status, .. } if *status == http::StatusCode::NOT_FOUND => format!(
                "the instance answered 404: AIGW_GITLAB_URL must be its root URL (such as https://gitlab.example.com), \
                 not {url}'s path"
            ),
            UpstreamError::Status { status, .. } if status.is_redirection() => format!(
                "the instance answered {status}, a redirect (often from http:// to https://), which aigw never \
                 follows: set AIGW_GITLAB_URL to the URL it redirects to"
            ),
            UpstreamError::Status { status, .. } => format!(
                "the instance answered {status}: is it up? GitLab answers 502 or 503 while starting or in maintenance"
            ),
            UpstreamError::Refused(_) => {
                "AIGW_GITLAB_URL may not name a link-local, metadata or unspecified address".to_string()
            }
            UpstreamError::Body(_) => {
                "the answer is not JSON: check that AIGW_GITLAB_URL names the GitLab instance".to_string()
            }
            UpstreamError::Handshake(_) => "check the instance's TLS set-up (the line above)".to_string(),
            UpstreamError::InvalidRequest(_) | UpstreamError::Signing(_) | UpstreamError::Tls(_) => {
                "check AIGW_GITLAB_URL".to_string()
            }
        },
    }
}

/// Whether `host` is loopback, read as the connector reads an address.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || literal_address(host).and_then(Result::ok).is_some_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_is_tolerated_on_loopback_only() {
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]"] {
            assert!(super::is_loopback(host), "{host}");
        }
        for host in ["gitlab.example.com", "10.0.0.1", "[fd00::1]", "localhost.example.com"] {
            assert!(!super::is_loopback(host), "{host}");
        }
    }
}
