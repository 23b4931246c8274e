//! How Herald's values are written into CQL columns and read back: JSON blobs, unsigned numbers
//! in signed columns, ledger states as `tinyint`, TTLs, and the result row of a lightweight
//! transaction.

use super::ScyllaError;
use super::options::MAX_TTL_SECS;
use ::scylla::value::CqlValue;
use herald_schemas::store::{HoldState, LedgerState};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Added to every TTL computed from an expiry: a row's TTL is only its garbage collection (the
/// decisions read the expiry stored in the row), so a row outliving its expiry a little is
/// harmless, while one vanishing early (the servers' clocks ahead of Herald's) would free a dedup
/// key or forget a cap hit too soon.
pub const TTL_GRACE_SECS: u64 = 60;

/// A TTL in whole seconds, rounded up, within CQL's range (1 s to 20 years).
pub fn ttl_secs(ttl: Duration) -> i32 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    clamp_ttl(secs)
}

/// The TTL of a row that must last until `expires_at_ms` (Herald's clock, read at `now_ms`), plus
/// [`TTL_GRACE_SECS`].
pub fn ttl_until(expires_at_ms: u64, now_ms: u64) -> i32 {
    let remaining_ms = expires_at_ms.saturating_sub(now_ms);
    clamp_ttl(remaining_ms.div_ceil(1_000).saturating_add(TTL_GRACE_SECS))
}

