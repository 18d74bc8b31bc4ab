//! The command table (names, arities, key positions, as Redis 7 declares them) and the commands
//! that reach the engine: argument parsing with Redis's rules and messages ([`prepare`]), and
//! execution inside an engine [`Tx`] ([`Cmd::exec`]). Parsing errors are returned before any lock
//! is taken; execution errors leave nothing behind (see `engine::tx`).

use bytes::Bytes;

use super::reply::Reply;
use super::{keyspace, limits};
use crate::engine::{Condition, Expiry, GetEx, SetOptions, Ttl, Tx};
use crate::error::{Error, Result};
use crate::value::parse_int;

/// One row of the command table.
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: n means exactly n arguments (name included), -n at least n.
    pub arity: i64,
    /// Flags shown by COMMAND.
    pub flags: &'static [&'static str],
    /// First key, last key (-1 = the last argument), step; 0 0 0 for no keys.
    pub keys: (i64, i64, i64),
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
    }
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const R: &[&str] = &["readonly", "fast"];
const C: &[&str] = &["fast", "stale", "loading"];
const TXF: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
const EV: &[&str] = &[
    "noscript",
    "skip_monitor",
    "may_replicate",
    "no_mandatory_keys",
    "stale",
    "movablekeys",
];
const EV_RO: &[&str] = &[
    "noscript",
    "skip_monitor",
    "no_mandatory_keys",
    "stale",
    "readonly",
    "movablekeys",
];
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);
const NONE: (i64, i64, i64) = (0, 0, 0);

/// Every command Tally knows.
pub const TABLE: &[Spec] = &[
    spec("get", 2, R, ONE),
    spec("set", -3, W, ONE),
    spec("setnx", 3, WF, ONE),
    spec("setex", 4, W, ONE),
    spec("psetex", 4, W, ONE),
    spec("getset", 3, WF, ONE),
    spec("getdel", 2, WF, ONE),
    spec("getex", -2, WF, ONE),
    spec("mget", -2, R, ALL),
    spec("mset", -3, W, (1, -1, 2)),
    spec("del", -2, &["write"], ALL),
    spec("unlink", -2, &["write", "fast"], ALL),
    spec("exists", -2, R, ALL),
    spec("incr", 2, WF, ONE),
    spec("decr", 2, WF, ONE),
    spec("incrby", 3, WF, ONE),
    spec("decrby", 3, WF, ONE),
    spec("incrbyfloat", 3, WF, ONE),
    spec("expire", -3, &["write", "fast"], ONE),
    spec("pexpire", -3, &["write", "fast"], ONE),
    spec("expireat", -3, &["write", "fast"], ONE),
    spec("pexpireat", -3, &["write", "fast"], ONE),
    spec("ttl", 2, R, ONE),
    spec("pttl", 2, R, ONE),
    spec("expiretime", 2, R, ONE),
    spec("pexpiretime", 2, R, ONE),
    spec("persist", 2, &["write", "fast"], ONE),
    spec("scan", -2, &["readonly"], NONE),
    spec("keys", 2, &["readonly"], NONE),
    spec("type", 2, R, ONE),
    spec("rename", 3, &["write"], (1, 2, 1)),
    spec("renamenx", 3, WF, (1, 2, 1)),
    spec("copy", -3, W, (1, 2, 1)),
    spec("touch", -2, R, ALL),
    spec("randomkey", 1, &["readonly"], NONE),
    spec("flushdb", -1, &["write"], NONE),
    spec("flushall", -1, &["write"], NONE),
    spec("increx", -2, WF, ONE),
    spec("cl.throttle", -5, WF, ONE),
    spec("ping", -1, C, NONE),
    spec("echo", 2, C, NONE),
    spec("hello", -1, &["noscript", "loading", "stale", "fast"], NONE),
    spec("select", 2, &["loading", "stale", "fast"], NONE),
    spec("quit", -1, &["noscript", "loading", "stale", "fast"], NONE),
    spec("client", -2, &["noscript", "loading", "stale"], NONE),
    spec("command", -1, &["loading", "stale"], NONE),
    spec("info", -1, &["loading", "stale"], NONE),
    spec("dbsize", 1, R, NONE),
    spec(
        "config",
        -2,
        &["admin", "noscript", "loading", "stale"],
        NONE,
    ),
    spec("multi", 1, TXF, NONE),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        NONE,
    ),
    spec("discard", 1, TXF, NONE),
    spec("watch", -2, TXF, ALL),
    spec("unwatch", 1, TXF, NONE),
    spec("eval", -3, EV, NONE),
    spec("evalsha", -3, EV, NONE),
    spec("eval_ro", -3, EV_RO, NONE),
    spec("evalsha_ro", -3, EV_RO, NONE),
    spec("script", -2, &["noscript"], NONE),
];

