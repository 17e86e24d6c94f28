//! Running the measured tools: their output lines with the moment each was
//! read, a time limit, and `/usr/bin/time -v` for peak RSS.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::stats::StartupSample;

/// A line some child printed, with the moment we read it.
pub(super) type Lines = Vec<(Instant, String)>;

pub(super) struct Finished {
    pub(super) start: Instant,
    pub(super) end: Instant,
    pub(super) ok: bool,
    pub(super) lines: Lines,
}

impl Finished {
    pub(super) fn find(&self, needle: &str) -> Option<&(Instant, String)> {
        self.lines.iter().find(|(_, l)| l.contains(needle))
    }
}

/// Runs `cmd`, collecting its stdout and stderr lines with timestamps; kills
/// it after `limit`.
pub(super) fn run_lines(cmd: &mut Command, limit: Duration) -> Result<Finished> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let lines = Arc::new(Mutex::new(Lines::new()));
    let mut readers = Vec::new();
    let outs: Vec<Box<dyn Read + Send>> =
        vec![Box::new(child.stdout.take().context("stdout")?), Box::new(child.stderr.take().context("stderr")?)];
    for out in outs {
        let lines = lines.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push((Instant::now(), line));
            }
        }));
    }
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > limit {
            eprintln!("bench: {cmd:?} still running after {limit:?}; killing it");
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let end = Instant::now();
    for r in readers {
        let _ = r.join();
    }
    let mut lines = std::mem::take(&mut *lines.lock().unwrap());
    lines.sort_by_key(|(t, _)| *t);
    Ok(Finished { start, end, ok: status.is_some_and(|s| s.success()), lines })
}

/// Like [`run_lines`], but stdout goes to `sink` (only stderr is read).
pub(super) fn run_stdout_to(cmd: &mut Command, sink: &Path, limit: Duration) -> Result<Finished> {
    let file = fs::File::create(sink)?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut lines = Lines::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.push((Instant::now(), line));
        }
        lines
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let end = Instant::now();
    let lines = reader.join().unwrap_or_default();
    Ok(Finished { start, end, ok: status.is_some_and(|s| s.success()), lines })
}

/// Runs `cmd` under `/usr/bin/time -v`: wall time (ours) and peak RSS.
pub(crate) fn time_v(cmd: &Command, out_dir: &Path) -> Result<StartupSample> {
    let report = out_dir.join("time-v.tmp");
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-v").arg("-o").arg(&report).arg(cmd.get_program()).args(cmd.get_args());
    timed.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let status = timed.status().context("running /usr/bin/time")?;
    let wall = start.elapsed().as_secs_f64();
    let text = fs::read_to_string(&report).unwrap_or_default();
    let _ = fs::remove_file(&report);
    let rss_kb = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok());
    Ok(StartupSample { wall, rss_kb, ok: status.success() })
}
