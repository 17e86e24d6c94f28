//! `cargo xtask bench kernels`: attach-to-first-hit time and peak RSS of
//! `ktrace attach` on each kernel of the test bed (KASLR on, 2 vCPUs), and
//! the same for `ktrace bt`. Target: under 0.5 s and 150 MB on every kernel.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use ktrace_testguest::{BootOptions, Guest, KernelSeries};

/// Wall-clock and peak RSS targets for attach + first hit.
const TARGET_SECONDS: f64 = 0.5;
const TARGET_MB: f64 = 150.0;

/// One timed run.
struct Run {
    wall: f64,
    rss_mb: Option<f64>,
    ok: bool,
}

/// Runs `ktrace ARGS` under `/usr/bin/time -v`.
fn timed(ktrace: &Path, args: &[&str], vmlinux: &Path) -> Result<Run> {
    let report = std::env::temp_dir().join(format!("ktrace-bench-time-{}.txt", std::process::id()));
    let start = Instant::now();
    let status = Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(&report)
        .arg(ktrace)
        .args(args)
        .arg("--vmlinux")
        .arg(vmlinux)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running /usr/bin/time (apt-get install time)")?;
    let wall = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    let rss_mb = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0);
    Ok(Run { wall, rss_mb, ok: status.success() })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    (n > 0).then(|| if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

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
            let runs: Vec<Run> = (0..reps).map(|_| timed(&ktrace, args, &image.vmlinux)).collect::<Result<_>>()?;
            let ok = runs.iter().all(|r| r.ok);
            Ok((
                median(runs.iter().map(|r| r.wall).collect()),
                median(runs.iter().filter_map(|r| r.rss_mb).collect()),
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
        "\n{} of {reps} runs per cell.\n",
        if all_ok { "All within target;" } else { "NOT all within target;" }
    );
    Ok(table)
}
