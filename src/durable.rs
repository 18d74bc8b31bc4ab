//! The async edges of the engine's waits, so no tokio worker ever blocks on them: `acked(engine,
//! lsn).await` resolves once the group commit covering `lsn` is done, and `counted(engine)
//! .await` once the startup key census is (for exact key counts). Shared by the gRPC and RESP servers, which must not
//! import each other. Under load the WAL writer thread completes a oneshot channel. When the log
//! is idle the caller commits inline: it blocks its tokio worker for one write + fsync (~150 µs
//! here), which is cheaper than two thread wake-ups, and only happens when nothing else waits.
//! Never on a runtime with one worker: there the blocked worker is the only one that could read
//! the other clients' requests, so each of them would find the log idle in turn and pay a whole
//! fsync alone (measured: 50 clients fell from 47k to 6k INCR/s). With `--fsync periodic` a
//! commit is only a `write`, so the caller always leads it (below).

use crate::engine::{CENSUS_WAIT, Engine};
use crate::error::{Error, Result};
use crate::wal::FsyncMode;

/// Waits until `lsn` is acknowledged (at once if it already is).
///
/// With `--fsync periodic` a commit is one `write`, so the caller leads it itself (see
/// `Wal::commit_inline`), on any runtime. (Tried: a `yield_now` first, so that the tasks ready
/// in the same turn share one `write`. It cut the `pwrite`s by 3x but tripled `epoll_wait`s and
/// doubled futex calls: 12.9 against 11.2 µs of CPU per INCR at 50 clients.)
pub async fn acked(engine: &Engine, lsn: u64) -> Result<()> {
    if engine.is_acked(lsn) {
        return Ok(());
    }
    let periodic = matches!(engine.fsync_mode(), FsyncMode::Periodic(_));
    if (periodic || other_workers_run())
        && let Some(r) = engine.commit_inline(lsn)
    {
        return r;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine.notify(lsn, Box::new(move |r| drop(tx.send(r))));
    rx.await
        .map_err(|_| Error::Unavailable("the write-ahead log stopped".into()))?
}

/// Waits, up to [`CENSUS_WAIT`], for the startup key census (see `engine::census`); at once
/// when it is done. After the wait the key counts may still be partial (`Stats::keys_exact`).
pub async fn counted(engine: &Engine) {
    if engine.census_done() {
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine.on_census_done(Box::new(move || {
        let _ = tx.send(());
    }));
    let _ = tokio::time::timeout(CENSUS_WAIT, rx).await;
}

/// True if the current tokio runtime has another worker to run tasks while this one blocks.
fn other_workers_run() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_workers() > 1)
}
