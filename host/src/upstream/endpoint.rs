//! What a model endpoint URL may be: http(s), a host, a usable port, no credentials, query or
//! fragment. Both GitLab's per-request endpoints and the operator's named models are read here.

/// The most characters an endpoint may have (GitLab's limit).
pub(crate) const MAX_LENGTH: usize = 255;

/// `text` as an endpoint without its trailing `/`, or why it is not usable (a phrase that
/// follows "is not usable: ").
pub(crate) fn parse(text: &str) -> Result<http::Uri, String> {
    if text.chars().count() > MAX_LENGTH {
        return Err(format!("longer than {MAX_LENGTH} characters"));
    }
    let trimmed = text.trim_end_matches('/');
    let uri: http::Uri = trimmed.parse().map_err(|_| "not a URL".to_string())?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the scheme must be http or https".into()),
    }
    let authority = uri.authority().ok_or("no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not accepted; use the API key field".into());
    }
    if authority.host().contains('%') {
        return Err("an IPv6 zone id (%) is not accepted; use an address without one".into());
    }
    // `http::Uri` keeps a port it cannot read, and then a connection would silently go to the
    // scheme's default port instead.
    let written_port = authority.as_str().rsplit_once(':').filter(|(_, port)| !port.ends_with(']'));
    if let Some((_, port)) = written_port
        && !port.parse::<u16>().is_ok_and(|port| port > 0)
    {
        return Err("the port must be a number from 1 to 65535".into());
    }
    if uri.query().is_some() || trimmed.contains('#') {
        return Err("a query or fragment is not accepted".into());
    }
    Ok(uri)
}
