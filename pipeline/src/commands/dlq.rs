//! `herald dlq list|show|replay` on a data directory whose server is stopped.

use crate::app::App;
use crate::dlq;
use anyhow::{Context, bail};
use herald_schemas::job::DeadLetter;
use indicatif::{ProgressBar, ProgressStyle};

pub enum Action {
    List { json: bool },
    Show { delivery_id: String },
    Replay { all: bool, delivery_ids: Vec<String> },
}

pub async fn run(app: &App, action: Action) -> anyhow::Result<()> {
    let (log, ledger) = (app.backends.log.as_ref(), app.backends.ledger.as_ref());
    let open = dlq::open_letters(log, ledger).await.context("cannot read herald-dead")?;
    match action {
        Action::List { json } => {
            for letter in &open {
                if json {
                    println!("{}", serde_json::to_string(&letter_json(letter))?);
                } else {
                    println!("{}", line(letter));
                }
            }
            eprintln!("{} dead letters", open.len());
        }
        Action::Show { delivery_id } => {
            let Some(letter) = open.iter().find(|l| l.job.delivery_id.0 == delivery_id) else {
                bail!("no open dead letter for delivery {delivery_id} (see `herald dlq list`)");
            };
            println!("{}", serde_json::to_string_pretty(&letter_json(letter))?);
        }
        Action::Replay { all, delivery_ids } => {
            let chosen: Vec<DeadLetter> = if all {
                open
            } else {
                let mut chosen = Vec::with_capacity(delivery_ids.len());
                for id in &delivery_ids {
                    match open.iter().find(|l| &l.job.delivery_id.0 == id) {
                        Some(letter) => chosen.push(letter.clone()),
                        None => bail!("no open dead letter for delivery {id} (see `herald dlq list`)"),
                    }
                }
                chosen
            };
            let bar = ProgressBar::new(chosen.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("{spinner} replaying [{bar:40}] {pos}/{len} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            let partitions = app.config.pipeline.partitions.get();
            let report = dlq::replay(log, ledger, &chosen, partitions, |done| bar.set_position(done as u64)).await?;
            bar.finish_and_clear();
            eprintln!(
                "{} replayed, {} skipped (delivered since); they go out when the server runs",
                report.replayed, report.skipped
            );
        }
    }
    Ok(())
}

fn letter_json(letter: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "delivery_id": letter.job.delivery_id,
        "notification_id": letter.job.notification_id,
        "route": letter.job.target.route().as_str(),
        "reason": letter.reason,
        "last_error": letter.last_error,
        "attempt": letter.job.attempt,
        "dead_at_ms": letter.dead_at_ms,
        "job": letter.job,
    })
}

fn line(letter: &DeadLetter) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(letter.dead_at_ms);
    format!(
        "{}  {}  {}  {}  {}  ({})",
        humantime_serde::re::humantime::format_rfc3339_seconds(at),
        letter.job.delivery_id.0,
        letter.job.target.route().as_str(),
        letter.job.target.redacted(),
        letter.reason,
        letter.last_error
    )
}
