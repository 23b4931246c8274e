//! `herald bench`: the pipeline's own capacity on this machine, with no
//! network in the way.
//!
//! It creates users (each with an iOS and an Android device, an email and a
//! phone) and a template, then appends N notifications through the same
//! accept path the API uses ([`Ingestor::submit`], durable appends), while
//! the full runtime (six stages, durable topics, outbox dispatchers) runs.
//! The clock stops when every expected delivery is in the outbox. The
//! channel mix follows the daily volumes, 10:1:5 push:SMS:email.

use crate::app::App;
use crate::ingest::{ItemOutcome, Submission};
use crate::runtime::Runtime;
use crate::telemetry;
use herald_schemas::contacts::{Device, Platform, User};
use herald_schemas::template::{EmailPart, PushPart, SmsPart, Template};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SUBMIT_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub notifications: u64,
    pub users: u64,
    /// Concurrent submitters (like concurrent API connections).
    pub clients: u32,
    /// Give up waiting for deliveries after this long.
    pub timeout: Duration,
    /// Bytes of filler in each request's data (carried through validate, the log and render's
    /// input), to see how the cost grows with payload size.
    pub payload_bytes: usize,
    /// Append every request before the pipeline starts, so it works through a backlog of
    /// `notifications` (and the time is the pipeline's alone).
    pub backlog: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub notifications: u64,
    pub deliveries: u64,
    pub seconds: f64,
    pub throughput_per_s: f64,
    pub deliveries_per_s: f64,
    pub ingest_seconds: f64,
    /// Batches, records and busy time (ms) per stage.
    pub stages: Vec<telemetry::StageTotal>,
    /// Durable writes (fsyncs) and the writes they covered, for the embedded backend.
    pub fsyncs: Option<u64>,
    pub durable_writes: Option<u64>,
    /// Requests queued in `herald-requests` when the pipeline started (with `--backlog`).
    pub backlog: u64,
    /// The process's peak resident memory (Linux), in MiB.
    pub peak_rss_mib: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("setting up users and templates failed: {0}")]
    Setup(#[from] herald_schemas::store::StoreError),
    #[error("appending requests failed: {0}")]
    Append(#[from] crate::ingest::IngestError),
    #[error("{0} bench notifications were rejected; first: {1}")]
    Rejected(usize, String),
    #[error("only {delivered} of {expected} deliveries reached the outbox within {timeout:?}")]
    Timeout { delivered: u64, expected: u64, timeout: Duration },
}

/// Channels of the i-th notification: 10 push, 1 SMS, 5 email in every 16.
fn channels_of(i: u64) -> (&'static str, u64) {
    match i % 16 {
        0..=9 => ("push", 2),
        10 => ("sms", 1),
        _ => ("email", 1),
    }
}

pub async fn run(app: App, options: BenchOptions) -> Result<BenchReport, BenchError> {
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    setup(&app, options.users).await?;
    let expected: u64 = (0..options.notifications).map(|i| channels_of(i).1).sum();
    let mut counter = OutboxCounter::new(&app.outbox_dir());
    let baseline = counter.count();

    let bar_style = |template: &str| {
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
    };
    let (runtime, started, mut submit, mut ingest_time) = if options.backlog {
        // Everything appended first, with the pipeline stopped: the backlog sits on disk.
        let bar = ProgressBar::new(options.notifications);
        bar.set_style(bar_style("{spinner} appended [{bar:40}] {pos}/{len} ({per_sec}, {eta})"));
        let submit = spawn_submitters(&app, &options, &run_id, Some(bar.clone()));
        let ingest = join_submitters(submit).await?;
        bar.finish_and_clear();
        tracing::info!(requests = options.notifications, seconds = ingest.as_secs_f64(), "backlog appended");
        (Runtime::start(&app), Instant::now(), None, ingest)
    } else {
        let runtime = Runtime::start(&app);
        (runtime, Instant::now(), Some(spawn_submitters(&app, &options, &run_id, None)), Duration::ZERO)
    };
    let bar = ProgressBar::new(expected);
    bar.set_style(bar_style("{spinner} delivered [{bar:40}] {pos}/{len} ({per_sec}, {eta})"));
    let n = options.notifications;

    let mut delivered = 0;
    while delivered < expected {
        if started.elapsed() > options.timeout {
            bar.abandon();
            runtime.stop().await;
            return Err(BenchError::Timeout { delivered, expected, timeout: options.timeout });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        delivered = counter.count().saturating_sub(baseline);
        bar.set_position(delivered.min(expected));
        if submit.as_ref().is_some_and(|s| s.is_finished())
            && let Some(handle) = submit.take()
        {
            match join_submitters(handle).await {
                Ok(t) => ingest_time = t,
                Err(e) => {
                    runtime.stop().await;
                    return Err(e);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    runtime.stop().await;
    let stages = telemetry::stage_totals();
    let stats = app.backends.embedded.as_ref().map(|db| db.commit_stats());
    Ok(BenchReport {
        notifications: n,
        deliveries: delivered,
        seconds,
        throughput_per_s: n as f64 / seconds,
        deliveries_per_s: delivered as f64 / seconds,
        ingest_seconds: ingest_time.as_secs_f64(),
        stages,
        fsyncs: stats.map(|s| s.syncs),
        durable_writes: stats.map(|s| s.waiters),
        backlog: if options.backlog { n } else { 0 },
        peak_rss_mib: peak_rss_mib(),
    })
}

type Submitters = tokio::task::JoinHandle<Result<Duration, BenchError>>;

/// Appends the bench's requests through the API's accept path from `clients` concurrent
/// submitters (as several API connections would: their appends share fsyncs); the task ends with
/// the time the last append took to finish.
fn spawn_submitters(app: &App, options: &BenchOptions, run_id: &str, bar: Option<ProgressBar>) -> Submitters {
    let started = Instant::now();
    let ingestor = app.ingestor.clone();
    let users = options.users.max(1);
    let n = options.notifications;
    let clients = options.clients.max(1) as u64;
    let filler = "x".repeat(options.payload_bytes);
    let batches = n.div_ceil(SUBMIT_BATCH as u64);
    let submitters: Vec<_> = (0..clients)
        .map(|client| {
            let ingestor = ingestor.clone();
            let run_id = run_id.to_string();
            let bar = bar.clone();
            let filler = filler.clone();
            tokio::spawn(async move {
                for b in (client..batches).step_by(clients as usize) {
                    let (from, to) = (b * SUBMIT_BATCH as u64, ((b + 1) * SUBMIT_BATCH as u64).min(n));
                    let batch: Vec<Submission> = (from..to)
                        .map(|k| {
                            Submission::json(json!({
                                "user_id": format!("bench-{}", k % users),
                                "template": "bench",
                                "data": {"n": k, "name": "Ada", "filler": filler},
                                "channels": [channels_of(k).0],
                                "category": "transactional",
                                "idempotency_key": format!("{run_id}-{k}"),
                            }))
                        })
                        .collect();
                    let outcomes = ingestor.submit("bench", batch).await?;
                    let rejected: Vec<_> = outcomes
                        .iter()
                        .filter_map(|o| match o {
                            ItemOutcome::Rejected(_, r) => Some(r.message.clone()),
                            ItemOutcome::Accepted(_) => None,
                        })
                        .collect();
                    if let Some(first) = rejected.first() {
                        return Err(BenchError::Rejected(rejected.len(), first.clone()));
                    }
                    if let Some(bar) = &bar {
                        bar.inc(to - from);
                    }
                }
                Ok(())
            })
        })
        .collect();
    tokio::spawn(async move {
        for s in submitters {
            s.await.map_err(|e| BenchError::Rejected(0, format!("submitter failed: {e}")))??;
        }
        Ok::<Duration, BenchError>(started.elapsed())
    })
}

async fn join_submitters(handle: Submitters) -> Result<Duration, BenchError> {
    handle.await.map_err(|join| BenchError::Rejected(0, format!("submitter failed: {join}")))?
}

/// `VmHWM` of `/proc/self/status`: the most memory the process had resident, in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

async fn setup(app: &App, users: u64) -> Result<(), BenchError> {
    let template = Template {
        id: "bench".into(),
        locale: "en".into(),
        default: true,
        push: Some(PushPart {
            title: "Order {{ n }}".into(),
            body: "Hello {{ name }}, your order {{ n }} shipped".into(),
        }),
        sms: Some(SmsPart { text: "Order {{ n }} shipped".into() }),
        email: Some(EmailPart {
            subject: "Order {{ n }} shipped".into(),
            text: "Hello {{ name }}, order {{ n }} is on its way.".into(),
            html: "<p>Hello {{ name }}, order <b>{{ n }}</b> is on its way.</p>".into(),
        }),
    };
    app.backends.templates.put_template(&template).await?;
    let mut batch = Vec::with_capacity(1000);
    for u in 0..users {
        batch.push(User {
            id: format!("bench-{u}"),
            email: Some(format!("user{u}@example.com")),
            phone: Some(format!("+1555{u:07}")),
            locale: Some("en-US".into()),
            timezone: Some("UTC".into()),
            devices: vec![
                Device { id: "ios".into(), platform: Platform::Ios, token: format!("apns-{u:08x}"), active: true },
                Device {
                    id: "android".into(),
                    platform: Platform::Android,
                    token: format!("fcm-{u:08x}"),
                    active: true,
                },
            ],
            preferences: Default::default(),
            unreachable: Vec::new(),
        });
        if batch.len() == 1000 {
            app.backends.contacts.put_users(&batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        app.backends.contacts.put_users(&batch).await?;
    }
    Ok(())
}

/// Counts complete lines in the outbox files, reading only what was appended.
struct OutboxCounter {
    files: Vec<(PathBuf, u64, u64)>,
}

impl OutboxCounter {
    fn new(dir: &Path) -> Self {
        let files = ["push", "sms", "email"].iter().map(|n| (dir.join(format!("{n}.jsonl")), 0, 0)).collect();
        Self { files }
    }

    fn count(&mut self) -> u64 {
        let mut total = 0;
        for (path, read, lines) in &mut self.files {
            if let Ok(mut f) = std::fs::File::open(&*path)
                && f.seek(SeekFrom::Start(*read)).is_ok()
            {
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() {
                    // Count only complete lines; a partial tail is read again next time.
                    if let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') {
                        *lines += buf[..=last_nl].iter().filter(|&&b| b == b'\n').count() as u64;
                        *read += last_nl as u64 + 1;
                    }
                }
            }
            total += *lines;
        }
        total
    }
}
