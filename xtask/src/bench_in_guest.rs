//! `cargo xtask bench in-guest`: the stop loop against `--in-guest`
//! (matches recorded in the guest, and stopping at each match), side by
//! side on one guest (6.1, 2 vCPUs, KASLR on, two testprogs).
//!
//! Matched hits/s of `attach --break _raw_spin_lock --pid P` in each mode,
//! and the speed of the *other* testprog (its loop rate: each loop does one
//! `read`, so the change in its `task->ioac.syscr` over host time, read
//! through QMP while ktrace holds the stub) untraced, under the stop loop,
//! under `--in-guest`, and under `--in-guest` with a filter that never
//! matches, over a window that starts once tracing has settled; and `--if`
//! compiled into the guest's filter: `current->pid == P` in place of
//! `--pid P`, and an argument (`lock != 0`, always true) on top of it.
//! Conditions rotate round by round; medians are reported.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ktrace_testguest::Qmp;
use serde_json::Value;

use crate::bench::{median, parse_summary};

const BREAK: &str = "_raw_spin_lock";
/// Targets of the issue on this machine.
const TARGET_SPEEDUP: f64 = 20.0;
const TARGET_OTHER: f64 = 0.5;
const TARGET_NEVER: f64 = 0.85;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    StopLoop,
    InGuestStopAtMatch,
    InGuest,
    InGuestNeverMatching,
    InGuestIfCurrent,
    InGuestIfArgument,
}

impl Mode {
    const ALL: [Mode; 7] = [
        Mode::Untraced,
        Mode::StopLoop,
        Mode::InGuestStopAtMatch,
        Mode::InGuest,
        Mode::InGuestNeverMatching,
        Mode::InGuestIfCurrent,
        Mode::InGuestIfArgument,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::StopLoop => "stop loop (`--pid`)",
            Mode::InGuestStopAtMatch => "`--in-guest --pid --stop-at-match` (a stop per match)",
            Mode::InGuest => "`--in-guest --pid` (recorded in the guest)",
            Mode::InGuestNeverMatching => "`--in-guest`, filter never matches",
            Mode::InGuestIfCurrent => "`--in-guest --if 'current->pid == P'` (no `--pid`)",
            Mode::InGuestIfArgument => "`--in-guest --pid --if 'lock != 0'` (an argument)",
        }
    }
}

struct Sample {
    mode: Mode,
    /// Matched hits per second (ktrace's summary).
    matched: Option<f64>,
    /// The other process's loops per host second.
    other: f64,
    /// Matches the guest dropped (a full ring), when recording.
    drops: Option<u64>,
}

