//! `tally ceiling`, the in-memory ceiling `benches/compare.py` measures against, serves RESP
//! INCR and gRPC Incr from memory and refuses everything else, so a benchmark against it cannot
//! silently measure something else.

mod common;

#[path = "common/resp.rs"]
mod resp;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tally::grpc::pb::{GetRequest, IncrRequest};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_ceiling_counts_in_memory_over_both_protocols_and_serves_nothing_else() {
    let mut child = Command::new(common::bin())
        .args([
            "ceiling",
            "--grpc-addr",
            "127.0.0.1:0",
            "--resp-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |prefix: &str| {
        let line = out.next().unwrap().unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"))
            .to_string()
    };
    let grpc = addr("tally ceiling: serving gRPC on ");
    let resp_addr = addr("tally ceiling: serving RESP on ");
    let _child = Killed(child);

    let mut r = resp::Resp::connect(&resp_addr);
    assert_eq!(r.cmd(&["INCR", "k"]), ":1\r\n");
    assert_eq!(r.cmd(&["incr", "k"]), ":2\r\n");
    assert_eq!(r.cmd(&["PING"]), "+PONG\r\n");
    assert!(
        r.cmd(&["GET", "k"])
            .starts_with("-ERR the ceiling serves only INCR")
    );

    let mut c = common::connect(&format!("http://{grpc}")).await;
    let incr = |by| IncrRequest {
        key: "k".into(),
        by: Some(by),
        ..Default::default()
    };
    assert_eq!(c.incr(incr(5)).await.unwrap().into_inner().value, 5);
    assert_eq!(c.incr(incr(-2)).await.unwrap().into_inner().value, 3);
    let e = c.get(GetRequest { key: "k".into() }).await.unwrap_err();
    common::assert_status(&e, tonic::Code::Unimplemented, "serves only Incr");
}
