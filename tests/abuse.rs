//! Abusive Redis-protocol clients cannot corrupt the data directory, crash the server or make it
//! hold unbounded memory: a transaction too large for one WAL record is refused before it
//! changes anything (and the server still restarts after kill -9), the MULTI queue is capped,
//! replies are flushed as they are built and capped per command, and error replies never echo a
//! CR or LF that would break the protocol.

mod common;

#[path = "common/resp.rs"]
mod resp;

use common::Proc;
use resp::Resp;

fn mib(c: char) -> String {
    std::iter::repeat_n(c, 1 << 20).collect()
}

#[test]
fn a_transaction_larger_than_a_wal_record_is_refused_and_the_server_restarts() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    let v = mib('x');
    for i in 0..70 {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), &v]), "+OK\r\n");
    }
    // 70 EXPIREs rewrite 70 values of 1 MiB: one 70 MiB record, over what the reader accepts.
    c.cmd(&["MULTI"]);
    for i in 0..70 {
        assert_eq!(c.cmd(&["EXPIRE", &format!("k{i}"), "1000"]), "+QUEUED\r\n");
    }
    let exec = c.cmd(&["EXEC"]);
    assert!(
        exec.starts_with("-ERR the change is ")
            && exec.contains("the maximum for one command or transaction is 67108864 bytes"),
        "{exec}"
    );
    // Nothing of it applied, and the connection goes on.
    assert_eq!(c.cmd(&["TTL", "k0"]), ":-1\r\n");
    // 50,000 PEXPIREs of one 1 MiB value: a small queue that would rewrite 50 GB. The change is
    // refused as soon as it outgrows one record, not built whole first.
    c.cmd(&["MULTI"]);
    for _ in 0..50_000 {
        c.send_raw(&resp::encode(&["PEXPIRE", "k0", "100000"]));
    }
    for _ in 0..50_000 {
        assert_eq!(c.reply(), "+QUEUED\r\n");
    }
    let exec = c.cmd(&["EXEC"]);
    assert!(exec.starts_with("-ERR the change is "), "{exec}");
    assert_eq!(c.cmd(&["TTL", "k0"]), ":-1\r\n");
    assert_eq!(c.cmd(&["INCR", "n"]), ":1\r\n");
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    assert_eq!(c.cmd(&["GET", "n"]), "$1\r\n1\r\n");
    assert_eq!(
        c.cmd(&["GET", "k69"]),
        format!("$1048576\r\n{}\r\n", mib('x'))
    );
    assert_eq!(c.cmd(&["TTL", "k69"]), ":-1\r\n");
}

#[test]
fn the_multi_queue_is_capped_and_exec_then_aborts() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    let v = mib('y');
    c.cmd(&["MULTI"]);
    // 63 SETs of 1 MiB fit in 64 MiB of arguments; the 64th does not (its name and key).
    for i in 0..63 {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), &v]), "+QUEUED\r\n");
    }
    let over = c.cmd(&["SET", "k63", &v]);
    assert!(
        over.starts_with("-ERR MULTI queue limit reached (at most 100000 commands and 67108864"),
        "{over}"
    );
    assert_eq!(
        c.cmd(&["EXEC"]),
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(c.cmd(&["EXISTS", "k0"]), ":0\r\n");
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    assert_eq!(c.cmd(&["EXISTS", "k0"]), ":0\r\n");
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

#[test]
fn one_reply_is_capped_and_pipelined_replies_do_not_pile_up() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    let v = mib('z');
    assert_eq!(c.cmd(&["SET", "big", &v]), "+OK\r\n");
    // MGET of one 1 MiB value named 100 times would be a 100 MiB reply: refused.
    let mut args = vec!["MGET"];
    args.extend(std::iter::repeat_n("big", 100));
    let r = c.cmd(&args);
    assert!(
        r.starts_with("-ERR reply too large: this command or transaction would return more than 67108864 bytes"),
        "{}",
        &r[..r.len().min(200)]
    );
    // 64 of them fit exactly, and arrive whole.
    let r = c.cmd(&args[..65]);
    assert!(r.starts_with("*64\r\n$1048576\r\n"));
    assert_eq!(r.len(), 5 + 64 * (10 + (1 << 20) + 2));
    // In a transaction the limit counts the whole EXEC: the 65th GET fails, the rest succeed.
    c.cmd(&["MULTI"]);
    for _ in 0..66 {
        assert_eq!(c.cmd(&["GET", "big"]), "+QUEUED\r\n");
    }
    let r = c.cmd(&["EXEC"]);
    assert!(r.starts_with("*66\r\n$1048576\r\n"));
    assert_eq!(r.matches("-ERR reply too large").count(), 2);
    // 400 pipelined GETs (400 MiB of replies) from a client that does not read: the server
    // stops at what the socket holds instead of building every reply.
    let mut req = Vec::new();
    for _ in 0..400 {
        req.extend_from_slice(&resp::encode(&["GET", "big"]));
    }
    c.send_raw(&req);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let rss = rss_mib(p.child.id());
    assert!(
        rss < 200,
        "server RSS {rss} MiB while a client does not read"
    );
    for i in 0..400 {
        let r = c.reply();
        assert_eq!(r.len(), 10 + (1 << 20) + 2, "reply {i}");
    }
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
}

#[test]
fn an_error_reply_never_carries_the_clients_line_breaks() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    // Without sanitizing, "+OK" would arrive as a reply of its own, to the next command.
    let r = c.cmd(&["EXPIRE", "k", "10", "x\r\n+OK"]);
    assert_eq!(r, "-ERR Unsupported option x  +OK\r\n");
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
    let r = c.cmd(&["CLIENT", "NOSUCH\r\n:1"]);
    assert!(r.starts_with("-ERR unknown subcommand 'NOSUCH  :1'"), "{r}");
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
}
