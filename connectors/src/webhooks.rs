//! The HTTP side of status webhooks: POSTs one batch ([`herald_schemas::webhook::WebhookBatch`])
//! to a client's URL, signed for that attempt, and says how it went.
//!
//! # Promises
//! - Every attempt carries `Herald-Webhook-Id`, `Herald-Signature` (recomputed with the attempt's
//!   time) and `Content-Type: application/json`, and the batch's body byte for byte.
//! - Only a 2xx is a success. Redirects are not followed (a POST turned into a GET would "succeed"
//!   without the receiver seeing the batch): a 3xx is a failure like any other status.
//! - The exchange runs on the provider runtime ([`crate::channels::io`]), so a stall of the
//!   pipeline's runtime cannot turn a delivered batch into a timeout.
//! - Errors never carry the URL (a receiver's URL can itself be a credential), nor the secret.
//! - Clients choose the URL, so by default ([`Destinations::Public`]) a request goes only to a
//!   public address: an IP literal is checked before connecting, and a name is resolved by
//!   Herald's own resolver, which drops every address that is not public (loopback, private,
//!   link-local such as a cloud's metadata service at 169.254.169.254, unique-local, shared,
//!   multicast, reserved). The check is on the addresses actually connected to, so a name that
//!   changes its answer after registration (DNS rebinding) is caught too. A name with no public
//!   address fails like one that does not resolve ([`WebhookError::Connect`]).

use crate::channels::io;
use herald_schemas::webhook::{ID_HEADER, SIGNATURE_HEADER, signature_header};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why an attempt failed. Every failure is retried (with backoff) until the batch is too old:
/// a receiver that answers 4xx today may be fixed tomorrow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The receiver's (or the network's): no answer within the request timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The receiver's: nothing listens, or the name does not resolve, or TLS failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The receiver's: it answered, but not 2xx. `retry_after` from a 429 or 503.
    #[error("HTTP {status}")]
    Status { status: u16, retry_after: Option<Duration> },
    /// The network's: the connection broke during the exchange.
    #[error("request failed: {0}")]
    Transport(String),
    /// Ours: the client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl WebhookError {
    /// A bounded label for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            WebhookError::Timeout(_) => "timeout",
            WebhookError::Connect(_) => "connect",
            WebhookError::Status { status: 429, .. } => "http_429",
            WebhookError::Status { status: 300..=399, .. } => "http_3xx",
            WebhookError::Status { status: 400..=499, .. } => "http_4xx",
            WebhookError::Status { .. } => "http_5xx",
            WebhookError::Transport(_) => "transport",
            WebhookError::Client(_) => "client",
        }
    }

    /// The wait the receiver asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            WebhookError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One POST of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub url: &'a str,
    pub secret: &'a str,
    pub batch_id: &'a str,
    pub body: &'a [u8],
    /// The attempt's time (Unix seconds): the signature's `t`.
    pub unix_seconds: u64,
}

/// Which addresses webhook requests may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Destinations {
    /// Public addresses only ([`is_public`]): the default, as clients choose the URLs.
    #[default]
    Public,
    /// Any address, private networks and loopback included: for receivers inside the operator's
    /// own network (and tests).
    Any,
}

impl Destinations {
    /// Whether a request may go to `ip`.
    pub fn allows(self, ip: IpAddr) -> bool {
        self == Destinations::Any || is_public(ip)
    }

    /// Why `url`'s host may not be a webhook's destination, when it is an address literal (or
    /// `localhost`) this policy refuses; `None` otherwise. Names are checked when they are
    /// resolved, at each connection.
    pub fn host_problem(self, url: &reqwest::Url) -> Option<String> {
        // The URL parser has normalized the host: IPv4 in dotted decimal, IPv6 in brackets.
        let host = url.host_str()?;
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let refused = match literal.parse::<IpAddr>() {
            Ok(ip) => !self.allows(ip),
            Err(_) => {
                let name = host.to_ascii_lowercase();
                self == Destinations::Public && (name == "localhost" || name.ends_with(".localhost"))
            }
        };
        refused.then(|| {
            "url's host is not a public address (loopback, private, link-local or reserved); \
             webhooks go to public addresses only unless webhooks.allow_private_addresses is set"
                .to_string()
        })
    }
}

