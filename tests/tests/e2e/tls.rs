//! HTTPS serving with the operator's certificate: HTTP/1.1 and h2 over TLS, and a bad key file
//! stopping start-up with the file named.

use aigw_tests::Setup;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;

struct Certificate {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn certificate() -> Certificate {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    Certificate { _dir: dir, cert, key, der: generated.cert.der().clone() }
}

fn https_client(
    trusted: &rustls::pki_types::CertificateDer<'static>,
    http2: bool,
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
    let connector = if http2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    Client::builder(TokioExecutor::new()).http2_only(http2).build(connector)
}

#[tokio::test]
async fn serves_http1_and_h2_over_tls() {
    let cert = certificate();
    let t = Setup::default()
        .env("AIGW_FASTAPI__TLS__ENABLED", "true")
        .env("AIGW_FASTAPI__TLS__CERT_FILE", cert.cert.to_str().unwrap())
        .env("AIGW_FASTAPI__TLS__KEY_FILE", cert.key.to_str().unwrap())
        .start()
        .await;
    let port = t.gateway.addr().port();
    for http2 in [false, true] {
        let client = https_client(&cert.der, http2);
        let mut request = http::Request::post(format!("https://localhost:{port}/v2/code/completions"));
        for (name, value) in t.gitlab_headers(&t.token(&["complete_code"])) {
            request = request.header(name, value);
        }
        let body = Bytes::from(t.completion_body("codestral", None, false).to_string());
        let response = client.request(request.body(Full::new(body)).unwrap()).await.unwrap();
        let version = response.version();
        assert_eq!(response.status(), 200);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["choices"][0]["text"], "return a + b");
        assert_eq!(version, if http2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 });
    }
    // Plain HTTP to the TLS port is not served.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        plain.request(
            http::Request::get(format!("http://127.0.0.1:{port}/monitoring/healthz")).body(Full::default()).unwrap(),
        ),
    )
    .await
    .unwrap();
    assert!(refused.is_err() || refused.unwrap().status() != 200);
}

#[tokio::test]
async fn a_key_that_does_not_fit_stops_start_up_naming_the_file() {
    let (cert, other) = (certificate(), certificate());
    let plugins = tempfile::tempdir().unwrap();
    let env = vec![
        ("AIGW_GITLAB_URL".to_string(), "http://127.0.0.1:9".to_string()),
        ("AIGW_FASTAPI__API_PORT".to_string(), "0".to_string()),
        ("AIGW_FASTAPI__API_HOST".to_string(), "127.0.0.1".to_string()),
        ("AIGW_PLUGINS__DIR".to_string(), plugins.path().display().to_string()),
        ("AIGW_FASTAPI__TLS__ENABLED".to_string(), "true".to_string()),
        ("AIGW_FASTAPI__TLS__CERT_FILE".to_string(), cert.cert.display().to_string()),
        ("AIGW_FASTAPI__TLS__KEY_FILE".to_string(), other.key.display().to_string()),
    ];
    let config = aigw::config::Config::load(None, env, false).unwrap();
    let error = aigw::Gateway::start(config, aigw::StartOptions::default()).await.unwrap_err().to_string();
    assert!(error.contains("key.pem") && error.contains("does not fit"), "{error}");
}
