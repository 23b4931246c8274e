//! The acceptance test of Herald's promise: no loss and no duplicates through SIGKILL.
//!
//! 20,000 transactional notifications, each with its own idempotency key, which the template renders
//! as the message body, so every outbox line names the request it came from. The expected
//! deliveries, one per (key, target), follow from the generated users alone. The server is SIGKILLed
//! at random moments, at least three times, and restarted on the same data directory:
//! - while a client is submitting (a batch without a `202` is sent again with the same keys), and
//! - after everything was accepted, while dispatch is writing the outbox.
//!
//! Then, after delivery settles and a clean stop, every expected (key, target) must be in the outbox
//! exactly once: lost = 0 and duplicates = 0.

mod common;

use common::backend::Backend;
use common::client::{Api, accepted_id, batch_results, overload_pause};
use common::outbox::{Outbox, OutboxCounter, TornTail, wait_for_lines};
use common::population::{Contact, Mix, Target, channel_names, random_channels};
use common::server::Herald;
use herald_schemas::{ChannelKind, TRANSACTIONAL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const NOTIFICATIONS: usize = 20_000;
const BATCH: usize = 500;
const USERS: usize = 200;
const MIN_KILLS: usize = 3;
const TEMPLATE: &str = "crash";
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(150);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(150);
/// After a clean stop and a restart, how long to watch for a (wrong) redelivery.
const QUIET_AFTER_RESTART: Duration = Duration::from_secs(3);

/// How many targets a request reaches.
#[derive(Debug, Clone, Copy)]
enum FanOut {
    /// Users with 1–2 devices, phone and email; each request on a random set of channels.
    Mixed,
    /// Users with 3 devices, phone and email; each request on every channel: 5 deliveries.
    Wide,
}

/// The users, the requests, and what each request must deliver.
struct Workload {
    users: Vec<Contact>,
    /// The idempotency key of each request; also its rendered body.
    keys: Vec<String>,
    user_of: Vec<usize>,
    items: Vec<Value>,
    targets: Vec<Vec<Target>>,
}

impl Workload {
    fn generate(rng: &mut StdRng, fan_out: FanOut) -> Self {
        let mix = match fan_out {
            FanOut::Mixed => Mix::REACHABLE,
            FanOut::Wide => Mix { devices: (3, 3), ..Mix::REACHABLE },
        };
        let users: Vec<Contact> =
            (0..USERS).map(|n| Contact::random(rng, format!("crash-user-{n}"), n, &mix)).collect();
        let (mut keys, mut user_of, mut items, mut targets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for n in 0..NOTIFICATIONS {
            let user = rng.random_range(0..USERS);
            let channels = match fan_out {
                FanOut::Mixed => random_channels(rng),
                FanOut::Wide => ChannelKind::ALL.to_vec(),
            };
            let key = format!("crash-{n:05}");
            items.push(json!({
                "user_id": users[user].id, "template": TEMPLATE, "data": { "n": key },
                "channels": channel_names(&channels), "category": TRANSACTIONAL, "idempotency_key": key,
            }));
            targets.push(users[user].targets(&channels, TRANSACTIONAL));
            keys.push(key);
            user_of.push(user);
        }
        Self { users, keys, user_of, items, targets }
    }

    fn expected_total(&self) -> usize {
        self.targets.iter().map(Vec::len).sum()
    }

    async fn install(&self, api: &Api) {
        for user in &self.users {
            api.put_user(&user.id, &user.to_json()).await.expect(201, &format!("PUT /v1/users/{}", user.id));
        }
        let template = json!({
            "id": TEMPLATE, "locale": "en",
            "push": { "title": "crash", "body": "{{ n }}" },
            "sms": { "text": "{{ n }}" },
            "email": { "subject": "crash", "text": "{{ n }}", "html": "<p>{{ n }}</p>" },
        });
        api.post_template(&template).await.expect(201, "POST /v1/templates");
    }

    /// Counts, for every expected (key, target), its lines in the outbox; prints and asserts
    /// lost = 0, duplicates = 0 and nothing unexpected.
    fn verify(&self, outbox: &Outbox, test: &str) {
        let index: HashMap<&str, usize> = self.keys.iter().enumerate().map(|(n, k)| (k.as_str(), n)).collect();
        let mut count: HashMap<(usize, ChannelKind, &str), usize> = HashMap::new();
        let mut notification_ids: HashMap<usize, HashSet<&str>> = HashMap::new();
        let mut unexpected = Vec::new();
        for line in &outbox.lines {
            let Some(&n) = index.get(line.body()) else {
                unexpected.push(format!("unknown body: {}", line.json));
                continue;
            };
            if line.str("/user_id") != self.users[self.user_of[n]].id {
                unexpected.push(format!("request {n} delivered to the wrong user: {}", line.json));
            }
            *count.entry((n, line.file, line.target())).or_default() += 1;
            notification_ids.entry(n).or_default().insert(line.notification_id());
        }
        let mut lost = Vec::new();
        let mut wanted = HashSet::new();
        for (n, targets) in self.targets.iter().enumerate() {
            for t in targets {
                wanted.insert((n, t.channel, t.address.as_str()));
                if !count.contains_key(&(n, t.channel, t.address.as_str())) {
                    lost.push(format!("{} to {} {}", self.keys[n], t.channel, t.address));
                }
            }
        }
        for (n, channel, target) in count.keys().filter(|k| !wanted.contains(*k)) {
            unexpected.push(format!("{} to {channel} {target}, which is not one of its targets", self.keys[*n]));
        }
        let duplicates: usize = count.values().map(|c| c - 1).sum();
        let duplicated_pairs = count.values().filter(|&&c| c > 1).count();
        let split = notification_ids.values().filter(|ids| ids.len() > 1).count();
        println!(
            "[{test}] expected {} deliveries of {} requests; outbox {} lines: lost = {}, duplicates = {duplicates} \
             (over {duplicated_pairs} (key, target) pairs), unexpected = {}, keys delivered under two notification ids = {split}",
            self.expected_total(),
            self.keys.len(),
            outbox.len(),
            lost.len(),
            unexpected.len(),
        );
        let sample = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>();
        assert!(lost.is_empty(), "[{test}] lost = {} (expected 0), e.g. {:?}", lost.len(), sample(&lost));
        let dups: Vec<String> = count
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|((n, ch, t), c)| format!("{} to {ch} {t}: {c} times", self.keys[*n]))
            .collect();
        assert_eq!(duplicates, 0, "[{test}] duplicates = {duplicates} (expected 0), e.g. {:?}", sample(&dups));
        assert!(
            unexpected.is_empty(),
            "[{test}] {} unexpected lines, e.g. {:?}",
            unexpected.len(),
            sample(&unexpected)
        );
        assert_eq!(split, 0, "[{test}] a key was delivered under two notification ids: dedup let a retry through");
    }
}

/// Waits for delivery, stops cleanly, checks a restart redelivers nothing, and verifies.
async fn settle_and_verify(herald: &mut Herald, work: &Workload, test: &str) {
    let settled = wait_for_lines(herald.data_dir(), work.expected_total(), SETTLE_TIMEOUT).await;
    println!("[{test}] outbox settled at {} of {} lines after {:?}", settled.total, settled.expected, settled.waited);
    herald.stop();
    let stopped = Outbox::read(herald.data_dir(), TornTail::Forbid);

    herald.serve();
    let mut counter = OutboxCounter::new(herald.data_dir());
    let watch = Instant::now();
    while watch.elapsed() < QUIET_AFTER_RESTART {
        assert_eq!(
            counter.total(),
            stopped.len(),
            "[{test}] after a clean stop and restart the outbox changed (a redelivery or a cut of committed lines)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    herald.stop();
    let outbox = Outbox::read(herald.data_dir(), TornTail::Forbid);
    work.verify(&outbox, test);
    verify_event_files(herald, outbox.len(), test);
}

/// The analytics files, written by a sink that was SIGKILLed with the rest of the process while
/// events flowed (and whose input holds the events the replays emitted again): every event once,
/// and one `sent` event per outbox line. Read with the server stopped, so from the files alone.
fn verify_event_files(herald: &Herald, outbox_lines: usize, test: &str) {
    let query = "SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_ids, \
                 count(*) FILTER (WHERE status = 'sent') AS sent FROM events";
    let out = herald.command(&["sql", "--format", "json", query]);
    assert!(out.status.success(), "[{test}] herald sql: {}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("herald sql --format json prints JSON");
    let count = |column: &str| rows[0][column].as_u64().unwrap_or_else(|| panic!("[{test}] {column} in {rows}"));
    println!("[{test}] event files: {rows}");
    assert_eq!(count("n"), count("distinct_ids"), "[{test}] an event is in the files more than once: {rows}");
    assert_eq!(count("sent"), outbox_lines as u64, "[{test}] sent events in the files vs outbox lines: {rows}");
}

/// What the submitting client and the killer share.
struct Shared {
    url: RwLock<String>,
    /// Batches acknowledged with `202`.
    acked: AtomicUsize,
    submission_done: AtomicBool,
    killer_failed: AtomicBool,
}

#[derive(Debug)]
struct Kill {
    acked_batches: usize,
    during_submission: bool,
}

/// Marks the killer as failed if its thread unwinds, so the client stops waiting for a restart.
struct KillerGuard(Arc<Shared>);

impl Drop for KillerGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.killer_failed.store(true, Ordering::SeqCst);
        }
    }
}

/// The thread that owns the server while the client submits: it SIGKILLs the server once the
/// client has had each threshold of batches acknowledged (plus a jitter) and restarts it.
/// Dropping it (a failing test) ends the thread, and with it the server.
struct Killer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<(Herald, Vec<Kill>)>>,
}

