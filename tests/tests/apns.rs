//! The APNs connector against the sandbox's APNs endpoint, over real sockets and cleartext
//! HTTP/2: success, every result class, faults, and the provider token's life (refreshed after
//! APNs calls it expired, refused when renewed too often).

mod common;

use common::jobs::job;
use herald_connectors::channels::apns::{Apns, ApnsAuth, ApnsConfig, apns_id};
use herald_connectors::secret::SecretSource;
use herald_loadtest::sandbox::apns::{TEST_KEY_ID, TEST_PRIVATE_KEY, TEST_TEAM_ID, config_toml};
use herald_loadtest::sandbox::{Faults, Sandbox};
use herald_schemas::channel::{Channel, SendOutcome};
use herald_schemas::{Clock, DeliveryJob, Platform, RenderedContent, SystemClock, Target};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

const TOKEN: &str = "6b1c9d2e0f4a5b3c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c";

fn push(n: u32, token: &str, body: &str) -> DeliveryJob {
    let target = Target::Device { device_id: format!("d-{n}"), platform: Platform::Ios, token: token.into() };
    job(n, "apns", target, RenderedContent::Push { title: "Hello".into(), body: body.into() }, "transactional")
}

fn config(base_url: String, key: &str) -> ApnsConfig {
    let auth = ApnsConfig::token_auth(SecretSource::Inline(key.into()), TEST_KEY_ID, TEST_TEAM_ID);
    let mut config = ApnsConfig::new("com.example.herald", auth);
    config.base_url = base_url;
    config.timeout = Duration::from_secs(5);
    config
}

async fn sandbox(faults: Faults) -> Sandbox {
    Sandbox::start("127.0.0.1:0".parse().unwrap(), faults).await.unwrap()
}

/// The wall clock moved by an offset the test sets, to age provider tokens without waiting.
#[derive(Default)]
struct ShiftedClock(AtomicI64);

impl ShiftedClock {
    fn shift(&self, by: Duration, back: bool) {
        let ms = by.as_millis() as i64;
        self.0.store(if back { -ms } else { ms }, Ordering::SeqCst);
    }
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> u64 {
        (herald_schemas::stage::now_ms() as i64 + self.0.load(Ordering::SeqCst)) as u64
    }
}

