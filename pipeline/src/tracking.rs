//! Engagement tracking: email opens and clicks, and the opens and clicks apps report.
//!
//! With `[tracking] url` set, the email dispatcher rewrites each message's HTML before it is
//! sent ([`Tracking::apply`]):
//! - every `http(s)` link (`href="…"`) becomes `{url}/v1/t/c/<token>`, the token a signed
//!   ([`Signer`]) claim of the delivery *and of that link's target*. `GET /v1/t/c/<token>`
//!   records a `clicked` event and redirects to the target in the token, so Herald only ever
//!   redirects to a URL that was in a message it rendered: no open redirect, and a token edited
//!   to point elsewhere fails its signature;
//! - a 1×1 image `{url}/v1/t/o/<token>` goes before `</body>`; loading it records `opened`.
//!
//! Apps report a push opened or acted on with `POST /v1/events` and the delivery id the push
//! payload carries. Every engagement event copies the delivery's template, category and locale,
//! so it joins the `funnel`. Its event id is derived from the delivery and the kind, so a mail
//! opened five times is one `opened` event (the analytics sink keeps one).

use herald_connectors::secret::Secret;
use herald_connectors::signed::{Signer, TokenError};
use herald_schemas::job::Route;
use herald_schemas::work::RenderedContent;
use herald_schemas::{ChannelKind, DeliveryEvent, DeliveryId, DeliveryJob, EventKind, NotificationId};
use serde::{Deserialize, Serialize};

/// What a tracking token carries: the delivery, what the funnel groups it by, and for a click,
/// the link's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    #[serde(rename = "d")]
    pub delivery_id: String,
    #[serde(rename = "c")]
    pub client_id: String,
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "t")]
    pub template: String,
    #[serde(rename = "k")]
    pub category: String,
    #[serde(rename = "l")]
    pub locale: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Claim {
    fn of(job: &DeliveryJob, url: Option<String>) -> Claim {
        Claim {
            delivery_id: job.delivery_id.0.clone(),
            client_id: job.client_id.clone(),
            user_id: job.user_id.clone(),
            template: job.template.clone(),
            category: job.category.clone(),
            locale: job.locale.clone(),
            url,
        }
    }

    /// The `opened` or `clicked` event of this email delivery at `at_ms`.
    pub fn event(&self, kind: EventKind, at_ms: u64) -> DeliveryEvent {
        let delivery = DeliveryId(self.delivery_id.clone());
        let notification = notification_of(&delivery);
        let mut event = DeliveryEvent::new(
            &notification,
            &self.client_id,
            &self.user_id,
            kind,
            Some(ChannelKind::Email),
            None,
            at_ms,
        )
        .for_delivery(&delivery, Route::Email, 0);
        event.template = Some(self.template.clone());
        event.category = Some(self.category.clone());
        event.locale = Some(self.locale.clone());
        event
    }
}

/// The notification a delivery belongs to: a delivery id is `<notification id>.<hash>`.
pub fn notification_of(delivery: &DeliveryId) -> NotificationId {
    NotificationId(delivery.0.rsplit_once('.').map_or(delivery.0.as_str(), |(n, _)| n).to_string())
}

/// A later event about the delivery `of` is about (a receipt, an open, a click): same client,
/// user, channel, provider, template, category, locale and recipient, attempt 0.
pub fn follow_up(
    of: &DeliveryEvent,
    delivery: &DeliveryId,
    route: Route,
    kind: EventKind,
    at_ms: u64,
) -> DeliveryEvent {
    let mut event = DeliveryEvent::new(&of.notification_id, &of.client_id, &of.user_id, kind, None, None, at_ms)
        .for_delivery(delivery, route, 0);
    if of.delivery_id.as_ref() == Some(delivery) {
        event.template.clone_from(&of.template);
        event.category.clone_from(&of.category);
        event.locale.clone_from(&of.locale);
        event.requested_at_ms = of.requested_at_ms;
        event.recipient.clone_from(&of.recipient);
    }
    event
}

/// Makes the tracking links of email and checks their tokens.
#[derive(Debug)]
pub struct Tracking {
    base_url: String,
    /// `{base_url}/v1/t/o/`, escaped for an attribute: the open pixel's address up to its token,
    /// and how already tracked HTML (a retry's) is recognised.
    pixel_prefix: String,
    signer: Signer,
}

