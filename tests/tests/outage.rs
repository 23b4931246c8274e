//! A provider down for 60 s and then back: nothing is lost or sent twice, the circuit breaker
//! opens during the outage and closes after it (`herald_provider_breaker_state` on `/metrics`),
//! and the alert webhook is called at least once and at most a few times.

mod common;

use common::client::Api;
use common::server::Herald;
use herald_loadtest::sandbox::{Faults, Sandbox};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOTIFICATIONS: usize = 500;
const OUTAGE: Duration = Duration::from_secs(60);

/// An alert webhook receiver on loopback, keeping every body it is sent.
struct Webhook {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    async fn start() -> Webhook {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = Arc::clone(&received);
        let app = axum::Router::new().route(
            "/alert",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let store = Arc::clone(&store);
                async move {
                    store.lock().unwrap().push(body);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alert", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Webhook { url, received }
    }
}

/// The breaker gauge of `provider`, from `/metrics`.
async fn breaker_state(api: &Api, provider: &str) -> Option<f64> {
    let metrics = api.get("/metrics").await.expect(200, "GET /metrics").text;
    let prefix = format!("herald_provider_breaker_state{{provider=\"{provider}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_for_a_minute_loses_nothing_and_trips_the_breaker() {
    let down = Faults { fail_rate: 1.0, hold: Duration::from_secs(1), ..Faults::default() };
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), down).await.unwrap();
    let webhook = Webhook::start().await;
    let config = format!(
        "{}\n[alerts]\nwebhook = \"{}\"\n",
        common::sms::twilio_config(&sandbox.base_url(), "+15005550006", "300ms"),
        webhook.url
    );
    let herald = Herald::start(Some(&config));
    let api = herald.api();
    common::sms::create_users_and_template(&api, 10).await;
    let items = common::sms::notifications(NOTIFICATIONS, 10, "outage");
    let outage_began = Instant::now();
    api.submit_all(&items, 100).await;

    let mut opened = false;
    while outage_began.elapsed() < OUTAGE {
        opened |= breaker_state(&api, "twilio").await == Some(1.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(opened, "the breaker never opened during the outage");
    let during = sandbox.state.view()["twilio"];
    assert_eq!(during.accepted, 0);
    println!("requests during the {OUTAGE:?} outage: {}", during.requests);

    sandbox.state.set_faults(Faults::default());
    let back = Instant::now();
    loop {
        let stats = sandbox.state.view()["twilio"];
        if stats.accepted as usize >= NOTIFICATIONS {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(120), "not all delivered 120 s after recovery: {stats:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("all {NOTIFICATIONS} delivered {:?} after the provider came back", back.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = sandbox.state.view()["twilio"];
    assert_eq!((stats.accepted as usize, stats.duplicates), (NOTIFICATIONS, 0), "{stats:?}");
    assert_eq!(breaker_state(&api, "twilio").await, Some(0.0), "the breaker closed again");
    let alerts = webhook.received.lock().unwrap().clone();
    println!("alerts received: {alerts:?}");
    assert!((1..=3).contains(&alerts.len()), "{} alerts: {alerts:?}", alerts.len());
    assert!(alerts.iter().all(|a| a["alert"] == "provider_down" && a["detail"]["provider"] == "twilio"));
    drop(herald);
    sandbox.shutdown().await;
}
