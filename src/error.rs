//! The one error type of Tally's core. Every layer below the servers returns [`Error`]; the gRPC
//! layer (`grpc::status`) is the single place that maps it to a status code. Messages that Redis
//! also produces are Redis's exact words, so clients can branch on them.

use std::fmt;
use std::io;

/// Everything that can go wrong in the core.
#[derive(Debug)]
pub enum Error {
    /// The stored value or an argument is not a Redis integer (`string2ll` rules).
    NotInteger,
    /// INCRBY/DECRBY would leave the int64 range.
    Overflow,
    /// DECRBY by i64::MIN (its negation overflows before the key is looked at).
    DecrementOverflow,
    /// The stored value or the increment is not a Redis float (`string2ld` rules).
    NotFloat,
    /// INCRBYFLOAT would produce NaN or an infinity.
    NanOrInfinity,
    /// An expiry argument is out of range (Redis: "invalid expire time in '`<cmd>`' command").
    InvalidExpireTime(&'static str),
    /// The request is malformed or breaks a documented limit; the message names it.
    InvalidArgument(String),
    /// A request id was used before for a different request.
    AlreadyExists(String),
    /// The server can no longer acknowledge writes (a failed fsync, or shutting down).
    /// Fail-stop: nothing is retried behind the caller's back.
    Unavailable(String),
    /// A Lua script has run longer than `busy_script` and still holds the world lock: retry,
    /// or stop it with SCRIPT KILL.
    Busy,
    /// The disk is full: the write was refused before it changed anything; retry later.
    NoSpace,
    /// A WAL record or checkpoint failed its checks somewhere other than the torn tail.
    Corruption(String),
    /// Another process holds the data directory.
    Locked(String),
    /// An I/O error, with what we were doing.
    Io { context: String, source: io::Error },
    /// An error reported by sled.
    Storage(sled::Error),
    /// `source`, raised by one part of a composite request (`at` names it, e.g. a Txn's
    /// `success[2] (incr)`); it keeps the kind, and so the status code, of `source`.
    At { at: String, source: Box<Error> },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with a sentence saying what failed.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for errors computed from a stored value (not an integer, would overflow, …).
    /// Such a reply reveals that value as surely as a read does, so it is sent only once the
    /// value is durable (see `Engine::lsn_seen_by`).
    pub fn reveals_state(&self) -> bool {
        match self {
            Error::At { source, .. } => source.reveals_state(),
            // AlreadyExists reveals that an earlier call used the id: that call must be
            // durable before another is told so.
            e => matches!(
                e,
                Error::NotInteger
                    | Error::Overflow
                    | Error::NotFloat
                    | Error::NanOrInfinity
                    | Error::AlreadyExists(_)
            ),
        }
    }

    /// A closure that wraps an error as raised at `what` (for `map_err`).
    pub fn at(what: String) -> impl FnOnce(Error) -> Error {
        move |e| Error::At {
            at: what,
            source: Box::new(e),
        }
    }

    /// The error itself, without the parts that say where it was raised.
    pub fn root(&self) -> &Error {
        match self {
            Error::At { source, .. } => source.root(),
            e => e,
        }
    }

    /// True for errors that mean the on-disk state cannot be trusted and startup must stop.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInteger => f.write_str("value is not an integer or out of range"),
            Error::Overflow => f.write_str("increment or decrement would overflow"),
            Error::DecrementOverflow => f.write_str("decrement would overflow"),
            Error::NotFloat => f.write_str("value is not a valid float"),
            Error::NanOrInfinity => f.write_str("increment would produce NaN or Infinity"),
            Error::InvalidExpireTime(cmd) => write!(f, "invalid expire time in '{cmd}' command"),
            Error::InvalidArgument(m) | Error::AlreadyExists(m) => f.write_str(m),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Busy => f.write_str(
                "Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            ),
            Error::NoSpace => f.write_str(
                "no space left on device for the write-ahead log; writes are refused until space returns",
            ),
            Error::Corruption(m) => write!(f, "corruption: {m}"),
            Error::Locked(m) => f.write_str(m),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Storage(e) => write!(f, "storage: {e}"),
            Error::At { at, source } => write!(f, "{at}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Storage(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Error {
        Error::Storage(e)
    }
}
