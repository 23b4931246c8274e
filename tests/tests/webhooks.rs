//! Status webhooks end to end: a client registers a receiver, the receiver answers 503 and then
//! goes away altogether while notifications are sent, then comes back. Every outcome event of the
//! client's notifications must reach it exactly once (by event id), in batches whose signatures
//! the receiver verifies with its own HMAC code (not Herald's), and none of another client's.

mod common;

use aws_lc_rs::hmac;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::backend::Backend;
use common::client::Api;
use common::server::Herald;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const USERS: usize = 10;
const NOTIFICATIONS: usize = 120;
const OTHER_NOTIFICATIONS: usize = 20;
/// A receiver refuses a signature whose timestamp is further than this from its clock.
const TOLERANCE_SECS: u64 = 300;

/// What the receiver accepted (answered 2xx to), and what it refused for a bad signature.
#[derive(Default)]
struct Received {
    /// Batch id → the events of the batch.
    batches: Vec<(String, Vec<Value>)>,
    bad_signatures: Vec<String>,
    /// Requests answered 503 while "down".
    refused: usize,
}

struct Receiver {
    secret: Mutex<String>,
    up: AtomicBool,
    received: Mutex<Received>,
}

/// The receiver's own check of `Herald-Signature: t=…,v1=…` over the raw body.
fn verify(secret: &str, header: &str, body: &[u8], now: u64) -> Result<(), String> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => signatures.push(hex::decode(v).map_err(|e| format!("v1 not hex: {e}"))?),
            _ => {}
        }
    }
    let t = t.ok_or("no t=")?;
    if now.abs_diff(t) > TOLERANCE_SECS {
        return Err(format!("timestamp {t} too far from now {now}"));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    // `hmac::verify` compares in constant time.
    if signatures.iter().any(|s| hmac::verify(&key, &message, s).is_ok()) {
        Ok(())
    } else {
        Err("no v1 signature matches".into())
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !r.up.load(Ordering::SeqCst) {
        r.received.lock().unwrap().refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let secret = r.secret.lock().unwrap().clone();
    let checked = verify(&secret, &header("herald-signature"), &body, now_secs()).and_then(|()| {
        let json: Value = serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))?;
        let id = json["id"].as_str().unwrap_or("").to_string();
        if id.is_empty() || id != header("herald-webhook-id") {
            return Err(format!("Herald-Webhook-Id {:?} is not the body's id {id:?}", header("herald-webhook-id")));
        }
        if header("content-type") != "application/json" {
            return Err(format!("content type {:?}", header("content-type")));
        }
        Ok((id, json["events"].as_array().cloned().unwrap_or_default()))
    });
    let mut received = r.received.lock().unwrap();
    match checked {
        Ok(batch) => {
            received.batches.push(batch);
            StatusCode::NO_CONTENT
        }
        Err(why) => {
            received.bad_signatures.push(why);
            StatusCode::UNAUTHORIZED
        }
    }
}

/// Serves the receiver on `addr` until the returned sender is dropped or fired.
async fn serve(receiver: Arc<Receiver>, addr: SocketAddr) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the receiver");
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(receiver);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stopped.await.unwrap_or(()) }).await
    });
    (addr, stop)
}

/// Event kinds a webhook reports (`EventKind::is_outcome`, as the receiver knows the contract).
fn is_outcome(kind: &str) -> bool {
    !matches!(kind, "accepted" | "scheduled" | "deferred" | "opened" | "clicked")
}

