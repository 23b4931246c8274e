//! The provider sandbox: the providers' HTTP APIs, with their request shapes and error bodies,
//! on one loopback address, for tests and load tests in place of the SaaS endpoints.
//!
//! Served (HTTP/1.1, and cleartext HTTP/2 with prior knowledge, on the same port):
//! - APNs: `POST /3/device/{token}`, HTTP/2, ES256 provider tokens ([`apns`]).
//! - Twilio: `POST /2010-04-01/Accounts/{sid}/Messages.json` ([`twilio`]).
//! - SMTP, on its own address when asked for ([`Sandbox::start_with_smtp`], [`smtp`]).
//! - FCM HTTP v1: `POST /v1/projects/{project}/messages:send`, and Google's OAuth2 `POST /token` ([`fcm`]).
//! - Web Push: a push service at `POST /webpush/{subscription_id}` ([`webpush`]).
//! - Vonage: `POST /sms/json` ([`vonage`]).
//! - SendGrid: `POST /v3/mail/send` ([`sendgrid`]).
//! - `GET /stats`: per provider, `requests` (answered or not), `accepted`, `rejected`, and
//!   `duplicates`: messages accepted whose delivery id (header `X-Herald-Delivery-Id`) was
//!   already accepted. Every provider of the issue is listed; those not served yet stay at zero.
//!
//! Faults, drawn per request ([`Faults`]): `fail_rate` refuses before accepting (a mix of 503,
//! 429 with `Retry-After: 1`, and a hold past the client's timeout that is then dropped);
//! `accept_then_timeout_rate` accepts and then never answers (the duplicates the client's retry
//! then causes are counted, not prevented); `bad_token_rate` answers with the provider's
//! bad-address error; `latency_ms` adds a random delay with that mean.
//!
//! Receipts: once [`State::set_callback_url`] names Herald's address, the providers that send
//! delivery receipts post them, as the provider would and signed with the sandbox's test secret
//! or key, to `{callback_url}/v1/receipts/<provider>` after accepting a message, in the
//! background (the API answer never waits for them; a failed post is logged and dropped).

pub mod apns;
pub mod config;
pub mod fcm;
pub mod sendgrid;
pub mod smtp;
pub mod twilio;
pub mod vonage;
pub mod webpush;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use dashmap::DashSet;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Every provider the stats list.
pub const PROVIDERS: [&str; 7] = ["apns", "fcm", "webpush", "twilio", "vonage", "sendgrid", "smtp"];

/// Fault injection, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub latency_ms: u64,
    pub fail_rate: f64,
    pub accept_then_timeout_rate: f64,
    pub bad_token_rate: f64,
    /// How long a simulated timeout holds the request (longer than the client's timeout).
    pub hold: Duration,
}

/// What the sandbox does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Accept,
    /// 5xx before accepting.
    Unavailable,
    /// 429 with `Retry-After: 1`.
    Throttled,
    /// Held past the client's timeout, then dropped unaccepted.
    Timeout,
    /// Accepted, then never answered.
    AcceptThenTimeout,
    /// The provider's bad-address answer.
    BadToken,
}

impl Faults {
    pub fn draw(&self, rng: &mut impl Rng) -> Fate {
        let r: f64 = rng.random();
        if r < self.fail_rate {
            return match rng.random_range(0..3) {
                0 => Fate::Unavailable,
                1 => Fate::Throttled,
                _ => Fate::Timeout,
            };
        }
        if r < self.fail_rate + self.accept_then_timeout_rate {
            return Fate::AcceptThenTimeout;
        }
        if rng.random::<f64>() < self.bad_token_rate {
            return Fate::BadToken;
        }
        Fate::Accept
    }

