//! Channel connectors, one module per provider (or sink Herald owns).
//!
//! - [`outbox`]: the file outbox, one JSON line per delivery, exactly once with the ledger.
//! - [`breaker`]: the circuit breaker every provider's channel runs behind.
//! - [`sms`]: SMS segment counting, shared by the SMS providers.
//! - [`twilio`]: Twilio Programmable Messaging (SMS).
//! - [`vonage`]: Vonage SMS API (SMS) and its delivery receipts.
//! - [`smtp`]: email over SMTP (lettre).
//! - [`sendgrid`]: SendGrid v3 Mail Send (email) and its signed event webhook.

pub mod breaker;
pub mod outbox;
pub mod sendgrid;
pub mod sms;
pub mod smtp;
pub mod twilio;
pub mod vonage;

use futures_util::StreamExt;
use herald_schemas::DeliveryJob;
use herald_schemas::channel::SendOutcome;
use std::future::Future;

/// Sends each job with `send_one`, at most `limit` at a time, and returns the outcomes in job
/// order. Unordered underneath, so one slow request does not hold the slots of those that
/// finished after it.
pub async fn send_each<'a, F, Fut>(jobs: &'a [DeliveryJob], limit: usize, send_one: F) -> Vec<SendOutcome>
where
    F: Fn(&'a DeliveryJob) -> Fut,
    Fut: Future<Output = SendOutcome> + Send + 'a,
{
    let sends: Vec<_> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let send = send_one(job);
            Box::pin(async move { (i, send.await) })
        })
        .collect();
    let mut done: Vec<(usize, SendOutcome)> =
        futures_util::stream::iter(sends).buffer_unordered(limit.max(1)).collect().await;
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, outcome)| outcome).collect()
}
