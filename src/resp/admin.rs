//! Connection and server commands that do not touch the keyspace: PING, ECHO, HELLO, SELECT,
//! CLIENT, COMMAND, INFO (with `commandstats`: calls per command), DBSIZE, CONFIG. Enough for redis-py, redis-cli and redis-benchmark.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Shared;
use super::command::{TABLE, arity_error};
use super::reply::Reply;
use crate::value::parse_int;

/// The Redis version whose behaviour Tally reproduces; reported where clients look for one.
pub const REDIS_VERSION: &str = "7.0.15";

/// Per-connection state.
pub struct Session {
    /// CLIENT ID.
    pub id: u64,
    /// 2 or 3 (HELLO).
    pub proto: u8,
    /// CLIENT SETNAME.
    pub name: Option<Bytes>,
}

/// True for DBSIZE and INFO, whose replies include the key counts, and FLUSHDB/FLUSHALL, which
/// need the census done (see `Tx::clear`): right after a restart the connection first awaits
/// the startup census (`durable::counted`), so they are exact without blocking a tokio worker.
pub fn needs_key_counts(args: &[Bytes]) -> bool {
    ["dbsize", "info", "flushdb", "flushall"]
        .iter()
        .any(|c| args[0].eq_ignore_ascii_case(c.as_bytes()))
}

/// Runs `name` if it is an admin command; `None` otherwise. Arity is already checked.
pub fn run(name: &str, args: &[Bytes], s: &mut Session, shared: &Shared) -> Option<Reply> {
    Some(match name {
        "ping" => match args.len() {
            1 => Reply::Status("PONG"),
            2 => Reply::Bulk(args[1].to_vec()),
            _ => arity_error("ping"),
        },
        "echo" => Reply::Bulk(args[1].to_vec()),
        "select" => match parse_int(&args[1]) {
            Some(0) => Reply::Ok,
            Some(_) => Reply::err("DB index is out of range"),
            None => Reply::from(crate::error::Error::NotInteger),
        },
        "dbsize" => Reply::Int(shared.engine.stats().keys as i64),
        "hello" => hello(args, s, shared),
        "client" => client(args, s),
        "command" => command(args),
        "info" => Reply::Verbatim(info(args.get(1).map(|b| &b[..]), shared).into_bytes()),
        "config" => match args[1].to_ascii_lowercase().as_slice() {
            b"get" if args.len() >= 3 => config_get(&args[2..], shared),
            b"get" => arity_error("config|get"),
            _ => unknown_subcommand(&args[1], "CONFIG"),
        },
        _ => return None,
    })
}

/// CONFIG GET for the few parameters clients ask about (redis-benchmark reads `save` and
/// `appendonly`); exact names or `*`. Nothing is settable.
fn config_get(patterns: &[Bytes], shared: &Shared) -> Reply {
    let max_clients = shared.max_clients.to_string();
    let params = [
        ("appendfsync", shared.fsync_name),
        ("appendonly", "yes"),
        ("databases", "1"),
        ("maxclients", &max_clients),
        ("save", ""),
    ];
    let pairs = params
        .iter()
        .filter(|(name, _)| {
            patterns
                .iter()
                .any(|p| &p[..] == b"*" || p.eq_ignore_ascii_case(name.as_bytes()))
        })
        .map(|(name, value)| (Reply::bulk(name), Reply::bulk(value)))
        .collect();
    Reply::Map(pairs)
}

pub(super) fn unknown_subcommand(sub: &[u8], cmd: &str) -> Reply {
    Reply::err(format!(
        "unknown subcommand '{}'. Try {cmd} HELP.",
        String::from_utf8_lossy(sub)
    ))
}

fn hello(args: &[Bytes], s: &mut Session, shared: &Shared) -> Reply {
    let mut proto = s.proto;
    if args.len() >= 2 {
        match parse_int(&args[1]) {
            Some(v @ 2..=3) => proto = v as u8,
            Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
            None => return Reply::err("Protocol version is not an integer or out of range"),
        }
    }
    let mut name = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args[i].to_ascii_lowercase();
        match opt.as_slice() {
            b"auth" if i + 2 < args.len() => {
                // No ACLs: the default user has no password, so any password works for it.
                if !args[i + 1].eq_ignore_ascii_case(b"default") {
                    return Reply::Error(
                        "WRONGPASS invalid username-password pair or user is disabled.".into(),
                    );
                }
                i += 3;
            }
            b"setname" if i + 1 < args.len() => {
                if let Err(e) = check_name(&args[i + 1]) {
                    return e;
                }
                name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return Reply::err(format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[i])
                ));
            }
        }
    }
    s.proto = proto;
    if name.is_some() {
        s.name = name;
    }
    let _ = shared;
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
        (Reply::bulk("proto"), Reply::Int(i64::from(proto))),
        (Reply::bulk("id"), Reply::Int(s.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(vec![])),
    ])
}

