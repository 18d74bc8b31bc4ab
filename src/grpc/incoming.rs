//! The gRPC listener as tonic's incoming stream, with the connection cap (`listen::Acceptor`).
//!
//! A connection over the cap still gets a precise answer when there is room for one: it is
//! served for [`REFUSAL_GRACE`] with every call refused, UNAVAILABLE `too many gRPC connections`
//! (by [`refuse_over_limit`]), then closed. At most [`REFUSAL_SLOTS`] such connections exist at
//! once (they are part of `fds::RESERVED_FDS`); beyond that, one over the cap is closed at once
//! and its client sees only a broken connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Status};

use crate::listen::{Accepted, Acceptor};

/// Connections over the cap that are answered with a status rather than closed, at once.
pub const REFUSAL_SLOTS: usize = 32;
/// How long such a connection is served (refusing every call) before it is closed.
pub const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// Admits at most `max` connections from `listener` (see the module docs for the others).
pub fn incoming(
    listener: TcpListener,
    max: usize,
) -> impl futures_util::Stream<Item = std::io::Result<GrpcConn>> {
    let acceptor = Acceptor::new(listener, max, "gRPC", "--max-grpc-connections");
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let why: Arc<str> = format!(
        "too many gRPC connections: {} open, the server's limit (--max-grpc-connections); \
         retry later",
        acceptor.max()
    )
    .into();
    futures_util::stream::unfold(acceptor, move |mut acceptor| {
        let (refusals, why) = (refusals.clone(), why.clone());
        async move {
            loop {
                let conn = match acceptor.next().await {
                    Accepted::Admitted(stream, permit) => GrpcConn::new(stream, permit, None),
                    Accepted::Refused(stream) => match refusals.clone().try_acquire_owned() {
                        Ok(permit) => GrpcConn::new(stream, permit, Some(why.clone())),
                        Err(_) => continue, // dropping `stream` closes it
                    },
                };
                return Some((Ok(conn), acceptor));
            }
        }
    })
}

/// Refuses every call on a connection over the cap; a tonic interceptor for all services.
pub fn refuse_over_limit(req: Request<()>) -> Result<Request<()>, Status> {
    match req
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.refused.as_ref())
    {
        Some(why) => Err(Status::unavailable(why.to_string())),
        None => Ok(req),
    }
}

/// What tonic puts into every request's extensions about its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    /// Set on a connection over the cap: why its calls are refused.
    pub refused: Option<Arc<str>>,
}

/// An accepted gRPC connection: the socket and the slot it holds until tonic drops it.
pub struct GrpcConn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    refused: Option<Arc<str>>,
    /// Over the cap: reads end (EOF, so the connection closes) once this fires.
    close_at: Option<Pin<Box<Sleep>>>,
}

impl GrpcConn {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, refused: Option<Arc<str>>) -> Self {
        // TCP_NODELAY: a reply is a few small HTTP/2 frames; Nagle would hold them back.
        let _ = stream.set_nodelay(true);
        let close_at = refused
            .is_some()
            .then(|| Box::pin(tokio::time::sleep(REFUSAL_GRACE)));
        GrpcConn {
            stream,
            _permit: permit,
            refused,
            close_at,
        }
    }
}

impl Connected for GrpcConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.stream.connect_info(),
            refused: self.refused.clone(),
        }
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(t) = &mut self.close_at
            && t.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Ok(())); // nothing read: EOF
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
