//! redis-py (installed by tests/run.sh) runs classic counter code unchanged against the real
//! binary's RESP port, over RESP2 and RESP3. See tests/py/redis_counters.py.

mod common;

use common::Proc;

#[test]
fn redis_py_counter_examples_run_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let (host, port) = p.resp.rsplit_once(':').unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/redis_counters.py");
    for proto in ["2", "3"] {
        let out = std::process::Command::new("python3")
            .args([script, host, port, proto])
            .output()
            .expect("python3 missing");
        assert!(
            out.status.success(),
            "redis-py (protocol {proto}) failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
