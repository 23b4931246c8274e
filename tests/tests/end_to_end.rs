//! End to end over the HTTP API: 500 varied users, 10,000 notifications on push, SMS and email in
//! transactional and marketing categories, and the outbox must hold exactly the deliveries the
//! routing rules, opt-outs and the marketing cap imply, each once, rendered in the user's locale.

mod common;

use common::backend::Backend;
use common::client::Api;
use common::outbox::{Delivered, Outbox, TornTail, wait_for_lines};
use common::population::{Contact, Mix, Target, channel_names, random_channels};
use common::server::Herald;
use herald_schemas::{ChannelKind, TRANSACTIONAL};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

const USERS: usize = 500;
const NOTIFICATIONS: usize = 10_000;
const BATCH: usize = 1_000;
const MARKETING: &str = "marketing";
/// The marketing cap this test configures (and the contract's default): per user, per 24 h.
const MARKETING_CAP: usize = 3;
/// Items resubmitted at the end with their original idempotency keys: none may be delivered again.
const RESUBMITTED: usize = 300;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(150);

fn config() -> String {
    format!(
        "[dedup]\nwindow = \"24h\"\n\n[throttle]\ncaps = [{{ category = \"{MARKETING}\", max = {MARKETING_CAP}, window = \"24h\" }}]\n"
    )
}

/// The template variants: `order_shipped` in `en` (stored first, so the default) and `ko-KR`;
/// `promo` in `en` only.
fn templates() -> Vec<Value> {
    vec![
        json!({ "id": "order_shipped", "locale": "en",
            "push": { "title": "Shipped", "body": "Order {{ order }} shipped" },
            "sms": { "text": "Order {{ order }} shipped" },
            "email": { "subject": "Order {{ order }}", "text": "Order {{ order }} shipped",
                       "html": "<p>Order {{ order }} shipped {{ note }}</p>" } }),
        json!({ "id": "order_shipped", "locale": "ko-KR",
            "push": { "title": "배송", "body": "주문 {{ order }} 배송 시작" },
            "sms": { "text": "주문 {{ order }} 배송 시작" },
            "email": { "subject": "주문 {{ order }}", "text": "주문 {{ order }} 배송 시작",
                       "html": "<p>주문 {{ order }} 배송 시작 {{ note }}</p>" } }),
        json!({ "id": "promo", "locale": "en",
            "push": { "title": "Sale", "body": "{{ pct }}% off" },
            "sms": { "text": "{{ pct }}% off, code {{ order }}" },
            "email": { "subject": "Sale", "text": "{{ pct }}% off, code {{ order }}",
                       "html": "<p>{{ pct }}% off {{ note }}</p>" } }),
    ]
}

/// What the outbox line of notification `n` on `channel` must render as its body.
fn expected_body(template: &str, locale: Option<&str>, channel: ChannelKind, order: &str, pct: u64) -> String {
    match (template, locale, channel) {
        ("order_shipped", Some("ko-KR"), _) => format!("주문 {order} 배송 시작"),
        ("order_shipped", _, _) => format!("Order {order} shipped"),
        ("promo", _, ChannelKind::Push) => format!("{pct}% off"),
        ("promo", _, _) => format!("{pct}% off, code {order}"),
        _ => unreachable!("no template {template}"),
    }
}

struct Planned {
    user: usize,
    category: &'static str,
    channels: Vec<ChannelKind>,
    order: String,
    pct: u64,
    body: Value,
}

impl Planned {
    fn template(&self) -> &'static str {
        if self.category == MARKETING { "promo" } else { "order_shipped" }
    }
}

/// Notifications to random users; a marketing one always reaches someone before the cap (so
/// whether an unreachable request counts toward the cap is never in question).
fn plan(rng: &mut StdRng, users: &[Contact]) -> Vec<Planned> {
    (0..NOTIFICATIONS)
        .map(|n| {
            let user = rng.random_range(0..users.len());
            let mut category = if rng.random_bool(0.3) { MARKETING } else { TRANSACTIONAL };
            let mut channels = random_channels(rng);
            if category == MARKETING && !users[user].opted_out_of_category(MARKETING) {
                if users[user].targets(&channels, category).is_empty() {
                    channels = ChannelKind::ALL.to_vec();
                }
                if users[user].targets(&channels, category).is_empty() {
                    category = TRANSACTIONAL;
                }
            }
            let order = format!("A{n:05}");
            let pct = rng.random_range(5..60);
            let template = if category == MARKETING { "promo" } else { "order_shipped" };
            let body = json!({
                "user_id": users[user].id, "template": template, "channels": channel_names(&channels),
                "category": category, "idempotency_key": format!("e2e-{n}"),
                "data": { "order": order, "pct": pct, "note": "<b>&</b>" },
            });
            Planned { user, category, channels, order, pct, body }
        })
        .collect()
}

