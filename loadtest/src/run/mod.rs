//! `herald-loadtest run`: an open-loop load generator against a running Herald, with the provider
//! sandbox in process, measuring API acknowledgement and end-to-end latency per notification.
//!
//! - **Open loop**: batch `k` has an intended send time, `start + k × batch / rate`; the
//!   scheduler spawns its request at that time whether or not earlier requests have returned,
//!   and latencies count from the intended time, so a stall shows up as latency rather than as a
//!   lower request rate (no coordinated omission).
//! - **End to end**: the sandbox tells the generator of every delivery id a provider accepts
//!   ([`crate::sandbox::State::observe_accepted`]); a delivery id starts with its notification's
//!   id (`<notification>.<hash>`), so the notification's latency is from its intended send time to
//!   the arrival of its last expected delivery (two for push: the iOS and the Android device;
//!   one for SMS or email).
//! - **Set-up**: `--users N` users `lt-0…` (an iOS and an Android device, an email, a phone) and
//!   the template `loadtest` are put through the API first; repeating them is harmless.
//! - Every notification carries the idempotency key `<run id>-<n>`, so runs can follow each other
//!   on one data directory. Bounded: `rate × duration` notifications, then at most `drain` for the
//!   last deliveries.

pub mod find_max;
pub mod plot;
pub mod priority;
pub mod report;

use crate::sandbox::{OnAccept, Sandbox};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use herald_connectors::channels::io;
use indicatif::{ProgressBar, ProgressStyle};
use report::{Percentiles, Report};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// A notification's channel, and how many deliveries it makes for a load-test user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Push,
    Sms,
    Email,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Push => "push",
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }

    /// The most deliveries one notification makes (a push's).
    const MOST_DELIVERIES: u32 = Channel::Push.deliveries();

    /// Deliveries per notification: every user has an iOS and an Android device.
    const fn deliveries(self) -> u32 {
        match self {
            Channel::Push => 2,
            Channel::Sms | Channel::Email => 1,
        }
    }
}

/// The channel mix, as weights (`push=10,sms=1,email=5`, the daily volumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(Vec<(Channel, u32)>);

impl Default for Mix {
    fn default() -> Self {
        Mix(vec![(Channel::Push, 10), (Channel::Sms, 1), (Channel::Email, 5)])
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| format!("{part:?}: write channel=weight"))?;
            let channel = match name.trim() {
                "push" => Channel::Push,
                "sms" => Channel::Sms,
                "email" => Channel::Email,
                other => return Err(format!("{other:?} is not a channel (push, sms, email)")),
            };
            let weight: u32 = weight.trim().parse().map_err(|e| format!("{part:?}: {e}"))?;
            if mix.iter().any(|(c, _)| *c == channel) {
                return Err(format!("{name} is listed twice"));
            }
            mix.push((channel, weight));
        }
        if mix.iter().map(|(_, w)| w).sum::<u32>() == 0 {
            return Err("the mix needs a positive weight".into());
        }
        Ok(Mix(mix))
    }
}

impl Mix {
    /// The channel of notification `n`: the weights laid out in turn, repeated.
    pub fn channel(&self, n: u64) -> Channel {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut slot = n % total.max(1);
        for (channel, weight) in &self.0 {
            if slot < u64::from(*weight) {
                return *channel;
            }
            slot -= u64::from(*weight);
        }
        Channel::Push
    }
}

/// What `run` is asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Herald's base URL.
    pub target: String,
    /// An API key with the `send`, `contacts` and `templates` scopes (an admin key has them).
    pub key: String,
    /// Notifications per second.
    pub rate: f64,
    pub duration: Duration,
    pub mix: Mix,
    pub users: usize,
    /// Notifications per HTTP request.
    pub batch: usize,
    /// How long to wait for the last deliveries after the last send.
    pub drain: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Put the users and the template first (a later step of `find-max` skips it).
    pub set_up: bool,
    /// The notifications' category: `transactional` (the default: never capped, the priority
    /// lane) or another, such as `marketing` for a flood behind it.
    pub category: String,
}

