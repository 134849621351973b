//! The framing of every stored record: `[format byte][postcard bytes]`.

use serde::{Serialize, de::DeserializeOwned};

/// A type stored with a format byte, so that readers can tell its shape before decoding.
pub trait Record: Serialize + DeserializeOwned {
    /// The format byte written in front of this type's encoding. Never reuse one for a new shape.
    const FORMAT: u8;
    /// What the record is, for error messages.
    const KIND: &'static str;
}

/// Why stored bytes could not be read back as a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty {kind} record")]
    Empty { kind: &'static str },
    #[error("{kind} record has format {found}, this build reads format {expected}")]
    Format {
        kind: &'static str,
        found: u8,
        expected: u8,
    },
    #[error("corrupt {kind} record: {source}")]
    Postcard {
        kind: &'static str,
        #[source]
        source: postcard::Error,
    },
}

/// Encodes a record with its format byte.
pub fn encode<T: Record>(record: &T) -> Vec<u8> {
    let out = vec![T::FORMAT];
    // Serializing into a Vec only fails if a type's Serialize impl fails, which derived impls don't.
    match postcard::to_extend(record, out) {
        Ok(bytes) => bytes,
        Err(err) => {
            unreachable!("postcard cannot fail to serialize derived types into a Vec: {err}")
        }
    }
}

/// Decodes a record, checking its format byte.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&format, body) = bytes
        .split_first()
        .ok_or(DecodeError::Empty { kind: T::KIND })?;
    if format != T::FORMAT {
        return Err(DecodeError::Format {
            kind: T::KIND,
            found: format,
            expected: T::FORMAT,
        });
    }
    postcard::from_bytes(body).map_err(|source| DecodeError::Postcard {
        kind: T::KIND,
        source,
    })
}
