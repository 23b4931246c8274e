//! Time, end to end through the real binary: `send_at` across a SIGKILL and `DELETE`, expiry of
//! what waited too long, digests, and quiet hours in the user's time zone.
//!
//! These run on the wall clock with windows of seconds; the exact rules (DST, window edges, the
//! hold and digest state machines) are tested on a fake clock beside the code
//! (`stages/src/quiet.rs`, `stages/src/digest.rs`, `connectors/src/embedded/schedule.rs`).

mod common;

use common::client::{Api, accepted_id};
use common::outbox::{Outbox, TornTail};
use common::server::Herald;
use herald_schemas::ChannelKind;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64).expect("a time in range").to_string()
}

async fn setup(api: &Api, users: usize) {
    for u in 0..users {
        let user = json!({ "phone": format!("+1555000{u:04}"), "timezone": "UTC" });
        api.put_user(&format!("u{u}"), &user).await.expect(201, "PUT user");
    }
    for (id, text) in [
        ("remind", "Reminder {{ n }}"),
        ("comment", "{{ who }} commented"),
        ("comment_digest", "{{ count }} new comments: {% for i in items %}{{ i.who }};{% endfor %}"),
    ] {
        api.post_template(&json!({ "id": id, "locale": "en", "sms": { "text": text } }))
            .await
            .expect(201, "POST template");
    }
}

fn sms(user: usize, template: &str, data: Value) -> Value {
    json!({ "user_id": format!("u{user}"), "template": template, "channels": ["sms"], "data": data })
}

async fn submit_one(api: &Api, item: Value) -> String {
    let results = api.submit(&[item]).await;
    accepted_id(&results[0]).unwrap_or_else(|| panic!("not accepted: {}", results[0]))
}

async fn delete(api: &Api, id: &str) -> common::client::Reply {
    api.send(api.request(Method::DELETE, &format!("/v1/notifications/{id}"))).await
}

async fn event_kinds(api: &Api, id: &str) -> Vec<String> {
    let reply = api.timeline(id).await.expect(200, "GET timeline");
    reply.json["events"].as_array().into_iter().flatten().filter_map(|e| e["kind"].as_str().map(String::from)).collect()
}

