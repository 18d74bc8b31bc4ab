//! The Redis-protocol listener: RESP2, and RESP3 after `HELLO 3`, on the same engine and with
//! the same durability as gRPC (a reply leaves only after the fsync that covers it).
//!
//! Owns: framing (`parse`), reply encoding and the Error -> Redis error translation (`reply`),
//! the command table and engine commands (`command`), the rate-limiting commands CL.THROTTLE and
//! INCREX (`limits`), the keyspace commands (`keyspace`), Lua scripting (`script`), connection and server commands (`admin`), the per-connection loop
//! (`conn`), and the in-memory ceiling for benchmarks (`ceiling`). Speaks only to the engine, never to `grpc`.
//!
//! Limits: `max_clients` connections (`--max-clients`, default
//! [`crate::config::DEFAULT_MAX_CLIENTS`]; the next one gets `-ERR max number of clients
//! reached` and is closed), and the request limits in `parse` (a bulk over 1 MiB or a bad
//! header gets `-ERR Protocol error: …` and the connection closes; other clients are
//! unaffected).

mod admin;
mod ceiling;
mod command;
mod conn;
mod keyspace;
mod limits;
pub mod parse;
mod reply;
mod script;

pub use admin::REDIS_VERSION;
pub use ceiling::serve_ceiling;
pub use parse::{MAX_ARGS, MAX_BULK, MAX_INLINE, MAX_REQUEST};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::engine::Engine;
use crate::listen::{Accepted, Acceptor};
use crate::wal::FsyncMode;

/// State shared by all connections.
pub struct Shared {
    engine: Arc<Engine>,
    clients: AtomicUsize,
    /// One past the id of the newest connection (ids start at 1).
    next_id: AtomicU64,
    /// Connections refused over `max_clients` (Redis's `rejected_connections`).
    rejected: AtomicU64,
    started: Instant,
    port: u16,
    fsync_name: &'static str,
    max_clients: usize,
    /// Lua scripting (module `script`).
    scripts: script::Scripts,
    /// Calls of each command in `command::TABLE` (INFO commandstats).
    calls: Box<[AtomicU64]>,
}

/// Resolves once `shutdown` is true. (The guard `wait_for` returns is not `Send`; dropping it
/// inside this future keeps the callers' futures `Send`.)
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts connections on `listener`, at most `max_clients` at once, until `shutdown` turns
/// true, then waits for every connection to finish its current batch and close.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    max_clients: usize,
    script_memory_bytes: usize,
) {
    let mut acceptor = Acceptor::new(listener, max_clients, "RESP", "--max-clients");
    let port = acceptor.local_port();
    let fsync_name = match engine.fsync_mode() {
        FsyncMode::Always => "always",
        FsyncMode::Periodic(_) => "periodic",
    };
    let shared = Arc::new(Shared {
        engine,
        clients: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
        rejected: AtomicU64::new(0),
        started: Instant::now(),
        port,
        fsync_name,
        max_clients: acceptor.max(),
        scripts: script::Scripts::new(script_memory_bytes),
        calls: command::TABLE.iter().map(|_| AtomicU64::new(0)).collect(),
    });
    let for_conns = shutdown.clone();
    loop {
        tokio::select! {
            a = acceptor.next() => match a {
                Accepted::Admitted(sock, p) => {
                    drop(tokio::spawn(conn::run(shared.clone(), sock, for_conns.clone(), p)))
                }
                Accepted::Refused(mut sock) => {
                    shared.rejected.fetch_add(1, Ordering::Relaxed);
                    drop(tokio::spawn(async move {
                        let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
                    }))
                }
            },
            _ = stopped(&mut shutdown) => break,
        }
    }
    info!("RESP: no new connections; waiting for open ones to finish");
    // A script that runs away (even one SCRIPT KILL refuses) must not hold up the shutdown.
    shared.scripts.stop_for_shutdown();
    acceptor.drain().await;
}
