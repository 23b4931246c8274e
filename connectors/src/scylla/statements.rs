//! Every statement Herald runs on ScyllaDB, in one table: its text, and whether a retry may run it
//! again. All of them are prepared once, at connect ([`Prepared`]).
//!
//! A statement is idempotent (retried by the driver on timeouts and node failures) when running it
//! twice leaves what running it once does: plain writes of given values, deletes, reads. A
//! lightweight transaction (`IF …`) is not: a retry of one that applied answers "not applied", so
//! its callers decide from its answer themselves, in a loop that reads again. The driver's default
//! retry policy retries a non-idempotent statement only when it surely did not run.

use super::ScyllaError;
use super::options::{Keyspace, ScyllaOptions};
use ::scylla::client::session::Session;
use ::scylla::statement::Statement;
use ::scylla::statement::prepared::PreparedStatement;
use tracing::debug;

/// One statement: [`Stmt::cql`] gives its text for a keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stmt {
    UserSelect,
    UserInsert,
    UserUpdate,
    TemplateSelect,
    TemplateInsert,
    TemplateUpdate,
    TemplateDefaultIfNone,
    DedupInsert,
    DedupTakeOver,
    ThrottleSelect,
    ThrottleInsert,
    LedgerSelect,
    LedgerInsert,
    LedgerReopen,
    SinkSelect,
    SinkUpsert,
    KeySelect,
    KeyUpsert,
    TimelineSelect,
    TimelineInsert,
    OffsetSelect,
    OffsetUpsert,
    WorkerHeartbeat,
    WorkerSelect,
    WorkerLeave,
    LeaseInsert,
    LeaseRenew,
    LeaseRelease,
    HoldSelect,
    HoldCreate,
    HoldTake,
    HoldEnd,
    ScheduleInsert,
    ScheduleSelectDue,
    ScheduleSelectOne,
    ScheduleDelete,
    BucketInsert,
    BucketSelect,
    BucketDelete,
    DigestSelect,
    DigestOpen,
    DigestCount,
    DigestClose,
    DigestDrop,
    MemberInsert,
    MemberSelect,
    MemberDrop,
    OpenSelect,
    OpenInsert,
    OpenDelete,
    MemberOfSelect,
    MemberOfInsert,
    TopicsSelect,
    TopicsAdd,
    TopicsSet,
    SubscriberInsert,
    SubscriberDelete,
    SubscribersFirst,
    SubscribersAfter,
    CursorSelect,
    CursorUpsert,
    WebhookSelect,
    WebhookList,
    WebhookUpsert,
    WebhookDelete,
    WebhookStatusSelect,
    WebhookStatusUpsert,
    WebhookStatusDelete,
    OutboxInsert,
    OutboxPage,
    OutboxDelete,
    OutboxDeleteFrom,
    OutboxKeys,
}