/// The outcome events of each notification, once each has at least one (polled).
async fn outcomes(api: &Api, ids: &[String], deadline: Duration) -> BTreeMap<String, Value> {
    let started = Instant::now();
    let mut all = BTreeMap::new();
    for id in ids {
        loop {
            let reply = api.timeline(id).await;
            let events = reply.json["events"].as_array().cloned().unwrap_or_default();
            let finals: Vec<Value> =
                events.into_iter().filter(|e| is_outcome(e["kind"].as_str().unwrap_or(""))).collect();
            if !finals.is_empty() {
                for e in finals {
                    all.insert(e["event_id"].as_str().unwrap().to_string(), e);
                }
                break;
            }
            assert!(
                started.elapsed() < deadline,
                "notification {id} has no outcome after {deadline:?}: {}",
                reply.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    all
}

/// Every event id the receiver accepted, with how many times.
fn delivered(receiver: &Receiver) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, events) in &receiver.received.lock().unwrap().batches {
        for e in events {
            *counts.entry(e["event_id"].as_str().unwrap_or("").to_string()).or_default() += 1;
        }
    }
    counts
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < deadline, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_reaches_the_receiver_once_after_its_downtime() {
    for backend in Backend::all("webhooks") {
        eprintln!("[webhooks] on {}", backend.name);
        every_outcome_once_on(&backend).await;
    }
}

async fn every_outcome_once_on(backend: &Backend) {
    let deadline = Duration::from_secs(30) * backend.slowdown();
    // The receiver listens on loopback, which webhooks may reach only when allowed.
    let config = "[webhooks]\nlinger = \"100ms\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n\
                  refresh_interval = \"200ms\"\nallow_private_addresses = true\n";
    let mut herald = Herald::start_on(backend, Some(config));
    let admin = herald.api();
    let receiver =
        Arc::new(Receiver { secret: Mutex::default(), up: AtomicBool::new(true), received: Mutex::default() });
    let (addr, stop) = serve(receiver.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let url = format!("http://{addr}/hook");

    let acme_key = admin.create_key("acme", &["send"]).await.expect(201, "POST /v1/keys").json["key"].clone();
    let other_key = admin.create_key("other", &["send"]).await.expect(201, "POST /v1/keys").json["key"].clone();
    let acme = admin.with_key(acme_key.as_str());
    let other = admin.with_key(other_key.as_str());
    common::sms::create_users_and_template(&admin, USERS).await;

    // Registration: validation, a generated secret returned once, never shown again.
    let put = |api: &Api, body: Value| {
        let api = api.clone();
        async move { api.send(api.request(reqwest::Method::PUT, "/v1/webhooks").json(&body)).await }
    };
    put(&acme, json!({ "url": "ftp://x.example/" })).await.expect_error(400, "PUT /v1/webhooks ftp");
    put(&acme, json!({ "url": url, "secret": "short" })).await.expect_error(400, "PUT /v1/webhooks short secret");
    put(&acme, json!({ "url": url, "extra": 1 })).await.expect_error(400, "PUT /v1/webhooks unknown field");
    acme.get("/v1/webhooks").await.expect_error(404, "GET /v1/webhooks before registering");
    let registered = put(&acme, json!({ "url": url })).await.expect(201, "PUT /v1/webhooks");
    let secret = registered.json["secret"].as_str().expect("a generated secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    *receiver.secret.lock().unwrap() = secret.clone();
    let shown = acme.get("/v1/webhooks").await.expect(200, "GET /v1/webhooks");
    assert_eq!(shown.json["url"], url.as_str());
    assert!(!shown.text.contains(&secret), "GET must never show the secret: {}", shown.text);
    admin.with_key(None).get("/v1/webhooks").await.expect_error(401, "GET /v1/webhooks without a key");

    // A probe whose outcome arrives proves the registration is in force (the collectors read
    // registrations every `refresh_interval`: an outcome recorded before that is not sent, so a
    // probe may go unreported and the next one is sent).
    let mut probes = Vec::new();
    let started = Instant::now();
    loop {
        let probe = acme.submit_all(&common::sms::notifications(1, USERS, &format!("probe-{}", probes.len())), 1).await;
        let probe_outcomes = outcomes(&admin, &probe, deadline).await;
        probes.extend(probe);
        let seen = Instant::now();
        while seen.elapsed() < Duration::from_secs(2)
            && !probe_outcomes.keys().all(|id| delivered(&receiver).contains_key(id))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if probe_outcomes.keys().all(|id| delivered(&receiver).contains_key(id)) {
            break;
        }
        assert!(started.elapsed() < deadline, "no probe's outcome reached the receiver within {deadline:?}");
    }

    // Down: 503 first, then nothing listening at all.
    receiver.up.store(false, Ordering::SeqCst);
    let mut items = common::sms::notifications(NOTIFICATIONS, USERS, "acme");
    // Outcomes other than `sent`: an unknown user (no_target) and repeats (deduplicated).
    items.extend((0..10).map(
        |i| json!({ "user_id": format!("ghost-{i}"), "template": "otp", "channels": ["sms"], "data": { "code": i } }),
    ));
    items.extend(common::sms::notifications(10, USERS, "acme"));
    let ids = acme.submit_all(&items, 50).await;
    let other_ids = other.submit_all(&common::sms::notifications(OTHER_NOTIFICATIONS, USERS, "other"), 50).await;
    wait_for("a refused attempt while down", deadline, async || receiver.received.lock().unwrap().refused > 0).await;
    drop(stop);
    wait_for("Herald to see the failures", deadline, async || {
        let status = acme.get("/v1/webhooks").await.expect(200, "GET /v1/webhooks").json;
        status["delivery"]["consecutive_failures"].as_u64().unwrap_or(0) >= 2
            && status["delivery"]["pending_batches"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = acme.get("/v1/webhooks").await.json;
    eprintln!("[webhooks] while down: {}", status["delivery"]);
    assert!(status["delivery"]["last_error"].as_str().is_some(), "{status}");

    // Back, on the same address.
    receiver.up.store(true, Ordering::SeqCst);
    let (_, _keep_serving) = serve(receiver.clone(), addr).await;
    let back = Instant::now();
    let expected = outcomes(&admin, &ids, deadline).await;
    // A probe's outcome arrives once or never (an earlier probe's may have gone unreported).
    let probe_outcomes = outcomes(&admin, &probes, deadline).await;
    let kinds: BTreeSet<&str> = expected.values().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.is_superset(&BTreeSet::from(["sent", "no_target", "deduplicated"])), "{kinds:?}");
    wait_for("every outcome at the receiver", deadline, async || {
        let got = delivered(&receiver);
        expected.keys().all(|id| got.contains_key(id))
    })
    .await;
    eprintln!("[webhooks] {} outcomes delivered {:?} after the receiver came back", expected.len(), back.elapsed());
    wait_for("the outbox to drain", deadline, async || {
        let status = acme.get("/v1/webhooks").await.expect(200, "GET /v1/webhooks").json;
        status["delivery"]["pending_batches"] == 0 && status["delivery"]["consecutive_failures"] == 0
    })
    .await;

    // Exactly once, signed, and only this client's outcomes.
    let other_outcomes = outcomes(&admin, &other_ids, deadline).await;
    let got = delivered(&receiver);
    {
        let received = receiver.received.lock().unwrap();
        assert!(received.bad_signatures.is_empty(), "refused signatures: {:?}", received.bad_signatures);
        let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "events delivered more than once: {twice:?}");
        let unexpected: Vec<_> =
            got.keys().filter(|id| !expected.contains_key(*id) && !probe_outcomes.contains_key(*id)).collect();
        assert!(unexpected.is_empty(), "events that are not this client's outcomes: {unexpected:?}");
        assert!(other_outcomes.keys().all(|id| !got.contains_key(id)), "another client's outcome was delivered");
        let batch_ids: BTreeSet<&String> = received.batches.iter().map(|(id, _)| id).collect();
        assert_eq!(batch_ids.len(), received.batches.len(), "a batch id was accepted twice");
        assert!(received.batches.iter().all(|(_, events)| events.iter().all(|e| e["client_id"] == "acme")));
        eprintln!("[webhooks] {} batches, {} refused attempts while down", received.batches.len(), received.refused);
    }

    let status = acme.get("/v1/webhooks").await.json;
    assert!(status["delivery"]["last_success_at_ms"].as_u64().is_some(), "{status}");
    let delete = |api: &Api| {
        let api = api.clone();
        async move { api.send(api.request(reqwest::Method::DELETE, "/v1/webhooks")).await }
    };
    delete(&acme).await.expect(204, "DELETE /v1/webhooks");
    delete(&acme).await.expect_error(404, "DELETE /v1/webhooks again");
    acme.get("/v1/webhooks").await.expect_error(404, "GET /v1/webhooks after DELETE");
    herald.stop();
}

/// By default a webhook may only aim at the public internet: clients choose the URL, and one
/// aimed at the server's own network (loopback, a cloud's metadata service) would make Herald a
/// way in. Refused when registered, before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_aimed_at_a_private_address_is_refused_by_default() {
    let mut herald = Herald::start(None);
    let admin = herald.api();
    let key = admin.create_key("acme", &["send"]).await.expect(201, "POST /v1/keys").json["key"].clone();
    let acme = admin.with_key(key.as_str());
    for url in ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]/hook"] {
        let put = acme.request(reqwest::Method::PUT, "/v1/webhooks").json(&json!({ "url": url }));
        let refused = acme.send(put).await.expect_error(400, "PUT /v1/webhooks with a private address");
        assert!(refused.json.to_string().contains("not a public address"), "{url}: {}", refused.json);
    }
    acme.get("/v1/webhooks").await.expect_error(404, "nothing was registered");
    herald.stop();
}

#[test]
fn the_receiver_check_refuses_a_tampered_or_replayed_request() {
    let body = br#"{"id":"whb_1","client_id":"acme","events":[]}"#;
    let now = now_secs();
    let sign = |t: u64, body: &[u8]| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"whsec_k");
        let mut message = format!("{t}.").into_bytes();
        message.extend_from_slice(body);
        format!("t={t},v1={}", hex::encode(hmac::sign(&key, &message).as_ref()))
    };
    // Herald's header, checked by the receiver's code: the two implementations agree.
    let herald = herald_schemas::webhook::signature_header("whsec_k", now, body);
    assert_eq!(herald, sign(now, body));
    assert_eq!(verify("whsec_k", &herald, body, now), Ok(()));
    assert!(verify("whsec_k", &herald, br#"{"id":"whb_1","client_id":"evil","events":[]}"#, now).is_err());
    assert!(verify("whsec_other", &herald, body, now).is_err());
    // Replayed an hour later: the timestamp is stale; restamped: the signature no longer matches.
    assert!(verify("whsec_k", &herald, body, now + 3600).unwrap_err().contains("too far"));
    let restamped = herald.replace(&format!("t={now}"), &format!("t={}", now + 3600));
    assert!(verify("whsec_k", &restamped, body, now + 3600).unwrap_err().contains("no v1"));
}