/// Runs `rounds` rounds of `seconds`-long windows; returns a Markdown table.
pub fn run(rounds: usize, seconds: u64) -> Result<String> {
    let crate::bench_guest::BenchGuest { ktrace, image, guest } = crate::bench_guest::boot()?;
    let mut qmp = Qmp::connect(guest.qmp_socket().context("QMP socket")?)?;
    let (traced, other) = (guest.testprog_pids()[0], guest.testprog_pids()[1]);
    let vmlinux = image.vmlinux.to_str().context("utf-8 path")?.to_string();
    let ktrace_json = |args: &[&str]| -> Result<Vec<Value>> {
        let out = Command::new(&ktrace).args(args).args(["--vmlinux", &vmlinux, "--json"]).output()?;
        if !out.status.success() {
            bail!("ktrace {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    };
    let addr = guest.addr();
    let tasks = ktrace_json(&["ps", &addr])?;
    let task = tasks
        .iter()
        .find(|t| t["pid"].as_u64() == Some(u64::from(other)))
        .and_then(|t| t["task"].as_str())
        .context("the other testprog's task")?;
    let task = u64::from_str_radix(task.trim_start_matches("0x"), 16)?;
    let layout = ktrace_json(&["layout", "task_struct.ioac.syscr"])?;
    let offset = layout.first().and_then(|l| l["offset"].as_u64()).context("task_struct.ioac.syscr")?;
    let syscr = task + offset;

    let if_current = format!("current->pid == {traced}");
    let traced = traced.to_string();
    let duration = format!("{}s", seconds + 2);
    let mut samples = Vec::new();
    for round in 0..rounds {
        for i in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(i + round) % Mode::ALL.len()];
            let mut args = vec!["attach", &addr, "--vmlinux", &vmlinux, "--break", BREAK, "--quiet"];
            args.extend(["--duration", &duration]); // the window plus start-up and settling
            match mode {
                Mode::Untraced => {}
                Mode::StopLoop => args.extend(["--pid", &traced]),
                Mode::InGuestStopAtMatch => args.extend(["--pid", &traced, "--in-guest", "--stop-at-match"]),
                Mode::InGuest => args.extend(["--pid", &traced, "--in-guest"]),
                Mode::InGuestNeverMatching => args.extend(["--comm", "no-such-task", "--wait", "--in-guest"]),
                Mode::InGuestIfCurrent => args.extend(["--in-guest", "--if", &if_current]),
                Mode::InGuestIfArgument => args.extend(["--pid", &traced, "--in-guest", "--if", "lock != 0"]),
            }
            // The other process is measured over `seconds` once tracing has
            // settled (half a second after ktrace says it attached), so the
            // window holds neither ktrace's start-up nor its exit.
            let window = Duration::from_secs(seconds);
            let (matched, other, drops) = if mode == Mode::Untraced {
                let (before, start) = (read_u64(&mut qmp, syscr)?, Instant::now());
                std::thread::sleep(window);
                let other = read_u64(&mut qmp, syscr)?.saturating_sub(before) as f64 / start.elapsed().as_secs_f64();
                (None, other, None)
            } else {
                let mut child =
                    Command::new(&ktrace).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
                let stderr = child.stderr.take().context("stderr")?;
                let (tx, rx) = std::sync::mpsc::channel();
                let reader = std::thread::spawn(move || {
                    let mut all = String::new();
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        if line.contains("attached to") {
                            let _ = tx.send(());
                        }
                        all.push_str(&line);
                        all.push('\n');
                    }
                    all
                });
                rx.recv_timeout(Duration::from_secs(60)).context("ktrace did not attach")?;
                std::thread::sleep(Duration::from_millis(500));
                let (before, start) = (read_u64(&mut qmp, syscr)?, Instant::now());
                std::thread::sleep(window);
                let other = read_u64(&mut qmp, syscr)?.saturating_sub(before) as f64 / start.elapsed().as_secs_f64();
                let status = child.wait()?;
                let stderr = reader.join().unwrap_or_default();
                if !status.success() {
                    bail!("{mode:?}: ktrace failed: {stderr}");
                }
                if mode != Mode::StopLoop && !stderr.contains("patched to call the filter") {
                    bail!("{mode:?}: --in-guest was not used: {stderr}");
                }
                let recorded = matches!(mode, Mode::InGuest | Mode::InGuestIfCurrent | Mode::InGuestIfArgument);
                if recorded && !stderr.contains("recorded in the guest without stopping it") {
                    bail!("{mode:?}: matches were not recorded in the guest: {stderr}");
                }
                if recorded && mode != Mode::InGuest && !stderr.contains("--if was evaluated in the guest") {
                    bail!("{mode:?}: --if was not evaluated in the guest: {stderr}");
                }
                (stderr.lines().find_map(parse_summary).map(|(_, m, s)| m / s), other, parse_drops(&stderr))
            };
            eprintln!(
                "round {round}: {mode:?}: matched/s {matched:?}, other process {other:.0} loops/s, drops {drops:?}"
            );
            samples.push(Sample { mode, matched, other, drops });
        }
    }
    drop(guest);
    Ok(table(&samples, rounds, seconds))
}

