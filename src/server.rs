//! Server lifecycle: `run(engine, listeners, shutdown, options)` serves gRPC (with health and
//! reflection) and, if given a listener, the Redis protocol, starts the expiry sweeper, and,
//! when `shutdown` resolves, stops accepting, lets in-flight calls and open RESP batches finish,
//! then closes the engine (drain and fsync the WAL, checkpoint sled). Calls still open after
//! the shutdown grace (streams that never end on their own, such as `Health/Watch`) are closed,
//! so a watching load balancer cannot hold a shutdown open. Both listeners admit a capped
//! number of connections (`listen`; the caps are in [`Options`]).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::config::MAX_REQUEST_BYTES;
use crate::engine::Engine;
use crate::grpc::pb::counter_service_server::CounterServiceServer;
use crate::grpc::{FILE_DESCRIPTOR_SET, Service};

/// Hard ceiling at which tonic itself refuses a message (OUT_OF_RANGE, naming the limit).
/// Between `MAX_REQUEST_BYTES` and this, our own check answers INVALID_ARGUMENT.
pub const HARD_MAX_MESSAGE_BYTES: usize = 4 * MAX_REQUEST_BYTES;

/// How long shutdown waits for open gRPC calls before closing them (`--shutdown-grace-ms`).
/// A unary call finishes within an fsync; only streams (a `Health/Watch`) need the cut-off.
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How the server treats its clients (the engine's own settings are in `Config`).
#[derive(Clone, Debug)]
pub struct Options {
    /// gRPC calls still open this long after shutdown began are closed, not waited for.
    pub shutdown_grace: std::time::Duration,
    /// Most Redis-protocol connections at once (Redis's `maxclients`).
    pub max_clients: usize,
    /// Most gRPC connections at once; calls on one over it get UNAVAILABLE (see
    /// `grpc::incoming`).
    pub max_grpc_connections: usize,
    /// Cap on the Lua interpreter's memory (`--script-memory-bytes`).
    pub script_memory_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_clients: crate::config::DEFAULT_MAX_CLIENTS,
            max_grpc_connections: crate::config::DEFAULT_MAX_GRPC_CONNECTIONS,
            script_memory_bytes: crate::config::DEFAULT_SCRIPT_MEMORY_BYTES,
        }
    }
}

/// How often health checks whether the engine has failed.
const HEALTH_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The sockets a server listens on.
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Redis protocol; `None` turns it off.
    pub resp: Option<TcpListener>,
}

/// Serves until `shutdown` resolves, then closes `engine`; gRPC calls still open
/// `options.shutdown_grace` after `shutdown` resolved are closed rather than waited for.
pub async fn run(
    engine: Arc<Engine>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: Options,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let grace = options.shutdown_grace;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CounterServiceServer<Service>>().await;
    // grpcurl 1.8 speaks only v1alpha reflection, newer clients try v1 first: serve both, and
    // register every descriptor set with each so `list` shows the same services on both.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let counter = CounterServiceServer::new(Service::new(engine.clone()))
        .max_decoding_message_size(HARD_MAX_MESSAGE_BYTES);

    crate::expiry::spawn(&engine);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let health_on_stop = health.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down: no new connections; finishing in-flight calls");
        health_on_stop
            .set_not_serving::<CounterServiceServer<Service>>()
            .await;
        let _ = stop_tx.send(true);
    });

    // Fail-stop is visible to load balancers: once the WAL refuses writes, health says so.
    let (health_watch, watched) = (health.clone(), engine.clone());
    let mut health_stop = stop_rx.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_POLL) => {}
                _ = health_stop.wait_for(|stop| *stop) => return,
            }
            if let Some(why) = watched.failure() {
                tracing::error!("reporting NOT_SERVING: {why}");
                health_watch
                    .set_not_serving::<CounterServiceServer<Service>>()
                    .await;
                health_watch
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                return;
            }
        }
    });

    let resp = listeners.resp.map(|l| {
        info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving RESP");
        tokio::spawn(crate::resp::serve(
            engine.clone(),
            l,
            stop_rx.clone(),
            options.max_clients,
            options.script_memory_bytes,
        ))
    });
    info!(addr = %listeners.grpc.local_addr()?, "serving gRPC");
    let incoming = crate::grpc::incoming(listeners.grpc, options.max_grpc_connections);
    let mut grpc_stop = stop_rx.clone();
    let grpc = Server::builder()
        .layer(InterceptorLayer::new(crate::grpc::refuse_over_limit))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(counter)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = grpc_stop.wait_for(|stop| *stop).await;
        });
    let mut grace_stop = stop_rx.clone();
    let grace_over = async move {
        let _ = grace_stop.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = grpc => r?,
        _ = grace_over => warn!(
            "gRPC calls still open {} ms after shutdown began (streams such as Health/Watch); \
             closing them",
            grace.as_millis()
        ),
    }
    if let Some(r) = resp {
        r.await?;
    }
    tokio::task::spawn_blocking(move || engine.close()).await??;
    info!("stopped");
    Ok(())
}
