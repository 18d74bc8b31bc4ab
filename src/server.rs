//! Server lifecycle: `run(engine, listener, shutdown)` wires the engine to gRPC (with health and
//! reflection), starts the expiry sweeper, and, when `shutdown` resolves, stops accepting, lets in-flight calls finish,
//! then closes the engine (drain and fsync the WAL, checkpoint sled).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::config::MAX_REQUEST_BYTES;
use crate::engine::Engine;
use crate::grpc::pb::counter_service_server::CounterServiceServer;
use crate::grpc::{FILE_DESCRIPTOR_SET, Service};

/// Hard ceiling at which tonic itself refuses a message (OUT_OF_RANGE, naming the limit).
/// Between `MAX_REQUEST_BYTES` and this, our own check answers INVALID_ARGUMENT.
pub const HARD_MAX_MESSAGE_BYTES: usize = 4 * MAX_REQUEST_BYTES;

/// Serves gRPC on `listener` until `shutdown` resolves, then closes `engine`.
pub async fn run(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
    let addr = listener.local_addr()?;
    info!(%addr, "serving gRPC");
    let health_on_stop = health.clone();
    Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(counter)
        // TCP_NODELAY: a reply is a few small HTTP/2 frames; Nagle would hold them back.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                shutdown.await;
                info!("shutting down: no new connections; finishing in-flight calls");
                health_on_stop
                    .set_not_serving::<CounterServiceServer<Service>>()
                    .await;
            },
        )
        .await?;
    tokio::task::spawn_blocking(move || engine.close()).await??;
    info!("stopped");
    Ok(())
}
