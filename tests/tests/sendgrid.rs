//! The SendGrid connector against the provider sandbox, over real sockets: success, every
//! result class, duplicates, and the signed event webhook posted by the sandbox to a receiver
//! here.

mod common;

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::jobs::job;
use herald_connectors::channels::sendgrid::{
    EventWebhookKey, SIGNATURE_HEADER, SendGrid, SendGridConfig, TIMESTAMP_HEADER, parse_events,
};
use herald_connectors::receipts::{ReceiptError, ReceiptStatus};
use herald_connectors::secret::SecretSource;
use herald_connectors::unsubscribe::UnsubscribeLinks;
use herald_loadtest::sandbox::{Faults, Sandbox, sendgrid as sandbox_sendgrid};
use herald_schemas::channel::{Channel, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

fn email(n: u32, address: &str, html: &str) -> DeliveryJob {
    let target = Target::Email { address: address.into() };
    let content = RenderedContent::Email { subject: "Hello".into(), text: "Hello there".into(), html: html.into() };
    job(n, "email", target, content, "marketing")
}

fn config(base_url: String, timeout: Duration) -> SendGridConfig {
    let mut config =
        SendGridConfig::new(SecretSource::Inline(sandbox_sendgrid::API_KEY.into()), "Herald <news@herald.example>");
    config.base_url = base_url;
    config.timeout = timeout;
    config.max_concurrency = 8;
    config.messages_per_second = NonZeroU32::new(1000).unwrap();
    config.event_webhook_key = Some(sandbox_sendgrid::EVENT_WEBHOOK_PUBLIC_KEY.into());
    config
}

fn links() -> Arc<UnsubscribeLinks> {
    let secret = SecretSource::Inline("unsubscribe-secret".into()).resolve().unwrap();
    Arc::new(UnsubscribeLinks::new("http://herald.test/v1/unsubscribe", &secret))
}

async fn sandbox(faults: Faults) -> Sandbox {
    Sandbox::start("127.0.0.1:0".parse().unwrap(), faults).await.unwrap()
}

#[tokio::test]
async fn sendgrid_delivers_and_classifies_every_answer() {
    let sandbox = sandbox(Faults::default()).await;
    let mut sendgrid = SendGrid::new(&config(sandbox.base_url(), Duration::from_secs(5)), Some(links())).unwrap();
    let jobs = [
        email(1, "ann@example.com", "<p>Hello there</p>"),
        email(2, sandbox_sendgrid::INVALID_ADDRESS, "<p>x</p>"),
        email(3, "no-at-sign.example.com", "<p>x</p>"),
        email(4, sandbox_sendgrid::BOUNCE_ADDRESS, ""),
        email(5, "big@example.com", &"<p>too big</p>".repeat(100_000)),
    ];
    let outcomes = sendgrid.send(&jobs).await.unwrap();
    assert!(
        matches!(&outcomes[0], SendOutcome::Delivered { provider_id: Some(id) } if id.len() == 22),
        "{:?}",
        outcomes[0]
    );
    for outcome in &outcomes[1..3] {
        let expected = "http 400 sendgrid personalizations.0.to.0.email: Does not contain a valid address.";
        assert_eq!(outcome, &SendOutcome::BadAddress { reason: expected.into() });
    }
    assert!(matches!(outcomes[3], SendOutcome::Delivered { .. }), "{:?}", outcomes[3]);
    assert!(
        matches!(&outcomes[4], SendOutcome::Permanent { reason } if reason.starts_with("http 413")),
        "{:?}",
        outcomes[4]
    );
    // The same delivery again is accepted by the provider and counted as a duplicate.
    sendgrid.send(&jobs[..1]).await.unwrap();
    let stats = sandbox.state.view()["sendgrid"];
    assert_eq!((stats.requests, stats.accepted, stats.rejected, stats.duplicates), (6, 3, 3, 1));

    // A wrong key is refused for good.
    let mut wrong = config(sandbox.base_url(), Duration::from_secs(5));
    wrong.api_key = SecretSource::Inline("SG.wrong".into());
    let outcomes = SendGrid::new(&wrong, None).unwrap().send(&jobs[..1]).await.unwrap();
    let expected = "http 401 sendgrid: The provided authorization grant is invalid, expired, or revoked";
    assert_eq!(outcomes, [SendOutcome::Permanent { reason: expected.into() }]);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn sendgrid_failures_are_retryable_with_retry_after_and_timeouts() {
    // Every request fails before acceptance: 503, 429 + X-RateLimit-Reset, or a hold past the timeout.
    let faults = Faults { fail_rate: 1.0, hold: Duration::from_secs(5), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let mut sendgrid = SendGrid::new(&config(sandbox.base_url(), Duration::from_millis(300)), None).unwrap();
    let jobs: Vec<DeliveryJob> = (0..30).map(|n| email(n, "ann@example.com", "<p>hi</p>")).collect();
    let outcomes = sendgrid.send(&jobs).await.unwrap();
    let mut seen = (0, 0, 0);
    for outcome in &outcomes {
        match outcome {
            SendOutcome::Retryable { reason, retry_after: None } if reason.starts_with("http 503") => seen.0 += 1,
            SendOutcome::Retryable { reason, retry_after: Some(wait) } if reason.starts_with("http 429") => {
                assert!(*wait >= Duration::from_secs(1) && *wait <= Duration::from_secs(2), "{wait:?}");
                seen.1 += 1;
            }
            SendOutcome::Retryable { reason, .. } if reason.starts_with("timeout") => seen.2 += 1,
            other => panic!("not a retryable failure: {other:?}"),
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "each failure kind drawn at least once: {seen:?}");
    assert_eq!(sandbox.state.view()["sendgrid"].accepted, 0);
    sandbox.shutdown().await;
}

/// One request the receiver got.
struct Captured {
    headers: HeaderMap,
    body: Bytes,
}

/// A server standing in for Herald's receipt endpoint: its base URL, and what it receives.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Captured>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/receipts/sendgrid",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Captured { headers, body });
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

#[tokio::test]
async fn sendgrid_events_from_the_sandbox_verify_and_tampered_ones_do_not() {
    let sandbox = sandbox(Faults::default()).await;
    let (base, mut received, server) = receiver().await;
    sandbox.state.set_callback_url(Some(base));
    let mut sendgrid = SendGrid::new(&config(sandbox.base_url(), Duration::from_secs(5)), Some(links())).unwrap();
    let jobs = [email(1, "ann@example.com", "<p>hi</p>"), email(2, sandbox_sendgrid::BOUNCE_ADDRESS, "<p>hi</p>")];
    let outcomes = sendgrid.send(&jobs).await.unwrap();
    let SendOutcome::Delivered { provider_id: Some(message_id) } = &outcomes[0] else { panic!("{outcomes:?}") };

    let key = EventWebhookKey::from_base64(sandbox_sendgrid::EVENT_WEBHOOK_PUBLIC_KEY).unwrap();
    let header = |c: &Captured, name: &str| c.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut receipts = Vec::new();
    let mut first = None;
    for _ in 0..2 {
        let captured = tokio::time::timeout(Duration::from_secs(10), received.recv()).await.unwrap().unwrap();
        let (timestamp, signature) = (header(&captured, TIMESTAMP_HEADER), header(&captured, SIGNATURE_HEADER));
        // `processed` gives no receipt; the final event does.
        let batch = parse_events(&key, timestamp.as_deref(), signature.as_deref(), &captured.body).unwrap();
        assert_eq!(batch.len(), 1, "{batch:?}");
        receipts.extend(batch);
        first.get_or_insert(captured);
    }
    receipts.sort_by(|a, b| a.delivery_id.0.cmp(&b.delivery_id.0));
    let mut expected = [(&jobs[0], ReceiptStatus::Delivered), (&jobs[1], ReceiptStatus::Bounced { hard: true })];
    expected.sort_by(|a, b| a.0.delivery_id.0.cmp(&b.0.delivery_id.0));
    for (receipt, (job, status)) in receipts.iter().zip(expected) {
        assert_eq!((&receipt.delivery_id, receipt.status), (&job.delivery_id, status));
        assert_eq!(receipt.address.as_deref(), Some(job.target.address()));
    }
    assert!(receipts.iter().any(|r| r.provider_id.as_ref() == Some(message_id)), "{receipts:?}");

    // The same batch altered is refused.
    let captured = first.unwrap();
    let (timestamp, signature) = (header(&captured, TIMESTAMP_HEADER), header(&captured, SIGNATURE_HEADER));
    let body = String::from_utf8(captured.body.to_vec()).unwrap();
    let tampered = body.replacen("\"email\":\"", "\"email\":\"x", 1);
    assert_ne!(tampered, body);
    let refused = Err(ReceiptError::Unauthenticated { provider: "sendgrid" });
    assert_eq!(parse_events(&key, timestamp.as_deref(), signature.as_deref(), tampered.as_bytes()), refused);
    server.abort();
    sandbox.shutdown().await;
}
