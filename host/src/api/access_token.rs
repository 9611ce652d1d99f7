//! `POST /v1/code/user_access_token`: a short-lived token, signed with the gateway's own key, that
//! lets an IDE call code completion directly.

use crate::auth::keys::UserAccessClaims;
use crate::auth::{AuthError, Principal};
use crate::error::GatewayError;
use crate::server::{Body, json_response};
use serde_json::json;

/// Scopes a user access token may carry: code completion only.
const GRANTABLE: [&str; 2] = ["complete_code", "code_suggestions"];

/// Mint a token for the user named in `X-Gitlab-Global-User-Id`.
pub fn handle(
    state: &super::AppState,
    principal: &Principal,
    headers: &http::HeaderMap,
) -> Result<http::Response<Body>, GatewayError> {
    // A gateway-issued token cannot mint another one; the caller must hold a completion scope.
    if principal.gateway_issued || !principal.has_any_scope(&GRANTABLE) {
        return Err(AuthError::MissingScope("user access token").into());
    }
    let user = headers
        .get("x-gitlab-global-user-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| GatewayError::Unprocessable("the X-Gitlab-Global-User-Id header is required".into()))?;
    let key = state.config.gateway_keys.first().ok_or_else(|| {
        GatewayError::Unavailable("this gateway has no signing key (AIGW_SELF_SIGNED_JWT__SIGNING_KEY)".into())
    })?;
    let scopes: Vec<String> =
        GRANTABLE.iter().filter(|scope| principal.has_scope(scope)).map(|s| s.to_string()).collect();
    let claims = UserAccessClaims::new(user, principal.realm.clone(), scopes);
    let expires_at = claims.exp;
    let token = key.sign(&claims).map_err(|e| GatewayError::Unavailable(format!("token signing failed: {e}")))?;
    Ok(json_response(http::StatusCode::OK, json!({"token": token, "expires_at": expires_at}).to_string().into()))
}
