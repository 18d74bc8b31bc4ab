//! Exactly-once writes by request id. A call that names an id ([`RequestId`]) runs as usual,
//! and its record also stores the id with the fingerprint of the request and the encoded
//! response (`Op::Request`): one WAL record, so the id is durable exactly when the write is,
//! and part of every checkpoint since it lives in sled beside the keys. A later call with the
//! same id, within the window, is answered from it ([`Once::Repeat`]) and changes nothing;
//! with a different fingerprint it is `AlreadyExists`. A call that fails stores nothing, so
//! its retry runs again.
//!
//! The id is checked and written under the stripe lock of the id as well as of the keys, so
//! two calls with one id serialize and only the first one writes.
//!
//! Crash safety. The id carries a copy of its record's ops. A record the WAL did not keep (never
//! acknowledged, so its LSN is past the WAL's end after a crash) may still have reached sled's
//! files, and then its id can outlive its effects in two ways: a record of plain inserts (one
//! op and its id, see `storage`) stores the id first, and sled recovers a prefix of its writes,
//! so the crash can fall between the two; and replay rewrites every key an older durable record
//! touched with that record's value, undoing the newer effects whatever sled kept (a Txn's
//! batch included). At startup, after replay, [`Engine::repair_requests`] finds the ids past
//! the WAL's end and logs each again with its ops, oldest first (restoring the write the id
//! promises), then checkpoints: an unacknowledged write is then either whole with its id or
//! absent with it, never half.
//!
//! Bounds: ids older than `dedupe_window` are forgotten, and past `dedupe_max_entries` the
//! oldest go first, by a background thread (so the count can run over by what arrives in
//! one of its ticks). Forgetting is not logged: a replay may bring an id back, which only
//! answers a late retry with its true response.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tracing::{error, info, warn};

use super::{Ack, Engine, Tx};
use crate::config::MAX_REQUEST_ID_BYTES;
use crate::error::{Error, Result};
use crate::wal::Op;

/// Age-index entries the background thread looks at per tick.
const STEP: usize = 1024;
/// How often it looks when there was nothing to drop.
const TICK: Duration = Duration::from_millis(100);

/// A request id and the fingerprint of the request it names (the caller's digest of
/// everything but the id, so a different request under the same id is caught).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    pub id: Vec<u8>,
    pub fingerprint: [u8; 16],
}

impl RequestId {
    /// Checks the id's length (1 to `MAX_REQUEST_ID_BYTES` bytes).
    pub fn new(id: &[u8], fingerprint: [u8; 16]) -> Result<RequestId> {
        if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES {
            return Err(Error::InvalidArgument(format!(
                "request_id is {} bytes; it must be 1 to {MAX_REQUEST_ID_BYTES} bytes",
                id.len()
            )));
        }
        Ok(RequestId {
            id: id.to_vec(),
            fingerprint,
        })
    }
}

/// What a call with a request id did.
#[derive(Debug, PartialEq, Eq)]
pub enum Once<R> {
    /// It ran now.
    Fresh(R),
    /// The id was used before for this request: the response it got then, as encoded by the
    /// caller's `reply`.
    Repeat(Vec<u8>),
}

/// The `entry` of an `Op::Request`: `fingerprint [16] | response_len u32 | response | op*`,
/// the record's own ops encoded as in a record.
struct Entry {
    fingerprint: [u8; 16],
    response: Vec<u8>,
    ops: Vec<Op>,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(20 + self.response.len() + 32);
        b.extend_from_slice(&self.fingerprint);
        b.extend_from_slice(&(self.response.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.response);
        for op in &self.ops {
            op.encode(&mut b);
        }
        b
    }

    fn decode(b: &[u8]) -> Result<Entry> {
        let bad = || Error::Corruption("damaged request-id entry".into());
        let fingerprint: [u8; 16] = b.get(..16).ok_or_else(bad)?.try_into().unwrap();
        let n = u32::from_le_bytes(b.get(16..20).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let response = b.get(20..20 + n).ok_or_else(bad)?.to_vec();
        let ops = Op::decode_all(&b[20 + n..])
            .map_err(|m| Error::Corruption(format!("request-id entry: {m}")))?;
        Ok(Entry {
            fingerprint,
            response,
            ops,
        })
    }
}

/// Counters for `Stats`.
#[derive(Default)]
pub(super) struct Dedupe {
    pub(super) entries: AtomicI64,
    hits: AtomicU64,
    evictions: AtomicU64,
    expired: AtomicU64,
}

/// Request-id figures, for `Stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DedupeStats {
    /// Ids remembered.
    pub entries: u64,
    /// Calls answered from a remembered id since start.
    pub hits: u64,
    /// Ids dropped for the entry limit since start.
    pub evictions: u64,
    /// Ids dropped for the window since start.
    pub expired: u64,
}

