//! The stage chain over real embedded stores: validate → enrich → dedup →
//! throttle → render → fan-out, one batch of 1,000 notifications at a time, each
//! stage alone on what the stages before it produced, and JSON decoding of API
//! items and of internal records.
//!
//! `cargo bench -p herald-benches --bench stages`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herald_connectors::embedded::{EmbeddedDb, EmbeddedOptions};
use herald_schemas::contacts::{Device, Platform, User};
use herald_schemas::request::{ChannelKind, NotificationRequest, RequestEnvelope};
use herald_schemas::stage::{Clock, Stage, StageOutput, SystemClock};
use herald_schemas::store::{ContactStore, TemplateStore};
use herald_schemas::template::{EmailPart, PushPart, SmsPart, Template};
use herald_schemas::{NotificationId, WorkItem, codec};
use herald_stages::dedup::DedupStage;
use herald_stages::enrich::{ContactCacheConfig, EnrichStage};
use herald_stages::fanout::fan_out;
use herald_stages::render::{RenderLimits, RenderStage};
use herald_stages::throttle::{ThrottleConfig, ThrottleStage};
use herald_stages::validate::{ValidateLimits, ValidateStage, Validator};
use std::sync::Arc;
use std::time::Duration;

const BATCH: usize = 1000;
const USERS: usize = 1000;

fn user(i: usize) -> User {
    User {
        id: format!("u{i}"),
        email: Some(format!("user{i}@example.com")),
        phone: Some(format!("+1555{i:07}")),
        locale: Some("en-US".into()),
        timezone: Some("UTC".into()),
        devices: vec![
            Device { id: "i".into(), platform: Platform::Ios, token: format!("apns{i}"), active: true },
            Device { id: "a".into(), platform: Platform::Android, token: format!("fcm{i}"), active: true },
        ],
        preferences: Default::default(),
        unreachable: Vec::new(),
    }
}

fn template() -> Template {
    Template {
        id: "t".into(),
        locale: "en".into(),
        default: true,
        push: Some(PushPart { title: "Order {{ n }}".into(), body: "Hello {{ name }}, order {{ n }} shipped".into() }),
        sms: Some(SmsPart { text: "Order {{ n }} shipped".into() }),
        email: Some(EmailPart {
            subject: "Order {{ n }}".into(),
            text: "Hello {{ name }}, order {{ n }} shipped".into(),
            html: "<p>Hello {{ name }}, order <b>{{ n }}</b></p>".into(),
        }),
    }
}

fn item(k: usize) -> WorkItem {
    let channel = match k % 16 {
        0..=9 => ChannelKind::Push,
        10 => ChannelKind::Sms,
        _ => ChannelKind::Email,
    };
    WorkItem::new(RequestEnvelope::new(
        NotificationId::generate(),
        "bench".into(),
        0,
        NotificationRequest {
            user_id: format!("u{}", k % USERS),
            topic: None,
            template: "t".into(),
            data: serde_json::json!({"n": k, "name": "Ada"}),
            channels: vec![channel],
            fallback: Vec::new(),
            category: "transactional".into(),
            idempotency_key: None,
            locale: None,
            send_at: None,
            expires_at: None,
            ttl: None,
            digest: None,
        },
    ))
}

/// `items` through `stages`, in order.
async fn through(stages: &mut [Box<dyn Stage>], mut items: Vec<WorkItem>) -> Vec<WorkItem> {
    for stage in stages.iter_mut() {
        let mut out = StageOutput::with_capacity(items.len());
        stage.process(items, &mut out).await.expect("stage");
        items = out.items;
    }
    items
}

fn stage_chain(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Arc::new(EmbeddedDb::open(dir.path(), EmbeddedOptions::default()).expect("open db"));
    rt.block_on(async {
        let users: Vec<User> = (0..USERS).map(user).collect();
        db.put_users(&users).await.expect("users");
        db.put_template(&template()).await.expect("template");
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let validator = Arc::new(Validator::new(db.clone(), ValidateLimits::default()));
    let mut stages: Vec<Box<dyn Stage>> = vec![
        Box::new(ValidateStage::with_clock(validator, clock.clone())),
        Box::new(EnrichStage::new(
            db.clone(),
            Arc::new(ContactCacheConfig::default().build(clock.clone())),
            clock.clone(),
        )),
        Box::new(DedupStage::new(db.clone(), Duration::from_secs(86_400), clock.clone())),
        Box::new(ThrottleStage::new(db.clone(), ThrottleConfig::default(), clock.clone())),
        Box::new(RenderStage::new(db.clone(), RenderLimits::default())),
    ];

    let mut group = c.benchmark_group("stages");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("chain_1000", |b| {
        b.iter_batched(
            || (0..BATCH).map(item).collect::<Vec<_>>(),
            |items| fan_out(rt.block_on(through(&mut stages, items))),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // Each stage alone, on a batch the stages before it produced (untimed), fresh ids each time.
    let mut group = c.benchmark_group("stage");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).throughput(Throughput::Elements(BATCH as u64));
    for i in 0..stages.len() {
        let (before, rest) = stages.split_at_mut(i);
        let name = rest[0].name();
        group.bench_function(name, |b| {
            b.iter_batched(
                || rt.block_on(through(before, (0..BATCH).map(item).collect())),
                |items| {
                    rt.block_on(async {
                        let mut out = StageOutput::with_capacity(items.len());
                        rest[0].process(items, &mut out).await.expect("stage");
                        out
                    })
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.bench_function("fanout", |b| {
        b.iter_batched(
            || rt.block_on(through(&mut stages, (0..BATCH).map(item).collect())),
            fan_out,
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("decode");
    group.sample_size(20).throughput(Throughput::Elements(BATCH as u64));
    let api_items: Vec<String> = (0..BATCH)
        .map(|k| {
            serde_json::json!({"user_id": format!("u{k}"), "template": "t", "data": {"n": k},
                "channels": ["push"], "category": "transactional", "idempotency_key": format!("k{k}")})
            .to_string()
        })
        .collect();
    group.bench_function("api_item_json_1000", |b| {
        b.iter(|| {
            api_items.iter().map(|s| serde_json::from_str::<serde_json::Value>(s).expect("json")).collect::<Vec<_>>()
        })
    });
    let envelopes: Vec<Vec<u8>> = (0..BATCH).map(|k| codec::encode(&item(k).envelope)).collect();
    group.bench_function("request_envelope_1000", |b| {
        b.iter(|| envelopes.iter().map(|e| codec::decode::<RequestEnvelope>(e).expect("decode")).collect::<Vec<_>>())
    });
    let jobs: Vec<Vec<u8>> =
        fan_out(rt.block_on(through(&mut stages, (0..BATCH).map(item).collect()))).iter().map(codec::encode).collect();
    group.bench_function("delivery_job", |b| {
        b.iter(|| {
            jobs.iter().map(|j| codec::decode::<herald_schemas::DeliveryJob>(j).expect("decode")).collect::<Vec<_>>()
        })
    });
    group.finish();
}

criterion_group!(benches, stage_chain);
criterion_main!(benches);
