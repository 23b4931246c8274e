//! Each provider connector against the provider sandbox, over real sockets: success, every
//! result class, and the sandbox's view of what it accepted.

mod common;

use common::jobs::job;
use herald_connectors::channels::twilio::{Twilio, TwilioConfig};
use herald_connectors::secret::SecretSource;
use herald_loadtest::sandbox::{Faults, Sandbox};
use herald_schemas::channel::{Channel, SendOutcome};
use herald_schemas::{DeliveryJob, RenderedContent, Target};
use std::num::NonZeroU32;
use std::time::Duration;

fn sms(n: u32, number: &str, text: &str) -> DeliveryJob {
    let target = Target::Phone { number: number.into() };
    job(n, "sms", target, RenderedContent::Sms { text: text.into() }, "transactional")
}

fn twilio_config(base_url: String, timeout: Duration) -> TwilioConfig {
    TwilioConfig {
        account_sid: "ACsandbox".into(),
        auth_token: SecretSource::Inline("sandbox-token".into()),
        from: "+15005550006".into(),
        base_url,
        timeout,
        max_concurrency: 8,
        segments_per_second: NonZeroU32::new(1000).unwrap(),
        status_callback: None,
    }
}

async fn sandbox(faults: Faults) -> Sandbox {
    Sandbox::start("127.0.0.1:0".parse().unwrap(), faults).await.unwrap()
}

#[tokio::test]
async fn twilio_delivers_and_classifies_every_answer() {
    let sandbox = sandbox(Faults::default()).await;
    let mut twilio = Twilio::new(&twilio_config(sandbox.base_url(), Duration::from_secs(5))).unwrap();
    let jobs = [
        sms(1, "+14155550100", "Your code is 123456"),
        sms(2, "+15005550001", "invalid number"),
        sms(3, "+15005550009", "landline"),
        sms(4, "+15005550004", "sent STOP"),
        sms(5, "+14155550101", &"long ".repeat(100)),
    ];
    let outcomes = twilio.send(&jobs).await.unwrap();
    assert!(matches!(&outcomes[0], SendOutcome::Delivered { provider_id: Some(sid) } if sid.starts_with("SM")));
    for (outcome, code) in outcomes[1..4].iter().zip(["21211", "21614", "21610"]) {
        assert!(matches!(outcome, SendOutcome::BadAddress { reason } if reason.contains(code)), "{outcome:?}");
    }
    assert!(matches!(outcomes[4], SendOutcome::Delivered { .. }));
    // The same delivery again is accepted by the provider and counted as a duplicate.
    twilio.send(&jobs[..1]).await.unwrap();
    let stats = sandbox.state.view()["twilio"];
    assert_eq!((stats.requests, stats.accepted, stats.rejected, stats.duplicates), (6, 3, 3, 1));

    // A base URL with a trailing slash reaches the same endpoint.
    let mut slash = Twilio::new(&twilio_config(format!("{}/", sandbox.base_url()), Duration::from_secs(5))).unwrap();
    assert!(matches!(&slash.send(&jobs[4..]).await.unwrap()[0], SendOutcome::Delivered { .. }));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn twilio_failures_are_retryable_with_retry_after_and_timeouts() {
    // Every request fails before acceptance: 503, 429 + Retry-After, or a hold past the timeout.
    let faults = Faults { fail_rate: 1.0, hold: Duration::from_secs(5), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let mut twilio = Twilio::new(&twilio_config(sandbox.base_url(), Duration::from_millis(300))).unwrap();
    let jobs: Vec<DeliveryJob> = (0..30).map(|n| sms(n, "+14155550100", "hi")).collect();
    let outcomes = twilio.send(&jobs).await.unwrap();
    let mut seen = (0, 0, 0);
    for outcome in &outcomes {
        match outcome {
            SendOutcome::Retryable { reason, retry_after } if reason.starts_with("http 503") => {
                assert_eq!(*retry_after, None);
                seen.0 += 1;
            }
            SendOutcome::Retryable { reason, retry_after } if reason.starts_with("http 429") => {
                assert_eq!(*retry_after, Some(Duration::from_secs(1)));
                seen.1 += 1;
            }
            SendOutcome::Retryable { reason, .. } if reason.starts_with("timeout") => seen.2 += 1,
            other => panic!("not a retryable failure: {other:?}"),
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "each failure kind drawn at least once: {seen:?}");
    assert_eq!(sandbox.state.view()["twilio"].accepted, 0);
    sandbox.shutdown().await;
}