impl Stmt {
    /// Every statement, in declaration order (so `Stmt::ALL[s as usize] == s`).
    pub const ALL: [Stmt; 73] = [
        Stmt::UserSelect,
        Stmt::UserInsert,
        Stmt::UserUpdate,
        Stmt::TemplateSelect,
        Stmt::TemplateInsert,
        Stmt::TemplateUpdate,
        Stmt::TemplateDefaultIfNone,
        Stmt::DedupInsert,
        Stmt::DedupTakeOver,
        Stmt::ThrottleSelect,
        Stmt::ThrottleInsert,
        Stmt::LedgerSelect,
        Stmt::LedgerInsert,
        Stmt::LedgerReopen,
        Stmt::SinkSelect,
        Stmt::SinkUpsert,
        Stmt::KeySelect,
        Stmt::KeyUpsert,
        Stmt::TimelineSelect,
        Stmt::TimelineInsert,
        Stmt::OffsetSelect,
        Stmt::OffsetUpsert,
        Stmt::WorkerHeartbeat,
        Stmt::WorkerSelect,
        Stmt::WorkerLeave,
        Stmt::LeaseInsert,
        Stmt::LeaseRenew,
        Stmt::LeaseRelease,
        Stmt::HoldSelect,
        Stmt::HoldCreate,
        Stmt::HoldTake,
        Stmt::HoldEnd,
        Stmt::ScheduleInsert,
        Stmt::ScheduleSelectDue,
        Stmt::ScheduleSelectOne,
        Stmt::ScheduleDelete,
        Stmt::BucketInsert,
        Stmt::BucketSelect,
        Stmt::BucketDelete,
        Stmt::DigestSelect,
        Stmt::DigestOpen,
        Stmt::DigestCount,
        Stmt::DigestClose,
        Stmt::DigestDrop,
        Stmt::MemberInsert,
        Stmt::MemberSelect,
        Stmt::MemberDrop,
        Stmt::OpenSelect,
        Stmt::OpenInsert,
        Stmt::OpenDelete,
        Stmt::MemberOfSelect,
        Stmt::MemberOfInsert,
        Stmt::TopicsSelect,
        Stmt::TopicsAdd,
        Stmt::TopicsSet,
        Stmt::SubscriberInsert,
        Stmt::SubscriberDelete,
        Stmt::SubscribersFirst,
        Stmt::SubscribersAfter,
        Stmt::CursorSelect,
        Stmt::CursorUpsert,
        Stmt::WebhookSelect,
        Stmt::WebhookList,
        Stmt::WebhookUpsert,
        Stmt::WebhookDelete,
        Stmt::WebhookStatusSelect,
        Stmt::WebhookStatusUpsert,
        Stmt::WebhookStatusDelete,
        Stmt::OutboxInsert,
        Stmt::OutboxPage,
        Stmt::OutboxDelete,
        Stmt::OutboxDeleteFrom,
        Stmt::OutboxKeys,
    ];

