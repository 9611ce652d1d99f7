//! The pooled HTTP client: sends what a plugin built to the model endpoint, with the credential
//! injected (or the request signed) here, under the egress policy and the four timeouts.

use super::UpstreamSettings;
use super::aws::AwsEnvironment;
use super::connector::{ConnectError, EgressConnector};
use super::{EgressPolicy, TimeoutPhase, UpstreamError};
use crate::plugins::wit;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What OpenAI-compatible servers get as bearer token when the operator configured no key; they
/// ignore it, but many reject a request without one. The value GitLab's gateway sends
/// (`ModelMetadata.to_params`; its older code paths sent `stubbed-api-key`).
pub(crate) const PLACEHOLDER_API_KEY: &str = "dummy_key";

/// Largest complete (non-streamed) answer read from a model server, bytes.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Headers a plugin may not set: framing and hop-by-hop headers belong to the HTTP layer, and
/// credentials only ever come from the host.
const RESERVED_HEADERS: [&str; 13] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "authorization",
    "api-key",
    "x-api-key",
    "cookie",
];

/// Most headers a plugin may add to one request.
pub(crate) const MAX_PLUGIN_HEADERS: usize = 32;

/// Most bytes (names and values together) of the headers a plugin adds to one request.
pub(crate) const MAX_PLUGIN_HEADER_BYTES: usize = 8 * 1024;

type HttpsConnector = hyper_rustls::HttpsConnector<EgressConnector>;

/// One model call: where to, what, and with which key.
#[derive(Debug)]
pub(crate) struct ModelCall<'a> {
    /// The model endpoint, already validated (http/https, no trailing `/`).
    pub(crate) endpoint: &'a http::Uri,
    /// What the plugin built.
    pub(crate) request: wit::UpstreamRequest,
    /// The operator's key for this model; empty when none was configured.
    pub(crate) api_key: &'a str,
    /// Replaces the configured total timeout for this call (chat uses its own).
    pub(crate) total_timeout: Option<Duration>,
    /// Make the call once, whatever the retry policy: the caller fails over to another server
    /// instead.
    pub(crate) single_attempt: bool,
}

/// The gateway's outbound HTTP client.
#[derive(Clone)]
pub(crate) struct Upstream {
    client: Client<HttpsConnector, Full<Bytes>>,
    settings: UpstreamSettings,
    aws: Arc<AwsEnvironment>,
    /// What a client with its own pool needs (see [`Upstream::with_own_pool`]).
    policy: Arc<EgressPolicy>,
    tls: rustls::ClientConfig,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client whose connections obey `policy`.
    pub(crate) fn new(
        policy: Arc<EgressPolicy>,
        settings: UpstreamSettings,
        aws: AwsEnvironment,
    ) -> Result<Self, UpstreamError> {
        let tls = tls_config()?;
        let client = pooled_client(policy.clone(), settings, tls.clone());
        Ok(Upstream { client, settings, aws: Arc::new(aws), policy, tls })
    }

    /// The same client with a connection pool of its own (one per serving thread), without
    /// reading the system's trust store again.
    pub(crate) fn with_own_pool(&self) -> Self {
        Upstream { client: pooled_client(self.policy.clone(), self.settings, self.tls.clone()), ..self.clone() }
    }

    /// The AWS environment requests are signed with.
    pub(crate) fn aws(&self) -> &AwsEnvironment {
        &self.aws
    }

