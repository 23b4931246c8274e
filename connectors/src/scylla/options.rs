//! Where the cluster is and how to use it: [`ScyllaOptions`], and its URL form
//! `scylla://host[:port][,host[:port]…][/keyspace][?name=value&…]`.
//!
//! Every part of a statement's text that comes from the options is a validated type
//! ([`Keyspace`]) or rendered as a CQL literal ([`ReplicationSpec::to_cql`]), so no option can change
//! what a statement does. Credentials never come from the URL: a URL is printed and logged.

use crate::secret::Secret;
use ::scylla::statement::{Consistency, SerialConsistency};
use humantime_serde::re::humantime;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::num::NonZeroU32;
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 9042;
pub const DEFAULT_KEYSPACE: &str = "herald";
/// The cluster name under which workers announce themselves ([`ScyllaOptions::cluster`]).
pub const DEFAULT_CLUSTER: &str = "herald";
pub const DEFAULT_PAGE_SIZE: NonZeroU32 = NonZeroU32::new(1_000).unwrap();
/// The longest TTL CQL accepts (20 years), in seconds.
pub const MAX_TTL_SECS: u64 = 630_720_000;

/// Why options (or a `scylla://` URL) cannot be used; each names the part at fault (the operator's).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScyllaOptionsError {
    #[error("{0:?} is not a ScyllaDB URL: write scylla://host[:port][,host[:port]…][/keyspace][?replication=3]")]
    Scheme(String),
    #[error("the ScyllaDB URL names no node: write scylla://host[:port][,host[:port]…][/keyspace]")]
    NoNodes,
    #[error("ScyllaDB node {node:?}: {reason}")]
    Node { node: String, reason: &'static str },
    #[error(
        "ScyllaDB keyspace {0:?}: use a-z, 0-9 and '_', starting with a letter, at most 48 characters \
         (an unquoted CQL name)"
    )]
    Keyspace(String),
    #[error("the ScyllaDB URL carries credentials: a URL is logged, so set user and password in the configuration")]
    Credentials,
    #[error("the ScyllaDB URL has a path beyond the keyspace: {0:?}")]
    Path(String),
    #[error("unknown ScyllaDB URL parameter {0:?} (known: {known})", known = PARAMETERS.join(", "))]
    UnknownParameter(String),
    #[error("ScyllaDB URL parameter {0:?} is given twice")]
    RepeatedParameter(String),
    #[error("ScyllaDB option {name} = {value:?}: {reason}")]
    Invalid { name: &'static str, value: String, reason: String },
}

/// The URL's query parameters, in the order the docs list them.
const PARAMETERS: [&str; 7] =
    ["replication", "consistency", "request_timeout", "page_size", "cluster", "timeline_ttl", "tablets"];

/// A keyspace name: an unquoted CQL identifier, so it can be written into statement text as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace(String);

