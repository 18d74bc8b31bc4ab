//! The process's open-file budget.
//!
//! Every client connection is a file descriptor, and so is every WAL segment, checkpoint fsync
//! and sled file the engine opens. Connections are capped (`listen`), so the engine's share is
//! safe only if the caps fit the open-file limit with [`RESERVED_FDS`] to spare. At startup
//! [`fit`] raises the soft `RLIMIT_NOFILE` toward the hard limit as far as the caps need (as
//! Redis does for `maxclients`); if the hard limit is too low, it scales both caps down to what
//! fits, in proportion, and says so. Nothing here changes a limit the caps already fit.

use std::io;

/// Descriptors kept for everything that is not an admitted client: the engine (WAL segments,
/// sled's files, checkpoint fsyncs, LOCK), listeners, the runtime and std streams (a server
/// uses about 16 of them when idle), and up to `grpc::REFUSAL_SLOTS` (32) gRPC connections
/// over the cap that are being told why.
pub const RESERVED_FDS: u64 = 128;

/// The connection caps that fit, and the limit they fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft open-file limit now in force.
    pub limit: u64,
    /// Redis-protocol connections allowed.
    pub resp: usize,
    /// gRPC connections allowed.
    pub grpc: usize,
}

/// Raises the soft open-file limit as far as `resp + grpc + RESERVED_FDS` needs (never above
/// the hard limit, never lowering it) and returns the caps that fit in it.
pub fn fit(resp: usize, grpc: usize) -> io::Result<Budget> {
    let want = resp as u64 + grpc as u64 + RESERVED_FDS;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: if lim.rlim_max == libc::RLIM_INFINITY {
                want
            } else {
                want.min(lim.rlim_max)
            },
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct; raising the soft limit up to the hard one is
        // allowed to any process.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let (resp, grpc) = scale(lim.rlim_cur, resp, grpc);
    Ok(Budget {
        limit: lim.rlim_cur,
        resp,
        grpc,
    })
}

/// The caps that fit in `limit` descriptors with [`RESERVED_FDS`] kept: unchanged if they fit,
/// else both scaled down in proportion (at least 1 each).
pub fn scale(limit: u64, resp: usize, grpc: usize) -> (usize, usize) {
    let room = limit.saturating_sub(RESERVED_FDS);
    let asked = resp as u64 + grpc as u64;
    if asked <= room {
        return (resp, grpc);
    }
    let part = |n: usize| ((n as u128 * room as u128 / asked as u128) as usize).max(1);
    (part(resp), part(grpc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept() {
        assert_eq!(scale(20_000, 10_000, 4096), (10_000, 4096));
        assert_eq!(scale(u64::MAX, 10_000, 4096), (10_000, 4096));
        assert_eq!(
            scale(10_000 + 4096 + RESERVED_FDS, 10_000, 4096),
            (10_000, 4096)
        );
    }

    #[test]
    fn caps_that_do_not_fit_shrink_in_proportion_and_leave_the_reserve() {
        let (r, g) = scale(1024, 10_000, 4096);
        assert!(r as u64 + g as u64 + RESERVED_FDS <= 1024, "{r} {g}");
        assert_eq!((r, g), (635, 260));
        // Never zero: a listener that admits nobody is useless.
        assert_eq!(scale(10, 10_000, 4096), (1, 1));
    }
}