    /// Send a model call and wait for the response head. Error statuses become
    /// [`UpstreamError::Status`]; redirects are never followed (a 3xx is an error status too). A
    /// passing failure before the answer began is retried as the retry policy says, inside the
    /// call's one total deadline; `retrying` hears of each retry before its wait.
    pub(crate) async fn send(
        &self,
        call: ModelCall<'_>,
        retrying: &mut (dyn FnMut(&UpstreamError) + Send),
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut settings = self.settings;
        if let Some(total) = call.total_timeout {
            settings.total_timeout = total;
        }
        if call.single_attempt {
            settings.retry.retries = 0;
        }
        let deadline = Instant::now() + settings.total_timeout;
        let secret = call.api_key;
        let request = build_http_request(call, &self.aws)?;
        let (parts, body) = request.into_parts();
        let copy = || {
            let mut request = http::Request::new(body.clone());
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.headers_mut() = parts.headers.clone();
            request
        };
        let mut attempt = 1;
        loop {
            // (A pooled connection the server closed before the request went out is retried by
            // the pool itself, at once; what reaches this point is a failed call.)
            let error = match self.execute(copy(), settings, deadline, secret).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            let Some(wait) = settings.retry.backoff(&error, attempt, rand::random()) else {
                return Err(error);
            };
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tracing::debug!(reason = error.reason(), attempt, wait_ms = wait.as_millis(), "retrying the model call");
            retrying(&error);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// GET a JSON document from an operator-configured URL (OIDC discovery, JWKS).
    pub(crate) async fn get_json(&self, url: &str, max_bytes: usize) -> Result<serde_json::Value, UpstreamError> {
        let request = http::Request::get(url)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| UpstreamError::InvalidRequest(format!("{url}: {e}")))?;
        let deadline = Instant::now() + self.settings.total_timeout;
        let response = self.execute(request, self.settings, deadline, "").await?;
        let body = response.collect(max_bytes).await?;
        serde_json::from_slice(&body).map_err(|e| UpstreamError::Body(format!("{url}: not JSON: {e}")))
    }

    /// GET `url` within `timeout` and read at most `max_bytes` of a 2xx answer (a pool member's
    /// metrics or health endpoint).
    pub(crate) async fn get_bytes(
        &self,
        url: http::Uri,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Bytes, UpstreamError> {
        let request = http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| UpstreamError::InvalidRequest(e.to_string()))?;
        let mut settings = self.settings;
        settings.total_timeout = timeout;
        settings.first_byte_timeout = settings.first_byte_timeout.min(timeout);
        let deadline = Instant::now() + timeout;
        self.execute(request, settings, deadline, "").await?.collect(max_bytes).await
    }

    /// Whether the egress policy lets the gateway connect to `address`.
    pub(crate) fn egress_allows(&self, address: std::net::IpAddr) -> bool {
        self.policy.check(address).is_ok()
    }

    /// `secret`: the request's key, kept out of the error excerpt.
    /// `deadline`: the whole call's, retries included.
    async fn execute(
        &self,
        request: http::Request<Full<Bytes>>,
        settings: UpstreamSettings,
        deadline: Instant,
        secret: &str,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let first_byte_deadline = (Instant::now() + settings.first_byte_timeout).min(deadline);
        let response = match tokio::time::timeout_at(first_byte_deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(classify_client_error(&error)),
            Err(_) if first_byte_deadline == deadline => {
                return Err(UpstreamError::Timeout { phase: TimeoutPhase::Total, after: settings.total_timeout });
            }
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    phase: TimeoutPhase::FirstByte,
                    after: settings.first_byte_timeout,
                });
            }
        };
        let (parts, body) = response.into_parts();
        let mut response = UpstreamResponse { body, deadline, settings, held: None, early: None };
        if !parts.status.is_success() {
            let retry_after = parts.headers.get(header::RETRY_AFTER).cloned();
            let excerpt = response.error_excerpt(secret).await;
            return Err(UpstreamError::Status { status: parts.status, retry_after, excerpt });
        }
        Ok(response)
    }
}

fn pooled_client(
    policy: Arc<EgressPolicy>,
    settings: UpstreamSettings,
    tls: rustls::ClientConfig,
) -> Client<HttpsConnector, Full<Bytes>> {
    let connector = EgressConnector { policy, connect_timeout: settings.connect_timeout };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(https)
}

/// TLS to model servers and the GitLab instance: the system's trust store, TLS 1.2+.
fn tls_config() -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "could not load a system CA certificate");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!("no system CA certificates found: https endpoints will fail verification");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn classify_client_error(error: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(tls) = tls_error(current) {
            return UpstreamError::Handshake(tls.to_string());
        }
        if let Some(connect) = current.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Refused(refused) => UpstreamError::Refused(refused.clone()),
                ConnectError::Timeout(after) => UpstreamError::Timeout { phase: TimeoutPhase::Connect, after: *after },
                other => UpstreamError::Connect(other.to_string()),
            };
        }
        source = current.source();
    }
    // The client's own text ("client error (Connect)") says less than the error it wraps.
    let source = std::error::Error::source(error).map(ToString::to_string);
    UpstreamError::Connect(source.unwrap_or_else(|| error.to_string()))
}

