//! The load generator's smoke test: a few seconds at a low rate against a real server sending to
//! the in-process sandbox. The report is well-formed and every notification sent was received;
//! no latency is asserted (that is for `herald-loadtest run` and `find-max` on a quiet machine).

mod common;

use common::server::Herald;
use herald_loadtest::run::find_max::{FindMaxOptions, find_max};
use herald_loadtest::run::{Mix, RunOptions, plot, run, warm_up};
use herald_loadtest::sandbox::config::herald_config;
use herald_loadtest::sandbox::{Faults, Sandbox};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_receives_everything_it_sent_and_reports_it() {
    let any = "127.0.0.1:0".parse().unwrap();
    let sandbox = Sandbox::start_with_smtp(any, Some(any), Faults::default()).await.unwrap();
    let herald = Herald::start(Some(&herald_config(sandbox.local_addr, sandbox.smtp_addr.unwrap(), None)));
    let options = RunOptions {
        target: herald.url().to_string(),
        key: herald.admin_key().to_string(),
        rate: 40.0,
        duration: Duration::from_secs(3),
        mix: Mix::default(),
        users: 20,
        batch: 10,
        drain: Duration::from_secs(60),
        progress: false,
        set_up: true,
        category: "transactional".into(),
    };
    // The warm-up sets up the users and the template, sends, and stays out of the report.
    let mut options = options;
    let warm = warm_up(&mut options, Duration::from_secs(1), &sandbox).await.unwrap().unwrap();
    assert_eq!((warm.sent, warm.received), (40, 40), "{}", warm.to_text());
    assert!(!options.set_up, "a run after the warm-up sets up again");
    let report = run(&options, &sandbox).await.unwrap();
    assert_eq!(report.requested, 120);
    assert_eq!(report.sent, 120, "{}", report.to_text());
    assert_eq!(report.received, 120, "{}", report.to_text());
    // 10:1:5 push:SMS:email in turn (120 = 7 × 16 + 8): 78 push × 2 devices + 7 SMS + 35 mails.
    assert_eq!(report.deliveries_received, 198, "{}", report.to_text());
    assert_eq!(report.duplicates, 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for field in ["sent", "received", "duplicates", "throughput_per_s", "errors"] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    for latency in ["ack_latency_ms", "e2e_latency_ms"] {
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(json[latency][p].as_f64().is_some_and(|v| v > 0.0), "{latency}.{p} in {json}");
        }
        assert_eq!(json[latency]["count"], 120);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latency.svg");
    plot::write_svg(&path, "smoke", &[("API ack", &report.ack_histogram), ("end to end", &report.e2e_histogram)])
        .unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("end to end"));

    // A second run on the same data directory: fresh idempotency keys, nothing deduplicated away.
    let again = run(&options, &sandbox).await.unwrap();
    assert_eq!((again.sent, again.received), (120, 120), "{}", again.to_text());

    // find-max, bounded to a few seconds with an SLO no run here can miss: it reports steps and
    // a highest sustainable rate.
    let load = RunOptions { rate: 20.0, duration: Duration::from_secs(1), ..options };
    let search = FindMaxOptions { load, growth: 2.0, slo_p99_ms: 60_000.0, max_time: Duration::from_secs(2) };
    let found = find_max(&search, &sandbox).await.unwrap();
    let json: serde_json::Value = serde_json::to_value(&found).unwrap();
    assert!(json["max_sustainable_per_s"].as_f64().is_some_and(|r| r >= 20.0), "{json}");
    assert!(found.steps.iter().all(|s| s.passed), "{}", found.to_text());
    sandbox.shutdown().await;
}
