//! ktrace's automation: `cargo xtask <command>`.
//!
//! - `guest prepare|boot|stop`: the real QEMU test guests (kernels 6.1, 6.12, 7.x).
//! - `test`: checks the layering rules (`layers`), prepares every guest and
//!   runs the whole test suite, e2e included.
//! - `layers`: the rules of `docs/ARCHITECTURE.md` that the compiler does not
//!   enforce (`cargo tree` and source rules, module import cycles).
//! - `demo`: boots the guest and traces testprog with `ktrace attach`.
//! - `bench`: ktrace against GDB on the same guest, side by side; `bench
//!   kernels`: attach-to-first-hit time and peak RSS on each kernel.
//! - `soak`: trace for minutes, checking that RSS stays flat and no hit is lost.

mod bench;
mod bench_guest;
mod bench_in_guest;
mod bench_kernels;
mod bench_memory;
mod guest;
mod layers;
mod soak;

use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["guest", rest @ ..] => guest::run(rest),
        ["test", rest @ ..] => test(rest),
        ["layers"] => layers::run(),
        ["demo", rest @ ..] => demo(rest),
        ["soak", rest @ ..] => soak::run_soak(rest),
        ["bench", "kernels", rest @ ..] => {
            let reps = match rest {
                [] => 5,
                ["--reps", n] => n.parse().context("--reps")?,
                _ => bail!("usage: cargo xtask bench kernels [--reps N]"),
            };
            print!("{}", bench_kernels::run(reps)?);
            Ok(())
        }
        ["bench", which @ ("in-guest" | "memory"), rest @ ..] => {
            let (mut rounds, mut seconds) = (3, 5);
            let mut it = rest.iter();
            while let Some(&arg) = it.next() {
                let value = it.next().and_then(|v| v.parse().ok());
                match (arg, value) {
                    ("--rounds", Some(v)) => rounds = v,
                    ("--seconds", Some(v)) => seconds = v,
                    _ => bail!("usage: cargo xtask bench {which} [--rounds N] [--seconds S]"),
                }
            }
            let (rounds, seconds) = (rounds.max(1), seconds.max(1) as u64);
            match *which {
                "memory" => print!("{}", bench_memory::run(rounds, seconds)?),
                _ => print!("{}", bench_in_guest::run(rounds, seconds)?),
            }
            Ok(())
        }
        ["bench", rest @ ..] => bench::run(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 guest prepare [--kernel 6.1|6.12|7|all]  fetch the kernels (default all), build the initramfs (cached)\n  \
                 guest boot [--kernel 6.1|6.12|7] [--smp N] [--kaslr|--nokaslr] [--port P] [--testprogs N] [--kvm]\n  \
                 guest stop                               stop the guests `guest boot` started\n  \
                 test [cargo test args]                   check the layering rules, prepare every guest, run every test\n  \
                 layers                                   check the layering rules of docs/ARCHITECTURE.md\n  \
                 demo                                     boot the 6.1 guest and trace testprog\n  \
                 bench [--rounds N] [--seconds S]         ktrace against GDB and a bare RSP loop, side by side\n  \
                 bench kernels [--reps N]                 attach-to-first-hit time and peak RSS on each kernel\n  \
                 bench in-guest [--rounds N] [--seconds S] the stop loop against --in-guest, and the guest's speed\n  \
                 bench memory [--rounds N] [--seconds S]  the memory backends, live reads and the guest's speed\n  \
                 soak [--minutes N]                       trace for N minutes (default 10): RSS flat, no hit lost"
            );
            bail!("unknown or missing command")
        }
    }
}

/// drgn, the oracle the e2e tests compare ktrace with, from PyPI when the
/// machine's python3 lacks it (as `.ci/run` does).
fn ensure_drgn() -> Result<()> {
    let has = |py: &mut Command| py.args(["-c", "import drgn"]).output().is_ok_and(|o| o.status.success());
    if has(&mut Command::new("python3")) {
        return Ok(());
    }
    eprintln!("xtask: installing drgn (pip install drgn), the oracle of the e2e tests");
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "drgn"])
            .args(extra)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !pip(&[]) && !pip(&["--break-system-packages"]) {
        bail!("could not install drgn with pip; run: python3 -m pip install drgn");
    }
    Ok(())
}

/// Runs a command, inheriting stdio, and fails if it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// `cargo`, as the one running xtask.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test(extra: &[&str]) -> Result<()> {
    layers::run()?;
    for series in ktrace_testguest::KernelSeries::ALL {
        guest::prepare_series_verbose(series)?;
    }
    ensure_drgn()?;
    // The examples' own binaries (not their test harnesses) for examples/tests.
    run(cargo().args(["build", "--workspace", "--examples"]))?;
    run(cargo().args(["test", "--workspace", "--all-targets", "--no-fail-fast"]).args(extra))?;
    // The e2e files whose guests run on one QEMU build only (6.1's, 7.2),
    // once more on the other.
    for (package, tests) in SECOND_QEMU {
        let mut cmd = cargo();
        cmd.args(["test", "--no-fail-fast", "-p", package]).env("KTRACE_QEMU", "10.0");
        for t in *tests {
            cmd.args(["--test", t]);
        }
        run(cmd.args(extra))?;
    }
    run(cargo().args(["test", "--workspace", "--doc"]))
}

/// The e2e test files that run again on QEMU 10.0 (`$KTRACE_QEMU`): their
/// guests are 6.1's, which boot on QEMU 7.2 by default.
const SECOND_QEMU: &[(&str, &[&str])] = &[
    ("ktrace-cli", &["exits", "faults", "bad_input", "e2e_leave_stopped", "pipes", "guardian"]),
    ("ktrace-kernel", &["e2e_kernel"]),
    ("ktrace-rsp", &["e2e_qemu"]),
    ("ktrace-tracer", &["gdb_compare"]),
    ("ktrace-testguest", &["boot"]),
    ("ktrace-examples", &["run_examples"]),
];

fn demo(_args: &[&str]) -> Result<()> {
    let image = guest::prepare_verbose()?;
    run(cargo().args(["build", "--release", "-p", "ktrace-cli"]))?;
    eprintln!("booting the guest (TCG, 2 vCPUs, KASLR on)…");
    let guest = ktrace_testguest::Guest::boot(&image, &ktrace_testguest::BootOptions::default())?;
    eprintln!(
        "guest up: qemu pid {}, gdb port {}, testprog pid {}",
        guest.qemu_pid().unwrap_or(0),
        guest.port(),
        guest.testprog_pid()
    );
    let ktrace = std::path::Path::new("target/release/ktrace");
    let pid = guest.testprog_pid().to_string();
    let vmlinux = guest.vmlinux().to_path_buf();
    let addr = guest.addr();
    let show = |args: &[&str]| -> Result<()> {
        eprintln!("\n$ ktrace {}", args.join(" "));
        run(Command::new(ktrace).args(args).arg("--vmlinux").arg(&vmlinux))
    };
    show(&["info", &addr])?;
    show(&["attach", &addr, "--break", "_raw_spin_lock", "--pid", &pid, "--count", "5"])?;
    show(&["attach", &addr, "--break", "_raw_spin_lock", "--pid", &pid, "--count", "200", "--stacks", "--quiet"])?;
    drop(guest);
    eprintln!("\nguest stopped");
    Ok(())
}
