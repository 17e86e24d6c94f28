//! `cargo xtask soak [--minutes N]`: trace the guest for a long time and
//! check that ktrace's memory stays flat, that no hit is lost between the
//! stop loop's count and the output, and that the guest is healthy after.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ktrace_testguest::{BootOptions, Guest};

use crate::guest::prepare_verbose;
use crate::run;

pub fn run_soak(args: &[&str]) -> Result<()> {
    let mut minutes = 10.0f64;
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        match arg {
            "--minutes" => minutes = it.next().context("--minutes needs a value")?.parse().context("--minutes")?,
            other => bail!("unknown option {other} (usage: cargo xtask soak [--minutes N])"),
        }
    }
    let image = prepare_verbose()?;
    run(crate::cargo().args(["build", "--release", "-p", "ktrace-cli"]))?;
    let guest = Guest::boot(&image, &BootOptions::default())?;
    eprintln!("soak: guest on port {}, testprog pid {}, {minutes} minutes", guest.port(), guest.testprog_pid());

    let mut child = Command::new("target/release/ktrace")
        .arg("attach")
        .arg(guest.addr())
        .arg("--vmlinux")
        .arg(guest.vmlinux())
        .args(["--break", "_raw_spin_lock", "--pid", &guest.testprog_pid().to_string(), "--json"])
        .args(["--duration", &format!("{}s", (minutes * 60.0).round())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ktrace")?;
    let pid = child.id();
    let lines = Arc::new(AtomicU64::new(0));
    let last_seq = Arc::new(AtomicU64::new(0));
    let stdout = child.stdout.take().context("stdout")?;
    let reader = {
        let (lines, last_seq) = (lines.clone(), last_seq.clone());
        std::thread::spawn(move || -> Result<()> {
            for line in BufReader::new(stdout).lines() {
                let v: serde_json::Value = serde_json::from_str(&line?).context("a JSON line")?;
                lines.fetch_add(1, Ordering::Relaxed);
                last_seq.store(v["seq"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let stderr = child.stderr.take().context("stderr")?;
    let err_reader = std::thread::spawn(move || -> String {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    let start = Instant::now();
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    while child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_secs(5));
        if let Some(rss) = rss_kib(pid) {
            let t = start.elapsed().as_secs_f64();
            samples.push((t, rss, lines.load(Ordering::Relaxed)));
            eprintln!("soak: {t:>6.0}s  rss {rss:>6} KiB  hits written {}", lines.load(Ordering::Relaxed));
        }
    }
    let status = child.wait()?;
    reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let stderr = err_reader.join().map_err(|_| anyhow::anyhow!("stderr reader panicked"))?;
    let matched = stderr
        .lines()
        .find_map(|l| crate::bench::parse_summary(l).map(|(_, matched, _)| matched as u64))
        .with_context(|| format!("no summary line from ktrace:\n{stderr}"))?;
    let written = lines.load(Ordering::Relaxed);

    // Memory: compare the second half's peak with the level after warm-up
    // (the first quarter, at least 30 s: symbolization caches fill up then).
    let warm_at = (minutes * 60.0 * 0.25).max(30.0);
    let warm = samples.iter().find(|s| s.0 >= warm_at).or(samples.first()).map_or(0, |s| s.1);
    let late_peak =
        samples.iter().filter(|s| s.0 >= start.elapsed().as_secs_f64() / 2.0).map(|s| s.1).max().unwrap_or(0);
    let growth = late_peak.saturating_sub(warm);
    let healthy = guest.is_running(Duration::from_secs(30));
    let fresh = Command::new("target/release/ktrace")
        .arg("attach")
        .arg(guest.addr())
        .arg("--vmlinux")
        .arg(guest.vmlinux())
        .args(["--break", "_raw_spin_lock", "--count", "3", "--quiet"])
        .output()?;

    let report = serde_json::json!({
        "minutes": minutes,
        "ktrace_exit": status.code(),
        "matched_by_summary": matched,
        "hits_written": written,
        "last_seq": last_seq.load(Ordering::Relaxed),
        "rss_kib_after_warmup": warm,
        "rss_kib_late_peak": late_peak,
        "rss_samples": samples.iter().map(|s| serde_json::json!({"t": s.0, "rss_kib": s.1, "hits": s.2})).collect::<Vec<_>>(),
        "guest_running_after": healthy,
        "fresh_attach_ok": fresh.status.success(),
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/soak.json", serde_json::to_string_pretty(&report)?)?;
    println!(
        "soak: {minutes} min, {matched} matched hits, {written} written, RSS {warm} -> {late_peak} KiB (+{growth}), guest running: {healthy}, fresh attach: {}",
        fresh.status.success()
    );
    drop(guest);
    if !status.success() {
        bail!("ktrace failed: {stderr}");
    }
    if written != matched {
        bail!("lost hits: the stop loop matched {matched} but {written} were written");
    }
    if growth > 8 * 1024 {
        bail!("RSS grew by {growth} KiB during the soak");
    }
    if !healthy || !fresh.status.success() {
        bail!("the guest is not healthy after the soak");
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}
