//! One outbox line: the job, flattened to plain strings.

use herald_schemas::job::{DeliveryJob, Target};
use herald_schemas::work::RenderedContent;
use serde::Serialize;

#[derive(Serialize)]
pub(super) struct OutboxLine<'a> {
    notification_id: &'a str,
    delivery_id: &'a str,
    client_id: &'a str,
    user_id: &'a str,
    channel: &'static str,
    route: &'static str,
    target: &'a str,
    category: &'a str,
    template: &'a str,
    locale: &'a str,
    attempt: u32,
    requested_at_ms: u64,
    /// When the outbox wrote it (ms since the Unix epoch): when it was "sent".
    written_at_ms: u64,
    #[serde(flatten)]
    content: Content<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Push { platform: &'static str, title: &'a str, body: &'a str },
    Sms { text: &'a str },
    Email { subject: &'a str, text: &'a str, html: &'a str },
}

impl<'a> OutboxLine<'a> {
    /// The line for `job`, or why the job cannot be written (its content does not fit its target).
    pub(super) fn new(job: &'a DeliveryJob, written_at_ms: u64) -> Result<OutboxLine<'a>, String> {
        let content = match (&job.content, &job.target) {
            (RenderedContent::Push { title, body }, Target::Device { platform, .. }) => {
                Content::Push { platform: platform.as_str(), title, body }
            }
            (RenderedContent::Sms { text }, Target::Phone { .. }) => Content::Sms { text },
            (RenderedContent::Email { subject, text, html }, Target::Email { .. }) => {
                Content::Email { subject, text, html }
            }
            (content, target) => {
                return Err(format!(
                    "{} content for a {} target",
                    content.channel().as_str(),
                    target.channel().as_str()
                ));
            }
        };
        Ok(OutboxLine {
            notification_id: &job.notification_id.0,
            delivery_id: &job.delivery_id.0,
            client_id: &job.client_id,
            user_id: &job.user_id,
            channel: job.content.channel().as_str(),
            route: job.target.route().as_str(),
            target: job.target.address(),
            category: &job.category,
            template: &job.template,
            locale: &job.locale,
            attempt: job.attempt,
            requested_at_ms: job.requested_at_ms,
            written_at_ms,
            content,
        })
    }

    /// Appends the line and its newline to `out`.
    pub(super) fn write_to(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut *out, self)?;
        out.push(b'\n');
        Ok(())
    }
}
