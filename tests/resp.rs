//! The RESP listener beyond what the differential tests cover: Tally's deliberate differences,
//! bad input, pipelining, many connections and the connection limit, EXEC as one WAL record,
//! durability across kill -9, and the --resp-addr flag.

mod common;

#[path = "common/resp.rs"]
mod resp;

use std::io::Write;
use std::net::TcpStream;

use common::Proc;
use resp::{Resp, encode};

fn server() -> (Proc, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    (Proc::start(d.path(), &[]), d)
}

#[test]
fn connection_and_server_commands() {
    let (p, _d) = server();
    let mut c = Resp::connect(&p.resp);
    assert_eq!(c.cmd(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SELECT", "1"]), "-ERR DB index is out of range\r\n");
    assert_eq!(
        c.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]),
        "+OK\r\n"
    );
    assert_eq!(c.cmd(&["CLIENT", "SETINFO", "lib-ver", "8.1.0"]), "+OK\r\n");
    assert_eq!(
        c.cmd(&["CLIENT", "SETINFO", "BOGUS", "x"]),
        "-ERR Unrecognized option 'BOGUS'\r\n"
    );
    assert!(c.cmd(&["CLIENT", "ID"]).starts_with(':'));
    let hello = c.cmd(&["HELLO", "3", "SETNAME", "me"]);
    assert!(hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n"), "{hello}");
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), "$2\r\nme\r\n");
    assert_eq!(c.cmd(&["GET", "nothing"]), "_\r\n");
    let info = c.cmd(&["INFO"]);
    assert!(
        info.starts_with('='),
        "RESP3 INFO is a verbatim string: {info}"
    );
    assert_eq!(c.cmd(&["HELLO", "2"]).chars().next(), Some('*'));
    assert_eq!(c.cmd(&["GET", "nothing"]), "$-1\r\n");
    c.cmd(&["SET", "a", "1", "EX", "100"]);
    c.cmd(&["SET", "b", "1"]);
    assert_eq!(c.cmd(&["DBSIZE"]), ":2\r\n");
    let info = c.cmd(&["INFO"]);
    for want in [
        "# Server",
        "redis_version:7.0.15",
        "# Clients",
        "connected_clients:1",
        "# Persistence",
        "appendfsync:always",
        "# Keyspace",
        "db0:keys=2,expires=1,avg_ttl=0",
    ] {
        assert!(info.contains(want), "INFO lacks {want:?}: {info}");
    }
    let info = c.cmd(&["INFO", "keyspace"]);
    assert!(
        info.contains("# Keyspace") && !info.contains("# Server"),
        "{info}"
    );
    assert_eq!(c.cmd(&["COMMAND", "COUNT"]), ":59\r\n");
    // The scripting and keyspace commands are listed with Redis's flags and key positions.
    let cmd = c.cmd(&["COMMAND", "INFO", "evalsha", "rename"]);
    assert!(
        cmd.contains("$7\r\nevalsha\r\n:-3\r\n*6\r\n+noscript\r\n")
            && cmd.contains("+movablekeys\r\n:0\r\n:0\r\n:0\r\n")
            && cmd.contains("$6\r\nrename\r\n:3\r\n*1\r\n+write\r\n:1\r\n:2\r\n:1\r\n"),
        "{cmd}"
    );
    // INFO commandstats counts calls (only there and in `all`, as Redis).
    let stats = c.cmd(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_command:calls=2,"), "{stats}");
    assert!(!c.cmd(&["INFO"]).contains("Commandstats"));
    let cmd = c.cmd(&["COMMAND", "INFO", "incr", "nosuch"]);
    assert!(
        cmd.starts_with("*2\r\n*6\r\n$4\r\nincr\r\n:2\r\n") && cmd.ends_with("$-1\r\n"),
        "{cmd}"
    );
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "save"]),
        "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    );
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "appendonly"]),
        "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
    );
    assert_eq!(c.cmd(&["CONFIG", "GET", "nosuch"]), "*0\r\n");
    assert_eq!(c.cmd(&["QUIT"]), "+OK\r\n");
    assert!(c.closed());
}

#[test]
fn bad_input_closes_only_that_connection_and_touches_nothing() {
    let (p, _d) = server();
    let mut good = Resp::connect(&p.resp);
    assert_eq!(good.cmd(&["SET", "keep", "41"]), "+OK\r\n");
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n+OK\r\n",
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*1\r\n$99999999999\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$1048577\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*99999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"SET \"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (input, want) in cases {
        let mut c = Resp::connect(&p.resp);
        c.send_raw(input);
        assert_eq!(&c.reply(), want, "{:?}", String::from_utf8_lossy(input));
        assert!(
            c.closed(),
            "connection left open after {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Binary junk without a newline: refused once it passes the inline limit.
    let mut c = Resp::connect(&p.resp);
    let junk: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 | 1)
        .filter(|&b| b != b'\n' && b != b'*')
        .collect();
    c.send_raw(&junk);
    assert_eq!(c.reply(), "-ERR Protocol error: too big inline request\r\n");
    assert!(c.closed());
    // Half a frame, then the client goes away.
    let mut s = TcpStream::connect(&p.resp).unwrap();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nkeep\r\n$5\r\nhal")
        .unwrap();
    drop(s);
    // The other client was served throughout, and nothing stored changed.
    assert_eq!(good.cmd(&["INCR", "keep"]), ":42\r\n");
    assert_eq!(good.cmd(&["DBSIZE"]), ":1\r\n");
}

