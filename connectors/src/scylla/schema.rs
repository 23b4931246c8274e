//! The keyspace and its tables (`herald migrate`): every statement is `CREATE … IF NOT EXISTS`, so
//! running it again, or from two processes at once, changes nothing.

use super::ScyllaError;
use super::options::{ScyllaOptions, Tablets};
use super::state::open_session;
use super::values::ttl_secs;
use ::scylla::statement::Statement;
use std::time::Duration;
use tracing::{debug, info};

/// Schema changes wait for every node to agree, which takes longer than a query.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// The CQL that creates the keyspace and every table, in order (no trailing `;`).
pub fn schema_statements(options: &ScyllaOptions) -> Vec<String> {
    let ks = &options.keyspace;
    let tablets = match options.tablets {
        Tablets::Disabled => " AND tablets = {'enabled': false}",
        Tablets::ServerDefault => "",
    };
    vec![
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}{tablets}", options.replication.to_cql()),
        format!("CREATE TABLE IF NOT EXISTS {ks}.users (user_id text PRIMARY KEY, data blob, version bigint)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.templates (template_id text, locale text, data blob, \
             default_locale text STATIC, PRIMARY KEY (template_id, locale))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.dedup (dedup_key text PRIMARY KEY, notification text, \
             expires_at_ms bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.throttle_hits (cap_key text, notification text, at_ms bigint, \
             PRIMARY KEY (cap_key, notification, at_ms))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {ks}.ledger (delivery_id text PRIMARY KEY, state tinyint)"),
        format!("CREATE TABLE IF NOT EXISTS {ks}.sink_positions (sink text PRIMARY KEY, position bigint)"),
        format!("CREATE TABLE IF NOT EXISTS {ks}.api_keys (hash text PRIMARY KEY, data blob)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.timeline (notification_id text, event_id text, data blob, \
             PRIMARY KEY (notification_id, event_id)) WITH default_time_to_live = {}",
            ttl_secs(options.timeline_ttl)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.offsets (consumer_group text, topic text, partition_id int, \
             next_offset bigint, PRIMARY KEY ((consumer_group, topic, partition_id)))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {ks}.workers (cluster text, worker text, PRIMARY KEY (cluster, worker))"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.leases (cluster text, partition_id int, owner text, \
             PRIMARY KEY (cluster, partition_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.holds (notification_id text, reason text, state tinyint, \
             partition_id int, due_at_ms bigint, bucket bigint, client_id text, \
             PRIMARY KEY (notification_id, reason))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schedule (partition_id int, bucket bigint, due_at_ms bigint, \
             notification_id text, reason text, envelope blob, \
             PRIMARY KEY ((partition_id, bucket), due_at_ms, notification_id, reason))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schedule_buckets (partition_id int, bucket bigint, \
             PRIMARY KEY (partition_id, bucket))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.digests (digest_id text PRIMARY KEY, user_id text, digest_key text, \
             due_at_ms bigint, member_count bigint, last_member text, collecting boolean)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.digest_members (digest_id text, seq int, envelope blob, \
             PRIMARY KEY (digest_id, seq))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.digest_open (user_id text, digest_key text, digest_id text, \
             PRIMARY KEY ((user_id, digest_key)))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {ks}.digest_member_of (member_id text PRIMARY KEY, digest_id text)"),
        format!("CREATE TABLE IF NOT EXISTS {ks}.user_topics (user_id text PRIMARY KEY, topics set<text>)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.topic_subscribers (topic text, bucket int, user_id text, \
             PRIMARY KEY ((topic, bucket), user_id))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {ks}.broadcast_cursors (broadcast_id text PRIMARY KEY, cursor text)"),
        // One partition holds every registration (a few per client): the senders list them all.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.webhooks (scope text, client_id text, data blob, \
             PRIMARY KEY (scope, client_id))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {ks}.webhook_status (client_id text PRIMARY KEY, data blob)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.webhook_outbox (client_id text, partition_id int, \
             first_offset bigint, created_at_ms bigint, events int, body blob, \
             PRIMARY KEY ((client_id, partition_id), first_offset))"
        ),
    ]
}