/// The TLS handshake's error, which arrives wrapped in `io::Error`s (whose own `source()` skips
/// what they wrap).
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = error;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = current.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// Join the endpoint and the plugin's path, copy the plugin's headers (minus reserved ones) and
/// inject the credential where the plugin said, or sign the finished request.
fn build_http_request(call: ModelCall<'_>, aws: &AwsEnvironment) -> Result<http::Request<Full<Bytes>>, UpstreamError> {
    let wit::UpstreamRequest { method, path, headers, body, credential } = call.request;
    if !path.starts_with('/') || path.starts_with("//") || path.contains(['\r', '\n', ' ', '#', '\\']) {
        return Err(UpstreamError::InvalidRequest(format!("plugin built an unusable path {path:?}")));
    }
    // `Uri`'s Display adds a `/` to a bare authority, so the base is rebuilt from its parts.
    let endpoint = call.endpoint;
    let base_path = endpoint.path().trim_end_matches('/');
    let authority = endpoint.authority().map(|a| a.as_str()).unwrap_or_default();
    let uri: http::Uri = format!("{}://{authority}{base_path}{path}", endpoint.scheme_str().unwrap_or("http"))
        .parse()
        .map_err(|e| UpstreamError::InvalidRequest(format!("plugin path {path:?}: {e}")))?;
    if uri.authority() != call.endpoint.authority() || uri.scheme() != call.endpoint.scheme() {
        return Err(UpstreamError::InvalidRequest(format!("plugin path {path:?} leaves the model endpoint")));
    }
    let method = match method {
        wit::Method::Get => http::Method::GET,
        wit::Method::Post => http::Method::POST,
    };
    let header_bytes: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if headers.len() > MAX_PLUGIN_HEADERS || header_bytes > MAX_PLUGIN_HEADER_BYTES {
        return Err(UpstreamError::InvalidRequest(format!(
            "plugin set {} headers of {header_bytes} bytes; at most {MAX_PLUGIN_HEADERS} and {MAX_PLUGIN_HEADER_BYTES} bytes are allowed",
            headers.len()
        )));
    }
    let mut builder = http::Request::builder().method(method).uri(uri);
    let mut has_content_type = false;
    for wit::Header { name, value } in headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| UpstreamError::InvalidRequest(format!("plugin header name {name:?} is invalid")))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            tracing::debug!(header = %name, "dropping a reserved header set by the plugin");
            continue;
        }
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|_| UpstreamError::InvalidRequest(format!("plugin header {name} has an invalid value")))?;
        has_content_type |= name == header::CONTENT_TYPE;
        builder = builder.header(name, value);
    }
    if !has_content_type {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let body = Bytes::from(body);
    builder = match &credential {
        wit::Credential::None | wit::Credential::AwsSigv4(_) => builder,
        wit::Credential::Bearer => {
            let key = if call.api_key.is_empty() { PLACEHOLDER_API_KEY } else { call.api_key };
            builder.header(header::AUTHORIZATION, secret_value(&format!("Bearer {key}"))?)
        }
        wit::Credential::Header(name) => {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| UpstreamError::InvalidRequest(format!("credential header name {name:?} is invalid")))?;
            builder.header(name, secret_value(call.api_key)?)
        }
    };
    let mut request =
        builder.body(Full::new(body.clone())).map_err(|e| UpstreamError::InvalidRequest(e.to_string()))?;
    if let wit::Credential::AwsSigv4(service) = credential {
        // Signed last, over the final method, URI, headers and body.
        aws.sign(&service, &mut request, &body, std::time::SystemTime::now())?;
    }
    Ok(request)
}

