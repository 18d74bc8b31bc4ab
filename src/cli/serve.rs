//! `tally serve`: open the data directory, serve gRPC, stop cleanly on SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::ValueEnum;
use tally::clock::SystemClock;
use tally::config::{self, Config, PERIODIC_FSYNC};
use tally::engine::Engine;
use tally::wal::FsyncMode;

#[derive(clap::Args)]
pub struct Args {
    /// Data directory (created if missing). Holds LOCK, CHECKPOINT, wal/ and sled/; only one
    /// server may use it at a time.
    #[arg(long, default_value = "./tally-data", env = "TALLY_DATA_DIR")]
    data_dir: PathBuf,
    /// Address for gRPC. Port 0 picks a free port (the chosen address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// Address for the Redis protocol (RESP2/RESP3), so redis-py and redis-cli work unchanged.
    /// "off" turns it off. Port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:6379", value_parser = parse_resp_addr)]
    resp_addr: RespAddr,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter such as
    /// "tally=debug"). RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// When a write is acknowledged. "always": after the fsync that covers it (nothing
    /// acknowledged is ever lost). "periodic": after the write to the OS, with an fsync every
    /// 100 ms: survives a process crash, but a power loss or kernel crash can lose the last
    /// ~100 ms of acknowledged writes. Meant for benchmarks and users who choose that trade.
    #[arg(long, value_enum, default_value_t = Fsync::Always)]
    fsync: Fsync,
    /// WAL segment size in bytes: a segment is sealed and a new one begun at this size.
    #[arg(long, default_value_t = config::DEFAULT_SEGMENT_BYTES)]
    wal_segment_bytes: u64,
    /// WAL bytes on disk that trigger a checkpoint, which then deletes the covered segments.
    /// Bounds WAL disk use under steady load.
    #[arg(long, default_value_t = config::DEFAULT_CHECKPOINT_BYTES)]
    checkpoint_bytes: u64,
    /// Checkpoint at least this often (seconds) while there are new writes.
    #[arg(long, default_value_t = config::DEFAULT_CHECKPOINT_INTERVAL.as_secs())]
    checkpoint_interval_secs: u64,
    /// Size of sled's page cache in bytes (sled's own accounting; the process's real memory
    /// for it is about 4x this). Keys that do not fit are read back from the OS page cache.
    #[arg(long, default_value_t = config::DEFAULT_CACHE_BYTES)]
    cache_bytes: u64,
    /// On SIGTERM/SIGINT, how long (milliseconds) to wait for open gRPC calls before closing
    /// them. Unary calls finish within an fsync; this bounds streams that never end on their
    /// own, such as a load balancer's Health/Watch. The WAL is closed cleanly either way.
    #[arg(long, default_value_t = tally::server::DEFAULT_SHUTDOWN_GRACE.as_millis() as u64)]
    shutdown_grace_ms: u64,
    /// Most Redis-protocol connections at once (Redis's maxclients). The next one is sent
    /// "-ERR max number of clients reached" and closed; open connections are unaffected.
    /// Both connection caps are raised into, or shrunk to fit, the open-file limit at start,
    /// keeping 128 descriptors for the WAL and sled (a warning says when they shrink).
    #[arg(long, default_value_t = config::DEFAULT_MAX_CLIENTS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_clients: u32,
    /// Most gRPC connections at once. Calls on one over the limit get UNAVAILABLE ("too many
    /// gRPC connections") and it is closed after 1 s; open connections are unaffected. A gRPC
    /// client multiplexes its calls over one connection, so this is roughly a cap on client
    /// processes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_GRPC_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_grpc_connections: u32,
    /// How long (seconds) a gRPC request_id is remembered: a retry with the same id within it
    /// gets the first call's response and changes nothing, also across crashes and restarts.
    #[arg(long, default_value_t = config::DEFAULT_DEDUPE_WINDOW.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    dedupe_window_secs: u64,
    /// Most request ids remembered (they are kept in sled, about 100 bytes plus the response
    /// each). Past it the oldest are forgotten first, and a retry of one runs again.
    #[arg(long, default_value_t = config::DEFAULT_DEDUPE_MAX_ENTRIES)]
    dedupe_max_entries: u64,
    /// How long (milliseconds) a Lua script may run before other clients' commands get
    /// "-BUSY Redis is busy running a script…" (Redis's busy-reply-threshold). Until then they
    /// wait, as behind any script; after it, SCRIPT KILL stops a script that has not written.
    #[arg(long, default_value_t = config::DEFAULT_BUSY_SCRIPT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    busy_script_ms: u64,
    /// Cap on the Lua interpreter's memory, all scripts and the script cache together. A
    /// script that allocates past it fails with "script ran out of memory"; others go on.
    #[arg(long, default_value_t = config::DEFAULT_SCRIPT_MEMORY_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1 << 20..))]
    script_memory_bytes: u64,
}

