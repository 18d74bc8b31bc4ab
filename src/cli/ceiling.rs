//! `tally ceiling`: the in-memory ceiling servers for benchmarks (`grpc::serve_ceiling`,
//! `resp::serve_ceiling`). No data directory, no log, nothing durable: they show how fast this
//! machine's client and network stack go when a server does no work, so that `benches/compare.py`
//! can report the real server as a ratio to that.

use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct Args {
    /// Address for the gRPC ceiling (CounterService, only Incr). Port 0 picks a free port
    /// (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc_addr: String,
    /// Address for the RESP ceiling (only INCR and PING). Port 0 picks a free port (printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    resp_addr: String,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    // The same runtime as `tally serve`.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let grpc = TcpListener::bind(&a.grpc_addr).await?;
        let resp = TcpListener::bind(&a.resp_addr).await?;
        println!("tally ceiling: serving gRPC on {}", grpc.local_addr()?);
        println!("tally ceiling: serving RESP on {}", resp.local_addr()?);
        tokio::spawn(tally::resp::serve_ceiling(resp));
        tally::grpc::serve_ceiling(grpc, tally::config::DEFAULT_MAX_GRPC_CONNECTIONS).await?;
        Ok(())
    })
}
