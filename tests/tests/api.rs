//! The HTTP API and binary contract, case by case, against a real `herald serve`: authentication and
//! scopes (checked before the body is read), refused bodies, per-item rejections beside accepted
//! items, validation of contacts and templates, health, metrics, the timeline, key management, and a
//! clean SIGTERM.

mod common;

use common::client::{Api, accepted_id, batch_results};
use common::outbox::Outbox;
use common::outbox::{TornTail, wait_for_lines};
use common::population::{Contact, Device, Target, channel_names};
use common::server::Herald;
use herald_schemas::{ChannelKind, TRANSACTIONAL};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const TEMPLATE: &str = "note";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// A user reachable on every channel, with one inactive device that must never be used.
fn reachable_user(id: &str) -> Contact {
    let device = |n: usize, platform: &'static str, active: bool| Device {
        id: format!("d{n}"),
        platform,
        token: format!("{platform}-{id}-{n}"),
        active,
    };
    Contact {
        id: id.to_string(),
        email: Some(format!("{id}@example.com")),
        phone: Some("+821012345678".to_string()),
        locale: Some("en".to_string()),
        timezone: Some("Asia/Seoul".to_string()),
        devices: vec![device(1, "ios", true), device(2, "android", true), device(3, "web", false)],
        ..Contact::default()
    }
}

fn template(id: &str) -> Value {
    json!({
        "id": id, "locale": "en",
        "push": { "title": "Note", "body": "{{ n }}" },
        "sms": { "text": "{{ n }}" },
        "email": { "subject": "Note", "text": "{{ n }}", "html": "<p>{{ n }}</p>" },
    })
}

fn item(user: &str, n: &str) -> Value {
    json!({
        "user_id": user, "template": TEMPLATE, "data": { "n": n },
        "channels": channel_names(&ChannelKind::ALL), "category": TRANSACTIONAL, "idempotency_key": n,
    })
}

/// A server with user `u1` and the template, ready to send.
async fn setup(herald: &Herald) -> Contact {
    let api = herald.api();
    let user = reachable_user("u1");
    api.put_user(&user.id, &user.to_json()).await.expect(201, "PUT a new user");
    api.post_template(&template(TEMPLATE)).await.expect(201, "POST a new template");
    user
}

/// The outbox lines per target of each notification, checked against `expected` once delivery settles.
async fn assert_delivered(herald: &Herald, expected: &[(&str, Vec<Target>)]) -> Outbox {
    let total = expected.iter().map(|(_, t)| t.len()).sum();
    let settled = wait_for_lines(herald.data_dir(), total, DELIVERY_TIMEOUT).await;
    let outbox = Outbox::read(herald.data_dir(), TornTail::Tolerate);
    let mut got = BTreeSet::new();
    for line in &outbox.lines {
        let fresh = got.insert((line.notification_id().to_string(), line.file, line.target().to_string()));
        assert!(fresh, "delivered twice: {}", line.json);
    }
    let want: BTreeSet<_> = expected
        .iter()
        .flat_map(|(id, targets)| targets.iter().map(|t| (id.to_string(), t.channel, t.address.clone())))
        .collect();
    assert_eq!(
        got,
        want,
        "outbox after {:?}: {} lines, expected {total} (missing {:?}, unexpected {:?})",
        settled.waited,
        outbox.len(),
        want.difference(&got).collect::<Vec<_>>(),
        got.difference(&want).collect::<Vec<_>>()
    );
    outbox
}