impl Keyspace {
    pub fn new(name: &str) -> Result<Self, ScyllaOptionsError> {
        let mut chars = name.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if starts_with_letter && rest_ok && name.len() <= 48 {
            Ok(Self(name.to_string()))
        } else {
            Err(ScyllaOptionsError::Keyspace(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the keyspace is replicated (used only when `herald migrate` creates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationSpec {
    /// One factor for the whole cluster: a single data center.
    Simple { factor: NonZeroU32 },
    /// A factor per data center (by the names the cluster's snitch reports).
    NetworkTopology { factors: BTreeMap<String, NonZeroU32> },
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        ReplicationSpec::Simple { factor: NonZeroU32::MIN }
    }
}

impl ReplicationSpec {
    /// `3` (SimpleStrategy) or `dc1:3,dc2:2` (NetworkTopologyStrategy).
    pub fn parse(value: &str) -> Result<Self, ScyllaOptionsError> {
        let invalid = |reason: &str| ScyllaOptionsError::Invalid {
            name: "replication",
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let factor = |text: &str| {
            text.trim().parse::<NonZeroU32>().map_err(|_| invalid("a replication factor is a whole number from 1"))
        };
        if !value.contains(':') {
            return Ok(ReplicationSpec::Simple { factor: factor(value)? });
        }
        let mut factors = BTreeMap::new();
        for part in value.split(',') {
            let (dc, n) = part.split_once(':').ok_or_else(|| invalid("write dc1:3,dc2:3 (every part dc:factor)"))?;
            let dc = dc.trim();
            if dc.is_empty() {
                return Err(invalid("a data center name is empty"));
            }
            if factors.insert(dc.to_string(), factor(n)?).is_some() {
                return Err(invalid("a data center is named twice"));
            }
        }
        Ok(ReplicationSpec::NetworkTopology { factors })
    }

    /// The map of `CREATE KEYSPACE … WITH replication = {…}`. Data center names are written as CQL
    /// string literals (quotes doubled), so any name is safe.
    pub fn to_cql(&self) -> String {
        match self {
            ReplicationSpec::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            ReplicationSpec::NetworkTopology { factors } => {
                let mut out = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, factor) in factors {
                    out.push_str(&format!(", '{}': {factor}", dc.replace('\'', "''")));
                }
                out.push('}');
                out
            }
        }
    }
}

/// Whether the keyspace is created with ScyllaDB's tablets. Herald's dedup claims, leases and
/// contact updates are lightweight transactions, which ScyllaDB does not support in a keyspace with
/// tablets (up to at least 2025.3), while recent releases create keyspaces with tablets by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tablets {
    /// `AND tablets = {'enabled': false}` (ScyllaDB 6.0 and later; vnodes, LWT work).
    #[default]
    Disabled,
    /// No tablets clause: the server's default (ScyllaDB before 6.0 rejects the clause, as does
    /// Cassandra; or a release whose LWT works with tablets).
    ServerDefault,
}

/// Everything [`super::ScyllaState::connect`] and [`super::migrate`] need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaOptions {
    /// Contact points as `host:port`; the driver learns the rest of the cluster from them.
    pub nodes: Vec<String>,
    /// Holds every Herald table.
    pub keyspace: Keyspace,
    /// Used when the keyspace is created; an existing keyspace keeps its own.
    pub replication: ReplicationSpec,
    /// Used when the keyspace is created (see [`Tablets`]).
    pub tablets: Tablets,
    /// Client-side deadline of one request (all its retries included); a timed-out write may still
    /// have been applied, which every caller already copes with (a batch is replayed).
    pub request_timeout: Duration,
    /// Rows per page when reading a partition (a template's variants, a timeline).
    pub page_size: NonZeroU32,
    /// Of every read and write. Lightweight transactions use the matching serial consistency
    /// (`LOCAL_SERIAL` for a `LOCAL_*` level, `SERIAL` otherwise).
    pub consistency: Consistency,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Workers of one Herald deployment share the partitions under this name (live workers and
    /// leases are kept per cluster name), so two deployments can share a keyspace.
    pub cluster: String,
    /// How long a notification's timeline is kept (from its last event's write).
    pub timeline_ttl: Duration,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        Self {
            nodes: vec![format!("127.0.0.1:{DEFAULT_PORT}")],
            keyspace: Keyspace(DEFAULT_KEYSPACE.to_string()),
            replication: ReplicationSpec::default(),
            tablets: Tablets::default(),
            request_timeout: Duration::from_secs(5),
            page_size: DEFAULT_PAGE_SIZE,
            consistency: Consistency::LocalQuorum,
            user: None,
            password: None,
            cluster: DEFAULT_CLUSTER.to_string(),
            timeline_ttl: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

impl ScyllaOptions {
    /// Parses `scylla://10.0.0.1,10.0.0.2:9042/herald?replication=3`: nodes (port 9042 when
    /// omitted; IPv6 in brackets), the keyspace after `/` (default `herald`), and parameters
    /// `replication` (`3` or `dc1:3,dc2:3`), `consistency` (`local_quorum`, `quorum`, …),
    /// `request_timeout` (`5s`), `page_size`, `cluster`, `timeline_ttl` (`3days`) and `tablets`
    /// (`off` or `default`). The result is validated.
    pub fn from_url(url: &str) -> Result<Self, ScyllaOptionsError> {
        let rest = url.strip_prefix("scylla://").ok_or_else(|| ScyllaOptionsError::Scheme(url.to_string()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(ScyllaOptionsError::Credentials);
        }
        let mut options = ScyllaOptions { nodes: parse_nodes(authority)?, ..ScyllaOptions::default() };
        if path.contains('/') {
            return Err(ScyllaOptionsError::Path(path.to_string()));
        }
        if !path.is_empty() {
            options.keyspace = Keyspace::new(path)?;
        }
        if let Some(query) = query {
            options.apply_parameters(query)?;
        }
        options.validate()?;
        Ok(options)
    }

    fn apply_parameters(&mut self, query: &str) -> Result<(), ScyllaOptionsError> {
        let mut seen = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let name = PARAMETERS
                .iter()
                .copied()
                .find(|known| *known == name)
                .ok_or_else(|| ScyllaOptionsError::UnknownParameter(name.to_string()))?;
            if seen.contains(&name) {
                return Err(ScyllaOptionsError::RepeatedParameter(name.to_string()));
            }
            seen.push(name);
            let invalid = |reason: &str| ScyllaOptionsError::Invalid {
                name,
                value: value.to_string(),
                reason: reason.to_string(),
            };
            match name {
                "replication" => self.replication = ReplicationSpec::parse(&value)?,
                "consistency" => {
                    self.consistency = parse_consistency(&value).ok_or_else(|| {
                        invalid("use one, two, three, quorum, all, local_quorum, each_quorum or local_one")
                    })?
                }
                "request_timeout" => {
                    self.request_timeout = humantime::parse_duration(&value).map_err(|e| invalid(&e.to_string()))?
                }
                "page_size" => self.page_size = value.parse().map_err(|_| invalid("a whole number from 1"))?,
                "cluster" => self.cluster = value.to_string(),
                "timeline_ttl" => {
                    self.timeline_ttl = humantime::parse_duration(&value).map_err(|e| invalid(&e.to_string()))?
                }
                "tablets" => {
                    self.tablets = match value.as_ref() {
                        "off" => Tablets::Disabled,
                        "default" => Tablets::ServerDefault,
                        _ => return Err(invalid("use off (the default: LWT need it) or default (the server's)")),
                    }
                }
                _ => return Err(ScyllaOptionsError::UnknownParameter(name.to_string())),
            }
        }
        Ok(())
    }

    /// Checks what the types do not: run by [`ScyllaOptions::from_url`], [`super::ScyllaState::connect`]
    /// and [`super::migrate`], before any I/O.
    pub fn validate(&self) -> Result<(), ScyllaOptionsError> {
        let invalid =
            |name, value: String, reason: &str| ScyllaOptionsError::Invalid { name, value, reason: reason.to_string() };
        if self.nodes.is_empty() {
            return Err(ScyllaOptionsError::NoNodes);
        }
        if let ReplicationSpec::NetworkTopology { factors } = &self.replication
            && factors.is_empty()
        {
            return Err(invalid("replication", String::new(), "name at least one data center"));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "0s".into(), "must be longer than zero"));
        }
        if i32::try_from(self.page_size.get()).is_err() {
            return Err(invalid("page_size", self.page_size.to_string(), "at most 2147483647"));
        }
        if matches!(self.consistency, Consistency::Any | Consistency::Serial | Consistency::LocalSerial) {
            let value = format!("{:?}", self.consistency);
            return Err(invalid("consistency", value, "ANY and the serial levels cannot be used for reads"));
        }
        if self.cluster.is_empty() {
            return Err(invalid("cluster", String::new(), "must not be empty"));
        }
        let ttl = self.timeline_ttl.as_secs();
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            let value = humantime::format_duration(self.timeline_ttl).to_string();
            return Err(invalid("timeline_ttl", value, "from 1 second to 20 years (CQL's TTL range)"));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid(
                "user",
                self.user.clone().unwrap_or_default(),
                "set both user and password, or neither",
            ));
        }
        Ok(())
    }

    /// The serial consistency of lightweight transactions, matching [`ScyllaOptions::consistency`].
    pub fn serial_consistency(&self) -> SerialConsistency {
        match self.consistency {
            Consistency::LocalOne | Consistency::LocalQuorum => SerialConsistency::LocalSerial,
            _ => SerialConsistency::Serial,
        }
    }
}

/// `host[:port]` or `[v6][:port]`, comma separated; each becomes `host:port`.
fn parse_nodes(authority: &str) -> Result<Vec<String>, ScyllaOptionsError> {
    let mut nodes = Vec::new();
    for node in authority.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let bad = |reason| ScyllaOptionsError::Node { node: node.to_string(), reason };
        let (host, port) = if let Some(bracketed) = node.strip_prefix('[') {
            let (host, tail) = bracketed.split_once(']').ok_or_else(|| bad("an IPv6 address lacks its ']'"))?;
            host.parse::<Ipv6Addr>().map_err(|_| bad("not an IPv6 address inside the brackets"))?;
            let port = match tail {
                "" => None,
                _ => Some(tail.strip_prefix(':').ok_or_else(|| bad("write [address]:port"))?),
            };
            (format!("[{host}]"), port)
        } else {
            let (host, port) = match node.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (node, None),
            };
            if port.is_some_and(|p| p.contains(':')) {
                return Err(bad("write an IPv6 address in brackets: [::1]:9042"));
            }
            let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
            if !host_ok {
                return Err(bad("a host name or address uses a-z, 0-9, '.', '-' and '_'"));
            }
            (host.to_string(), port)
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("a port is 1 to 65535"))?,
        };
        nodes.push(format!("{host}:{port}"));
    }
    if nodes.is_empty() {
        return Err(ScyllaOptionsError::NoNodes);
    }
    Ok(nodes)
}

