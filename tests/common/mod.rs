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

pub type Client = CounterServiceClient<Channel>;

/// A server running inside the test process.
pub struct InProc {
    pub addr: String,
    pub engine: Arc<Engine>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProc {
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> InProc {
        let engine = Engine::open(config, clock).expect("open engine");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let e = engine.clone();
        let task = tokio::spawn(async move {
            tally::server::run(e, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server run");
        });
        InProc {
            addr,
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

pub async fn connect(addr: &str) -> Client {
    for _ in 0..100 {
        if let Ok(c) = CounterServiceClient::connect(addr.to_string()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}");
}

/// The real binary, started on port 0.
pub struct Proc {
    pub child: Child,
    pub addr: String,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

impl Proc {
    pub fn start(dir: &Path, extra: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--log-level",
                "warn",
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tally");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("tally: serving gRPC on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Proc {
            child,
            addr: format!("http://{addr}"),
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
