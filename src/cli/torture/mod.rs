//! `tally torture`: crash-consistency harness. Starts the real server binary, drives concurrent
//! clients, records every acknowledged result, kills the server (SIGKILL at a random moment, or
//! an armed fail point), optionally simulates a power loss, restarts it and checks the recovered
//! state against what was acknowledged (see `model`). Ends with
//! `cycles=N acked=A lost=0 doubled=0 resurrected=0 ttl_resets=0 torn_txns=0 torn_tails=T
//! retried=R repeats=H`; exits non-zero on a violation. `torn_tails` counts the simulated power
//! losses (module `power`) that left a hole in the WAL's unsynced tail with data after it; it is
//! not a violation. `torn_txns` counts pair transactions found half applied; `retried` and
//! `repeats` are the `--retries` figures (module `retry`).

mod model;
mod power;
mod retry;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use model::{Counter, Expect, Model, Observed, Owned, Report};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally::fault::Point;
use tally::grpc::pb::counter_service_client::CounterServiceClient;
use tally::grpc::pb::*;
use tonic::transport::Channel;

/// Shared (hot) counters every client increments.
const HOT: usize = 4;
/// Cold counters, picked at random.
const COLD: usize = 200;
/// Keys each client owns for set/delete/expire.
const OWNED_PER_CLIENT: usize = 16;
/// Longest wait for one reply before the outcome counts as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
pub struct Args {
    /// Data directory for the server under test [default: a new temporary directory, removed
    /// at the end unless a violation was found].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Crash/restart cycles to run (the run also stops after --seconds).
    #[arg(long, default_value_t = 20)]
    cycles: u64,
    /// Time budget in seconds (the run also stops after --cycles).
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Concurrent clients, each on its own connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Random seed, to replay a run [default: from the clock; printed at the start].
    #[arg(long)]
    seed: Option<u64>,
    /// Simulate power loss at each crash: every WAL byte that was not fsynced, and every sled
    /// change since the last checkpoint, is dropped before the restart.
    #[arg(long)]
    power_loss: bool,
    /// Share of cycles (0 to 1) whose crash comes from an armed fail point rather than SIGKILL.
    #[arg(long, default_value_t = 0.5)]
    failpoint_rate: f64,
    /// Exactly-once mode: every counter write carries a request id, and each one whose reply
    /// never came is sent again with its id after the restart; counters must then be exact
    /// (no "maybe applied" slack): every increment applied once, none lost, none doubled.
    #[arg(long)]
    retries: bool,
    /// Inject faults into the server under test (TALLY_FAULTS). For proving the harness has
    /// teeth: `--inject skip-fsync --power-loss` must report lost writes.
    #[arg(long, hide = true)]
    inject: Option<String>,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let seed = a.seed.unwrap_or_else(|| now_ms() as u64);
    let (dir, temp) = match &a.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("tally-torture-{}-{seed}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "torture: seed={seed} data_dir={} clients={} power_loss={}",
        dir.display(),
        a.clients,
        a.power_loss
    );
    let rt = tokio::runtime::Runtime::new()?;
    let (cycles, model, report) = rt.block_on(torture(&a, &dir, seed))?;
    println!(
        "cycles={cycles} acked={} lost={} doubled={} resurrected={} ttl_resets={} torn_txns={} \
         torn_tails={} retried={} repeats={}",
        model.acked,
        report.lost,
        report.doubled,
        report.resurrected,
        report.ttl_resets,
        report.torn_txns,
        report.torn_tails,
        report.retried,
        report.repeats
    );
    if report.violations() > 0 {
        for e in &report.examples {
            eprintln!("  {e}");
        }
        return Err(format!(
            "{} violations (data kept in {})",
            report.violations(),
            dir.display()
        )
        .into());
    }
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The server's stderr, inside the data directory (the server ignores unknown files).
const SERVER_LOG: &str = "torture-server.log";

/// The server would not start on the recovered directory: acknowledged data is unreadable.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server refused to start: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// The server under test.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(
        dir: &Path,
        a: &Args,
        failpoint: Option<String>,
    ) -> Result<Server, Box<dyn std::error::Error>> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--resp-addr",
            "off",
            "--log-level",
            "error",
        ])
        .args([
            "--wal-segment-bytes",
            "8192",
            "--checkpoint-bytes",
            "32768",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(SERVER_LOG))?,
        )
        .env_remove("TALLY_FAILPOINT")
        .env_remove("TALLY_FAULTS");
        if let Some(f) = failpoint {
            cmd.env("TALLY_FAILPOINT", f);
        }
        if a.power_loss {
            cmd.env("TALLY_SIMULATE_POWER_LOSS", "1");
        }
        if let Some(f) = &a.inject {
            cmd.env("TALLY_FAULTS", f);
        }
        let mut child = cmd.spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("tally: serving gRPC on ") else {
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join(SERVER_LOG)).unwrap_or_default();
            let why = log
                .lines()
                .rev()
                .find(|l| l.contains("error"))
                .unwrap_or("no output")
                .to_string();
            return Err(Refused(why).into());
        };
        Ok(Server {
            addr: format!("http://{addr}"),
            child,
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn connect(addr: &str) -> Result<CounterServiceClient<Channel>, Box<dyn std::error::Error>> {
    Ok(CounterServiceClient::new(
        tonic::transport::Endpoint::from_shared(addr.to_string())?
            .connect()
            .await?,
    ))
}

async fn torture(
    a: &Args,
    dir: &Path,
    seed: u64,
) -> Result<(u64, Model, Report), Box<dyn std::error::Error>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    for i in 0..HOT {
        model
            .counters
            .insert(format!("hot:{i}"), Counter::default());
    }
    for i in 0..COLD {
        model
            .counters
            .insert(format!("cold:{i}"), Counter::default());
    }
    for c in 0..a.clients {
        for k in retry::pair(c) {
            model.counters.insert(k, Counter::default());
        }
        for i in 0..OWNED_PER_CLIENT {
            model.owned.insert(
                format!("own:{c}:{i}"),
                Owned {
                    expect: Expect::Absent,
                    uncertain: true,
                },
            );
        }
    }
    let budget = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut report = Report::default();
    let mut cycles = 0;
    let model = Arc::new(Mutex::new(model));
    while cycles < a.cycles && Instant::now() < budget {
        cycles += 1;
        let failpoint = rng.random_bool(a.failpoint_rate.clamp(0.0, 1.0)).then(|| {
            let p = Point::ALL[rng.random_range(0..Point::ALL.len())];
            let n = match p {
                Point::CheckpointBeforeRemove | Point::CheckpointAfterRemove => {
                    rng.random_range(1..3)
                }
                Point::Sweep => rng.random_range(1..10),
                _ => rng.random_range(1..400),
            };
            format!("{}@{n}", p.name())
        });
        // Verify on an unarmed server (the sweeper and checkpointer write while we read, and an
        // armed point must not fire then), then crash-restart into the armed one.
        let mut server = match Server::start(dir, a, None) {
            Ok(s) => s,
            Err(e) => return refused(e, cycles, model, report),
        };
        retry(&server.addr, &model, &mut report).await?;
        verify(&server.addr, &model, cycles, &mut report).await?;
        if failpoint.is_some() {
            server.kill();
            if a.power_loss {
                report.torn_tails += power::lose_unsynced(dir, &mut rng)?;
            }
            server = Server::start(dir, a, failpoint.clone())?;
        }
        let run_for = Duration::from_millis(rng.random_range(150..1200));
        let mut tasks = Vec::new();
        for c in 0..a.clients {
            let (addr, model, seed) = (server.addr.clone(), model.clone(), rng.random::<u64>());
            let retries = a.retries;
            tasks.push(tokio::spawn(async move {
                client(c, &addr, model, seed, retries).await
            }));
        }
        let started = Instant::now();
        while started.elapsed() < run_for && server.child.try_wait()?.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let how = match server.child.try_wait()? {
            Some(_) => format!(
                "crashed at fail point {}",
                failpoint.as_deref().unwrap_or("?")
            ),
            None => format!("SIGKILL after {} ms", run_for.as_millis()),
        };
        server.kill();
        for t in tasks {
            let _ = t.await;
        }
        if a.power_loss {
            report.torn_tails += power::lose_unsynced(dir, &mut rng)?;
        }
        eprintln!(
            "cycle {cycles}: {how}; acked so far {}",
            model.lock().unwrap().acked
        );
    }
    // Recover once more and check the final state, then stop cleanly.
    let mut server = match Server::start(dir, a, None) {
        Ok(s) => s,
        Err(e) => return refused(e, cycles, model, report),
    };
    retry(&server.addr, &model, &mut report).await?;
    verify(&server.addr, &model, cycles + 1, &mut report).await?;
    unsafe_sigterm(&mut server.child);
    let model = Arc::try_unwrap(model)
        .map_err(|_| "clients still running")?
        .into_inner()
        .unwrap();
    Ok((cycles, model, report))
}

/// Ends the run when the server cannot recover: that is lost acknowledged data, reported as such.
fn refused(
    e: Box<dyn std::error::Error>,
    cycles: u64,
    model: Arc<Mutex<Model>>,
    mut report: Report,
) -> Result<(u64, Model, Report), Box<dyn std::error::Error>> {
    if !e.is::<Refused>() {
        return Err(e);
    }
    report.note("lost", format!("cycle {cycles}: {e}"));
    let model = Arc::try_unwrap(model)
        .map_err(|_| "clients still running")?
        .into_inner()
        .unwrap();
    Ok((cycles, model, report))
}

fn unsafe_sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Sends the writes that never got a reply again, with their ids (`--retries`).
async fn retry(
    addr: &str,
    model: &Mutex<Model>,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let (sent, repeats) = retry::retry_pending(addr, model).await?;
    report.retried += sent;
    report.repeats += repeats;
    Ok(())
}

/// Reads every key of the model from a freshly recovered server and checks it.
async fn verify(
    addr: &str,
    model: &Mutex<Model>,
    cycle: u64,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = connect(addr).await?;
    let (counters, owned): (Vec<String>, Vec<String>) = {
        let m = model.lock().unwrap();
        (
            m.counters.keys().cloned().collect(),
            m.owned.keys().cloned().collect(),
        )
    };
    let mut values = std::collections::HashMap::new();
    for key in counters {
        let r = c.get(GetRequest { key: key.clone() }).await?.into_inner();
        let v = if r.found { r.value.parse::<i64>()? } else { 0 };
        model.lock().unwrap().check_counter(&key, v, cycle, report);
        values.insert(key, v);
    }
    for id in 0.. {
        let [a, b] = retry::pair(id);
        let (Some(va), Some(vb)) = (values.get(&a), values.get(&b)) else {
            break;
        };
        if va != vb {
            let msg = format!("cycle {cycle}: {a}={va} but {b}={vb}: a Txn half applied");
            report.note("torn_txns", msg);
        }
    }
    for key in owned {
        // Get and Ttl are two calls: if the key expires between them they disagree (found, then
        // -2). Read again until they agree, or the key would be taken for persistent.
        let o = loop {
            let before_ms = now_ms();
            let g = c.get(GetRequest { key: key.clone() }).await?.into_inner();
            let t = c.ttl(TtlRequest { key: key.clone() }).await?.into_inner();
            let after_ms = now_ms();
            if g.found == (t.expire_at_unix_ms != -2) {
                let value = g.found.then_some(g.value);
                break Observed {
                    value,
                    expire_at: t.expire_at_unix_ms,
                    before_ms,
                    after_ms,
                };
            }
        };
        model.lock().unwrap().check_owned(&key, &o, cycle, report);
    }
    Ok(())
}

/// One client: a random mix of counter increments and operations on its own keys, until the
/// server stops answering. Every reply updates the model; a missing reply marks the outcome
/// unknown and ends the client.
async fn client(id: usize, addr: &str, model: Arc<Mutex<Model>>, seed: u64, retries: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let Ok(mut c) = connect(addr).await else {
        return;
    };
    let mut n = 0u64;
    loop {
        n += 1;
        let roll = rng.random_range(0..100);
        if roll < 68 {
            let keys = match roll {
                0..30 => vec![format!("hot:{}", rng.random_range(0..HOT))],
                30..60 => vec![format!("cold:{}", rng.random_range(0..COLD))],
                _ => retry::pair(id).to_vec(),
            };
            // The seed is drawn anew for every client and cycle: ids never repeat.
            let rid = retries.then(|| format!("{seed:016x}-{n}"));
            if !retry::count(&mut c, &model, keys, rid).await {
                return;
            }
            continue;
        }
        let key = format!("own:{id}:{}", rng.random_range(0..OWNED_PER_CLIENT));
        model.lock().unwrap().owned.get_mut(&key).unwrap().uncertain = true;
        let now = now_ms();
        let deadline = now + rng.random_range(150..2000);
        let outcome: Option<Option<Expect>> = match roll {
            68..=83 => {
                // Some values span sectors, so that an unsynced batch does too and a simulated
                // power loss can leave holes in it (see `power`).
                let pad = if rng.random_bool(0.5) {
                    rng.random_range(0..3000)
                } else {
                    0
                };
                let value = format!("v{id}.{n}{}", "p".repeat(pad));
                let with_ttl = rng.random_bool(0.5);
                let req = SetRequest {
                    key: key.clone(),
                    value: value.clone(),
                    expiry: with_ttl.then_some(set_request::Expiry::AtUnixMs(deadline)),
                    ..Default::default()
                };
                op(c.set(req)).await.map(|_| {
                    Some(Expect::Value {
                        value,
                        deadline: with_ttl.then_some(deadline),
                    })
                })
            }
            84..=91 => op(c.delete(DeleteRequest {
                keys: vec![key.clone()],
                ..Default::default()
            }))
            .await
            .map(|_| Some(Expect::Absent)),
            92..=96 => {
                let req = ExpireRequest {
                    key: key.clone(),
                    when: Some(expire_request::When::AtUnixMs(deadline)),
                    ..Default::default()
                };
                match op(c.expire(req)).await {
                    // Applied: whatever value the key held now has this deadline; not applied: no change.
                    Some(r) if r.applied => Some(Some(Expect::Value {
                        value: String::new(),
                        deadline: Some(deadline),
                    })),
                    Some(_) => Some(None),
                    None => None,
                }
            }
            _ => match op(c.persist(PersistRequest {
                key: key.clone(),
                ..Default::default()
            }))
            .await
            {
                Some(r) if r.applied => Some(Some(Expect::Value {
                    value: String::new(),
                    deadline: None,
                })),
                Some(_) => Some(None),
                None => None,
            },
        };
        let mut m = model.lock().unwrap();
        let Some(change) = outcome else { return };
        m.acked += 1;
        let o = m.owned.get_mut(&key).unwrap();
        if let Some(new) = change {
            o.expect = match (new, &o.expect) {
                // Expire/Persist keep the value the key held.
                (Expect::Value { value, deadline }, Expect::Value { value: old, .. })
                    if value.is_empty() =>
                {
                    Expect::Value {
                        value: old.clone(),
                        deadline,
                    }
                }
                (new, _) => new,
            };
        }
        o.uncertain = false;
    }
}

/// Awaits one call with the timeout; `None` if the outcome is unknown.
async fn op<T>(f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Option<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}
