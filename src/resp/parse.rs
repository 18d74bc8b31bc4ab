//! Request framing: RESP multibulk (`*N\r\n$len\r\narg\r\n…`, what every client library sends)
//! and inline commands (`INCR k\r\n`, what telnet users type), with Redis's exact protocol
//! error messages (networking.c).
//!
//! Hand-written rather than taken from the `redis-protocol` crate on purpose: requests are only
//! flat arrays of bulk strings, and we need what that crate's decoder cannot do: refuse a
//! declared length over our limit as soon as its header arrives (the crate waits for the bytes),
//! bound the bytes buffered for one request, and accept inline commands.

use bytes::{Buf, Bytes, BytesMut};

/// Most arguments in one command (Redis allows 1M; we keep requests small).
pub const MAX_ARGS: i64 = 100_000;
/// Longest bulk argument: a value may be 1 MiB.
pub const MAX_BULK: i64 = crate::config::MAX_VALUE_BYTES as i64;
/// Most bytes one multibulk request may declare in all.
pub const MAX_REQUEST: usize = 16 << 20;
/// Longest inline command, and longest header line (Redis's PROTO_INLINE_MAX_SIZE).
pub const MAX_INLINE: usize = 64 * 1024;

/// A protocol error: the reply is `-ERR Protocol error: <msg>` and the connection closes.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Takes the next complete command off the front of `buf`. `Ok(None)` means more bytes are
/// needed. An empty command (`*0`, a blank inline line) yields `Some(vec![])`.
pub fn next(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'*' {
        multibulk(buf)
    } else {
        inline(buf)
    }
}

fn err<T>(m: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(m.into()))
}

/// Position of the `\r\n` ending the line that starts at `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn multibulk(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(end) = line_end(buf, 1) else {
        if buf.len() > MAX_INLINE {
            return err("too big mbulk count string");
        }
        return Ok(None);
    };
    let count = match crate::value::parse_int(&buf[1..end]) {
        Some(n) if n <= MAX_ARGS => n,
        _ => return err("invalid multibulk length"),
    };
    if count <= 0 {
        buf.advance(end + 2);
        return Ok(Some(Vec::new()));
    }
    // First pass: check every header and find where the request ends, without consuming.
    let mut pos = end + 2;
    let mut spans = Vec::with_capacity(count as usize);
    let mut declared = 0usize;
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return err(format!("expected '$', got '{}'", buf[pos] as char));
        }
        let Some(e) = line_end(buf, pos + 1) else {
            if buf.len() - pos > MAX_INLINE {
                return err("too big bulk count string");
            }
            return Ok(None);
        };
        let len = match crate::value::parse_int(&buf[pos + 1..e]) {
            Some(n) if (0..=MAX_BULK).contains(&n) => n as usize,
            _ => return err("invalid bulk length"),
        };
        declared += len;
        if declared > MAX_REQUEST {
            return err(format!("request larger than {MAX_REQUEST} bytes"));
        }
        let start = e + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        spans.push((start, len));
        pos = start + len + 2;
    }
    // Whole request present: split it off and hand out zero-copy slices.
    let frame = buf.split_to(pos).freeze();
    Ok(Some(
        spans
            .into_iter()
            .map(|(s, l)| frame.slice(s..s + l))
            .collect(),
    ))
}

fn inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE {
            return err("too big inline request");
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    match split_args(line) {
        Some(args) => Ok(Some(args.into_iter().map(Bytes::from).collect())),
        None => err("unbalanced quotes in request"),
    }
}

/// Redis's `sdssplitargs`: words separated by spaces; "double quotes" with \n \r \t \b \a \\ \"
/// and \xHH escapes; 'single quotes' with \' only. A closing quote must be followed by a space
/// or the end. `None` for unbalanced quotes.
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Some(out);
        }
        let mut cur = Vec::new();
        let (mut inq, mut insq) = (false, false);
        loop {
            let c = line.get(i).copied();
            if inq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if line.get(i + 1) == Some(&b'x')
                            && hex(line.get(i + 2)).is_some()
                            && hex(line.get(i + 3)).is_some() =>
                    {
                        cur.push(
                            hex(line.get(i + 2)).unwrap() * 16 + hex(line.get(i + 3)).unwrap(),
                        );
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        cur.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return None;
                        }
                        inq = false;
                        i += 1;
                        break;
                    }
                    Some(b) => cur.push(b),
                }
            } else if insq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return None;
                        }
                        insq = false;
                        i += 1;
                        break;
                    }
                    Some(b) => cur.push(b),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if b.is_ascii_whitespace() => break,
                    Some(b'"') => inq = true,
                    Some(b'\'') => insq = true,
                    Some(b) => cur.push(b),
                }
            }
            i += 1;
        }
        debug_assert!(!inq && !insq);
        out.push(cur);
    }
}

fn hex(b: Option<&u8>) -> Option<u8> {
    (*b? as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        next(&mut BytesMut::from(input))
    }

    fn args(v: &[&str]) -> Option<Vec<Bytes>> {
        Some(
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn multibulk_and_pipelines() {
        let mut b =
            BytesMut::from(&b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n*2\r\n$3"[..]);
        assert_eq!(next(&mut b).unwrap(), args(&["INCR", "k"]));
        assert_eq!(next(&mut b).unwrap(), args(&["PING"]));
        assert_eq!(next(&mut b).unwrap(), None);
        assert_eq!(&b[..], b"*2\r\n$3");
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(parse(b"*0\r\n").unwrap(), Some(vec![]));
    }

    #[test]
    fn protocol_errors_are_redis_words() {
        let e = |b: &[u8]| parse(b).unwrap_err().0;
        assert_eq!(e(b"*abc\r\n"), "invalid multibulk length");
        assert_eq!(e(b"*1000000000\r\n"), "invalid multibulk length");
        assert_eq!(e(b"*1\r\n$999999999999\r\n"), "invalid bulk length");
        assert_eq!(e(b"*1\r\n$-5\r\n"), "invalid bulk length");
        assert_eq!(e(b"*1\r\n+OK\r\n"), "expected '$', got '+'");
        assert_eq!(e(b"SET \"a b\r\n"), "unbalanced quotes in request");
        assert_eq!(e(&[b'x'; MAX_INLINE + 1]), "too big inline request");
    }

    #[test]
    fn inline_commands() {
        assert_eq!(parse(b"incr  k\r\n").unwrap(), args(&["incr", "k"]));
        assert_eq!(
            parse(b"set k \"a b\\x41\\n\"\n").unwrap(),
            args(&["set", "k", "a bA\n"])
        );
        assert_eq!(
            parse(b"set k 'it\\'s'\r\n").unwrap(),
            args(&["set", "k", "it's"])
        );
        assert_eq!(parse(b"\r\n").unwrap(), Some(vec![]));
        assert_eq!(parse(b"incr k").unwrap(), None);
    }

    /// Random bytes and random mutations of valid requests never panic, and every result is a
    /// command, "need more", or a protocol error.
    #[test]
    fn junk_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nINCR k\r\n".to_vec();
        for i in 0..20_000 {
            let mut input = if i % 2 == 0 {
                (0..rnd() % 64).map(|_| rnd() as u8).collect::<Vec<u8>>()
            } else {
                let mut v = valid.clone();
                for _ in 0..1 + rnd() % 4 {
                    let at = (rnd() as usize) % v.len();
                    v[at] = rnd() as u8;
                }
                v
            };
            input.truncate((rnd() as usize) % (input.len() + 1));
            let mut buf = BytesMut::from(&input[..]);
            for _ in 0..8 {
                match next(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
