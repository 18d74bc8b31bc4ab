//! The keyspace commands: SCAN (cursor, MATCH, COUNT, TYPE), KEYS (Redis's glob rules), TYPE,
//! RENAME / RENAMENX (the TTL moves with the value), COPY, TOUCH, RANDOMKEY, and FLUSHDB /
//! FLUSHALL (one durable record; ASYNC and SYNC both finish before the reply, as one
//! database has nothing to do in the background). Argument
//! parsing and replies here; the reads and writes are the engine's (`engine::keyspace`).
//! Every value is a string, so TYPE answers `string` or `none`.

use bytes::Bytes;

use super::command::{int_arg, syntax};
use super::reply::Reply;
use crate::engine::Tx;
use crate::error::Result;

/// A parsed keyspace command.
#[derive(Debug)]
pub enum Cmd {
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        /// TYPE: `false` when it names a type other than string (nothing matches).
        strings: bool,
    },
    Keys(Bytes),
    Type(Bytes),
    Rename {
        src: Bytes,
        dst: Bytes,
        nx: bool,
    },
    Copy {
        src: Bytes,
        dst: Bytes,
        replace: bool,
    },
    Touch(Vec<Bytes>),
    RandomKey,
    Flush,
}

/// Parses a keyspace command (arity checked); `Ok(None)` if `name` is not one.
pub fn prepare(name: &str, args: &[Bytes]) -> std::result::Result<Option<Cmd>, Reply> {
    Ok(Some(match name {
        "scan" => parse_scan(args)?,
        "keys" => Cmd::Keys(args[1].clone()),
        "type" => Cmd::Type(args[1].clone()),
        "rename" | "renamenx" => Cmd::Rename {
            src: args[1].clone(),
            dst: args[2].clone(),
            nx: name == "renamenx",
        },
        "copy" => parse_copy(args)?,
        "touch" => Cmd::Touch(args[1..].to_vec()),
        "randomkey" => Cmd::RandomKey,
        "flushdb" | "flushall" => {
            match args.get(1).map(|a| a.to_ascii_lowercase()) {
                None => {}
                Some(a) if (a == b"async" || a == b"sync") && args.len() == 2 => {}
                Some(_) => return Err(syntax()),
            }
            Cmd::Flush
        }
        _ => return Ok(None),
    }))
}

fn parse_scan(args: &[Bytes]) -> std::result::Result<Cmd, Reply> {
    // As Redis's strtoul: a negative cursor wraps around.
    let text = std::str::from_utf8(&args[1]).unwrap_or("");
    let cursor = text
        .parse::<u64>()
        .ok()
        .or_else(|| text.parse::<i64>().ok().map(|n| n as u64))
        .ok_or_else(|| Reply::err("invalid cursor"))?;
    let (mut pattern, mut count, mut strings) = (None, 10usize, true);
    let mut i = 2;
    while i < args.len() {
        let Some(v) = args.get(i + 1) else {
            return Err(syntax());
        };
        match args[i].to_ascii_lowercase().as_slice() {
            b"match" => pattern = Some(v.clone()),
            b"count" => {
                let n = int_arg(v)?;
                if n < 1 {
                    return Err(syntax());
                }
                count = n.min(1 << 20) as usize;
            }
            b"type" => strings = v.eq_ignore_ascii_case(b"string"),
            _ => return Err(syntax()),
        }
        i += 2;
    }
    Ok(Cmd::Scan {
        cursor,
        pattern,
        count,
        strings,
    })
}

