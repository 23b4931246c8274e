//! Encoding of records on internal topics: one version byte, then JSON.
//!
//! The version byte lets a later release change the body (to a binary form)
//! while still reading what an older release left in a topic.

use serde::Serialize;
use serde::de::DeserializeOwned;

const V1_JSON: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unknown record encoding version {0}")]
    UnknownVersion(u8),
    #[error("malformed record: {0}")]
    Malformed(#[from] serde_json::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(V1_JSON);
    // Serializing our own types to a Vec cannot fail (no maps with non-string keys).
    serde_json::to_writer(&mut out, value).expect("internal record types serialize to JSON");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&V1_JSON, body)) => Ok(serde_json::from_slice(body)?),
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_versions() {
        let bytes = encode(&vec![1, 2, 3]);
        assert_eq!(decode::<Vec<i32>>(&bytes).unwrap(), vec![1, 2, 3]);
        assert!(matches!(decode::<Vec<i32>>(&[9, b'1']), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(decode::<Vec<i32>>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<Vec<i32>>(&[1, b'{']), Err(CodecError::Malformed(_))));
    }
}
