//! [`FileOutbox`]: the sink itself.

use super::OutboxError;
use super::line::OutboxLine;
use async_trait::async_trait;
use herald_schemas::channel::{Channel, ChannelError, SendOutcome};
use herald_schemas::job::DeliveryJob;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Appends deliveries as JSON lines to one file; see the [module docs](super).
pub struct FileOutbox {
    name: String,
    path: PathBuf,
    /// Opened for append: every write lands at the current end, also after a truncation.
    file: Arc<File>,
    /// File length after the last successful send (or recovery): what the ledger may commit.
    position: u64,
    /// A failed write left bytes past `position` that could not be cut yet; cut them before the
    /// next write, or refuse it.
    dirty: bool,
}

impl std::fmt::Debug for FileOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileOutbox")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl FileOutbox {
    /// Opens (creating it and its parent directories) the outbox file at `path`; `name` is the
    /// channel name for logs and metrics (`outbox-sms`) and the ledger's sink name.
    ///
    /// Blocking (file system calls); the position starts at the file's length until
    /// [`Channel::recover`] sets it to the committed one.
    pub fn open(path: PathBuf, name: impl Into<String>) -> Result<FileOutbox, OutboxError> {
        let io = |source| OutboxError::Io { path: path.clone(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        let position = file.metadata().map_err(io)?.len();
        let name = name.into();
        tracing::debug!(outbox = %name, path = %path.display(), position, "outbox opened");
        Ok(FileOutbox { name, path, file: Arc::new(file), position, dirty: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> ChannelError {
        ChannelError::Unavailable { channel: self.name.clone(), detail: format!("{}: {detail}", self.path.display()) }
    }

    /// Runs file I/O on the blocking pool.
    async fn on_file<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
    ) -> Result<T, ChannelError> {
        let file = Arc::clone(&self.file);
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(result) => result.map_err(|e| self.unavailable(e)),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(self.unavailable("runtime is shutting down")),
        }
    }
}

#[async_trait]
impl Channel for FileOutbox {
    fn name(&self) -> &str {
        &self.name
    }

    /// Writes every deliverable job and syncs once. A job whose content does not match its target
    /// is [`SendOutcome::Permanent`] and not written. On a write failure nothing of the batch is
    /// kept and the whole batch fails (retry it).
    async fn send(&mut self, jobs: &[DeliveryJob]) -> Result<Vec<SendOutcome>, ChannelError> {
        let mut buf = Vec::with_capacity(jobs.len() * 512);
        let mut outcomes = Vec::with_capacity(jobs.len());
        let now = herald_schemas::stage::now_ms();
        for job in jobs {
            match OutboxLine::new(job, now) {
                Ok(line) => {
                    line.write_to(&mut buf).map_err(|e| self.unavailable(format!("cannot encode a line: {e}")))?;
                    outcomes.push(SendOutcome::Delivered { provider_id: None });
                }
                Err(reason) => {
                    tracing::warn!(outbox = %self.name, delivery = %job.delivery_id, %reason, "outbox refused a job");
                    outcomes.push(SendOutcome::Permanent { reason });
                }
            }
        }
        if buf.is_empty() {
            return Ok(outcomes);
        }

        let keep = self.position;
        if self.dirty {
            self.on_file(move |file| file.set_len(keep)).await?;
            self.dirty = false;
            tracing::info!(outbox = %self.name, position = keep, "outbox cut the remains of a failed write");
        }
        let written = buf.len() as u64;
        let outcome = self
            .on_file(move |mut file| match file.write_all(&buf).and_then(|()| file.sync_data()) {
                Ok(()) => Ok(Ok(())),
                // Cut whatever part of the batch reached the file, so the next batch starts on a
                // line boundary at `keep`.
                Err(error) => Ok(Err((error, file.set_len(keep).is_ok()))),
            })
            .await?;
        match outcome {
            Ok(()) => {
                self.position += written;
                tracing::trace!(outbox = %self.name, lines = outcomes.len(), bytes = written, "outbox batch written");
                Ok(outcomes)
            }
            Err((error, cut)) => {
                self.dirty = !cut;
                tracing::warn!(outbox = %self.name, %error, cut, "outbox write failed");
                Err(self.unavailable(error))
            }
        }
    }

    fn position(&self) -> Option<u64> {
        Some(self.position)
    }

    /// Truncates the file to `committed` (to 0 when nothing was ever committed), cutting a torn
    /// last line and lines written after the last ledger commit; the dispatcher re-sends those.
    async fn recover(&mut self, committed: Option<u64>) -> Result<(), ChannelError> {
        let target = committed.unwrap_or(0);
        let (length, position) = self
            .on_file(move |file| {
                let length = file.metadata()?.len();
                if target > length {
                    return Ok((length, length));
                }
                if target < length {
                    file.set_len(target)?;
                    file.sync_all()?;
                }
                Ok((length, target))
            })
            .await?;
        if target > length {
            tracing::error!(
                outbox = %self.name,
                committed = target,
                length,
                "outbox file is shorter than its committed position: lines were removed outside Herald"
            );
        } else if length > target {
            tracing::info!(outbox = %self.name, bytes_cut = length - target, committed = target, "outbox cut what was written after the last ledger commit");
        } else {
            tracing::debug!(outbox = %self.name, position, "outbox matches its committed position");
        }
        self.position = position;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::contacts::Platform;
    use herald_schemas::ids::{DeliveryId, NotificationId};
    use herald_schemas::job::Target;
    use herald_schemas::work::RenderedContent;
    use serde_json::Value;

    fn job(n: u32, target: Target, content: RenderedContent) -> DeliveryJob {
        let notification_id = NotificationId(format!("n{n}"));
        let delivery_id = DeliveryId::derive(&notification_id, target.route().as_str(), target.address());
        DeliveryJob {
            delivery_id,
            notification_id,
            client_id: "acme".into(),
            user_id: format!("u{n}"),
            category: "general".into(),
            template: "welcome".into(),
            locale: "en".into(),
            target,
            content,
            attempt: 1,
            requested_at_ms: 1_700_000_000_000,
            expires_at_ms: None,
            fallback: None,
        }
    }

    fn push(n: u32) -> DeliveryJob {
        job(
            n,
            Target::Device { device_id: "d1".into(), platform: Platform::Android, token: format!("tok{n}") },
            RenderedContent::Push { title: "Hello".into(), body: "World \"quoted\"\nline".into() },
        )
    }

    fn sms(n: u32) -> DeliveryJob {
        job(n, Target::Phone { number: "+821012345678".into() }, RenderedContent::Sms { text: "code 1234".into() })
    }

    fn email(n: u32) -> DeliveryJob {
        job(
            n,
            Target::Email { address: "a@example.com".into() },
            RenderedContent::Email { subject: "Hi".into(), text: "plain".into(), html: "<p>x</p>".into() },
        )
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[tokio::test]
    async fn writes_one_json_line_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/outbox/push.jsonl");
        let mut outbox = FileOutbox::open(path.clone(), "outbox-test").unwrap();
        outbox.recover(None).await.unwrap();
        assert_eq!(outbox.name(), "outbox-test");
        let outcomes = outbox.send(&[push(1), sms(2), email(3)]).await.unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, SendOutcome::Delivered { .. })));
        assert_eq!(outbox.position(), Some(std::fs::metadata(&path).unwrap().len()));

        let lines = lines(&path);
        assert_eq!(lines.len(), 3);
        let p = &lines[0];
        assert_eq!(p["channel"], "push");
        assert_eq!(p["route"], "fcm");
        assert_eq!(p["platform"], "android");
        assert_eq!(p["target"], "tok1");
        assert_eq!(p["title"], "Hello");
        assert_eq!(p["body"], "World \"quoted\"\nline");
        assert_eq!(p["notification_id"], "n1");
        assert_eq!(p["delivery_id"], push(1).delivery_id.0.as_str());
        for field in ["user_id", "category", "template", "locale"] {
            assert!(p[field].is_string(), "{field}");
        }
        assert_eq!(lines[1]["channel"], "sms");
        assert_eq!(lines[1]["text"], "code 1234");
        assert_eq!(lines[1]["target"], "+821012345678");
        assert_eq!(lines[2]["channel"], "email");
        assert_eq!(
            (&lines[2]["subject"], &lines[2]["text"], &lines[2]["html"]),
            (&Value::from("Hi"), &Value::from("plain"), &Value::from("<p>x</p>"))
        );
    }

    #[tokio::test]
    async fn mismatched_content_is_permanent_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut outbox = FileOutbox::open(path.clone(), "o").unwrap();
        let mut bad = sms(1);
        bad.content = RenderedContent::Push { title: "t".into(), body: "b".into() };
        let outcomes = outbox.send(&[bad, sms(2)]).await.unwrap();
        assert!(matches!(&outcomes[0], SendOutcome::Permanent { reason } if reason.contains("push content")));
        assert!(matches!(outcomes[1], SendOutcome::Delivered { .. }));
        assert_eq!(lines(&path).len(), 1);
    }

    #[tokio::test]
    async fn recover_cuts_torn_tail_and_uncommitted_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms.jsonl");
        let committed = {
            let mut outbox = FileOutbox::open(path.clone(), "outbox-sms").unwrap();
            outbox.send(&[sms(1), sms(2)]).await.unwrap();
            let committed = outbox.position().unwrap();
            // Written but never committed with the ledger, then a crash mid-line.
            outbox.send(&[sms(3)]).await.unwrap();
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(br#"{"notification_id":"n4","deli"#).unwrap();
            committed
        };
        let mut outbox = FileOutbox::open(path.clone(), "outbox-sms").unwrap();
        outbox.recover(Some(committed)).await.unwrap();
        assert_eq!(outbox.position(), Some(committed));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), committed);
        assert_eq!(lines(&path).len(), 2);

        // Replay re-sends 3; the file is whole lines again.
        outbox.send(&[sms(3), sms(4)]).await.unwrap();
        let lines = lines(&path);
        assert_eq!(
            lines.iter().map(|l| l["notification_id"].as_str().unwrap()).collect::<Vec<_>>(),
            ["n1", "n2", "n3", "n4"]
        );
        assert_eq!(outbox.position(), Some(std::fs::metadata(&path).unwrap().len()));
    }

    #[tokio::test]
    async fn recover_without_commit_empties_and_short_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("email.jsonl");
        let mut outbox = FileOutbox::open(path.clone(), "outbox-email").unwrap();
        outbox.send(&[email(1)]).await.unwrap();
        let length = outbox.position().unwrap();

        let mut reopened = FileOutbox::open(path.clone(), "outbox-email").unwrap();
        reopened.recover(Some(length + 100)).await.unwrap();
        assert_eq!(reopened.position(), Some(length));
        assert_eq!(lines(&path).len(), 1);

        reopened.recover(None).await.unwrap();
        assert_eq!(reopened.position(), Some(0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
