//! `tally.v1.CounterService` on top of the engine.
//!
//! The engine's step (stripe lock, sled read and apply, WAL buffer append) takes microseconds and
//! never waits on the disk, so it runs inline on the tokio worker. The wait for the group-commit
//! fsync is asynchronous (`durable::acked`). Writes that take a `request_id` go through
//! [`Service::write`], which makes a retry exactly-once (module `once`, `engine::dedupe`).

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use super::pb::{self, counter_service_server::CounterService};
use super::{convert, once, validate};
use crate::engine::{Ack, Engine, Once, RequestId, Ttl, Tx};

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

    /// Runs `f` over `keys` as one write and replies with `to_pb` of its result, once durable.
    /// With a request id, a repeat gets the first call's response, stored encoded.
    async fn write<R: Clone, P: Message + Default>(
        &self,
        keys: &[&[u8]],
        rid: Option<&RequestId>,
        f: impl FnOnce(&mut Tx<'_>) -> crate::Result<R>,
        to_pb: impl Fn(R) -> P,
    ) -> Result<Response<P>, Status> {
        let r = self
            .engine
            .run_once(keys, rid, f, |r| to_pb(r.clone()).encode_to_vec());
        Ok(Response::new(match self.settle(r).await? {
            Once::Fresh(r) => to_pb(r),
            Once::Repeat(b) => P::decode(b.as_slice()).map_err(|e| {
                Status::internal(format!(
                    "the response stored for this request_id does not decode: {e}"
                ))
            })?,
        }))
    }
}

#[tonic::async_trait]
impl CounterService for Service {
    async fn incr(
        &self,
        req: Request<pb::IncrRequest>,
    ) -> Result<Response<pb::IncrResponse>, Status> {
        let (r, rid) = once::take("Incr", req.into_inner())?;
        let (key, ex) = validate::incr(&r)?;
        self.write(
            &[key],
            rid.as_ref(),
            |tx| tx.increx(key, &ex),
            convert::incr_response,
        )
        .await
    }

    async fn incr_by_float(
        &self,
        req: Request<pb::IncrByFloatRequest>,
    ) -> Result<Response<pb::IncrByFloatResponse>, Status> {
        let (r, rid) = once::take("IncrByFloat", req.into_inner())?;
        let (key, by) = validate::incr_by_float(&r)?;
        let f = |tx: &mut Tx<'_>| tx.incr_by_float(key, by);
        self.write(&[key], rid.as_ref(), f, convert::incr_by_float_response)
            .await
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = req.into_inner();
        let key = validate::key_only(&r, &r.key)?;
        let v = self.settle(self.engine.get(key)).await?;
        Ok(Response::new(convert::get_response(v)))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let (r, rid) = once::take("Set", req.into_inner())?;
        let (key, value, opts) = validate::set(&r)?;
        let f = |tx: &mut Tx<'_>| tx.set(key, value, &opts, "set");
        self.write(&[key], rid.as_ref(), f, convert::set_response)
            .await
    }

    async fn expire(
        &self,
        req: Request<pb::ExpireRequest>,
    ) -> Result<Response<pb::ExpireResponse>, Status> {
        let (r, rid) = once::take("Expire", req.into_inner())?;
        let (key, when, cond) = validate::expire(&r)?;
        let f = |tx: &mut Tx<'_>| tx.expire(key, when, cond, "expire");
        let to_pb = |applied| pb::ExpireResponse { applied };
        self.write(&[key], rid.as_ref(), f, to_pb).await
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
        let (r, rid) = once::take("Persist", req.into_inner())?;
        let key = validate::key_only(&r, &r.key)?;
        let to_pb = |applied| pb::PersistResponse { applied };
        self.write(&[key], rid.as_ref(), |tx| tx.persist(key), to_pb)
            .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (r, rid) = once::take("Delete", req.into_inner())?;
        let keys = validate::delete(&r)?;
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let to_pb = |deleted| pb::DeleteResponse { deleted };
        self.write(&keys, rid.as_ref(), |tx| tx.delete(&keys), to_pb)
            .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let (r, rid) = once::take("Txn", req.into_inner())?;
        let txn = validate::txn(&r)?;
        let f = |tx: &mut Tx<'_>| txn.run(tx);
        self.write(&txn.keys(), rid.as_ref(), f, convert::txn_response)
            .await
    }

    async fn throttle(
        &self,
        req: Request<pb::ThrottleRequest>,
    ) -> Result<Response<pb::ThrottleResponse>, Status> {
        let (r, rid) = once::take("Throttle", req.into_inner())?;
        let (key, t) = validate::throttle(&r)?;
        let f = |tx: &mut Tx<'_>| tx.throttle(key, &t);
        self.write(&[key], rid.as_ref(), f, convert::throttle_response)
            .await
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
            request_ids: s.requests.entries as i64,
            request_id_hits: s.requests.hits as i64,
            request_id_evictions: s.requests.evictions as i64,
            request_id_expired: s.requests.expired as i64,
        }))
    }
}
