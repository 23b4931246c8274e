//! `herald-loadtest`: the provider sandbox, and the open-loop load generator.

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_loadtest::run::find_max::{FindMaxOptions, find_max};
use herald_loadtest::run::priority::{PriorityOptions, priority};
use herald_loadtest::run::{Mix, RunOptions, plot, run, warm_up};
use herald_loadtest::sandbox::config::herald_config;
use herald_loadtest::sandbox::{Faults, Sandbox};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Herald's load tools", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the providers' APIs with injected faults: APNs, FCM (and its OAuth2 token
    /// endpoint), Web Push, Twilio, Vonage and SendGrid on one address, and SMTP on another.
    ///
    /// Point Herald at it with the configuration `--print-config` prints (same addresses):
    ///
    ///   herald-loadtest sandbox --listen 127.0.0.1:9090 --smtp-listen 127.0.0.1:2525 \
    ///       --callback-url http://127.0.0.1:8080 --print-config > herald.toml
    ///   herald-loadtest sandbox --listen 127.0.0.1:9090 --smtp-listen 127.0.0.1:2525 \
    ///       --callback-url http://127.0.0.1:8080 --fail-rate 0.3 &
    ///   herald serve --config herald.toml
    ///
    /// `GET /stats` shows, per provider, requests, accepted, rejected, and duplicates (messages
    /// accepted again with a delivery id already accepted, read from the X-Herald-Delivery-Id
    /// header). With --callback-url, delivery receipts (Twilio status callbacks, Vonage DLRs,
    /// SendGrid events) are posted to Herald, signed as the providers sign them. Stops on
    /// Ctrl-C or SIGTERM and prints the stats.
    Sandbox {
        #[command(flatten)]
        sandbox: SandboxArgs,
        /// Print the herald.toml that sends every configured provider here, and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Load a running Herald open loop and measure API and end-to-end latency.
    ///
    /// Hosts the provider sandbox in process on --listen and --smtp-listen (the same flags as
    /// `sandbox`), so start Herald with the `sandbox --print-config` output for those addresses:
    ///
    ///   herald-loadtest sandbox --print-config > herald.toml
    ///   herald serve --config herald.toml &
    ///   herald-loadtest run --target http://127.0.0.1:8080 --key $KEY --rate 2000 --duration 30s
    ///
    /// Notifications are sent on schedule (batch k at start + k × batch / rate) whether or not
    /// earlier requests have returned, and latency counts from that intended time, so a stall
    /// shows as latency. End to end is from the intended send until the provider received the
    /// notification's last delivery. Prints a report (text, or one JSON object with --json, the
    /// last thing on stdout) and writes a latency plot (percentile spectrum, SVG).
    Run {
        #[command(flatten)]
        load: LoadArgs,
        /// Notifications per second.
        #[arg(long)]
        rate: f64,
        /// How long to send, like `20s` or `2m`.
        #[arg(long, default_value = "20s", value_parser = humantime_duration)]
        duration: Duration,
    },
    /// Check that transactional traffic stays ahead of a marketing backlog.
    ///
    /// Phase 1 sends a transactional probe alone; phase 2 sends the same probe beside a flood of
    /// --flood-category at --flood-rate (set it above what `find-max` reports, so a backlog builds).
    /// Passes when the probe's end-to-end p99 under the flood is within --max-ratio times its
    /// unloaded p99 and every probe notification arrived. Herald must not cap the flood's category
    /// (`[throttle] caps = []`), or the flood stops in the throttle stage. On a small machine, pin
    /// Herald and this process to different cores, or the sandbox taking the flood's deliveries
    /// competes with Herald for CPU (`taskset -c 1 herald serve …` and):
    ///
    ///   taskset -c 0 herald-loadtest priority --key $KEY --probe-rate 50 --flood-rate 15000 --phase 20s --json
    Priority {
        #[command(flatten)]
        load: LoadArgs,
        /// Transactional notifications per second, in both phases.
        #[arg(long, default_value_t = 50.0)]
        probe_rate: f64,
        /// Probe notifications per HTTP request (--batch sets the flood's). One, as one-time
        /// passwords are sent: each its own request, so each is a latency sample of its own. With
        /// a batch of 50 at 50/s a phase has only 20 requests, and its p99 is its slowest request.
        #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        probe_batch: usize,
        /// Notifications per second of the flood in phase 2.
        #[arg(long)]
        flood_rate: f64,
        /// The flood's category (not transactional).
        #[arg(long, default_value = "marketing")]
        flood_category: String,
        /// Each phase's length.
        #[arg(long, default_value = "20s", value_parser = humantime_duration)]
        phase: Duration,
        /// The loaded probe p99 may be at most this many times the unloaded one.
        #[arg(long, default_value_t = 2.0)]
        max_ratio: f64,
    },
    /// Find the highest rate Herald sustains: steps of rising rate until one fails.
    ///
    /// Each step is a whole `run` (same flags, but the rate): it passes when every notification
    /// sent was received within --drain, nothing failed, and the end-to-end p99 is within
    /// --slo-p99-ms. The rate grows by --growth each step; after the first failure one step at
    /// the midpoint narrows the answer. Stops by itself within about --max-time.
    ///
    ///   herald-loadtest find-max --target http://127.0.0.1:8080 --key $KEY --json
    FindMax {
        #[command(flatten)]
        load: LoadArgs,
        /// The first step's rate, notifications per second.
        #[arg(long, default_value_t = 1000.0)]
        start_rate: f64,
        /// Each step's length.
        #[arg(long, default_value = "15s", value_parser = humantime_duration)]
        step: Duration,
        /// The next step's rate is this times the last one's.
        #[arg(long, default_value_t = 1.5)]
        growth: f64,
        /// The end-to-end p99 a step must stay within, in milliseconds.
        #[arg(long, default_value_t = 100.0)]
        slo_p99_ms: f64,
        /// Stop starting steps after this long.
        #[arg(long, default_value = "5m", value_parser = humantime_duration)]
        max_time: Duration,
    },
}

impl LoadArgs {
    fn options(&self, rate: f64, duration: Duration) -> RunOptions {
        RunOptions {
            target: self.target.clone(),
            key: self.key.clone(),
            rate,
            duration,
            mix: self.mix.clone(),
            users: self.users,
            batch: self.batch,
            drain: self.drain,
            progress: true,
            set_up: true,
            category: "transactional".into(),
        }
    }
}

/// Where the sandbox serves, and the faults it injects.
#[derive(clap::Args, Debug, Clone)]
struct SandboxArgs {
    /// Address to serve HTTP/1.1 and cleartext HTTP/2 on (loopback unless you mean otherwise).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Address of the SMTP server (cleartext, no authentication).
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp_listen: SocketAddr,
    /// Herald's base URL as the sandbox reaches it (`http://127.0.0.1:8080`): where delivery
    /// receipts are posted, and what --print-config points receipts and unsubscribe links at.
    #[arg(long, value_parser = http_url)]
    callback_url: Option<String>,
    /// Mean added latency per request, in milliseconds (uniform in [0, 2 × mean]).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of requests refused before acceptance: 503, 429 with Retry-After, or held
    /// past the client's timeout and dropped.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    fail_rate: f64,
    /// Fraction of requests accepted and then never answered (the duplicates a retry then
    /// causes are counted, not prevented).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    accept_then_timeout_rate: f64,
    /// Fraction of requests answered with the provider's bad-address error.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    bad_token_rate: f64,
    /// How long a simulated timeout holds a request; keep it above Herald's provider timeout.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    hold: Duration,
}

impl SandboxArgs {
    fn faults(&self) -> Faults {
        Faults {
            latency_ms: self.latency_ms,
            fail_rate: self.fail_rate,
            accept_then_timeout_rate: self.accept_then_timeout_rate,
            bad_token_rate: self.bad_token_rate,
            hold: self.hold,
        }
    }

    async fn start(&self) -> anyhow::Result<Sandbox> {
        let sandbox = Sandbox::start_with_smtp(self.listen, Some(self.smtp_listen), self.faults())
            .await
            .with_context(|| format!("cannot listen on {} and {}", self.listen, self.smtp_listen))?;
        sandbox.state.set_callback_url(self.callback_url.clone());
        Ok(sandbox)
    }
}

/// What `run` shares with `find-max`: the target, the load's shape, the report.
#[derive(clap::Args, Debug, Clone)]
struct LoadArgs {
    /// Herald's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = http_url)]
    target: String,
    /// An API key with the send, contacts and templates scopes (an admin key has them).
    #[arg(long, env = "HERALD_KEY", hide_env_values = true)]
    key: String,
    /// The channel mix as weights; the default follows the daily volumes (10M push, 1M SMS,
    /// 5M email).
    #[arg(long, default_value = "push=10,sms=1,email=5")]
    mix: Mix,
    /// Users lt-0… to create (each with an iOS and an Android device, an email and a phone) and
    /// send to.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Notifications per HTTP request.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// How long to wait for the last deliveries after the last send.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    drain: Duration,
    /// Load at the (first) rate for this long before measuring, and leave it out of the report:
    /// connections, provider tokens, caches and pools are set up in it, as in production. 0s
    /// measures from the first request.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    warm_up: Duration,
    /// Print one JSON object (the last thing on stdout) instead of the text report.
    #[arg(long)]
    json: bool,
    /// Where to write the latency plot (SVG) [default: herald-loadtest-<run id>.svg].
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

fn rate(s: &str) -> Result<f64, String> {
    let value: f64 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&value) { Ok(value) } else { Err(format!("{value} is not a fraction in [0, 1]")) }
}

fn http_url(s: &str) -> Result<String, String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err(format!("{s:?} is not an http:// or https:// URL"))
    }
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s)
        .map_err(|e| format!("{s:?}: {e} (use a duration like 30s or 500ms)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    match Cli::parse().command {
        Command::Sandbox { sandbox, print_config } => {
            if print_config {
                print!("{}", herald_config(sandbox.listen, sandbox.smtp_listen, sandbox.callback_url.as_deref()));
                return Ok(());
            }
            let sandbox = sandbox.start().await?;
            eprintln!(
                "provider sandbox on {} (SMTP on {}); stats at {}/stats",
                sandbox.local_addr,
                sandbox.smtp_addr.map(|a| a.to_string()).unwrap_or_default(),
                sandbox.base_url()
            );
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let stats = serde_json::to_string(&sandbox.state.view())?;
            sandbox.shutdown().await;
            println!("{stats}");
            Ok(())
        }
        Command::FindMax { load, start_rate, step, growth, slo_p99_ms, max_time } => {
            let sandbox = load.sandbox.start().await?;
            let mut options = FindMaxOptions { load: load.options(start_rate, step), growth, slo_p99_ms, max_time };
            warm_up(&mut options.load, load.warm_up, &sandbox).await.context("warm-up failed")?;
            let report = find_max(&options, &sandbox).await?;
            sandbox.shutdown().await;
            if load.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        Command::Priority { load, probe_rate, probe_batch, flood_rate, flood_category, phase, max_ratio } => {
            let sandbox = load.sandbox.start().await?;
            let mut options = PriorityOptions {
                load: load.options(probe_rate, phase),
                probe_rate,
                probe_batch,
                flood_rate,
                flood_category,
                phase,
                max_ratio,
            };
            warm_up(&mut options.load, load.warm_up, &sandbox).await.context("warm-up failed")?;
            let report = priority(&options, &sandbox).await?;
            sandbox.shutdown().await;
            if load.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.passed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Run { load, rate, duration } => {
            let sandbox = load.sandbox.start().await?;
            let mut options = load.options(rate, duration);
            warm_up(&mut options, load.warm_up, &sandbox).await.context("warm-up failed")?;
            let mut report = run(&options, &sandbox).await?;
            sandbox.shutdown().await;
            let path =
                load.plot.clone().unwrap_or_else(|| PathBuf::from(format!("herald-loadtest-{}.svg", report.run_id)));
            let title = format!("Herald at {rate}/s: latency by percentile (run {})", report.run_id);
            let series = [("API ack", &report.ack_histogram), ("end to end", &report.e2e_histogram)];
            match plot::write_svg(&path, &title, &series) {
                Ok(()) => report.plot = Some(path.display().to_string()),
                Err(error) => eprintln!("cannot write the plot {}: {error}", path.display()),
            }
            if load.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
    }
}
