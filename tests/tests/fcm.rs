//! The FCM connector against the sandbox's FCM and OAuth2 token endpoint, over real sockets:
//! every result class, one token shared by concurrent sends, refresh on expiry and on a 401.

mod common;

use common::jobs::job;
use herald_connectors::channels::fcm::{Fcm, FcmConfig};
use herald_connectors::secret::SecretSource;
use herald_loadtest::sandbox::fcm::test_service_account;
use herald_loadtest::sandbox::{Faults, Sandbox};
use herald_schemas::channel::{Channel, SendOutcome};
use herald_schemas::{DeliveryJob, Platform, RenderedContent, Target};
use std::time::Duration;

fn push(n: u32, token: &str, title: &str) -> DeliveryJob {
    let target = Target::Device { device_id: format!("d-{n}"), platform: Platform::Android, token: token.into() };
    job(n, "fcm", target, RenderedContent::Push { title: title.into(), body: "body".into() }, "transactional")
}

fn config(base_url: &str, timeout: Duration) -> FcmConfig {
    FcmConfig {
        base_url: base_url.into(),
        timeout,
        max_concurrency: 8,
        ..FcmConfig::new(SecretSource::Inline(test_service_account(base_url)))
    }
}

async fn sandbox(faults: Faults) -> Sandbox {
    Sandbox::start("127.0.0.1:0".parse().unwrap(), faults).await.unwrap()
}

