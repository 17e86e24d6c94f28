//! `cargo xtask bench kernels`: attach-to-first-hit time and peak RSS of
//! `ktrace attach` on each kernel of the test bed (KASLR on, 2 vCPUs), and
//! the same for `ktrace bt`. Target: under 0.5 s and 150 MB on every kernel.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use ktrace_testguest::{BootOptions, Guest, KernelSeries};

use crate::bench::{median, time_v, StartupSample};

/// Wall-clock and peak RSS targets for attach + first hit.
const TARGET_SECONDS: f64 = 0.5;
const TARGET_MB: f64 = 150.0;

/// Boots each kernel in turn and times ktrace on it; prints a Markdown table.
pub fn run(reps: usize) -> Result<String> {
    crate::run(crate::cargo().args(["build", "--release", "-p", "ktrace-cli"]))?;
    let ktrace = Path::new("target/release/ktrace").canonicalize().context("target/release/ktrace")?;
    let mut table = String::from(
        "Attach to first hit of `_raw_spin_lock`, and `bt`, per kernel (KASLR on, 2 vCPUs, TCG; median wall time, peak RSS)\n\n\
         | kernel | attach + first hit | bt (all CPUs) | within target (0.5 s, 150 MB) |\n|---|---:|---:|---|\n",
    );
    let mut all_ok = true;
    for series in KernelSeries::ALL {
        let image = ktrace_testguest::prepare(series, &mut |step| eprintln!("guest: {step}"))?;
        let guest = Guest::boot(&image, &BootOptions { kernel: series, ..BootOptions::default() })?;
        let addr = guest.addr();
        let cell = |args: &[&str]| -> Result<(Option<f64>, Option<f64>, bool)> {
            let mut cmd = Command::new(&ktrace);
            cmd.args(args).arg("--vmlinux").arg(&image.vmlinux);
            let runs: Vec<StartupSample> =
                (0..reps).map(|_| time_v(&cmd, &std::env::temp_dir())).collect::<Result<_>>()?;
            let ok = runs.iter().all(|r| r.ok);
            Ok((
                median(runs.iter().map(|r| r.wall)),
                median(runs.iter().filter_map(|r| r.rss_kb.map(|kb| kb as f64 / 1024.0))),
                ok,
            ))
        };
        let attach = cell(&["attach", &addr, "--break", "_raw_spin_lock", "--count", "1"])?;
        let bt = cell(&["bt", &addr])?;
        let show = |(w, r, ok): (Option<f64>, Option<f64>, bool)| match (w, r) {
            (Some(w), Some(r)) => format!("{w:.2} s, {r:.0} MB{}", if ok { "" } else { " (failed!)" }),
            _ => "-".into(),
        };
        let within = |(w, r, ok): (Option<f64>, Option<f64>, bool)| {
            ok && w.is_some_and(|w| w < TARGET_SECONDS) && r.is_some_and(|r| r < TARGET_MB)
        };
        let ok = within(attach);
        all_ok &= ok;
        table += &format!(
            "| {series} ({}) | {} | {} | {} |\n",
            guest.release(),
            show(attach),
            show(bt),
            if ok { "yes" } else { "NO" }
        );
        drop(guest);
    }
    table += &format!(
        "\n{} Medians of {reps} runs per cell.\n",
        if all_ok { "All within target." } else { "NOT all within target." }
    );
    Ok(table)
}
