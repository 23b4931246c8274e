//! The file outbox: `<DIR>/outbox/{push,sms,email}.jsonl`, one JSON object per delivered message.
//!
//! A torn last line (no trailing newline) may exist while the server runs; a restart cuts it. So a
//! read while the server runs skips it ([`TornTail::Tolerate`]) and a read after a stop may
//! [`TornTail::Forbid`] it. A complete line that is not a JSON object is always a failure.

use herald_schemas::ChannelKind;
use serde_json::Value;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// After the expected count is reached, how long it must hold still (late duplicates show up here).
const GRACE: Duration = Duration::from_secs(2);
/// Below the expected count, how long without a new line before waiting is pointless.
const STALL: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

pub fn outbox_file(data_dir: &Path, channel: ChannelKind) -> PathBuf {
    data_dir.join("outbox").join(format!("{}.jsonl", channel.as_str()))
}

/// Whether a read accepts a last line without its newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornTail {
    /// The server is running: a partial last line is a write in progress.
    Tolerate,
    /// The server has stopped (or restarted): a partial last line is a failure.
    Forbid,
}

/// One outbox line.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The file it was read from.
    pub file: ChannelKind,
    /// 1-based line number, for messages.
    pub line_no: usize,
    pub json: Value,
}

impl Delivered {
    /// The string at a JSON pointer such as `/push/body`; "" when absent or not a string.
    pub fn str(&self, pointer: &str) -> &str {
        self.json.pointer(pointer).and_then(Value::as_str).unwrap_or("")
    }

    pub fn notification_id(&self) -> &str {
        self.str("/notification_id")
    }

    pub fn target(&self) -> &str {
        self.str("/target")
    }

    /// A rendered field of the line's channel (`platform`, `title`, `body`; `text`; `subject`,
    /// `text`, `html`). The contract lists them per channel; they are read from an object named
    /// after the channel (`"push": {"body": …}`) if the line has one, else from the line itself
    /// (`"body": …`), which is how the file outbox writes them.
    pub fn content(&self, field: &str) -> &str {
        let nested = self.json.get(self.file.as_str()).filter(|v| v.is_object());
        nested.unwrap_or(&self.json).get(field).and_then(Value::as_str).unwrap_or("")
    }

    /// The rendered body of the message: push `body`, sms `text` or email `text`.
    pub fn body(&self) -> &str {
        match self.file {
            ChannelKind::Push => self.content("body"),
            ChannelKind::Sms | ChannelKind::Email => self.content("text"),
        }
    }
}

/// Every line of the three outbox files.
#[derive(Debug, Default)]
pub struct Outbox {
    pub lines: Vec<Delivered>,
}

impl Outbox {
    /// Reads the three files (a missing file is empty).
    pub fn read(data_dir: &Path, torn: TornTail) -> Self {
        let mut lines = Vec::new();
        for channel in ChannelKind::ALL {
            let path = outbox_file(data_dir, channel);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("read {}: {e}", path.display()),
            };
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < bytes.len() && torn == TornTail::Forbid {
                panic!(
                    "{} ends in a torn line of {} bytes after the server stopped: {:?}",
                    path.display(),
                    bytes.len() - complete,
                    String::from_utf8_lossy(&bytes[complete..])
                );
            }
            // `complete` ends in a newline (or is empty), so the final split piece is always empty.
            let pieces: Vec<&[u8]> = bytes[..complete].split(|&b| b == b'\n').collect();
            for (i, raw) in pieces[..pieces.len() - 1].iter().enumerate() {
                let json: Value = serde_json::from_slice(raw).unwrap_or_else(|e| {
                    panic!(
                        "{} line {} is not JSON ({e}): {:?}",
                        path.display(),
                        i + 1,
                        String::from_utf8_lossy(&raw[..raw.len().min(300)])
                    )
                });
                assert!(json.is_object(), "{} line {} is not a JSON object: {json}", path.display(), i + 1);
                lines.push(Delivered { file: channel, line_no: i + 1, json });
            }
        }
        Self { lines }
    }

    pub fn count(&self, channel: ChannelKind) -> usize {
        self.lines.iter().filter(|l| l.file == channel).count()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The lines of one notification.
    pub fn of(&self, notification_id: &str) -> Vec<&Delivered> {
        self.lines.iter().filter(|l| l.notification_id() == notification_id).collect()
    }
}

/// Counts complete outbox lines incrementally (only new bytes are read), for frequent polling.
/// A file that shrank (a restart cut it) is counted again from the start.
pub struct OutboxCounter {
    data_dir: PathBuf,
    /// Per channel: bytes counted (up to and including the last newline) and lines in them.
    seen: [(u64, usize); 3],
}

impl OutboxCounter {
    pub fn new(data_dir: &Path) -> Self {
        Self { data_dir: data_dir.to_path_buf(), seen: [(0, 0); 3] }
    }

    /// Complete lines per channel, in [`ChannelKind::ALL`] order.
    pub fn poll(&mut self) -> [usize; 3] {
        for (i, channel) in ChannelKind::ALL.into_iter().enumerate() {
            let path = outbox_file(&self.data_dir, channel);
            let Ok(mut file) = fs::File::open(&path) else {
                self.seen[i] = (0, 0);
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < self.seen[i].0 {
                self.seen[i] = (0, 0);
            }
            let (offset, lines) = self.seen[i];
            let mut buf = Vec::new();
            file.seek(SeekFrom::Start(offset)).expect("seek in an outbox file");
            file.read_to_end(&mut buf).expect("read an outbox file");
            if let Some(last) = buf.iter().rposition(|&b| b == b'\n') {
                let new_lines = buf[..=last].iter().filter(|&&b| b == b'\n').count();
                self.seen[i] = (offset + last as u64 + 1, lines + new_lines);
            }
        }
        [self.seen[0].1, self.seen[1].1, self.seen[2].1]
    }

    pub fn total(&mut self) -> usize {
        self.poll().iter().sum()
    }
}

/// Where waiting for delivery ended.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// Complete lines per channel, in [`ChannelKind::ALL`] order.
    pub counts: [usize; 3],
    pub total: usize,
    pub expected: usize,
    pub waited: Duration,
}

impl Settled {
    pub fn reached(&self) -> bool {
        self.total == self.expected
    }
}

/// Polls until the outbox holds at least `expected` lines and has held still for a short grace,
/// or until it has not moved for a long while, or `timeout`. Never fails: the caller compares
/// what was delivered with what was expected and reports both.
pub async fn wait_for_lines(data_dir: &Path, expected: usize, timeout: Duration) -> Settled {
    let started = Instant::now();
    let mut counter = OutboxCounter::new(data_dir);
    let mut last_total = usize::MAX;
    let mut last_change = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let counts = counter.poll();
        let total: usize = counts.iter().sum();
        if total != last_total {
            last_total = total;
            last_change = Instant::now();
        }
        let still = last_change.elapsed();
        let done = (total >= expected && still >= GRACE) || still >= STALL || started.elapsed() >= timeout;
        if done {
            let settled = Settled { counts, total, expected, waited: started.elapsed() };
            eprintln!("outbox settled: {settled:?}");
            return settled;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("waiting for the outbox: {total} of {expected} lines after {:?}", started.elapsed());
            last_report = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}
