//! Connection limits: the gRPC cap refuses the connection over it (UNAVAILABLE, saying why)
//! and frees a slot on close,
//! and a flood of connections under a low open-file limit cannot take the descriptors the WAL
//! needs (segment rolls and checkpoints go on, nothing acknowledged is lost).

mod common;

#[path = "common/resp.rs"]
mod resp;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Client, Proc, connect};
use resp::Resp;
use tally::grpc::pb::counter_service_client::CounterServiceClient;
use tally::grpc::pb::{GetRequest, IncrRequest};

fn incr(key: &str) -> IncrRequest {
    IncrRequest {
        key: key.into(),
        by: None,
        ..Default::default()
    }
}

/// One attempt on a fresh connection: connect and Incr, or the error either step gave.
async fn fresh_incr(addr: &str) -> Result<i64, String> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut c = CounterServiceClient::new(ch);
    c.incr(incr("fresh"))
        .await
        .map(|r| r.into_inner().value)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn until_fresh_incr_works(addr: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fresh_incr(addr).await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "no slot freed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_connection_limit_refuses_the_next_and_frees_a_slot_on_close() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &["--max-grpc-connections", "2"]);
    let mut a: Client = connect(&p.addr).await;
    let mut b: Client = connect(&p.addr).await;
    assert_eq!(a.incr(incr("n")).await.unwrap().into_inner().value, 1);
    assert_eq!(b.incr(incr("n")).await.unwrap().into_inner().value, 2);
    // The third connection is told why, then closed; nothing is written.
    let third = fresh_incr(&p.addr).await.unwrap_err();
    assert!(
        third.starts_with("Unavailable: too many gRPC connections: 2 open")
            && third.contains("--max-grpc-connections"),
        "{third}"
    );
    // ...and a connection over the cap is closed after its 1 s grace, whatever the client does.
    let mut raw = TcpStream::connect(p.addr.trim_start_matches("http://")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut sink = Vec::new();
    raw.read_to_end(&mut sink)
        .expect("closed by the server, not timed out");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The two open connections are unaffected.
    assert_eq!(a.incr(incr("n")).await.unwrap().into_inner().value, 3);
    assert_eq!(b.incr(incr("n")).await.unwrap().into_inner().value, 4);
    drop(b);
    assert_eq!(until_fresh_incr_works(&p.addr).await, 1);
    assert_eq!(a.incr(incr("n")).await.unwrap().into_inner().value, 5);
    let fresh = a.get(GetRequest {
        key: "fresh".into(),
    });
    let fresh = fresh.await.unwrap().into_inner().value;
    assert_eq!(fresh, "1", "the refused call wrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_under_a_low_fd_limit_cannot_starve_the_wal() {
    const NOFILE: u64 = 256;
    const FLOOD: usize = 200;
    // This process holds the flood: make room for it (a no-op where the limit is already high).
    tally::fds::fit(2 * FLOOD + 64, 0).unwrap();
    let d = tempfile::tempdir().unwrap();
    // Small segments and checkpoints, so the writes below roll segments and checkpoint (each
    // opens files) while every connection slot is taken.
    let args = ["--wal-segment-bytes", "4096", "--checkpoint-bytes", "16384"];
    let mut p = Proc::start_with_fd_limit(d.path(), &args, Some(NOFILE));
    // The default caps (10000 RESP, 4096 gRPC) do not fit in 256 descriptors: both shrink.
    let (max_resp, max_grpc) = tally::fds::scale(NOFILE, 10_000, 4096);
    let grpc_host = p.addr.trim_start_matches("http://").to_string();
    let mut c = Resp::connect(&p.resp);
    let info = c.cmd(&["INFO", "clients"]);
    assert!(
        info.contains(&format!("maxclients:{max_resp}\r\n")),
        "{info}"
    );

    let mut flood: Vec<TcpStream> = Vec::new();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(&grpc_host).unwrap());
        flood.push(TcpStream::connect(&p.resp).unwrap());
    }
    // Every RESP slot is taken (the flood's admitted connections and `c`).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c
        .cmd(&["INFO", "clients"])
        .contains(&format!("connected_clients:{max_resp}\r\n"))
    {
        assert!(Instant::now() < deadline, "the RESP flood was not admitted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...and every gRPC slot: a new gRPC client is refused.
    assert!(fresh_incr(&p.addr).await.is_err());

    for i in 1..=1000 {
        assert_eq!(c.cmd(&["INCR", "n"]), format!(":{i}\r\n"));
    }
    let info = c.cmd(&["INFO", "persistence"]);
    let checkpoint_lsn: u64 = info
        .split("checkpoint_lsn:")
        .nth(1)
        .and_then(|s| s.split("\r\n").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{info}"));
    assert!(
        checkpoint_lsn > 0,
        "no checkpoint ran during the flood: {info}"
    );

    // The RESP connections over the limit were told why and closed; the admitted ones wait.
    let mut refused = 0;
    for s in flood.iter_mut().skip(1).step_by(2) {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf) {
            assert_eq!(&buf[..n], b"-ERR max number of clients reached\r\n");
            refused += 1;
        }
    }
    assert_eq!(refused, FLOOD - (max_resp - 1));
    assert!(max_grpc < FLOOD);

    drop(flood);
    assert_eq!(until_fresh_incr_works(&p.addr).await, 1);
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    assert_eq!(Resp::connect(&p.resp).cmd(&["GET", "n"]), "$4\r\n1000\r\n");
}
