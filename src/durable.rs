//! The async edge of the WAL's acknowledgement: `acked(engine, lsn).await` resolves once the
//! group commit covering `lsn` is done. Shared by the gRPC and RESP servers, which must not
//! import each other. The WAL writer completes a oneshot channel; nothing blocks a tokio worker.

use crate::engine::Engine;
use crate::error::{Error, Result};

/// Waits until `lsn` is acknowledged (at once if it already is).
pub async fn acked(engine: &Engine, lsn: u64) -> Result<()> {
    if engine.is_acked(lsn) {
        return Ok(());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine.notify(lsn, Box::new(move |r| drop(tx.send(r))));
    rx.await
        .map_err(|_| Error::Unavailable("the write-ahead log stopped".into()))?
}
