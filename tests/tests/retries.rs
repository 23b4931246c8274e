//! Retries against a failing provider: with the sandbox refusing 30% of requests (503, 429 with
//! Retry-After, and requests held past Herald's timeout), every SMS is still delivered, once.

mod common;

use common::server::Herald;
use herald_loadtest::sandbox::{Faults, Sandbox};
use std::time::{Duration, Instant};

const USERS: usize = 200;
const NOTIFICATIONS: usize = 20_000;
const DEADLINE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_failures_deliver_everything_once() {
    let faults = Faults { fail_rate: 0.3, hold: Duration::from_secs(2), ..Faults::default() };
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), faults).await.unwrap();
    // Herald's provider timeout (300 ms) is below the sandbox's hold, so held requests time out;
    // the retry policy is the default one.
    let config = common::sms::twilio_config(&sandbox.base_url(), "+15005550006", "300ms");
    let herald = Herald::start(Some(&config));
    let api = herald.api();
    common::sms::create_users_and_template(&api, USERS).await;
    let items = common::sms::notifications(NOTIFICATIONS, USERS, "retry");
    let started = Instant::now();
    api.submit_all(&items, 1_000).await;

    let stats = loop {
        let stats = sandbox.state.view()["twilio"];
        if stats.accepted as usize >= NOTIFICATIONS || started.elapsed() > DEADLINE {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Give a duplicate the chance to show before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats_after = sandbox.state.view()["twilio"];
    println!("{NOTIFICATIONS} SMS through a 30%-failing provider in {:?}: {stats_after:?}", started.elapsed());
    assert_eq!(stats.accepted as usize, NOTIFICATIONS, "not all delivered within {DEADLINE:?}: {stats:?}");
    assert_eq!(stats_after.accepted as usize, NOTIFICATIONS, "{stats_after:?}");
    assert_eq!(stats_after.duplicates, 0);
    assert!(stats_after.rejected > (NOTIFICATIONS / 10) as u64, "the provider did fail: {stats_after:?}");
    drop(herald);
    sandbox.shutdown().await;
}
