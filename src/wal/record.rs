//! WAL records and their framing.
//!
//! A record is one atomic change: every op in it is applied together, on replay as live. Ops are
//! *physical* (the resulting value, never "add 5"), so applying a record twice gives the same
//! state as applying it once: replay is idempotent whatever sled had persisted.
//!
//! Frame, little-endian:
//! ```text
//! +----------+--------------+---------------+------------------+
//! | len: u32 | len_crc: u32 | body_crc: u32 | body: [u8; len]  |
//! +----------+--------------+---------------+------------------+
//! len_crc  = crc32c(len as 4 LE bytes)   -- so a damaged length is detected, not followed
//! body_crc = crc32c(body)
//! ```
//! Body:
//! ```text
//! lsn: u64 | op_count: u32 | op*
//! op = 1:u8 key_len:u32 key value_len:u32 value deadline_ms:i64   (Put; deadline 0 = no TTL)
//!    | 2:u8 key_len:u32 key                                        (Delete)
//!    | 3:u8 id_len:u32 id created_ms:i64 entry_len:u32 entry       (Request: a request id,
//!                                                                   when it was first used,
//!                                                                   and what it answered)
//!    | 4:u8                                                        (Clear: every key goes;
//!                                                                   FLUSHDB / FLUSHALL)
//! ```

use crate::error::{Error, Result};

/// Bytes before the body: len, len_crc, body_crc.
pub const FRAME_HEADER: usize = 12;
/// Largest body a reader accepts; anything larger is damage, not data. The writer refuses to
/// append a larger one ([`check_size`]), so every record written can be read back.
pub const MAX_BODY: usize = 64 << 20;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_REQUEST: u8 = 3;
const TAG_CLEAR: u8 = 4;

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store `value` under `key`; `deadline_ms` is an absolute unix-ms expiry, `None` for none.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        deadline_ms: Option<i64>,
    },
    /// Remove `key`.
    Delete { key: Vec<u8> },
    /// Remember request id `id` for exactly-once retries: `entry` is what the engine needs to
    /// answer a retry (its encoding belongs to `engine::dedupe`). Stored apart from the keys,
    /// so an id never collides with a key.
    Request {
        id: Vec<u8>,
        created_ms: i64,
        entry: Vec<u8>,
    },
    /// Remove every key (FLUSHDB, FLUSHALL); request ids stay. Ops after it in the same
    /// record apply to the empty keyspace.
    Clear,
}

impl Op {
    /// The key this op changes; for a `Request`, its id (a namespace of its own: check
    /// [`Op::is_request`] before comparing it with keys); empty for `Clear` (check
    /// [`Op::is_clear`]).
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
            Op::Request { id, .. } => id,
            Op::Clear => &[],
        }
    }

    /// True for a request-id op, which changes no key.
    pub fn is_request(&self) -> bool {
        matches!(self, Op::Request { .. })
    }

    /// True for `Clear`, which changes every key.
    pub fn is_clear(&self) -> bool {
        matches!(self, Op::Clear)
    }

    /// A request-id op's (id, created_ms, entry).
    pub fn as_request(&self) -> Option<(&[u8], i64, &[u8])> {
        match self {
            Op::Request {
                id,
                created_ms,
                entry,
            } => Some((id, *created_ms, entry)),
            _ => None,
        }
    }

    /// Bytes this op takes in a record body.
    pub fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => 1 + 4 + key.len() + 4 + value.len() + 8,
            Op::Delete { key } => 1 + 4 + key.len(),
            Op::Request { id, entry, .. } => 1 + 4 + id.len() + 8 + 4 + entry.len(),
            Op::Clear => 1,
        }
    }

    /// Appends this op's encoding (as in a record body) to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Op::Put {
                key,
                value,
                deadline_ms,
            } => {
                buf.push(TAG_PUT);
                put_bytes(buf, key);
                put_bytes(buf, value);
                buf.extend_from_slice(&deadline_ms.unwrap_or(0).to_le_bytes());
            }
            Op::Delete { key } => {
                buf.push(TAG_DELETE);
                put_bytes(buf, key);
            }
            Op::Request {
                id,
                created_ms,
                entry,
            } => {
                buf.push(TAG_REQUEST);
                put_bytes(buf, id);
                buf.extend_from_slice(&created_ms.to_le_bytes());
                put_bytes(buf, entry);
            }
            Op::Clear => buf.push(TAG_CLEAR),
        }
    }

    /// Decodes ops encoded one after another by [`Op::encode`], filling `b` exactly.
    pub fn decode_all(b: &[u8]) -> Result<Vec<Op>, String> {
        let mut r = Reader(b);
        let mut ops = Vec::new();
        while !r.0.is_empty() {
            ops.push(r.op()?);
        }
        Ok(ops)
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Log sequence number: contiguous, starting at 1, monotonic across restarts.
    pub lsn: u64,
    /// The changes, applied atomically.
    pub ops: Vec<Op>,
}