/// The table row for `name` (already lower-case).
pub fn lookup(name: &str) -> Option<&'static Spec> {
    lookup_index(name).map(|i| &TABLE[i])
}

/// The index in [`TABLE`] of `name`'s row (INFO commandstats counts by it).
pub fn lookup_index(name: &str) -> Option<usize> {
    TABLE.iter().position(|s| s.name == name)
}

impl Spec {
    /// True if `argc` arguments (name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity > 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }
}

/// `ERR wrong number of arguments for '<name>' command`.
pub fn arity_error(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

pub(super) fn syntax() -> Reply {
    Reply::err("syntax error")
}

pub(super) fn int_arg(b: &[u8]) -> std::result::Result<i64, Reply> {
    parse_int(b).ok_or_else(|| Reply::from(Error::NotInteger))
}

/// How a TTL reply is expressed.
#[derive(Debug, Clone, Copy)]
pub enum TtlKind {
    Ttl,
    Pttl,
    ExpireTime,
    PExpireTime,
}

/// What SET-family commands reply.
#[derive(Debug, Clone, Copy)]
pub enum SetReply {
    /// SET: OK, or nil when NX/XX refused; with GET, the old value.
    Set,
    /// SETNX: 1 or 0.
    SetNx,
    /// SETEX/PSETEX: OK.
    Ok,
    /// GETSET: the old value.
    Old,
}

/// An expiry argument of GETEX, parsed only once the key is known to exist (Redis returns nil
/// for a missing key before it looks at the value).
#[derive(Debug, Clone)]
pub struct RawExpiry {
    value: Bytes,
    seconds: bool,
    absolute: bool,
}

/// A parsed engine command.
#[derive(Debug)]
pub enum Cmd {
    Get(Bytes),
    Set {
        key: Bytes,
        value: Bytes,
        opts: SetOptions,
        reply: SetReply,
        cmd: &'static str,
    },
    IncrBy(Bytes, i64),
    IncrByFloat(Bytes, Bytes),
    GetDel(Bytes),
    GetEx(Bytes, Option<RawExpiry>, bool),
    Del(Vec<Bytes>),
    Exists(Vec<Bytes>),
    MGet(Vec<Bytes>),
    MSet(Vec<(Bytes, Bytes)>),
    Expire {
        key: Bytes,
        when: Expiry,
        cond: Condition,
        cmd: &'static str,
    },
    Ttl(Bytes, TtlKind),
    Persist(Bytes),
    /// CL.THROTTLE and INCREX (module `limits`).
    Limits(limits::Cmd),
    /// SCAN, KEYS, TYPE, RENAME, COPY, … (module `keyspace`).
    Keyspace(keyspace::Cmd),
}

/// Turns a SET-family expiry argument into an [`Expiry`]: an integer (E_INT), and for the
/// seconds forms at most `i64::MAX / 1000` (else E_EXP). The engine checks `> 0` and overflow.
pub(super) fn expiry_arg(
    v: &[u8],
    seconds: bool,
    absolute: bool,
    cmd: &'static str,
) -> Result<Expiry> {
    let n = parse_int(v).ok_or(Error::NotInteger)?;
    let ms = if seconds {
        if n > i64::MAX / 1000 || n <= 0 {
            return Err(Error::InvalidExpireTime(cmd));
        }
        n * 1000
    } else {
        n
    };
    Ok(if absolute {
        Expiry::At(ms)
    } else {
        Expiry::In(ms)
    })
}

/// Parses an engine command's arguments (`args[0]` is the name; arity already checked).
/// `Ok(None)` means `name` is not an engine command.
pub fn prepare(name: &str, args: &[Bytes]) -> std::result::Result<Option<Cmd>, Reply> {
    let key = || args[1].clone();
    let cmd = match name {
        "get" => Cmd::Get(key()),
        "set" => parse_set(args)?,
        "setnx" => Cmd::Set {
            key: key(),
            value: args[2].clone(),
            opts: SetOptions {
                nx: true,
                ..Default::default()
            },
            reply: SetReply::SetNx,
            cmd: "setnx",
        },
        "setex" | "psetex" => {
            let cmd = if name == "setex" { "setex" } else { "psetex" };
            let expiry = expiry_arg(&args[2], name == "setex", false, cmd).map_err(Reply::from)?;
            let opts = SetOptions {
                expiry: Some(expiry),
                ..Default::default()
            };
            Cmd::Set {
                key: key(),
                value: args[3].clone(),
                opts,
                reply: SetReply::Ok,
                cmd,
            }
        }
        "getset" => Cmd::Set {
            key: key(),
            value: args[2].clone(),
            opts: SetOptions {
                get: true,
                ..Default::default()
            },
            reply: SetReply::Old,
            cmd: "getset",
        },
        "getdel" => Cmd::GetDel(key()),
        "getex" => parse_getex(args)?,
        "incr" => Cmd::IncrBy(key(), 1),
        "decr" => Cmd::IncrBy(key(), -1),
        "incrby" => Cmd::IncrBy(key(), int_arg(&args[2])?),
        "decrby" => {
            let n = int_arg(&args[2])?;
            if n == i64::MIN {
                return Err(Reply::from(Error::DecrementOverflow));
            }
            Cmd::IncrBy(key(), -n)
        }
        "incrbyfloat" => Cmd::IncrByFloat(key(), args[2].clone()),
        "del" | "unlink" => Cmd::Del(args[1..].to_vec()),
        "exists" => Cmd::Exists(args[1..].to_vec()),
        "mget" => Cmd::MGet(args[1..].to_vec()),
        "mset" => {
            if args.len().is_multiple_of(2) {
                return Err(arity_error("mset"));
            }
            Cmd::MSet(
                args[1..]
                    .chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect(),
            )
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => parse_expire(name, args)?,
        "ttl" => Cmd::Ttl(key(), TtlKind::Ttl),
        "pttl" => Cmd::Ttl(key(), TtlKind::Pttl),
        "expiretime" => Cmd::Ttl(key(), TtlKind::ExpireTime),
        "pexpiretime" => Cmd::Ttl(key(), TtlKind::PExpireTime),
        "persist" => Cmd::Persist(key()),
        _ => match limits::prepare(name, args)? {
            Some(c) => Cmd::Limits(c),
            None => return Ok(keyspace::prepare(name, args)?.map(Cmd::Keyspace)),
        },
    };
    Ok(Some(cmd))
}

fn parse_set(args: &[Bytes]) -> std::result::Result<Cmd, Reply> {
    let mut opts = SetOptions::default();
    let mut expiry: Option<(&[u8], bool, bool)> = None;
    let mut i = 3;
    while i < args.len() {
        let a = args[i].to_ascii_lowercase();
        let next = args.get(i + 1);
        match a.as_slice() {
            b"nx" if !opts.xx => opts.nx = true,
            b"xx" if !opts.nx => opts.xx = true,
            b"get" => opts.get = true,
            b"keepttl" if expiry.is_none() => opts.keep_ttl = true,
            b"ex" | b"px" | b"exat" | b"pxat"
                if !opts.keep_ttl && expiry.is_none() && next.is_some() =>
            {
                let seconds = a[0] == b'e';
                let absolute = a.ends_with(b"at");
                expiry = Some((next.unwrap(), seconds, absolute));
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    if let Some((v, seconds, absolute)) = expiry {
        opts.expiry = Some(expiry_arg(v, seconds, absolute, "set").map_err(Reply::from)?);
    }
    Ok(Cmd::Set {
        key: args[1].clone(),
        value: args[2].clone(),
        opts,
        reply: SetReply::Set,
        cmd: "set",
    })
}

fn parse_getex(args: &[Bytes]) -> std::result::Result<Cmd, Reply> {
    let mut expiry: Option<RawExpiry> = None;
    let mut persist = false;
    let mut i = 2;
    while i < args.len() {
        let a = args[i].to_ascii_lowercase();
        let next = args.get(i + 1);
        match a.as_slice() {
            b"persist" if expiry.is_none() => persist = true,
            b"ex" | b"px" | b"exat" | b"pxat" if !persist && expiry.is_none() && next.is_some() => {
                expiry = Some(RawExpiry {
                    value: next.unwrap().clone(),
                    seconds: a[0] == b'e',
                    absolute: a.ends_with(b"at"),
                });
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    Ok(Cmd::GetEx(args[1].clone(), expiry, persist))
}

fn parse_expire(name: &str, args: &[Bytes]) -> std::result::Result<Cmd, Reply> {
    let cmd = match name {
        "expire" => "expire",
        "pexpire" => "pexpire",
        "expireat" => "expireat",
        _ => "pexpireat",
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[3..] {
        match opt.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => {
                return Err(Reply::err(format!(
                    "Unsupported option {}",
                    String::from_utf8_lossy(opt)
                )));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    let t = int_arg(&args[2])?;
    let ms = if name == "expire" || name == "expireat" {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&t) {
            return Err(Reply::from(Error::InvalidExpireTime(cmd)));
        }
        t * 1000
    } else {
        t
    };
    let when = if name.ends_with("at") {
        Expiry::At(ms)
    } else {
        Expiry::In(ms)
    };
    let cond = match (nx, xx, gt, lt) {
        (_, _, true, _) => Condition::Gt,
        (_, true, _, true) => Condition::LtXx,
        (_, _, _, true) => Condition::Lt,
        (_, true, _, _) => Condition::Xx,
        (true, _, _, _) => Condition::Nx,
        _ => Condition::None,
    };
    Ok(Cmd::Expire {
        key: args[1].clone(),
        when,
        cond,
        cmd,
    })
}

impl Cmd {
    /// True if it must run with no other command at once (FLUSHDB).
    pub fn runs_alone(&self) -> bool {
        matches!(self, Cmd::Keyspace(c) if c.runs_alone())
    }

    /// The keys this command touches (for the engine's stripe locks).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Cmd::Get(k)
            | Cmd::Set { key: k, .. }
            | Cmd::IncrBy(k, _)
            | Cmd::IncrByFloat(k, _)
            | Cmd::GetDel(k)
            | Cmd::GetEx(k, ..)
            | Cmd::Expire { key: k, .. }
            | Cmd::Ttl(k, _)
            | Cmd::Persist(k) => vec![k],
            Cmd::Del(ks) | Cmd::Exists(ks) | Cmd::MGet(ks) => ks.iter().map(|k| &k[..]).collect(),
            Cmd::MSet(pairs) => pairs.iter().map(|(k, _)| &k[..]).collect(),
            Cmd::Limits(c) => vec![c.key()],
            Cmd::Keyspace(c) => c.keys(),
        }
    }

    /// Runs the command in `tx`.
    pub fn exec(&self, tx: &mut Tx<'_>) -> Result<Reply> {
        Ok(match self {
            Cmd::Get(k) => Reply::opt(tx.get(k)?),
            Cmd::Set {
                key,
                value,
                opts,
                reply,
                cmd,
            } => {
                let out = tx.set(key, value, opts, cmd)?;
                match reply {
                    SetReply::Set if opts.get => Reply::opt(out.old),
                    SetReply::Set if out.applied => Reply::Ok,
                    SetReply::Set => Reply::Nil,
                    SetReply::SetNx => Reply::Int(i64::from(out.applied)),
                    SetReply::Ok => Reply::Ok,
                    SetReply::Old => Reply::opt(out.old),
                }
            }
            Cmd::IncrBy(k, by) => Reply::Int(tx.incr(k, *by)?),
            Cmd::IncrByFloat(k, by) => Reply::Bulk(tx.incr_by_float(k, by)?),
            Cmd::GetDel(k) => Reply::opt(tx.getdel(k)?),
            Cmd::GetEx(k, expiry, persist) => {
                if tx.entry(k)?.is_none() {
                    return Ok(Reply::Nil);
                }
                let what = match expiry {
                    Some(r) => GetEx::Expire(expiry_arg(&r.value, r.seconds, r.absolute, "getex")?),
                    None if *persist => GetEx::Persist,
                    None => GetEx::Keep,
                };
                Reply::opt(tx.getex(k, what)?)
            }
            Cmd::Del(ks) => Reply::Int(tx.delete(&ks.iter().map(|k| &k[..]).collect::<Vec<_>>())?),
            Cmd::Exists(ks) => {
                Reply::Int(tx.exists(&ks.iter().map(|k| &k[..]).collect::<Vec<_>>())?)
            }
            Cmd::MGet(ks) => Reply::Array(
                tx.mget(&ks.iter().map(|k| &k[..]).collect::<Vec<_>>())?
                    .into_iter()
                    .map(Reply::opt)
                    .collect(),
            ),
            Cmd::MSet(pairs) => {
                tx.mset(
                    &pairs
                        .iter()
                        .map(|(k, v)| (&k[..], &v[..]))
                        .collect::<Vec<_>>(),
                )?;
                Reply::Ok
            }
            Cmd::Expire {
                key,
                when,
                cond,
                cmd,
            } => Reply::Int(i64::from(tx.expire(key, *when, *cond, cmd)?)),
            Cmd::Ttl(k, kind) => Reply::Int(match (tx.ttl(k)?, kind) {
                (Ttl::Missing, _) => -2,
                (Ttl::Persistent, _) => -1,
                (Ttl::Expires { remaining_ms, .. }, TtlKind::Ttl) => (remaining_ms + 500) / 1000,
                (Ttl::Expires { remaining_ms, .. }, TtlKind::Pttl) => remaining_ms,
                (Ttl::Expires { deadline_ms, .. }, TtlKind::ExpireTime) => {
                    (deadline_ms + 500) / 1000
                }
                (Ttl::Expires { deadline_ms, .. }, TtlKind::PExpireTime) => deadline_ms,
            }),
            Cmd::Persist(k) => Reply::Int(i64::from(tx.persist(k)?)),
            Cmd::Limits(c) => c.exec(tx)?,
            Cmd::Keyspace(c) => c.exec(tx)?,
        })
    }
}
