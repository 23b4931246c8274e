//! `herald-loadtest`: the provider sandbox (and, with issue 4, the load generator).

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_loadtest::sandbox::config::herald_config;
use herald_loadtest::sandbox::{Faults, Sandbox};
use std::net::SocketAddr;
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
        /// Print the herald.toml that sends every configured provider here, and exit.
        #[arg(long)]
        print_config: bool,
    },
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
        Command::Sandbox {
            listen,
            smtp_listen,
            callback_url,
            latency_ms,
            fail_rate,
            accept_then_timeout_rate,
            bad_token_rate,
            hold,
            print_config,
        } => {
            if print_config {
                print!("{}", herald_config(listen, smtp_listen, callback_url.as_deref()));
                return Ok(());
            }
            let faults = Faults { latency_ms, fail_rate, accept_then_timeout_rate, bad_token_rate, hold };
            let sandbox = Sandbox::start_with_smtp(listen, Some(smtp_listen), faults)
                .await
                .with_context(|| format!("cannot listen on {listen} and {smtp_listen}"))?;
            sandbox.state.set_callback_url(callback_url);
            eprintln!(
                "provider sandbox on {} (SMTP on {}); stats at {}/stats",
                sandbox.local_addr,
                smtp_listen,
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
    }
}
