//! Test harness: the gateway in-process on port 0, a mock GitLab instance (OIDC discovery + JWKS
//! with RSA keys generated here), the mock model server, and real tokens minted with those keys.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness: failing loudly is the point")]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use aigw_mock::{MockModelServer, Recorded, Recording, Reply};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A built component: `target/plugins/<name>.wasm` or `target/test-guests/<name>.wasm`.
pub fn component(relative: &str) -> PathBuf {
    let path = workspace().join("target").join(relative);
    assert!(path.is_file(), "{} is missing: run `make test`, which builds the components first", path.display());
    path
}

/// An RSA signing key generated for the test, with its JWK.
#[derive(Clone)]
pub struct TestKey {
    /// Key id.
    pub kid: String,
    /// The private key, PKCS#1 PEM (as operators configure the gateway's own key).
    pub pem: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    /// A fresh 2048-bit key with key id `kid`.
    pub fn generate(kid: &str) -> Self {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap().to_string();
        let public = private.to_public_key();
        let jwk = json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        TestKey { kid: kid.to_string(), pem, encoding: EncodingKey::from_rsa_der(der.as_bytes()), jwk }
    }

    /// The same key material under another key id (a forged or stale `kid`).
    pub fn with_kid(&self, kid: &str) -> Self {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        TestKey { kid: kid.to_string(), pem: self.pem.clone(), encoding: self.encoding.clone(), jwk }
    }

    /// Sign `claims` (RS256, this key's kid).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(Header::new(Algorithm::RS256), claims)
    }

    /// Sign `claims` with this key under `header` (its kid set to this key's).
    pub fn sign_with_header(&self, mut header: Header, claims: &Value) -> String {
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// This key's public JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }
}

/// Unix time now, seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The instance id used in tokens and headers.
pub const INSTANCE_ID: &str = "8c5f6d0e-2a7b-4c1d-9e3f-5a6b7c8d9e0f";

/// Claims shaped like those a GitLab instance puts in the tokens it sends to its AI gateway.
pub fn instance_claims(issuer: &str, scopes: &[&str]) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "aud": ["gitlab-ai-gateway"],
        "sub": INSTANCE_ID,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "jti": format!("jti-{}", rand::random::<u64>()),
        "gitlab_realm": "self-managed",
        "gitlab_instance_id": INSTANCE_ID,
        "scopes": scopes,
    })
}

#[derive(Default)]
struct GitLabState {
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
    down: AtomicBool,
    url: Mutex<String>,
    /// `jwks_uri` in discovery when set; else the instance's own key path.
    jwks_uri: Mutex<Option<String>>,
}