/// Runs the load for `length` unmeasured (setting up the users and the template if `options`
/// says so), so the measured run that follows starts warm: connections, provider tokens, caches
/// and pools are set up, as they are in production. Returns its report (for a log line); a later
/// run with `options` no longer sets up.
pub async fn warm_up(
    options: &mut RunOptions,
    length: Duration,
    sandbox: &Sandbox,
) -> Result<Option<Report>, RunError> {
    if length.is_zero() {
        return Ok(None);
    }
    let warm = RunOptions { duration: length, ..options.clone() };
    let report = run(&warm, sandbox).await?;
    tracing::info!(sent = report.sent, received = report.received, "warm-up done; measuring");
    if options.progress {
        eprintln!("warm-up: {} sent, {} received (not in the report)", report.sent, report.received);
    }
    options.set_up = false;
    Ok(Some(report))
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("set-up failed: {0}")]
    Setup(String),
    #[error("bad options: {0}")]
    Options(String),
}

/// What the generator records while a run goes.
struct Shared {
    /// Notification id → (intended send time, deliveries expected). Sized for the whole run up
    /// front: growing a table of 300,000 entries paused the generator's thread for milliseconds.
    intended: Mutex<HashMap<String, (Instant, u32)>>,
    ack: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    requested: AtomicU64,
    accepted: AtomicU64,
}

/// Delivery ids the sandbox accepted while runs went, with when: one log for all of them, sized
/// up front for every delivery they can make, so that pushing never copies it.
struct Arrivals(Mutex<Vec<(String, Instant)>>);

impl Arrivals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Instant)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How far a run has counted its deliveries in the [`Arrivals`] log.
#[derive(Default)]
struct Tally {
    cursor: usize,
    received: u64,
}

impl Tally {
    /// Arrivals counted per hold of the log's lock, so that counting never holds up the sandbox
    /// for long.
    const CHUNK: usize = 4096;

    /// Counts this run's deliveries that arrived since the last call. Call it once every request
    /// of the run was answered: an arrival is counted only if its notification is known by then.
    fn count(&mut self, shared: &Shared, arrivals: &Arrivals) -> u64 {
        let intended = shared.intended.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let log = arrivals.lock();
            let end = log.len().min(self.cursor + Self::CHUNK);
            self.received += log[self.cursor..end]
                .iter()
                .filter(|(d, _)| intended.contains_key(d.split('.').next().unwrap_or_default()))
                .count() as u64;
            self.cursor = end;
            if end == log.len() {
                return self.received;
            }
        }
    }
}

