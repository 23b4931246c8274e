//! Broadcast to a topic through the real binary: 200,000 subscribers, imported with their topics,
//! one request naming the topic; every subscriber gets it once, except those who opted out of its
//! category or channel, and the server's memory stays bounded while it fans out (printed, and
//! held under a bound the in-memory alternative would pass through).

mod common;

use common::client::accepted_id;
use common::outbox::{Outbox, TornTail, outbox_file};
use common::server::Herald;
use herald_schemas::{ChannelKind, NotificationId};
use serde_json::json;
use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

const SUBSCRIBERS: usize = 200_000;
/// Users who follow another topic only: never reached.
const OTHERS: usize = 1_000;
/// Resident memory the server may reach while it fans out (debug build, embedded backend).
const RSS_BOUND_MB: u64 = 1024;

fn opted_out_of_category(i: usize) -> bool {
    i.is_multiple_of(10)
}

fn opted_out_of_sms(i: usize) -> bool {
    i % 20 == 5
}

/// (VmRSS, VmHWM) of a process in MiB.
fn memory_mb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb / 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_200k_subscribers_once_each_within_their_opt_outs_in_bounded_memory() {
    let mut herald = Herald::new(None);
    let file = herald.data_dir().parent().expect("a temp dir").join("subscribers.jsonl");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..SUBSCRIBERS + OTHERS {
            let mut categories = Vec::new();
            let mut channels = Vec::new();
            if opted_out_of_category(i) {
                categories.push("news");
            }
            if opted_out_of_sms(i) {
                channels.push("sms");
            }
            let topics = if i < SUBSCRIBERS { vec!["news"] } else { vec!["weather"] };
            let user = json!({ "id": format!("s{i}"), "phone": format!("+1555{i:07}"), "topics": topics,
                "preferences": { "opt_out": { "categories": categories, "channels": channels } } });
            writeln!(out, "{user}").unwrap();
        }
    }
    let started = Instant::now();
    let out = herald.command(&["contacts", "import", file.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("imported {} users with their topics in {:?}", SUBSCRIBERS + OTHERS, started.elapsed());

    herald.serve();
    let api = herald.api();
    api.post_template(&json!({ "id": "headline", "locale": "en", "sms": { "text": "News: {{ title }}" } }))
        .await
        .expect(201, "POST template");
    let topics = api.get("/v1/users/s1/topics").await.expect(200, "GET topics");
    assert_eq!(topics.json["topics"], json!(["news"]));
    let pid = herald.pid();
    let (rss_before, _) = memory_mb(pid).expect("the server's memory");

    let results = api
        .submit(&[json!({ "topic": "news", "template": "headline", "channels": ["sms"], "category": "news",
                          "data": { "title": "hello" }, "idempotency_key": "headline-1" })])
        .await;
    let broadcast = accepted_id(&results[0]).unwrap_or_else(|| panic!("not accepted: {}", results[0]));

    let expected: HashSet<String> = (0..SUBSCRIBERS)
        .filter(|&i| !opted_out_of_category(i) && !opted_out_of_sms(i))
        .map(|i| format!("+1555{i:07}"))
        .collect();
    let path = outbox_file(herald.data_dir(), ChannelKind::Sms);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut peak_rss = rss_before;
    let started = Instant::now();
    loop {
        if let Some((rss, _)) = memory_mb(pid) {
            peak_rss = peak_rss.max(rss);
        }
        let lines = std::fs::read(&path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0);
        if lines >= expected.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{lines} of {} delivered after {:?}", expected.len(), started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fanned_out = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, hwm) = memory_mb(pid).expect("the server's memory");
    eprintln!(
        "broadcast {broadcast}: {} SMS in {fanned_out:?}; server RSS {rss_before} MiB before, peak sampled {peak_rss} MiB, VmHWM {hwm} MiB",
        expected.len()
    );

    let outbox = Outbox::read(herald.data_dir(), TornTail::Tolerate);
    let mut seen = HashSet::with_capacity(expected.len());
    for line in &outbox.lines {
        assert!(seen.insert(line.target().to_string()), "{} reached twice", line.target());
        assert!(expected.contains(line.target()), "{} opted out or does not follow the topic", line.target());
        assert_eq!(line.body(), "News: hello");
    }
    assert_eq!(seen.len(), expected.len());
    assert!(hwm <= RSS_BOUND_MB, "the server's resident memory peaked at {hwm} MiB (bound {RSS_BOUND_MB} MiB)");

    // The same broadcast again (its idempotency key): each subscriber's copy is a duplicate.
    let again = api
        .submit(&[json!({ "topic": "news", "template": "headline", "channels": ["sms"], "category": "news",
                          "data": { "title": "hello" }, "idempotency_key": "headline-1" })])
        .await;
    let again = NotificationId(accepted_id(&again[0]).expect("accepted"));
    // Wait until the last subscriber in the fan-out's order (user-id order) was handled.
    let last = NotificationId::for_subscriber(&again, "s99999");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let reply = api.get(&format!("/v1/notifications/{last}")).await;
        let kinds: Vec<String> = reply.json["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["kind"].as_str().map(String::from))
            .collect();
        if kinds.iter().any(|k| k == "deduplicated") {
            break;
        }
        assert!(Instant::now() < deadline, "the repeated broadcast was not fanned out: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(Outbox::read(herald.data_dir(), TornTail::Tolerate).count(ChannelKind::Sms), expected.len());
}
