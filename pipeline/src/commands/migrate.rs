//! `herald migrate`: the ScyllaDB schema of the state backend.

use crate::config::{Config, StateBackend};

pub async fn run(config: &Config, print: bool) -> anyhow::Result<()> {
    match config.backends.state()? {
        StateBackend::Embedded => {
            eprintln!("the state backend is embedded: nothing to migrate (name a cluster with --state scylla://…)");
            Ok(())
        }
        #[cfg(feature = "scylla")]
        StateBackend::Scylla(options) => {
            use anyhow::Context;
            use herald_connectors::scylla;
            if print {
                for statement in scylla::schema_statements(&options) {
                    println!("{statement};");
                }
                return Ok(());
            }
            let nodes = options.nodes.join(",");
            scylla::migrate(&options).await.with_context(|| format!("migrating the schema on {nodes}"))?;
            eprintln!("schema of keyspace {} is in place on {nodes}", options.keyspace.as_str());
            Ok(())
        }
    }
}
