//! Typed configuration and every default and limit, documented once, here. The CLI
//! (`cli::serve`) maps flags onto [`Config`]; the README's limits table mirrors the constants.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fault::Faults;
use crate::wal::FsyncMode;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Longest value accepted by Set, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most keys in one Delete.
pub const MAX_KEYS_PER_REQUEST: usize = 10_000;
/// Largest encoded gRPC request we process; bigger ones get INVALID_ARGUMENT.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Most commands one MULTI may queue (RESP). The next one is refused and EXEC aborts.
pub const MAX_MULTI_COMMANDS: usize = 100_000;
/// Most argument bytes one MULTI may queue (RESP): the size of the largest WAL record
/// ([`crate::wal::record::MAX_BODY`]), since a transaction is one record.
pub const MAX_MULTI_BYTES: usize = crate::wal::record::MAX_BODY;
/// Most value bytes one command or transaction may return (RESP MGET, EXEC of many GETs):
/// a reply is built in memory before it is sent, so this caps what one request can make the
/// server hold (Redis's client-output-buffer-limit, made a per-reply limit). Over it the command
/// fails with `reply too large`.
pub const MAX_REPLY_BYTES: usize = 64 << 20;
/// Interval between fsyncs in `--fsync periodic`.
pub const PERIODIC_FSYNC: Duration = Duration::from_millis(100);
/// Default size at which a WAL segment is sealed.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
/// Default WAL size that triggers a checkpoint.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 64 << 20;
/// Default size of sled's page cache. sled counts serialized bytes, and its real memory use is
/// several times that (measured: about 4x); 4 MiB keeps a million counters at about 0.7x
/// Redis's RSS for the same keys (8 MiB: about 1.0x). Keys outside it are read back from the
/// OS page cache. Raise it (`--cache-bytes`) if the hot keys do not fit.
pub const DEFAULT_CACHE_BYTES: u64 = 4 << 20;
/// Default cap on Redis-protocol connections at once (`--max-clients`; Redis's default
/// `maxclients`).
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// Default cap on gRPC connections at once (`--max-grpc-connections`). A gRPC client
/// multiplexes its calls over one connection, so this is roughly a cap on client processes.
pub const DEFAULT_MAX_GRPC_CONNECTIONS: usize = 4096;
/// TCP keepalive on client connections, as Redis's default `tcp-keepalive 300`: probes start
/// after this long idle, every third of it, three of them. A client that vanished without
/// closing (a crashed host, a cut network) is noticed within about twice this, and its
/// connection slot is freed.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(300);
/// Default time after which new writes are checkpointed even under light load.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// Longest request id accepted (gRPC `request_id`), in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Default time a request id is remembered (`--dedupe-window-secs`): a retry within it is
/// answered with the first call's response.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(86_400);
/// Default cap on request ids remembered (`--dedupe-max-entries`); past it the oldest go.
pub const DEFAULT_DEDUPE_MAX_ENTRIES: u64 = 1_000_000;

/// Default time a Lua script runs before other clients get `-BUSY` (`--busy-script-ms`;
/// Redis's `busy-reply-threshold`).
pub const DEFAULT_BUSY_SCRIPT: Duration = Duration::from_millis(5000);
/// Default cap on the memory of the Lua interpreter (`--script-memory-bytes`): a script that
/// allocates past it fails with an error, and the server keeps serving.
pub const DEFAULT_SCRIPT_MEMORY_BYTES: usize = 64 << 20;
/// Largest script body EVAL or SCRIPT LOAD accepts (the request limit bounds it anyway).
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;
/// Most scripts the script cache holds (`SCRIPT LOAD`, `EVAL`); past it the cache is emptied
/// (as `SCRIPT FLUSH`), so a client generating scripts cannot grow memory without bound.
pub const MAX_CACHED_SCRIPTS: usize = 10_000;

/// Everything the engine needs to open a data directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory: `LOCK`, `CHECKPOINT`, `wal/`, `sled/`.
    pub data_dir: PathBuf,
    /// When writes are acknowledged.
    pub fsync: FsyncMode,
    /// WAL segment size.
    pub segment_bytes: u64,
    /// WAL bytes on disk that trigger a checkpoint (which then removes covered segments).
    pub checkpoint_bytes: u64,
    /// Checkpoint at least this often while there are new writes.
    pub checkpoint_interval: Duration,
    /// sled's page cache capacity (its own accounting).
    pub cache_bytes: u64,
    /// How long a request id is remembered.
    pub dedupe_window: Duration,
    /// Most request ids remembered.
    pub dedupe_max_entries: u64,
    /// Keys the startup census counts per step, with appends paused (tests make it small so
    /// that writes race the census).
    pub census_step_keys: usize,
    /// How long a Lua script runs before other commands get `-BUSY` (engine `world`).
    pub busy_script: Duration,
    /// Injected I/O faults, for tests (see `fault`); none by default.
    pub faults: Arc<Faults>,
}

impl Config {
    /// Defaults for `data_dir`: fsync before every acknowledgement.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            fsync: FsyncMode::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            cache_bytes: DEFAULT_CACHE_BYTES,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            dedupe_max_entries: DEFAULT_DEDUPE_MAX_ENTRIES,
            census_step_keys: 1024,
            busy_script: DEFAULT_BUSY_SCRIPT,
            faults: Arc::default(),
        }
    }
}

/// Checks a key against the size limit.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "key is {} bytes; the maximum key size is {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a value against the size limit.
pub fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "value is {} bytes; the maximum value size is {MAX_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}