fn clamp_ttl(secs: u64) -> i32 {
    // MAX_TTL_SECS fits an i32; the fallback is unreachable.
    i32::try_from(secs.clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

pub fn encode_state(state: LedgerState) -> i8 {
    match state {
        LedgerState::InFlight => 1,
        LedgerState::Sent => 2,
        LedgerState::Failed => 3,
    }
}

pub fn decode_state(value: i8) -> Result<LedgerState, ScyllaError> {
    match value {
        1 => Ok(LedgerState::InFlight),
        2 => Ok(LedgerState::Sent),
        3 => Ok(LedgerState::Failed),
        other => Err(ScyllaError::corrupt("ledger", format!("unknown state {other}"))),
    }
}

pub fn encode_hold_state(state: HoldState) -> i8 {
    match state {
        HoldState::Waiting => 1,
        HoldState::Releasing => 2,
        HoldState::Released => 3,
        HoldState::Cancelled => 4,
        HoldState::Cancelling => 5,
    }
}

pub fn decode_hold_state(value: i8) -> Result<HoldState, ScyllaError> {
    match value {
        1 => Ok(HoldState::Waiting),
        2 => Ok(HoldState::Releasing),
        3 => Ok(HoldState::Released),
        4 => Ok(HoldState::Cancelled),
        5 => Ok(HoldState::Cancelling),
        other => Err(ScyllaError::corrupt("holds", format!("unknown hold state {other}"))),
    }
}

/// An unsigned number (an offset, a time in ms) for a `bigint` column.
pub fn bigint(what: &'static str, value: u64) -> Result<i64, ScyllaError> {
    i64::try_from(value).map_err(|_| ScyllaError::OutOfRange { what, value })
}

/// A `bigint` column read back as the unsigned number it was written from.
pub fn unsigned(table: &'static str, value: i64) -> Result<u64, ScyllaError> {
    u64::try_from(value).map_err(|_| ScyllaError::corrupt(table, format!("negative number {value}")))
}

/// A partition number for an `int` column.
pub fn int(what: &'static str, value: u32) -> Result<i32, ScyllaError> {
    i32::try_from(value).map_err(|_| ScyllaError::OutOfRange { what, value: u64::from(value) })
}

pub fn to_json<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>, ScyllaError> {
    serde_json::to_vec(value).map_err(|e| ScyllaError::corrupt(table, format!("cannot encode: {e}")))
}

pub fn from_json<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, ScyllaError> {
    serde_json::from_slice(bytes).map_err(|e| ScyllaError::corrupt(table, e.to_string()))
}

/// The answer to a lightweight transaction: whether it applied, and the columns of the row as it
/// was. Columns are found by name, because the servers differ in which they send: ScyllaDB always
/// sends the old row, Cassandra only when the condition failed (and for `IF col = ?` only the
/// condition's columns).
#[derive(Debug, Clone, PartialEq)]
pub struct LwtRow {
    pub applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
}

impl LwtRow {
    pub fn new(names: Vec<String>, values: Vec<Option<CqlValue>>) -> Result<Self, String> {
        if names.len() != values.len() {
            return Err(format!("{} column names for {} values", names.len(), values.len()));
        }
        let columns: Vec<(String, Option<CqlValue>)> = names.into_iter().zip(values).collect();
        let applied = match columns.iter().find(|(name, _)| name == "[applied]") {
            Some((_, Some(CqlValue::Boolean(applied)))) => *applied,
            Some((_, other)) => return Err(format!("[applied] is {other:?}, not a boolean")),
            None => return Err("no [applied] column: not the answer to a conditional statement".into()),
        };
        Ok(Self { applied, columns })
    }

    fn value(&self, name: &str) -> Option<&CqlValue> {
        self.columns.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_ref())
    }

    /// A text column of the old row (`None`: absent, or null: no row).
    pub fn text(&self, name: &str) -> Result<Option<&str>, String> {
        match self.value(name) {
            None => Ok(None),
            Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => Ok(Some(s)),
            Some(other) => Err(format!("column {name} is {other:?}, not text")),
        }
    }

    /// A tinyint column of the old row (`None`: absent, or null: no row).
    pub fn tinyint(&self, name: &str) -> Result<Option<i8>, String> {
        match self.value(name) {
            None => Ok(None),
            Some(CqlValue::TinyInt(n)) => Ok(Some(*n)),
            Some(other) => Err(format!("column {name} is {other:?}, not tinyint")),
        }
    }

    /// A bigint column of the old row (`None`: absent, or null: no row).
    pub fn bigint(&self, name: &str) -> Result<Option<i64>, String> {
        match self.value(name) {
            None => Ok(None),
            Some(CqlValue::BigInt(n)) => Ok(Some(*n)),
            Some(other) => Err(format!("column {name} is {other:?}, not bigint")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_and_stay_in_cql_range() {
        assert_eq!(ttl_secs(Duration::from_secs(30)), 30);
        assert_eq!(ttl_secs(Duration::from_millis(30_001)), 31);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_secs(u64::MAX)), 630_720_000);

        let grace = TTL_GRACE_SECS as i32;
        assert_eq!(ttl_until(86_400_000 + 5_000, 5_000), 86_400 + grace);
        assert_eq!(ttl_until(1_001, 0), 2 + grace);
        // Already expired: kept only for the grace period.
        assert_eq!(ttl_until(100, 5_000), grace);
        assert_eq!(ttl_until(u64::MAX, 0), 630_720_000);
    }

    #[test]
    fn ledger_states_round_trip_and_unknown_bytes_are_corrupt() {
        for state in [LedgerState::InFlight, LedgerState::Sent, LedgerState::Failed] {
            assert_eq!(decode_state(encode_state(state)).unwrap(), state);
        }
        // The embedded store's bytes, so a migration can copy them as they are.
        assert_eq!([LedgerState::InFlight, LedgerState::Sent, LedgerState::Failed].map(encode_state), [1, 2, 3]);
        assert!(matches!(decode_state(0), Err(ScyllaError::Corrupt { table: "ledger", .. })));
    }

    #[test]
    fn hold_states_round_trip_and_unknown_bytes_are_corrupt() {
        let all = [
            HoldState::Waiting,
            HoldState::Releasing,
            HoldState::Released,
            HoldState::Cancelled,
            HoldState::Cancelling,
        ];
        for state in all {
            assert_eq!(decode_hold_state(encode_hold_state(state)).unwrap(), state);
        }
        assert_eq!(all.map(encode_hold_state), [1, 2, 3, 4, 5]);
        assert!(matches!(decode_hold_state(0), Err(ScyllaError::Corrupt { table: "holds", .. })));
    }

    #[test]
    fn unsigned_numbers_fit_signed_columns_or_say_so() {
        assert_eq!(bigint("offset", 42).unwrap(), 42);
        assert!(matches!(bigint("offset", u64::MAX), Err(ScyllaError::OutOfRange { what: "offset", .. })));
        assert_eq!(unsigned("offsets", 7).unwrap(), 7);
        assert!(matches!(unsigned("offsets", -1), Err(ScyllaError::Corrupt { table: "offsets", .. })));
        assert_eq!(int("partition", 3).unwrap(), 3);
        assert!(int("partition", u32::MAX).is_err());
    }

    #[test]
    fn lwt_rows_are_read_by_column_name() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // ScyllaDB: the old row, whatever the outcome (here: no row before, so nulls).
        let row = LwtRow::new(
            names(&["[applied]", "dedup_key", "expires_at_ms", "notification"]),
            vec![Some(CqlValue::Boolean(true)), None, None, None],
        )
        .unwrap();
        assert!(row.applied);
        assert_eq!(row.text("notification").unwrap(), None);

        // Not applied: the holder's columns, in whatever order.
        let row = LwtRow::new(
            names(&["[applied]", "expires_at_ms", "notification"]),
            vec![Some(CqlValue::Boolean(false)), Some(CqlValue::BigInt(99)), Some(CqlValue::Text("n1".into()))],
        )
        .unwrap();
        assert!(!row.applied);
        assert_eq!(row.text("notification").unwrap(), Some("n1"));
        assert_eq!(row.bigint("expires_at_ms").unwrap(), Some(99));
        assert_eq!(row.bigint("owner").unwrap(), None, "absent");
        assert!(row.text("expires_at_ms").is_err(), "wrong type");
        let row = LwtRow::new(
            names(&["[applied]", "state"]),
            vec![Some(CqlValue::Boolean(false)), Some(CqlValue::TinyInt(2))],
        )
        .unwrap();
        assert_eq!(row.tinyint("state").unwrap(), Some(2));
        assert!(row.bigint("state").is_err(), "wrong type");

        // Cassandra, applied: only [applied].
        let row = LwtRow::new(names(&["[applied]"]), vec![Some(CqlValue::Boolean(true))]).unwrap();
        assert!(row.applied);
        assert!(LwtRow::new(names(&["owner"]), vec![None]).is_err());
        assert!(LwtRow::new(names(&["[applied]"]), vec![Some(CqlValue::Int(1))]).is_err());
        assert!(LwtRow::new(names(&["[applied]"]), vec![]).is_err());
    }
}
