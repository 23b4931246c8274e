//! Bulk producers writing straight into `herald-ingest` on a Fluvio cluster, one JSON object per
//! record and no key, as `fluvio produce <prefix>herald-ingest` does: each valid record is
//! delivered exactly once, across a SIGKILL of Herald; an invalid one becomes a `rejected` event.
//! Runs when `HERALD_FLUVIO_ENDPOINT` is set, and says it was skipped otherwise.

mod common;

use common::backend::Backend;
use common::outbox::{Outbox, TornTail, wait_for_lines};
use common::server::Herald;
use fluvio::{Fluvio, FluvioClusterConfig, RecordKey};
use serde_json::json;
use std::time::Duration;

const RECORDS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_records_produced_into_herald_ingest_are_delivered_once() {
    let Some(fluvio_backend) = Backend::all("fluvio ingest").into_iter().find(|b| b.name == "fluvio") else {
        eprintln!("[fluvio ingest] skipped: HERALD_FLUVIO_ENDPOINT is not set");
        return;
    };
    let mut herald = Herald::start_on(&fluvio_backend, None);
    let api = herald.api();
    for n in 0..10 {
        let user = json!({"email": format!("u{n}@example.com"), "phone": format!("+1415555{n:04}"), "devices": []});
        api.put_user(&format!("u{n}"), &user).await.expect(201, "PUT /v1/users");
    }
    let template = json!({"id": "hello", "locale": "en-US", "sms": {"text": "Hello {{ n }}"},
        "email": {"subject": "Hi", "text": "Hello {{ n }}", "html": "<p>Hello {{ n }}</p>"}});
    api.post_template(&template).await.expect(201, "POST /v1/templates");

    // What `fluvio produce` sends: the line as the value, no key.
    let url = herald.topics_url().to_string();
    let prefix = url.split("prefix=").nth(1).expect("a fluvio URL with a prefix");
    let endpoint = std::env::var("HERALD_FLUVIO_ENDPOINT").expect("set");
    let client = Fluvio::connect_with_config(&FluvioClusterConfig::new(endpoint)).await.expect("connect to Fluvio");
    let producer = client.topic_producer(format!("{prefix}herald-ingest")).await.expect("a producer");
    let mut lines: Vec<String> = (0..RECORDS)
        .map(|i| {
            json!({"user_id": format!("u{}", i % 10), "template": "hello", "channels": ["sms", "email"],
            "data": {"n": i}})
            .to_string()
        })
        .collect();
    lines.insert(RECORDS / 2, "not json".into());
    lines.insert(RECORDS / 3, json!({"user_id": "u1", "template": "missing", "channels": ["sms"]}).to_string());
    for (i, line) in lines.iter().enumerate() {
        producer.send(RecordKey::NULL, line.as_str()).await.expect("produce");
        if i == RECORDS / 4 {
            producer.flush().await.expect("flush");
            // A SIGKILL while records flow in.
            herald.kill();
            herald.serve();
        }
    }
    producer.flush().await.expect("flush");

    let expected = RECORDS * 2;
    let settled = wait_for_lines(herald.data_dir(), expected, Duration::from_secs(120)).await;
    eprintln!("[fluvio ingest] {settled:?}");
    herald.stop();
    herald.serve();
    tokio::time::sleep(Duration::from_secs(3)).await;
    herald.stop();
    let outbox = Outbox::read(herald.data_dir(), TornTail::Forbid);
    let mut bodies: Vec<String> = outbox.lines.iter().map(|l| format!("{} {}", l.target(), l.body())).collect();
    bodies.sort();
    let total = bodies.len();
    bodies.dedup();
    assert_eq!(total, expected, "every valid record delivered on both channels, once");
    assert_eq!(bodies.len(), total, "a delivery appears twice");

    let out = herald.command(&[
        "sql",
        "SELECT status, reason, count(*) AS n FROM events \
        WHERE status = 'rejected' GROUP BY status, reason ORDER BY reason",
        "--format",
        "csv",
    ]);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "herald sql failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(csv.contains("rejected,invalid_json,1") && csv.contains("rejected,unknown_template,1"), "{csv}");
}
