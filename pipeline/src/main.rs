//! The `herald` command line. Parsing and error context live here; the work
//! is done by `herald::commands`.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use herald::commands::{self, bench, contacts};
use herald::config::Config;
use herald::ingest::{ItemOutcome, Submission};
use herald_connectors::channels::io;
use herald_schemas::Template;
use herald_schemas::store::Scope;
use herald_stages::render::check_template;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Herald delivers notifications over push, SMS and email: durably, exactly once.
///
/// Start with `herald serve` (no servers to install: topics and state live
/// in the data directory), create an API key with `herald keys create`, then
/// send with `POST /v1/notifications`. Every command accepts `--help`.
#[derive(Parser)]
#[command(name = "herald", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every command that touches the data directory shares.
#[derive(Args, Clone)]
struct Common {
    /// Data directory of the embedded backends [default: ./herald-data, or data_dir in the config].
    #[arg(long, env = "HERALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML); every setting has a default. See `herald config check --help`.
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Where the topics live, overriding backends.topics: `embedded` (the data directory), or a
    /// Fluvio cluster as fluvio://HOST:PORT[?replication=3&prefix=NAME-].
    #[arg(long, env = "HERALD_TOPICS", value_name = "URL")]
    topics: Option<String>,
    /// Where contacts and state live, overriding backends.state: `embedded`, or a ScyllaDB
    /// cluster as scylla://NODE1,NODE2[:PORT]/KEYSPACE[?replication=3] (create its schema
    /// first with `herald migrate`).
    #[arg(long, env = "HERALD_STATE", value_name = "URL")]
    state: Option<String>,
}

