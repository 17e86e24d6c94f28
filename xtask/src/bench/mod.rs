//! `cargo xtask bench`: ktrace against GDB (and a bare RSP loop) on one guest.
//!
//! One guest (TCG, 2 vCPUs, KASLR off, one testprog) serves every measurement.
//! Tools alternate round by round (the order rotates each round), so that the
//! noise of a shared 2-core machine hits them all alike; medians are reported.
//!
//! 1. Breakpoint throughput on `_raw_spin_lock` filtered by testprog's pid:
//!    hits evaluated/s and matched/s, plus guest progress (guest s / host s,
//!    from the init's `ktrace-guest tick <uptime>` heartbeats) over each
//!    window. Backtrace capture (ktrace `--json`, GDB `bt`) is part of it.
//! 2. Start-up: wall time and peak RSS (`/usr/bin/time -v`) of attaching,
//!    `layout` and `sym`, ktrace vs GDB.

//!
//! The code: `run` (the orchestration: one guest, rounds of tools, the
//! start-up and round-trip runs), `throughput` (one tool's measured window),
//! `stats` (heartbeats, samples, medians), `report` (the Markdown table and
//! `results.json`), `process` (running and timing the tools' processes).

mod process;
mod report;
mod run;
mod stats;
mod throughput;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub(crate) use process::time_v;
pub(crate) use stats::{median, parse_summary, StartupSample};

const BREAK: &str = "_raw_spin_lock";
/// Past this, remaining work is skipped so that the whole run stays < 10 min.
const BUDGET: Duration = Duration::from_secs(9 * 60);

struct Opts {
    rounds: usize,
    seconds: u64,
    gdb_startup_reps: usize,
    ktrace_startup_reps: usize,
}

/// `cargo xtask bench [options]`.
pub fn run(args: &[&str]) -> Result<()> {
    let mut opts = Opts { rounds: 3, seconds: 5, gdb_startup_reps: 1, ktrace_startup_reps: 3 };
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        let mut value = || -> Result<usize> {
            it.next().with_context(|| format!("{arg} needs a value"))?.parse().with_context(|| arg.to_string())
        };
        match arg {
            "--rounds" => opts.rounds = value()?.max(1),
            "--seconds" => opts.seconds = value()?.max(1) as u64,
            "--gdb-startup-reps" => opts.gdb_startup_reps = value()?,
            "--ktrace-startup-reps" => opts.ktrace_startup_reps = value()?,
            _ => bail!(
                "usage: cargo xtask bench [--rounds N] [--seconds S] [--gdb-startup-reps N] [--ktrace-startup-reps N]"
            ),
        }
    }
    run::Bench::new(opts)?.run()
}

/// What every measurement needs to know about the guest.
struct Env<'a> {
    addr: &'a str,
    pid: u32,
    vmlinux: &'a Path,
    runtime: u64,
    lx_dir: Option<&'a Path>,
    out_dir: &'a Path,
}
