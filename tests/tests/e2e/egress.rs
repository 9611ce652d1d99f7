//! Egress policy: model endpoints outside the allowlist are refused before any connection.

use aigw_tests::Setup;
use serde_json::json;

#[tokio::test]
async fn endpoint_outside_the_allowlist_is_refused_without_connecting() {
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "10.0.0.0/8").start().await;
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    let detail = answer.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("127.0.0.1") && detail.contains("AIGW_EGRESS__ALLOW"), "{detail}");
    assert_eq!(t.model.connections(), 0, "no connection reached the model server");
}

#[tokio::test]
async fn host_names_are_checked_on_the_resolved_address() {
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "10.0.0.0/8").start().await;
    let mut body = t.completion_body("codestral", None, false);
    body["model_endpoint"] = json!(format!("http://localhost:{}/v1", t.model.addr().port()));
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(t.model.connections(), 0);
}

#[tokio::test]
async fn endpoint_inside_the_allowlist_is_reached() {
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "127.0.0.1/32").start().await;
    assert_eq!(t.complete(&t.completion_body("codestral", None, false)).await.status, 200);
    assert_eq!(t.model.connections(), 1);
}

#[tokio::test]
async fn metadata_and_unspecified_addresses_are_refused_even_when_allowed() {
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "0.0.0.0/0,::/0").start().await;
    for endpoint in [
        "http://169.254.169.254/latest",
        "http://[::ffff:169.254.169.254]/v1",
        "http://[fd00:ec2::254]/v1",
        "http://0.0.0.0:1/v1",
    ] {
        let mut body = t.completion_body("codestral", None, false);
        body["model_endpoint"] = json!(endpoint);
        let answer = t.complete(&body).await;
        assert_eq!(answer.status, 403, "{endpoint}: {}", answer.text());
        assert!(answer.json()["detail"].as_str().unwrap().contains("always refused"), "{endpoint}");
    }
}
