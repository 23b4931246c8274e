//! Backpressure at the API: while the request chain is behind by more than
//! `api.lag_high_water`, `POST /v1/notifications` answers 503 with
//! `Retry-After`; once the pipeline catches up it accepts again.
//!
//! The lag is real: requests are accepted while the runtime is not running,
//! the monitor measures end minus committed offsets of `herald-requests`,
//! then the runtime starts and drains them.

use herald::api::{ApiState, router};
use herald::app::App;
use herald::config::Config;
use herald::runtime::Runtime;
use herald::runtime::monitor::{Monitor, Watch};
use herald_schemas::store::Scope;
use herald_schemas::template::{PushPart, Template};
use herald_schemas::topic;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn post(client: &reqwest::Client, url: &str, key: &str, n: usize) -> reqwest::Response {
    post_categories(client, url, key, &vec![None; n]).await
}

/// One notification per entry, of that category (`None`: the default).
async fn post_categories(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    categories: &[Option<&str>],
) -> reqwest::Response {
    let items: Vec<_> = categories
        .iter()
        .enumerate()
        .map(|(i, category)| {
            let mut item = json!({"user_id": format!("u{i}"), "template": "t", "channels": ["push"], "data": {}});
            if let Some(category) = category {
                item["category"] = json!(category);
            }
            item
        })
        .collect();
    client
        .post(format!("{url}/v1/notifications"))
        .bearer_auth(key)
        .json(&json!({ "notifications": items }))
        .send()
        .await
        .expect("request")
}

/// An app with template `t` and a key with the send scope.
async fn set_up(config: Config) -> (tempfile::TempDir, Arc<App>, String) {
    let dir = tempfile::tempdir().unwrap();
    let app = Arc::new(App::open(config, dir.path().to_path_buf()).await.unwrap());
    let template = Template {
        id: "t".into(),
        locale: "en".into(),
        default: true,
        push: Some(PushPart { title: "hi".into(), body: "there".into() }),
        sms: None,
        email: None,
    };
    app.backends.templates.put_template(&template).await.unwrap();
    let key = herald::keys::create(app.backends.keys.as_ref(), "c", &[Scope::Send]).await.unwrap();
    (dir, app, key)
}

#[tokio::test]
async fn lag_over_the_high_water_mark_answers_503_until_drained() {
    let mut config = Config::default();
    config.api.lag_high_water = 10;
    config.api.retry_after = Duration::from_secs(3);
    config.pipeline.monitor_interval = Duration::from_millis(20);
    let (_dir, app, key) = set_up(config).await;

    // Only the monitor runs at first: nothing consumes herald-requests.
    let lag = Arc::new(AtomicU64::new(0));
    let stop_monitor = CancellationToken::new();
    let monitor = Monitor {
        log: app.backends.log.clone(),
        watches: vec![Watch {
            group: herald::runtime::requests::GROUP.into(),
            topic: topic::REQUESTS.into(),
            partitions: (0..app.partitions()).collect(),
        }],
        request_lag: lag.clone(),
        interval: app.config.pipeline.monitor_interval,
        store: None,
        retention_every: Duration::from_secs(30),
    };
    let monitor_task = tokio::spawn(monitor.run(stop_monitor.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = ApiState { app: app.clone(), request_lag: lag.clone(), bulk: tokio::runtime::Handle::current() };
    let server = tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = reqwest::Client::new();

    let first = post(&client, &url, &key, 20).await;
    assert_eq!(first.status(), 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lag.load(Ordering::Relaxed) < 20 {
        assert!(tokio::time::Instant::now() < deadline, "monitor never saw the lag");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = post(&client, &url, &key, 1).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers().get("retry-after").unwrap(), "3");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    let ready = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    // The runtime drains the backlog (unknown users end as no_target events); the API accepts again.
    stop_monitor.cancel();
    monitor_task.await.unwrap();
    let runtime = Runtime::start(&app);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut committed = 0;
        for p in 0..app.partitions() {
            committed +=
                app.backends.log.committed(herald::runtime::requests::GROUP, topic::REQUESTS, p).await.unwrap();
        }
        if committed == 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the pipeline never caught up ({committed} of 20)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The monitor publishes the new lag within an interval.
    tokio::time::sleep(app.config.pipeline.monitor_interval * 5).await;
    assert_eq!(runtime.request_lag.load(Ordering::Relaxed), 0);
    let api = ApiState { app: app.clone(), request_lag: runtime.request_lag.clone(), bulk: runtime.bulk_handle() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url2 = format!("http://{}", listener.local_addr().unwrap());
    let server2 = tokio::spawn(async move { axum::serve(listener, router(api)).await });
    assert_eq!(post(&client, &url2, &key, 1).await.status(), 202);
    runtime.stop().await;
    server.abort();
    server2.abort();
}

/// A batch of only transactional items is stored on the runtime serving HTTP, any other batch on
/// the bulk runtime: with the bulk runtime gone, the first is still taken and the others refused.
#[tokio::test]
async fn only_transactional_batches_are_stored_off_the_bulk_runtime() {
    let (_dir, app, key) = set_up(Config::default()).await;
    let bulk = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let gone = bulk.handle().clone();
    bulk.shutdown_background();
    let state = ApiState { app, request_lag: Arc::new(AtomicU64::new(0)), bulk: gone };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = reqwest::Client::new();

    let otp = post_categories(&client, &url, &key, &[Some("transactional"), Some("transactional")]).await;
    assert_eq!(otp.status(), 202);
    for batch in [vec![None], vec![Some("transactional"), Some("marketing")]] {
        let refused = post_categories(&client, &url, &key, &batch).await;
        assert_eq!(refused.status(), 503, "{batch:?}");
        assert!(refused.headers().contains_key("retry-after"));
        let body = refused.text().await.unwrap();
        assert!(body.contains("shutting down"), "{body}");
    }
    server.abort();
}
