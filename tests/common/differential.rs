//! Runs groups of commands against Tally and a real redis-server, each group on a fresh pair
//! of connections, and fails listing every reply that differs.
#![allow(dead_code)]

use super::resp::Resp;

/// Sends every group to both servers (`setup` first on each connection, after `HELLO 3` when
/// `resp3`); `normalize` may rewrite both replies of a command before they are compared.
pub fn assert_same(
    tally: &str,
    redis: &str,
    resp3: bool,
    setup: &[Vec<&str>],
    groups: &[Vec<Vec<&str>>],
    normalize: impl Fn(&[&str], String) -> String,
) {
    let mut mismatches = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        let mut t = Resp::connect(tally);
        let mut r = Resp::connect(redis);
        for c in [&mut t, &mut r] {
            if resp3 {
                c.cmd(&["HELLO", "3"]);
            }
            for s in setup {
                c.cmd(s);
            }
        }
        for cmd in group {
            let (tr, rr) = (normalize(cmd, t.cmd(cmd)), normalize(cmd, r.cmd(cmd)));
            if tr != rr {
                mismatches.push(format!(
                    "group {gi}: {cmd:?}\n  redis: {rr:?}\n  tally: {tr:?}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
