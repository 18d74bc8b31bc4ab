//! Tally: a persistent single-node counter database with Redis counter semantics.
//!
//! ```text
//!  gRPC (grpc/)  ──┐
//!                  ├─> engine ──(1) stripe lock, read, compute
//!  (RESP, later) ──┘          ──(2) under the WAL lock: apply to sled (storage/), append (wal/)
//!                             ──(3) Ack{lsn} ─> caller waits until the WAL writer's
//!                                   group-commit fsync covers lsn, then replies
//! ```
//! Expiry is another writer: the sweeper (`expiry`) removes due keys through the same path.
//! The core (`wal`, `storage`, `engine`, `expiry`, `value`, `clock`, `error`, `config`) is
//! synchronous and knows nothing of tonic; `grpc` and `server` are the async edges.

pub mod clock;
pub mod config;
pub mod durable;
pub mod engine;
pub mod error;
pub mod expiry;
pub mod fault;
pub mod fds;
pub mod grpc;
pub mod listen;
pub mod resp;
pub mod server;
pub mod storage;
pub mod value;
pub mod wal;

pub use error::{Error, Result};