/// Size of the body of a record holding `ops`.
pub fn body_len(ops: &[Op]) -> usize {
    8 + 4 + ops.iter().map(Op::encoded_len).sum::<usize>()
}

/// Refuses `ops` as one record if its body would exceed [`MAX_BODY`]: the reader would take
/// such a record for damage and refuse to start. Checked before anything is applied.
pub fn check_size(ops: &[Op]) -> Result<()> {
    let n = body_len(ops);
    if n > MAX_BODY {
        return Err(too_large(n));
    }
    Ok(())
}

/// The error for a change of `n` bytes as one record, over [`MAX_BODY`].
pub fn too_large(n: usize) -> Error {
    Error::InvalidArgument(format!(
        "the change is {n} bytes as one write-ahead-log record; the maximum for one command or \
         transaction is {MAX_BODY} bytes"
    ))
}

/// Appends the framed record `(lsn, ops)` to `buf` without an intermediate allocation.
/// The caller has checked the size ([`check_size`]).
pub fn encode(buf: &mut Vec<u8>, lsn: u64, ops: &[Op]) {
    let body_len = body_len(ops);
    assert!(
        body_len <= MAX_BODY,
        "record of {body_len} bytes over MAX_BODY"
    );
    let len = body_len as u32;
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&len.to_le_bytes()).to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // body_crc, patched below
    let body_start = buf.len();
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        op.encode(buf);
    }
    debug_assert_eq!(buf.len() - body_start, body_len);
    let crc = crc32c::crc32c(&buf[body_start..]);
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

/// Where to cut a buffer of whole frames (as the writer holds them) after at least `at` bytes:
/// the end of the first frame that reaches `at`, and that frame's LSN. `None` if the buffer
/// ends there anyway.
pub fn split_point(buf: &[u8], at: usize) -> Option<(usize, u64)> {
    let mut off = 0;
    while off + FRAME_HEADER + 8 <= buf.len() {
        let len = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let lsn_at = off + FRAME_HEADER;
        let lsn = u64::from_le_bytes(buf[lsn_at..lsn_at + 8].try_into().unwrap());
        off += FRAME_HEADER + len;
        if off >= at {
            return (off < buf.len()).then_some((off, lsn));
        }
    }
    None
}

/// What the reader found at one offset.
#[derive(Debug)]
pub enum Frame {
    /// A whole, checked record and its framed size.
    Record(Record, usize),
    /// Fewer bytes remain than the header, or the body runs past the end: an unfinished write.
    Incomplete,
    /// The header's length check failed.
    BadHeader,
    /// The header is sound but the body's checksum or layout is not; `usize` is the framed size.
    BadBody(String, usize),
}

/// Reads the frame at the start of `b`.
pub fn decode(b: &[u8]) -> Frame {
    if b.len() < FRAME_HEADER {
        return Frame::Incomplete;
    }
    let len_bytes: [u8; 4] = b[0..4].try_into().unwrap();
    let len_crc = u32::from_le_bytes(b[4..8].try_into().unwrap());
    if crc32c::crc32c(&len_bytes) != len_crc {
        return Frame::BadHeader;
    }
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_BODY {
        return Frame::BadHeader;
    }
    let total = FRAME_HEADER + len;
    if b.len() < total {
        return Frame::Incomplete;
    }
    let body_crc = u32::from_le_bytes(b[8..12].try_into().unwrap());
    let body = &b[FRAME_HEADER..total];
    if crc32c::crc32c(body) != body_crc {
        return Frame::BadBody("checksum mismatch".into(), total);
    }
    match decode_body(body) {
        Ok(r) => Frame::Record(r, total),
        Err(m) => Frame::BadBody(m, total),
    }
}

