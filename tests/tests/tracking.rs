//! Engagement tracking end to end: an email's links go through signed click redirects and it
//! carries an open pixel; loading them records `opened` and `clicked`, a redirect only ever goes
//! to a link of the message (a tampered or non-click token is refused), an app reports a push
//! opened with `POST /v1/events`, and the `funnel` counts each step once per delivery.

mod common;

use common::outbox::{Outbox, TornTail, wait_for_lines};
use common::server::Herald;
use herald_schemas::ChannelKind;
use serde_json::{Value, json};
use std::time::Duration;

/// The public address in the links; the test requests their paths on the server's real address.
const PUBLIC: &str = "https://herald.example";

fn config() -> String {
    format!("[tracking]\nurl = \"{PUBLIC}\"\nsecret = \"tracking-test-secret\"\n")
}

/// Every `href="…"` value and `src="…"` value of `html` that starts with the public address.
fn tracked_paths(html: &str, attribute: &str) -> Vec<String> {
    let marker = format!("{attribute}=\"{PUBLIC}");
    html.match_indices(&marker)
        .map(|(at, _)| {
            let rest = &html[at + marker.len()..];
            rest[..rest.find('"').expect("a closing quote")].to_string()
        })
        .collect()
}

#[tokio::test]
async fn opens_and_clicks_are_recorded_redirect_only_to_the_message_links_and_join_the_funnel() {
    let mut herald = Herald::start(Some(&config()));
    let api = herald.api();
    let user = json!({ "email": "kim@example.org",
                       "devices": [{ "id": "phone", "platform": "android", "token": "fcm-token-kim" }] });
    api.put_user("kim", &user).await.expect(201, "PUT /v1/users/kim");
    let template = json!({ "id": "sale", "locale": "en",
        "push": { "title": "Sale", "body": "{{ pct }}% off" },
        "email": { "subject": "Sale", "text": "{{ pct }}% off",
                   "html": "<html><body><a href=\"https://shop.example/sale?pct={{ pct }}&src=mail\">Shop</a> \
                            <a href=\"mailto:help@shop.example\">Help</a></body></html>" } });
    api.post_template(&template).await.expect(201, "POST /v1/templates");
    let item = json!({ "user_id": "kim", "template": "sale", "channels": ["push", "email"],
                       "category": "marketing", "data": { "pct": 30 } });
    api.submit(&[item]).await;
    let settled = wait_for_lines(herald.data_dir(), 2, Duration::from_secs(60)).await;
    assert_eq!(settled.total, 2, "one push and one email");
    let outbox = Outbox::read(herald.data_dir(), TornTail::Forbid);
    let email = outbox.lines.iter().find(|l| l.file == ChannelKind::Email).expect("the email");
    let push = outbox.lines.iter().find(|l| l.file == ChannelKind::Push).expect("the push");
    let html = email.content("html");
    let clicks = tracked_paths(html, "href");
    let opens = tracked_paths(html, "src");
    assert_eq!((clicks.len(), opens.len()), (1, 1), "one tracked link and one pixel: {html}");
    assert!(html.contains("href=\"mailto:help@shop.example\""), "a mailto link is left alone: {html}");
    assert!(!html.contains("https://shop.example"), "the link's target is only inside its token: {html}");

    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: &str| client.get(format!("{}{path}", herald.url())).send();
    for _ in 0..2 {
        let pixel = get(&opens[0]).await.unwrap();
        assert_eq!(pixel.status(), 200);
        assert_eq!(pixel.headers()["content-type"], "image/gif");
        assert_eq!(pixel.bytes().await.unwrap().len(), 43, "a 1x1 GIF");
    }
    let click = get(&clicks[0]).await.unwrap();
    assert_eq!(click.status(), 302);
    assert_eq!(click.headers()["location"], "https://shop.example/sale?pct=30&src=mail", "the link of the message");

    // A token edited (its payload, so its signature no longer matches), and the open pixel's
    // token used as a click link (it names no target): no redirect.
    let token = clicks[0].rsplit('/').next().unwrap();
    let (payload, mac) = token.split_once('.').unwrap();
    let flipped = if payload.starts_with('e') { "f" } else { "e" };
    let edited = get(&format!("/v1/t/c/{flipped}{}.{mac}", &payload[1..])).await.unwrap();
    assert_eq!(edited.status(), 403, "an edited token");
    assert!(edited.headers().get("location").is_none());
    let open_token = opens[0].rsplit('/').next().unwrap();
    let not_a_click = get(&format!("/v1/t/c/{open_token}")).await.unwrap();
    assert_eq!(not_a_click.status(), 403, "the open token is not a click link");

    // The app reports the push opened, with the delivery id its payload carries.
    let report = |events: Value| api.request(reqwest::Method::POST, "/v1/events").json(&json!({ "events": events }));
    let push_delivery = push.str("/delivery_id");
    let reported = api
        .send(report(json!([{ "delivery_id": push_delivery, "event": "opened" },
                             { "delivery_id": "no-such.0", "event": "opened" }])))
        .await;
    assert_eq!(reported.status, 202, "{}", reported.text);
    assert_eq!(reported.json["recorded"], 1, "{}", reported.text);
    assert_eq!(reported.json["unknown"], json!(["no-such.0"]), "{}", reported.text);
    let bad = api.send(report(json!([{ "delivery_id": push_delivery, "event": "viewed" }]))).await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    herald.stop();
    let sql = |query: &str| -> Value {
        let out = herald.command(&["sql", "--format", "json", query]);
        assert!(out.status.success(), "herald sql: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let funnel = sql("SELECT channel, template, requested, sent, opened, clicked FROM funnel ORDER BY channel");
    assert_eq!(
        funnel,
        json!([
            { "channel": "email", "template": "sale", "requested": 1, "sent": 1, "opened": 1, "clicked": 1 },
            { "channel": "push", "template": "sale", "requested": 1, "sent": 1, "opened": 1, "clicked": 0 },
        ]),
        "the funnel"
    );
    let opened = sql("SELECT count(*) AS n FROM events WHERE status = 'opened'");
    assert_eq!(opened[0]["n"], 2, "the email opened twice is one event, the push one: {opened}");
}