    /// The table the statement reads or writes (for errors and logs).
    pub fn table(self) -> &'static str {
        use Stmt::*;
        match self {
            UserSelect | UserInsert | UserUpdate => "users",
            TemplateSelect | TemplateInsert | TemplateUpdate | TemplateDefaultIfNone => "templates",
            DedupInsert | DedupTakeOver => "dedup",
            ThrottleSelect | ThrottleInsert => "throttle_hits",
            LedgerSelect | LedgerInsert | LedgerReopen => "ledger",
            SinkSelect | SinkUpsert => "sink_positions",
            KeySelect | KeyUpsert => "api_keys",
            TimelineSelect | TimelineInsert => "timeline",
            OffsetSelect | OffsetUpsert => "offsets",
            WorkerHeartbeat | WorkerSelect | WorkerLeave => "workers",
            LeaseInsert | LeaseRenew | LeaseRelease => "leases",
            HoldSelect | HoldCreate | HoldTake | HoldEnd => "holds",
            ScheduleInsert | ScheduleSelectDue | ScheduleSelectOne | ScheduleDelete => "schedule",
            BucketInsert | BucketSelect | BucketDelete => "schedule_buckets",
            DigestSelect | DigestOpen | DigestCount | DigestClose | DigestDrop => "digests",
            MemberInsert | MemberSelect | MemberDrop => "digest_members",
            OpenSelect | OpenInsert | OpenDelete => "digest_open",
            MemberOfSelect | MemberOfInsert => "digest_member_of",
            TopicsSelect | TopicsAdd | TopicsSet => "user_topics",
            SubscriberInsert | SubscriberDelete | SubscribersFirst | SubscribersAfter => "topic_subscribers",
            CursorSelect | CursorUpsert => "broadcast_cursors",
            WebhookSelect | WebhookList | WebhookUpsert | WebhookDelete => "webhooks",
            WebhookStatusSelect | WebhookStatusUpsert | WebhookStatusDelete => "webhook_status",
            OutboxInsert | OutboxPage | OutboxDelete | OutboxDeleteFrom | OutboxKeys => "webhook_outbox",
        }
    }

    /// The statement's text, its table qualified by `ks`. Bind markers are in the order the
    /// callers pass values.
    pub fn cql(self, ks: &Keyspace) -> String {
        use Stmt::*;
        match self {
            UserSelect => format!("SELECT data, version FROM {ks}.users WHERE user_id = ?"),
            UserInsert => format!("INSERT INTO {ks}.users (user_id, data, version) VALUES (?, ?, ?) IF NOT EXISTS"),
            UserUpdate => format!("UPDATE {ks}.users SET data = ?, version = ? WHERE user_id = ? IF version = ?"),
            TemplateSelect => {
                format!("SELECT locale, data, default_locale FROM {ks}.templates WHERE template_id = ?")
            }
            TemplateInsert => format!(
                "INSERT INTO {ks}.templates (template_id, locale, data, default_locale) VALUES (?, ?, ?, ?) \
                 IF NOT EXISTS"
            ),
            TemplateUpdate => format!(
                "UPDATE {ks}.templates SET data = ?, default_locale = ? WHERE template_id = ? AND locale = ? IF EXISTS"
            ),
            TemplateDefaultIfNone => {
                format!("UPDATE {ks}.templates SET default_locale = ? WHERE template_id = ? IF default_locale = null")
            }
            DedupInsert => format!(
                "INSERT INTO {ks}.dedup (dedup_key, notification, expires_at_ms) VALUES (?, ?, ?) \
                 IF NOT EXISTS USING TTL ?"
            ),
            DedupTakeOver => format!(
                "UPDATE {ks}.dedup USING TTL ? SET notification = ?, expires_at_ms = ? WHERE dedup_key = ? \
                 IF notification = ? AND expires_at_ms = ?"
            ),
            ThrottleSelect => format!("SELECT notification, at_ms FROM {ks}.throttle_hits WHERE cap_key = ?"),
            ThrottleInsert => {
                format!("INSERT INTO {ks}.throttle_hits (cap_key, notification, at_ms) VALUES (?, ?, ?) USING TTL ?")
            }
            LedgerSelect => format!("SELECT state FROM {ks}.ledger WHERE delivery_id = ?"),
            LedgerInsert => format!("INSERT INTO {ks}.ledger (delivery_id, state) VALUES (?, ?)"),
            LedgerReopen => format!("DELETE FROM {ks}.ledger WHERE delivery_id = ? IF state = ?"),
            SinkSelect => format!("SELECT position FROM {ks}.sink_positions WHERE sink = ?"),
            SinkUpsert => format!("INSERT INTO {ks}.sink_positions (sink, position) VALUES (?, ?)"),
            KeySelect => format!("SELECT data FROM {ks}.api_keys WHERE hash = ?"),
            KeyUpsert => format!("INSERT INTO {ks}.api_keys (hash, data) VALUES (?, ?)"),
            TimelineSelect => format!("SELECT event_id, data FROM {ks}.timeline WHERE notification_id = ?"),
            TimelineInsert => {
                format!("INSERT INTO {ks}.timeline (notification_id, event_id, data) VALUES (?, ?, ?) USING TTL ?")
            }
            OffsetSelect => format!(
                "SELECT next_offset FROM {ks}.offsets WHERE consumer_group = ? AND topic = ? AND partition_id = ?"
            ),
            OffsetUpsert => format!(
                "INSERT INTO {ks}.offsets (consumer_group, topic, partition_id, next_offset) VALUES (?, ?, ?, ?)"
            ),
            WorkerHeartbeat => format!("INSERT INTO {ks}.workers (cluster, worker) VALUES (?, ?) USING TTL ?"),
            WorkerSelect => format!("SELECT worker FROM {ks}.workers WHERE cluster = ?"),
            WorkerLeave => format!("DELETE FROM {ks}.workers WHERE cluster = ? AND worker = ?"),
            LeaseInsert => format!(
                "INSERT INTO {ks}.leases (cluster, partition_id, owner) VALUES (?, ?, ?) IF NOT EXISTS USING TTL ?"
            ),
            LeaseRenew => format!(
                "UPDATE {ks}.leases USING TTL ? SET owner = ? WHERE cluster = ? AND partition_id = ? IF owner = ?"
            ),
            LeaseRelease => {
                format!("DELETE FROM {ks}.leases WHERE cluster = ? AND partition_id = ? IF owner = ?")
            }
            HoldSelect => format!(
                "SELECT reason, state, partition_id, due_at_ms, bucket, client_id FROM {ks}.holds \
                 WHERE notification_id = ?"
            ),
            // An UPDATE, not an INSERT: an INSERT's row marker has no TTL and would keep the row
            // (with null columns) after the TTL that `HoldEnd` gives every column.
            HoldCreate => format!(
                "UPDATE {ks}.holds SET state = ?, partition_id = ?, due_at_ms = ?, bucket = ?, client_id = ? \
                 WHERE notification_id = ? AND reason = ? IF state = null"
            ),
            HoldTake => {
                format!("UPDATE {ks}.holds SET state = ? WHERE notification_id = ? AND reason = ? IF state = ?")
            }
            HoldEnd => format!(
                "UPDATE {ks}.holds USING TTL ? SET state = ?, partition_id = ?, due_at_ms = ?, bucket = ?, \
                 client_id = ? WHERE notification_id = ? AND reason = ? IF state = ?"
            ),
            ScheduleInsert => format!(
                "INSERT INTO {ks}.schedule (partition_id, bucket, due_at_ms, notification_id, reason, envelope) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ),
            ScheduleSelectDue => format!(
                "SELECT due_at_ms, notification_id, reason, envelope FROM {ks}.schedule \
                 WHERE partition_id = ? AND bucket = ? AND due_at_ms <= ? LIMIT ?"
            ),
            ScheduleSelectOne => format!(
                "SELECT envelope FROM {ks}.schedule WHERE partition_id = ? AND bucket = ? AND due_at_ms = ? \
                 AND notification_id = ? AND reason = ?"
            ),
            ScheduleDelete => format!(
                "DELETE FROM {ks}.schedule WHERE partition_id = ? AND bucket = ? AND due_at_ms = ? \
                 AND notification_id = ? AND reason = ?"
            ),
            BucketInsert => format!("INSERT INTO {ks}.schedule_buckets (partition_id, bucket) VALUES (?, ?)"),
            BucketSelect => {
                format!("SELECT bucket FROM {ks}.schedule_buckets WHERE partition_id = ? AND bucket <= ? LIMIT ?")
            }
            BucketDelete => {
                format!("DELETE FROM {ks}.schedule_buckets USING TIMESTAMP ? WHERE partition_id = ? AND bucket = ?")
            }
            DigestSelect => format!(
                "SELECT user_id, digest_key, due_at_ms, member_count, last_member, collecting FROM {ks}.digests \
                 WHERE digest_id = ?"
            ),
            DigestOpen => format!(
                "INSERT INTO {ks}.digests (digest_id, user_id, digest_key, due_at_ms, member_count, last_member, \
                 collecting) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ),
            DigestCount => format!(
                "UPDATE {ks}.digests SET member_count = ?, last_member = ? WHERE digest_id = ? \
                 IF member_count = ? AND collecting = ?"
            ),
            DigestClose => format!("UPDATE {ks}.digests SET collecting = ? WHERE digest_id = ? IF collecting = ?"),
            DigestDrop => format!("DELETE FROM {ks}.digests WHERE digest_id = ? IF EXISTS"),
            MemberInsert => {
                format!("INSERT INTO {ks}.digest_members (digest_id, seq, envelope) VALUES (?, ?, ?) USING TTL ?")
            }
            MemberSelect => format!("SELECT envelope FROM {ks}.digest_members WHERE digest_id = ? LIMIT ?"),
            MemberDrop => format!("DELETE FROM {ks}.digest_members WHERE digest_id = ?"),
            OpenSelect => format!("SELECT digest_id FROM {ks}.digest_open WHERE user_id = ? AND digest_key = ?"),
            OpenInsert => {
                format!("INSERT INTO {ks}.digest_open (user_id, digest_key, digest_id) VALUES (?, ?, ?) IF NOT EXISTS")
            }
            OpenDelete => {
                format!("DELETE FROM {ks}.digest_open WHERE user_id = ? AND digest_key = ? IF digest_id = ?")
            }
            MemberOfSelect => format!("SELECT digest_id FROM {ks}.digest_member_of WHERE member_id = ?"),
            MemberOfInsert => format!(
                "INSERT INTO {ks}.digest_member_of (member_id, digest_id) VALUES (?, ?) IF NOT EXISTS USING TTL ?"
            ),
            TopicsSelect => format!("SELECT topics FROM {ks}.user_topics WHERE user_id = ?"),
            // UPDATEs, not INSERTs: without a row marker, a user whose set is emptied has no row.
            TopicsAdd => format!("UPDATE {ks}.user_topics SET topics = topics + ? WHERE user_id = ?"),
            TopicsSet => format!("UPDATE {ks}.user_topics SET topics = ? WHERE user_id = ?"),
            SubscriberInsert => {
                format!("INSERT INTO {ks}.topic_subscribers (topic, bucket, user_id) VALUES (?, ?, ?)")
            }
            SubscriberDelete => {
                format!("DELETE FROM {ks}.topic_subscribers WHERE topic = ? AND bucket = ? AND user_id = ?")
            }
            SubscribersFirst => {
                format!("SELECT user_id FROM {ks}.topic_subscribers WHERE topic = ? AND bucket = ? LIMIT ?")
            }
            SubscribersAfter => format!(
                "SELECT user_id FROM {ks}.topic_subscribers WHERE topic = ? AND bucket = ? AND user_id > ? LIMIT ?"
            ),
            CursorSelect => format!("SELECT cursor FROM {ks}.broadcast_cursors WHERE broadcast_id = ?"),
            CursorUpsert => {
                format!("INSERT INTO {ks}.broadcast_cursors (broadcast_id, cursor) VALUES (?, ?) USING TTL ?")
            }
            WebhookSelect => format!("SELECT data FROM {ks}.webhooks WHERE scope = ? AND client_id = ?"),
            WebhookList => format!("SELECT data FROM {ks}.webhooks WHERE scope = ?"),
            WebhookUpsert => format!("INSERT INTO {ks}.webhooks (scope, client_id, data) VALUES (?, ?, ?)"),
            WebhookDelete => format!("DELETE FROM {ks}.webhooks WHERE scope = ? AND client_id = ?"),
            WebhookStatusSelect => format!("SELECT data FROM {ks}.webhook_status WHERE client_id = ?"),
            WebhookStatusUpsert => format!("INSERT INTO {ks}.webhook_status (client_id, data) VALUES (?, ?)"),
            WebhookStatusDelete => format!("DELETE FROM {ks}.webhook_status WHERE client_id = ?"),
            OutboxInsert => format!(
                "INSERT INTO {ks}.webhook_outbox (client_id, partition_id, first_offset, created_at_ms, events, body) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ),
            OutboxPage => format!(
                "SELECT first_offset, created_at_ms, events, body FROM {ks}.webhook_outbox \
                 WHERE client_id = ? AND partition_id = ? AND first_offset >= ? AND first_offset < ? LIMIT ?"
            ),
            OutboxDelete => {
                format!("DELETE FROM {ks}.webhook_outbox WHERE client_id = ? AND partition_id = ? AND first_offset = ?")
            }
            OutboxDeleteFrom => format!(
                "DELETE FROM {ks}.webhook_outbox WHERE client_id = ? AND partition_id = ? AND first_offset >= ?"
            ),
            OutboxKeys => {
                format!("SELECT first_offset FROM {ks}.webhook_outbox WHERE client_id = ? AND partition_id = ? LIMIT ?")
            }
        }
    }

    /// A lightweight transaction (Paxos): used only where a lost concurrent update would be a bug.
    pub fn is_lwt(self) -> bool {
        use Stmt::*;
        matches!(
            self,
            UserInsert
                | UserUpdate
                | TemplateInsert
                | TemplateUpdate
                | TemplateDefaultIfNone
                | DedupInsert
                | DedupTakeOver
                | LedgerReopen
                | LeaseInsert
                | LeaseRenew
                | LeaseRelease
                | HoldCreate
                | HoldTake
                | HoldEnd
                | DigestOpen
                | DigestCount
                | DigestClose
                | DigestDrop
                | OpenInsert
                | OpenDelete
                | MemberOfInsert
        )
    }

    /// May the driver run it again after a timeout (see the module doc)? Every statement but the
    /// lightweight transactions.
    pub fn is_idempotent(self) -> bool {
        !self.is_lwt()
    }
}

/// A statement as [`statement_specs`] lists it, for tests and for `herald migrate --print`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementSpec {
    pub name: String,
    pub cql: String,
    pub idempotent: bool,
}

/// Every statement Herald prepares, for the keyspace.
pub fn statement_specs(ks: &Keyspace) -> Vec<StatementSpec> {
    Stmt::ALL
        .iter()
        .map(|s| StatementSpec { name: format!("{s:?}"), cql: s.cql(ks), idempotent: s.is_idempotent() })
        .collect()
}

/// Every [`Stmt`], prepared, with its idempotence and page size set.
pub struct Prepared([PreparedStatement; Stmt::ALL.len()]);

impl Prepared {
    pub async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, ScyllaError> {
        // Validated to fit an i32 (ScyllaOptions::validate).
        let page_size = i32::try_from(options.page_size.get()).unwrap_or(i32::MAX);
        let mut prepared = Vec::with_capacity(Stmt::ALL.len());
        for stmt in Stmt::ALL {
            let mut statement = Statement::new(stmt.cql(&options.keyspace)).with_page_size(page_size);
            statement.set_is_idempotent(stmt.is_idempotent());
            let mut p = session.prepare(statement).await.map_err(|source| ScyllaError::Prepare {
                statement: stmt,
                keyspace: options.keyspace.to_string(),
                source: Box::new(source),
            })?;
            // Carried over from the statement by the driver; set again so they never depend on that.
            p.set_is_idempotent(stmt.is_idempotent());
            p.set_page_size(page_size);
            debug!(statement = ?stmt, lwt = p.is_confirmed_lwt(), token_aware = p.is_token_aware(), "prepared");
            prepared.push(p);
        }
        let all: [PreparedStatement; Stmt::ALL.len()] =
            prepared.try_into().map_err(|_| ScyllaError::Internal("prepared statement count"))?;
        Ok(Self(all))
    }

    pub fn get(&self, stmt: Stmt) -> &PreparedStatement {
        &self.0[stmt as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks() -> Keyspace {
        Keyspace::new("hk").unwrap()
    }

    #[test]
    fn all_lists_every_statement_at_its_own_index() {
        for (i, stmt) in Stmt::ALL.iter().enumerate() {
            assert_eq!(*stmt as usize, i, "{stmt:?}");
        }
    }

    #[test]
    fn lightweight_transactions_are_exactly_the_conditional_statements_and_never_idempotent() {
        for spec in statement_specs(&ks()) {
            let conditional = spec.cql.contains(" IF ");
            assert_eq!(!spec.idempotent, conditional, "{}: {}", spec.name, spec.cql);
        }
        let lwt: Vec<String> = statement_specs(&ks()).into_iter().filter(|s| !s.idempotent).map(|s| s.name).collect();
        assert_eq!(
            lwt,
            [
                "UserInsert",
                "UserUpdate",
                "TemplateInsert",
                "TemplateUpdate",
                "TemplateDefaultIfNone",
                "DedupInsert",
                "DedupTakeOver",
                "LedgerReopen",
                "LeaseInsert",
                "LeaseRenew",
                "LeaseRelease",
                "HoldCreate",
                "HoldTake",
                "HoldEnd",
                "DigestOpen",
                "DigestCount",
                "DigestClose",
                "DigestDrop",
                "OpenInsert",
                "OpenDelete",
                "MemberOfInsert"
            ]
        );
    }

    #[test]
    fn every_statement_names_its_table_in_the_keyspace_and_binds_every_value() {
        for stmt in Stmt::ALL {
            let cql = stmt.cql(&ks());
            assert!(cql.contains(&format!("hk.{} ", stmt.table())), "{stmt:?}: {cql}");
            // Values are bound, never written into the text (token-aware routing needs the
            // partition key bound, and no value can change a statement).
            assert!(!cql.contains('\''), "{stmt:?}: {cql}");
            let reads = cql.starts_with("SELECT");
            assert_eq!(reads, !cql.contains("INSERT") && !cql.contains("UPDATE") && !cql.contains("DELETE"));
        }
    }

    #[test]
    fn rows_that_must_expire_are_written_with_a_ttl() {
        for stmt in [
            Stmt::DedupInsert,
            Stmt::DedupTakeOver,
            Stmt::ThrottleInsert,
            Stmt::TimelineInsert,
            Stmt::WorkerHeartbeat,
            Stmt::LeaseInsert,
            Stmt::LeaseRenew,
            Stmt::HoldEnd,
            Stmt::MemberInsert,
            Stmt::MemberOfInsert,
            Stmt::CursorUpsert,
        ] {
            assert!(stmt.cql(&ks()).contains("USING TTL ?"), "{stmt:?}");
        }
        // Waiting holds, the index and open digests live until released or cancelled; subscriptions
        // until changed.
        for stmt in [
            Stmt::UserInsert,
            Stmt::LedgerInsert,
            Stmt::SinkUpsert,
            Stmt::KeyUpsert,
            Stmt::OffsetUpsert,
            Stmt::HoldCreate,
            Stmt::HoldTake,
            Stmt::ScheduleInsert,
            Stmt::BucketInsert,
            Stmt::DigestOpen,
            Stmt::DigestCount,
            Stmt::OpenInsert,
            Stmt::TopicsAdd,
            Stmt::TopicsSet,
            Stmt::SubscriberInsert,
        ] {
            assert!(!stmt.cql(&ks()).contains("TTL"), "{stmt:?} must not expire");
        }
    }

    #[test]
    fn the_conditions_are_the_ones_the_stores_rely_on() {
        let cql = |s: Stmt| s.cql(&ks());
        assert!(cql(Stmt::DedupInsert).contains("IF NOT EXISTS USING TTL ?"));
        assert!(cql(Stmt::DedupTakeOver).ends_with("IF notification = ? AND expires_at_ms = ?"));
        assert!(cql(Stmt::UserUpdate).ends_with("IF version = ?"));
        assert!(cql(Stmt::LedgerReopen).ends_with("IF state = ?"));
        assert!(cql(Stmt::LeaseRenew).ends_with("IF owner = ?"));
        assert!(cql(Stmt::LeaseRelease).ends_with("IF owner = ?"));
        assert!(cql(Stmt::TemplateDefaultIfNone).ends_with("IF default_locale = null"));
        assert!(cql(Stmt::HoldCreate).ends_with("IF state = null"));
        assert!(cql(Stmt::HoldTake).ends_with("IF state = ?"));
        assert!(cql(Stmt::HoldEnd).ends_with("IF state = ?"));
        assert!(cql(Stmt::DigestCount).ends_with("IF member_count = ? AND collecting = ?"));
        assert!(cql(Stmt::DigestClose).ends_with("IF collecting = ?"));
        assert!(cql(Stmt::DigestDrop).ends_with("IF EXISTS"));
        assert!(cql(Stmt::OpenInsert).ends_with("IF NOT EXISTS"));
        assert!(cql(Stmt::OpenDelete).ends_with("IF digest_id = ?"));
        assert!(cql(Stmt::MemberOfInsert).ends_with("IF NOT EXISTS USING TTL ?"));
        // A bucket's row is removed back-dated (see the schedule module).
        assert!(cql(Stmt::BucketDelete).contains("USING TIMESTAMP ?"));
    }
}
