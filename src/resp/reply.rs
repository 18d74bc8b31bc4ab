//! Replies and their encoding in RESP2 or RESP3, and the one translation from [`Error`] to a
//! Redis error line (Redis's exact words: REDIS_SEMANTICS §1).

use crate::error::Error;

/// A reply, independent of the protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A status line such as `+PONG` or `+QUEUED`.
    Status(&'static str),
    /// A status line built at run time (a script's `{ok=…}`).
    Line(String),
    /// RESP3 boolean (`:1`/`:0` in RESP2): a script's `true`/`false` after `redis.setresp(3)`.
    Bool(bool),
    /// The null array (EXEC aborted by WATCH): `*-1` in RESP2.
    NilArray,
    /// `:n`.
    Int(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// A number already printed (Redis's `addReplyHumanLongDouble`): `,` in RESP3, a bulk string
    /// in RESP2.
    Double(Vec<u8>),
    /// The null reply: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// An array.
    Array(Vec<Reply>),
    /// A map: `%n` in RESP3, a flat array of key, value, … in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// Text that RESP3 sends as a verbatim string (`=`, format `txt`), RESP2 as a bulk string.
    Verbatim(Vec<u8>),
    /// An error line without the leading `-`, e.g. `ERR syntax error`.
    Error(String),
}

impl Reply {
    /// A bulk string from anything byte-like.
    pub fn bulk(b: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(b.as_ref().to_vec())
    }

    /// A bulk string, or nil.
    pub fn opt(b: Option<Vec<u8>>) -> Reply {
        b.map_or(Reply::Nil, Reply::Bulk)
    }

    /// `ERR <msg>`.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// Appends the header of an array of `n` elements (the same in RESP2 and RESP3), for
    /// encoding the elements one by one.
    pub fn encode_array_header(n: usize, out: &mut Vec<u8>) {
        header(out, b'*', n);
    }

    /// Appends the encoding for protocol version `proto` (2 or 3) to `out`.
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        match self {
            Reply::Ok => out.extend_from_slice(b"+OK\r\n"),
            Reply::Status(s) => line(out, b'+', s.as_bytes()),
            Reply::Line(s) => line(out, b'+', s.as_bytes()),
            Reply::Bool(b) if proto >= 3 => line(out, b'#', if *b { b"t" } else { b"f" }),
            Reply::Bool(b) => line(out, b':', if *b { b"1" } else { b"0" }),
            Reply::NilArray if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Int(n) => line(out, b':', itoa::Buffer::new().format(*n).as_bytes()),
            Reply::Bulk(b) => bulk(out, b'$', b),
            Reply::Double(d) if proto >= 3 => line(out, b',', d),
            Reply::Double(d) => bulk(out, b'$', d),
            Reply::Nil if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                header(out, b'*', items.len());
                for r in items {
                    r.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                if proto >= 3 {
                    header(out, b'%', pairs.len());
                } else {
                    header(out, b'*', pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Verbatim(b) if proto >= 3 => {
                let mut v = b"txt:".to_vec();
                v.extend_from_slice(b);
                bulk(out, b'=', &v);
            }
            Reply::Verbatim(b) => bulk(out, b'$', b),
            Reply::Error(e) => error_line(out, e.as_bytes()),
        }
    }
}

fn line(out: &mut Vec<u8>, tag: u8, s: &[u8]) {
    out.push(tag);
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

/// An error line. Errors can quote the client's own bytes (an unknown option, a subcommand), and
/// a CR or LF among them would end the line early and let the rest be read as another reply:
/// as Redis does (`addReplyErrorFormat`), each becomes a space.
fn error_line(out: &mut Vec<u8>, e: &[u8]) {
    out.push(b'-');
    out.extend(
        e.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, tag: u8, n: usize) {
    line(out, tag, itoa::Buffer::new().format(n).as_bytes());
}

fn bulk(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    header(out, tag, b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

impl From<Error> for Reply {
    fn from(e: Error) -> Reply {
        match e {
            Error::NotInteger
            | Error::Overflow
            | Error::DecrementOverflow
            | Error::NotFloat
            | Error::NanOrInfinity
            | Error::InvalidExpireTime(_)
            | Error::InvalidArgument(_)
            | Error::AlreadyExists(_) => Reply::err(e),
            // Redis's error class for "cannot persist writes".
            Error::Unavailable(m) => Reply::Error(format!("MISCONF {m}")),
            Error::Busy => Reply::Error(format!("BUSY {e}")),
            // Redis's words when its AOF write hits ENOSPC.
            Error::NoSpace => Reply::Error(
                "MISCONF Errors writing to the AOF file: No space left on device".into(),
            ),
            other => Reply::err(format!("internal error: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, proto: u8) -> String {
        let mut out = Vec::new();
        r.encode(proto, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn resp2_and_resp3() {
        assert_eq!(enc(&Reply::Nil, 2), "$-1\r\n");
        assert_eq!(enc(&Reply::Nil, 3), "_\r\n");
        assert_eq!(enc(&Reply::bulk("10.6"), 3), "$4\r\n10.6\r\n");
        let m = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(enc(&m, 2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&m, 3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::Verbatim(b"x".to_vec()), 3), "=5\r\ntxt:x\r\n");
        assert_eq!(enc(&Reply::Double(b"1.5".to_vec()), 2), "$3\r\n1.5\r\n");
        assert_eq!(enc(&Reply::Double(b"1.5".to_vec()), 3), ",1.5\r\n");
        assert_eq!(
            enc(&Reply::from(Error::NotInteger), 2),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            enc(&Reply::from(Error::InvalidExpireTime("expire")), 2),
            "-ERR invalid expire time in 'expire' command\r\n"
        );
    }

    #[test]
    fn an_error_quoting_client_bytes_stays_one_line() {
        let r = Reply::err("Unsupported option a\r\n+OK\r\n");
        assert_eq!(enc(&r, 2), "-ERR Unsupported option a  +OK  \r\n");
    }
}
