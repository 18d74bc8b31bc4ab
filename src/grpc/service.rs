//! `tally.v1.CounterService` on top of the engine.
//!
//! The engine's step (stripe lock, sled read and apply, WAL buffer append) takes microseconds and
//! never waits on the disk, so it runs inline on the tokio worker. The wait for the group-commit
//! fsync is asynchronous (`durable::acked`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::{self, counter_service_server::CounterService};
use super::{convert, validate};
use crate::engine::{Ack, Engine, Ttl};

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    engine: Arc<Engine>,
}

impl Service {
    /// Serves `engine`.
    pub fn new(engine: Arc<Engine>) -> Service {
        Service { engine }
    }

    /// The reply for an engine call, once the WAL acknowledges what it reports: the result's
    /// LSN, or for an error that reveals stored state, the newest LSN it may have seen.
    async fn settle<T>(&self, r: crate::Result<Ack<T>>) -> Result<T, Status> {
        match r {
            Ok(ack) => {
                crate::durable::acked(&self.engine, ack.lsn).await?;
                Ok(ack.value)
            }
            Err(e) => {
                let lsn = self.engine.lsn_seen_by(&e);
                crate::durable::acked(&self.engine, lsn).await?;
                Err(e.into())
            }
        }
    }
}

#[tonic::async_trait]
impl CounterService for Service {
    async fn incr(
        &self,
        req: Request<pb::IncrRequest>,
    ) -> Result<Response<pb::IncrResponse>, Status> {
        let r = req.into_inner();
        let (key, req) = validate::incr(&r)?;
        let out = self.settle(self.engine.increx(key, &req)).await?;
        Ok(Response::new(convert::incr_response(out)))
    }

    async fn incr_by_float(
        &self,
        req: Request<pb::IncrByFloatRequest>,
    ) -> Result<Response<pb::IncrByFloatResponse>, Status> {
        let r = req.into_inner();
        let (key, by) = validate::incr_by_float(&r)?;
        let v = self.settle(self.engine.incr_by_float(key, by)).await?;
        Ok(Response::new(pb::IncrByFloatResponse {
            value: String::from_utf8_lossy(&v).into_owned(),
        }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = req.into_inner();
        let key = validate::key_only(&r, &r.key)?;
        let v = self.settle(self.engine.get(key)).await?;
        Ok(Response::new(convert::get_response(v)))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let r = req.into_inner();
        let (key, value, opts) = validate::set(&r)?;
        let out = self.settle(self.engine.set(key, value, &opts)).await?;
        Ok(Response::new(convert::set_response(out)))
    }

    async fn expire(
        &self,
        req: Request<pb::ExpireRequest>,
    ) -> Result<Response<pb::ExpireResponse>, Status> {
        let r = req.into_inner();
        let (key, when, cond) = validate::expire(&r)?;
        let applied = self.settle(self.engine.expire(key, when, cond)).await?;
        Ok(Response::new(pb::ExpireResponse { applied }))
    }

    async fn ttl(&self, req: Request<pb::TtlRequest>) -> Result<Response<pb::TtlResponse>, Status> {
        let r = req.into_inner();
        let key = validate::key_only(&r, &r.key)?;
        let (ttl_ms, expire_at_unix_ms) = match self.settle(self.engine.ttl(key)).await? {
            Ttl::Missing => (-2, -2),
            Ttl::Persistent => (-1, -1),
            Ttl::Expires {
                deadline_ms,
                remaining_ms,
            } => (remaining_ms, deadline_ms),
        };
        Ok(Response::new(pb::TtlResponse {
            ttl_ms,
            expire_at_unix_ms,
        }))
    }

    async fn persist(
        &self,
        req: Request<pb::PersistRequest>,
    ) -> Result<Response<pb::PersistResponse>, Status> {
        let r = req.into_inner();
        let key = validate::key_only(&r, &r.key)?;
        let applied = self.settle(self.engine.persist(key)).await?;
        Ok(Response::new(pb::PersistResponse { applied }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = req.into_inner();
        let keys = validate::delete(&r)?;
        let deleted = self.settle(self.engine.delete(&keys)).await?;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let r = req.into_inner();
        let txn = validate::txn(&r)?;
        let out = self.settle(self.engine.txn(&txn)).await?;
        Ok(Response::new(convert::txn_response(out)))
    }

    async fn throttle(
        &self,
        req: Request<pb::ThrottleRequest>,
    ) -> Result<Response<pb::ThrottleResponse>, Status> {
        let r = req.into_inner();
        let (key, t) = validate::throttle(&r)?;
        let o = self.settle(self.engine.throttle(key, &t)).await?;
        Ok(Response::new(pb::ThrottleResponse {
            limited: o.limited,
            limit: o.limit,
            remaining: o.remaining,
            retry_after_ms: o.retry_after_ms,
            reset_after_ms: o.reset_after_ms,
        }))
    }

    async fn stats(
        &self,
        _req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        crate::durable::counted(&self.engine).await;
        let s = self.engine.stats();
        Ok(Response::new(pb::StatsResponse {
            keys: s.keys as i64,
            wal_bytes: s.wal_bytes as i64,
            wal_segments: s.wal_segments as i64,
            durable_lsn: s.durable_lsn as i64,
            checkpoint_lsn: s.checkpoint_lsn as i64,
            last_lsn: s.last_lsn as i64,
            keys_with_ttl: s.keys_with_ttl as i64,
            expired_keys: s.expired as i64,
            wal_fsyncs: s.wal_fsyncs as i64,
            keys_counting: !s.keys_exact,
            checkpoints: s.checkpoints as i64,
        }))
    }
}
