//! Accepting client connections under a limit, for both listeners (RESP and gRPC).
//!
//! Every connection holds a file descriptor, and so does every WAL segment the writer creates
//! and every file a checkpoint fsyncs: if clients could take them all, the WAL could not roll
//! to a new segment nor be checkpointed, and would grow without bound. So each listener admits
//! at most a fixed number of connections (a permit of a semaphore, held for the connection's
//! life) and hands the caller the ones over the limit to refuse; `fds` makes sure the limits
//! fit the process's open-file limit.
//!
//! Admitted connections get TCP keepalive (`config::TCP_KEEPALIVE`), so the slot of a client
//! that vanished without closing is freed. Accept errors (EMFILE and the like) back off instead
//! of spinning, and are logged once per episode rather than per attempt; refusals are logged at
//! most once per `LOG_EVERY`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// Wait after a failed accept before the next try.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Refusals are summed up in one log line at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What [`Acceptor::next`] got.
pub enum Accepted {
    /// Within the limit: the permit frees the slot when dropped with the connection.
    Admitted(TcpStream, OwnedSemaphorePermit),
    /// Over the limit: the caller says why (if its protocol can) and drops it.
    Refused(TcpStream),
}

/// A listener that admits at most `max` connections at once.
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    max: usize,
    /// What the log lines call this listener, and the flag that sets its limit.
    what: &'static str,
    flag: &'static str,
    /// An accept error was logged and no accept has succeeded since.
    failing: bool,
    refused: u64,
    refusals_logged: Option<Instant>,
}

impl Acceptor {
    /// `max` is clamped to 1..=u32::MAX (a semaphore's `acquire_many` takes a u32).
    pub fn new(
        listener: TcpListener,
        max: usize,
        what: &'static str,
        flag: &'static str,
    ) -> Acceptor {
        let max = max.clamp(1, u32::MAX as usize);
        Acceptor {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            max,
            what,
            flag,
            failing: false,
            refused: 0,
            refusals_logged: None,
        }
    }

    /// The limit in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The port listened on (0 if the socket cannot say).
    pub fn local_port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Resolves once every admitted connection has closed. Drops the listener first, so no
    /// new connection arrives meanwhile.
    pub async fn drain(self) {
        drop(self.listener);
        let _ = self.permits.acquire_many(self.max as u32).await;
    }

    /// The next connection; never fails (accept errors are retried after `ACCEPT_RETRY`).
    pub async fn next(&mut self) -> Accepted {
        loop {
            match self.listener.accept().await {
                Ok((sock, _)) => {
                    if self.failing {
                        info!("{} accept works again", self.what);
                        self.failing = false;
                    }
                    return match self.permits.clone().try_acquire_owned() {
                        Ok(p) => {
                            keepalive(&sock);
                            Accepted::Admitted(sock, p)
                        }
                        Err(_) => {
                            self.log_refusal();
                            Accepted::Refused(sock)
                        }
                    };
                }
                Err(e) => {
                    if !self.failing {
                        warn!(
                            "{} accept failed: {e}; retrying every {} ms",
                            self.what,
                            ACCEPT_RETRY.as_millis()
                        );
                        self.failing = true;
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    fn log_refusal(&mut self) {
        self.refused += 1;
        if self
            .refusals_logged
            .is_none_or(|t| t.elapsed() >= LOG_EVERY)
        {
            warn!(
                "{}: refused {} connection(s): {} open, the limit ({})",
                self.what, self.refused, self.max, self.flag
            );
            self.refused = 0;
            self.refusals_logged = Some(Instant::now());
        }
    }
}

/// Turns on TCP keepalive with Redis's timing (see `config::TCP_KEEPALIVE`). A socket that
/// refuses it still serves; it only loses the dead-peer check.
fn keepalive(sock: &TcpStream) {
    let idle = crate::config::TCP_KEEPALIVE;
    let params = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle / 3)
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&params) {
        tracing::debug!("TCP keepalive not set: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn sockopt(sock: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own.
        let r = unsafe {
            libc::getsockopt(sock.as_raw_fd(), level, name, (&raw mut v).cast(), &mut len)
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        v
    }

    #[tokio::test]
    async fn admitted_connections_get_keepalive_and_the_cap_refuses_the_next() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut a = Acceptor::new(l, 1, "test", "--test");
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let Accepted::Admitted(s, _permit) = a.next().await else {
            panic!("the first connection was refused");
        };
        assert_eq!(sockopt(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        let idle = crate::config::TCP_KEEPALIVE.as_secs() as libc::c_int;
        assert_eq!(sockopt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), idle);
        assert_eq!(
            sockopt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            idle / 3
        );
        assert_eq!(sockopt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        assert!(matches!(a.next().await, Accepted::Refused(_)));
    }
}
