//! Retries against failing providers: Herald configured by `herald-loadtest sandbox
//! --print-config`, the sandbox refusing 30% of requests on every provider (503 or the provider's
//! own "unavailable", 429 with Retry-After, requests held past Herald's timeout; SMTP 421/451 and
//! held replies). 20,000 notifications over all five routed providers (APNs, FCM, Web Push,
//! Twilio, SMTP) are all delivered within 3 minutes, once each, with an empty dead-letter queue:
//! the default retry policy and breaker make this hold.

mod common;

use common::server::Herald;
use herald_loadtest::sandbox::config::herald_config;
use herald_loadtest::sandbox::{Faults, Sandbox, webpush};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const USERS: usize = 300;
const NOTIFICATIONS: usize = 20_000;
const DEADLINE: Duration = Duration::from_secs(180);
/// Herald's provider timeout, below the sandbox's hold so held requests time out, and well
/// above the time an accepted request's answer can take on a loaded 2-core machine (an answer
/// lost to the timeout is a resend the sandbox counts as a duplicate).
const TIMEOUT: &str = "3s";
const HOLD: Duration = Duration::from_secs(4);

/// The printed configuration with `timeout` set in every provider section, and room for the
/// held requests: each occupies its slot (an HTTP request in flight, an SMTP connection) for the
/// whole timeout, as a provider that hangs does in production, where one would raise these too.
fn with_timeouts(config: &str) -> String {
    let mut out = String::new();
    for line in config.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("[providers.") && !line.contains(".auth]") {
            out.push_str(&format!("timeout = \"{TIMEOUT}\"\n"));
        }
        match line {
            "[providers.smtp]" => out.push_str("max_connections = 32\n"),
            "[providers.apns]" | "[providers.fcm]" | "[providers.webpush]" | "[providers.twilio]" => {
                out.push_str("max_concurrency = 256\n")
            }
            _ => {}
        }
    }
    out
}

/// The provider each of user `u`'s notifications on `channel` goes to.
fn provider(u: usize, channel: &str) -> &'static str {
    match channel {
        "sms" => "twilio",
        "email" => "smtp",
        _ => ["apns", "fcm", "webpush"][u % 3],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_failures_on_every_provider_deliver_everything_once() {
    let faults = Faults { fail_rate: 0.3, hold: HOLD, ..Faults::default() };
    let smtp = Some("127.0.0.1:0".parse().unwrap());
    let sandbox = Sandbox::start_with_smtp("127.0.0.1:0".parse().unwrap(), smtp, faults).await.unwrap();
    let config = with_timeouts(&herald_config(sandbox.local_addr, sandbox.smtp_addr.unwrap(), None));
    let mut herald = Herald::start(Some(&config));
    let api = herald.api();

    // One device per user, its platform by user number, and a phone and an email.
    for u in 0..USERS {
        let (platform, token) = match u % 3 {
            0 => ("ios", format!("{u:064x}")),
            1 => ("android", format!("fcm-token-{u}")),
            _ => ("web", webpush::test_subscription(&sandbox.base_url(), &format!("sub-{u}"))),
        };
        let user = json!({ "phone": format!("+1415555{u:04}"), "email": format!("u{u}@example.org"),
                           "devices": [{ "id": "d", "platform": platform, "token": token }] });
        api.put_user(&format!("u{u}"), &user).await.expect(201, "PUT /v1/users");
    }
    let template = json!({ "id": "otp", "locale": "en",
        "push": { "title": "Code", "body": "Your code is {{ code }}" },
        "sms": { "text": "Your code is {{ code }}" },
        "email": { "subject": "Code", "text": "Your code is {{ code }}", "html": "<p>{{ code }}</p>" } });
    api.post_template(&template).await.expect(201, "POST /v1/templates");

    // The daily mix, 10:1:5 push:SMS:email.
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    let items: Vec<_> = (0..NOTIFICATIONS)
        .map(|i| {
            let u = i % USERS;
            let channel = match i % 16 {
                0..=9 => "push",
                10 => "sms",
                _ => "email",
            };
            *expected.entry(provider(u, channel)).or_default() += 1;
            json!({ "user_id": format!("u{u}"), "template": "otp", "channels": [channel],
                    "category": "transactional", "idempotency_key": format!("retry-{i}"), "data": { "code": i } })
        })
        .collect();
    let started = Instant::now();
    api.submit_all(&items, 1_000).await;

    let accepted = |p: &str| sandbox.state.view()[p].accepted;
    while expected.iter().any(|(p, n)| accepted(p) < *n) && started.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    // Give a duplicate the chance to show before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = sandbox.state.view();
    println!("{NOTIFICATIONS} notifications through 30%-failing providers in {elapsed:?}: {stats:?}");
    for (provider, n) in &expected {
        let s = stats[provider];
        assert_eq!(s.accepted, *n, "{provider}: not all delivered within {DEADLINE:?}: {s:?}");
        assert_eq!(s.duplicates, 0, "{provider}: {s:?}");
        assert!(s.rejected > n / 10, "{provider} did fail: {s:?}");
    }

    herald.stop();
    let out = herald.command(&["dlq", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "the DLQ is not empty");
    sandbox.shutdown().await;
}
