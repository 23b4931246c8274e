//! Channel connectors, one module per provider (or sink Herald owns).
//!
//! - [`outbox`]: the file outbox, one JSON line per delivery, exactly once with the ledger.

pub mod outbox;
