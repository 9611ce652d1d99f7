//! Model calls that fail in passing are made again, bounded: how often, after what, and what the
//! caller and `/metrics` see.

use aigw_tests::{Recording, Reply, Setup, TestGateway};
use bytes::Bytes;
use http::Method;
use serde_json::json;
use std::time::{Duration, Instant};

fn failure(status: u16) -> Recording {
    Recording {
        status,
        content_type: "application/json".into(),
        body: json!({"error": {"message": "busy", "code": status}}).to_string(),
    }
}

fn answer(text: &str) -> Recording {
    let body = json!({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
    Recording { status: 200, content_type: "application/json".into(), body: body.to_string() }
}

async fn metrics(t: &TestGateway) -> String {
    t.request(Method::GET, "/metrics", &[], Bytes::new()).await.text()
}

#[tokio::test]
async fn a_server_that_fails_twice_then_answers_succeeds() {
    let t = TestGateway::start().await;
    t.model.replay(vec![failure(503), failure(500), answer("return a - b")]);
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["text"], "return a - b");
    assert_eq!(t.model.requests().len(), 3, "one call and two retries");
    let metrics = metrics(&t).await;
    assert!(
        metrics.contains("aigw_upstream_retries_total{provider=\"custom_openai\",reason=\"status_other\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_server_that_keeps_failing_is_called_one_plus_the_retries_and_the_answer_says_so() {
    for (retries, calls) in [(None, 3), (Some("0"), 1), (Some("4"), 5)] {
        let mut setup = Setup::default().env("AIGW_UPSTREAM__RETRY_MAX_BACKOFF_MS", "40");
        if let Some(retries) = retries {
            setup = setup.env("AIGW_UPSTREAM__RETRIES", retries);
        }
        let t = setup.start().await;
        for status in [500, 502, 503, 504] {
            t.model.clear_requests();
            t.model.replay(vec![failure(status)]);
            let answer = t.complete(&t.completion_body("codestral", None, false)).await;
            assert_eq!(t.model.requests().len(), calls, "{status} with {retries:?} retries");
            let detail = answer.json()["detail"].as_str().unwrap().to_string();
            assert_eq!(answer.status, 502, "{detail}");
            if calls > 1 {
                assert!(detail.ends_with(&format!("(after {calls} calls)")), "{detail}");
            } else {
                assert!(!detail.contains("calls"), "{detail}");
            }
        }
    }
}

#[tokio::test]
async fn the_requests_own_failures_are_not_retried() {
    let t = TestGateway::start().await;
    for status in [400, 401, 403, 404, 413, 422] {
        t.model.clear_requests();
        t.model.replay(vec![failure(status)]);
        let answer = t.complete(&t.completion_body("codestral", None, false)).await;
        assert!(answer.status.is_client_error() || answer.status.is_server_error(), "{status}");
        assert_eq!(t.model.requests().len(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn retry_after_is_waited_for_up_to_the_cap_and_passed_on_past_it() {
    let t = Setup::default().env("AIGW_UPSTREAM__RETRY_MAX_BACKOFF_MS", "1500").start().await;
    t.model.set_reply(Reply { status: 429, retry_after: Some("1".into()), ..Reply::default() });
    let started = Instant::now();
    let limited = t.complete(&t.completion_body("codestral", None, false)).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "two waits of the second the server asked for");
    assert_eq!((limited.status.as_u16(), t.model.requests().len()), (429, 3));

    t.model.clear_requests();
    t.model.set_reply(Reply { status: 429, retry_after: Some("30".into()), ..Reply::default() });
    let limited = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(
        (limited.status.as_u16(), limited.header("retry-after"), t.model.requests().len()),
        (429, Some("30"), 1),
        "a wait longer than the cap is the caller's to make"
    );
}

#[tokio::test]
async fn retries_stay_inside_the_calls_deadline() {
    let t = Setup::default()
        .env("AIGW_UPSTREAM__TOTAL_TIMEOUT_MS", "300")
        .env("AIGW_UPSTREAM__RETRY_MAX_BACKOFF_MS", "2000")
        .env("AIGW_UPSTREAM__RETRIES", "10")
        .start()
        .await;
    t.model.set_reply(Reply { status: 503, retry_after: Some("1".into()), ..Reply::default() });
    let started = Instant::now();
    let answer = t.complete(&t.completion_body("codestral", None, false)).await;
    assert_eq!(answer.status, 502);
    assert_eq!(t.model.requests().len(), 1, "a one-second wait does not fit in 300 ms");
    assert!(started.elapsed() < Duration::from_secs(1), "the deadline holds: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_stream_that_has_begun_is_never_called_again() {
    let t = TestGateway::start().await;
    // The answer starts, then breaks off without its end.
    let cut = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"return\"}}]}\n\n";
    t.model.set_reply(Reply { raw_stream: Some(cut.into()), ..Reply::default() });
    let answer = t.complete_allowing_abort(&t.completion_body("codestral", None, true)).await;
    assert_eq!(answer.status, 200);
    assert!(answer.text().starts_with("return"), "{}", answer.text());
    assert_eq!(t.model.requests().len(), 1);
}
