//! The bytes one session occupies in memcached: a compact, versioned binary
//! encoding of a [`Record`] plus the principal epoch it was written under.
//!
//! Memcached stores one opaque value per key and cannot update part of it,
//! so the whole record travels as one blob. The decoder is the one piece
//! that reads bytes an attacker or a bug may have shaped (a shared cache, a
//! newer deployment, a truncated write), so it never panics, never trusts a
//! length before checking it against the bytes that are left, and never
//! allocates more than the input could hold: anything wrong is a
//! [`DecodeError`], which the store reports as `StoreError::Corrupt`.
//!
//! # Format, version 1
//!
//! | field | encoding |
//! |---|---|
//! | magic | the 4 bytes `OSmc` |
//! | format version | 1 byte, `1` |
//! | flags | 1 byte: bit 0 idle deadline, bit 1 absolute deadline, bit 2 principal, bit 3 epoch; other bits must be 0 |
//! | record version | unsigned LEB128 varint |
//! | created at | u64 little-endian, milliseconds since the Unix epoch |
//! | idle deadline | u64 LE, if flag bit 0 |
//! | absolute deadline | u64 LE, if flag bit 1 |
//! | principal | varint length + UTF-8 bytes, if flag bit 2 |
//! | principal epoch | varint, if flag bit 3 |
//! | entry count | varint |
//! | entries | per entry: varint key length, UTF-8 key, varint value length, value bytes; keys strictly ascending |
//!
//! Nothing may follow the last entry. Keys are strictly ascending so that a
//! record has exactly one encoding and duplicates are impossible. A blob
//! with another format version is refused rather than guessed at; the store
//! never overwrites a blob it cannot read.

use std::collections::BTreeMap;

use offstate_core::{Deadlines, Record, Timestamp, Version};

/// The first bytes of every blob.
pub const MAGIC: [u8; 4] = *b"OSmc";

/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

const FLAG_IDLE: u8 = 1;
const FLAG_ABSOLUTE: u8 = 1 << 1;
const FLAG_PRINCIPAL: u8 = 1 << 2;
const FLAG_EPOCH: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = FLAG_IDLE | FLAG_ABSOLUTE | FLAG_PRINCIPAL | FLAG_EPOCH;

/// A decoded blob: the record and the epoch of its principal at the time
/// the principal was attached.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The session record.
    pub record: Record,
    /// The principal's epoch when it was attached (see the crate docs on
    /// revocation); `None` when the session has no principal.
    pub epoch: Option<u64>,
}

impl Envelope {
    /// An envelope from its parts.
    #[must_use]
    pub fn new(record: Record, epoch: Option<u64>) -> Self {
        Self { record, epoch }
    }
}

/// Why bytes are not a valid blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a field was complete.
    #[error("record blob is truncated (needed {needed} more bytes at offset {offset})")]
    Truncated {
        /// Where the incomplete field starts.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The blob does not start with [`MAGIC`].
    #[error("record blob does not start with the offstate magic")]
    BadMagic,
    /// The blob was written in a format this version cannot read.
    #[error("record blob has format version {0}; this build reads version {FORMAT_VERSION}")]
    UnknownFormat(u8),
    /// Flag bits this format does not define are set.
    #[error("record blob has unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// A varint is longer than ten bytes or overflows 64 bits.
    #[error("record blob has an invalid varint at offset {0}")]
    BadVarint(usize),
    /// A length is larger than the bytes that are left.
    #[error("record blob declares {declared} bytes at offset {offset} but only {left} are left")]
    BadLength {
        /// Where the length was read.
        offset: usize,
        /// The declared length.
        declared: u64,
        /// Bytes left in the input.
        left: usize,
    },
    /// A principal or data key is not UTF-8.
    #[error("record blob has invalid UTF-8 at offset {0}")]
    BadUtf8(usize),
    /// Data keys are not strictly ascending (a duplicate, or a reordering).
    #[error("record blob has data keys out of order at offset {0}")]
    KeyOrder(usize),
    /// Bytes follow the last entry.
    #[error("record blob has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Encodes a record and its principal epoch (the round trip through
/// [`decode`] is tested below and fuzzed).
#[must_use]
pub fn encode(record: &Record, epoch: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.size() + 16);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    let mut flags = 0;
    if record.deadlines.idle.is_some() {
        flags |= FLAG_IDLE;
    }
    if record.deadlines.absolute.is_some() {
        flags |= FLAG_ABSOLUTE;
    }
    if record.principal.is_some() {
        flags |= FLAG_PRINCIPAL;
    }
    if epoch.is_some() {
        flags |= FLAG_EPOCH;
    }
    out.push(flags);
    put_varint(&mut out, record.version.get());
    out.extend_from_slice(&record.created_at.as_millis().to_le_bytes());
    if let Some(idle) = record.deadlines.idle {
        out.extend_from_slice(&idle.as_millis().to_le_bytes());
    }
    if let Some(absolute) = record.deadlines.absolute {
        out.extend_from_slice(&absolute.as_millis().to_le_bytes());
    }
    if let Some(principal) = &record.principal {
        put_bytes(&mut out, principal.as_bytes());
    }
    if let Some(epoch) = epoch {
        put_varint(&mut out, epoch);
    }
    put_varint(&mut out, record.data.len() as u64);
    for (key, value) in &record.data {
        put_bytes(&mut out, key.as_bytes());
        put_bytes(&mut out, value);
    }
    out
}

