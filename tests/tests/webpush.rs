//! The Web Push connector against the sandbox's push service, over real sockets: the sandbox
//! checks VAPID and decrypts every payload before accepting it; every result class.

mod common;

use common::jobs::job;
use herald_connectors::channels::webpush::{WebPush, WebPushConfig};
use herald_connectors::secret::SecretSource;
use herald_loadtest::sandbox::webpush::{TEST_VAPID_PRIVATE_KEY, TEST_VAPID_PUBLIC_KEY, test_subscription};
use herald_loadtest::sandbox::{Faults, Sandbox};
use herald_schemas::channel::{Channel, SendOutcome};
use herald_schemas::{DeliveryJob, Platform, RenderedContent, Target};
use std::time::Duration;

/// A valid P-256 key that the sandbox's subscriptions were not made for.
const OTHER_VAPID_KEY: &str = "IQ9Ur0ykXoHS9gzfYX0aBjy9lvdrjx_PFUXmie9YRcY";

fn push(n: u32, subscription: &str, title: &str) -> DeliveryJob {
    let target = Target::Device { device_id: format!("d-{n}"), platform: Platform::Web, token: subscription.into() };
    job(n, "webpush", target, RenderedContent::Push { title: title.into(), body: "body".into() }, "transactional")
}

fn config(key: &str, timeout: Duration) -> WebPushConfig {
    WebPushConfig {
        timeout,
        max_concurrency: 8,
        ..WebPushConfig::new(SecretSource::Inline(key.into()), "mailto:ops@herald.example")
    }
}

async fn sandbox(faults: Faults) -> Sandbox {
    Sandbox::start("127.0.0.1:0".parse().unwrap(), faults).await.unwrap()
}

#[tokio::test]
async fn webpush_delivers_decryptable_payloads_and_classifies_every_answer() {
    let sandbox = sandbox(Faults::default()).await;
    let base = sandbox.base_url();
    let mut webpush = WebPush::new(&config(TEST_VAPID_PRIVATE_KEY, Duration::from_secs(5))).unwrap();
    // Keys the sandbox cannot decrypt with: a real P-256 point, but not the subscription's.
    let mut foreign: serde_json::Value = serde_json::from_str(&test_subscription(&base, "foreign")).unwrap();
    foreign["keys"]["p256dh"] = TEST_VAPID_PUBLIC_KEY.into();
    let jobs = [
        push(1, &test_subscription(&base, "sub-1"), "hello"),
        push(2, &test_subscription(&base, "gone-2"), "hello"),
        push(3, r#"{"endpoint": 42}"#, "hello"),
        push(4, &test_subscription(&base, "sub-4").replace("\"auth\":\"", "\"auth\":\"!!"), "hello"),
        push(5, &test_subscription(&base, "sub-5"), &"x".repeat(4000)),
        push(6, &foreign.to_string(), "hello"),
    ];
    let outcomes = webpush.send(&jobs).await.unwrap();
    assert!(
        matches!(&outcomes[0], SendOutcome::Delivered { provider_id: Some(location) } if location.starts_with(&format!("{base}/m/"))),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], SendOutcome::BadAddress { reason } if reason.starts_with("http 410")),
        "{outcomes:?}"
    );
    assert!(matches!(&outcomes[2], SendOutcome::BadAddress { .. }), "{outcomes:?}");
    assert!(matches!(&outcomes[3], SendOutcome::BadAddress { .. }), "{outcomes:?}");
    assert!(matches!(&outcomes[4], SendOutcome::Permanent { .. }), "{outcomes:?}");
    assert!(matches!(&outcomes[5], SendOutcome::Permanent { reason } if reason.contains("decrypt")), "{outcomes:?}");
    // The same delivery again is accepted and counted as a duplicate.
    webpush.send(&jobs[..1]).await.unwrap();
    let stats = sandbox.state.view()["webpush"];
    assert_eq!((stats.requests, stats.accepted, stats.rejected, stats.duplicates), (4, 2, 2, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn webpush_a_vapid_key_the_subscription_was_not_made_with_is_permanent() {
    let sandbox = sandbox(Faults::default()).await;
    let mut webpush = WebPush::new(&config(OTHER_VAPID_KEY, Duration::from_secs(5))).unwrap();
    let outcome = webpush.send(&[push(1, &test_subscription(&sandbox.base_url(), "sub-1"), "hi")]).await.unwrap();
    assert!(matches!(&outcome[0], SendOutcome::Permanent { reason } if reason.starts_with("http 403")), "{outcome:?}");
    assert_eq!(sandbox.state.view()["webpush"].accepted, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn webpush_failures_are_retryable_with_retry_after_and_timeouts() {
    let faults = Faults { fail_rate: 1.0, hold: Duration::from_secs(5), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let subscription = test_subscription(&sandbox.base_url(), "sub-1");
    let mut webpush = WebPush::new(&config(TEST_VAPID_PRIVATE_KEY, Duration::from_millis(500))).unwrap();
    let jobs: Vec<DeliveryJob> = (0..30).map(|n| push(n, &subscription, "hi")).collect();
    let mut seen = (0, 0, 0);
    for outcome in webpush.send(&jobs).await.unwrap() {
        match outcome {
            SendOutcome::Retryable { reason, retry_after } if reason.starts_with("http 503") => {
                assert_eq!(retry_after, None);
                seen.0 += 1;
            }
            SendOutcome::Retryable { reason, retry_after } if reason.starts_with("http 429") => {
                assert_eq!(retry_after, Some(Duration::from_secs(1)));
                seen.1 += 1;
            }
            SendOutcome::Retryable { reason, .. } if reason.starts_with("timeout") => seen.2 += 1,
            other => panic!("not a retryable failure: {other:?}"),
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "each failure kind drawn at least once: {seen:?}");
    assert_eq!(sandbox.state.view()["webpush"].accepted, 0);

    sandbox.state.set_faults(Faults { bad_token_rate: 1.0, ..Faults::default() });
    let outcome = webpush.send(&jobs[..1]).await.unwrap();
    assert!(matches!(&outcome[0], SendOutcome::BadAddress { reason } if reason.starts_with("http 410")), "{outcome:?}");
    sandbox.shutdown().await;
}