/// Creates the keyspace (with the options' replication) and every table, then waits until every
/// node reports the same schema, so statements prepared next find the tables everywhere.
pub async fn migrate(options: &ScyllaOptions) -> Result<(), ScyllaError> {
    options.validate()?;
    let session = open_session(options).await?;
    let statements = schema_statements(options);
    for cql in &statements {
        debug!(%cql, "schema statement");
        let mut statement = Statement::new(cql.as_str());
        statement.set_request_timeout(Some(DDL_TIMEOUT.max(options.request_timeout)));
        session
            .query_unpaged(statement, &[])
            .await
            .map_err(|source| ScyllaError::Migrate { statement: cql.clone(), source: Box::new(source) })?;
    }
    let version = session.await_schema_agreement().await.map_err(|e| ScyllaError::SchemaAgreement(Box::new(e)))?;
    info!(keyspace = %options.keyspace, statements = statements.len(), %version, "ScyllaDB schema in place");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scylla::options::ReplicationSpec;
    use crate::scylla::statements::Stmt;

    #[test]
    fn the_keyspace_is_created_with_the_options_replication_and_without_tablets() {
        let options = ScyllaOptions::from_url("scylla://a/herald_eu?replication=eu1:3,eu2:3").unwrap();
        let statements = schema_statements(&options);
        assert_eq!(
            statements[0],
            "CREATE KEYSPACE IF NOT EXISTS herald_eu WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'eu1': 3, 'eu2': 3} AND tablets = {'enabled': false}"
        );
        let options = ScyllaOptions { tablets: Tablets::ServerDefault, ..ScyllaOptions::default() };
        assert_eq!(
            schema_statements(&options)[0],
            "CREATE KEYSPACE IF NOT EXISTS herald WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(ScyllaOptions::default().replication, ReplicationSpec::default());
    }

    #[test]
    fn every_table_a_statement_uses_is_created_if_not_exists_in_the_keyspace() {
        let options = ScyllaOptions::from_url("scylla://a/hk").unwrap();
        let statements = schema_statements(&options);
        assert!(statements.iter().all(|s| s.starts_with("CREATE ") && s.contains(" IF NOT EXISTS ")));
        assert!(statements.iter().all(|s| !s.ends_with(';')));
        for stmt in Stmt::ALL {
            let create = format!("CREATE TABLE IF NOT EXISTS hk.{} (", stmt.table());
            assert!(statements.iter().any(|s| s.starts_with(&create)), "{stmt:?}: no {create}");
        }
        // And no table nobody uses.
        assert_eq!(statements.len(), 1 + 24);
    }

    #[test]
    fn each_table_is_keyed_by_the_partition_key_its_queries_use() {
        let statements = schema_statements(&ScyllaOptions::default());
        let table = |name: &str| {
            statements.iter().find(|s| s.contains(&format!("herald.{name} ("))).cloned().unwrap_or_default()
        };
        assert!(table("users").contains("user_id text PRIMARY KEY"));
        assert!(table("templates").contains("PRIMARY KEY (template_id, locale)"));
        assert!(table("templates").contains("default_locale text STATIC"));
        assert!(table("dedup").contains("dedup_key text PRIMARY KEY"));
        assert!(table("throttle_hits").contains("PRIMARY KEY (cap_key, notification, at_ms)"));
        assert!(table("ledger").contains("delivery_id text PRIMARY KEY, state tinyint"));
        assert!(table("offsets").contains("PRIMARY KEY ((consumer_group, topic, partition_id))"));
        assert!(table("leases").contains("PRIMARY KEY (cluster, partition_id)"));
        assert!(table("timeline").contains("PRIMARY KEY (notification_id, event_id)"));
        assert!(table("holds").contains("PRIMARY KEY (notification_id, reason)"));
        assert!(table("schedule").contains("PRIMARY KEY ((partition_id, bucket), due_at_ms, notification_id, reason)"));
        assert!(table("schedule_buckets").contains("PRIMARY KEY (partition_id, bucket)"));
        assert!(table("digests").contains("digest_id text PRIMARY KEY"));
        assert!(table("digest_members").contains("PRIMARY KEY (digest_id, seq)"));
        assert!(table("digest_open").contains("PRIMARY KEY ((user_id, digest_key))"));
        assert!(table("digest_member_of").contains("member_id text PRIMARY KEY"));
        assert!(table("user_topics").contains("user_id text PRIMARY KEY, topics set<text>"));
        assert!(table("topic_subscribers").contains("PRIMARY KEY ((topic, bucket), user_id)"));
        assert!(table("broadcast_cursors").contains("broadcast_id text PRIMARY KEY"));
        assert!(table("webhooks").contains("PRIMARY KEY (scope, client_id)"));
        assert!(table("webhook_outbox").contains("PRIMARY KEY ((client_id, partition_id), first_offset)"));
    }

    #[test]
    fn the_timeline_table_expires_rows_after_the_configured_ttl() {
        let options = ScyllaOptions::from_url("scylla://a/h?timeline_ttl=7days").unwrap();
        let timeline = schema_statements(&options).into_iter().find(|s| s.contains(".timeline (")).unwrap();
        assert!(timeline.ends_with("WITH default_time_to_live = 604800"), "{timeline}");
        let default = schema_statements(&ScyllaOptions::default());
        assert!(default.iter().any(|s| s.ends_with("WITH default_time_to_live = 259200")));
    }
}
