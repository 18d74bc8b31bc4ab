//! The in-memory RESP ceiling for benchmarks (`tally ceiling`): answers `INCR key` from a map in
//! memory, with no engine, no log and no durability, through the same parser and the same
//! read-everything-then-reply loop as the real listener. What `redis-benchmark -t incr` reaches
//! against it is the most any server written this way reaches with that client on this
//! machine; the benchmark reports the real server as a ratio to it. `PING` answers `PONG`;
//! anything else gets an error (redis-benchmark's `CONFIG GET` at start only warns).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::parse::Parser;

type Counters = Arc<Mutex<HashMap<Bytes, i64>>>;

/// Serves the ceiling on `listener` until the process ends.
pub async fn serve_ceiling(listener: TcpListener) {
    let counters = Counters::default();
    while let Ok((sock, _)) = listener.accept().await {
        tokio::spawn(conn(sock, counters.clone()));
    }
}

async fn conn(mut sock: TcpStream, counters: Counters) {
    let _ = sock.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut parser = Parser::default();
    loop {
        loop {
            match parser.next(&mut buf) {
                Ok(Some(args)) if args.len() == 2 && args[0].eq_ignore_ascii_case(b"incr") => {
                    let v = {
                        let mut m = counters.lock().unwrap_or_else(|p| p.into_inner());
                        let v = m.entry(args[1].clone()).or_default();
                        *v += 1;
                        *v
                    };
                    out.extend_from_slice(format!(":{v}\r\n").as_bytes());
                }
                Ok(Some(args))
                    if args
                        .first()
                        .is_some_and(|a| a.eq_ignore_ascii_case(b"ping")) =>
                {
                    out.extend_from_slice(b"+PONG\r\n")
                }
                Ok(Some(_)) => out.extend_from_slice(b"-ERR the ceiling serves only INCR\r\n"),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match sock.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