impl Tracking {
    /// `base_url`: Herald's public address as mail recipients reach it (`https://herald.example`).
    pub fn new(base_url: &str, secret: &Secret) -> Tracking {
        let base_url = base_url.trim_end_matches('/').to_string();
        let pixel_prefix = format!("{}/v1/t/o/", escape_attribute(&base_url));
        Tracking { base_url, pixel_prefix, signer: Signer::new(secret) }
    }

    /// Rewrites an email job's HTML: links through the click redirect, the open pixel added.
    /// Other jobs, and mail without HTML, are left as they are.
    pub fn apply(&self, job: &mut DeliveryJob) {
        let RenderedContent::Email { html, .. } = &job.content else { return };
        // A retry carries the HTML its first attempt was sent with: already tracked.
        if html.trim().is_empty() || html.contains(&self.pixel_prefix) {
            return;
        }
        let mut tracked = rewrite_links(html, |url| {
            let token = self.signer.sign(&Claim::of(job, Some(url.to_string())));
            Some(format!("{}/v1/t/c/{token}", self.base_url))
        });
        let pixel = format!(
            r#"<img src="{}{}" width="1" height="1" alt="" style="display:none">"#,
            self.pixel_prefix,
            self.signer.sign(&Claim::of(job, None))
        );
        match tracked.to_ascii_lowercase().rfind("</body>") {
            Some(at) => tracked.insert_str(at, &pixel),
            None => tracked.push_str(&pixel),
        }
        if let RenderedContent::Email { html, .. } = &mut job.content {
            *html = tracked;
        }
    }

    /// The claim of a token from a tracking link, if Herald signed it.
    pub fn verify(&self, token: &str) -> Result<Claim, TokenError> {
        self.signer.verify(token)
    }
}

/// `html` with the value of each quoted `href` attribute whose URL (entities decoded) is
/// `http(s)` replaced by `track(url)` (escaped); `None` from `track` keeps the link.
fn rewrite_links(html: &str, mut track: impl FnMut(&str) -> Option<String>) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len() + 256);
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find("href") {
        let name = from + found;
        from = name + 4;
        // An attribute name: after whitespace, then `=` and a quote, spaces allowed around `=`.
        if !html[..name].ends_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let rest = &html[from..];
        let after_name = rest.trim_start();
        let Some(after_eq) = after_name.strip_prefix('=') else { continue };
        let value_start = after_eq.trim_start();
        let Some(quote) = value_start.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
        let start = html.len() - value_start.len() + 1;
        let Some(len) = html[start..].find(quote) else { break };
        let url = decode_entities(&html[start..start + len]);
        let lowered = url.trim_start().to_ascii_lowercase();
        if (lowered.starts_with("http://") || lowered.starts_with("https://"))
            && let Some(tracked) = track(url.trim())
        {
            out.push_str(&html[copied..start]);
            out.push_str(&escape_attribute(&tracked));
            copied = start + len;
        }
        from = start + len;
    }
    out.push_str(&html[copied..]);
    out
}

