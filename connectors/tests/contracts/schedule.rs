//! The contract of [`ScheduleStore`], as tests any implementation must pass: the embedded store's
//! unit tests and the ScyllaDB integration tests run them (each file includes this one with
//! `#[path]`), so both backends are held to the same answers.

#![allow(dead_code)]

use herald_schemas::ids::NotificationId;
use herald_schemas::store::{DigestJoin, DigestJoined, Hold, HoldReason, HoldState, ScheduleStore};

pub fn nid(s: &str) -> NotificationId {
    NotificationId(s.to_string())
}

pub fn hold(id: &str, partition: u32, due: u64) -> Hold {
    Hold {
        id: nid(id),
        reason: HoldReason::SendAt,
        partition,
        due_at_ms: due,
        client_id: "c1".into(),
        envelope: format!("envelope of {id}").into_bytes(),
    }
}

pub fn ids(holds: &[(Hold, HoldState)]) -> Vec<&str> {
    holds.iter().map(|(h, _)| h.id.0.as_str()).collect()
}

pub async fn due_holds_come_soonest_first_per_partition_and_a_replayed_hold_is_recognised<S: ScheduleStore>(db: &S) {
    let added = db.hold(&[hold("late", 0, 300), hold("soon", 0, 100), hold("other", 1, 50)]).await.unwrap();
    assert_eq!(added, [None, None, None]);
    assert_eq!(db.hold(&[hold("soon", 0, 100)]).await.unwrap(), [Some(HoldState::Waiting)]);
    assert_eq!(ids(&db.due(0, 99, 10).await.unwrap()), Vec::<&str>::new());
    assert_eq!(ids(&db.due(0, 1_000, 10).await.unwrap()), ["soon", "late"]);
    assert_eq!(ids(&db.due(0, 1_000, 1).await.unwrap()), ["soon"]);
    let due = db.due(1, 1_000, 10).await.unwrap();
    let (other, state) = &due[0];
    assert_eq!((other.client_id.as_str(), other.envelope.as_slice()), ("c1", b"envelope of other".as_slice()));
    assert_eq!(*state, HoldState::Waiting);
    assert!(db.due(0, 1_000, 0).await.unwrap().is_empty());

    // Across buckets (an hour each), still soonest first; a bucket not due yet is not read.
    let hour = 3_600_000;
    db.hold(&[hold("h3", 2, 3 * hour + 5), hold("h1", 2, hour + 5), hold("h2", 2, 2 * hour + 5)]).await.unwrap();
    assert_eq!(ids(&db.due(2, 3 * hour, 10).await.unwrap()), ["h1", "h2"]);
    assert_eq!(ids(&db.due(2, 4 * hour, 2).await.unwrap()), ["h1", "h2"]);
    assert_eq!(ids(&db.due(2, 4 * hour, 10).await.unwrap()), ["h1", "h2", "h3"]);
    // Released, their buckets are found empty and dropped from the list; later holds in them
    // (a replay long after) are still found.
    let keys: Vec<_> = ["h1", "h2", "h3"].iter().map(|id| (nid(id), HoldReason::SendAt)).collect();
    assert_eq!(db.begin_release(&keys).await.unwrap(), [true, true, true]);
    db.finish_release(&keys).await.unwrap();
    assert!(db.due(2, 10 * hour, 10).await.unwrap().is_empty());
    assert!(db.due(2, 10 * hour, 10).await.unwrap().is_empty());
    db.hold(&[hold("h4", 2, hour + 7)]).await.unwrap();
    assert_eq!(ids(&db.due(2, 10 * hour, 10).await.unwrap()), ["h4"]);
}

pub async fn release_is_two_steps_and_a_cancel_cannot_take_what_is_being_released<S: ScheduleStore>(db: &S) {
    db.hold(&[hold("a", 0, 100), hold("b", 0, 100)]).await.unwrap();
    let key = |id: &str| (nid(id), HoldReason::SendAt);
    assert_eq!(db.begin_release(&[key("a")]).await.unwrap(), [true]);
    // Taken but not finished (a crash here): still due, and taken again.
    assert_eq!(ids(&db.due(0, 1_000, 10).await.unwrap()), ["a", "b"]);
    assert_eq!(db.begin_release(&[key("a")]).await.unwrap(), [true]);
    let cancelled = db.cancel(&nid("a"), Some("c1")).await.unwrap();
    assert_eq!(cancelled.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [HoldState::Releasing]);
    db.finish_release(&[key("a")]).await.unwrap();
    assert_eq!(ids(&db.due(0, 1_000, 10).await.unwrap()), ["b"]);
    assert_eq!(db.hold(&[hold("a", 0, 100)]).await.unwrap(), [Some(HoldState::Released)]);

    // Another client's cancel finds nothing; the sender's takes it, in two steps like a release.
    assert!(db.cancel(&nid("b"), Some("c2")).await.unwrap().is_empty());
    let cancelled = db.cancel(&nid("b"), Some("c1")).await.unwrap();
    assert_eq!(cancelled[0].1, HoldState::Waiting);
    assert_eq!(cancelled[0].0.envelope, b"envelope of b");
    // Taken but not finished (a crash before its event was appended): never released, still due
    // (the scheduler finishes it), found again by a repeated cancel with its envelope.
    assert_eq!(db.begin_release(&[key("b")]).await.unwrap(), [false]);
    let due = db.due(0, 1_000, 10).await.unwrap();
    assert_eq!((ids(&due), due[0].1), (vec!["b"], HoldState::Cancelling));
    let again = db.cancel(&nid("b"), None).await.unwrap();
    assert_eq!((again[0].1, again[0].0.envelope.as_slice()), (HoldState::Cancelling, b"envelope of b".as_slice()));
    assert_eq!(db.hold(&[hold("b", 0, 100)]).await.unwrap(), [Some(HoldState::Cancelling)]);
    // A finish of a hold in another state changes nothing.
    db.finish_cancel(&[key("a"), key("never held")]).await.unwrap();
    assert_eq!(db.hold(&[hold("a", 0, 100)]).await.unwrap(), [Some(HoldState::Released)]);
    db.finish_cancel(&[key("b")]).await.unwrap();
    db.finish_cancel(&[key("b")]).await.unwrap();
    assert_eq!(db.cancel(&nid("b"), None).await.unwrap()[0].1, HoldState::Cancelled);
    assert_eq!(db.begin_release(&[key("b")]).await.unwrap(), [false]);
    assert!(db.due(0, 1_000, 10).await.unwrap().is_empty());
    assert_eq!(db.hold(&[hold("b", 0, 100)]).await.unwrap(), [Some(HoldState::Cancelled)]);
    // A finish never ends a hold that waits.
    db.hold(&[hold("c", 0, 100)]).await.unwrap();
    db.finish_cancel(&[key("c")]).await.unwrap();
    assert_eq!(db.hold(&[hold("c", 0, 100)]).await.unwrap(), [Some(HoldState::Waiting)]);
    assert_eq!(db.begin_release(&[key("never held")]).await.unwrap(), [false]);
    assert!(db.cancel(&nid("never held"), None).await.unwrap().is_empty());
}