impl Common {
    fn load(&self) -> anyhow::Result<(Config, PathBuf)> {
        let mut config = Config::load_or_default(self.config.as_deref())?;
        if let Some(topics) = &self.topics {
            config.backends.topics = topics.clone();
        }
        if let Some(state) = &self.state {
            config.backends.state = state.clone();
        }
        config.validate()?;
        let dir = commands::data_dir(self.data_dir.as_deref(), &config);
        Ok((config, dir))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the pipeline until SIGTERM or Ctrl-C.
    ///
    /// Prints `listening on http://ADDR` on stdout once ready; logs go to
    /// stderr (`RUST_LOG=debug` for more). Deliveries land in
    /// DATA_DIR/outbox/{push,sms,email}.jsonl while no provider is configured.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on [default: 127.0.0.1:8080, or api.listen in the config].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// What this process runs: `all` (the API and the pipeline), `api` (the HTTP API only),
        /// or `worker` (the pipeline only, with /healthz, /readyz and /metrics). `api` and
        /// `worker` need the topics and the state on clusters (Fluvio, ScyllaDB); workers then
        /// share the partitions (see docs/distributed.md).
        #[arg(long, value_enum, default_value_t = commands::serve::Role::All)]
        role: commands::serve::Role,
    },
    /// Queue one notification from the command line (the server delivers it when it runs).
    ///
    /// Example: herald send --user u1 --template order_shipped --channel push --channel email --data '{"order":"A-1"}'
    Send {
        #[command(flatten)]
        common: Common,
        /// Recipient user id.
        #[arg(long)]
        user: String,
        /// Template id.
        #[arg(long)]
        template: String,
        /// Channel to deliver on (push, sms, email); repeat for several.
        #[arg(long = "channel", required = true)]
        channels: Vec<String>,
        /// Category for caps and opt-outs.
        #[arg(long, default_value = "transactional")]
        category: String,
        /// Template variables as a JSON object.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Idempotency key (a repeat inside the dedup window is dropped).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Client identity the notification is attributed to.
        #[arg(long, default_value = "cli")]
        client: String,
    },
    /// Manage users and their contacts.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Manage templates.
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create the ScyllaDB keyspace and tables of the state backend (`--state scylla://…`).
    ///
    /// Idempotent: run it before the first `herald serve` and after each upgrade; every statement
    /// is `CREATE … IF NOT EXISTS`, and it waits until every node agrees on the schema. The
    /// keyspace's replication comes from the URL (`?replication=3`, or `dc1:3,dc2:3` for one
    /// factor per datacenter). The embedded state needs no migration.
    ///
    /// Example: herald migrate --state scylla://10.0.0.1,10.0.0.2/herald?replication=3
    Migrate {
        #[command(flatten)]
        common: Common,
        /// Print the CQL instead of running it (to review it, or to apply it with cqlsh).
        #[arg(long)]
        print: bool,
    },
    /// The dead-letter queue: deliveries given up (refused for good, or out of attempts or time).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Measure the pipeline's capacity on this machine (no network in the way).
    ///
    /// Appends N notifications through the API's accept path into a data
    /// directory while the full pipeline runs, and times until every delivery
    /// is in the outbox. Use a fresh directory for comparable numbers:
    ///   herald bench --notifications 200000 --data-dir /tmp/herald-bench --json
    Bench {
        #[command(flatten)]
        common: Common,
        /// Notifications to send (10:1:5 push:SMS:email; push goes to 2 devices).
        #[arg(long, default_value_t = 100_000)]
        notifications: u64,
        /// Distinct recipients.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Concurrent submitters, as concurrent API connections (their appends share fsyncs).
        #[arg(long, default_value_t = 4)]
        clients: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Bytes of filler in each request's data (carried through the request path), to see how
        /// the cost grows with payload size.
        #[arg(long, default_value_t = 0)]
        payload_bytes: usize,
        /// Append all requests first, then start the pipeline: it works through a backlog of
        /// --notifications, and the time and rate are the pipeline's alone. With millions, this
        /// shows how memory behaves however deep the backlog (it waits on disk).
        #[arg(long)]
        backlog: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Query delivery events with SQL (read-only), on a data directory whose server is stopped.
    ///
    /// Tables: `events` (one row per event: status, channel, provider, template, locale,
    /// category, reason, attempt, event_time, request_time, latency_ms, recipient hash, date),
    /// `deliveries` (one row per delivery: final status, attempts, time_to_send_ms) and `funnel`
    /// (by day of request, channel, template, category: requested, sent, delivered, opened,
    /// clicked). For ready-made reports, see `herald report`.
    /// Events not yet flushed to Parquet are included. While the server runs, use
    /// `POST /v1/analytics/sql` instead. Examples:
    ///   herald sql "SELECT status, count(*) FROM deliveries GROUP BY status"
    ///   herald sql --format csv "SELECT * FROM funnel WHERE date = DATE '2026-11-26'"
    Sql {
        #[command(flatten)]
        common: Common,
        /// How to print the rows.
        #[arg(long, value_enum, default_value = "table")]
        format: herald::analytics::sql::Format,
        /// Stop a query that runs longer (e.g. 30s, 2m).
        #[arg(long, default_value = "5m", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Most rows printed (a note on stderr says when more existed).
        #[arg(long, default_value_t = 100_000)]
        max_rows: usize,
        /// The query: SELECT, WITH … SELECT or EXPLAIN.
        query: String,
    },
    /// Canned delivery reports, for when you would rather not write SQL (server stopped, like
    /// `herald sql`; while it runs, post a report's query to `POST /v1/analytics/sql`).
    ///
    ///   herald report delivery            delivery rate by channel and provider, last 7 days
    ///   herald report failures --days 1   today's most frequent failure reasons
    ///   herald report funnel --format csv requested → sent → opened → clicked, per template
    ///   herald report funnel --show-sql   print the query, to start your own from it
    Report {
        #[command(flatten)]
        common: Common,
        /// Which report.
        #[arg(value_enum)]
        report: herald::analytics::reports::Report,
        /// The last N days, UTC, today included.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// How to print the rows.
        #[arg(long, value_enum, default_value = "table")]
        format: herald::analytics::sql::Format,
        /// Print the report's SQL instead of running it.
        #[arg(long)]
        show_sql: bool,
    },
}

#[derive(Subcommand)]
enum ContactsCommand {
    /// Import users from CSV or JSON Lines; bad rows are reported by line and skipped.
    ///
    /// JSONL: one user per line, e.g. {"id":"u1","email":"a@example.com","phone":"+821012345678",
    /// "locale":"ko-KR","timezone":"Asia/Seoul","devices":[{"id":"d1","platform":"ios","token":"…"}]}.
    /// CSV header: any of id,email,phone,locale,timezone,ios_tokens,android_tokens,web_tokens,
    /// opt_out_channels,opt_out_categories (lists separated by '|').
    Import {
        #[command(flatten)]
        common: Common,
        /// The file to import.
        file: PathBuf,
        /// File format [default: from the extension: .csv, .jsonl, .ndjson].
        #[arg(long, value_enum)]
        format: Option<contacts::Format>,
    },
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Add (or replace) templates from a JSON file: one template object or an array of them.
    ///
    /// A template: {"id":"order_shipped","locale":"en","push":{"title":"…","body":"…"},
    /// "sms":{"text":"…"},"email":{"subject":"…","text":"…","html":"…"}} in minijinja syntax.
    Add {
        #[command(flatten)]
        common: Common,
        /// JSON file with the template(s).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key and print it alone on stdout (it is stored only hashed).
    Create {
        #[command(flatten)]
        common: Common,
        /// Scope to grant: send, contacts, templates, analytics, admin (admin implies all). Repeatable.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// Client identity of requests made with the key.
        #[arg(long, default_value = "default")]
        client: String,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters not delivered since: the latest per delivery, oldest first.
    ///
    /// One line each: when, delivery id, route, target (redacted), reason, last error.
    List {
        #[command(flatten)]
        common: Common,
        /// One JSON object per line (the whole letter, job included) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print one delivery's dead letter as JSON (the job, the reason, the last error).
    Show {
        #[command(flatten)]
        common: Common,
        /// The delivery id, as `list` prints it.
        delivery_id: String,
    },
    /// Send dead letters again, with a fresh retry budget, once the cause is fixed.
    ///
    /// Idempotent: a delivery sent meanwhile is skipped, and replaying twice sends once.
    /// Examples: herald dlq replay --all; herald dlq replay --delivery-id 0195….3f2a
    Replay {
        #[command(flatten)]
        common: Common,
        /// Replay every listed letter.
        #[arg(long, conflicts_with = "delivery_ids")]
        all: bool,
        /// Replay this delivery's letter; repeatable.
        #[arg(long = "delivery-id", required_unless_present = "all")]
        delivery_ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate a configuration file without starting anything; print the effective config.
    Check {
        /// The file to check (defaults are checked when omitted).
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// mimalloc: the pipeline allocates and frees many small buffers across
/// threads, where glibc's allocator spent a third of the CPU in `herald bench`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory mapped instead of returning it to the OS after 10 ms.
///
/// Batches are allocated on one stage's thread and freed on the next one's;
/// with mimalloc's default purging, a quarter of `herald bench`'s CPU went to
/// page faults on memory it had just given back (minor faults fell from ~50k
/// to ~1.5k per 200k notifications with this, and peak RSS did not grow).
/// `mi_option_purge_delay` and `mi_option_arena_eager_commit` are 15 and 4 in
/// both mimalloc v2 and v3 (`mi_option_e` in mimalloc.h); libmimalloc-sys does
/// not export them as constants.
fn tune_allocator() {
    const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is a plain store in mimalloc's option table, valid at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 1);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

fn dlq_action(command: DlqCommand) -> (Common, commands::dlq::Action) {
    use commands::dlq::Action;
    match command {
        DlqCommand::List { common, json } => (common, Action::List { json }),
        DlqCommand::Show { common, delivery_id } => (common, Action::Show { delivery_id }),
        DlqCommand::Replay { common, all, delivery_ids } => (common, Action::Replay { all, delivery_ids }),
    }
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s).ok_or_else(|| format!("unknown scope {s:?}: use send, contacts, templates, analytics or admin"))
}

fn main() -> ExitCode {
    tune_allocator();
    // Before any thread starts, so that every thread inherits it; the bulk threads give it up
    // with their nice value (`io::enter_bulk`).
    let short_slice = io::set_thread_slice(Some(io::SHORT_SLICE));
    let cli = Cli::parse();
    herald::telemetry::init_logging();
    if let Err(error) = short_slice
        && error.kind() != std::io::ErrorKind::Unsupported
    {
        tracing::warn!(%error, "threads keep the kernel's default scheduler slice: the priority lane may wait behind bulk work");
    }
    // Named, so that `[pipeline] realtime_priority` finds them (`io::REALTIME_THREADS`).
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("herald-main").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { common, listen, role } => {
            herald::telemetry::prometheus();
            let (config, dir) = common.load()?;
            let listen = listen.unwrap_or(config.api.listen);
            let app = commands::open_for_command(config, dir, "only one server can use a data directory").await?;
            commands::serve::run(app, listen, role).await
        }
        Command::Send { common, user, template, channels, category, data, idempotency_key, client } => {
            let (config, dir) = common.load()?;
            let data: serde_json::Value = serde_json::from_str(&data).context("--data is not valid JSON")?;
            let mut item = serde_json::json!({
                "user_id": user, "template": template, "channels": channels, "category": category, "data": data,
            });
            if let Some(key) = idempotency_key {
                item["idempotency_key"] = key.into();
            }
            let app = commands::open_for_command(config, dir, "send with POST /v1/notifications").await?;
            let outcome = app.ingestor.submit(&client, vec![Submission::json(item)]).await?;
            match outcome.into_iter().next() {
                Some(ItemOutcome::Accepted(id)) => {
                    println!("{id}");
                    Ok(())
                }
                Some(ItemOutcome::Rejected(_, r)) => bail!("rejected ({}): {}", r.code, r.message),
                None => bail!("no outcome for the notification"),
            }
        }
        Command::Contacts(ContactsCommand::Import { common, file, format }) => {
            let (config, dir) = common.load()?;
            let Some(format) = format.or_else(|| contacts::Format::from_path(&file)) else {
                bail!("cannot tell the format of {} from its name; pass --format csv or --format jsonl", file.display())
            };
            let app = commands::open_for_command(config, dir, "import users with PUT /v1/users/{id}").await?;
            let b = &app.backends;
            let report = contacts::import(b.contacts.as_ref(), b.subscriptions.as_ref(), &file, format).await?;
            eprintln!("{} created, {} updated, {} skipped", report.created, report.updated, report.skipped.len());
            Ok(())
        }
        Command::Templates(TemplatesCommand::Add { common, file }) => {
            let (config, dir) = common.load()?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))?;
            let list = match value {
                serde_json::Value::Array(items) => items,
                one => vec![one],
            };
            let mut templates = Vec::with_capacity(list.len());
            for (i, v) in list.into_iter().enumerate() {
                let t: Template =
                    serde_json::from_value(v).with_context(|| format!("template #{} is invalid", i + 1))?;
                check_template(&t).with_context(|| format!("template {} ({}) does not compile", t.id, t.locale))?;
                templates.push(t);
            }
            let app = commands::open_for_command(config, dir, "add templates with POST /v1/templates").await?;
            for t in &templates {
                let created = app.backends.templates.put_template(t).await?;
                eprintln!("{} {} ({})", if created { "added" } else { "replaced" }, t.id, t.locale);
            }
            Ok(())
        }
        Command::Migrate { common, print } => {
            let (config, _dir) = common.load()?;
            commands::migrate::run(&config, print).await
        }
        Command::Keys(KeysCommand::Create { common, scopes, client }) => {
            let (config, dir) = common.load()?;
            let app = commands::open_for_command(config, dir, "create keys with POST /v1/keys (admin scope)").await?;
            let secret = herald::keys::create(app.backends.keys.as_ref(), &client, &scopes).await?;
            println!("{secret}");
            Ok(())
        }
        Command::Dlq(command) => {
            let (common, action) = dlq_action(command);
            let (config, dir) = common.load()?;
            let app = commands::open_for_command(config, dir, "the dead-letter queue has no HTTP API yet").await?;
            commands::dlq::run(&app, action).await
        }
        Command::Config(ConfigCommand::Check { config }) => {
            let loaded = Config::load_or_default(config.as_deref())?;
            loaded.validate()?;
            print!("{}", toml::to_string_pretty(&loaded).context("cannot print the configuration")?);
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Report { common, report, days, format, show_sql } => {
            use herald::analytics::sql;
            let query = report.sql(days);
            if show_sql {
                println!("{query}");
                return Ok(());
            }
            let (config, dir) = common.load()?;
            let app = commands::open_for_command(
                config,
                dir,
                "post the report's query (--show-sql) to POST /v1/analytics/sql while the server runs",
            )
            .await?;
            let source =
                sql::EventSource { root: &app.events_dir(), log: &app.backends.log, partitions: app.partitions() };
            let answer =
                sql::run(&source, &query, sql::Limits { time: std::time::Duration::from_secs(300), rows: 100_000 })
                    .await?;
            print!("{}", sql::render(&answer, format)?);
            Ok(())
        }
        Command::Sql { common, format, timeout, max_rows, query } => {
            use herald::analytics::sql;
            sql::check_read_only(&query)?;
            let (config, dir) = common.load()?;
            let app =
                commands::open_for_command(config, dir, "use POST /v1/analytics/sql while the server runs").await?;
            let source =
                sql::EventSource { root: &app.events_dir(), log: &app.backends.log, partitions: app.partitions() };
            let answer = sql::run(&source, &query, sql::Limits { time: timeout, rows: max_rows }).await?;
            print!("{}", sql::render(&answer, format)?);
            if answer.truncated {
                eprintln!("(only the first {max_rows} rows; raise --max-rows for more)");
            }
            Ok(())
        }
        Command::Bench { common, notifications, users, clients, timeout_secs, payload_bytes, backlog, json } => {
            herald::telemetry::prometheus();
            let (config, dir) = common.load()?;
            let app = commands::open_for_command(config, dir, "run bench on another data directory").await?;
            let options = bench::BenchOptions {
                notifications,
                users,
                clients,
                timeout: std::time::Duration::from_secs(timeout_secs),
                payload_bytes,
                backlog,
            };
            let report = bench::run(app, options).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} notifications ({} deliveries) in {:.2}s: {:.0} notifications/s, {:.0} deliveries/s",
                    report.notifications,
                    report.deliveries,
                    report.seconds,
                    report.throughput_per_s,
                    report.deliveries_per_s
                );
                if report.backlog > 0 {
                    println!(
                        "backlog of {} appended in {:.2}s before the pipeline started",
                        report.backlog, report.ingest_seconds
                    );
                } else {
                    println!("ingest finished after {:.2}s", report.ingest_seconds);
                }
                if let Some(rss) = report.peak_rss_mib {
                    println!("peak resident memory: {rss:.0} MiB");
                }
                for s in &report.stages {
                    println!(
                        "  {:<10} {:>10} records {:>7} batches {:>10.1} ms busy",
                        s.stage,
                        s.records,
                        s.batches,
                        s.busy.as_secs_f64() * 1e3
                    );
                }
                if let (Some(syncs), Some(writes)) = (report.fsyncs, report.durable_writes) {
                    println!("  {syncs} fsyncs covered {writes} durable writes");
                }
            }
            Ok(())
        }
    }
}