impl Shared {
    fn error(&self, kind: String, n: u64) {
        *self.errors.lock().unwrap_or_else(PoisonError::into_inner).entry(kind).or_default() += n;
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 3 significant digits, growing as needed: valid constants, so it cannot fail.
    let mut h = Histogram::new(3).expect("3 significant digits is a valid precision");
    h.auto(true);
    h
}

/// The users and template the run sends to.
async fn set_up(client: &reqwest::Client, options: &RunOptions) -> Result<(), RunError> {
    let url = |path: &str| format!("{}{path}", options.target);
    let template = json!({ "id": "loadtest", "locale": "en",
        "push": { "title": "Load test", "body": "Notification {{ n }}" },
        "sms": { "text": "Load test {{ n }}" },
        "email": { "subject": "Load test {{ n }}", "text": "Notification {{ n }}", "html": "<p>Notification {{ n }}</p>" } });
    let reply = client
        .post(url("/v1/templates"))
        .bearer_auth(&options.key)
        .json(&template)
        .send()
        .await
        .map_err(|e| RunError::Unreachable { url: options.target.clone(), detail: e.to_string() })?;
    if !reply.status().is_success() {
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        return Err(RunError::Setup(format!("POST /v1/templates answered {status}: {body}")));
    }
    let puts = futures_util::stream::iter(0..options.users).map(|u| {
        let user = json!({
            "email": format!("lt-{u}@loadtest.example"),
            "phone": format!("+1415{:07}", u % 10_000_000),
            "devices": [
                { "id": "ios", "platform": "ios", "token": format!("{:064x}", u) },
                { "id": "android", "platform": "android", "token": format!("fcm-lt-{u}") },
            ],
        });
        let request = client.put(url(&format!("/v1/users/lt-{u}"))).bearer_auth(&options.key).json(&user);
        async move {
            let reply = request.send().await.map_err(|e| RunError::Setup(format!("PUT /v1/users: {e}")))?;
            if reply.status().is_success() {
                Ok(())
            } else {
                Err(RunError::Setup(format!("PUT /v1/users/lt-{u} answered {}", reply.status())))
            }
        }
    });
    let results: Vec<Result<(), RunError>> = puts.buffer_unordered(16).collect().await;
    results.into_iter().collect()
}

/// Runs the load against `options.target`, with `sandbox` standing in for the providers.
pub async fn run(options: &RunOptions, sandbox: &Sandbox) -> Result<Report, RunError> {
    let mut reports = run_together(std::slice::from_ref(options), sandbox).await?;
    reports.pop().ok_or_else(|| RunError::Options("no run".into()))
}

/// Runs several loads at once (a transactional probe beside a marketing flood), each with its own
/// run id and report. Each load is generated on a thread of its own, with its own runtime and
/// HTTP client, so that building and answering a flood's requests never delays a probe's send
/// (on a shared runtime, the probe's timer waited behind the flood's tasks: up to 44 ms late,
/// measured on the wire). The sandbox's arrivals go to one log; each run counts its own.
pub async fn run_together(all: &[RunOptions], sandbox: &Sandbox) -> Result<Vec<Report>, RunError> {
    for options in all {
        if !options.rate.is_finite() || options.rate <= 0.0 || options.batch == 0 || options.users == 0 {
            return Err(RunError::Options("rate, batch and users must be positive".into()));
        }
    }
    let client = http_client()?;
    for options in all.iter().filter(|o| o.set_up) {
        set_up(&client, options).await?;
    }
    let shared: Vec<Arc<Shared>> = all
        .iter()
        .map(|options| {
            Arc::new(Shared {
                intended: Mutex::new(HashMap::with_capacity(presize(total(options)))),
                ack: Mutex::new(histogram()),
                errors: Mutex::default(),
                requested: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
            })
        })
        .collect();
    let most_deliveries: u64 = all.iter().map(|o| total(o) * u64::from(Channel::MOST_DELIVERIES)).sum();
    let arrivals = Arc::new(Arrivals(Mutex::new(Vec::with_capacity(presize(most_deliveries)))));
    let before = sandbox.state.view();
    let log = Arc::clone(&arrivals);
    let on_accept: OnAccept = Arc::new(move |_provider, delivery| {
        let at = Instant::now();
        log.lock().push((delivery.to_string(), at));
    });
    sandbox.state.observe_accepted(Some(on_accept));
    let runs: Vec<_> = all
        .iter()
        .zip(&shared)
        .enumerate()
        .map(|(n, (options, shared))| {
            generate_on_own_thread(n, options.clone(), Arc::clone(shared), Arc::clone(&arrivals))
        })
        .collect::<Result<_, _>>()?;
    let mut generated = Vec::with_capacity(runs.len());
    for run in runs {
        generated
            .push(run.await.map_err(|_| RunError::Options("a generator thread stopped without reporting".into()))?);
    }
    sandbox.state.observe_accepted(None);
    let after = sandbox.state.view();
    let duplicates = after.iter().map(|(p, s)| s.duplicates - before.get(p).map_or(0, |b| b.duplicates)).sum();
    Ok(all
        .iter()
        .zip(&shared)
        .zip(generated)
        .map(|((options, shared), (run_id, start, last_sent))| {
            summarize(options, &run_id, shared, &arrivals, start, last_sent, duplicates)
        })
        .collect())
}

fn http_client() -> Result<reqwest::Client, RunError> {
    reqwest::Client::builder().pool_max_idle_per_host(256).build().map_err(|e| RunError::Options(e.to_string()))
}

/// A capacity to reserve for `n` entries: all of them up to 16 Mi (a very long run grows past it).
fn presize(n: u64) -> usize {
    usize::try_from(n.min(1 << 24)).unwrap_or(1 << 24)
}

/// Notifications a run sends.
fn total(options: &RunOptions) -> u64 {
    (options.rate * options.duration.as_secs_f64()).round().max(1.0) as u64
}

/// Starts [`generate`] on a thread of its own (a current-thread runtime and an HTTP client of its
/// own); the receiver gets its run id, start and last send.
fn generate_on_own_thread(
    n: usize,
    options: RunOptions,
    shared: Arc<Shared>,
    arrivals: Arc<Arrivals>,
) -> Result<tokio::sync::oneshot::Receiver<(String, Instant, Instant)>, RunError> {
    let (done, report) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Options(format!("cannot start a generator runtime: {e}")))?;
    let client = {
        let _inside = runtime.enter();
        http_client()?
    };
    // A transactional load is the one measured for its latency (the probe beside a flood): on a
    // core the flood keeps busy its thread asks for a short scheduler slice, as Herald's own
    // priority threads do, so that its timer fires on time (see `io::SHORT_SLICE`).
    let short_slice = options.category == herald_schemas::TRANSACTIONAL;
    std::thread::Builder::new()
        .name(format!("loadtest-gen-{n}"))
        .spawn(move || {
            if short_slice && let Err(error) = io::set_thread_slice(Some(io::SHORT_SLICE)) {
                tracing::debug!(%error, "the probe keeps the default scheduler slice");
            }
            let generated = runtime.block_on(generate(&client, &options, &shared, &arrivals));
            let _ = done.send(generated);
        })
        .map_err(|e| RunError::Options(format!("cannot start a generator thread: {e}")))?;
    Ok(report)
}

