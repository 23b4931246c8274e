//! Provider failover end to end: SMS routed to `["twilio", "vonage"]` and email to
//! `["smtp", "sendgrid"]`, with Twilio and the SMTP server unreachable. The first failures are
//! retried; once each first provider's breaker opens, the retries and everything after go to
//! the second provider. Every message arrives there exactly once, and the signed receipts the
//! sandbox then posts (Vonage DLRs, SendGrid events) become `delivered` events.

mod common;

use common::server::Herald;
use herald_loadtest::sandbox::{Faults, Sandbox, sendgrid, vonage};
use serde_json::json;
use std::time::{Duration, Instant};

const USERS: usize = 20;
const NOTIFICATIONS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_first_providers_breaker_is_open_the_next_one_sends() {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let base = sandbox.base_url();
    // A port nothing listens on: connections are refused, a retryable failure.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        r#"[channels]
sms = ["twilio", "vonage"]
email = ["smtp", "sendgrid"]

[breaker]
min_requests = 5
cooldown = "10m"

[providers.twilio]
account_sid = "ACsandbox"
auth_token = "t"
from = "+15005550006"
base_url = "http://{dead}"
timeout = "1s"

[providers.vonage]
api_key = "{vonage_key}"
api_secret = "{vonage_secret}"
from = "Herald"
base_url = "{base}"
segments_per_second = 100000
signature_secret = "{vonage_signature}"

[providers.smtp]
url = "smtp://{dead}"
from = "Herald <no-reply@herald.example>"
timeout = "1s"

[providers.sendgrid]
api_key = "{sendgrid_key}"
from = "Herald <no-reply@herald.example>"
base_url = "{base}"
event_webhook_key = "{sendgrid_webhook_key}"
"#,
        vonage_key = vonage::API_KEY,
        vonage_secret = vonage::API_SECRET,
        vonage_signature = vonage::SIGNATURE_SECRET,
        sendgrid_key = sendgrid::API_KEY,
        sendgrid_webhook_key = sendgrid::EVENT_WEBHOOK_PUBLIC_KEY,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut herald = Herald::new(Some(&config));
    herald.serve_on(&format!("127.0.0.1:{port}"));
    sandbox.state.set_callback_url(Some(format!("http://127.0.0.1:{port}")));
    let api = herald.api();
    for u in 0..USERS {
        let user = json!({ "phone": format!("+1415555{u:04}"), "email": format!("u{u}@example.org") });
        api.put_user(&format!("u{u}"), &user).await.expect(201, "PUT /v1/users");
    }
    let template = json!({ "id": "otp", "locale": "en", "sms": { "text": "Code {{ code }}" },
        "email": { "subject": "Code", "text": "Code {{ code }}", "html": "<p>Code {{ code }}</p>" } });
    api.post_template(&template).await.expect(201, "POST /v1/templates");
    let items: Vec<_> = (0..NOTIFICATIONS)
        .map(|i| {
            json!({ "user_id": format!("u{}", i % USERS), "template": "otp", "channels": ["sms", "email"],
                    "category": "transactional", "data": { "code": i } })
        })
        .collect();
    let started = Instant::now();
    let ids = api.submit_all(&items, 20).await;

    loop {
        let stats = sandbox.state.view();
        if stats["vonage"].accepted >= NOTIFICATIONS as u64 && stats["sendgrid"].accepted >= NOTIFICATIONS as u64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "not all failed over within 2 minutes: {stats:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let anything still in flight land, then check nothing arrived twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = sandbox.state.view();
    for provider in ["vonage", "sendgrid"] {
        assert_eq!(stats[provider].accepted, NOTIFICATIONS as u64, "{provider}: {stats:?}");
        assert_eq!(stats[provider].duplicates, 0, "{provider}: {stats:?}");
    }
    println!("failed over in {:?}: {stats:?}", started.elapsed());

    // The receipts came back signed, through Herald's API: each notification's SMS and mail are
    // reported delivered.
    let receipts = Instant::now();
    for id in &ids {
        loop {
            let reply = api.timeline(id).await.expect(200, "GET /v1/notifications/{id}");
            let events = reply.json["events"].as_array().cloned().unwrap_or_default();
            let delivered = |route: &str| events.iter().any(|e| e["kind"] == "delivered" && e["route"] == route);
            if delivered("sms") && delivered("email") {
                break;
            }
            assert!(receipts.elapsed() < Duration::from_secs(30), "no receipts for {id}: {events:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let dead_letters = herald_dlq_count(&mut herald);
    assert_eq!(dead_letters, 0, "nothing was given up");
    sandbox.shutdown().await;
}

/// Dead letters, counted with `herald dlq list` once the server is stopped.
fn herald_dlq_count(herald: &mut Herald) -> usize {
    herald.stop();
    let out = herald.command(&["dlq", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim_start().starts_with('{')).count()
}