#[tokio::test]
async fn apns_delivers_over_http2_and_classifies_every_answer() {
    let sandbox = sandbox(Faults::default()).await;
    let mut apns = Apns::new(&config(sandbox.base_url(), TEST_PRIVATE_KEY)).unwrap();
    let dead = format!("dead{}", &TOKEN[4..]);
    let jobs = [
        push(1, TOKEN, "Your order shipped"),
        push(2, "not-a-device-token", "bad token"),
        push(3, &dead, "uninstalled"),
        push(4, TOKEN, &"x".repeat(5000)),
    ];
    let outcomes = apns.send(&jobs).await.unwrap();
    let SendOutcome::Delivered { provider_id: Some(id) } = &outcomes[0] else { panic!("{:?}", outcomes[0]) };
    assert_eq!(id.to_lowercase(), apns_id(&jobs[0].delivery_id.0), "the apns-id sent is the one kept");
    assert!(matches!(&outcomes[1], SendOutcome::BadAddress { reason } if reason.contains("BadDeviceToken")));
    assert!(matches!(&outcomes[2], SendOutcome::BadAddress { reason } if reason.contains("410 apns Unregistered")));
    assert!(matches!(&outcomes[3], SendOutcome::Permanent { reason } if reason.contains("PayloadTooLarge")));
    // The same delivery again: accepted by APNs, counted as a duplicate, under the same apns-id.
    let again = apns.send(&jobs[..1]).await.unwrap();
    assert_eq!(again[0], outcomes[0]);
    let stats = sandbox.state.view()["apns"];
    assert_eq!((stats.requests, stats.accepted, stats.rejected, stats.duplicates), (5, 2, 3, 1));
    assert_eq!(sandbox.state.apns.http_versions(), (0, 5), "every request over HTTP/2");
    assert_eq!(apns.tokens_signed(), 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn apns_faults_are_retryable_or_a_bad_address() {
    let faults = Faults { fail_rate: 1.0, hold: Duration::from_secs(5), ..Faults::default() };
    let sandbox = sandbox(faults).await;
    let mut config = config(sandbox.base_url(), TEST_PRIVATE_KEY);
    config.timeout = Duration::from_millis(300);
    let mut apns = Apns::new(&config).unwrap();
    let jobs: Vec<DeliveryJob> = (0..30).map(|n| push(n, TOKEN, "hi")).collect();
    let mut seen = (0, 0, 0);
    for outcome in apns.send(&jobs).await.unwrap() {
        match outcome {
            SendOutcome::Retryable { reason, retry_after: None } if reason == "http 503 apns ServiceUnavailable" => {
                seen.0 += 1
            }
            SendOutcome::Retryable { reason, retry_after } if reason == "http 429 apns TooManyRequests" => {
                assert_eq!(retry_after, Some(Duration::from_secs(1)));
                seen.1 += 1;
            }
            SendOutcome::Retryable { reason, .. } if reason.starts_with("timeout") => seen.2 += 1,
            other => panic!("not a retryable failure: {other:?}"),
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "each failure kind drawn at least once: {seen:?}");
    assert_eq!(sandbox.state.view()["apns"].accepted, 0);

    sandbox.state.set_faults(Faults { bad_token_rate: 1.0, ..Faults::default() });
    let outcome = &apns.send(&jobs[..1]).await.unwrap()[0];
    assert!(matches!(outcome, SendOutcome::BadAddress { reason } if reason.contains("BadDeviceToken")), "{outcome:?}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn apns_renews_an_expired_token_but_not_before_apple_allows() {
    let sandbox = sandbox(Faults::default()).await;
    // Herald's clock says the first token was signed 25 minutes ago.
    let clock = Arc::new(ShiftedClock::default());
    clock.shift(Duration::from_secs(25 * 60), true);
    let mut apns = Apns::with_clock(&config(sandbox.base_url(), TEST_PRIVATE_KEY), clock.clone()).unwrap();
    assert!(matches!(apns.send(&[push(1, TOKEN, "one")]).await.unwrap()[0], SendOutcome::Delivered { .. }));

    // APNs now calls it expired. To Herald's clock it is brand new: renewing it now would be
    // refused as too frequent, so the send is retryable in 20 minutes, with the same token.
    sandbox.state.apns.set_max_token_age(Duration::from_secs(10 * 60));
    let outcome = apns.send(&[push(2, TOKEN, "two")]).await.unwrap().remove(0);
    let SendOutcome::Retryable { reason, retry_after: Some(wait) } = outcome else { panic!("{outcome:?}") };
    assert_eq!(reason, "http 403 apns ExpiredProviderToken");
    assert!(wait > Duration::from_secs(19 * 60) && wait <= Duration::from_secs(20 * 60), "{wait:?}");
    assert!(matches!(apns.send(&[push(2, TOKEN, "two")]).await.unwrap()[0], SendOutcome::Retryable { .. }));
    assert_eq!(apns.tokens_signed(), 1);

    // Herald's clock catches up (the token is 25 minutes old): the retry signs a new token once.
    clock.shift(Duration::ZERO, false);
    let retried = apns.send(&[push(2, TOKEN, "two"), push(3, TOKEN, "three")]).await.unwrap();
    assert!(retried.iter().all(|o| matches!(o, SendOutcome::Delivered { .. })), "{retried:?}");
    assert_eq!(apns.tokens_signed(), 2);
    assert_eq!(sandbox.state.view()["apns"].accepted, 3);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn apns_refuses_tokens_renewed_too_often_and_foreign_keys() {
    let sandbox = sandbox(Faults::default()).await;
    let mut first = Apns::new(&config(sandbox.base_url(), TEST_PRIVATE_KEY)).unwrap();
    assert!(matches!(first.send(&[push(1, TOKEN, "a")]).await.unwrap()[0], SendOutcome::Delivered { .. }));
    // Another connector of this process presents the same token.
    let mut same_process = Apns::new(&config(sandbox.base_url(), TEST_PRIVATE_KEY)).unwrap();
    assert!(matches!(same_process.send(&[push(4, TOKEN, "d")]).await.unwrap()[0], SendOutcome::Delivered { .. }));
    assert_eq!(same_process.tokens_signed(), 1, "one signing for the key in the process");
    // A second process with the same key signs its own token minutes later: too many updates.
    let mut second = Apns::with_clock(&config(sandbox.base_url(), TEST_PRIVATE_KEY), Arc::new(SystemClock)).unwrap();
    let outcome = second.send(&[push(2, TOKEN, "b")]).await.unwrap().remove(0);
    assert!(
        matches!(&outcome, SendOutcome::Retryable { reason, .. } if reason == "http 429 apns TooManyProviderTokenUpdates"),
        "{outcome:?}"
    );
    // The first one's token is still the key's token.
    assert!(matches!(first.send(&[push(3, TOKEN, "c")]).await.unwrap()[0], SendOutcome::Delivered { .. }));
    // Once the sandbox allows any rate, the second token is taken.
    sandbox.state.apns.set_token_update_interval(Duration::ZERO);
    assert!(matches!(second.send(&[push(2, TOKEN, "b")]).await.unwrap()[0], SendOutcome::Delivered { .. }));

    // A key APNs does not know under this key id: InvalidProviderToken, retryable.
    // (A second P-256 key generated for this test; it signs nothing anywhere else.)
    let other_key = "-----BEGIN PRIVATE KEY-----\n\
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZ+xfoaZfaNkdH1j9\n\
        7yA6xa8DAWfmGAKF4NVg9/zmm8uhRANCAARz2b/ZTGp8jZHtnhsqGwk8Ghv7nBG0\n\
        ELW7UyeESO4ncfLJDZngAxSnizDPdmI9fSjVAwCXnfP5nr6CYE4pZIOe\n\
        -----END PRIVATE KEY-----\n";
    let mut foreign = Apns::new(&config(sandbox.base_url(), other_key)).unwrap();
    let outcome = foreign.send(&[push(4, TOKEN, "d")]).await.unwrap().remove(0);
    assert!(
        matches!(&outcome, SendOutcome::Retryable { reason, .. } if reason == "http 403 apns InvalidProviderToken"),
        "{outcome:?}"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn apns_spreads_many_requests_over_limited_streams() {
    let sandbox = sandbox(Faults { latency_ms: 20, ..Faults::default() }).await;
    let mut config = config(sandbox.base_url(), TEST_PRIVATE_KEY);
    config.connections = NonZeroUsize::new(3).unwrap();
    config.streams_per_connection = NonZeroUsize::new(2).unwrap();
    let mut apns = Apns::new(&config).unwrap();
    let jobs: Vec<DeliveryJob> = (0..60).map(|n| push(n, TOKEN, "many")).collect();
    let outcomes = apns.send(&jobs).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, SendOutcome::Delivered { .. })), "{outcomes:?}");
    let stats = sandbox.state.view()["apns"];
    assert_eq!((stats.accepted, stats.duplicates), (60, 0));
    assert_eq!(sandbox.state.apns.http_versions(), (0, 60));
    // At most 3 connections × 2 streams at once, and more than one connection's worth.
    let most = sandbox.state.apns.most_in_flight();
    assert!((3..=6).contains(&most), "{most} in flight at most");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn apns_configuration_errors_name_the_field() {
    let mut bad = config("http://127.0.0.1:1".into(), "not a key");
    let error = Apns::new(&bad).err().unwrap().to_string();
    assert!(error.starts_with("providers.apns.auth.key"), "{error}");
    bad.auth = ApnsAuth::Token {
        key: SecretSource::Env { env: "HERALD_TEST_APNS_KEY_THAT_IS_NOT_SET".into() },
        key_id: TEST_KEY_ID.into(),
        team_id: TEST_TEAM_ID.into(),
        token_refresh: Duration::from_secs(30 * 60),
    };
    let error = Apns::new(&bad).err().unwrap().to_string();
    assert!(error.starts_with("providers.apns.auth.key") && error.contains("HERALD_TEST_APNS_KEY"), "{error}");
}

#[tokio::test]
async fn the_sandbox_config_section_pushes_to_the_sandbox() {
    let sandbox = sandbox(Faults::default()).await;
    let text = config_toml(&sandbox.base_url());
    let document: toml::Value = toml::from_str(&text).unwrap();
    let config: ApnsConfig = document["providers"]["apns"].clone().try_into().unwrap();
    assert_eq!(config.base_url, sandbox.base_url());
    let mut apns = Apns::new(&config).unwrap();
    assert!(matches!(apns.send(&[push(1, TOKEN, "hi")]).await.unwrap()[0], SendOutcome::Delivered { .. }));
    sandbox.shutdown().await;
}
