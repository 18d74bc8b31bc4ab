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
