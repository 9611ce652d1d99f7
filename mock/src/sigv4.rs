//! Checks the AWS Signature Version 4 on requests to the mock Bedrock: the credential scope must
//! name the mock's key and the `bedrock` service, and recomputing the signature over the request
//! exactly as received (method, path, signed headers, body) with the mock's secret must give the
//! same `Authorization` header. A request altered after signing, or signed with another secret,
//! fails as it would at AWS.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use std::time::{Duration, SystemTime};

/// The access key id the mock Bedrock accepts.
pub const ACCESS_KEY_ID: &str = "AKIAMOCKBEDROCK00001";
/// The secret the mock Bedrock verifies signatures with.
pub const SECRET_ACCESS_KEY: &str = "mock/bedrock/secret+key/for/loopback/tests";

/// `Ok` when the request carries a valid SigV4 signature for service `bedrock`.
pub fn verify(headers: &http::HeaderMap, uri: &http::Uri, body: &[u8]) -> Result<(), String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = text("authorization").ok_or("Missing Authentication Token")?;
    let rest = authorization.strip_prefix("AWS4-HMAC-SHA256 Credential=").ok_or("not a SigV4 signature")?;
    let (credential, rest) = rest.split_once(", SignedHeaders=").ok_or("malformed Authorization")?;
    let (signed_headers, _signature) = rest.split_once(", Signature=").ok_or("malformed Authorization")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, _date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(format!("malformed credential scope {credential}"));
    };
    if *key_id != ACCESS_KEY_ID {
        return Err("The security token included in the request is invalid.".into());
    }
    if *service != "bedrock" {
        return Err(format!("Credential should be scoped to correct service: 'bedrock', not {service:?}"));
    }
    let time = parse_amz_date(text("x-amz-date").ok_or("missing X-Amz-Date")?)?;
    let host = text("host").ok_or("missing Host")?;
    let session_token = text("x-amz-security-token").map(str::to_string);
    let identity = Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, session_token, None, "mock").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    // The signer adds host, x-amz-date and the session token itself.
    let mut signed = Vec::new();
    for name in signed_headers.split(';').filter(|n| !matches!(*n, "host" | "x-amz-date" | "x-amz-security-token")) {
        signed.push((name, text(name).ok_or_else(|| format!("signed header {name} is missing"))?));
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("http://{host}{path}");
    let request =
        SignableRequest::new("POST", url, signed.into_iter(), SignableBody::Bytes(body)).map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params).map_err(|e| e.to_string())?.into_parts();
    let (expected_headers, _) = instructions.into_parts();
    let expected = expected_headers.iter().find(|h| h.name() == "authorization").map(|h| h.value().to_string());
    if expected.as_deref() != Some(authorization) {
        return Err("The request signature we calculated does not match the signature you provided.".into());
    }
    Ok(())
}

/// `20261125T181500Z` → a point in time.
fn parse_amz_date(text: &str) -> Result<SystemTime, String> {
    let bad = || format!("malformed X-Amz-Date {text:?}");
    let digits = |range: std::ops::Range<usize>| text.get(range).and_then(|d| d.parse::<i64>().ok()).ok_or_else(bad);
    if text.len() != 16 || &text[8..9] != "T" || !text.ends_with('Z') {
        return Err(bad());
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let seconds = digits(9..11)? * 3600 + digits(11..13)? * 60 + digits(13..15)?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = u64::try_from(days * 86_400 + seconds).map_err(|_| bad())?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_round_trip_known_instants() {
        assert_eq!(parse_amz_date("19700101T000000Z").unwrap(), SystemTime::UNIX_EPOCH);
        let at = parse_amz_date("20261125T181500Z").unwrap();
        assert_eq!(at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_795_630_500);
        assert!(parse_amz_date("2026-11-25").is_err());
    }
}
