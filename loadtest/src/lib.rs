//! Herald's load tools: the provider sandbox ([`sandbox`]) that tests and load tests use in place
//! of the SaaS providers. The open-loop load generator comes with issue 4.

pub mod sandbox;
