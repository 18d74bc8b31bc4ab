//! The in-memory gRPC ceiling for benchmarks (`tally ceiling`): `tally.v1.CounterService` on
//! the same tonic stack and connection handling as the server, but `Incr` adds to a map in
//! memory, with no engine, no log and no durability. What `tally bench` reaches against it is
//! the most any durable server can reach with this client on this machine; the benchmark
//! reports the real server as a ratio to it. Every other method is UNIMPLEMENTED.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::pb::{
    self, counter_service_server::CounterService, counter_service_server::CounterServiceServer,
};

/// The counters, by key.
#[derive(Default)]
struct Ceiling {
    counters: Mutex<HashMap<String, i64>>,
}

impl Ceiling {
    fn incr(&self, r: pb::IncrRequest) -> pb::IncrResponse {
        let by = r.by.unwrap_or(1);
        let mut m = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let v = m.entry(r.key).or_default();
        *v = v.wrapping_add(by);
        pb::IncrResponse {
            value: *v,
            applied: by,
            ttl_ms: -1,
        }
    }
}

/// The service impl: `incr` adds, every other method is UNIMPLEMENTED. (The whole impl comes
/// from the macro because `async_trait` must see the methods expanded.)
macro_rules! ceiling_service {
    ($($name:ident($req:ident) -> $resp:ident;)*) => {
        #[tonic::async_trait]
        impl CounterService for Ceiling {
            async fn incr(
                &self,
                req: Request<pb::IncrRequest>,
            ) -> Result<Response<pb::IncrResponse>, Status> {
                Ok(Response::new(Ceiling::incr(self, req.into_inner())))
            }
            $(
                async fn $name(
                    &self,
                    _: Request<pb::$req>,
                ) -> Result<Response<pb::$resp>, Status> {
                    Err(Status::unimplemented("the in-memory ceiling serves only Incr"))
                }
            )*
        }
    };
}

ceiling_service! {
    incr_by_float(IncrByFloatRequest) -> IncrByFloatResponse;
    get(GetRequest) -> GetResponse;
    set(SetRequest) -> SetResponse;
    delete(DeleteRequest) -> DeleteResponse;
    expire(ExpireRequest) -> ExpireResponse;
    ttl(TtlRequest) -> TtlResponse;
    persist(PersistRequest) -> PersistResponse;
    txn(TxnRequest) -> TxnResponse;
    throttle(ThrottleRequest) -> ThrottleResponse;
    stats(StatsRequest) -> StatsResponse;
}

/// Serves the ceiling on `listener` until the process ends.
pub async fn serve_ceiling(
    listener: TcpListener,
    max_connections: usize,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(CounterServiceServer::new(Ceiling::default()))
        .serve_with_incoming(super::incoming(listener, max_connections))
        .await
}