/// Whether `ip` is a public unicast address: not loopback, private (RFC 1918), link-local,
/// shared (CGNAT, RFC 6598), unspecified, broadcast, multicast, documentation, benchmarking or
/// reserved, and for IPv6 not unique-local, link-local, site-local, documentation or NAT64; an
/// IPv4-mapped IPv6 address is judged as its IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside some networks)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x0064 && segments[1] == 0xff9b) // NAT64: reaches IPv4 addresses
        || segments[..6] == [0; 6]) // IPv4-compatible (deprecated)
}

/// The resolver of [`Destinations::Public`]: the system's (`getaddrinfo`, on the blocking pool),
/// keeping only public addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let reason = if all.is_empty() { "no address" } else { "no public address" };
                return Err(format!("the receiver's name has {reason} (webhooks go to public addresses only)").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Sends batches; one per process, shared by every client's sender (one connection pool).
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    timeout: Duration,
    destinations: Destinations,
}

impl WebhookClient {
    pub fn new(timeout: Duration, destinations: Destinations) -> Result<WebhookClient, WebhookError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if destinations == Destinations::Public {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        let http = builder.build().map_err(|e| WebhookError::Client(e.without_url().to_string()))?;
        Ok(WebhookClient { http, timeout, destinations })
    }

    /// POSTs the batch once; `Ok` with the 2xx status.
    pub async fn send(&self, attempt: Attempt<'_>) -> Result<u16, WebhookError> {
        // An address literal is connected to without a resolver: checked here (the registration
        // was checked too, but the policy may have changed since).
        let url = reqwest::Url::parse(attempt.url).map_err(|e| WebhookError::Connect(format!("invalid url: {e}")))?;
        if let Some(problem) = self.destinations.host_problem(&url) {
            return Err(WebhookError::Connect(problem));
        }
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
            .header(ID_HEADER, attempt.batch_id)
            .header(SIGNATURE_HEADER, signature_header(attempt.secret, attempt.unix_seconds, attempt.body))
            .body(attempt.body.to_vec());
        let timeout = self.timeout;
        io::run(async move {
            let response = request.send().await.map_err(|e| classify(&e, timeout))?;
            let status = response.status().as_u16();
            let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(seconds);
            // Read the answer so the connection goes back to the pool; its content is not used.
            let _ = response.bytes().await;
            if (200..300).contains(&status) { Ok(status) } else { Err(WebhookError::Status { status, retry_after }) }
        })
        .await
    }
}

fn classify(error: &reqwest::Error, timeout: Duration) -> WebhookError {
    if error.is_timeout() {
        return WebhookError::Timeout(timeout);
    }
    let text = error_chain(error);
    if error.is_connect() || error.is_builder() { WebhookError::Connect(text) } else { WebhookError::Transport(text) }
}

/// The error and its causes, without the URL.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(cause) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.is_empty() { "no detail".to_string() } else { text }
}

