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

/// A connection's parse progress, kept between reads: a request that arrives in many pieces is
/// scanned once, not again from its start each time more of it comes in. Offsets are into the
/// connection's buffer, whose front does not move until a whole request is taken off it.
#[derive(Debug, Default)]
pub struct Parser {
    /// The multibulk request whose `*N` header has been read.
    req: Option<Partial>,
    /// Bytes of the buffer already searched for the end of the current line, in vain.
    searched: usize,
    /// Bytes looked at so far (so tests can check that parsing stays linear in the input).
    scanned: u64,
}

#[derive(Debug)]
struct Partial {
    count: usize,
    /// Where the next `$len` header (or the pending body) starts.
    pos: usize,
    /// The arguments found so far: (start, len) in the buffer.
    spans: Vec<(usize, usize)>,
    /// A `$len` header read whose body has not fully arrived: (start, len).
    pending: Option<(usize, usize)>,
    declared: usize,
}

impl Parser {
    /// Takes the next complete command off the front of `buf`. `Ok(None)` means more bytes are
    /// needed (`buf` must then only grow at its end before the next call). An empty command
    /// (`*0`, a blank inline line) yields `Some(vec![])`. After an error, start afresh.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let r = if self.req.is_some() || buf[0] == b'*' {
            self.multibulk(buf)
        } else {
            self.inline(buf)
        };
        if !matches!(r, Ok(None)) {
            self.req = None;
            self.searched = 0;
        }
        r
    }

    /// Bytes looked at so far.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Position of the `\r\n` ending the line that starts at `from`, resuming where the last
    /// search of this line stopped.
    fn line_end(&mut self, buf: &[u8], from: usize) -> Option<usize> {
        // Back one byte: a `\r` may have been the last byte searched.
        let at = from.max(self.searched.saturating_sub(1));
        match buf[at..].windows(2).position(|w| w == b"\r\n") {
            Some(p) => {
                self.scanned += p as u64 + 2;
                self.searched = 0;
                Some(at + p)
            }
            None => {
                self.scanned += buf.len().saturating_sub(at) as u64;
                self.searched = buf.len();
                None
            }
        }
    }

    fn multibulk(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        if self.req.is_none() {
            let Some(end) = self.line_end(buf, 1) else {
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
            self.req = Some(Partial {
                count: count as usize,
                pos: end + 2,
                spans: Vec::with_capacity((count as usize).min(1024)),
                pending: None,
                declared: 0,
            });
        }
        // Check every header and find where the request ends, without consuming.
        loop {
            let req = self.req.as_mut().expect("a request in progress");
            if let Some((start, len)) = req.pending {
                if buf.len() < start + len + 2 {
                    return Ok(None);
                }
                req.spans.push((start, len));
                req.pos = start + len + 2;
                req.pending = None;
            }
            if req.spans.len() == req.count {
                break;
            }
            let pos = req.pos;
            if pos >= buf.len() {
                return Ok(None);
            }
            if buf[pos] != b'$' {
                return err(format!("expected '$', got '{}'", buf[pos] as char));
            }
            let Some(e) = self.line_end(buf, pos + 1) else {
                if buf.len() - pos > MAX_INLINE {
                    return err("too big bulk count string");
                }
                return Ok(None);
            };
            let len = match crate::value::parse_int(&buf[pos + 1..e]) {
                Some(n) if (0..=MAX_BULK).contains(&n) => n as usize,
                _ => return err("invalid bulk length"),
            };
            let req = self.req.as_mut().expect("a request in progress");
            req.declared += len;
            if req.declared > MAX_REQUEST {
                return err(format!("request larger than {MAX_REQUEST} bytes"));
            }
            req.pending = Some((e + 2, len));
        }
        // Whole request present: split it off and hand out zero-copy slices.
        let req = self.req.take().expect("a request in progress");
        let frame = buf.split_to(req.pos).freeze();
        Ok(Some(
            req.spans
                .into_iter()
                .map(|(s, l)| frame.slice(s..s + l))
                .collect(),
        ))
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let at = self.searched;
        let Some(nl) = buf[at..].iter().position(|&b| b == b'\n').map(|p| at + p) else {
            if buf.len() > MAX_INLINE {
                return err("too big inline request");
            }
            self.scanned += (buf.len() - at) as u64;
            self.searched = buf.len();
            return Ok(None);
        };
        self.scanned += (nl + 1 - at) as u64;
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
}

/// Parses one command from a buffer with no earlier progress (tests, benchmarks).
pub fn next(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    Parser::default().next(buf)
}

fn err<T>(m: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(m.into()))
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

    /// A request that arrives a byte at a time, or in reads of any size, is looked at a
    /// bounded number of times per byte (it used to be re-parsed from its start on every read:
    /// quadratic in the number of arguments).
    #[test]
    fn a_request_in_pieces_is_scanned_once() {
        let mut req = b"*100000\r\n".to_vec();
        for i in 0..100_000 {
            req.extend_from_slice(format!("$1\r\n{}\r\n", i % 10).as_bytes());
        }
        for piece in [1, 7, 16 * 1024] {
            let mut p = Parser::default();
            let mut buf = BytesMut::new();
            let mut got = None;
            for chunk in req.chunks(piece) {
                buf.extend_from_slice(chunk);
                if let Some(args) = p.next(&mut buf).unwrap() {
                    got = Some(args);
                }
            }
            let args = got.expect("the whole request parses");
            assert_eq!(args.len(), 100_000);
            assert_eq!(&args[99_999][..], b"9");
            assert!(buf.is_empty());
            assert!(
                p.scanned() <= 2 * req.len() as u64,
                "pieces of {piece}: scanned {} bytes for a {}-byte request",
                p.scanned(),
                req.len()
            );
        }
        // An inline command typed slowly, too.
        let mut p = Parser::default();
        let mut buf = BytesMut::new();
        let line = format!("SET k {}\r\n", "v".repeat(60_000));
        for b in line.as_bytes() {
            buf.extend_from_slice(&[*b]);
            if let Some(args) = p.next(&mut buf).unwrap() {
                assert_eq!(args.len(), 3);
            }
        }
        assert!(p.scanned() <= 2 * line.len() as u64, "{}", p.scanned());
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
