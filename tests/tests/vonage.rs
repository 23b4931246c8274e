//! The Vonage connector against the provider sandbox, over real sockets: success, every result
//! class, duplicates, and signed delivery receipts posted by the sandbox to a receiver here.

mod common;

use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::HeaderMap;
use common::jobs::job;
use herald_connectors::channels::vonage::{
    DlrVerifier, SignatureMethod, Vonage, VonageConfig, parse_receipt, receipt_params,
};
use herald_connectors::receipts::{ReceiptError, ReceiptStatus};
use herald_connectors::secret::SecretSource;
use herald_loadtest::sandbox::{Faults, Sandbox, vonage as sandbox_vonage};
use herald_schemas::channel::{Channel, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

fn sms(n: u32, number: &str, text: &str) -> DeliveryJob {
    let target = Target::Phone { number: number.into() };
    job(n, "sms", target, RenderedContent::Sms { text: text.into() }, "transactional")
}

fn config(base_url: String, timeout: Duration) -> VonageConfig {
    let mut config =
        VonageConfig::new(sandbox_vonage::API_KEY, SecretSource::Inline(sandbox_vonage::API_SECRET.into()), "Herald");
    config.base_url = base_url;
    config.timeout = timeout;
    config.max_concurrency = 8;
    config.segments_per_second = NonZeroU32::new(1000).unwrap();
    config
}

async fn sandbox(faults: Faults) -> Sandbox {
    Sandbox::start("127.0.0.1:0".parse().unwrap(), faults).await.unwrap()
}

fn plus(number: &str) -> String {
    format!("+{number}")
}

#[tokio::test]
async fn vonage_delivers_and_classifies_every_answer() {
    let sandbox = sandbox(Faults::default()).await;
    let mut vonage = Vonage::new(&config(sandbox.base_url(), Duration::from_secs(5))).unwrap();
    let jobs = [
        sms(1, "+14155550100", "Your code is 123456"),
        sms(2, &plus(sandbox_vonage::INVALID_NUMBER), "invalid number"),
        sms(3, &plus(sandbox_vonage::UNROUTABLE_NUMBER), "unroutable"),
        sms(4, &plus(sandbox_vonage::BARRED_NUMBER), "barred"),
        sms(5, "+14155550101", "Привет ✓ — unicode"),
        sms(6, "+14155550102", &"long ".repeat(100)),
    ];
    let outcomes = vonage.send(&jobs).await.unwrap();
    assert!(
        matches!(&outcomes[0], SendOutcome::Delivered { provider_id: Some(id) } if id.len() == 16),
        "{:?}",
        outcomes[0]
    );
    for (outcome, status) in outcomes[1..4].iter().zip(["vonage 3", "vonage 6", "vonage 7"]) {
        assert!(matches!(outcome, SendOutcome::BadAddress { reason } if reason.starts_with(status)), "{outcome:?}");
    }
    assert!(matches!(outcomes[4], SendOutcome::Delivered { .. }), "{:?}", outcomes[4]);
    assert!(matches!(outcomes[5], SendOutcome::Delivered { .. }), "{:?}", outcomes[5]);
    // The same delivery again is accepted by the provider and counted as a duplicate.
    vonage.send(&jobs[..1]).await.unwrap();
    let stats = sandbox.state.view()["vonage"];
    assert_eq!((stats.requests, stats.accepted, stats.rejected, stats.duplicates), (7, 4, 3, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn vonage_refuses_wrong_credentials_for_good() {
    let sandbox = sandbox(Faults::default()).await;
    let mut config = config(sandbox.base_url(), Duration::from_secs(5));
    config.api_secret = SecretSource::Inline("wrong".into());
    let outcomes = Vonage::new(&config).unwrap().send(&[sms(1, "+14155550100", "hi")]).await.unwrap();
    assert_eq!(outcomes, [SendOutcome::Permanent { reason: "vonage 4: Bad Credentials".into() }]);
    assert_eq!(sandbox.state.view()["vonage"].accepted, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn vonage_failures_are_retryable_with_retry_after_and_timeouts() {
    // Every request fails before acceptance: throttled, unavailable, or held past the timeout.
    let faults = Faults { fail_rate: 1.0, hold: Duration::from_secs(5), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let mut vonage = Vonage::new(&config(sandbox.base_url(), Duration::from_millis(300))).unwrap();
    let jobs: Vec<DeliveryJob> = (0..40).map(|n| sms(n, "+14155550100", "hi")).collect();
    let outcomes = vonage.send(&jobs).await.unwrap();
    let mut seen = (0, 0, 0, 0, 0);
    for outcome in &outcomes {
        match outcome {
            SendOutcome::Retryable { reason, retry_after: None } if reason.starts_with("vonage 1: Throttled") => {
                seen.0 += 1
            }
            SendOutcome::Retryable { reason, retry_after } if reason == "http 429" => {
                assert_eq!(*retry_after, Some(Duration::from_secs(1)));
                seen.1 += 1;
            }
            SendOutcome::Retryable { reason, .. } if reason.starts_with("vonage 5: Internal Error") => seen.2 += 1,
            SendOutcome::Retryable { reason, .. } if reason == "http 503" => seen.3 += 1,
            SendOutcome::Retryable { reason, .. } if reason.starts_with("timeout") => seen.4 += 1,
            other => panic!("not a retryable failure: {other:?}"),
        }
    }
    assert!(seen.0 + seen.1 > 0 && seen.2 + seen.3 > 0 && seen.4 > 0, "each failure kind drawn: {seen:?}");
    assert_eq!(sandbox.state.view()["vonage"].accepted, 0);
    sandbox.shutdown().await;
}

/// One request the receiver got.
struct Captured {
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

/// A server standing in for Herald's receipt endpoint: its base URL, and what it receives.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Captured>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/receipts/vonage",
        axum::routing::any(move |RawQuery(query): RawQuery, headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Captured { query, headers, body });
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, rx, task)
}

fn verifier(secret: &str) -> DlrVerifier {
    DlrVerifier::new(SecretSource::Inline(secret.into()).resolve().unwrap(), SignatureMethod::Sha256)
}

#[tokio::test]
async fn vonage_receipts_from_the_sandbox_verify_and_tampered_ones_do_not() {
    let sandbox = sandbox(Faults::default()).await;
    let (base, mut received, server) = receiver().await;
    sandbox.state.set_callback_url(Some(base));
    let mut vonage = Vonage::new(&config(sandbox.base_url(), Duration::from_secs(5))).unwrap();
    let jobs = [sms(1, "+14155550100", "hello"), sms(2, &plus(sandbox_vonage::FAILING_NUMBER), "fails later")];
    let outcomes = vonage.send(&jobs).await.unwrap();
    let SendOutcome::Delivered { provider_id: Some(message_id) } = &outcomes[0] else { panic!("{outcomes:?}") };

    let verifier = verifier(sandbox_vonage::SIGNATURE_SECRET);
    let mut receipts = Vec::new();
    let mut first = None;
    for _ in 0..2 {
        let captured = tokio::time::timeout(Duration::from_secs(10), received.recv()).await.unwrap().unwrap();
        let content_type = captured.headers.get("content-type").and_then(|v| v.to_str().ok());
        let params = receipt_params(captured.query.as_deref(), content_type, &captured.body).unwrap();
        receipts.push(parse_receipt(&params, Some(&verifier), SystemTime::now()).unwrap().unwrap());
        first.get_or_insert(captured);
    }
    receipts.sort_by(|a, b| a.delivery_id.0.cmp(&b.delivery_id.0));
    let mut expected =
        [(&jobs[0], ReceiptStatus::Delivered), (&jobs[1], ReceiptStatus::Undelivered { permanent: true })];
    expected.sort_by(|a, b| a.0.delivery_id.0.cmp(&b.0.delivery_id.0));
    for (receipt, (job, status)) in receipts.iter().zip(expected) {
        assert_eq!((&receipt.delivery_id, receipt.status), (&job.delivery_id, status));
        assert_eq!(receipt.address.as_deref(), Some(job.target.address()));
    }
    assert!(receipts.iter().any(|r| r.provider_id.as_ref() == Some(message_id)), "{receipts:?}");

    // The same DLR altered, or checked with another secret, is refused.
    let captured = first.unwrap();
    let content_type = captured.headers.get("content-type").and_then(|v| v.to_str().ok());
    let body = String::from_utf8(captured.body.to_vec()).unwrap();
    let tampered = if body.contains("status=delivered") {
        body.replace("status=delivered", "status=expired")
    } else {
        body.replace("status=failed", "status=delivered")
    };
    assert_ne!(tampered, body);
    let params = receipt_params(None, content_type, tampered.as_bytes()).unwrap();
    let refused = Err(ReceiptError::Unauthenticated { provider: "vonage" });
    assert_eq!(parse_receipt(&params, Some(&verifier), SystemTime::now()), refused);
    let params = receipt_params(None, content_type, body.as_bytes()).unwrap();
    assert_eq!(parse_receipt(&params, Some(&self::verifier("another-secret")), SystemTime::now()), refused);
    server.abort();
    sandbox.shutdown().await;
}
