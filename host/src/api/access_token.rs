//! `POST /v1/code/user_access_token`: a short-lived token, signed with the gateway's own key, that
//! lets an IDE call code completion directly.

use crate::auth::keys::UserAccessClaims;
use crate::auth::{Principal, scopes};
use crate::error::GatewayError;
use crate::response::{Body, json_response};
use serde_json::json;

/// Mint a token for the user named in `X-Gitlab-Global-User-Id`. The route table has checked that
/// the caller is an instance token with a completion scope.
pub(crate) fn handle(
    state: &crate::state::AppState,
    principal: &Principal,
    headers: &http::HeaderMap,
) -> Result<http::Response<Body>, GatewayError> {
    let user = headers
        .get("x-gitlab-global-user-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| GatewayError::Unprocessable("the X-Gitlab-Global-User-Id header is required".into()))?;
    let key = state.config.gateway_keys.first().ok_or_else(|| {
        GatewayError::Unavailable("this gateway has no signing key (AIGW_SELF_SIGNED_JWT__SIGNING_KEY)".into())
    })?;
    // A minted token carries the caller's completion scopes and nothing else.
    let grantable = &scopes::USER_ACCESS_TOKEN.any_of;
    let scopes: Vec<String> =
        grantable.iter().filter(|scope| principal.has_scope(scope)).map(|s| s.to_string()).collect();
    let claims = UserAccessClaims::new(user, principal.realm.clone(), scopes);
    let expires_at = claims.exp;
    let token = key.sign(&claims).map_err(|e| GatewayError::Unavailable(format!("token signing failed: {e}")))?;
    Ok(json_response(http::StatusCode::OK, json!({"token": token, "expires_at": expires_at}).to_string().into()))
}