impl Engine {
    /// [`Engine::run`] with an optional request id: with one, a repeat of an earlier call is
    /// answered from it, and a fresh call stores `reply(&result)` with its write. See the
    /// module doc.
    pub fn run_once<R>(
        &self,
        keys: &[&[u8]],
        rid: Option<&RequestId>,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R>,
        reply: impl FnOnce(&R) -> Vec<u8>,
    ) -> Result<Ack<Once<R>>> {
        let Some(rid) = rid else {
            let ack = self.run(keys, f)?;
            return Ok(Ack {
                value: Once::Fresh(ack.value),
                lsn: ack.lsn,
            });
        };
        self.run_with(keys, Some(&rid.id), |tx| {
            if let Some(response) = self.remembered(rid, tx.now())? {
                self.dedupe.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Once::Repeat(response));
            }
            let value = f(tx)?;
            let entry = Entry {
                fingerprint: rid.fingerprint,
                response: reply(&value),
                ops: tx.ops().to_vec(),
            };
            tx.remember(Op::Request {
                id: rid.id.clone(),
                created_ms: tx.now(),
                entry: entry.encode(),
            })?;
            Ok(Once::Fresh(value))
        })
    }

    /// The response stored for `rid`, if it is remembered and within the window;
    /// `AlreadyExists` if it names another request.
    fn remembered(&self, rid: &RequestId, now: i64) -> Result<Option<Vec<u8>>> {
        let Some(stored) = self.store.request(&rid.id)? else {
            return Ok(None);
        };
        if self.outlived(stored.created_ms, now) {
            return Ok(None);
        }
        let entry = Entry::decode(&stored.entry)?;
        if entry.fingerprint != rid.fingerprint {
            return Err(Error::AlreadyExists(format!(
                "request_id {:?} was used for a different request (ids are remembered for {} s); \
                 use a new id for a new request",
                String::from_utf8_lossy(&rid.id),
                self.config.dedupe_window.as_secs()
            )));
        }
        Ok(Some(entry.response))
    }

    /// True if an id first used at `created_ms` is past the window at `now`.
    fn outlived(&self, created_ms: i64, now: i64) -> bool {
        now.saturating_sub(created_ms) > self.config.dedupe_window.as_millis() as i64
    }

    /// Request-id figures.
    pub fn dedupe_stats(&self) -> DedupeStats {
        DedupeStats {
            entries: self.dedupe.entries.load(Ordering::Relaxed).max(0) as u64,
            hits: self.dedupe.hits.load(Ordering::Relaxed),
            evictions: self.dedupe.evictions.load(Ordering::Relaxed),
            expired: self.dedupe.expired.load(Ordering::Relaxed),
        }
    }

    /// Startup, after replay: logs again, with its ops, every id whose record the WAL did not
    /// keep (see the module doc), waits for that to be durable and checkpoints; then counts
    /// the ids.
    pub(super) fn repair_requests(&self) -> Result<()> {
        let orphans = self.store.requests_after(self.wal.last_lsn())?;
        let mut last = 0;
        for a in &orphans {
            let Some(stored) = self.store.request(&a.id)? else {
                continue;
            };
            let entry = Entry::decode(&stored.entry)?;
            let mut ops = entry.ops;
            ops.push(Op::Request {
                id: a.id.clone(),
                created_ms: stored.created_ms,
                entry: stored.entry,
            });
            last = self.write(&ops)?;
        }
        if !orphans.is_empty() {
            self.wal.wait(last)?;
            self.checkpoint()?;
            warn!(
                ids = orphans.len(),
                "request ids outlived their records in a crash: their writes were logged again \
                 whole, so each such write is there with its id"
            );
        }
        let n = self.store.count_requests()?;
        self.dedupe.entries.store(n as i64, Ordering::Relaxed);
        if n > 0 {
            info!(request_ids = n, "request ids remembered");
        }
        Ok(())
    }

    /// Starts the thread that forgets ids past the window or over the entry limit.
    pub(super) fn spawn_dedupe(self: &Arc<Self>) {
        self.spawn_background("tally-dedupe", |e| match e.dedupe_step() {
            Ok(n) if n == STEP => Duration::ZERO,
            Ok(_) => TICK,
            Err(err) => {
                error!("forgetting old request ids: {err}; retrying");
                Duration::from_secs(1)
            }
        });
    }

    /// Forgets the oldest ids while they are past the window or over the limit; returns how
    /// many index entries it went through.
    fn dedupe_step(&self) -> Result<usize> {
        let now = self.now_ms();
        let max = self.config.dedupe_max_entries as i64;
        let oldest = self.store.requests_by_age(0, STEP)?;
        let mut seen = 0;
        for a in &oldest {
            let expired = self.outlived(a.created_ms, now);
            if !expired && self.dedupe.entries.load(Ordering::Relaxed) <= max {
                break;
            }
            let _g = self.lock_keys(std::iter::once(a.id.as_slice()))?;
            // With appends paused, as every other write to sled (see `storage::table`).
            if self
                .wal
                .with_appends_paused(|| self.store.remove_request(a))?
            {
                self.dedupe.entries.fetch_sub(1, Ordering::Relaxed);
                let c = if expired {
                    &self.dedupe.expired
                } else {
                    &self.dedupe.evictions
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            seen += 1;
        }
        Ok(seen)
    }
}