/// A mock GitLab instance: OIDC discovery and the JWKS endpoint.
pub struct MockGitLab {
    state: Arc<GitLabState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockGitLab {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockGitLab {
    /// Start on loopback, publishing `keys`.
    pub async fn start(keys: &[&TestKey]) -> Self {
        Self::serve(keys, None).await
    }

    /// Start on loopback over HTTPS, with a certificate for 127.0.0.1 that nothing trusts unless
    /// told to; returns it too, as PEM.
    pub async fn start_tls(keys: &[&TestKey]) -> (Self, String) {
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![generated.cert.der().clone()], key)
            .unwrap();
        let gitlab = Self::serve(keys, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
        (gitlab, generated.cert.pem())
    }

    async fn serve(keys: &[&TestKey], tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(GitLabState::default());
        let scheme = if tls.is_some() { "https" } else { "http" };
        *state.url.lock().unwrap() = format!("{scheme}://{addr}");
        *state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk().clone()).collect();
        let task_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, tls) = (Arc::clone(&task_state), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        // A client that refuses the certificate ends the handshake: nothing to serve.
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_gitlab(TokioIo::new(stream), state).await;
                            }
                        }
                        None => serve_gitlab(TokioIo::new(stream), state).await,
                    }
                });
            }
        });
        MockGitLab { state, task }
    }

    /// `http://127.0.0.1:<port>` (`https://` when started with TLS): the instance URL (and token
    /// issuer).
    pub fn url(&self) -> String {
        self.state.url.lock().unwrap().clone()
    }

    /// Replace the published keys (key rotation).
    pub fn publish(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk().clone()).collect();
    }

    /// Publish these JWK documents as they are (keys aigw cannot use, say).
    pub fn publish_documents(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    /// Name `uri` as `jwks_uri` in discovery (a key set elsewhere).
    pub fn set_jwks_uri(&self, uri: &str) {
        *self.state.jwks_uri.lock().unwrap() = Some(uri.to_string());
    }

    /// The URL of this instance's own key set.
    pub fn jwks_url(&self) -> String {
        format!("{}/oauth/discovery/keys", self.url())
    }

    /// Make the instance answer 503 to everything (or recover).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How often the JWKS document was served.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn serve_gitlab<S>(io: TokioIo<S>, state: Arc<GitLabState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(gitlab_answer(&state, &request)) }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}

fn gitlab_answer(state: &GitLabState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let json_answer = |status: StatusCode, value: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(value.to_string())))
            .unwrap()
    };
    if state.down.load(Ordering::SeqCst) {
        return json_answer(StatusCode::SERVICE_UNAVAILABLE, json!({"message": "down for maintenance"}));
    }
    let url = state.url.lock().unwrap().clone();
    let jwks_uri = state.jwks_uri.lock().unwrap().clone().unwrap_or_else(|| format!("{url}/oauth/discovery/keys"));
    match request.uri().path() {
        "/.well-known/openid-configuration" => json_answer(
            StatusCode::OK,
            json!({"issuer": url, "jwks_uri": jwks_uri,
                   "id_token_signing_alg_values_supported": ["RS256"]}),
        ),
        "/oauth/discovery/keys" => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            json_answer(StatusCode::OK, json!({"keys": *state.keys.lock().unwrap()}))
        }
        _ => json_answer(StatusCode::NOT_FOUND, json!({"message": "404 Not Found"})),
    }
}

/// A plain HTTP/1 client for loopback servers.
pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Any request to `url`, its body kept as far as it came; the answer and its body must each come
/// within 30 s.
pub async fn http_request(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let response =
        tokio::time::timeout(Duration::from_secs(30), client.request(builder.body(Full::new(body)).unwrap()))
            .await
            .expect("the server answered within 30 s")
            .unwrap();
    let (parts, mut body) = response.into_parts();
    let mut received = bytes::BytesMut::new();
    let mut body_error = None;
    let reading = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received.extend_from_slice(frame.data_ref().map_or(&b""[..], |d| &d[..])),
                Err(error) => {
                    body_error = Some(error.to_string());
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading).await.expect("the body ended within 30 s");
    Answer { status: parts.status, headers: parts.headers, body: received.freeze(), body_error }
}

/// `GET {base}/monitoring/ready`'s status, or `None` while nothing answers (not listening yet,
/// or not within 2 s).
pub async fn ready_status(client: &Client<HttpConnector, Full<Bytes>>, base: &str) -> Option<StatusCode> {
    let request = Request::get(format!("{base}/monitoring/ready")).body(Full::new(Bytes::new())).ok()?;
    let answer = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await.ok()?.ok()?;
    Some(answer.status())
}

/// The value of `series` (its name with labels, as written) in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A loopback port nothing listens on (free when asked; the OS may hand it out again later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The headers a GitLab instance sends with `token`.
pub fn gitlab_headers(token: &str) -> Vec<(String, String)> {
    vec![
        ("authorization".into(), format!("Bearer {token}")),
        ("x-gitlab-authentication-type".into(), "oidc".into()),
        ("x-gitlab-instance-id".into(), INSTANCE_ID.into()),
        ("x-gitlab-realm".into(), "self-managed".into()),
        ("x-gitlab-global-user-id".into(), "user-42".into()),
        ("x-gitlab-host-name".into(), "gitlab.example.com".into()),
        ("x-gitlab-version".into(), "18.5.0".into()),
        ("x-request-id".into(), "req-1".into()),
        ("content-type".into(), "application/json".into()),
    ]
}