#[derive(Clone, Copy)]
struct RespAddr(Option<SocketAddr>);

fn parse_resp_addr(s: &str) -> Result<RespAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(RespAddr(None));
    }
    s.parse()
        .map(|a| RespAddr(Some(a)))
        .map_err(|e| format!("{e} (an address such as 127.0.0.1:6379, or \"off\")"))
}

#[derive(Clone, Copy, ValueEnum)]
enum Fsync {
    Always,
    Periodic,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    super::init_logging(&a.log_level);
    let mut config = Config::new(&a.data_dir);
    config.fsync = match a.fsync {
        Fsync::Always => FsyncMode::Always,
        Fsync::Periodic => FsyncMode::Periodic(PERIODIC_FSYNC),
    };
    config.segment_bytes = a.wal_segment_bytes.max(1024);
    config.checkpoint_bytes = a.checkpoint_bytes;
    config.cache_bytes = a.cache_bytes;
    config.dedupe_window = std::time::Duration::from_secs(a.dedupe_window_secs);
    config.dedupe_max_entries = a.dedupe_max_entries;
    config.busy_script = std::time::Duration::from_millis(a.busy_script_ms);
    config.checkpoint_interval = std::time::Duration::from_secs(a.checkpoint_interval_secs.max(1));
    if matches!(a.fsync, Fsync::Periodic) {
        tracing::warn!(
            "--fsync periodic: a power loss can lose up to 100 ms of acknowledged writes"
        );
    }
    let budget = fit_connections(a.max_clients as usize, a.max_grpc_connections as usize)?;
    // Test seams (see `tally::fault`); unset in normal use.
    config.faults = Arc::new(tally::fault::Faults::from_env());
    tally::fault::warn_if_armed(&config.faults);
    let engine = Engine::open(config, Arc::new(SystemClock))?;
    // Replay allocates and frees the WAL tail's ops in batches; hand the freed pages back
    // rather than carry them in RSS for the life of the process.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let grpc = tokio::net::TcpListener::bind(a.grpc_addr)
            .await
            .map_err(|e| format!("cannot listen for gRPC on {}: {e}", a.grpc_addr))?;
        let resp = match a.resp_addr.0 {
            None => None,
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!("cannot listen for RESP on {addr}: {e} (choose another --resp-addr, or --resp-addr off)")
            })?),
        };
        // Stable lines on stdout so scripts and tests can find a port-0 server.
        println!("tally: serving gRPC on {}", grpc.local_addr()?);
        if let Some(l) = &resp {
            println!("tally: serving RESP on {}", l.local_addr()?);
        }
        std::io::stdout().flush()?;
        let listeners = tally::server::Listeners { grpc, resp };
        let options = tally::server::Options {
            shutdown_grace: std::time::Duration::from_millis(a.shutdown_grace_ms),
            max_clients: budget.resp,
            max_grpc_connections: budget.grpc,
            script_memory_bytes: a.script_memory_bytes as usize,
        };
        tally::server::run(engine, listeners, shutdown_signal(), options)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Makes room for the connection caps in the open-file limit (see `tally::fds`); says so if
/// they had to shrink to fit.
fn fit_connections(resp: usize, grpc: usize) -> Result<tally::fds::Budget, String> {
    let b = tally::fds::fit(resp, grpc).map_err(|e| format!("reading the open-file limit: {e}"))?;
    if (b.resp, b.grpc) != (resp, grpc) {
        tracing::warn!(
            "the open-file limit is {} and cannot be raised further: serving at most {} RESP \
             and {} gRPC connections instead of {resp} and {grpc}, keeping {} descriptors for \
             the WAL and sled; raise the hard limit (ulimit -Hn, LimitNOFILE=) to at least {} \
             for the full caps",
            b.limit,
            b.resp,
            b.grpc,
            tally::fds::RESERVED_FDS,
            resp as u64 + grpc as u64 + tally::fds::RESERVED_FDS
        );
    } else {
        tracing::debug!(limit = b.limit, "open-file limit fits the connection caps");
    }
    Ok(b)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