/// Polls the timeline until it holds `want` events of each kind (or fails after a bound).
async fn timeline_with(api: &Api, id: &str, want: &[(&str, usize)]) -> Value {
    let started = Instant::now();
    loop {
        let reply = api.timeline(id).await.expect(200, "GET /v1/notifications/{id}");
        assert_eq!(reply.json["id"], json!(id), "the timeline names its notification: {}", reply.text);
        let events = reply.json["events"].as_array().unwrap_or_else(|| panic!("no events array: {}", reply.text));
        let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
        if want.iter().all(|&(kind, n)| count(kind) == n) {
            return reply.json;
        }
        assert!(
            started.elapsed() < DELIVERY_TIMEOUT,
            "timeline of {id}: expected event counts {want:?} within {DELIVERY_TIMEOUT:?}, got {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_scopes_are_checked_before_the_body() {
    let mut herald = Herald::new(None);
    let send_key = herald.create_key(&["send"], "sender");
    let contacts_key = herald.create_key(&["contacts", "templates"], "editor");
    herald.serve();
    let admin = herald.api();
    let user = reachable_user("u1");
    let body = user.to_json();

    let anonymous = admin.with_key(None);
    anonymous.put_user("u1", &body).await.expect_error(401, "PUT /v1/users without a key");
    admin.with_key(Some("hk_unknown_0000000000")).put_user("u1", &body).await.expect_error(401, "an unknown key");
    let sender = admin.with_key(Some(&send_key));
    sender.put_user("u1", &body).await.expect_error(403, "a send-only key on PUT /v1/users");
    sender.post_template(&template(TEMPLATE)).await.expect_error(403, "a send-only key on POST /v1/templates");
    sender.create_key("x", &["send"]).await.expect_error(403, "a send-only key on POST /v1/keys");

    // A body that does not parse must not matter: authentication and scope come first.
    let garbage = |api: &Api, method: Method, path: &str| api.request(method, path).body("{not json");
    anonymous
        .send(garbage(&anonymous, Method::POST, "/v1/notifications"))
        .await
        .expect_error(401, "malformed body without a key");
    let editor = admin.with_key(Some(&contacts_key));
    editor
        .send(garbage(&editor, Method::POST, "/v1/notifications"))
        .await
        .expect_error(403, "malformed body with a key lacking `send`");
    sender.send(garbage(&sender, Method::PUT, "/v1/users/u1")).await.expect_error(403, "malformed body, no `contacts`");
    editor.timeline("00000000-0000-7000-8000-000000000000").await.expect_error(403, "timeline without `send`");

    // The scoped keys do work where they are allowed.
    editor.put_user("u1", &body).await.expect(201, "PUT a new user with a contacts key");
    admin.put_user("u1", &body).await.expect(200, "PUT the same user again with the admin key");
    editor.post_template(&template(TEMPLATE)).await.expect(201, "POST a template with a templates key");
    let results = sender.submit(&[item("u1", "auth-1")]).await;
    assert_eq!(results[0]["status"], "accepted", "a send key submits: {}", results[0]);
    herald.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bodies_are_refused_whole() {
    let mut herald = Herald::start(None);
    let user = setup(&herald).await;
    let api = herald.api();
    let post = |body: Vec<u8>| {
        api.request(Method::POST, "/v1/notifications").header("content-type", "application/json").body(body)
    };

    api.send(post(b"{\"notifications\": [".to_vec())).await.expect_error(400, "malformed JSON");
    let mut invalid_utf8 = serde_json::to_vec(&json!({ "notifications": [item("u1", "utf8-XX")] })).unwrap();
    let at = invalid_utf8.windows(2).position(|w| w == b"XX").expect("marker");
    invalid_utf8[at] = 0xff;
    invalid_utf8[at + 1] = 0xfe;
    api.send(post(invalid_utf8)).await.expect_error(400, "invalid UTF-8");

    let mut big = item("u1", "big");
    big["data"]["pad"] = json!("x".repeat(1 << 20));
    let body = serde_json::to_vec(&json!({ "notifications": [big] })).unwrap();
    assert!(body.len() > 1 << 20);
    api.send(post(body)).await.expect_error(413, "a body over 1 MiB");

    let too_many: Vec<Value> = (0..1001).map(|i| item("u1", &format!("many-{i}"))).collect();
    let body = serde_json::to_vec(&json!({ "notifications": too_many })).unwrap();
    assert!(body.len() < 1 << 20, "the 1,001-item body must stay under the size limit");
    api.send(post(body)).await.expect_error(400, "1,001 items");
    api.send(post(br#"{"notifications": []}"#.to_vec())).await.expect_error(400, "0 items");
    api.send(post(br#"{"notifications": "u1"}"#.to_vec())).await.expect_error(400, "notifications not an array");

    // The refused requests were for u1; delivery per user follows request order, so once a later
    // notification to u1 is delivered, anything of theirs would be too. Only the later one is.
    let results = api.submit(&[item("u1", "after")]).await;
    let id = accepted_id(&results[0]).expect("a valid item is accepted");
    let outbox = assert_delivered(&herald, &[(&id, user.targets(&ChannelKind::ALL, TRANSACTIONAL))]).await;
    assert!(outbox.lines.iter().all(|l| l.body() == "after"), "only the valid request is delivered");
    herald.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_items_leave_the_rest_of_the_batch_alone() {
    let mut herald = Herald::start(None);
    let user = setup(&herald).await;
    let api = herald.api();

    let mut wrong_type = item("u1", "wrong-type");
    wrong_type["user_id"] = json!(123);
    let mut unknown_template = item("u1", "unknown-template");
    unknown_template["template"] = json!("no_such_template");
    let mut unknown_channel = item("u1", "unknown-channel");
    unknown_channel["channels"] = json!(["push", "fax"]);
    let mut missing_user = item("u1", "missing-user");
    missing_user.as_object_mut().unwrap().remove("user_id");
    let mut data_not_object = item("u1", "data-not-object");
    data_not_object["data"] = json!("n");
    let batch = vec![
        item("u1", "first"),
        wrong_type,
        unknown_template,
        unknown_channel,
        missing_user,
        data_not_object,
        item("u1", "last"),
    ];
    let reply = api.try_submit(&batch).await.expect("submit").expect(202, "a batch with some bad items");
    let results = batch_results(&reply, batch.len());
    let accepted: Vec<Option<String>> = results.iter().map(accepted_id).collect();
    for (i, result) in results.iter().enumerate().skip(1).take(batch.len() - 2) {
        assert_eq!(result["status"], "rejected", "item {i} ({}) must be rejected: {result}", batch[i]);
        let code = result.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
        let message = result.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
        assert!(!code.is_empty() && !message.is_empty(), "item {i}: a rejection carries code and message: {result}");
    }
    let first = accepted[0].clone().unwrap_or_else(|| panic!("the first valid item is accepted: {}", results[0]));
    let last = accepted[6].clone().unwrap_or_else(|| panic!("the last valid item is accepted: {}", results[6]));
    assert_ne!(first, last, "each accepted item has its own id");

    let targets = user.targets(&ChannelKind::ALL, TRANSACTIONAL);
    assert_eq!(targets.len(), 4, "two active devices, a phone and an email");
    let outbox = assert_delivered(&herald, &[(&first, targets.clone()), (&last, targets)]).await;
    for line in &outbox.lines {
        let want = if line.notification_id() == first { "first" } else { "last" };
        assert_eq!(line.body(), want, "rendered body of {}", line.json);
        assert_eq!(line.str("/channel"), line.file.as_str(), "channel field matches the file: {}", line.json);
        assert_eq!(line.str("/user_id"), "u1");
        if line.file == ChannelKind::Push {
            assert_eq!(Some(line.content("platform")), user.platform_of(line.target()), "{}", line.json);
        }
    }
    herald.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_and_templates_are_validated() {
    let mut herald = Herald::start(None);
    let api = herald.api();
    let user = reachable_user("u2");
    api.put_user("u2", &user.to_json()).await.expect(201, "PUT a new user");
    api.put_user("u2", &user.to_json()).await.expect(200, "PUT replaces a user");
    for (field, bad) in [
        ("phone", "12345"),
        ("phone", "+1"),
        ("phone", "+82 10 1234 5678 ext"),
        ("email", "not-an-email"),
        ("email", "a@"),
        ("timezone", "Mars/Olympus_Mons"),
    ] {
        let mut body = user.to_json();
        body[field] = json!(bad);
        api.put_user("u3", &body).await.expect_error(400, &format!("PUT /v1/users with {field} {bad:?}"));
    }

    api.post_template(&template("t1")).await.expect(201, "a new template");
    api.post_template(&template("t1")).await.expect(200, "the same template id and locale again");
    for (part, pointer, broken) in [
        ("push.title", "/push/title", "{{ unclosed"),
        ("sms.text", "/sms/text", "{% if %}"),
        ("email.html", "/email/html", "<p>{{ n | }}</p>"),
    ] {
        let mut body = template("t2");
        *body.pointer_mut(pointer).unwrap() = json!(broken);
        let reply = api.post_template(&body).await.expect_error(400, &format!("a template with a broken {part}"));
        assert!(reply.error_message().contains(part), "the error must name {part}: {}", reply.text);
    }
    herald.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_timeline_and_keys() {
    let mut herald = Herald::start(None);
    let user = setup(&herald).await;
    let api = herald.api();
    let anonymous = api.with_key(None);
    anonymous.get("/healthz").await.expect(200, "GET /healthz");

    let results = api.submit(&[item("u1", "timeline")]).await;
    let id = accepted_id(&results[0]).expect("accepted");
    let targets = user.targets(&ChannelKind::ALL, TRANSACTIONAL);
    assert_delivered(&herald, &[(&id, targets.clone())]).await;
    // One `accepted` for the notification, one `sent` per delivery.
    timeline_with(&api, &id, &[("accepted", 1), ("sent", targets.len())]).await;
    api.timeline("00000000-0000-7000-8000-000000000000").await.expect_error(404, "timeline of an unknown id");
    api.timeline("no-such-notification").await.expect_error(404, "timeline of a malformed id");

    let metrics = anonymous.get("/metrics").await.expect(200, "GET /metrics");
    assert!(metrics.text.contains("herald_"), "/metrics must expose herald_ metrics:\n{}", metrics.text);
    // The monitor samples the embedded store's health with the offsets.
    for gauge in [
        "herald_store_sealed_memtables{keyspace=\"records\"}",
        "herald_store_write_buffer_bytes",
        "herald_store_memtables_reaped_total",
    ] {
        assert!(metrics.text.contains(gauge), "/metrics must expose {gauge}:\n{}", metrics.text);
    }

    let minted = api.create_key("minted", &["send"]).await.expect(201, "POST /v1/keys");
    let key = minted.json["key"].as_str().unwrap_or_else(|| panic!("no key in {}", minted.text)).to_string();
    let minted = api.with_key(Some(&key));
    let results = minted.submit(&[item("u1", "minted")]).await;
    assert!(accepted_id(&results[0]).is_some(), "the minted key sends: {}", results[0]);
    minted.put_user("u1", &user.to_json()).await.expect_error(403, "the minted send key on PUT /v1/users");

    let out = herald.keys_create(&["send"], "offline");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "`herald keys create` must fail while a server holds the data dir: {said}");
    let points_to_api = said.to_lowercase().contains("api") || said.contains("/v1/keys");
    assert!(points_to_api, "the failure must point to the API (POST /v1/keys), it said: {said}");
    herald.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_restart_delivers_the_rest_once() {
    let mut herald = Herald::start(None);
    let user = setup(&herald).await;
    let items: Vec<Value> = (0..300).map(|i| item("u1", &format!("term-{i}"))).collect();
    let ids = herald.api().submit_all(&items, 100).await;
    herald.stop();
    Outbox::read(herald.data_dir(), TornTail::Forbid);

    herald.serve();
    let targets = user.targets(&ChannelKind::ALL, TRANSACTIONAL);
    let expected: Vec<(&str, Vec<Target>)> = ids.iter().map(|id| (id.as_str(), targets.clone())).collect();
    assert_delivered(&herald, &expected).await;
    herald.stop();
    let outbox = Outbox::read(herald.data_dir(), TornTail::Forbid);
    assert_eq!(outbox.len(), ids.len() * targets.len(), "after a clean stop, every accepted notification once");
}