/// `component`'s bytes with a custom section named `marker` appended: the same code under a new
/// digest, which a plugins directory picks up as a new build of the plugin.
pub fn with_new_digest(component: &[u8], marker: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    leb128(marker.len() as u64, &mut payload);
    payload.extend_from_slice(marker.as_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section
    leb128(payload.len() as u64, &mut bytes);
    bytes.extend_from_slice(&payload);
    bytes
}

fn leb128(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// An HTTP answer as a test sees it.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes (those received before an error, if the body broke).
    pub body: Bytes,
    /// Why the body broke off, when it did (an aborted stream).
    pub body_error: Option<String>,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as NDJSON events (one JSON object per line).
    pub fn ndjson(&self) -> Vec<Value> {
        self.text().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Everything a scenario needs: GitLab, model server, gateway, a key, a client.
pub struct TestGateway {
    /// The gateway under test.
    pub gateway: aigw::Gateway,
    /// The mock GitLab instance.
    pub gitlab: MockGitLab,
    /// The mock model server.
    pub model: MockModelServer,
    /// The key GitLab signs with.
    pub key: TestKey,
    /// The plugins directory.
    pub plugins: tempfile::TempDir,
    /// The directory of the models file, when the setup wrote one (`models.toml`).
    pub models_dir: Option<tempfile::TempDir>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Writes a models file's text for the mock model server of a test.
pub type ModelsFile = Box<dyn FnOnce(&MockModelServer) -> String + Send>;

/// Builder for [`TestGateway`].
pub struct Setup {
    env: Vec<(String, String)>,
    plugin_files: Vec<(PathBuf, String)>,
    gitlab_down: bool,
    models: Option<ModelsFile>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            env: Vec::new(),
            plugin_files: vec![(component("plugins/openai-compatible.wasm"), "openai-compatible.wasm".into())],
            gitlab_down: false,
            models: None,
        }
    }
}

impl Setup {
    /// Set an `AIGW_*` variable for the gateway.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Also put `component` into the plugins directory as `file_name`.
    pub fn plugin(mut self, component: PathBuf, file_name: &str) -> Self {
        self.plugin_files.push((component, file_name.to_string()));
        self
    }

    /// Start with a models file (`AIGW_MODELS__FILE`) whose text `write` makes for the mock
    /// model server.
    pub fn models(mut self, write: impl FnOnce(&MockModelServer) -> String + Send + 'static) -> Self {
        self.models = Some(Box::new(write));
        self
    }

    /// Start with the GitLab instance answering 503 to everything.
    pub fn gitlab_down(mut self) -> Self {
        self.gitlab_down = true;
        self
    }

    /// Start everything.
    pub async fn start(self) -> TestGateway {
        let key = TestKey::generate("gitlab-key-1");
        let gitlab = MockGitLab::start(&[&key]).await;
        gitlab.set_down(self.gitlab_down);
        let model = MockModelServer::start().await.unwrap();
        let plugins = tempfile::tempdir().unwrap();
        for (source, name) in &self.plugin_files {
            std::fs::copy(source, plugins.path().join(name)).unwrap();
        }
        let mut env = vec![
            ("AIGW_GITLAB_URL".to_string(), gitlab.url()),
            ("AIGW_FASTAPI__API_HOST".to_string(), "127.0.0.1".to_string()),
            ("AIGW_FASTAPI__API_PORT".to_string(), "0".to_string()),
            ("AIGW_PLUGINS__DIR".to_string(), plugins.path().display().to_string()),
            ("AIGW_PLUGINS__RELOAD_DEBOUNCE_MS".to_string(), "100".to_string()),
            ("AIGW_AUTH__JWKS_MIN_REFRESH_MS".to_string(), "0".to_string()),
        ];
        let models_dir = self.models.map(|write| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("models.toml");
            std::fs::write(&file, write(&model)).unwrap();
            env.push(("AIGW_MODELS__FILE".to_string(), file.display().to_string()));
            dir
        });
        env.extend(self.env);
        let config = aigw::config::Config::load(None, env, false).unwrap();
        let gateway = aigw::Gateway::start(config, aigw::StartOptions::default()).await.unwrap();
        let client = http_client();
        TestGateway { gateway, gitlab, model, key, plugins, models_dir, client }
    }
}

impl TestGateway {
    /// Start with the defaults: the openai-compatible plugin, loopback egress.
    pub async fn start() -> Self {
        Setup::default().start().await
    }

    /// A token for this instance with `scopes`.
    pub fn token(&self, scopes: &[&str]) -> String {
        self.key.sign(&instance_claims(&self.gitlab.url(), scopes))
    }

    /// The body GitLab's "Test connection" button sends (`/v*/prompts/model_configuration%2Fcheck`),
    /// naming this gateway's mock model server with the key `sk-check`.
    pub fn test_connection_body(&self, stream: bool) -> Value {
        json!({
            "stream": stream,
            "inputs": {},
            "model_metadata": {"provider": "openai", "name": "mistral", "endpoint": self.model.base_url(),
                               "api_key": "sk-check", "identifier": "custom_openai/mistral-small"},
        })
    }

    /// The headers a GitLab instance sends with `token`.
    pub fn gitlab_headers(&self, token: &str) -> Vec<(String, String)> {
        gitlab_headers(token)
    }

    /// POST `body` to `path` with `headers`.
    pub async fn post(&self, path: &str, headers: &[(String, String)], body: &Value) -> Answer {
        self.request(Method::POST, path, headers, Bytes::from(body.to_string())).await
    }

    /// POST a completion request as the instance does, with a valid `complete_code` token.
    pub async fn complete(&self, body: &Value) -> Answer {
        let headers = self.gitlab_headers(&self.token(&["complete_code"]));
        self.post("/v2/code/completions", &headers, body).await
    }

    /// Any request; a body that breaks off fails the test.
    pub async fn request(&self, method: Method, path: &str, headers: &[(String, String)], body: Bytes) -> Answer {
        let answer = self.request_allowing_abort(method, path, headers, body).await;
        if let Some(error) = &answer.body_error {
            panic!("body failed: {error}");
        }
        answer
    }

    /// A completion request whose answer's body may break off ([`Answer::body_error`] says).
    pub async fn complete_allowing_abort(&self, body: &Value) -> Answer {
        let headers = self.gitlab_headers(&self.token(&["complete_code"]));
        self.request_allowing_abort(Method::POST, "/v2/code/completions", &headers, Bytes::from(body.to_string())).await
    }

    /// Any request, its body kept as far as it came.
    pub async fn request_allowing_abort(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Answer {
        http_request(&self.client, method, &format!("http://{}{path}", self.gateway.addr()), headers, body).await
    }

    /// A code completion body as GitLab sends it, for `family` at this test's model server.
    pub fn completion_body(&self, family: &str, identifier: Option<&str>, stream: bool) -> Value {
        let mut body = json!({
            "current_file": {
                "file_name": "src/calc.py",
                "language_identifier": "python",
                "content_above_cursor": "def add(a, b):\n    ",
                "content_below_cursor": "\n\nprint(add(1, 2))\n",
            },
            "prompt_version": 1,
            "project_path": "group/project",
            "project_id": 7,
            "model_provider": "litellm",
            "model_name": family,
            "model_endpoint": self.model.base_url(),
            "model_api_key": "sk-test-key",
            "stream": stream,
            "choices_count": 0,
            "context": [],
            "telemetry": [],
        });
        if let Some(identifier) = identifier {
            body["model_identifier"] = json!(identifier);
        }
        body
    }

    /// Wait until `condition` holds on the plugin registry (hot reload is asynchronous).
    pub async fn wait_for_plugins(&self, what: &str, condition: impl Fn(&aigw::plugins::Snapshot) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !condition(&self.gateway.plugins().snapshot()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The text of an agent stream's `final_answer_delta` events, joined.
pub fn final_answer(events: &[Value]) -> String {
    events.iter().filter(|e| e["type"] == "final_answer_delta").map(|e| e["data"]["text"].as_str().unwrap()).collect()
}

/// Write `bytes` to `path` the safe way (hidden temporary file, then rename).
pub fn deploy(path: &Path, bytes: &[u8]) {
    let name = path.file_name().unwrap().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A `/v2/chat/agent` body as the instance sends it: one user question, a self-hosted
/// OpenAI-compatible model at `endpoint`.
pub fn agent_body(endpoint: &str) -> Value {
    json!({"messages": [{"role": "user", "content": "How do I find the bad commit?"}],
           "model_metadata": {"provider": "openai", "name": "mistral", "endpoint": endpoint,
                              "api_key": "k", "identifier": "custom_openai/mistral-7b"}})
}
