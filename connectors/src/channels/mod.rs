//! Channel connectors, one module per provider (or sink Herald owns).
//!
//! - [`outbox`]: the file outbox, one JSON line per delivery, exactly once with the ledger.
//! - [`sms`]: SMS segment counting, shared by the SMS providers.
//! - [`twilio`]: Twilio Programmable Messaging (SMS).

pub mod outbox;
pub mod sms;
pub mod twilio;