fn parse_copy(args: &[Bytes]) -> std::result::Result<Cmd, Reply> {
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        match args[i].to_ascii_lowercase().as_slice() {
            b"replace" => replace = true,
            b"db" if i + 1 < args.len() => {
                if int_arg(&args[i + 1])? != 0 {
                    return Err(Reply::err("DB index is out of range"));
                }
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    Ok(Cmd::Copy {
        src: args[1].clone(),
        dst: args[2].clone(),
        replace,
    })
}

impl Cmd {
    /// True if it changes every key, so it must run alone (`Engine::run_exclusive`).
    pub fn runs_alone(&self) -> bool {
        matches!(self, Cmd::Flush)
    }

    /// The keys to lock: none for the whole-range reads.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Cmd::Type(k) => vec![k],
            Cmd::Rename { src, dst, .. } | Cmd::Copy { src, dst, .. } => vec![src, dst],
            Cmd::Touch(ks) => ks.iter().map(|k| &k[..]).collect(),
            Cmd::Scan { .. } | Cmd::Keys(_) | Cmd::RandomKey | Cmd::Flush => Vec::new(),
        }
    }

    /// Runs the command in `tx`.
    pub fn exec(&self, tx: &mut Tx<'_>) -> Result<Reply> {
        Ok(match self {
            Cmd::Scan {
                cursor,
                pattern,
                count,
                strings,
            } => {
                let (next, keys) = tx.scan(*cursor, *count)?;
                let keys = keys
                    .into_iter()
                    .filter(|k| *strings && pattern.as_ref().is_none_or(|p| glob(p, k)))
                    .map(Reply::Bulk)
                    .collect();
                Reply::Array(vec![
                    Reply::Bulk(next.to_string().into_bytes()),
                    Reply::Array(keys),
                ])
            }
            Cmd::Keys(p) => Reply::Array(
                tx.all_keys(|k| glob(p, k))?
                    .into_iter()
                    .map(Reply::Bulk)
                    .collect(),
            ),
            Cmd::Type(k) => Reply::Status(if tx.entry(k)?.is_some() {
                "string"
            } else {
                "none"
            }),
            Cmd::Rename { src, dst, nx } => {
                let done = tx.rename(src, dst, *nx)?;
                if *nx {
                    Reply::Int(i64::from(done))
                } else {
                    Reply::Ok
                }
            }
            Cmd::Copy { src, dst, replace } => Reply::Int(i64::from(tx.copy(src, dst, *replace)?)),
            Cmd::Touch(ks) => {
                Reply::Int(tx.exists(&ks.iter().map(|k| &k[..]).collect::<Vec<_>>())?)
            }
            Cmd::RandomKey => Reply::opt(tx.random_key()?),
            Cmd::Flush => {
                tx.clear()?;
                Reply::Ok
            }
        })
    }
}

/// Redis's glob (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, and `\` escaping the
/// next byte; case-sensitive.
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative, with one backtrack point per `*` (the last one seen), so a hostile pattern
    // costs O(len(p) * len(s)) at worst, never exponential time.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi < p.len() && p[pi] == b'*' {
                        pi += 1;
                    }
                    if pi == p.len() {
                        return true;
                    }
                    star = Some((pi, si));
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    let (matched, next) = class(p, pi, s[si]);
                    if matched {
                        pi = next;
                        si += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `p[i] == b'['`: (matched, index after `]`).
fn class(p: &[u8], i: usize, c: u8) -> (bool, usize) {
    let mut j = i + 1;
    let not = p.get(j) == Some(&b'^');
    if not {
        j += 1;
    }
    let mut matched = false;
    loop {
        match p.get(j) {
            // An unclosed class ends at the pattern's end, as in Redis.
            None => break,
            Some(b']') => {
                j += 1;
                break;
            }
            Some(b'\\') if j + 1 < p.len() => {
                matched |= p[j + 1] == c;
                j += 2;
            }
            Some(&a) if p.get(j + 1) == Some(&b'-') && j + 2 < p.len() => {
                let b = p[j + 2];
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                matched |= (lo..=hi).contains(&c);
                j += 3;
            }
            Some(&a) => {
                matched |= a == c;
                j += 1;
            }
        }
    }
    (matched != not, j)
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_follows_redis() {
        let m = |p: &str, s: &str| glob(p.as_bytes(), s.as_bytes());
        assert!(m("*", "anything") && m("*", ""));
        assert!(m("h?llo", "hello") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello") && m("h*llo", "hllo"));
        assert!(m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"));
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("user:*:count", "user:42:count") && !m("user:*:count", "user:42:sum"));
        assert!(!m("abc", "abcd") && !m("abcd", "abc"));
        assert!(m("*a*a*a*a*a*b", "aaaaaaaaaaaaaaaab"));
        assert!(!m("*a*a*a*a*a*a*a*a*a*b", &"a".repeat(5000)));
    }
}
