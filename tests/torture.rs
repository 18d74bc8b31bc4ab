//! Bounded runs of `tally torture` (the user-facing crash harness) in the test suite: kill -9
//! with fail points and simulated power loss (torn group commits included), both in
//! exactly-once mode (`--retries`: every write whose reply was lost is retried with its request
//! id, and counters must be exact; pair Txns must be all there or all absent), and proof that
//! the power-loss mode has teeth (with the group-commit fsync skipped through a test-only
//! switch, it must report lost writes).

mod common;

use std::process::Command;

/// Runs torture with `args`; returns (exit success, final summary line, stderr).
fn torture(args: &[&str]) -> (bool, String, String) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    // Our own data directory: torture keeps its data after a violation (for a post-mortem),
    // which the teeth test provokes on purpose; the tempdir removes it either way.
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .arg("torture")
        .args(["--seed", &seed, "--clients", "6", "--data-dir"])
        .arg(d.path().join("data"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (
        out.status.success(),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parses `cycles=N acked=A lost=.. doubled=.. resurrected=.. ttl_resets=..`.
fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .parse()
        .unwrap()
}

fn assert_clean(args: &[&str]) -> String {
    let (ok, line, err) = torture(args);
    assert!(ok, "torture {args:?} found violations:\n{line}\n{err}");
    for f in ["lost", "doubled", "resurrected", "ttl_resets", "torn_txns"] {
        assert_eq!(field(&line, f), 0, "{line}");
    }
    assert!(field(&line, "cycles") >= 10, "too few cycles: {line}");
    assert!(field(&line, "acked") >= 1000, "too little load: {line}");
    line
}

/// Exactly once: the writes cut off by a crash are retried with their ids, and some of them
/// (their first attempt had survived) are answered from the id instead of applied again.
#[test]
fn kill9_and_fail_points_lose_nothing_and_retries_apply_once() {
    let line = assert_clean(&["--retries", "--cycles", "40", "--seconds", "40"]);
    assert!(field(&line, "retried") >= 1, "nothing was retried: {line}");
}

/// Power losses include torn group commits: holes in the unsynced tail with data after them,
/// which recovery must take for a torn tail, not corruption (without the torn-sector rule the
/// server refuses to start and torture reports it as lost data).
#[test]
fn simulated_power_loss_loses_nothing() {
    let line = assert_clean(&[
        "--power-loss",
        "--retries",
        "--cycles",
        "40",
        "--seconds",
        "40",
    ]);
    assert!(
        field(&line, "torn_tails") >= 1,
        "no torn tail simulated: {line}"
    );
}

#[test]
fn power_loss_mode_catches_a_missing_fsync() {
    let args = [
        "--power-loss",
        "--inject",
        "skip-fsync",
        "--failpoint-rate",
        "0",
        "--cycles",
        "6",
        "--seconds",
        "30",
    ];
    let (ok, line, err) = torture(&args);
    assert!(!ok, "a skipped fsync went unnoticed:\n{line}\n{err}");
    assert!(
        field(&line, "lost") + field(&line, "ttl_resets") > 0,
        "{line}\n{err}"
    );
    assert!(
        err.contains("lost:") || err.contains("ttl_resets:"),
        "no offending keys printed:\n{err}"
    );
}
