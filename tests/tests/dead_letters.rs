//! Permanent failures land in the dead-letter queue once each, with their reason; after the
//! fault is fixed, `herald dlq replay` delivers each exactly once, even when run twice.
//!
//! The fault: Herald configured with a sender number Twilio refuses (the sandbox honours
//! Twilio's magic `From` +15005550001, error 21212, a permanent refusal).

mod common;

use common::server::Herald;
use common::sms::twilio_config;
use herald_loadtest::sandbox::{Faults, Sandbox, StatsView};
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const NOTIFICATIONS: usize = 300;

async fn wait_for(sandbox: &Sandbox, what: &str, done: impl Fn(StatsView) -> bool) -> StatsView {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = sandbox.state.view()["twilio"];
        if done(stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn dlq_list(herald: &Herald) -> Vec<Value> {
    let out = herald.command(&["dlq", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_are_dead_lettered_once_and_replayed_once() {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let mut herald = Herald::new(Some(&twilio_config(&sandbox.base_url(), "+15005550001", "10s")));
    herald.serve();
    let api = herald.api();
    common::sms::create_users_and_template(&api, 10).await;
    let items = common::sms::notifications(NOTIFICATIONS, 10, "dlq");
    api.submit_all(&items, 100).await;
    wait_for(&sandbox, "every send refused", |s| s.rejected as usize >= NOTIFICATIONS).await;
    assert!(herald.terminate().status.success());

    let letters = dlq_list(&herald);
    assert_eq!(letters.len(), NOTIFICATIONS, "one letter per delivery");
    let ids: HashSet<&str> = letters.iter().map(|l| l["delivery_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), NOTIFICATIONS);
    for letter in &letters {
        assert!(letter["reason"].as_str().unwrap().starts_with("permanent:http 400 twilio 21212"), "{letter}");
    }
    assert_eq!(sandbox.state.view()["twilio"].accepted, 0);

    // Fix the sender, replay twice (idempotent), serve: each delivered once.
    herald.set_config(&twilio_config(&sandbox.base_url(), "+15005550006", "10s"));
    for _ in 0..2 {
        let out = herald.command(&["dlq", "replay", "--all"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{NOTIFICATIONS} replayed")));
    }
    herald.serve();
    wait_for(&sandbox, "every replayed send accepted", |s| s.accepted as usize >= NOTIFICATIONS).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(herald.terminate().status.success());
    let stats = sandbox.state.view()["twilio"];
    assert_eq!((stats.accepted as usize, stats.duplicates), (NOTIFICATIONS, 0), "{stats:?}");
    assert!(dlq_list(&herald).is_empty(), "delivered letters leave the list");
    sandbox.shutdown().await;
}