fn check_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(Reply::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

fn client(args: &[Bytes], s: &mut Session) -> Reply {
    let sub = args[1].to_ascii_lowercase();
    let want = |n: usize, full: &str| {
        if args.len() == n {
            None
        } else {
            Some(arity_error(full))
        }
    };
    match sub.as_slice() {
        b"setname" => want(3, "client|setname").unwrap_or_else(|| match check_name(&args[2]) {
            Ok(()) => {
                s.name = (!args[2].is_empty()).then(|| args[2].clone());
                Reply::Ok
            }
            Err(e) => e,
        }),
        b"getname" => want(2, "client|getname")
            .unwrap_or_else(|| Reply::opt(s.name.as_ref().map(|n| n.to_vec()))),
        b"id" => want(2, "client|id").unwrap_or(Reply::Int(s.id as i64)),
        b"setinfo" => want(4, "client|setinfo").unwrap_or_else(|| {
            match args[2].to_ascii_lowercase().as_slice() {
                b"lib-name" | b"lib-ver" => Reply::Ok,
                _ => Reply::err(format!(
                    "Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[2])
                )),
            }
        }),
        _ => unknown_subcommand(&args[1], "CLIENT"),
    }
}

fn command(args: &[Bytes]) -> Reply {
    let entry = |s: &super::command::Spec| {
        Reply::Array(vec![
            Reply::bulk(s.name),
            Reply::Int(s.arity),
            Reply::Array(s.flags.iter().map(|f| Reply::Status(f)).collect()),
            Reply::Int(s.keys.0),
            Reply::Int(s.keys.1),
            Reply::Int(s.keys.2),
        ])
    };
    let Some(sub) = args.get(1) else {
        return Reply::Array(TABLE.iter().map(entry).collect());
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"count" => Reply::Int(TABLE.len() as i64),
        // Command docs are optional for clients (redis-cli uses them for hints only).
        b"docs" => Reply::Map(vec![]),
        b"info" => Reply::Array(
            args[2..]
                .iter()
                .map(|n| {
                    let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                    super::command::lookup(&n).map_or(Reply::Nil, entry)
                })
                .collect(),
        ),
        _ => unknown_subcommand(sub, "COMMAND"),
    }
}

fn info(section: Option<&[u8]>, shared: &Shared) -> String {
    let section = section.map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    let want = |name: &str| match section.as_deref() {
        None | Some("default") | Some("all") | Some("everything") => true,
        Some(s) => s == name,
    };
    let st = shared.engine.stats();
    let mut out = String::new();
    // Not in the default sections, as in Redis.
    if matches!(
        section.as_deref(),
        Some("all" | "everything" | "commandstats")
    ) {
        out += "# Commandstats\r\n";
        for (spec, n) in TABLE.iter().zip(shared.calls.iter()) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                out += &format!(
                    "cmdstat_{}:calls={n},usec=0,usec_per_call=0.00,rejected_calls=0,\
                     failed_calls=0\r\n",
                    spec.name
                );
            }
        }
        out += "\r\n";
    }
    if want("server") {
        out += &format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\ntally_version:{}\r\nredis_mode:standalone\r\n\
             os:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            shared.port,
            shared.started.elapsed().as_secs(),
        );
    }
    if want("clients") {
        out += &format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            shared.clients.load(Ordering::Relaxed),
            shared.max_clients
        );
    }
    if want("persistence") {
        out += &format!(
            "# Persistence\r\nloading:0\r\nkeys_counting:{}\r\naof_enabled:1\r\nappendfsync:{}\r\n\
             wal_bytes:{}\r\nwal_segments:{}\r\ndurable_lsn:{}\r\nlast_lsn:{}\r\n\
             checkpoint_lsn:{}\r\ncheckpoints:{}\r\nwal_fsyncs:{}\r\n\r\n",
            u8::from(!st.keys_exact),
            shared.fsync_name,
            st.wal_bytes,
            st.wal_segments,
            st.durable_lsn,
            st.last_lsn,
            st.checkpoint_lsn,
            st.checkpoints,
            st.wal_fsyncs
        );
    }
    if want("stats") {
        out += &format!(
            "# Stats\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\n\
             expired_keys:{}\r\nrequest_ids:{}\r\nrequest_id_hits:{}\r\n\
             request_id_evictions:{}\r\nrequest_id_expired:{}\r\n\r\n",
            shared.next_id.load(Ordering::Relaxed) - 1,
            shared.rejected.load(Ordering::Relaxed),
            st.expired,
            st.requests.entries,
            st.requests.hits,
            st.requests.evictions,
            st.requests.expired
        );
    }
    if want("keyspace") {
        out += "# Keyspace\r\n";
        if st.keys > 0 {
            out += &format!(
                "db0:keys={},expires={},avg_ttl=0\r\n",
                st.keys, st.keys_with_ttl
            );
        }
        out += "\r\n";
    }
    // Redis ends the text without the blank line of the last section.
    while out.ends_with("\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}
