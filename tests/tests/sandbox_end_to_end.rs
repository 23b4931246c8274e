//! Herald configured by `herald-loadtest sandbox --print-config`, sending through every routed
//! provider of the sandbox over real sockets: APNs, FCM, Web Push, Twilio and SMTP. Also checks,
//! end to end, what only a whole server shows: a push fallback once the only device is dead,
//! Twilio's signed status callbacks turning into `delivered` / `undelivered` events (and a dead
//! number), and the one-click unsubscribe link of a marketing mail recording the opt-out.

mod common;

use common::client::Api;
use common::server::Herald;
use herald_loadtest::sandbox::config::herald_config;
use herald_loadtest::sandbox::{Faults, Sandbox, apns, twilio, webpush};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `ready` holds for the value `probe` returns, or fails with the last value.
async fn eventually<F, Fut>(what: &str, mut probe: F, ready: impl Fn(&Value) -> bool) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let started = Instant::now();
    loop {
        let value = probe().await;
        if ready(&value) {
            return value;
        }
        assert!(started.elapsed() < PATIENCE, "{what} not reached within {PATIENCE:?}; last: {value:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kinds(timeline: &Value) -> Vec<String> {
    let events = timeline["events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .map(|e| match e["route"].as_str() {
            Some(route) => format!("{}:{route}", e["kind"].as_str().unwrap_or_default()),
            None => e["kind"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

async fn timeline(api: &Api, id: &str) -> Value {
    api.timeline(id).await.expect(200, "GET /v1/notifications/{id}").json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routed_provider_receipts_fallback_and_unsubscribe_through_the_sandbox() {
    let sandbox = Sandbox::start_with_smtp(
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
        Faults::default(),
    )
    .await
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let herald_url = format!("http://127.0.0.1:{port}");
    let smtp = sandbox.smtp_addr.unwrap();
    let mut herald = Herald::new(Some(&herald_config(sandbox.local_addr, smtp, Some(&herald_url))));
    herald.serve_on(&format!("127.0.0.1:{port}"));
    sandbox.state.set_callback_url(Some(herald_url));
    let api = herald.api();

    let ios = format!("{:064x}", 0xa11ce_u128);
    let dead_ios = format!("{}{}", apns::UNREGISTERED_PREFIX, "0".repeat(60));
    let web = webpush::test_subscription(&sandbox.base_url(), "sub-1");
    let users = [
        (
            "ada",
            json!({ "email": "ada@example.org", "phone": "+14155550100", "devices": [
            { "id": "i1", "platform": "ios", "token": ios },
            { "id": "a1", "platform": "android", "token": "fcm-token-ada" },
            { "id": "w1", "platform": "web", "token": web } ] }),
        ),
        ("bo", json!({ "phone": "+14155550111", "devices": [{ "id": "i2", "platform": "ios", "token": dead_ios }] })),
        ("cy", json!({ "phone": twilio::UNDELIVERED_NUMBER })),
        ("dee", json!({ "email": "dee@example.org" })),
    ];
    for (id, user) in &users {
        api.put_user(id, user).await.expect(201, "PUT /v1/users");
    }
    let template = json!({ "id": "news", "locale": "en",
        "push": { "title": "News", "body": "Issue {{ n }}" },
        "sms": { "text": "Issue {{ n }}" },
        "email": { "subject": "Issue {{ n }}", "text": "Issue {{ n }}", "html": "<p>Issue {{ n }}</p>" } });
    api.post_template(&template).await.expect(201, "POST /v1/templates");

    let items = [
        json!({ "user_id": "ada", "template": "news", "channels": ["push", "sms", "email"],
                "category": "marketing", "data": { "n": 1 } }),
        json!({ "user_id": "bo", "template": "news", "channels": ["push"], "fallback": ["sms"],
                "category": "transactional", "data": { "n": 2 } }),
        json!({ "user_id": "cy", "template": "news", "channels": ["sms"], "category": "transactional",
                "data": { "n": 3 } }),
        json!({ "user_id": "dee", "template": "news", "channels": ["email"], "category": "transactional",
                "data": { "n": 5 } }),
    ];
    let ids = api.submit_all(&items, 10).await;

    // Every routed provider got its message once: 3 pushes for ada, 1 refused APNs push for
    // bo, SMS for ada, bo's fallback and cy, ada's mail.
    let stats = eventually(
        "every provider's messages",
        || async { serde_json::to_value(sandbox.state.view()).unwrap() },
        |s| s["twilio"]["accepted"] == 3 && s["smtp"]["accepted"] == 2 && s["webpush"]["accepted"] == 1,
    )
    .await;
    assert_eq!(stats["apns"]["accepted"], 1, "{stats:#}");
    assert_eq!(stats["apns"]["rejected"], 1, "bo's dead token: {stats:#}");
    assert_eq!(stats["fcm"]["accepted"], 1, "{stats:#}");
    for provider in ["apns", "fcm", "webpush", "twilio", "smtp"] {
        assert_eq!(stats[provider]["duplicates"], 0, "{provider}: {stats:#}");
    }

    // Twilio's status callbacks came back signed: ada's SMS delivered, cy's undelivered for good.
    let ada =
        eventually("ada's receipt", || timeline(&api, &ids[0]), |t| kinds(t).contains(&"delivered:sms".into())).await;
    for sent in ["sent:apns", "sent:fcm", "sent:webpush", "sent:sms", "sent:email"] {
        assert!(kinds(&ada).contains(&sent.to_string()), "{sent} missing: {:?}", kinds(&ada));
    }
    let cy =
        eventually("cy's receipt", || timeline(&api, &ids[2]), |t| kinds(t).contains(&"undelivered:sms".into())).await;
    assert!(kinds(&cy).contains(&"sent:sms".into()), "{:?}", kinds(&cy));
    let cy_user = api.get("/v1/users/cy").await.expect(200, "GET /v1/users/cy").json;
    assert_eq!(cy_user["unreachable"], json!([twilio::UNDELIVERED_NUMBER]), "{cy_user:#}");

    // bo's only device is dead: the push failed, the address is deactivated, the SMS went instead.
    let bo = timeline(&api, &ids[1]).await;
    assert!(kinds(&bo).contains(&"failed:apns".into()) && kinds(&bo).contains(&"sent:sms".into()), "{:?}", kinds(&bo));
    let bo_user = api.get("/v1/users/bo").await.expect(200, "GET /v1/users/bo").json;
    assert_eq!(bo_user["unreachable"], json!([dead_ios]));

    // The marketing mail offers one-click unsubscribe; posting it records the opt-out.
    let inbox = sandbox.smtp_inbox();
    let mail = inbox.iter().find(|m| m.recipients.iter().any(|r| r.contains("ada@example.org")));
    let mail = mail
        .unwrap_or_else(|| panic!("no mail to ada in {:?}", inbox.iter().map(|m| &m.recipients).collect::<Vec<_>>()));
    assert_eq!(mail.header("List-Unsubscribe-Post"), Some("List-Unsubscribe=One-Click"));
    let link = mail.header("List-Unsubscribe").unwrap().trim().trim_start_matches('<').trim_end_matches('>');
    let http = reqwest::Client::new();
    let forged = http.post(format!("{link}x")).body("List-Unsubscribe=One-Click").send().await.unwrap();
    assert_eq!(forged.status(), 403, "an altered token is refused");
    let page = http.get(link).send().await.unwrap();
    assert!(page.status().is_success() && page.text().await.unwrap().contains("<form method=\"post\""));
    let ada_user = api.get("/v1/users/ada").await.expect(200, "GET /v1/users/ada").json;
    assert_eq!(ada_user["preferences"]["opt_out"]["categories"], json!([]), "a GET records nothing");
    let done = http.post(link).body("List-Unsubscribe=One-Click").send().await.unwrap();
    assert!(done.status().is_success(), "{}", done.status());
    let ada_user = api.get("/v1/users/ada").await.expect(200, "GET /v1/users/ada").json;
    assert_eq!(ada_user["preferences"]["opt_out"]["categories"], json!(["marketing"]));
    let next = api
        .submit_all(
            &[json!({ "user_id": "ada", "template": "news", "channels": ["email"],
        "category": "marketing", "data": { "n": 4 } })],
            10,
        )
        .await;
    eventually(
        "the next marketing mail refused",
        || timeline(&api, &next[0]),
        |t| kinds(t).contains(&"opted_out".into()),
    )
    .await;

    // dee's mailbox does not exist after all: the mail system's bounce (RFC 3464), posted with a
    // `send` key, records the bounce and deactivates the address.
    let inbox = sandbox.smtp_inbox();
    let to_dee = inbox.iter().find(|m| m.recipients.iter().any(|r| r.contains("dee@example.org"))).unwrap();
    let delivery = to_dee.header("X-Herald-Delivery-Id").unwrap().to_string();
    let bounce = dsn("dee@example.org", &delivery);
    let unauthenticated = http.post(format!("{}/v1/receipts/smtp", herald.url())).body(bounce.clone()).send().await;
    assert_eq!(unauthenticated.unwrap().status(), 401);
    let reply = api.send(api.request(reqwest::Method::POST, "/v1/receipts/smtp").body(bounce)).await;
    assert_eq!(reply.expect(200, "POST /v1/receipts/smtp").json["recorded"], 1);
    let dee = timeline(&api, &ids[3]).await;
    assert!(kinds(&dee).contains(&"bounced:email".into()), "{:?}", kinds(&dee));
    let dee_user = api.get("/v1/users/dee").await.expect(200, "GET /v1/users/dee").json;
    assert_eq!(dee_user["unreachable"], json!(["dee@example.org"]));

    herald.stop();
    sandbox.shutdown().await;
}

/// A Postfix-style bounce of the mail with `delivery` to `to`: mailbox unknown (5.1.1).
fn dsn(to: &str, delivery: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.org\r\nTo: no-reply@herald.example\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n\
         Final-Recipient: rfc822; {to}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n\
         --b1\r\nContent-Type: text/rfc822-headers\r\n\r\nTo: {to}\r\nX-Herald-Delivery-Id: {delivery}\r\n\r\n\
         --b1--\r\n"
    )
}