pub fn join(user: &str, key: &str, member: &str) -> DigestJoin {
    DigestJoin {
        user_id: user.into(),
        key: key.into(),
        member: nid(member),
        window_ms: 600_000,
        partition: 3,
        client_id: "c1".into(),
        envelope: member.as_bytes().to_vec(),
    }
}

pub async fn digests_collect_per_user_and_key_until_released_then_a_new_one_opens<S: ScheduleStore>(db: &S) {
    let joined =
        db.join_digests(&[join("u1", "k", "m1"), join("u1", "k", "m2"), join("u1", "j", "m3")], 1_000).await.unwrap();
    let first = NotificationId::for_digest(&nid("m1"));
    assert_eq!(joined[0], DigestJoined::Opened { digest: first.clone(), due_at_ms: 601_000 });
    assert_eq!(joined[1], DigestJoined::Joined { digest: first.clone() });
    assert!(matches!(joined[2], DigestJoined::Opened { .. }));
    // A replayed join changes nothing.
    let again = db.join_digests(&[join("u1", "k", "m2")], 2_000).await.unwrap();
    assert_eq!(again, [DigestJoined::AlreadyMember { digest: first.clone() }]);
    let (members, count) = db.digest_members(&first, 10).await.unwrap();
    assert_eq!((members, count), (vec![b"m1".to_vec(), b"m2".to_vec()], 2));
    assert_eq!(db.digest_members(&first, 1).await.unwrap(), (vec![b"m1".to_vec()], 2));

    let due = db.due(3, 601_000, 10).await.unwrap();
    assert_eq!(due.len(), 2, "both digests are due");
    let (due, _) = due.iter().find(|(h, _)| h.id == first).expect("the first digest is due");
    assert_eq!((due.reason, due.envelope.as_slice()), (HoldReason::Digest, b"m1".as_slice()));
    let key = (first.clone(), HoldReason::Digest);
    assert_eq!(db.begin_release(std::slice::from_ref(&key)).await.unwrap(), [true]);
    // Closed at release: the next notification opens a new digest; the members are still there.
    let next = db.join_digests(&[join("u1", "k", "m4")], 601_500).await.unwrap();
    assert_eq!(next[0], DigestJoined::Opened { digest: NotificationId::for_digest(&nid("m4")), due_at_ms: 1_201_500 });
    assert_eq!(db.digest_members(&first, 10).await.unwrap().1, 2);
    db.finish_release(&[key]).await.unwrap();
    assert_eq!(db.digest_members(&first, 10).await.unwrap(), (vec![], 0));
    assert_eq!(
        db.join_digests(&[join("u1", "k", "m1")], 700_000).await.unwrap()[0],
        DigestJoined::AlreadyMember { digest: first }
    );
}

pub async fn a_cancelled_digest_stops_collecting<S: ScheduleStore>(db: &S) {
    let first = NotificationId::for_digest(&nid("m1"));
    db.join_digests(&[join("u1", "k", "m1"), join("u1", "k", "m2")], 1_000).await.unwrap();
    let cancelled = db.cancel(&first, Some("c1")).await.unwrap();
    assert_eq!(cancelled.len(), 1);
    assert_eq!((cancelled[0].0.reason, cancelled[0].1), (HoldReason::Digest, HoldState::Waiting));
    // Closed at the cancel's first step: the next notification of the user and key opens another.
    let next = db.join_digests(&[join("u1", "k", "m3")], 2_000).await.unwrap();
    assert!(matches!(next[0], DigestJoined::Opened { .. }), "{next:?}");
    assert_ne!(next[0].digest(), &first);
    let key = (first.clone(), HoldReason::Digest);
    assert_eq!(db.begin_release(std::slice::from_ref(&key)).await.unwrap(), [false]);
    db.finish_cancel(&[key]).await.unwrap();
    assert_eq!(db.digest_members(&first, 10).await.unwrap(), (vec![], 0));
    assert_eq!(ids(&db.due(3, 601_000, 10).await.unwrap()), Vec::<&str>::new());
}
