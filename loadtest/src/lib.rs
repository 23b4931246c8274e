//! Herald's load tools.
//!
//! # Layout
//! - [`sandbox`]: the provider sandbox that tests and load tests use in place of the SaaS
//!   providers.
//! - [`run`]: the open-loop load generator (`herald-loadtest run`), its report and latency plot.

pub mod run;
pub mod sandbox;