/// Expected targets of each planned notification, in order, applying the marketing cap per user
/// in request order.
fn expected_targets(planned: &[Planned], users: &[Contact]) -> Vec<Vec<Target>> {
    let mut marketing_sent = vec![0usize; users.len()];
    planned
        .iter()
        .map(|p| {
            let user = &users[p.user];
            let targets = user.targets(&p.channels, p.category);
            if p.category == MARKETING && !targets.is_empty() {
                if marketing_sent[p.user] >= MARKETING_CAP {
                    return Vec::new();
                }
                marketing_sent[p.user] += 1;
            }
            targets
        })
        .collect()
}

/// Every way a line can differ from its plan, as messages.
fn check_line(line: &Delivered, p: &Planned, user: &Contact) -> Vec<String> {
    let body = expected_body(p.template(), user.locale.as_deref(), line.file, &p.order, p.pct);
    let mut equal = vec![
        ("channel", line.str("/channel"), line.file.as_str()),
        ("user_id", line.str("/user_id"), user.id.as_str()),
        ("category", line.str("/category"), p.category),
        ("template", line.str("/template"), p.template()),
        ("body", line.body(), body.as_str()),
    ];
    let required: &[&str] = match line.file {
        ChannelKind::Push => {
            let platform = user.platform_of(line.target()).unwrap_or("(not a token of this user)");
            equal.push(("push platform", line.content("platform"), platform));
            &["title"]
        }
        ChannelKind::Sms => &[],
        ChannelKind::Email => &["subject"],
    };
    let mut wrong: Vec<String> = equal
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(field, got, want)| format!("{field} is {got:?}, expected {want:?} in {}", line.json))
        .collect();
    for field in ["/delivery_id", "/locale"] {
        if line.str(field).is_empty() {
            wrong.push(format!("no {field} in {}", line.json));
        }
    }
    for field in required {
        if line.content(field).is_empty() {
            wrong.push(format!("no {} {field} in {}", line.file, line.json));
        }
    }
    if line.file == ChannelKind::Email {
        let html = line.content("html");
        if html.contains("<b>&</b>") || !html.contains("&lt;b&gt;&amp;") {
            wrong.push(format!("email.html must escape the variable: {html:?}"));
        }
    }
    wrong
}

