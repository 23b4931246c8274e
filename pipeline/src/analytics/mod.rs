//! Delivery analytics: events as Arrow record batches, stored as Parquet (zstd) under
//! `<data-dir>/events/date=YYYY-MM-DD/`, one file per partition of `herald-events` and offset
//! range, written exactly once ([`files`], [`sink`]); small files merged a day at a time
//! ([`compact`]). The schema is
//! [`herald_schemas::analytics::event_schema`]. [`sql`] queries them (and the events not yet in a
//! file) with DataFusion; [`reports`] are canned queries (`herald report`).

pub mod compact;
pub mod files;
pub mod reports;
pub mod sink;
pub mod sql;