#[tokio::test]
async fn fcm_delivers_and_classifies_every_answer_with_one_token() {
    let sandbox = sandbox(Faults::default()).await;
    let mut fcm = Fcm::new(&config(&sandbox.base_url(), Duration::from_secs(5))).unwrap();
    let jobs = [
        push(1, "device-token-1", "hello"),
        push(2, "unregistered-1", "hello"),
        push(3, "invalid-1", "hello"),
        push(4, "mismatch-1", "hello"),
        push(5, "device-token-5", &"x".repeat(5000)),
    ];
    let outcomes = fcm.send(&jobs).await.unwrap();
    assert!(
        matches!(&outcomes[0], SendOutcome::Delivered { provider_id: Some(name) } if name.starts_with("projects/herald-sandbox/messages/")),
        "{outcomes:?}"
    );
    for (outcome, code) in outcomes[1..4].iter().zip(["UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"]) {
        assert!(matches!(outcome, SendOutcome::BadAddress { reason } if reason.contains(code)), "{outcome:?}");
    }
    assert!(matches!(&outcomes[4], SendOutcome::Permanent { reason } if reason.contains("too big")), "{outcomes:?}");
    // Five concurrent sends waited for one token.
    assert_eq!(sandbox.state.fcm.grants(), 1);
    fcm.send(&jobs[..1]).await.unwrap();
    let stats = sandbox.state.view()["fcm"];
    assert_eq!((stats.requests, stats.accepted, stats.rejected, stats.duplicates), (6, 2, 4, 1));
    assert_eq!(sandbox.state.fcm.grants(), 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn fcm_refreshes_a_token_before_and_after_it_expires() {
    let sandbox = sandbox(Faults::default()).await;
    sandbox.state.fcm.set_lifetime(Duration::from_secs(2));
    let mut fcm = Fcm::new(&config(&sandbox.base_url(), Duration::from_secs(5))).unwrap();
    let mut send = async |n: u32| fcm.send(&[push(n, "device-a", "hi")]).await.unwrap().remove(0);
    assert!(matches!(send(1).await, SendOutcome::Delivered { .. }));
    // Past the token's expiry: a new one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(matches!(send(2).await, SendOutcome::Delivered { .. }));
    assert_eq!(sandbox.state.fcm.grants(), 2);

    // A 4 s token is renewed once half its life is gone, while the sandbox would still take it.
    sandbox.state.fcm.set_lifetime(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(matches!(send(3).await, SendOutcome::Delivered { .. }));
    assert_eq!(sandbox.state.fcm.grants(), 3);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(matches!(send(4).await, SendOutcome::Delivered { .. }));
    assert_eq!(sandbox.state.fcm.grants(), 4);
    let stats = sandbox.state.view()["fcm"];
    assert_eq!((stats.accepted, stats.rejected), (4, 0), "no send was refused for its token");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn fcm_a_revoked_token_is_retryable_and_replaced() {
    let sandbox = sandbox(Faults::default()).await;
    let mut fcm = Fcm::new(&config(&sandbox.base_url(), Duration::from_secs(5))).unwrap();
    let first = push(1, "device-a", "one");
    assert!(matches!(fcm.send(std::slice::from_ref(&first)).await.unwrap()[0], SendOutcome::Delivered { .. }));
    sandbox.state.fcm.revoke_all();
    let second = push(2, "device-a", "two");
    let refused = fcm.send(std::slice::from_ref(&second)).await.unwrap();
    assert!(
        matches!(&refused[0], SendOutcome::Retryable { reason, .. } if reason.contains("UNAUTHENTICATED")),
        "{refused:?}"
    );
    assert!(matches!(fcm.send(&[second]).await.unwrap()[0], SendOutcome::Delivered { .. }));
    assert_eq!(sandbox.state.fcm.grants(), 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn fcm_failures_are_retryable_with_retry_after_and_timeouts() {
    let faults = Faults { fail_rate: 1.0, hold: Duration::from_secs(5), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let mut fcm = Fcm::new(&config(&sandbox.base_url(), Duration::from_millis(500))).unwrap();
    let jobs: Vec<DeliveryJob> = (0..30).map(|n| push(n, "device-a", "hi")).collect();
    let mut seen = (0, 0, 0);
    for outcome in fcm.send(&jobs).await.unwrap() {
        match outcome {
            SendOutcome::Retryable { reason, retry_after } if reason.contains("UNAVAILABLE") => {
                assert_eq!(retry_after, None);
                seen.0 += 1;
            }
            SendOutcome::Retryable { reason, retry_after } if reason.contains("QUOTA_EXCEEDED") => {
                assert_eq!(retry_after, Some(Duration::from_secs(1)));
                seen.1 += 1;
            }
            SendOutcome::Retryable { reason, .. } if reason.starts_with("timeout") => seen.2 += 1,
            other => panic!("not a retryable failure: {other:?}"),
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "each failure kind drawn at least once: {seen:?}");
    assert_eq!(sandbox.state.view()["fcm"].accepted, 0);

    // Every token the sandbox draws as bad is unregistered.
    sandbox.state.set_faults(Faults { bad_token_rate: 1.0, ..Faults::default() });
    let outcome = fcm.send(&jobs[..1]).await.unwrap();
    assert!(
        matches!(&outcome[0], SendOutcome::BadAddress { reason } if reason.contains("UNREGISTERED")),
        "{outcome:?}"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn fcm_token_endpoint_down_or_refusing_never_panics() {
    // Nothing listens on the token URL: the channel is built, and sends are retryable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let sandbox = sandbox(Faults::default()).await;
    let unreachable = FcmConfig { token_url: Some(closed_url), ..config(&sandbox.base_url(), Duration::from_secs(2)) };
    let mut fcm = Fcm::new(&unreachable).unwrap();
    let outcome = fcm.send(&[push(1, "device-a", "hi")]).await.unwrap();
    assert!(matches!(&outcome[0], SendOutcome::Retryable { reason, .. } if reason.contains("oauth")), "{outcome:?}");

    // An account the token endpoint does not know: refused, a configuration fault.
    let mut account: serde_json::Value = serde_json::from_str(&test_service_account(&sandbox.base_url())).unwrap();
    account["client_email"] = "someone-else@herald-sandbox.iam.gserviceaccount.com".into();
    let stranger = FcmConfig {
        service_account: SecretSource::Inline(account.to_string()),
        ..config(&sandbox.base_url(), Duration::from_secs(2))
    };
    let outcome = Fcm::new(&stranger).unwrap().send(&[push(2, "device-a", "hi")]).await.unwrap();
    assert!(
        matches!(&outcome[0], SendOutcome::Permanent { reason } if reason.contains("invalid_grant")),
        "{outcome:?}"
    );

    // Another project than the account's: FCM denies it.
    let other_project =
        FcmConfig { project_id: Some("not-mine".into()), ..config(&sandbox.base_url(), Duration::from_secs(2)) };
    let outcome = Fcm::new(&other_project).unwrap().send(&[push(3, "device-a", "hi")]).await.unwrap();
    assert!(
        matches!(&outcome[0], SendOutcome::Permanent { reason } if reason.contains("PERMISSION_DENIED")),
        "{outcome:?}"
    );
    assert_eq!(sandbox.state.view()["fcm"].accepted, 0);
    sandbox.shutdown().await;
}
