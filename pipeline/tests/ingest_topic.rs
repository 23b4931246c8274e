//! Bulk producers write one notification per record, the JSON object of the
//! HTTP API, straight into `herald-ingest`, with any key or none. Herald
//! validates each, delivers the valid ones exactly once (also when it reads
//! the topic again after a restart) and records a rejection for the others.

use herald::app::App;
use herald::config::Config;
use herald::runtime::Runtime;
use herald_schemas::contacts::{Device, Platform, User};
use herald_schemas::template::{PushPart, Template};
use herald_schemas::topic::{self, Append, Record};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn outbox_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("outbox/push.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn wait_for_lines(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lines = outbox_lines(dir);
        if lines.len() >= n || tokio::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_herald_ingest_are_validated_and_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.ingest.client_id = "bulk".into();
    let app = App::open(config.clone(), dir.path().to_path_buf()).await.unwrap();
    let user = User {
        id: "u1".into(),
        devices: vec![Device { id: "d".into(), platform: Platform::Android, token: "tok".into(), active: true }],
        ..User::default()
    };
    app.backends.contacts.put_users(&[user]).await.unwrap();
    let template = Template {
        id: "t".into(),
        locale: "en".into(),
        default: true,
        push: Some(PushPart { title: "Hi".into(), body: "order {{ n }}".into() }),
        sms: None,
        email: None,
    };
    app.backends.templates.put_template(&template).await.unwrap();
    let good = json!({"user_id": "u1", "template": "t", "data": {"n": 7}, "channels": ["push"]});
    let records = vec![
        Record { key: Vec::new(), value: good.to_string().into_bytes() },
        Record { key: b"any".to_vec(), value: b"{not json".to_vec() },
        Record {
            key: Vec::new(),
            value: json!({"user_id": "u1", "template": "nope", "channels": ["push"]}).to_string().into_bytes(),
        },
    ];
    app.backends.log.append(vec![Append { topic: topic::INGEST.into(), partition: 3, records }]).await.unwrap();

    let runtime = Runtime::start(&app);
    let lines = wait_for_lines(dir.path(), 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["body"], "order 7");
    assert_eq!(lines[0]["client_id"], "bulk");
    let id = herald_schemas::NotificationId(lines[0]["notification_id"].as_str().unwrap().to_string());

    // Two rejections are recorded as events on herald-events.
    let mut rejected = 0;
    for p in 0..app.partitions() {
        let recs = app.backends.log.read(topic::EVENTS, p, 0, 10_000, Duration::ZERO).await.unwrap();
        for r in recs {
            let e = herald_schemas::EncodedEvent::from_record(&r.key, r.value).unwrap().decode().unwrap();
            if e.kind == herald_schemas::EventKind::Rejected {
                rejected += 1;
                assert!(matches!(e.reason.as_deref(), Some("invalid_json") | Some("unknown_template")), "{e:?}");
            }
        }
    }
    assert_eq!(rejected, 2);
    runtime.stop().await;

    // Reading the topic again from the start (as after a crash before the commit) sends nothing twice.
    for p in 0..app.partitions() {
        app.backends.log.commit(herald::runtime::ingest_topic::GROUP, topic::INGEST, p, 0).await.unwrap();
    }
    let runtime = Runtime::start(&app);
    tokio::time::sleep(Duration::from_millis(800)).await;
    runtime.stop().await;
    assert_eq!(outbox_lines(dir.path()).len(), 1);
    let timeline = app.backends.timeline.timeline(&id).await.unwrap();
    assert!(timeline.iter().any(|e| e.kind == herald_schemas::EventKind::Sent), "{timeline:?}");
}
