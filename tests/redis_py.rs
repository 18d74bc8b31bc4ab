//! redis-py (installed by tests/run.sh) runs classic counter code unchanged against the real
//! binary's RESP port, over RESP2 and RESP3: counters (tests/py/redis_counters.py), and scripts
//! and CAS loops (tests/py/redis_scripts.py).

mod common;

use common::Proc;

/// Runs `tests/py/<file>` against a fresh server, over RESP2 and RESP3.
fn run_py(file: &str) {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let (host, port) = p.resp.rsplit_once(':').unwrap();
    let script = format!("{}/tests/py/{file}", env!("CARGO_MANIFEST_DIR"));
    for proto in ["2", "3"] {
        let out = std::process::Command::new("python3")
            .args([script.as_str(), host, port, proto])
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

#[test]
fn redis_py_counter_examples_run_unchanged() {
    run_py("redis_counters.py");
}

/// register_script (with a SCRIPT FLUSH in between), a rate limiter whose window rolls, and
/// a WATCH CAS loop with three competing writers whose final count is exact.
#[test]
fn redis_py_scripts_and_cas_loops_run_unchanged() {
    run_py("redis_scripts.py");
}
