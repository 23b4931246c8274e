//! The ScyllaDB state backend against a live cluster: every store trait, with the contracts the
//! embedded stores are tested for, plus concurrent callers.
//!
//! Runs only when `HERALD_SCYLLA_NODES` names the cluster (`host:port,host:port`); otherwise each
//! test prints `skipped: HERALD_SCYLLA_NODES is not set` and passes. Optional:
//! `HERALD_SCYLLA_USER` and `HERALD_SCYLLA_PASSWORD`, and `HERALD_SCYLLA_TABLETS=default` for a
//! server that rejects the tablets clause (ScyllaDB before 6.0, Cassandra). Each test migrates its
//! own keyspace `herald_test_<random>` and drops it at the end, even when it fails.
//!
//! ```text
//! HERALD_SCYLLA_NODES=127.0.0.1:9042 cargo test -p herald-connectors --features scylla --test scylla
//! ```

#![cfg(feature = "scylla")]

use futures_util::FutureExt;
use herald_connectors::scylla::{Keyspace, ScyllaOptions, ScyllaState, Tablets, migrate};
use herald_connectors::secret::SecretSource;
use herald_schemas::contacts::{Device, Platform, User};
use herald_schemas::event::{DeliveryEvent, EncodedEvent, EventKind};
use herald_schemas::ids::{DeliveryId, NotificationId};
use herald_schemas::job::Route;
use herald_schemas::store::{
    ApiKeyRecord, CapHit, ContactStore, DedupClaim, DedupDecision, DedupStore, DigestJoined, HoldReason, HoldState,
    KeyStore, LedgerState, LedgerStore, Membership, OffsetStore, ScheduleStore, Scope, SinkPosition, SubscriptionStore,
    TemplateStore, ThrottleStore, TimelineFeed, TimelineStore, WebhookStore,
};
use herald_schemas::template::{SmsPart, Template};
use herald_schemas::topic::Commit;
use herald_schemas::webhook::{WebhookBatch, WebhookRegistration, WebhookStatus};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// Options for a fresh keyspace on the cluster named by the environment; `None` to skip.
fn test_options() -> Option<ScyllaOptions> {
    let nodes: Vec<String> = std::env::var("HERALD_SCYLLA_NODES")
        .ok()?
        .split(',')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if nodes.is_empty() {
        return None;
    }
    let name = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
    let password = std::env::var("HERALD_SCYLLA_PASSWORD")
        .ok()
        .map(|_| SecretSource::Env { env: "HERALD_SCYLLA_PASSWORD".into() }.resolve().expect("password"));
    let tablets = match std::env::var("HERALD_SCYLLA_TABLETS").as_deref() {
        Ok("default") => Tablets::ServerDefault,
        _ => Tablets::Disabled,
    };
    Some(ScyllaOptions {
        nodes,
        keyspace: Keyspace::new(&name).expect("a valid keyspace name"),
        user: std::env::var("HERALD_SCYLLA_USER").ok(),
        password,
        tablets,
        request_timeout: Duration::from_secs(10),
        ..ScyllaOptions::default()
    })
}