/// `Retry-After` in seconds (an HTTP date is ignored: the backoff applies).
fn seconds(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_schemas::webhook::verify_signature;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-request-at-a-time HTTP/1.1 server answering each request with the next of `answers`
    /// and keeping what it read.
    async fn server(answers: Vec<&'static str>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = seen.clone();
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length || n == 0 {
                            break;
                        }
                    } else if n == 0 {
                        break;
                    }
                }
                store.lock().unwrap().push(String::from_utf8_lossy(&request).to_string());
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        (url, seen)
    }

    fn attempt<'a>(url: &'a str, body: &'a [u8]) -> Attempt<'a> {
        Attempt { url, secret: "whsec_k", batch_id: "whb_1", body, unix_seconds: 1_700_000_000 }
    }

    #[tokio::test]
    async fn a_2xx_is_a_success_and_the_request_is_signed() {
        let (url, seen) = server(vec!["HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"]).await;
        let client = WebhookClient::new(Duration::from_secs(5), Destinations::Any).unwrap();
        let body = br#"{"id":"whb_1","client_id":"c","events":[]}"#;
        assert_eq!(client.send(attempt(&url, body)).await, Ok(204));
        let request = seen.lock().unwrap()[0].clone();
        let header = |name: &str| {
            request.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("herald-webhook-id").as_deref(), Some("whb_1"));
        let signature = header("herald-signature").unwrap();
        assert!(request.ends_with(std::str::from_utf8(body).unwrap()));
        assert_eq!(verify_signature("whsec_k", &signature, body, 1_700_000_000, 300), Ok(()));
    }

    #[tokio::test]
    async fn refusals_redirects_timeouts_and_closed_ports_are_classified() {
        // The server closes each connection after its answer, and says so: a connection kept in
        // the client's pool could otherwise be reused before its close is seen (a flake).
        let (url, _) = server(vec![
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ])
        .await;
        let client = WebhookClient::new(Duration::from_secs(5), Destinations::Any).unwrap();
        let refused = client.send(attempt(&url, b"{}")).await.unwrap_err();
        assert_eq!(refused, WebhookError::Status { status: 503, retry_after: Some(Duration::from_secs(7)) });
        assert_eq!((refused.class(), refused.retry_after()), ("http_5xx", Some(Duration::from_secs(7))));
        assert_eq!(client.send(attempt(&url, b"{}")).await.unwrap_err().class(), "http_3xx");
        assert_eq!(client.send(attempt(&url, b"{}")).await.unwrap_err().class(), "http_4xx");

        // A listener that never answers: the request times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("http://{}/", silent.local_addr().unwrap());
        let quick = WebhookClient::new(Duration::from_millis(200), Destinations::Any).unwrap();
        assert_eq!(quick.send(attempt(&silent_url, b"{}")).await.unwrap_err().class(), "timeout");

        // Nothing listens: a connect error, which names no URL.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let closed_url = format!("http://{closed}/secret-path-token");
        let error = client.send(attempt(&closed_url, b"{}")).await.unwrap_err();
        assert_eq!(error.class(), "connect", "{error}");
        assert!(!error.to_string().contains("secret-path-token"), "{error}");
        drop(silent);
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        let public = ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.215.14"];
        let not_public = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254", // a cloud's metadata service
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fec0::1",
            "fd00::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::7f00:1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
        ];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        for ip in not_public {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
    }

    #[test]
    fn address_literals_and_localhost_are_refused_unless_any_destination_is_allowed() {
        let problem = |url: &str, d: Destinations| d.host_problem(&reqwest::Url::parse(url).unwrap());
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://0x7f.1/hook", // normalized to 127.0.0.1 by the parser
            "http://[::1]/hook",
            "http://[::ffff:169.254.169.254]/latest",
            "http://169.254.169.254/latest/meta-data",
            "https://LOCALHOST/hook",
            "https://api.localhost/hook",
        ] {
            assert!(problem(url, Destinations::Public).is_some(), "{url} refused");
            assert_eq!(problem(url, Destinations::Any), None, "{url} allowed with Any");
        }
        for url in ["https://hooks.example.com/herald", "https://93.184.215.14/hook", "https://[2606:4700::1111]/h"] {
            assert_eq!(problem(url, Destinations::Public), None, "{url} allowed");
        }
    }

    #[tokio::test]
    async fn a_private_receiver_is_never_contacted_by_default() {
        let (url, seen) = server(vec!["HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"]).await;
        let client = WebhookClient::new(Duration::from_secs(5), Destinations::Public).unwrap();
        let body = br#"{"id":"whb_1","client_id":"c","events":[]}"#;
        assert!(matches!(client.send(attempt(&url, body)).await, Err(WebhookError::Connect(_))));
        // A name that resolves to loopback only: refused by the resolver, at connection time.
        let named = url.replace("127.0.0.1", "localhost");
        let by_name = reqwest::dns::Resolve::resolve(&PublicOnly, "localhost".parse().unwrap()).await;
        assert!(by_name.is_err(), "localhost has no public address");
        assert!(matches!(client.send(attempt(&named, body)).await, Err(WebhookError::Connect(_))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(seen.lock().unwrap().is_empty(), "the receiver saw no request");
        // The same receiver, allowed.
        let any = WebhookClient::new(Duration::from_secs(5), Destinations::Any).unwrap();
        assert_eq!(any.send(attempt(&url, body)).await, Ok(204));
    }
}