/// The consistency levels a read or write may use, by their CQL names (any case).
pub fn parse_consistency(name: &str) -> Option<Consistency> {
    Some(match name.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_url_names_nodes_with_default_ports_and_a_keyspace() {
        let o = ScyllaOptions::from_url("scylla://10.0.0.1,10.0.0.2:9043/herald_prod").unwrap();
        assert_eq!(o.nodes, ["10.0.0.1:9042", "10.0.0.2:9043"]);
        assert_eq!(o.keyspace.as_str(), "herald_prod");
        assert_eq!(o.replication, ReplicationSpec::Simple { factor: nz(1) });
        assert_eq!(o.consistency, Consistency::LocalQuorum);
        assert_eq!(o.request_timeout, Duration::from_secs(5));
        assert_eq!(o.tablets, Tablets::Disabled);

        // No path, or a bare slash: the default keyspace.
        for url in ["scylla://db.internal", "scylla://db.internal/"] {
            let o = ScyllaOptions::from_url(url).unwrap();
            assert_eq!(o.nodes, ["db.internal:9042"]);
            assert_eq!(o.keyspace.as_str(), DEFAULT_KEYSPACE);
        }
        // IPv6 in brackets, with and without a port; spaces around commas are forgiven.
        let o = ScyllaOptions::from_url("scylla://[::1], [fe80::1]:9100/ks").unwrap();
        assert_eq!(o.nodes, ["[::1]:9042", "[fe80::1]:9100"]);
    }

    #[test]
    fn parameters_set_replication_consistency_and_limits() {
        let o = ScyllaOptions::from_url(
            "scylla://a,b,c/herald?replication=3&consistency=QUORUM&request_timeout=2s&page_size=500\
             &cluster=blue&timeline_ttl=1day&tablets=default",
        )
        .unwrap();
        assert_eq!(o.replication, ReplicationSpec::Simple { factor: nz(3) });
        assert_eq!(o.consistency, Consistency::Quorum);
        assert_eq!(o.serial_consistency(), SerialConsistency::Serial);
        assert_eq!(o.request_timeout, Duration::from_secs(2));
        assert_eq!(o.page_size, nz(500));
        assert_eq!(o.cluster, "blue");
        assert_eq!(o.timeline_ttl, Duration::from_secs(86_400));
        assert_eq!(o.tablets, Tablets::ServerDefault);

        let o = ScyllaOptions::from_url("scylla://a/herald?replication=eu-west:3,us-east:2").unwrap();
        let factors = BTreeMap::from([("eu-west".to_string(), nz(3)), ("us-east".to_string(), nz(2))]);
        assert_eq!(o.replication, ReplicationSpec::NetworkTopology { factors });
        assert_eq!(o.serial_consistency(), SerialConsistency::LocalSerial);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = |url: &str| ScyllaOptions::from_url(url).unwrap_err();
        assert!(matches!(err("http://a/herald"), ScyllaOptionsError::Scheme(_)));
        assert!(matches!(err("a,b/herald"), ScyllaOptionsError::Scheme(_)));
        assert_eq!(err("scylla:///herald"), ScyllaOptionsError::NoNodes);
        assert_eq!(err("scylla://,/herald"), ScyllaOptionsError::NoNodes);
        assert!(matches!(err("scylla://a:0/h"), ScyllaOptionsError::Node { .. }));
        assert!(matches!(err("scylla://a:99999/h"), ScyllaOptionsError::Node { .. }));
        assert!(matches!(err("scylla://a:port/h"), ScyllaOptionsError::Node { .. }));
        assert!(matches!(err("scylla://::1/h"), ScyllaOptionsError::Node { .. }));
        assert!(matches!(err("scylla://[::1/h"), ScyllaOptionsError::Node { .. }));
        assert!(matches!(err("scylla://[nope]/h"), ScyllaOptionsError::Node { .. }));
        assert!(matches!(err("scylla://a b/h"), ScyllaOptionsError::Node { .. }));
        assert_eq!(err("scylla://user:pw@a/h"), ScyllaOptionsError::Credentials);
        assert!(matches!(err("scylla://a/Herald"), ScyllaOptionsError::Keyspace(_)));
        assert!(matches!(err("scylla://a/1herald"), ScyllaOptionsError::Keyspace(_)));
        assert!(matches!(err("scylla://a/h;DROP"), ScyllaOptionsError::Keyspace(_)));
        assert!(matches!(err(&format!("scylla://a/{}", "k".repeat(49))), ScyllaOptionsError::Keyspace(_)));
        assert!(matches!(err("scylla://a/herald/more"), ScyllaOptionsError::Path(_)));
        assert_eq!(err("scylla://a/h?replicas=3"), ScyllaOptionsError::UnknownParameter("replicas".into()));
        assert_eq!(
            err("scylla://a/h?replication=1&replication=3"),
            ScyllaOptionsError::RepeatedParameter("replication".into())
        );
        for bad in [
            "replication=0",
            "replication=three",
            "replication=dc1:3,dc1:2",
            "replication=:3",
            "replication=dc1:3,dc2",
            "consistency=serial",
            "consistency=any",
            "request_timeout=soon",
            "request_timeout=0s",
            "page_size=0",
            "page_size=3000000000",
            "cluster=",
            "timeline_ttl=0s",
            "timeline_ttl=30years",
            "tablets=on",
        ] {
            let e = err(&format!("scylla://a/h?{bad}"));
            assert!(matches!(e, ScyllaOptionsError::Invalid { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains(bad.split('=').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn replication_renders_as_a_cql_map_with_quoted_names() {
        assert_eq!(
            ReplicationSpec::Simple { factor: nz(3) }.to_cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        let spec = ReplicationSpec::parse("dc1:3,o'dc:1").unwrap();
        assert_eq!(spec.to_cql(), "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'o''dc': 1}");
    }

    #[test]
    fn validation_catches_what_a_hand_built_struct_can_get_wrong() {
        assert_eq!(ScyllaOptions::default().validate(), Ok(()));
        let no_nodes = ScyllaOptions { nodes: vec![], ..ScyllaOptions::default() };
        assert_eq!(no_nodes.validate(), Err(ScyllaOptionsError::NoNodes));
        let half_credentials = ScyllaOptions { user: Some("herald".into()), ..ScyllaOptions::default() };
        assert!(matches!(half_credentials.validate(), Err(ScyllaOptionsError::Invalid { name: "user", .. })));
        let no_dc = ScyllaOptions {
            replication: ReplicationSpec::NetworkTopology { factors: BTreeMap::new() },
            ..ScyllaOptions::default()
        };
        assert!(matches!(no_dc.validate(), Err(ScyllaOptionsError::Invalid { name: "replication", .. })));
    }
}
