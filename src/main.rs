//! The `tally` binary: a thin shell over the library. See `tally --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
