//! `tally bench`: a gRPC load generator (concurrency, key count, duration) that prints ops/s and
//! latency percentiles, for `Incr` (`--request-ids`: each with a new request id) or for `Txn`s
//! of `--txn-ops` increments (ops/s then counts increments); `--raw-fsync DIR` instead measures
//! the disk's append + fdatasync rate, the ceiling a one-at-a-time durable writer could reach.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use tally::grpc::pb::counter_service_client::CounterServiceClient;
use tally::grpc::pb::{IncrRequest, Op, TxnRequest, op};
use tonic::transport::Channel;

#[derive(clap::Args)]
pub struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Requests in flight at once (one task each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the tasks are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Distinct keys; each request picks one at random (1 = a single hot key).
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Give every Incr a new request id (exactly-once retries), to measure what they cost.
    #[arg(long)]
    request_ids: bool,
    /// Send Txns of this many Incr ops (random keys) instead of single Incrs; ops/s counts
    /// increments.
    #[arg(long, value_name = "N")]
    txn_ops: Option<usize>,
    /// Measure raw `write` (64 bytes) + `fdatasync` in this directory instead of a server.
    #[arg(long, value_name = "DIR")]
    raw_fsync: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let duration = Duration::from_secs_f64(a.duration);
    if let Some(dir) = &a.raw_fsync {
        return raw_fsync(dir, duration);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(load(a, duration))
}

async fn load(a: Args, duration: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let mut clients = Vec::new();
    for _ in 0..a.connections.max(1) {
        let ch = tonic::transport::Endpoint::from_shared(a.addr.clone())?
            .connect()
            .await?;
        clients.push(CounterServiceClient::new(ch));
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    // Request ids must be new in every run: one used in an earlier run (for another random key)
    // is answered ALREADY_EXISTS, and the run would measure refusals.
    let run: u64 = rand::rng().random();
    for i in 0..a.concurrency.max(1) {
        let mut c = clients[i % clients.len()].clone();
        let (keys, ids, txn) = (a.keys.max(1), a.request_ids, a.txn_ops);
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let id = ids.then(|| format!("bench-{run:016x}-{i}-{n}"));
                let t = Instant::now();
                match call(&mut c, keys, id, txn).await {
                    Ok(()) => h.record(t.elapsed().as_micros().max(1) as u64).unwrap(),
                    Err(_) => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        all.add(h)?;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let per = a.txn_ops.unwrap_or(1) as u64;
    print_line(
        if a.txn_ops.is_some() {
            "grpc-txn"
        } else {
            "grpc-incr"
        },
        all.len() * per,
        errors,
        secs,
        &all,
        &format!(
            "concurrency={} keys={} request_ids={} incr_per_request={per}",
            a.concurrency, a.keys, a.request_ids
        ),
    );
    Ok(())
}

fn incr(keys: u64, request_id: Option<String>) -> IncrRequest {
    IncrRequest {
        key: format!("bench:{}", rand::rng().random_range(0..keys)),
        by: Some(1),
        request_id,
        ..Default::default()
    }
}

/// One request: an Incr, or a Txn of `txn` Incrs.
async fn call(
    c: &mut CounterServiceClient<Channel>,
    keys: u64,
    id: Option<String>,
    txn: Option<usize>,
) -> Result<(), tonic::Status> {
    let Some(n) = txn else {
        return c.incr(incr(keys, id)).await.map(drop);
    };
    let success = (0..n)
        .map(|_| Op {
            op: Some(op::Op::Incr(incr(keys, None))),
        })
        .collect();
    let req = TxnRequest {
        success,
        request_id: id,
        ..Default::default()
    };
    c.txn(req).await.map(drop)
}

fn raw_fsync(dir: &std::path::Path, duration: Duration) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("raw-fsync.bench");
    let mut f = std::fs::File::create(&path)?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let rec = [0x5au8; 64];
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        f.write_all(&rec)?;
        f.sync_data()?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    print_line("raw-fsync", h.len(), 0, secs, &h, "write64+fdatasync");
    Ok(())
}

fn print_line(name: &str, ops: u64, errors: u64, secs: f64, h: &Histogram<u64>, extra: &str) {
    println!(
        "{name} ops={ops} errors={errors} secs={secs:.2} ops_per_sec={:.0} p50_us={} p99_us={} p999_us={} {extra}",
        ops as f64 / secs,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    );
}