fn table(samples: &[Sample], rounds: usize, seconds: u64) -> String {
    let med = |mode: Mode, f: &dyn Fn(&Sample) -> Option<f64>| {
        median(samples.iter().filter(|s| s.mode == mode).filter_map(f))
    };
    let untraced = med(Mode::Untraced, &|s| Some(s.other)).unwrap_or(f64::NAN);
    let stop = med(Mode::StopLoop, &|s| s.matched).unwrap_or(f64::NAN);
    let mut t = format!(
        "`_raw_spin_lock` filtered by one testprog's pid, 6.1 guest (2 vCPUs, TCG, KASLR on), \
         {rounds} rounds of {seconds} s, conditions rotated; medians\n\n\
         | condition | matched hits/s | other process (loops/s) | of untraced |\n|---|---:|---:|---:|\n"
    );
    for mode in Mode::ALL {
        let matched = med(mode, &|s| s.matched).map_or("-".into(), |m| format!("{m:.0}"));
        let other = med(mode, &|s| Some(s.other)).unwrap_or(f64::NAN);
        t += &format!("| {} | {matched} | {other:.0} | {:.1} % |\n", mode.label(), 100.0 * other / untraced);
    }
    let ig = med(Mode::InGuest, &|s| s.matched).unwrap_or(f64::NAN);
    let other = med(Mode::InGuest, &|s| Some(s.other)).unwrap_or(f64::NAN) / untraced;
    let drops: u64 = samples.iter().filter_map(|s| s.drops).sum();
    let if_current = med(Mode::InGuestIfCurrent, &|s| s.matched).unwrap_or(f64::NAN);
    let if_argument = med(Mode::InGuestIfArgument, &|s| s.matched).unwrap_or(f64::NAN);
    let other_of = |mode: Mode| med(mode, &|s| Some(s.other)).unwrap_or(f64::NAN) / untraced;
    let never = med(Mode::InGuestNeverMatching, &|s| Some(s.other)).unwrap_or(f64::NAN) / untraced;
    let ok = |b: bool| if b { "met" } else { "NOT met" };
    t += &format!(
        "\n`--in-guest` (recorded) matched/s = {:.2}× the stop loop's (target ≥ {TARGET_SPEEDUP}×: {}); the other \
         process at {:.0} % (target ≥ {:.0} %: {}); never-matching filter at {:.0} % (target ≥ {:.0} %: {}); \
         {drops} match(es) dropped in all recording rounds.\n",
        ig / stop,
        ok(ig / stop >= TARGET_SPEEDUP),
        100.0 * other,
        100.0 * TARGET_OTHER,
        ok(other >= TARGET_OTHER),
        100.0 * never,
        100.0 * TARGET_NEVER,
        ok(never >= TARGET_NEVER),
    );
    t += &format!(
        "`--if` in the guest: `current->pid == P` matched/s = {:.2}× `--pid`'s, an argument on top = {:.2}× \
         (target ≥ 1×, i.e. as fast as `--pid`, within noise: {}); the other process at {:.0} % and {:.0} % \
         (`--pid`: {:.0} %).\n",
        if_current / ig,
        if_argument / ig,
        ok(if_current / ig >= 0.95 && if_argument / ig >= 0.95),
        100.0 * other_of(Mode::InGuestIfCurrent),
        100.0 * other_of(Mode::InGuestIfArgument),
        100.0 * other,
    );
    t
}

/// The drops a recording trace reported in its summary.
fn parse_drops(stderr: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains("dropped (ring full)"))?;
    let before = line.split(" dropped (ring full)").next()?;
    before.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A u64 of guest memory (QMP works while ktrace holds the stub).
fn read_u64(qmp: &mut Qmp, addr: u64) -> Result<u64> {
    let bytes = qmp.read_virtual(addr, 8)?;
    Ok(u64::from_le_bytes(bytes[..8].try_into()?))
}
