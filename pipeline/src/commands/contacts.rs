//! `herald contacts import FILE`: users from CSV or JSON Lines.
//!
//! JSON Lines: one user object per line, the body of `PUT /v1/users/{id}`
//! with its `id`, and optionally `"topics": [...]` (the topics the user
//! follows, as `PUT /v1/users/{id}/topics` sets them). CSV: a header row naming some of
//! `id,email,phone,locale,timezone,ios_tokens,android_tokens,web_tokens,opt_out_channels,opt_out_categories,topics`;
//! list cells separate values with `|`. A device's id is derived from its
//! platform and token.
//!
//! Rows are validated like the API does; a bad row is reported with its line
//! number and skipped, never fatal. Users are written in batches.

use futures_util::StreamExt;
use herald_schemas::contacts::{Device, OptOut, Platform, Preferences, User};
use herald_schemas::ids::hash_hex;
use herald_schemas::request::ChannelKind;
use herald_schemas::store::{ContactStore, SubscriptionStore};
use herald_stages::validate::validate_user;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

const BATCH: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    /// From the file name: `.csv` or `.jsonl`/`.ndjson`.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub created: u64,
    pub updated: u64,
    /// `(line number, why)` of each skipped row.
    pub skipped: Vec<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CSV header is unreadable: {0}")]
    Header(csv::Error),
    #[error("storing users failed: {0}")]
    Store(#[from] herald_schemas::store::StoreError),
}