#[test]
fn pipelined_commands_reply_in_order() {
    let (p, _d) = server();
    let mut c = Resp::connect(&p.resp);
    let mut batch = Vec::new();
    for _ in 0..1000 {
        batch.extend_from_slice(&encode(&["INCR", "pipe"]));
    }
    batch.extend_from_slice(b"GET pipe\r\n");
    c.send_raw(&batch);
    for i in 1..=1000 {
        assert_eq!(c.reply(), format!(":{i}\r\n"));
    }
    assert_eq!(c.reply(), "$4\r\n1000\r\n");
}

#[test]
fn many_connections_increment_exactly() {
    let (p, _d) = server();
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let addr = p.resp.clone();
            std::thread::spawn(move || {
                let mut c = Resp::connect(&addr);
                for _ in 0..50 {
                    assert!(c.cmd(&["INCR", "shared"]).starts_with(':'));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        Resp::connect(&p.resp).cmd(&["GET", "shared"]),
        "$4\r\n5000\r\n"
    );
}

#[test]
fn max_clients_refuses_the_next_connection_until_one_closes() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &["--max-clients", "3"]);
    let mut open: Vec<Resp> = (0..3).map(|_| Resp::connect(&p.resp)).collect();
    for c in &mut open {
        assert_eq!(c.cmd(&["INCR", "n"]).as_bytes()[0], b':');
    }
    let info = open[0].cmd(&["INFO", "clients"]);
    assert!(
        info.contains("connected_clients:3\r\nmaxclients:3\r\n"),
        "{info}"
    );
    assert_eq!(
        open[0].cmd(&["CONFIG", "GET", "maxclients"]),
        "*2\r\n$10\r\nmaxclients\r\n$1\r\n3\r\n"
    );
    // The fourth is told why and closed, without a command being read from it.
    let mut refused = Resp::connect(&p.resp);
    assert_eq!(refused.reply(), "-ERR max number of clients reached\r\n");
    assert!(refused.closed());
    // The open ones are unaffected, and INFO counts the refusal.
    assert_eq!(open[1].cmd(&["INCR", "n"]), ":4\r\n");
    let stats = open[1].cmd(&["INFO", "stats"]);
    assert!(
        stats.contains("total_connections_received:3\r\nrejected_connections:1\r\n"),
        "{stats}"
    );
    // Closing one frees its slot (once the server has seen the close).
    drop(open.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // A still-refused connection may be closed before our command arrives (a reset).
        let attempt = || -> std::io::Result<String> {
            let mut s = TcpStream::connect(&p.resp)?;
            s.write_all(&encode(&["INCR", "n"]))?;
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line)?;
            Ok(line)
        };
        match attempt() {
            Ok(r) if r == ":5\r\n" => break,
            Ok(r) => assert_eq!(r, "-ERR max number of clients reached\r\n"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // 0 is not a limit: refused at the command line.
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--max-clients", "0", "--data-dir"])
        .arg(d.path().join("unused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-clients"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_is_one_wal_record_and_survives_kill9() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut g = common::connect(&p.addr).await;
    let stats = tally::grpc::pb::StatsRequest {};
    let addr = p.resp.clone();
    let before = g.stats(stats).await.unwrap().into_inner().last_lsn;
    let replies = tokio::task::spawn_blocking(move || {
        let mut c = Resp::connect(&addr);
        c.cmd(&["MULTI"]);
        c.cmd(&["SET", "a", "1"]);
        c.cmd(&["INCRBY", "a", "9"]);
        c.cmd(&["MSET", "b", "2", "c", "3"]);
        c.cmd(&["INCRBYFLOAT", "f", "0.1"]);
        let exec = c.cmd(&["EXEC"]);
        for _ in 0..200 {
            c.cmd(&["INCR", "n"]);
        }
        exec
    })
    .await
    .unwrap();
    assert_eq!(replies, "*4\r\n+OK\r\n:10\r\n+OK\r\n$3\r\n0.1\r\n");
    let after = g.stats(stats).await.unwrap().into_inner().last_lsn;
    assert_eq!(after - before, 1 + 200, "EXEC must be one record");
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    let got = c.cmd(&["MGET", "a", "b", "c", "f", "n"]);
    assert_eq!(
        got,
        "*5\r\n$2\r\n10\r\n$1\r\n2\r\n$1\r\n3\r\n$3\r\n0.1\r\n$3\r\n200\r\n"
    );
}

#[test]
fn resp_addr_in_use_is_a_clear_error_and_off_disables_it() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let d = tempfile::tempdir().unwrap();
    let (ok, _, err) = common::serve_to_exit(d.path(), &port);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot listen for RESP on {port}"))
            && err.contains("--resp-addr off"),
        "{err}"
    );
    // With "off" there is no RESP line and gRPC serves.
    let mut child = std::process::Command::new(common::bin())
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--resp-addr",
            "off",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(d.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("tally: serving gRPC on "), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}
