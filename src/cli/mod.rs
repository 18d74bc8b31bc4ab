//! Command-line parsing and dispatch; each subcommand lives in its own file.

mod bench;
mod ceiling;
mod serve;
mod torture;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tally: a persistent counter database with Redis counter semantics, over gRPC and the Redis
/// protocol.
///
/// Every acknowledged write survives kill -9 and power loss: it is in the write-ahead log and
/// fsync'd before the reply is sent.
#[derive(Parser)]
#[command(name = "tally", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on a data directory.
    Serve(serve::Args),
    /// Load generator: drive a running server over gRPC and print throughput and latency;
    /// or, with --raw-fsync, measure the disk's own append+fdatasync rate.
    Bench(bench::Args),
    /// Crash-consistency harness: run the server, kill it (SIGKILL, fail points, simulated
    /// power loss), restart it, and check that every acknowledged write survived exactly once.
    Torture(torture::Args),
    /// In-memory ceiling servers for benchmarks: gRPC Incr and RESP INCR answered from a map,
    /// with no log and no durability (nothing is kept). Not a database.
    Ceiling(ceiling::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Torture(a) => torture::run(a),
        Command::Ceiling(a) => ceiling::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the log subscriber: `RUST_LOG` wins over `level`.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