/// Waits until the SMS outbox holds `count` lines (then a grace period for late duplicates).
async fn outbox_sms(herald: &Herald, count: usize, within: Duration) -> Outbox {
    let deadline = Instant::now() + within;
    loop {
        let outbox = Outbox::read(herald.data_dir(), TornTail::Tolerate);
        if outbox.count(ChannelKind::Sms) >= count {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Outbox::read(herald.data_dir(), TornTail::Tolerate);
        }
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {count} SMS, have {}",
            outbox.count(ChannelKind::Sms)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn written_at(line: &common::outbox::Delivered) -> u64 {
    line.json["written_at_ms"].as_u64().expect("outbox lines say when they were written")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_notifications_go_once_at_their_time_across_a_sigkill_and_cancelled_ones_never() {
    const N: usize = 30;
    const CANCELLED: usize = 6;
    let mut herald = Herald::start(None);
    let api = herald.api();
    setup(&api, 10).await;

    let start = now_ms();
    let send_at: Vec<u64> = (0..N).map(|i| start + 4_000 + (i as u64 % 5) * 500).collect();
    let items: Vec<Value> = (0..N)
        .map(|i| {
            let mut item = sms(i % 10, "remind", json!({ "n": i }));
            item["send_at"] = json!(rfc3339(send_at[i]));
            item
        })
        .collect();
    let ids = api.submit_all(&items, 10).await;
    assert_eq!(event_kinds(&api, &ids[0]).await, ["accepted", "scheduled"]);

    // Cancel some: once, again (still cancelled), never another client's, never an unknown id.
    for id in &ids[..CANCELLED] {
        let reply = delete(&api, id).await.expect(200, "DELETE a scheduled notification");
        assert_eq!(reply.json["status"], "cancelled");
    }
    delete(&api, &ids[0]).await.expect(200, "DELETE twice");
    let minted = api.create_key("another-client", &["send"]).await.expect(201, "POST /v1/keys");
    let other = api.with_key(minted.json["key"].as_str());
    delete(&other, &ids[CANCELLED]).await.expect_error(404, "DELETE by another client");
    delete(&api, "no-such-notification").await.expect_error(404, "DELETE of an unknown id");

    // SIGKILL while they wait, and come back.
    herald.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    herald.serve();
    let api = herald.api();

    let outbox = outbox_sms(&herald, N - CANCELLED, Duration::from_secs(60)).await;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for line in &outbox.lines {
        *seen.entry(line.notification_id()).or_default() += 1;
        let i = ids.iter().position(|id| id == line.notification_id()).expect("a notification of this test");
        assert!(i >= CANCELLED, "cancelled notification {} was sent", ids[i]);
        assert!(written_at(line) >= send_at[i], "sent {} ms before its send_at", send_at[i] - written_at(line));
        assert_eq!(line.body(), format!("Reminder {i}"));
    }
    assert_eq!(seen.len(), N - CANCELLED, "every scheduled notification that was not cancelled");
    assert!(seen.values().all(|&n| n == 1), "each once: {seen:?}");
    for id in &ids[..CANCELLED] {
        assert!(event_kinds(&api, id).await.contains(&"cancelled".to_string()));
    }
    // Too late to cancel once sent.
    delete(&api, &ids[N - 1]).await.expect_error(409, "DELETE of a released notification");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_expires_while_it_waits_is_not_sent_and_says_expired() {
    let mut herald = Herald::start(None);
    let api = herald.api();
    setup(&api, 3).await;
    let start = now_ms();
    let mut stale = sms(0, "remind", json!({ "n": "stale" }));
    stale["expires_at"] = json!(rfc3339(start - 1_000));
    let mut waits = sms(1, "remind", json!({ "n": "waits" }));
    waits["send_at"] = json!(rfc3339(start + 2_000));
    waits["expires_at"] = json!(rfc3339(start + 3_000));
    let mut control = sms(2, "remind", json!({ "n": "control" }));
    control["send_at"] = json!(rfc3339(start + 2_000));
    control["ttl"] = json!("1h");
    let ids = api.submit_all(&[stale, waits, control], 10).await;

    // Down past the expiry: the scheduler releases both late, and only the one with time left goes.
    herald.kill();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    herald.serve();
    let api = herald.api();
    let outbox = outbox_sms(&herald, 1, Duration::from_secs(30)).await;
    let sent: Vec<&str> = outbox.lines.iter().map(|l| l.notification_id()).collect();
    assert_eq!(sent, [ids[2].as_str()]);
    for id in &ids[..2] {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !event_kinds(&api, id).await.contains(&"expired".to_string()) {
            assert!(Instant::now() < deadline, "no expired event for {id}: {:?}", event_kinds(&api, id).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let reply = api
        .submit(&[json!({ "user_id": "u0", "template": "remind", "channels": ["sms"],
        "send_at": rfc3339(start + 60_000), "expires_at": rfc3339(start + 30_000) })])
        .await;
    assert_eq!(reply[0]["status"], "rejected", "an expiry before the send time: {}", reply[0]);
}

/// The digest a notification joined (its `digested` event's reason).
async fn digest_of(api: &Api, id: &str) -> String {
    let reply = api.timeline(id).await.expect(200, "GET timeline");
    let events = reply.json["events"].as_array().cloned().unwrap_or_default();
    let digested = events.iter().find(|e| e["kind"] == "digested").unwrap_or_else(|| panic!("{id}: {events:?}"));
    digested["reason"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_notifications_of_one_key_make_one_digest_and_after_the_window_a_new_one() {
    let herald = Herald::start(None);
    let api = herald.api();
    setup(&api, 2).await;
    let digest = |user: usize, key: &str, who: &str| {
        let mut item = sms(user, "comment", json!({ "who": who }));
        item["digest"] = json!({ "key": key, "window": "3s", "template": "comment_digest" });
        item
    };
    let mut first = Vec::new();
    for who in ["ann", "bob", "cy", "di", "ed"] {
        first.push(submit_one(&api, digest(0, "post-1", who)).await);
    }
    let other_key = submit_one(&api, digest(0, "post-2", "zed")).await;
    let other_user = submit_one(&api, digest(1, "post-1", "yu")).await;

    let outbox = outbox_sms(&herald, 3, Duration::from_secs(30)).await;
    let lines: Vec<(String, String)> =
        outbox.lines.iter().map(|l| (l.notification_id().to_string(), l.body().to_string())).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let digest_id = digest_of(&api, &first[0]).await;
    for id in &first {
        assert_eq!(digest_of(&api, id).await, digest_id, "the five fold into one digest");
    }
    let body_of = |id: &str| lines.iter().find(|(n, _)| n == id).map(|(_, b)| b.clone());
    assert_eq!(body_of(&digest_id).as_deref(), Some("5 new comments: ann;bob;cy;di;ed;"));
    assert_eq!(body_of(&digest_of(&api, &other_key).await).as_deref(), Some("1 new comments: zed;"));
    assert_eq!(body_of(&digest_of(&api, &other_user).await).as_deref(), Some("1 new comments: yu;"));

    // After the window: a new digest.
    let late = [submit_one(&api, digest(0, "post-1", "fay")).await, submit_one(&api, digest(0, "post-1", "gus")).await];
    let outbox = outbox_sms(&herald, 4, Duration::from_secs(30)).await;
    let second = digest_of(&api, &late[0]).await;
    assert_ne!(second, digest_id);
    assert_eq!(digest_of(&api, &late[1]).await, second);
    let last = outbox.lines.iter().find(|l| l.notification_id() == second).expect("the second digest was sent");
    assert_eq!(last.body(), "2 new comments: fay;gus;");
    assert_eq!(outbox.count(ChannelKind::Sms), 4, "nothing else was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_the_users_quiet_hours_a_notification_waits_for_their_end_and_transactional_does_not() {
    let herald = Herald::start(None);
    let api = herald.api();
    setup(&api, 1).await;
    // The window: from an hour ago to four seconds from now, on Seoul's and New York's clocks.
    for (user, tz) in [("seoul", "Asia/Seoul"), ("nyc", "America/New_York")] {
        let zone = jiff::tz::TimeZone::get(tz).unwrap();
        let local = |ms: u64| jiff::Timestamp::from_millisecond(ms as i64).unwrap().to_zoned(zone.clone()).time();
        let now = now_ms();
        let window = json!({ "start": local(now - 3_600_000).strftime("%H:%M:%S").to_string(),
                             "end": local(now + 4_000).strftime("%H:%M:%S").to_string() });
        let body = json!({ "phone": "+15550009999", "timezone": tz, "preferences": { "quiet_hours": window } });
        api.put_user(user, &body).await.expect(201, "PUT user with quiet hours");
    }
    let submitted = now_ms();
    let mut ids = Vec::new();
    for user in ["seoul", "nyc"] {
        let quiet = json!({ "user_id": user, "template": "remind", "channels": ["sms"], "data": { "n": user } });
        let mut otp = quiet.clone();
        otp["category"] = json!("transactional");
        ids.push((submit_one(&api, quiet).await, submit_one(&api, otp).await));
    }
    // Transactional goes through at once; the others wait.
    let outbox = outbox_sms(&herald, 2, Duration::from_secs(20)).await;
    let early: HashSet<&str> = outbox.lines.iter().map(|l| l.notification_id()).collect();
    assert_eq!(early, ids.iter().map(|(_, otp)| otp.as_str()).collect());
    for (quiet, _) in &ids {
        assert_eq!(event_kinds(&api, quiet).await, ["accepted", "deferred"]);
    }
    let outbox = outbox_sms(&herald, 4, Duration::from_secs(30)).await;
    assert_eq!(outbox.count(ChannelKind::Sms), 4);
    for (quiet, _) in &ids {
        let lines = outbox.of(quiet);
        assert_eq!(lines.len(), 1, "deferred, then sent once");
        // The window ended 4 s after it was set up, on the second; not before.
        assert!(written_at(lines[0]) >= submitted + 3_000, "sent before the end of the quiet hours");
    }
}