/// Imports `path` into `store`, showing a progress bar on stderr.
pub async fn import(
    store: &dyn ContactStore,
    subscriptions: &dyn SubscriptionStore,
    path: &Path,
    format: Format,
) -> Result<ImportReport, ImportError> {
    let stores = Stores { contacts: store, subscriptions };
    let io = |source| ImportError::Io { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{spinner} importing [{bar:40}] {bytes}/{total_bytes} {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let reader = bar.wrap_read(file);
    let report = match format {
        Format::Jsonl => import_rows(&stores, jsonl_rows(reader), &bar).await?,
        Format::Csv => import_rows(&stores, csv_rows(reader)?, &bar).await?,
    };
    bar.finish_with_message(format!(
        "{} created, {} updated, {} skipped",
        report.created,
        report.updated,
        report.skipped.len()
    ));
    Ok(report)
}

/// A user and, if the row names them, the topics they follow.
type Imported = (User, Option<Vec<String>>);
type Row = (u64, Result<Imported, String>);

struct Stores<'a> {
    contacts: &'a dyn ContactStore,
    subscriptions: &'a dyn SubscriptionStore,
}

fn checked((user, topics): Imported) -> Result<Imported, String> {
    validate_user(&user).map_err(|r| r.message)?;
    if let Some(bad) = topics.iter().flatten().find(|t| !herald_stages::validate::is_category(t)) {
        return Err(format!("topic {bad:?} must be 1 to 64 characters of a-z, 0-9, '_' and '-'"));
    }
    Ok((user, topics))
}

async fn import_rows(
    store: &Stores<'_>,
    rows: impl Iterator<Item = Row>,
    bar: &ProgressBar,
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let mut batch: Vec<Imported> = Vec::with_capacity(BATCH);
    for (line, row) in rows {
        match row.and_then(checked) {
            Ok(user) => batch.push(user),
            Err(why) => {
                bar.suspend(|| eprintln!("line {line}: skipped: {why}"));
                report.skipped.push((line, why));
            }
        }
        if batch.len() == BATCH {
            flush(store, &mut batch, &mut report).await?;
        }
    }
    flush(store, &mut batch, &mut report).await?;
    Ok(report)
}

async fn flush(store: &Stores<'_>, batch: &mut Vec<Imported>, report: &mut ImportReport) -> Result<(), ImportError> {
    if batch.is_empty() {
        return Ok(());
    }
    let users: Vec<User> = batch.iter().map(|(u, _)| u.clone()).collect();
    for created in store.contacts.put_users(&users).await? {
        if created {
            report.created += 1;
        } else {
            report.updated += 1;
        }
    }
    // Concurrently, so the writes share their fsyncs.
    let writes = batch.iter().filter_map(|(u, topics)| Some(store.subscriptions.set_topics(&u.id, topics.as_ref()?)));
    let done: Vec<_> = futures_util::stream::iter(writes).buffer_unordered(64).collect().await;
    done.into_iter().collect::<Result<Vec<_>, _>>()?;
    batch.clear();
    Ok(())
}

fn jsonl_rows(reader: impl Read) -> impl Iterator<Item = Row> {
    BufReader::new(reader).lines().enumerate().filter_map(|(i, line)| {
        let n = i as u64 + 1;
        match line {
            Err(e) => Some((n, Err(format!("unreadable line: {e}")))),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some((n, parse_json_user(&l))),
        }
    })
}

fn parse_json_user(line: &str) -> Result<Imported, String> {
    let mut value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not a user object: {e}"))?;
    let topics = match value.as_object_mut().and_then(|o| o.remove("topics")) {
        Some(list) => {
            Some(serde_json::from_value::<Vec<String>>(list).map_err(|_| "\"topics\" must be a list of names")?)
        }
        None => None,
    };
    let user: User = serde_json::from_value(value).map_err(|e| format!("not a user object: {e}"))?;
    if user.id.is_empty() {
        return Err("missing \"id\"".to_string());
    }
    Ok((user, topics))
}

fn csv_rows(reader: impl Read) -> Result<impl Iterator<Item = Row>, ImportError> {
    let mut csv = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(reader);
    let headers = csv.headers().map_err(ImportError::Header)?.clone();
    Ok(csv.into_records().enumerate().map(move |(i, record)| {
        // Line 1 is the header.
        let n = i as u64 + 2;
        let row = record.map_err(|e| format!("unreadable CSV row: {e}")).and_then(|r| {
            let cells: HashMap<&str, &str> = headers.iter().zip(r.iter()).collect();
            user_from_cells(&cells).map(|user| {
                let topics = cells
                    .get("topics")
                    .map(|v| v.split('|').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect());
                (user, topics)
            })
        });
        (n, row)
    }))
}

fn user_from_cells(cells: &HashMap<&str, &str>) -> Result<User, String> {
    let known = [
        "id",
        "email",
        "phone",
        "locale",
        "timezone",
        "ios_tokens",
        "android_tokens",
        "web_tokens",
        "opt_out_channels",
        "opt_out_categories",
        "topics",
    ];
    if let Some(unknown) = cells.keys().find(|k| !known.contains(k)) {
        return Err(format!("unknown column {unknown:?}; known: {}", known.join(",")));
    }
    let get = |k: &str| cells.get(k).copied().filter(|v| !v.is_empty()).map(str::to_string);
    let list = |k: &str| -> Vec<String> {
        cells
            .get(k)
            .map(|v| v.split('|').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    };
    let id = get("id").ok_or("missing id")?;
    let mut devices = Vec::new();
    for (column, platform) in
        [("ios_tokens", Platform::Ios), ("android_tokens", Platform::Android), ("web_tokens", Platform::Web)]
    {
        for token in list(column) {
            let device_id = format!("{}-{}", platform.as_str(), &hash_hex(&[token.as_bytes()])[..12]);
            devices.push(Device { id: device_id, platform, token, active: true });
        }
    }
    let channels = list("opt_out_channels")
        .iter()
        .map(|c| ChannelKind::parse(c).ok_or_else(|| format!("unknown channel {c:?} in opt_out_channels")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(User {
        id,
        email: get("email"),
        phone: get("phone"),
        locale: get("locale"),
        timezone: get("timezone"),
        devices,
        preferences: Preferences {
            opt_out: OptOut { channels, categories: list("opt_out_categories") },
            quiet_hours: None,
        },
        unreachable: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_users_and_bad_rows_carry_line_numbers() {
        let data = "id,email,phone,ios_tokens,opt_out_channels,topics\n\
                    u1,a@example.com,+821012345678,tok1|tok2,sms,news|sports\n\
                    ,b@example.com,,,\n\
                    u3,c@example.com,,,fax\n";
        let rows: Vec<Row> = csv_rows(data.as_bytes()).unwrap().collect();
        assert_eq!(rows.len(), 3);
        let (u1, topics) = rows[0].1.as_ref().unwrap();
        assert_eq!(u1.devices.len(), 2);
        assert_eq!(u1.preferences.opt_out.channels, vec![ChannelKind::Sms]);
        assert_eq!(topics.as_deref(), Some(&["news".to_string(), "sports".to_string()][..]));
        assert_eq!(rows[1].0, 3);
        assert!(rows[1].1.as_ref().unwrap_err().contains("missing id"));
        assert_eq!(rows[2].0, 4);
        assert!(rows[2].1.as_ref().unwrap_err().contains("fax"));
    }

    #[test]
    fn jsonl_rows_skip_blank_lines_and_report_bad_ones() {
        let data = "{\"id\":\"u1\",\"email\":\"a@example.com\",\"topics\":[\"news\"]}\n\n{\"id\":2}\n";
        let rows: Vec<Row> = jsonl_rows(data.as_bytes()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1.as_ref().unwrap().1.as_deref(), Some(&["news".to_string()][..]));
        assert_eq!(rows[1].0, 3);
        assert!(rows[1].1.is_err());
    }
}
