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

#[tokio::test]
async fn numeric_spellings_of_addresses_are_read_as_the_address_they_are() {
    let port = |t: &aigw_tests::TestGateway| t.model.addr().port();
    let spellings = ["2130706433", "0x7f000001", "0177.0.0.1", "0x7f.1"];

    // Loopback not allowed: every spelling of 127.0.0.1 is refused, and nothing connects.
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "10.0.0.0/8").start().await;
    for host in spellings {
        let mut body = t.completion_body("codestral", None, false);
        body["model_endpoint"] = json!(format!("http://{host}:{}/v1", port(&t)));
        let answer = t.complete(&body).await;
        assert_eq!(answer.status, 403, "{host}: {}", answer.text());
        assert!(answer.json()["detail"].as_str().unwrap().contains("127.0.0.1"), "{host}");
    }
    assert_eq!(t.model.connections(), 0);

    // Loopback allowed: the same spellings reach the model server.
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "127.0.0.1/32").start().await;
    for host in spellings {
        let mut body = t.completion_body("codestral", None, false);
        body["model_endpoint"] = json!(format!("http://{host}:{}/v1", port(&t)));
        assert_eq!(t.complete(&body).await.status, 200, "{host}");
    }

    // The metadata address in hex is still the metadata address.
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "0.0.0.0/0").start().await;
    let mut body = t.completion_body("codestral", None, false);
    body["model_endpoint"] = json!("http://0xa9fea9fe/latest");
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert!(answer.json()["detail"].as_str().unwrap().contains("169.254.169.254"));
}

#[tokio::test]
async fn the_unspecified_address_is_refused_though_it_would_reach_a_local_listener() {
    // On Linux a connection to 0.0.0.0:<port> reaches a listener on 127.0.0.1:<port>: the mock
    // model server would see it, so its connection count proves that none was made.
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "0.0.0.0/0,::/0").start().await;
    let port = t.model.addr().port();
    for host in ["0.0.0.0", "0", "[::]", "[::ffff:0.0.0.0]"] {
        let mut body = t.completion_body("codestral", None, false);
        body["model_endpoint"] = json!(format!("http://{host}:{port}/v1"));
        let answer = t.complete(&body).await;
        assert_eq!(answer.status, 403, "{host}: {}", answer.text());
        assert!(answer.json()["detail"].as_str().unwrap().contains("always refused"), "{host}");
    }
    assert_eq!(t.model.connections(), 0);
}

#[tokio::test]
async fn mapped_loopback_is_loopback() {
    let t = Setup::default().env("AIGW_EGRESS__ALLOW", "10.0.0.0/8").start().await;
    let mut body = t.completion_body("codestral", None, false);
    body["model_endpoint"] = json!(format!("http://[::ffff:127.0.0.1]:{}/v1", t.model.addr().port()));
    let answer = t.complete(&body).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(t.model.connections(), 0);
}
