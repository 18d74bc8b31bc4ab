//! Shared test helpers: an in-process server on 127.0.0.1:0, and the real `tally` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tally::clock::Clock;
use tally::config::Config;
use tally::engine::Engine;
use tally::grpc::pb::counter_service_client::CounterServiceClient;
use tonic::transport::Channel;

pub mod kv;

pub type Client = CounterServiceClient<Channel>;

/// Asserts `e` has status `code` and a message containing `part`.
pub fn assert_status(e: &tonic::Status, code: tonic::Code, part: &str) {
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(part),
        "{:?} lacks {part:?}",
        e.message()
    );
}

/// A server running inside the test process.
pub struct InProc {
    pub addr: String,
    /// host:port of the RESP listener.
    pub resp: String,
    pub engine: Arc<Engine>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProc {
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> InProc {
        let engine = Engine::open(config, clock).expect("open engine");
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let resp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", grpc.local_addr().unwrap());
        let resp_addr = resp.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let e = engine.clone();
        let listeners = tally::server::Listeners {
            grpc,
            resp: Some(resp),
        };
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            tally::server::run(e, listeners, stop, Default::default())
                .await
                .expect("server run");
        });
        InProc {
            addr,
            resp: resp_addr,
            engine,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.addr).await
    }

    /// Graceful stop; waits for the engine to close.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// End offsets of the complete frames in a segment, read with an independent parser of the
/// documented format: 8-byte magic, then frames of `len u32 | len_crc u32 | crc u32 | body`.
pub fn frame_ends(seg: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut off = 8;
    while off + 12 <= seg.len() {
        let len = u32::from_le_bytes(seg[off..off + 4].try_into().unwrap()) as usize;
        off += 12 + len;
        ends.push(off);
    }
    assert_eq!(off, seg.len());
    ends
}

pub async fn connect(addr: &str) -> Client {
    for _ in 0..100 {
        if let Ok(c) = CounterServiceClient::connect(addr.to_string()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}");
}

/// The real binary, started on port 0 for both gRPC and RESP.
pub struct Proc {
    pub child: Child,
    /// http://host:port of gRPC.
    pub addr: String,
    /// host:port of RESP.
    pub resp: String,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

/// Runs `tally serve` on `dir` with ports 0 and `--resp-addr resp`, expecting it to exit on its
/// own (a refused start). Returns (succeeded, stdout, stderr).
pub fn serve_to_exit(dir: &Path, resp: &str) -> (bool, String, String) {
    let out = Command::new(bin())
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--resp-addr",
            resp,
            "--data-dir",
        ])
        .arg(dir)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

impl Proc {
    pub fn start(dir: &Path, extra: &[&str]) -> Proc {
        Proc::start_with_fd_limit(dir, extra, None)
    }

    /// As `start`, with the child's open-file limit (soft and hard) set to `nofile`.
    pub fn start_with_fd_limit(dir: &Path, extra: &[&str], nofile: Option<u64>) -> Proc {
        Proc::spawn(dir, extra, nofile, &[])
    }

    /// As `start`, with environment variables (a fail point, say).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn(dir, extra, None, env)
    }

    fn spawn(dir: &Path, extra: &[&str], nofile: Option<u64>, env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.envs(env.iter().copied());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe, so it may run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--resp-addr",
                "127.0.0.1:0",
            ])
            .args(["--log-level", "warn", "--data-dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tally");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut next = |prefix: &str| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .to_string()
        };
        let addr = next("tally: serving gRPC on ");
        let resp = next("tally: serving RESP on ");
        Proc {
            child,
            addr: format!("http://{addr}"),
            resp,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn term(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM and waits at most `limit` for the exit; `None` if it is still running.
    pub fn term_within(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        unsafe_kill(self.child.id(), "TERM");
        let t = std::time::Instant::now();
        while t.elapsed() < limit {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}