fn decode_body(body: &[u8]) -> Result<Record, String> {
    let mut r = Reader(body);
    let lsn = r.u64()?;
    let n = r.u32()? as usize;
    let mut ops = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        ops.push(r.op()?);
    }
    if !r.0.is_empty() {
        return Err("trailing bytes in record".into());
    }
    Ok(Record { lsn, ops })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("record body too short".into());
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn op(&mut self) -> Result<Op, String> {
        Ok(match self.u8()? {
            TAG_PUT => {
                let key = self.bytes()?;
                let value = self.bytes()?;
                let d = self.u64()? as i64;
                Op::Put {
                    key,
                    value,
                    deadline_ms: (d != 0).then_some(d),
                }
            }
            TAG_DELETE => Op::Delete { key: self.bytes()? },
            TAG_REQUEST => Op::Request {
                id: self.bytes()?,
                created_ms: self.u64()? as i64,
                entry: self.bytes()?,
            },
            TAG_CLEAR => Op::Clear,
            t => return Err(format!("unknown op tag {t}")),
        })
    }
}

/// Turns a body-level failure into the error startup reports.
pub fn corruption(segment: &str, offset: u64, what: &str) -> Error {
    Error::Corruption(format!(
        "WAL segment {segment} offset {offset}: {what}; refusing to start (the record is not at \
         the tail, so skipping it would silently lose acknowledged writes)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ops = vec![
            Op::Put {
                key: b"a".to_vec(),
                value: b"12".to_vec(),
                deadline_ms: Some(99),
            },
            Op::Delete { key: b"b".to_vec() },
            Op::Put {
                key: b"c".to_vec(),
                value: vec![],
                deadline_ms: None,
            },
            Op::Request {
                id: b"req-1".to_vec(),
                created_ms: 1_700_000_000_000,
                entry: b"answer".to_vec(),
            },
        ];
        let mut buf = Vec::new();
        encode(&mut buf, 7, &ops);
        match decode(&buf) {
            Frame::Record(r, n) => {
                assert_eq!(n, buf.len());
                assert_eq!(r, Record { lsn: 7, ops });
            }
            f => panic!("{f:?}"),
        }
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut]), Frame::Incomplete),
                "cut {cut}"
            );
        }
        buf[FRAME_HEADER + 3] ^= 1;
        assert!(matches!(decode(&buf), Frame::BadBody(..)));
        buf[1] ^= 1;
        assert!(matches!(decode(&buf), Frame::BadHeader));
    }

    #[test]
    fn split_point_cuts_after_the_frame_that_reaches_the_mark() {
        let op = |n: usize| Op::Put {
            key: b"k".to_vec(),
            value: vec![b'v'; n],
            deadline_ms: None,
        };
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for lsn in 1..=5 {
            encode(&mut buf, lsn, &[op(100)]);
            ends.push(buf.len());
        }
        assert_eq!(split_point(&buf, 1), Some((ends[0], 1)));
        assert_eq!(split_point(&buf, ends[1]), Some((ends[1], 2)));
        assert_eq!(split_point(&buf, ends[1] + 1), Some((ends[2], 3)));
        assert_eq!(split_point(&buf, ends[4]), None);
    }

    #[test]
    fn a_record_the_reader_would_refuse_is_refused_before_it_is_written() {
        let big = |n: usize| Op::Put {
            key: b"k".to_vec(),
            value: vec![b'x'; n],
            deadline_ms: None,
        };
        // Just at the limit: written, and read back.
        let at_limit = big(MAX_BODY - body_len(&[big(0)]));
        assert_eq!(body_len(std::slice::from_ref(&at_limit)), MAX_BODY);
        check_size(std::slice::from_ref(&at_limit)).unwrap();
        let mut buf = Vec::new();
        encode(&mut buf, 1, std::slice::from_ref(&at_limit));
        assert!(matches!(decode(&buf), Frame::Record(..)));
        // One byte over (70 values of 1 MiB, say): refused with the limit in the message.
        let ops: Vec<Op> = (0..70).map(|_| big(1 << 20)).collect();
        let e = check_size(&ops).unwrap_err().to_string();
        assert!(
            e.contains("the maximum for one command or transaction is 67108864 bytes"),
            "{e}"
        );
        assert!(check_size(&[big(MAX_BODY)]).is_err());
    }
}
