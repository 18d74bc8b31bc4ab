//! The `tally` binary: a thin shell over the library. See `tally --help`.

mod cli;

fn main() -> std::process::ExitCode {
    // glibc gives threads that allocate concurrently their own arenas (up to 8 per core), and
    // freed memory stays in them. sled's cache churns small allocations from several threads:
    // with a million counters RSS was 101 MiB with the default arenas and 73 MiB with two
    // (`python3 benches/compare.py --only footprint`). Two arenas still spread two cores.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing, before any other thread exists; mallopt only tunes malloc.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    cli::main()
}