/// Polls a notification's timeline until the number of events of each kind is in its range.
async fn await_timeline(api: &Api, id: &str, want: &[(&str, RangeInclusive<usize>)]) {
    let started = Instant::now();
    loop {
        let reply = api.timeline(id).await.expect(200, "GET /v1/notifications/{id}");
        let events = reply.json["events"].as_array().cloned().unwrap_or_default();
        let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
        if want.iter().all(|(kind, n)| n.contains(&count(kind))) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timeline of {id}: expected event counts {want:?}, got {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_notifications_reach_exactly_their_targets() {
    for backend in Backend::all("end_to_end") {
        eprintln!("[end_to_end] on the {} backends", backend.name);
        ten_thousand_notifications_on(&backend).await;
    }
}

async fn ten_thousand_notifications_on(backend: &Backend) {
    let mut rng = StdRng::seed_from_u64(common::seed("end_to_end"));
    let users: Vec<Contact> =
        (0..USERS).map(|n| Contact::random(&mut rng, format!("user-{n}"), n, &Mix::VARIED)).collect();
    let coverage = [
        ("an inactive device", users.iter().filter(|u| u.devices.iter().any(|d| !d.active)).count()),
        ("several devices", users.iter().filter(|u| u.devices.len() >= 2).count()),
        ("no phone", users.iter().filter(|u| u.phone.is_none()).count()),
        ("no email", users.iter().filter(|u| u.email.is_none()).count()),
        ("sms opt-out", users.iter().filter(|u| u.opt_out_channels.contains(&ChannelKind::Sms)).count()),
        ("marketing opt-out", users.iter().filter(|u| u.opted_out_of_category(MARKETING)).count()),
        ("ko-KR locale", users.iter().filter(|u| u.locale.as_deref() == Some("ko-KR")).count()),
    ];
    eprintln!("population: {coverage:?}");
    assert!(coverage.iter().all(|(_, n)| *n > 0), "the population must cover every case: {coverage:?}");

    let planned = plan(&mut rng, &users);
    let expected = expected_targets(&planned, &users);
    let expected_total: usize = expected.iter().map(Vec::len).sum();
    let mut per_channel: BTreeMap<&str, usize> = ChannelKind::ALL.iter().map(|c| (c.as_str(), 0)).collect();
    for t in expected.iter().flatten() {
        *per_channel.get_mut(t.channel.as_str()).expect("every channel is counted") += 1;
    }
    eprintln!("{} notifications, expecting {expected_total} deliveries: {per_channel:?}", planned.len());

    let mut herald = Herald::start_on(backend, Some(&config()));
    let api = herald.api();
    let started = Instant::now();
    for user in &users {
        let reply = api.put_user(&user.id, &user.to_json()).await;
        reply.expect(201, &format!("PUT /v1/users/{}", user.id));
    }
    for template in templates() {
        api.post_template(&template).await.expect(201, "POST /v1/templates");
    }
    let bodies: Vec<Value> = planned.iter().map(|p| p.body.clone()).collect();
    let ids = api.submit_all(&bodies, BATCH).await;
    eprintln!("submitted {} notifications in {:?}", ids.len(), started.elapsed());

    // The same idempotency keys again, with other data: the dedup stage must drop every one.
    let repeats: Vec<Value> = bodies[..RESUBMITTED]
        .iter()
        .map(|b| {
            let mut b = b.clone();
            b["data"]["order"] = json!("REPEATED");
            b
        })
        .collect();
    let repeat_results = api.submit(&repeats).await;

    let settled = wait_for_lines(herald.data_dir(), expected_total, DELIVERY_TIMEOUT).await;
    eprintln!("delivery settled after {:?}: {settled:?}", settled.waited);

    // Timelines: delivered ones show one `sent` per target; capped and opted-out ones say why.
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(n, id)| (id.as_str(), n)).collect();
    let delivered: Vec<usize> = (0..planned.len()).filter(|&n| !expected[n].is_empty()).collect();
    for &n in delivered.choose_multiple(&mut rng, 10) {
        let sent = expected[n].len();
        await_timeline(&api, &ids[n], &[("accepted", 1..=1), ("sent", sent..=sent)]).await;
    }
    let capped = (0..planned.len()).filter(|&n| {
        let p = &planned[n];
        p.category == MARKETING && expected[n].is_empty() && !users[p.user].opted_out_of_category(MARKETING)
    });
    for n in capped.take(3) {
        await_timeline(&api, &ids[n], &[("accepted", 1..=1), ("throttled", 1..=usize::MAX), ("sent", 0..=0)]).await;
    }
    let opted_out = (0..planned.len()).filter(|&n| {
        let (p, user) = (&planned[n], &users[planned[n].user]);
        user.opted_out_of_category(p.category) && user.reachable_on(&p.channels)
    });
    for n in opted_out.take(3) {
        await_timeline(&api, &ids[n], &[("accepted", 1..=1), ("opted_out", 1..=usize::MAX), ("sent", 0..=0)]).await;
    }

    // Analytics over HTTP while the server runs (events not yet in Parquet included): one
    // `sent` delivery per outbox line; refusals for what is not a read-only query.
    let sql = |q: &str| api.request(reqwest::Method::POST, "/v1/analytics/sql").json(&json!({ "sql": q }));
    let by_status = api.send(sql("SELECT status, count(*) AS n FROM deliveries GROUP BY status")).await;
    assert_eq!(by_status.status, 200, "{}", by_status.text);
    let sent_over_http = count_of(&by_status.json["rows"], "sent");
    for bad in ["DROP VIEW deliveries", "INSERT INTO events SELECT * FROM events", "SELEC 1"] {
        let refused = api.send(sql(bad)).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text);
        assert_eq!(refused.json["error"]["code"], "invalid_query", "{bad}: {}", refused.text);
    }
    let minted = api.create_key("no-analytics", &["send"]).await.expect(201, "POST /v1/keys");
    let send_only = minted.json["key"].as_str().expect("a key").to_string();
    let sql_as = |key: &str, q: &str| {
        api.with_key(Some(key)).request(reqwest::Method::POST, "/v1/analytics/sql").json(&json!({ "sql": q }))
    };
    let forbidden = api.send(sql_as(&send_only, "SELECT 1")).await;
    assert_eq!(forbidden.status, 403, "a key without the analytics scope: {}", forbidden.text);

    herald.stop();
    let outbox = Outbox::read(herald.data_dir(), TornTail::Forbid);
    // And with the server stopped, from the Parquet files it flushed on SIGTERM.
    let out =
        herald.command(&["sql", "--format", "json", "SELECT status, count(*) AS n FROM deliveries GROUP BY status"]);
    assert!(out.status.success(), "herald sql: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("herald sql --format json prints JSON");
    assert_eq!(count_of(&rows, "sent"), outbox.len(), "deliveries with status sent vs outbox lines: {rows}");
    assert_eq!(sent_over_http, outbox.len(), "the API's count vs outbox lines: {}", by_status.json);
    // A reader this project did not write (pyarrow, installed by .ci/run) sees the same files the
    // same way: every event once, one `sent` per delivery.
    let (events_in_files, sent_in_files) = pyarrow_counts(&herald.data_dir().join("events"));
    assert_eq!(sent_in_files, outbox.len(), "pyarrow: distinct deliveries with a sent event vs outbox lines");
    let out =
        herald.command(&["sql", "--format", "json", "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events"]);
    let totals: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(totals[0]["n"].as_u64(), Some(events_in_files), "herald sql vs pyarrow: events");
    assert_eq!(totals[0]["n"], totals[0]["d"], "an event is in the files twice: {totals}");

    let mut seen: HashMap<(usize, ChannelKind, &str), usize> = HashMap::new();
    let mut delivery_ids: HashMap<&str, usize> = HashMap::new();
    let mut unexpected = Vec::new();
    let mut wrong = Vec::new();
    for line in &outbox.lines {
        *delivery_ids.entry(line.str("/delivery_id")).or_default() += 1;
        let Some(&n) = index.get(line.notification_id()) else {
            unexpected.push(line.json.to_string());
            continue;
        };
        *seen.entry((n, line.file, line.target())).or_default() += 1;
        wrong.extend(check_line(line, &planned[n], &users[planned[n].user]));
    }
    let mut missing = Vec::new();
    for (n, targets) in expected.iter().enumerate() {
        for t in targets {
            if !seen.contains_key(&(n, t.channel, t.address.as_str())) {
                missing.push(format!("notification {n} ({}) to {} {}", ids[n], t.channel, t.address));
            }
        }
    }
    let wanted: HashSet<(usize, ChannelKind, &str)> = expected
        .iter()
        .enumerate()
        .flat_map(|(n, ts)| ts.iter().map(move |t| (n, t.channel, t.address.as_str())))
        .collect();
    for (key, _) in seen.iter().filter(|(key, _)| !wanted.contains(*key)) {
        unexpected.push(format!("notification {} to {} {}", key.0, key.1, key.2));
    }
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    let repeated_delivery_ids = delivery_ids.values().filter(|&&c| c > 1).count();
    let got_per_channel: BTreeMap<&str, usize> =
        ChannelKind::ALL.iter().map(|c| (c.as_str(), outbox.count(*c))).collect();
    eprintln!(
        "expected {expected_total} {per_channel:?}; outbox {} {got_per_channel:?}; missing {}, duplicates {duplicates}, \
         unexpected {}, wrong fields {}",
        outbox.len(),
        missing.len(),
        unexpected.len(),
        wrong.len()
    );
    let repeats_rejected = repeat_results.iter().filter(|r| r["status"] != "accepted").count();
    eprintln!("resubmitted {RESUBMITTED} keys: {repeats_rejected} rejected by the API, the rest left to dedup");

    assert!(missing.is_empty(), "{} deliveries missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    assert_eq!(duplicates, 0, "deliveries repeated for the same (notification, target)");
    assert_eq!(repeated_delivery_ids, 0, "delivery ids repeated in the outbox");
    assert!(
        unexpected.is_empty(),
        "{} deliveries nobody expected (a repeat that escaped dedup, a capped, opted-out or inactive target), e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    assert!(wrong.is_empty(), "{} lines with wrong fields, e.g. {:#?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    assert_eq!(outbox.len(), expected_total, "outbox lines vs expected deliveries");
    assert_eq!(got_per_channel, per_channel, "deliveries per channel");
}

/// The `n` of the row whose `status` is `status` in `[{"status": …, "n": …}, …]` (0 if none).
fn count_of(rows: &Value, status: &str) -> usize {
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["status"] == status))
        .and_then(|r| r["n"].as_u64())
        .unwrap_or(0) as usize
}

/// Reads `events/**/*.parquet` with pyarrow (hive partitioning): the number of rows, and of
/// distinct delivery ids with a `sent` event.
fn pyarrow_counts(events: &std::path::Path) -> (u64, usize) {
    const SCRIPT: &str = r#"
import sys, pyarrow.dataset as ds, pyarrow.compute as pc
t = ds.dataset(sys.argv[1], format="parquet", partitioning="hive").to_table()
sent = t.filter(pc.equal(pc.cast(t["status"], "string"), "sent"))
print(t.num_rows, len(pc.unique(sent["delivery_id"])))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(events)
        .output()
        .expect("run python3 (pyarrow is installed by .ci/run: python3 -m pip install pyarrow)");
    assert!(out.status.success(), "pyarrow could not read the files: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>().expect("a count"));
    let rows = numbers.next().expect("rows");
    let sent = numbers.next().expect("sent") as usize;
    (rows, sent)
}