    /// The added latency: uniform in `[0, 2 × mean]`.
    pub async fn delay(&self) {
        if self.latency_ms > 0 {
            let ms = rand::rng().random_range(0..=2 * self.latency_ms);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// Counters of one provider.
pub struct ProviderStats {
    name: &'static str,
    requests: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    /// Every delivery id accepted so far. Sharded (one lock and one table per shard): one table
    /// of half a million ids paused the sandbox for milliseconds each time it grew, and those
    /// pauses showed up as latency of the notifications arriving then.
    seen: DashSet<String>,
    /// Told of each delivery id accepted for the first time (the load generator's clock).
    observer: Arc<Observer>,
}

/// A function told of every delivery id a provider accepts for the first time, with the
/// provider's name.
pub type OnAccept = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// The slot every provider's stats share for the [`OnAccept`] function.
#[derive(Default)]
pub struct Observer(std::sync::RwLock<Option<OnAccept>>);

impl ProviderStats {
    fn new(name: &'static str, observer: Arc<Observer>) -> ProviderStats {
        ProviderStats {
            name,
            requests: AtomicU64::default(),
            accepted: AtomicU64::default(),
            rejected: AtomicU64::default(),
            duplicates: AtomicU64::default(),
            seen: DashSet::new(),
            observer,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatsView {
    pub requests: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
}

impl ProviderStats {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted message; a delivery id accepted before counts as a duplicate.
    pub fn accepted(&self, delivery_id: Option<&str>) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = delivery_id {
            let fresh = self.seen.insert(id.to_string());
            if !fresh {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            } else if let Some(observe) =
                self.observer.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref()
            {
                observe(self.name, id);
            }
        }
    }

    fn view(&self) -> StatsView {
        StatsView {
            requests: self.requests.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// Shared by every handler.
pub struct State {
    faults: std::sync::RwLock<Faults>,
    pub stats: BTreeMap<&'static str, ProviderStats>,
    observer: Arc<Observer>,
    /// The OAuth2 access tokens issued to FCM clients.
    pub fcm: fcm::Tokens,
    /// APNs' provider tokens and settings.
    pub apns: apns::ApnsState,
    /// Where receipts go (Herald's base URL), if anywhere.
    callback_url: std::sync::RwLock<Option<String>>,
    /// The client that posts receipts.
    callbacks: reqwest::Client,
    /// Receipt posts in flight at most ([`MAX_RECEIPTS_IN_FLIGHT`]); past it a receipt is dropped
    /// (a real provider's webhook queue is not unbounded either).
    receipts_in_flight: Arc<tokio::sync::Semaphore>,
}

/// Receipt posts in flight at most.
pub const MAX_RECEIPTS_IN_FLIGHT: usize = 1024;

impl State {
    /// The faults in force now.
    pub fn faults(&self) -> Faults {
        self.faults.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Changes the faults from now on (a test taking a provider down and bringing it back).
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
    }

    /// From now on, `on_accept` is told of every delivery id a provider accepts for the first
    /// time (`None` stops it). The load generator times end-to-end latency with it.
    pub fn observe_accepted(&self, on_accept: Option<OnAccept>) {
        *self.observer.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = on_accept;
    }

    /// Where receipts are posted from now on: Herald's base URL (`http://host:port`), or `None`
    /// to stop posting them.
    pub fn set_callback_url(&self, url: Option<String>) {
        let url = url.map(|u| u.trim_end_matches('/').to_string());
        *self.callback_url.write().unwrap_or_else(std::sync::PoisonError::into_inner) = url;
    }

    /// The base URL receipts are posted to, if set.
    pub fn callback_url(&self) -> Option<String> {
        self.callback_url.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Posts a receipt to `{callback_url}{path}` in the background, if a callback URL is set;
    /// `build` makes the request from the client and the full URL.
    pub fn post_receipt<F>(&self, provider: &'static str, path: &str, build: F)
    where
        F: FnOnce(&reqwest::Client, String) -> reqwest::RequestBuilder,
    {
        let Some(base) = self.callback_url() else { return };
        self.post_receipt_to(provider, format!("{base}{path}"), build);
    }

    /// Posts a receipt to `url` in the background (a URL the message named, as Twilio's
    /// `StatusCallback`).
    pub fn post_receipt_to<F>(&self, provider: &'static str, url: String, build: F)
    where
        F: FnOnce(&reqwest::Client, String) -> reqwest::RequestBuilder,
    {
        let Ok(permit) = Arc::clone(&self.receipts_in_flight).try_acquire_owned() else {
            tracing::warn!(provider, "receipt dropped: too many in flight");
            return;
        };
        let request = build(&self.callbacks, url);
        tokio::spawn(async move {
            let _permit = permit;
            match request.send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => tracing::warn!(provider, status = %response.status(), "receipt refused"),
                Err(error) => tracing::warn!(provider, %error, "receipt not posted"),
            }
        });
    }

    pub fn stats(&self, provider: &str) -> &ProviderStats {
        // Every provider of PROVIDERS is in the map; the handlers name only those.
        &self.stats[provider]
    }

    pub fn view(&self) -> BTreeMap<&'static str, StatsView> {
        self.stats.iter().map(|(name, s)| (*name, s.view())).collect()
    }
}

/// A sandbox serving on `local_addr` (and SMTP on `smtp_addr`) until dropped or `shutdown`.
pub struct Sandbox {
    pub local_addr: SocketAddr,
    /// The SMTP server's address, when one was asked for.
    pub smtp_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    smtp: Option<smtp::SmtpServer>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Sandbox {
    /// Binds `listen` (port 0 for any free port) and serves the HTTP providers in the background.
    pub async fn start(listen: SocketAddr, faults: Faults) -> std::io::Result<Sandbox> {
        Sandbox::start_with_smtp(listen, None, faults).await
    }

    /// As [`Sandbox::start`], and with `smtp` an SMTP server on that address too (port 0 for any
    /// free port), sharing the faults and the stats (under `"smtp"`).
    pub async fn start_with_smtp(
        listen: SocketAddr,
        smtp: Option<SocketAddr>,
        faults: Faults,
    ) -> std::io::Result<Sandbox> {
        let observer = Arc::new(Observer::default());
        let state = Arc::new(State {
            faults: std::sync::RwLock::new(faults),
            stats: PROVIDERS.iter().map(|p| (*p, ProviderStats::new(p, Arc::clone(&observer)))).collect(),
            observer,
            fcm: fcm::Tokens::default(),
            apns: apns::ApnsState::default(),
            callback_url: std::sync::RwLock::new(None),
            callbacks: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(std::io::Error::other)?,
            receipts_in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_RECEIPTS_IN_FLIGHT)),
        });
        let app = Router::new()
            .route("/stats", get(|s: axum::extract::State<Arc<State>>| async move { axum::Json(s.view()) }))
            .merge(apns::routes())
            .merge(twilio::routes())
            .merge(fcm::routes())
            .merge(webpush::routes())
            .merge(vonage::routes())
            .merge(sendgrid::routes())
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        // Responses on one HTTP/2 connection are many small writes; with Nagle's algorithm each
        // would wait for the client's delayed ACK (tens of milliseconds).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await
        });
        tracing::info!(%local_addr, "provider sandbox listening");
        let smtp = match smtp {
            Some(listen) => match smtp::SmtpServer::start(listen, Arc::clone(&state)).await {
                Ok(server) => Some(server),
                Err(error) => {
                    task.abort();
                    return Err(error);
                }
            },
            None => None,
        };
        let smtp_addr = smtp.as_ref().map(|server| server.local_addr);
        Ok(Sandbox { local_addr, smtp_addr, state, smtp, stop, task })
    }

    /// The messages the SMTP server accepted lately (none without an SMTP server).
    pub fn smtp_inbox(&self) -> Vec<smtp::ReceivedMail> {
        self.smtp.as_ref().map(|server| server.inbox.messages()).unwrap_or_default()
    }

    /// The connector URL of the SMTP server: `smtp://host:port` (cleartext, no authentication).
    pub fn smtp_url(&self) -> Option<String> {
        self.smtp_addr.map(|addr| format!("smtp://{addr}"))
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting and waits for the servers to end (held requests and SMTP connections are
    /// cut).
    pub async fn shutdown(self) {
        if let Some(smtp) = self.smtp {
            smtp.shutdown().await;
        }
        self.stop.cancel();
        self.task.abort();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn faults_are_drawn_at_their_rates() {
        let faults = Faults { fail_rate: 0.3, accept_then_timeout_rate: 0.1, bad_token_rate: 0.5, ..Faults::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for _ in 0..100_000 {
            let fate = faults.draw(&mut rng);
            let key = match fate {
                Fate::Unavailable | Fate::Throttled | Fate::Timeout => "fail",
                Fate::AcceptThenTimeout => "accept_then_timeout",
                Fate::BadToken => "bad",
                Fate::Accept => "accept",
            };
            *counts.entry(key).or_default() += 1;
        }
        let near = |n: u32, expected: f64| ((n as f64 / 100_000.0) - expected).abs() < 0.01;
        assert!(near(counts["fail"], 0.3), "{counts:?}");
        assert!(near(counts["accept_then_timeout"], 0.1), "{counts:?}");
        assert!(near(counts["bad"], 0.3), "{counts:?}");
        assert!(near(counts["accept"], 0.3), "{counts:?}");
    }
}
