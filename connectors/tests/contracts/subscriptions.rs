//! The contract of [`SubscriptionStore`], as tests any implementation must pass: the embedded
//! store's unit tests and the ScyllaDB integration tests run them (each file includes this one
//! with `#[path]`). The order of subscribers is each store's own (user id; bucket then user id),
//! so it is checked to be stable, not to be a particular one.

#![allow(dead_code)]

use herald_schemas::ids::NotificationId;
use herald_schemas::store::{BROADCAST_DONE, SubscriptionStore};

pub fn topics(list: &[&str]) -> Vec<String> {
    list.iter().map(|t| t.to_string()).collect()
}

fn sorted(mut users: Vec<String>) -> Vec<String> {
    users.sort();
    users
}

/// Every subscriber of `topic`, page by page from `cursor`, and how many pages it took.
pub async fn read_all<S: SubscriptionStore>(
    db: &S,
    topic: &str,
    mut cursor: Option<String>,
    limit: usize,
) -> (Vec<String>, usize) {
    let (mut all, mut pages) = (Vec::new(), 0);
    loop {
        let (page, next) = db.subscribers(topic, cursor.as_deref(), limit).await.unwrap();
        assert!(page.len() <= limit, "{} > {limit}", page.len());
        pages += 1;
        match next {
            Some(next) => {
                // Only the last page is short.
                assert_eq!(page.len(), limit, "a short page with a cursor after it");
                all.extend(page);
                cursor = Some(next);
            }
            None => {
                all.extend(page);
                return (all, pages);
            }
        }
    }
}

/// Users `u00`..`u24` on "news", every fifth also on "sports"; "z" on topics whose names start
/// like "news" or that "news" starts like.
pub async fn subscribe_25<S: SubscriptionStore>(db: &S) {
    for u in 0..25 {
        let list = if u % 5 == 0 { topics(&["news", "sports"]) } else { topics(&["news"]) };
        assert!(db.set_topics(&format!("u{u:02}"), &list).await.unwrap().is_empty());
    }
    db.set_topics("z", &topics(&["newsletter", "new", "news/", "News"])).await.unwrap();
}

pub async fn subscribers_come_in_stable_pages_and_follow_changes<S: SubscriptionStore>(db: &S) {
    subscribe_25(db).await;
    let everyone: Vec<String> = (0..25).map(|u| format!("u{u:02}")).collect();
    let (all, pages) = read_all(db, "news", None, 10).await;
    assert_eq!(pages, 3);
    assert_eq!(sorted(all.clone()), everyone, "each subscriber once, no other topic's");
    // Any page size gives the same order, each subscriber once.
    for (limit, pages) in [(1, 25), (3, 9), (24, 2), (25, 1), (26, 1), (1_000, 1)] {
        assert_eq!(read_all(db, "news", None, limit).await, (all.clone(), pages), "limit {limit}");
    }
    assert_eq!(sorted(db.subscribers("sports", None, 100).await.unwrap().0), ["u00", "u05", "u10", "u15", "u20"]);
    for topic in ["newsletter", "new", "news/", "News"] {
        assert_eq!(db.subscribers(topic, None, 100).await.unwrap(), (vec!["z".to_string()], None), "{topic}");
    }
    assert_eq!(db.subscribers("nobody", None, 10).await.unwrap(), (Vec::new(), None));

    // Replacing a user's topics moves them in the index; an empty list removes them.
    assert_eq!(db.set_topics("u05", &topics(&["weather"])).await.unwrap(), ["news", "sports"]);
    assert_eq!(db.topics_of("u05").await.unwrap(), ["weather"]);
    assert_eq!(sorted(db.subscribers("sports", None, 100).await.unwrap().0), ["u00", "u10", "u15", "u20"]);
    assert_eq!(db.subscribers("weather", None, 100).await.unwrap().0, ["u05"]);
    db.set_topics("u00", &[]).await.unwrap();
    assert!(db.topics_of("u00").await.unwrap().is_empty());
    let (news, _) = read_all(db, "news", None, 10).await;
    assert_eq!(news.len(), 23);
    assert!(!news.contains(&"u00".to_string()) && !news.contains(&"u05".to_string()));

    // Duplicates count once, topics come back sorted, setting the same list again changes nothing.
    assert_eq!(db.set_topics("u01", &topics(&["b", "a", "b", "news"])).await.unwrap(), ["news"]);
    assert_eq!(db.topics_of("u01").await.unwrap(), ["a", "b", "news"]);
    assert_eq!(db.set_topics("u01", &topics(&["news", "a", "b"])).await.unwrap(), ["a", "b", "news"]);
    assert_eq!(db.subscribers("b", None, 10).await.unwrap().0, ["u01"]);
    assert!(db.topics_of("stranger").await.unwrap().is_empty());
}

pub async fn a_stored_cursor_resumes_the_fan_out_where_it_stood<S: SubscriptionStore>(db: &S) {
    subscribe_25(db).await;
    let (all, _) = read_all(db, "news", None, 10).await;
    let id = NotificationId("b1".into());
    assert_eq!(db.broadcast_cursor(&id).await.unwrap(), None);
    let (first, next) = db.subscribers("news", None, 10).await.unwrap();
    let next = next.expect("more than a page");
    db.set_broadcast_cursor(&id, &next).await.unwrap();
    let stored = db.broadcast_cursor(&id).await.unwrap();
    assert_eq!(stored.as_deref(), Some(next.as_str()));
    // Resumed from the stored cursor: the rest, each once.
    let (rest, pages) = read_all(db, "news", stored, 10).await;
    assert_eq!(pages, 2);
    assert_eq!([first, rest].concat(), all);
    db.set_broadcast_cursor(&id, BROADCAST_DONE).await.unwrap();
    assert_eq!(db.broadcast_cursor(&id).await.unwrap().as_deref(), Some(BROADCAST_DONE));
    assert_eq!(db.broadcast_cursor(&NotificationId("b2".into())).await.unwrap(), None);
}