/// Sends one run's load on schedule and waits (at most `drain`) for its deliveries: its run id,
/// start and last send.
async fn generate(
    client: &reqwest::Client,
    options: &RunOptions,
    shared: &Arc<Shared>,
    arrivals: &Arrivals,
) -> (String, Instant, Instant) {
    let total = total(options);
    let run_id = format!("{:08x}", rand::random::<u32>());
    let bar = if options.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} sent {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let url = format!("{}/v1/notifications", options.target);
    let batches = total.div_ceil(options.batch as u64);
    let interval = Duration::from_secs_f64(options.batch as f64 / options.rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut requests = JoinSet::new();
    for k in 0..batches {
        let at = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(at).await;
        let first = k * options.batch as u64;
        let numbers: Vec<u64> = (first..(first + options.batch as u64).min(total)).collect();
        let channels: Vec<Channel> = numbers.iter().map(|n| options.mix.channel(*n)).collect();
        let items: Vec<Value> = numbers
            .iter()
            .zip(&channels)
            .map(|(n, channel)| {
                json!({ "user_id": format!("lt-{}", n % options.users as u64), "template": "loadtest",
                        "channels": [channel.as_str()], "category": options.category,
                        "idempotency_key": format!("{run_id}-{n}"), "data": { "n": n } })
            })
            .collect();
        let request = client.post(&url).bearer_auth(&options.key).json(&json!({ "notifications": items }));
        let shared = Arc::clone(shared);
        let intended = at.into_std();
        shared.requested.fetch_add(numbers.len() as u64, Ordering::Relaxed);
        requests.spawn(async move { acknowledge(request, intended, &channels, &shared).await });
        bar.set_position(first + numbers.len() as u64);
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    let last_sent = Instant::now();

    // The last deliveries.
    let expected: u64 =
        shared.intended.lock().unwrap_or_else(PoisonError::into_inner).values().map(|(_, n)| u64::from(*n)).sum();
    let deadline = Instant::now() + options.drain;
    let mut tally = Tally::default();
    loop {
        let arrived = tally.count(shared, arrivals);
        bar.set_message(format!("· {arrived}/{expected} deliveries received"));
        if arrived >= expected || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    (run_id, start.into_std(), last_sent)
}

/// Sends one batch and records its acknowledgement: latency from the intended time, and each
/// item accepted or the error's kind.
async fn acknowledge(request: reqwest::RequestBuilder, intended: Instant, channels: &[Channel], shared: &Shared) {
    let n = channels.len() as u64;
    let reply = match request.send().await {
        Ok(reply) => reply,
        Err(error) => {
            let kind = if error.is_timeout() { "timeout" } else { "transport" };
            return shared.error(kind.into(), n);
        }
    };
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or_default();
    let latency = intended.elapsed().as_micros() as u64;
    if status != reqwest::StatusCode::ACCEPTED {
        return shared.error(format!("http_{}", status.as_u16()), n);
    }
    let _ = shared.ack.lock().unwrap_or_else(PoisonError::into_inner).record_n(latency.max(1), n);
    let results = body["results"].as_array().cloned().unwrap_or_default();
    let mut intended_ids = shared.intended.lock().unwrap_or_else(PoisonError::into_inner);
    for (result, channel) in results.iter().zip(channels) {
        match (result["status"].as_str(), result["id"].as_str()) {
            (Some("accepted"), Some(id)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                intended_ids.insert(id.to_string(), (intended, channel.deliveries()));
            }
            _ => {
                let code = result["error"]["code"].as_str().unwrap_or("unknown");
                drop(intended_ids);
                shared.error(format!("rejected_{code}"), 1);
                intended_ids = shared.intended.lock().unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

/// The report: end-to-end latency per notification from its last expected delivery.
fn summarize(
    options: &RunOptions,
    run_id: &str,
    shared: &Shared,
    arrivals: &Arrivals,
    start: Instant,
    last_sent: Instant,
    duplicates: u64,
) -> Report {
    let intended = shared.intended.lock().unwrap_or_else(PoisonError::into_inner);
    let arrivals = arrivals.lock();
    // Notification id → (deliveries seen, last arrival).
    let mut seen: HashMap<&str, (u32, Instant)> = HashMap::with_capacity(intended.len());
    for (delivery, at) in arrivals.iter() {
        let notification = delivery.split('.').next().unwrap_or_default();
        let entry = seen.entry(notification).or_insert((0, *at));
        entry.0 += 1;
        entry.1 = entry.1.max(*at);
    }
    let mut e2e = histogram();
    let mut by_second: Vec<Histogram<u64>> = Vec::new();
    let (mut received, mut last_received) = (0u64, start);
    for (id, (sent_at, expected)) in intended.iter() {
        if let Some((count, at)) = seen.get(id.as_str())
            && count >= expected
        {
            received += 1;
            last_received = last_received.max(*at);
            let latency_us = at.saturating_duration_since(*sent_at).as_micros().max(1) as u64;
            let _ = e2e.record(latency_us);
            let second = sent_at.saturating_duration_since(start).as_secs() as usize;
            if by_second.len() <= second {
                by_second.resize_with(second + 1, histogram);
            }
            let _ = by_second[second].record(latency_us);
        }
    }
    let mut errors = shared.errors.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let sent = shared.accepted.load(Ordering::Relaxed);
    if received < sent {
        errors.insert("not_received".into(), sent - received);
    }
    let elapsed = last_received.max(last_sent).saturating_duration_since(start).as_secs_f64().max(1e-3);
    let ack = shared.ack.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Report {
        run_id: run_id.to_string(),
        target: options.target.clone(),
        rate_per_s: options.rate,
        duration_s: options.duration.as_secs_f64(),
        requested: shared.requested.load(Ordering::Relaxed),
        sent,
        received,
        deliveries_received: intended.keys().filter_map(|id| seen.get(id.as_str())).map(|(n, _)| u64::from(*n)).sum(),
        duplicates,
        throughput_per_s: received as f64 / elapsed,
        ack_latency_ms: Percentiles::of(&ack),
        e2e_latency_ms: Percentiles::of(&e2e),
        e2e_by_second: by_second.iter().map(Percentiles::of).collect(),
        errors,
        plot: None,
        ack_histogram: ack,
        e2e_histogram: e2e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_its_weights_in_turn() {
        let mix: Mix = "push=10,sms=1,email=5".parse().unwrap();
        assert_eq!(mix, Mix::default());
        let channels: Vec<Channel> = (0..16).map(|n| mix.channel(n)).collect();
        assert_eq!(channels.iter().filter(|c| **c == Channel::Push).count(), 10);
        assert_eq!(channels[10], Channel::Sms);
        assert_eq!(channels.iter().filter(|c| **c == Channel::Email).count(), 5);
        assert_eq!(mix.channel(16), Channel::Push);
        let sms_only: Mix = "sms=1".parse().unwrap();
        assert!((0..5).all(|n| sms_only.channel(n) == Channel::Sms));
        for bad in ["push", "fax=1", "push=x", "push=0", "sms=1,sms=2"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad}");
        }
    }

    fn shared_with(ids: &[&str]) -> Shared {
        let now = Instant::now();
        Shared {
            intended: Mutex::new(ids.iter().map(|id| (id.to_string(), (now, 1))).collect()),
            ack: Mutex::new(histogram()),
            errors: Mutex::default(),
            requested: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_tally_counts_its_own_runs_arrivals_once_across_calls_and_chunks() {
        let mine = shared_with(&["n1", "n2"]);
        let arrivals = Arrivals(Mutex::default());
        let now = Instant::now();
        // Another run's deliveries, more than a chunk of them, around two of ours.
        let push = |id: &str| arrivals.lock().push((id.to_string(), now));
        push("n1.ios");
        for k in 0..Tally::CHUNK + 10 {
            push(&format!("other{k}.sms"));
        }
        push("n1.android");
        let mut tally = Tally::default();
        assert_eq!(tally.count(&mine, &arrivals), 2);
        assert_eq!(tally.count(&mine, &arrivals), 2, "nothing new arrived");
        push("n2.email");
        push("n3.email");
        assert_eq!(tally.count(&mine, &arrivals), 3);
        assert_eq!(tally.cursor, Tally::CHUNK + 14);
    }
}
