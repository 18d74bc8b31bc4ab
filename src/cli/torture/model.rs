//! What the clients were told, and the check of a recovered server against it.
//!
//! Counters (shared by all clients, only incremented): the recovered value must lie in
//! [acked, acked + unknown], where unknown counts increments whose reply never came (with
//! `--retries` none is left unknown by then, so the value must be exact; see `retry`).
//! Owned keys (each written by one client only, so its acknowledged history is a sequence):
//! Set (with an absolute deadline or none), Delete, Expire and Persist; after a restart the key
//! must be exactly as the last acknowledged operation left it, with its deadline unchanged. A
//! key whose last operation got no reply is "uncertain" and simply re-read.

use std::collections::BTreeMap;

/// Expected state of an owned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Absent,
    /// Why it is absent matters for the report: an acked delete or expiry must not come back.
    Value {
        value: String,
        deadline: Option<i64>,
    },
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counter {
    pub acked: i64,
    pub unknown: i64,
}

#[derive(Debug, Clone)]
pub struct Owned {
    pub expect: Expect,
    pub uncertain: bool,
}

/// What one key looked like after a restart.
#[derive(Debug, Clone)]
pub struct Observed {
    pub value: Option<String>,
    /// `Ttl.expire_at_unix_ms`: -2 missing, -1 no TTL.
    pub expire_at: i64,
    /// Client clock just before and just after reading.
    pub before_ms: i64,
    pub after_ms: i64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub lost: u64,
    pub doubled: u64,
    pub resurrected: u64,
    pub ttl_resets: u64,
    /// Pair transactions found half applied.
    pub torn_txns: u64,
    pub examples: Vec<String>,
    /// Simulated power losses that left a lost sector before kept data (not a violation).
    pub torn_tails: u64,
    /// Writes sent again with their request id after a crash (`--retries`).
    pub retried: u64,
    /// Of those, the ones the server answered from the id: their first attempt had survived.
    pub repeats: u64,
}

impl Report {
    pub fn violations(&self) -> u64 {
        self.lost + self.doubled + self.resurrected + self.ttl_resets + self.torn_txns
    }

    pub fn note(&mut self, what: &str, msg: String) {
        match what {
            "lost" => self.lost += 1,
            "doubled" => self.doubled += 1,
            "resurrected" => self.resurrected += 1,
            "torn_txns" => self.torn_txns += 1,
            _ => self.ttl_resets += 1,
        }
        if self.examples.len() < 10 {
            self.examples.push(format!("{what}: {msg}"));
        }
    }
}

#[derive(Debug, Default)]
pub struct Model {
    pub counters: BTreeMap<String, Counter>,
    pub owned: BTreeMap<String, Owned>,
    /// Acknowledged operations, in all.
    pub acked: u64,
    /// Counter writes with a request id whose reply never came (`--retries`).
    pub pending: Vec<super::retry::Pending>,
}

impl Model {
    /// A counter write got its reply: each key's unknown increment is acknowledged.
    pub fn acknowledge(&mut self, keys: &[String]) {
        for k in keys {
            let c = self.counters.entry(k.clone()).or_default();
            c.unknown -= 1;
            c.acked += 1;
        }
        self.acked += 1;
    }

    /// Checks one counter and re-baselines it on what survived.
    pub fn check_counter(&mut self, key: &str, value: i64, cycle: u64, r: &mut Report) {
        let c = self.counters.entry(key.to_string()).or_default();
        if value < c.acked {
            r.note(
                "lost",
                format!(
                    "cycle {cycle} {key}: value {value} < acknowledged {}",
                    c.acked
                ),
            );
        } else if value > c.acked + c.unknown {
            r.note(
                "doubled",
                format!(
                    "cycle {cycle} {key}: value {value} > acknowledged {} + unknown {}",
                    c.acked, c.unknown
                ),
            );
        }
        *c = Counter {
            acked: value,
            unknown: 0,
        };
    }

    /// Checks one owned key and re-baselines it on what was read.
    pub fn check_owned(&mut self, key: &str, o: &Observed, cycle: u64, r: &mut Report) {
        let Some(m) = self.owned.get_mut(key) else {
            return;
        };
        let observed = match &o.value {
            None => Expect::Absent,
            Some(v) => Expect::Value {
                value: v.clone(),
                deadline: (o.expire_at >= 0).then_some(o.expire_at),
            },
        };
        if !m.uncertain {
            let at = format!("cycle {cycle} {key}");
            match (&m.expect, &o.value) {
                (Expect::Absent, Some(v)) => r.note(
                    "resurrected",
                    format!("{at}: deleted or expired, but holds {v:?}"),
                ),
                (Expect::Absent, None) => {}
                (Expect::Value { value, deadline }, got) => match deadline {
                    // The deadline passed before we read: the key must be gone.
                    Some(d) if o.before_ms > *d => {
                        if got.is_some() {
                            r.note(
                                "resurrected",
                                format!("{at}: expired at {d}, still present"),
                            );
                        }
                    }
                    // The deadline fell while we read: either answer is right.
                    Some(d) if o.after_ms >= *d => {}
                    _ => match got {
                        None => r.note("lost", format!("{at}: expected {value:?}, key missing")),
                        Some(v) if v != value => {
                            r.note("lost", format!("{at}: expected {value:?}, found {v:?}"))
                        }
                        Some(_) => match (deadline, o.expire_at) {
                            (Some(d), e) if e == -1 || e > *d => {
                                r.note("ttl_resets", format!("{at}: deadline was {d}, now {e}"));
                            }
                            (Some(d), e) if e < *d => {
                                r.note("lost", format!("{at}: deadline was {d}, now {e}"))
                            }
                            (None, e) if e >= 0 => {
                                r.note("lost", format!("{at}: had no TTL, now expires at {e}"))
                            }
                            _ => {}
                        },
                    },
                },
            }
        }
        *m = Owned {
            expect: observed,
            uncertain: false,
        };
    }
}