/// Decodes a blob written by [`encode`].
///
/// # Errors
///
/// [`DecodeError`] for any input that is not exactly one valid blob of
/// [`FORMAT_VERSION`]; it never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let format = r.byte()?;
    if format != FORMAT_VERSION {
        return Err(DecodeError::UnknownFormat(format));
    }
    let flags = r.byte()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::UnknownFlags(flags & !KNOWN_FLAGS));
    }
    let version = Version::new(r.varint()?);
    let created_at = Timestamp::from_millis(r.u64()?);
    let idle = if flags & FLAG_IDLE != 0 {
        Some(Timestamp::from_millis(r.u64()?))
    } else {
        None
    };
    let absolute = if flags & FLAG_ABSOLUTE != 0 {
        Some(Timestamp::from_millis(r.u64()?))
    } else {
        None
    };
    let principal = if flags & FLAG_PRINCIPAL != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let epoch = if flags & FLAG_EPOCH != 0 {
        Some(r.varint()?)
    } else {
        None
    };
    let count = r.varint()?;
    let mut data = BTreeMap::new();
    let mut last: Option<String> = None;
    for _ in 0..count {
        // Each entry takes at least two bytes, so a huge count runs out of
        // input after a few iterations instead of allocating.
        let offset = r.pos;
        let key = r.string()?;
        if last.as_ref().is_some_and(|prev| *prev >= key) {
            return Err(DecodeError::KeyOrder(offset));
        }
        let value = r.bytes()?.to_vec();
        last = Some(key.clone());
        data.insert(key, value);
    }
    if r.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - r.pos));
    }
    let mut deadlines = Deadlines::none();
    deadlines.idle = idle;
    deadlines.absolute = absolute;
    let mut record = Record::new(created_at, deadlines);
    record.version = version;
    record.principal = principal;
    record.data = data;
    Ok(Envelope { record, epoch })
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        match end.and_then(|end| self.bytes.get(self.pos..end)) {
            Some(slice) => {
                self.pos += n;
                Ok(slice)
            }
            None => Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - self.left(),
            }),
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(raw))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let part = u64::from(byte & 0x7f);
            // The tenth byte may only carry the one remaining bit.
            if shift == 63 && part > 1 {
                return Err(DecodeError::BadVarint(start));
            }
            n |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError::BadVarint(start))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let offset = self.pos;
        let declared = self.varint()?;
        let left = self.left();
        match usize::try_from(declared) {
            Ok(len) if len <= left => self.take(len),
            _ => Err(DecodeError::BadLength {
                offset,
                declared,
                left,
            }),
        }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let offset = self.pos;
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut record = Record::new(
            Timestamp::from_millis(1_700_000_000_123),
            Deadlines::idle_at(Timestamp::from_millis(1_700_000_360_000))
                .with_absolute_at(Timestamp::from_millis(1_700_086_400_000)),
        );
        record.version = Version::new(300);
        record.principal = Some("alice@example.com".into());
        record.data.insert("cart".into(), b"[1,2,3]".to_vec());
        record.data.insert("empty".into(), Vec::new());
        record.data.insert("lang".into(), b"\"en\"".to_vec());
        record
            .data
            .insert("\u{e9}t\u{e9}".into(), vec![0, 255, 13, 10]);
        record
    }

    #[test]
    fn round_trips_every_field() {
        let record = sample();
        let blob = encode(&record, Some(u64::MAX));
        let back = decode(&blob).unwrap();
        assert_eq!(back.record, record);
        assert_eq!(back.epoch, Some(u64::MAX));
    }

    #[test]
    fn round_trips_a_minimal_record() {
        let record = Record::new(Timestamp::from_millis(0), Deadlines::default());
        let blob = encode(&record, None);
        // magic + format + flags + version + created_at + count
        assert_eq!(blob.len(), 4 + 1 + 1 + 1 + 8 + 1);
        let back = decode(&blob).unwrap();
        assert_eq!(back, Envelope::new(record, None));
    }

    #[test]
    fn encoding_is_compact() {
        let record = sample();
        let blob = encode(&record, Some(7));
        assert!(
            blob.len() <= record.size(),
            "{} > {}",
            blob.len(),
            record.size()
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = encode(&sample(), Some(42));
        for len in 0..blob.len() {
            assert!(
                decode(&blob[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut blob = encode(&sample(), None);
        blob.push(0);
        assert_eq!(decode(&blob), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn wrong_magic_format_and_flags_are_errors() {
        let blob = encode(&sample(), None);
        let mut bad = blob.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(DecodeError::BadMagic));
        let mut bad = blob.clone();
        bad[4] = 2;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownFormat(2)));
        let mut bad = blob;
        bad[5] |= 0x80;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownFlags(0x80)));
        assert!(decode(b"").is_err());
        assert!(decode(b"this is not a session record").is_err());
    }

    #[test]
    fn huge_lengths_and_counts_do_not_allocate_or_panic() {
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC);
        blob.push(FORMAT_VERSION);
        blob.push(FLAG_PRINCIPAL);
        put_varint(&mut blob, 1);
        blob.extend_from_slice(&0u64.to_le_bytes());
        put_varint(&mut blob, u64::MAX);
        assert!(matches!(decode(&blob), Err(DecodeError::BadLength { .. })));

        let mut blob = encode(
            &Record::new(Timestamp::from_millis(0), Deadlines::default()),
            None,
        );
        blob.pop();
        put_varint(&mut blob, u64::MAX);
        assert!(matches!(decode(&blob), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn overlong_varints_are_errors() {
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC);
        blob.push(FORMAT_VERSION);
        blob.push(0);
        blob.extend_from_slice(&[0xff; 11]);
        assert_eq!(decode(&blob), Err(DecodeError::BadVarint(6)));
        let mut blob = blob[..6].to_vec();
        blob.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(decode(&blob), Err(DecodeError::BadVarint(6)));
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            let mut r = Reader {
                bytes: &out,
                pos: 0,
            };
            assert_eq!(r.varint().unwrap(), n);
            assert_eq!(r.pos, out.len());
        }
    }

    #[test]
    fn invalid_utf8_and_key_order_are_errors() {
        let mut record = Record::new(Timestamp::from_millis(0), Deadlines::default());
        record.data.insert("a".into(), b"1".to_vec());
        record.data.insert("b".into(), b"2".to_vec());
        let blob = encode(&record, None);
        // Entries start after magic, format, flags, version (1) and created_at (8), count (1).
        let entries = 4 + 1 + 1 + 1 + 8 + 1;
        let mut bad = blob.clone();
        bad[entries + 1] = 0xff;
        assert!(matches!(decode(&bad), Err(DecodeError::BadUtf8(_))));
        let mut bad = blob;
        // Rename "b" to "a": a duplicate key.
        let second = entries + 4;
        bad[second + 1] = b'a';
        assert!(matches!(decode(&bad), Err(DecodeError::KeyOrder(_))));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        // A small deterministic xorshift; the real fuzzing comes later.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = encode(&sample(), Some(3));
        for round in 0..20_000 {
            let mut blob = if round % 2 == 0 {
                valid.clone()
            } else {
                let len = (next() % 64) as usize;
                let mut b = MAGIC.to_vec();
                b.push(FORMAT_VERSION);
                b.extend((0..len).map(|_| next() as u8));
                b
            };
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                if blob.is_empty() {
                    break;
                }
                let at = (next() % blob.len() as u64) as usize;
                blob[at] = next() as u8;
            }
            if let Ok(decoded) = decode(&blob) {
                // Whatever decodes re-encodes to something that decodes the same.
                let again = encode(&decoded.record, decoded.epoch);
                assert_eq!(decode(&again).unwrap(), decoded);
            }
        }
    }
}
