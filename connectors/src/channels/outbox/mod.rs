//! The file outbox: a channel that appends each delivery as one JSON line to a file Herald owns.
//!
//! Used when a channel has no provider credentials, so a fresh `herald serve` shows real output.
//!
//! # Exactly once, with the ledger
//! - [`FileOutbox::send`] writes a batch and `fdatasync`s once before it returns; the file's
//!   length is then [`Channel::position`](herald_schemas::channel::Channel::position).
//! - The dispatcher commits that position in the same ledger write as the batch's delivery states.
//! - On start, [`Channel::recover`](herald_schemas::channel::Channel::recover) gets the committed
//!   position and truncates the file to it: a torn last line and every line written after the last
//!   ledger commit are cut (the dispatcher sends those deliveries again from the log).
//!
//! # Line format
//! One JSON object per delivery: `notification_id`, `delivery_id`, `client_id`, `user_id`,
//! `channel` (`push`|`sms`|`email`), `route`, `target` (the address), `category`, `template`,
//! `locale`, `attempt`, `requested_at_ms`, then the rendered content as plain strings: push →
//! `platform`, `title`, `body`; sms → `text`; email → `subject`, `text`, `html`.

mod line;
mod sink;

pub use sink::FileOutbox;

use std::path::PathBuf;

/// Failures opening an outbox (sending reports [`herald_schemas::channel::ChannelError`]).
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// An outside system's (the file system); retryable once the operator fixes the path.
    #[error("cannot open outbox file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