/// Decodes the character references an attribute value may hold (`&amp;`, `&#x2f;`, …).
fn decode_entities(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let number = name.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape_attribute(value: &str) -> String {
    value.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The 1×1 transparent GIF the open pixel answers with.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

#[cfg(test)]
mod tests {
    use super::*;
    use herald_connectors::secret::SecretSource;
    use herald_schemas::Target;

    fn tracking(secret: &str) -> Tracking {
        Tracking::new("https://herald.example/", &SecretSource::Inline(secret.into()).resolve().unwrap())
    }

    fn email(html: &str) -> DeliveryJob {
        let notification = NotificationId("n-1".into());
        DeliveryJob {
            delivery_id: DeliveryId::derive(&notification, "email", "kim@example.org"),
            notification_id: notification,
            client_id: "shop".into(),
            user_id: "u-1".into(),
            category: "marketing".into(),
            template: "welcome".into(),
            locale: "de".into(),
            target: Target::Email { address: "kim@example.org".into() },
            content: RenderedContent::Email { subject: "Hi".into(), text: "Hi".into(), html: html.into() },
            attempt: 1,
            requested_at_ms: 1,
            expires_at_ms: None,
            fallback: None,
        }
    }

    fn html_of(job: &DeliveryJob) -> &str {
        match &job.content {
            RenderedContent::Email { html, .. } => html,
            _ => unreachable!(),
        }
    }

    /// The (attribute value, claim) of every tracked link, in order.
    fn tracked(t: &Tracking, html: &str) -> Vec<Claim> {
        let mut claims = Vec::new();
        rewrite_links(html, |url| {
            let token = url.strip_prefix("https://herald.example/v1/t/c/").expect("a click link");
            claims.push(t.verify(token).unwrap());
            None
        });
        claims
    }

    #[test]
    fn each_web_link_goes_through_a_signed_redirect_and_the_pixel_goes_before_the_body_ends() {
        let t = tracking("k1");
        let mut job = email(
            "<html><body><a href=\"https://shop.example/a?x=1&amp;y=&#x2f;2\">A</a> \
             <A HREF = 'http://shop.example/b'>B</A> <a href=\"mailto:help@shop.example\">mail</a> \
             <a data-href=\"https://not.a.link\">C</a></body></html>",
        );
        t.apply(&mut job);
        let html = html_of(&job).to_string();
        let urls: Vec<Option<String>> = tracked(&t, &html).into_iter().map(|c| c.url).collect();
        assert_eq!(
            urls,
            [Some("https://shop.example/a?x=1&y=/2".to_string()), Some("http://shop.example/b".to_string())]
        );
        assert!(html.contains("href=\"mailto:help@shop.example\""), "{html}");
        assert!(html.contains("data-href=\"https://not.a.link\""), "{html}");
        let pixel = html.find("<img src=\"https://herald.example/v1/t/o/").expect("the open pixel");
        assert!(pixel < html.find("</body>").unwrap(), "{html}");
        let token = html[pixel..].split("/v1/t/o/").nth(1).unwrap().split('"').next().unwrap();
        let open = t.verify(token).unwrap();
        assert_eq!(
            (open.url, open.delivery_id.as_str(), open.locale.as_str()),
            (None, job.delivery_id.0.as_str(), "de")
        );
    }

    #[test]
    fn a_token_pointed_elsewhere_or_signed_with_another_key_is_refused() {
        let mut job = email("<a href=\"https://shop.example/\">A</a>");
        tracking("k1").apply(&mut job);
        let html = html_of(&job);
        let token = html.split("/v1/t/c/").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(tracking("k2").verify(token), Err(TokenError::BadSignature));
        let (_, mac) = token.split_once('.').unwrap();
        let mut claim = tracking("k1").verify(token).unwrap();
        claim.url = Some("https://evil.example/".into());
        let forged = Signer::new(&SecretSource::Inline("other".into()).resolve().unwrap()).sign(&claim);
        let (payload, _) = forged.split_once('.').unwrap();
        assert_eq!(tracking("k1").verify(&format!("{payload}.{mac}")), Err(TokenError::BadSignature));
    }

    #[test]
    fn the_events_join_the_delivery_in_the_funnel_and_repeat_with_one_id() {
        let mut job = email("<p>no links</p>");
        tracking("k1").apply(&mut job);
        assert!(html_of(&job).starts_with("<p>no links</p><img "), "{}", html_of(&job));
        let claim = Claim::of(&job, None);
        let first = claim.event(EventKind::Opened, 10);
        let again = claim.event(EventKind::Opened, 99);
        assert_eq!(first.event_id, again.event_id, "a mail opened twice is one event");
        assert_ne!(first.event_id, claim.event(EventKind::Clicked, 10).event_id);
        assert_eq!(first.notification_id, job.notification_id);
        assert_eq!(first.delivery_id.as_ref(), Some(&job.delivery_id));
        assert_eq!((first.template.as_deref(), first.category.as_deref()), (Some("welcome"), Some("marketing")));
        let mut push = email("");
        push.content = RenderedContent::Push { title: "t".into(), body: "<a href=\"https://x\">".into() };
        let before = push.clone();
        tracking("k1").apply(&mut push);
        assert_eq!(push, before, "only email is tracked");
        let mut retried = job.clone();
        tracking("k1").apply(&mut retried);
        assert_eq!(retried, job, "a retry's HTML, tracked already, is not tracked twice");
    }

    #[test]
    fn entities_decode_and_unknown_ones_stay() {
        assert_eq!(decode_entities("a&amp;b&#47;c&#x2F;d&lt;&bogus;&"), "a&b/c/d<&bogus;&");
    }
}