/// A header value marked sensitive (never printed by `Debug`), without echoing the key on error.
fn secret_value(text: &str) -> Result<HeaderValue, UpstreamError> {
    let mut value = HeaderValue::try_from(text).map_err(|_| {
        UpstreamError::InvalidRequest("the model API key contains characters not allowed in a header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Bytes of a model server's error answer kept for the log.
const ERROR_EXCERPT_BYTES: usize = 300;

/// `head` of an error body as one log-safe line: `secret` cut out, control characters replaced
/// by spaces, at most [`ERROR_EXCERPT_BYTES`] (an ellipsis marks a cut).
fn log_excerpt(head: &[u8], secret: &str) -> String {
    let mut text = String::from_utf8_lossy(head).into_owned();
    if secret.len() >= 4 {
        text = text.replace(secret, "<redacted>");
    }
    let mut excerpt: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    excerpt = excerpt.trim().to_string();
    if excerpt.len() > ERROR_EXCERPT_BYTES {
        let mut cut = ERROR_EXCERPT_BYTES;
        while !excerpt.is_char_boundary(cut) {
            cut -= 1;
        }
        excerpt.truncate(cut);
        excerpt.push('…');
    }
    excerpt
}

/// A successful response whose body is read under the idle and total timeouts.
#[derive(Debug)]
pub(crate) struct UpstreamResponse {
    body: hyper::body::Incoming,
    deadline: Instant,
    settings: UpstreamSettings,
    /// Kept until the answer is read or dropped (a pool member's place).
    held: Option<Box<dyn std::fmt::Debug + Send + Sync>>,
    /// The first chunk, read ahead by [`UpstreamResponse::await_first_bytes`].
    early: Option<Bytes>,
}

impl UpstreamResponse {
    /// Keep `guard` for as long as the answer is being read.
    pub(crate) fn hold(&mut self, guard: Box<dyn std::fmt::Debug + Send + Sync>) {
        self.held = Some(guard);
    }

    /// The call's total deadline, and the error it ends the call with once passed.
    pub(crate) fn deadline(&self) -> (Instant, UpstreamError) {
        (self.deadline, UpstreamError::Timeout { phase: TimeoutPhase::Total, after: self.settings.total_timeout })
    }

    /// Wait for the answer's first bytes, which the next [`UpstreamResponse::next_chunk`] then
    /// returns. A model server sends a stream's head before its prefill (vLLM does): until the
    /// first bytes come, nothing has been answered, and a connection that breaks meanwhile
    /// failed as one that broke before the head did.
    pub(crate) async fn await_first_bytes(&mut self) -> Result<(), UpstreamError> {
        if self.early.is_none() {
            self.early = self.next_chunk().await?;
        }
        Ok(())
    }

    /// The next body chunk, `None` at the end. Dropping the response cancels the upstream request.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        if let Some(early) = self.early.take() {
            return Ok(Some(early));
        }
        let now = Instant::now();
        // Past the deadline nothing more is read, even what has already arrived: a caller that
        // reads slowly cannot stretch a call beyond its total time.
        if now >= self.deadline {
            return Err(UpstreamError::Timeout { phase: TimeoutPhase::Total, after: self.settings.total_timeout });
        }
        let idle_deadline = now + self.settings.idle_timeout;
        let (limit, phase, after) = if idle_deadline < self.deadline {
            (idle_deadline, TimeoutPhase::Idle, self.settings.idle_timeout)
        } else {
            (self.deadline, TimeoutPhase::Total, self.settings.total_timeout)
        };
        loop {
            let frame = match tokio::time::timeout_at(limit, self.body.frame()).await {
                Err(_) => return Err(UpstreamError::Timeout { phase, after }),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(UpstreamError::Connect(format!("answer interrupted: {e}")));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Ok(Some(data));
            }
        }
    }

    /// The start of an error answer's body for the log: at most [`ERROR_EXCERPT_BYTES`], read
    /// for at most a second, control characters replaced by spaces, `secret` (the request's key)
    /// cut out wherever it appears.
    async fn error_excerpt(&mut self, secret: &str) -> String {
        let mut head = Vec::new();
        let reading = async {
            // A key that starts inside the excerpt is read whole, so that it is cut out whole.
            while head.len() < ERROR_EXCERPT_BYTES + secret.len()
                && let Ok(Some(chunk)) = self.next_chunk().await
            {
                head.extend_from_slice(&chunk);
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reading).await;
        log_excerpt(&head, secret)
    }

    /// Read the whole body, up to `max_bytes`.
    pub(crate) async fn collect(mut self, max_bytes: usize) -> Result<Bytes, UpstreamError> {
        let mut collected = bytes::BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            if collected.len() + chunk.len() > max_bytes {
                return Err(UpstreamError::Body(format!("answer larger than {max_bytes} bytes")));
            }
            collected.extend_from_slice(&chunk);
        }
        Ok(collected.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_excerpts_are_one_bounded_line_without_the_key() {
        let key = "sk-live-0123456789";
        assert_eq!(
            log_excerpt(b"  bad key sk-live-0123456789\r\n\x1b[31mred\tend \n", key),
            "bad key <redacted>   [31mred end"
        );
        let long = format!("{}{key}{}", "é".repeat(140), "z".repeat(500));
        let excerpt = log_excerpt(long.as_bytes(), key);
        assert!(excerpt.len() <= ERROR_EXCERPT_BYTES + '…'.len_utf8() && excerpt.ends_with('…'), "{excerpt}");
        assert!(excerpt.contains("<redacted>") && !excerpt.contains("sk-live"), "{excerpt}");
        assert_eq!(log_excerpt(b"short", ""), "short", "no key, nothing to cut");
    }
}
