//! The sweeper: physically removes expired keys.
//!
//! A thread that sleeps until the earliest deadline in the TTL index (at most [`MAX_SLEEP`], so a
//! key given an earlier deadline meanwhile, or a jump of the wall clock, is noticed soon), then
//! calls [`Engine::sweep`] in batches of [`BATCH`] keys. Each batch is one WAL record that goes
//! through the same write path as a client's Delete, so replay agrees with what the sweeper did,
//! and the stripe locks are released between batches, so client writes are never stalled for
//! longer than one batch. Keys are already invisible to clients from the millisecond after
//! their deadline; the sweeper only reclaims space and keeps `Stats.keys` honest.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::engine::Engine;

/// Most keys removed in one record.
pub const BATCH: usize = 256;
/// Longest sleep between looks at the TTL index.
pub const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Starts the sweeper for `engine`; [`Engine::close`] stops and joins it.
pub fn spawn(engine: &Arc<Engine>) {
    engine.spawn_background("tally-sweeper", |e| match sweep_due(e) {
        Ok(()) => next_sleep(e),
        Err(err) => {
            warn!("expiry sweep failed: {err}");
            MAX_SLEEP
        }
    });
}

/// Removes every key that is due, a batch at a time.
fn sweep_due(e: &Engine) -> crate::Result<()> {
    loop {
        let n = e.sweep(BATCH)?;
        if n > 0 {
            debug!(removed = n, "swept expired keys");
        }
        if n < BATCH || e.is_closed() {
            return Ok(());
        }
    }
}

fn next_sleep(e: &Engine) -> Duration {
    match e.next_deadline() {
        // Expired means now > deadline, so wake one millisecond after it.
        Ok(Some(d)) => {
            let ms = d
                .saturating_sub(e.now_ms())
                .saturating_add(1)
                .clamp(1, MAX_SLEEP.as_millis() as i64);
            Duration::from_millis(ms as u64)
        }
        _ => MAX_SLEEP,
    }
}