impl Killer {
    fn spawn(mut herald: Herald, shared: Arc<Shared>, at: Vec<usize>, jitter: Vec<Duration>) -> Self {
        let mine = Arc::clone(&shared);
        let thread = thread::spawn(move || {
            let _guard = KillerGuard(Arc::clone(&mine));
            let mut record = Vec::new();
            'kills: for (threshold, jitter) in at.into_iter().zip(jitter) {
                while mine.acked.load(Ordering::SeqCst) < threshold {
                    if mine.submission_done.load(Ordering::SeqCst) {
                        break 'kills;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                thread::sleep(jitter);
                let during_submission = !mine.submission_done.load(Ordering::SeqCst);
                let acked_batches = mine.acked.load(Ordering::SeqCst);
                herald.kill();
                record.push(Kill { acked_batches, during_submission });
                herald.serve();
                *mine.url.write().unwrap() = herald.url().to_string();
            }
            (herald, record)
        });
        Self { shared, thread: Some(thread) }
    }

    /// Ends the kills and hands the server back with the record of kills.
    fn finish(mut self) -> (Herald, Vec<Kill>) {
        self.shared.submission_done.store(true, Ordering::SeqCst);
        self.thread.take().expect("joined once").join().expect("the killer thread panicked")
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.shared.submission_done.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug, Default)]
struct Retries {
    transport_errors: usize,
    overloaded_503: usize,
    server_errors_5xx: usize,
    batches_sent_again: usize,
}

/// Submits every batch, sending a batch again (same idempotency keys) until it gets a `202`,
/// following the server to its new address after each restart.
async fn submit_through_crashes(shared: &Shared, key: &str, batches: &[Vec<Value>], deadline: Duration) -> Retries {
    let started = Instant::now();
    let mut retries = Retries::default();
    let mut api = Api::new(&shared.url.read().unwrap(), Some(key));
    for (b, batch) in batches.iter().enumerate() {
        let mut attempts = 0;
        loop {
            assert!(!shared.killer_failed.load(Ordering::SeqCst), "the killer thread failed (its panic is above)");
            assert!(
                started.elapsed() < deadline,
                "submission did not finish within {deadline:?}: {b} of {} batches acknowledged, {retries:?}",
                batches.len()
            );
            let url = shared.url.read().unwrap().clone();
            if url != api.base() {
                api = Api::new(&url, Some(key));
            }
            attempts += 1;
            if attempts == 2 {
                retries.batches_sent_again += 1;
            }
            match api.try_submit(batch).await {
                Ok(reply) if reply.status == StatusCode::ACCEPTED => {
                    for (i, result) in batch_results(&reply, batch.len()).iter().enumerate() {
                        assert!(accepted_id(result).is_some(), "batch {b} item {i} not accepted: {result}");
                    }
                    shared.acked.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(reply) if reply.status == StatusCode::SERVICE_UNAVAILABLE => {
                    retries.overloaded_503 += 1;
                    tokio::time::sleep(overload_pause(&reply)).await;
                }
                Ok(reply) if reply.status.is_server_error() => {
                    retries.server_errors_5xx += 1;
                    eprintln!("batch {b}: {} {}", reply.status, reply.text);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(reply) => panic!("batch {b}: unexpected {}: {}", reply.status, reply.text),
                Err(_) => {
                    retries.transport_errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    retries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_submission_loses_and_duplicates_nothing() {
    for backend in Backend::all("kill during submission") {
        eprintln!("[kill during submission] on the {} backends", backend.name);
        sigkill_during_submission_on(&backend).await;
    }
}

async fn sigkill_during_submission_on(backend: &Backend) {
    const TEST: &str = "kill during submission";
    let mut rng = StdRng::seed_from_u64(common::seed(TEST));
    let work = Workload::generate(&mut rng, FanOut::Mixed);
    let herald = Herald::start_on(backend, None);
    work.install(&herald.api()).await;
    let key = herald.admin_key().to_string();
    let batches: Vec<Vec<Value>> = work.items.chunks(BATCH).map(<[Value]>::to_vec).collect();

    // Kill once the client has had `at` batches acknowledged, plus a few random milliseconds, so
    // kills land inside a request or between two; the last few batches are left to come after.
    let kills = MIN_KILLS + rng.random_range(0..=2);
    let mut at = rand::seq::index::sample(&mut rng, batches.len() - 4, kills).into_vec();
    at.sort_unstable();
    let jitter: Vec<Duration> = (0..kills).map(|_| Duration::from_millis(rng.random_range(0..15))).collect();
    println!("[{TEST}] {} batches of {BATCH}; SIGKILL after {at:?} acknowledged batches", batches.len());

    let shared = Arc::new(Shared {
        url: RwLock::new(herald.url().to_string()),
        acked: AtomicUsize::new(0),
        submission_done: AtomicBool::new(false),
        killer_failed: AtomicBool::new(false),
    });
    let killer = Killer::spawn(herald, Arc::clone(&shared), at, jitter);
    let started = Instant::now();
    let retries = submit_through_crashes(&shared, &key, &batches, SUBMIT_TIMEOUT * backend.slowdown()).await;
    let (mut herald, record) = killer.finish();
    let kills: Vec<String> = record
        .iter()
        .map(|k| format!("after {} batches{}", k.acked_batches, if k.during_submission { "" } else { " (late)" }))
        .collect();
    println!("[{TEST}] submitted in {:?}; SIGKILLs {kills:?}; {retries:?}", started.elapsed());
    let during = record.iter().filter(|k| k.during_submission).count();
    assert!(during >= MIN_KILLS, "only {during} SIGKILLs landed during submission ({record:?}), need {MIN_KILLS}");

    settle_and_verify(&mut herald, &work, TEST).await;
}

/// Appends `items` to `herald-requests` of a stopped server's data directory through the
/// ingestor the API uses (validated, durable), as client `tests`.
async fn queue_offline(herald: &Herald, items: &[Value]) {
    let config = herald.backends_config(herald::config::Config::default());
    let app = herald::app::App::open(config, herald.data_dir().to_path_buf())
        .await
        .expect("open the data directory of the stopped server");
    for chunk in items.chunks(BATCH) {
        let batch = chunk.iter().cloned().map(herald::ingest::Submission::json).collect();
        let outcomes = app.ingestor.submit("tests", batch).await.expect("append the requests");
        assert!(
            outcomes.iter().all(|o| matches!(o, herald::ingest::ItemOutcome::Accepted(_))),
            "a queued request was rejected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_dispatch_loses_and_duplicates_nothing() {
    for backend in Backend::all("kill during dispatch") {
        eprintln!("[kill during dispatch] on the {} backends", backend.name);
        sigkill_during_dispatch_on(&backend).await;
    }
}

async fn sigkill_during_dispatch_on(backend: &Backend) {
    const TEST: &str = "kill during dispatch";
    let mut rng = StdRng::seed_from_u64(common::seed(TEST));
    // Five deliveries per request, all queued before the pipeline runs (the way `herald bench
    // --backlog` queues them: through the API's accept path, in process, with the server
    // stopped), so that every SIGKILL below finds dispatch with a backlog. Submitted over HTTP
    // while the server ran, dispatch keeps up with the submitters and the backlog is gone by the
    // time the last batch is acknowledged.
    let work = Workload::generate(&mut rng, FanOut::Wide);
    let expected = work.expected_total();
    let mut herald = Herald::start_on(backend, None);
    work.install(&herald.api()).await;
    herald.stop();
    let started = Instant::now();
    queue_offline(&herald, &work.items).await;
    herald.serve();
    let mut counter = OutboxCounter::new(herald.data_dir());
    println!(
        "[{TEST}] {NOTIFICATIONS} accepted in {:?}; outbox at {} of {expected} lines",
        started.elapsed(),
        counter.total()
    );

    let kills = MIN_KILLS + rng.random_range(0..=2);
    let mut at_kill = Vec::new();
    for k in 0..kills {
        // Dispatch is in progress when the outbox grows past its lowest point since the restart
        // (recovery may first cut lines written after the last commit); then SIGKILL at a random
        // moment.
        let mut low = counter.total();
        let waiting = Instant::now();
        loop {
            let now = counter.total();
            if now > low || now >= expected {
                break;
            }
            low = now;
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "[{TEST}] before kill {k}: the outbox stayed at {low} of {expected} lines for 60 s\n{}",
                herald.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        herald.kill();
        at_kill.push(counter.total());
        herald.serve();
    }
    println!("[{TEST}] outbox lines at each SIGKILL: {at_kill:?} of {expected}");
    let mid_dispatch = at_kill.iter().filter(|&&n| n < expected).count();
    assert!(
        mid_dispatch >= MIN_KILLS,
        "only {mid_dispatch} of {kills} SIGKILLs landed before dispatch had written all {expected} lines \
         ({at_kill:?}): dispatch outran the test, so it did not exercise a crash mid-dispatch"
    );

    settle_and_verify(&mut herald, &work, TEST).await;
}