/// Runs `test` on a migrated, connected fresh keyspace, then drops the keyspace (also when the
/// test panics, whose panic then goes on).
async fn with_keyspace<F, Fut>(test: F)
where
    F: FnOnce(ScyllaState) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(options) = test_options() else {
        eprintln!("skipped: HERALD_SCYLLA_NODES is not set");
        return;
    };
    migrate(&options).await.expect("migrate");
    // Twice: every statement is IF NOT EXISTS.
    migrate(&options).await.expect("migrate again");
    let state = ScyllaState::connect(options.clone()).await.expect("connect");
    let outcome = AssertUnwindSafe(test(state.clone())).catch_unwind().await;
    let drop = format!("DROP KEYSPACE IF EXISTS {}", options.keyspace);
    if let Err(error) = state.session().query_unpaged(drop, &[]).await {
        eprintln!("could not drop keyspace {}: {error}", options.keyspace);
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn nid(s: &str) -> NotificationId {
    NotificationId(s.to_string())
}

fn claim(key: &str, notification: &str, expires_at_ms: u64) -> DedupClaim {
    DedupClaim { key: key.to_string(), notification: nid(notification), expires_at_ms }
}

#[tokio::test]
async fn connect_fails_clearly_without_the_schema() {
    let Some(options) = test_options() else {
        eprintln!("skipped: HERALD_SCYLLA_NODES is not set");
        return;
    };
    let error = ScyllaState::connect(options).await.expect_err("no keyspace yet").to_string();
    assert!(error.contains("herald migrate"), "{error}");
}

#[tokio::test]
async fn dedup_claims_first_replay_duplicate_and_expiry() {
    with_keyspace(|db| async move {
        let decisions = db
            .claim(
                &[
                    claim("k1", "n1", 1_000),
                    claim("k1", "n1", 1_000),
                    claim("k1", "n2", 1_000),
                    claim("k2", "n2", 1_000),
                ],
                100,
            )
            .await
            .unwrap();
        assert_eq!(
            decisions,
            vec![
                DedupDecision::First,
                DedupDecision::Replay,
                DedupDecision::Duplicate { original: nid("n1") },
                DedupDecision::First
            ]
        );
        assert_eq!(
            db.claim(&[claim("k1", "n3", 2_000)], 999).await.unwrap(),
            vec![DedupDecision::Duplicate { original: nid("n1") }]
        );
        assert_eq!(db.claim(&[claim("k1", "n1", 2_000)], 999).await.unwrap(), vec![DedupDecision::Replay]);
        // At its stored expiry the key is free again, for anyone (the row itself is still there:
        // its TTL has a grace period).
        assert_eq!(db.claim(&[claim("k1", "n3", 2_000)], 1_000).await.unwrap(), vec![DedupDecision::First]);
        assert_eq!(
            db.claim(&[claim("k1", "n1", 3_000)], 1_500).await.unwrap(),
            vec![DedupDecision::Duplicate { original: nid("n3") }]
        );
        // A claim that expired, taken over in the same call by the next one.
        assert_eq!(
            db.claim(&[claim("k3", "n1", 10), claim("k3", "n2", 5_000)], 100).await.unwrap(),
            vec![DedupDecision::First, DedupDecision::First]
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_claims_of_one_key_have_exactly_one_winner() {
    with_keyspace(|db| async move {
        let calls = (0..16).map(|i| {
            let db = db.clone();
            tokio::spawn(async move { db.claim(&[claim("hot", &format!("n{i}"), 60_000)], 1_000).await.unwrap() })
        });
        let mut firsts = 0;
        for call in calls {
            match call.await.unwrap().as_slice() {
                [DedupDecision::First] => firsts += 1,
                [DedupDecision::Duplicate { .. }] => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(firsts, 1);
    })
    .await;
}

fn user() -> User {
    User {
        id: "u1".into(),
        email: Some("a@example.com".into()),
        phone: Some("+15550001".into()),
        devices: vec![Device { id: "d1".into(), platform: Platform::Ios, token: "tok".into(), active: true }],
        ..User::default()
    }
}

#[tokio::test]
async fn contacts_report_new_users_replace_and_keep_dead_addresses() {
    with_keyspace(|db| async move {
        let other = User { id: "u2".into(), ..User::default() };
        assert_eq!(db.put_users(&[user(), other.clone(), user()]).await.unwrap(), vec![true, true, false]);
        let got = db.get_users(&["u1".into(), "nobody".into(), "u2".into()]).await.unwrap();
        assert_eq!(got, vec![Some(user()), None, Some(other)]);

        assert!(db.mark_unreachable("u1", "tok").await.unwrap());
        assert!(db.mark_unreachable("u1", "a@example.com").await.unwrap());
        assert!(!db.mark_unreachable("u1", "tok").await.unwrap(), "already dead");
        assert!(!db.mark_unreachable("u1", "other-token").await.unwrap(), "not the user's");
        assert!(!db.mark_unreachable("nobody", "tok").await.unwrap());

        let again = User { email: Some("new@example.com".into()), unreachable: vec!["+15550001".into()], ..user() };
        assert_eq!(db.put_users(&[again]).await.unwrap(), vec![false]);
        let stored = db.get_users(&["u1".into()]).await.unwrap().remove(0).unwrap();
        assert_eq!(stored.unreachable, ["tok"]);

        assert!(db.add_opt_out("u1", "marketing").await.unwrap());
        assert!(!db.add_opt_out("u1", "marketing").await.unwrap());
        assert!(!db.add_opt_out("nobody", "marketing").await.unwrap());
        let stored = db.get_users(&["u1".into()]).await.unwrap().remove(0).unwrap();
        assert_eq!(stored.preferences.opt_out.categories, ["marketing"]);
    })
    .await;
}

#[tokio::test]
async fn concurrent_updates_of_one_user_are_never_lost() {
    with_keyspace(|db| async move {
        let tokens: Vec<String> = (0..8).map(|i| format!("tok{i}")).collect();
        let devices = tokens
            .iter()
            .map(|t| Device { id: t.clone(), platform: Platform::Android, token: t.clone(), active: true })
            .collect();
        let base = User { id: "u1".into(), devices, ..User::default() };
        db.put_users(std::slice::from_ref(&base)).await.unwrap();
        let mut tasks = Vec::new();
        for token in &tokens {
            let (db, token) = (db.clone(), token.clone());
            tasks.push(tokio::spawn(async move { assert!(db.mark_unreachable("u1", &token).await.unwrap()) }));
        }
        for category in ["a", "b", "c"] {
            let db = db.clone();
            tasks.push(tokio::spawn(async move { assert!(db.add_opt_out("u1", category).await.unwrap()) }));
        }
        for _ in 0..4 {
            let (db, base) = (db.clone(), base.clone());
            tasks.push(tokio::spawn(async move { assert_eq!(db.put_users(&[base]).await.unwrap(), [false]) }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let stored = db.get_users(&["u1".into()]).await.unwrap().remove(0).unwrap();
        let mut dead = stored.unreachable.clone();
        dead.sort();
        assert_eq!(dead, tokens, "every dead token recorded, none lost to a concurrent put");
        // A put replaces the preferences with the client's (empty) ones; the opt-outs made after
        // the last put are there.
        assert!(stored.preferences.opt_out.categories.len() <= 3);
    })
    .await;
}

fn template(locale: &str, default: bool) -> Template {
    Template {
        id: "welcome".into(),
        locale: locale.into(),
        default,
        push: None,
        sms: Some(SmsPart { text: format!("hi {locale}") }),
        email: None,
    }
}

#[tokio::test]
async fn templates_keep_one_default_per_id() {
    with_keyspace(|db| async move {
        assert!(db.put_template(&template("ko", false)).await.unwrap());
        assert!(db.put_template(&template("en", false)).await.unwrap());
        assert!(!db.put_template(&template("en", false)).await.unwrap());
        let defaults = |ts: Vec<Template>| ts.into_iter().map(|t| (t.locale, t.default)).collect::<Vec<_>>();
        // The first stored is the default (not the first by locale).
        assert_eq!(defaults(db.get_template("welcome").await.unwrap()), [("en".into(), false), ("ko".into(), true)]);
        // Until another claims it.
        db.put_template(&template("en", true)).await.unwrap();
        assert_eq!(defaults(db.get_template("welcome").await.unwrap()), [("en".into(), true), ("ko".into(), false)]);
        // Storing the old default again without the flag does not take it back.
        db.put_template(&template("ko", false)).await.unwrap();
        assert_eq!(defaults(db.get_template("welcome").await.unwrap()), [("en".into(), true), ("ko".into(), false)]);
        assert_eq!(db.get_template("welcome").await.unwrap()[1], template("ko", false));
        assert!(db.get_template("welcom").await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn throttle_hits_are_idempotent_per_notification() {
    with_keyspace(|db| async move {
        let key = "u1/marketing".to_string();
        let hit = |n: &str, at_ms| (key.clone(), CapHit { notification: nid(n), at_ms });
        db.record_hits(&[hit("n1", 100), hit("n2", 200), hit("n1", 100)], 0).await.unwrap();
        db.record_hits(&[hit("n1", 250)], 0).await.unwrap();
        let hits = db.hits(&[key.clone(), "u2/marketing".into()], 0).await.unwrap();
        assert_eq!(
            hits[0],
            vec![CapHit { notification: nid("n1"), at_ms: 100 }, CapHit { notification: nid("n2"), at_ms: 200 }]
        );
        assert!(hits[1].is_empty());
        assert_eq!(
            db.hits(std::slice::from_ref(&key), 150).await.unwrap()[0],
            [CapHit { notification: nid("n2"), at_ms: 200 }]
        );
        // Keys are exact.
        db.record_hits(&[("u1/marketing2".into(), CapHit { notification: nid("n9"), at_ms: 100 })], 0).await.unwrap();
        assert_eq!(db.hits(std::slice::from_ref(&key), 0).await.unwrap()[0].len(), 2);
        // A hit older than the prune horizon is not recorded (hits already stored are forgotten by
        // their TTL, not by a later call).
        db.record_hits(&[hit("n0", 50)], 150).await.unwrap();
        assert_eq!(db.hits(std::slice::from_ref(&key), 0).await.unwrap()[0].len(), 2);
    })
    .await;
}

#[tokio::test]
async fn ledger_records_states_with_the_sink_position_and_reopens_only_failed() {
    with_keyspace(|db| async move {
        let (a, b, c) = (DeliveryId("a".into()), DeliveryId("b".into()), DeliveryId("c".into()));
        assert_eq!(db.sink_position("outbox-sms").await.unwrap(), None);
        db.record_deliveries(&[(a.clone(), LedgerState::InFlight), (b.clone(), LedgerState::InFlight)], None)
            .await
            .unwrap();
        db.record_deliveries(
            &[(a.clone(), LedgerState::InFlight), (a.clone(), LedgerState::Sent)],
            Some(SinkPosition { sink: "outbox-sms".into(), position: 42 }),
        )
        .await
        .unwrap();
        assert_eq!(
            db.states(&[a.clone(), b.clone(), c.clone()]).await.unwrap(),
            vec![Some(LedgerState::Sent), Some(LedgerState::InFlight), None]
        );
        assert_eq!(db.sink_position("outbox-sms").await.unwrap(), Some(42));
        assert_eq!(db.sink_position("outbox-email").await.unwrap(), None);

        db.record_deliveries(&[(b.clone(), LedgerState::Failed)], None).await.unwrap();
        assert_eq!(
            db.reopen_failed(&[a.clone(), b.clone(), b.clone(), c.clone()]).await.unwrap(),
            vec![false, true, false, false]
        );
        assert_eq!(db.states(&[a, b, c]).await.unwrap(), vec![Some(LedgerState::Sent), None, None]);
    })
    .await;
}

#[tokio::test]
async fn api_keys_round_trip() {
    with_keyspace(|db| async move {
        let record =
            ApiKeyRecord { hash: "ab12".into(), client_id: "acme".into(), scopes: vec![Scope::Send], created_at_ms: 5 };
        assert_eq!(db.get_key("ab12").await.unwrap(), None);
        db.put_key(&record).await.unwrap();
        assert_eq!(db.get_key("ab12").await.unwrap(), Some(record));
    })
    .await;
}

fn event(n: &str, kind: EventKind, at_ms: u64) -> DeliveryEvent {
    DeliveryEvent::new(&nid(n), "client", "u1", kind, None, None, at_ms)
}

fn encoded(events: &[DeliveryEvent]) -> Vec<EncodedEvent> {
    events.iter().map(EncodedEvent::encode).collect()
}

#[tokio::test]
async fn timeline_keeps_each_event_once_in_time_order() {
    with_keyspace(|db| async move {
        let sent = event("n1", EventKind::Sent, 10).for_delivery(&DeliveryId("d".into()), Route::Sms, 1);
        db.add_events(&encoded(&[
            event("n1", EventKind::Accepted, 5),
            sent.clone(),
            event("n2", EventKind::Accepted, 1),
        ]))
        .await
        .unwrap();
        // A replay emits the same ids at another time: kept once, the last copy.
        db.add_events(&encoded(&[event("n1", EventKind::Accepted, 7), event("n1", EventKind::Accepted, 5)]))
            .await
            .unwrap();
        db.add_events(&encoded(&[event("n1", EventKind::Throttled, 5)])).await.unwrap();
        db.add_events(&encoded(&[event("n10", EventKind::Accepted, 5)])).await.unwrap();
        let timeline = db.timeline(&nid("n1")).await.unwrap();
        let kinds: Vec<(EventKind, u64)> = timeline.iter().map(|e| (e.kind, e.at_ms)).collect();
        assert_eq!(kinds, [(EventKind::Accepted, 5), (EventKind::Throttled, 5), (EventKind::Sent, 10)]);
        assert_eq!(timeline[2], sent);
        assert!(db.timeline(&nid("n3")).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn offsets_are_saved_and_loaded_per_group_topic_and_partition() {
    with_keyspace(|db| async move {
        let commit = |group: &str, partition, next_offset| Commit {
            group: group.into(),
            topic: "herald-requests".into(),
            partition,
            next_offset,
        };
        assert_eq!(db.load_offset("workers", "herald-requests", 0).await.unwrap(), None);
        db.save_offsets(&[commit("workers", 0, 10), commit("workers", 1, 3), commit("workers", 0, 12)]).await.unwrap();
        db.save_offsets(&[commit("timeline", 0, 99)]).await.unwrap();
        assert_eq!(db.load_offset("workers", "herald-requests", 0).await.unwrap(), Some(12));
        assert_eq!(db.load_offset("workers", "herald-requests", 1).await.unwrap(), Some(3));
        assert_eq!(db.load_offset("timeline", "herald-requests", 0).await.unwrap(), Some(99));
        assert_eq!(db.load_offset("workers", "herald-events", 0).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn workers_announce_themselves_and_leases_have_one_holder() {
    with_keyspace(|db| async move {
        let long = Duration::from_secs(60);
        db.heartbeat("w2", long).await.unwrap();
        db.heartbeat("w1", long).await.unwrap();
        db.heartbeat("w1", long).await.unwrap();
        assert_eq!(db.live_workers().await.unwrap(), ["w1", "w2"]);
        db.leave("w2").await.unwrap();
        assert_eq!(db.live_workers().await.unwrap(), ["w1"]);

        assert!(db.acquire_lease(0, "w1", long).await.unwrap());
        assert!(db.acquire_lease(0, "w1", long).await.unwrap(), "renewed by its holder");
        assert!(!db.acquire_lease(0, "w2", long).await.unwrap(), "held by w1");
        assert!(db.acquire_lease(1, "w2", long).await.unwrap());
        db.release_lease(0, "w2").await.unwrap(); // not w2's: a no-op
        assert!(!db.acquire_lease(0, "w2", long).await.unwrap());
        db.release_lease(0, "w1").await.unwrap();
        assert!(db.acquire_lease(0, "w2", long).await.unwrap());

        // A lease (and a heartbeat) of a worker that stops renewing frees itself.
        db.heartbeat("w3", Duration::from_secs(1)).await.unwrap();
        assert!(db.acquire_lease(2, "w3", Duration::from_secs(1)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(db.acquire_lease(2, "w1", long).await.unwrap());
        assert_eq!(db.live_workers().await.unwrap(), ["w1"]);

        // Many workers racing for one free partition: one wins.
        let racers = (0..8).map(|i| {
            let db = db.clone();
            tokio::spawn(async move { db.acquire_lease(7, &format!("r{i}"), long).await.unwrap() })
        });
        let mut holders = 0;
        for racer in racers {
            holders += usize::from(racer.await.unwrap());
        }
        assert_eq!(holders, 1);
    })
    .await;
}

#[path = "contracts/schedule.rs"]
mod schedule_contract;

use schedule_contract::{hold, join};

#[tokio::test]
async fn due_holds_come_soonest_first_per_partition_and_a_replayed_hold_is_recognised() {
    with_keyspace(|db| async move {
        schedule_contract::due_holds_come_soonest_first_per_partition_and_a_replayed_hold_is_recognised(&db).await
    })
    .await;
}

#[tokio::test]
async fn release_is_two_steps_and_a_cancel_cannot_take_what_is_being_released() {
    with_keyspace(|db| async move {
        schedule_contract::release_is_two_steps_and_a_cancel_cannot_take_what_is_being_released(&db).await
    })
    .await;
}

#[tokio::test]
async fn digests_collect_per_user_and_key_until_released_then_a_new_one_opens() {
    with_keyspace(|db| async move {
        schedule_contract::digests_collect_per_user_and_key_until_released_then_a_new_one_opens(&db).await
    })
    .await;
}

#[tokio::test]
async fn a_cancelled_digest_stops_collecting() {
    with_keyspace(|db| async move { schedule_contract::a_cancelled_digest_stops_collecting(&db).await }).await;
}

#[tokio::test]
async fn concurrent_cancels_and_releases_of_one_hold_have_exactly_one_winner() {
    with_keyspace(|db| async move {
        for round in 0..4 {
            let id = format!("n{round}");
            db.hold(&[hold(&id, 0, 100)]).await.unwrap();
            let release = {
                let (db, id) = (db.clone(), id.clone());
                tokio::spawn(async move { db.begin_release(&[(nid(&id), HoldReason::SendAt)]).await.unwrap()[0] })
            };
            let cancel = {
                let (db, id) = (db.clone(), id.clone());
                tokio::spawn(async move { db.cancel(&nid(&id), None).await.unwrap()[0].1 })
            };
            let (taken, seen) = (release.await.unwrap(), cancel.await.unwrap());
            // The cancel won (it saw it waiting) or the release did (the cancel saw it releasing).
            assert_ne!(taken, seen == HoldState::Waiting, "round {round}: taken {taken}, cancel saw {seen:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_joins_of_one_user_and_key_each_count_once() {
    with_keyspace(|db| async move {
        let calls = (0..12).map(|i| {
            let db = db.clone();
            tokio::spawn(async move { db.join_digests(&[join("u1", "k", &format!("m{i}"))], 1_000).await.unwrap() })
        });
        let mut digests = Vec::new();
        for call in calls {
            let joined = call.await.unwrap();
            assert!(!matches!(joined[0], DigestJoined::AlreadyMember { .. }), "{joined:?}");
            digests.push(joined[0].digest().clone());
        }
        digests.sort();
        digests.dedup();
        assert_eq!(digests.len(), 1, "one digest: {digests:?}");
        let (mut members, count) = db.digest_members(&digests[0], 100).await.unwrap();
        assert_eq!(count, 12);
        members.sort();
        let mut expected: Vec<Vec<u8>> = (0..12).map(|i| format!("m{i}").into_bytes()).collect();
        expected.sort();
        assert_eq!(members, expected, "each member once");
        assert_eq!(db.due(3, 601_000, 10).await.unwrap().len(), 1, "one digest hold");
    })
    .await;
}

#[path = "contracts/subscriptions.rs"]
mod subscriptions_contract;

#[tokio::test]
async fn subscribers_come_in_stable_pages_and_follow_changes() {
    with_keyspace(|db| async move {
        subscriptions_contract::subscribers_come_in_stable_pages_and_follow_changes(&db).await
    })
    .await;
}

#[tokio::test]
async fn a_stored_cursor_resumes_the_fan_out_where_it_stood() {
    with_keyspace(
        |db| async move { subscriptions_contract::a_stored_cursor_resumes_the_fan_out_where_it_stood(&db).await },
    )
    .await;
}

#[tokio::test]
async fn a_large_topic_pages_through_every_bucket_each_subscriber_once() {
    with_keyspace(|db| async move {
        let users: Vec<String> = (0..300).map(|u| format!("user-{u:03}")).collect();
        let each = users.iter().map(|u| {
            let (db, u) = (db.clone(), u.clone());
            tokio::spawn(async move { db.set_topics(&u, &subscriptions_contract::topics(&["big"])).await.unwrap() })
        });
        for call in each.collect::<Vec<_>>() {
            call.await.unwrap();
        }
        let (all, pages) = subscriptions_contract::read_all(&db, "big", None, 7).await;
        assert_eq!(pages, 300_usize.div_ceil(7));
        let mut sorted = all;
        sorted.sort();
        assert_eq!(sorted, users);
        // Cursors name the bucket they stopped in: every bucket was crossed, in order.
        let mut cursor: Option<String> = None;
        let mut buckets = Vec::new();
        while let (_, Some(next)) = db.subscribers("big", cursor.as_deref(), 7).await.unwrap() {
            buckets.push(next[..2].to_string());
            cursor = Some(next);
        }
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        // These 300 users put at least 9 in each bucket, so some page ends in every one.
        buckets.dedup();
        assert_eq!(buckets, (0..16).map(|b| format!("{b:02}")).collect::<Vec<_>>());
    })
    .await;
}

/// Adds `topic` to the user's stored set only, as step 2 of an interrupted `set_topics` does.
async fn widen_stored_topics(db: &ScyllaState, user_id: &str, topic: &str) {
    let cql = format!("UPDATE {}.user_topics SET topics = topics + ? WHERE user_id = ?", db.options().keyspace);
    db.session().query_unpaged(cql, (vec![topic.to_string()], user_id)).await.unwrap();
}

#[tokio::test]
async fn setting_topics_again_repairs_what_an_interrupted_call_left() {
    with_keyspace(|db| async move {
        let topics = subscriptions_contract::topics;
        // u1 went from news to ghost and stopped before narrowing its set: the set is the union,
        // the index has ghost only. The next call removes every topic of the set it does not keep.
        db.set_topics("u1", &topics(&["ghost"])).await.unwrap();
        widen_stored_topics(&db, "u1", "news").await;
        assert_eq!(db.topics_of("u1").await.unwrap(), ["ghost", "news"]);
        assert_eq!(db.set_topics("u1", &topics(&["sports"])).await.unwrap(), ["ghost", "news"]);
        assert_eq!(db.topics_of("u1").await.unwrap(), ["sports"]);
        for gone in ["ghost", "news"] {
            assert_eq!(db.subscribers(gone, None, 10).await.unwrap(), (Vec::new(), None), "{gone}");
        }
        assert_eq!(db.subscribers("sports", None, 10).await.unwrap().0, ["u1"]);

        // u2 went from news to ghost and stopped before the index: the retry writes it.
        db.set_topics("u2", &topics(&["news"])).await.unwrap();
        widen_stored_topics(&db, "u2", "ghost").await;
        assert_eq!(db.set_topics("u2", &topics(&["ghost"])).await.unwrap(), ["ghost", "news"]);
        assert_eq!(db.subscribers("ghost", None, 10).await.unwrap().0, ["u2"]);
        assert_eq!(db.subscribers("news", None, 10).await.unwrap(), (Vec::new(), None));
    })
    .await;
}

fn webhook(client: &str, url: &str) -> WebhookRegistration {
    WebhookRegistration {
        client_id: client.into(),
        url: url.into(),
        secret: "whsec_s".into(),
        created_at_ms: 1,
        updated_at_ms: 2,
    }
}

fn webhook_batch(client: &str, partition: u32, first_offset: u64) -> WebhookBatch {
    let event = DeliveryEvent::new(&nid("n1"), client, "u1", EventKind::Failed, None, Some("x".into()), 3);
    WebhookBatch::new(&webhook(client, "https://h.example"), partition, first_offset, 9, &[event])
}

#[tokio::test]
async fn webhook_registrations_and_status_round_trip_and_are_deleted_together() {
    with_keyspace(|db| async move {
        assert!(db.put_webhook(&webhook("acme", "https://one.example")).await.unwrap());
        assert!(!db.put_webhook(&webhook("acme", "https://two.example")).await.unwrap());
        assert!(db.put_webhook(&webhook("beta", "https://b.example")).await.unwrap());
        assert_eq!(db.get_webhook("acme").await.unwrap(), Some(webhook("acme", "https://two.example")));
        let mut listed: Vec<String> = db.list_webhooks().await.unwrap().into_iter().map(|r| r.client_id).collect();
        listed.sort();
        assert_eq!(listed, ["acme", "beta"]);
        let status = WebhookStatus { last_success_at_ms: Some(5), consecutive_failures: 0, ..WebhookStatus::default() };
        db.record_webhook_status("acme", &status).await.unwrap();
        assert_eq!(db.webhook_status("acme").await.unwrap(), Some(status));
        assert!(db.delete_webhook("acme").await.unwrap());
        assert!(!db.delete_webhook("acme").await.unwrap());
        assert_eq!((db.get_webhook("acme").await.unwrap(), db.webhook_status("acme").await.unwrap()), (None, None));
    })
    .await;
}

#[tokio::test]
async fn the_webhook_outbox_pages_in_offset_order_acks_and_drops_a_tail() {
    with_keyspace(|db| async move {
        assert_eq!(db.webhook_position(2).await.unwrap(), None);
        db.enqueue_webhook_batches(2, &[webhook_batch("acme", 2, 70), webhook_batch("acme", 2, 8)], 71).await.unwrap();
        db.enqueue_webhook_batches(2, &[webhook_batch("acme", 2, 90)], 95).await.unwrap();
        db.enqueue_webhook_batches(5, &[webhook_batch("acme", 5, 1)], 2).await.unwrap();
        assert_eq!(db.webhook_position(2).await.unwrap(), Some(95));
        let firsts = |page: Vec<WebhookBatch>| page.iter().map(|b| b.first_offset).collect::<Vec<u64>>();
        assert_eq!(firsts(db.pending_webhook_batches("acme", 2, 0, u64::MAX, 50).await.unwrap()), [8, 70, 90]);
        assert_eq!(firsts(db.pending_webhook_batches("acme", 2, 9, 90, 50).await.unwrap()), [70]);
        assert_eq!(db.pending_webhook_batches("acme", 2, 0, 95, 1).await.unwrap(), [webhook_batch("acme", 2, 8)]);
        assert_eq!(db.count_webhook_batches("acme", 2, 2).await.unwrap(), 2);
        db.ack_webhook_batch("acme", 2, 8).await.unwrap();
        db.drop_webhook_batches("acme", 2, 80).await.unwrap();
        assert_eq!(firsts(db.pending_webhook_batches("acme", 2, 0, u64::MAX, 50).await.unwrap()), [70]);
        assert_eq!(db.count_webhook_batches("acme", 5, 100).await.unwrap(), 1);
        db.drop_webhook_batches("acme", 5, 0).await.unwrap();
        assert_eq!(db.count_webhook_batches("acme", 5, 100).await.unwrap(), 0);
    })
    .await;
}
