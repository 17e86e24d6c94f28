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

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ktrace_testguest::{cache_dir, BootOptions, Guest};
use serde_json::{json, Value};

const BREAK: &str = "_raw_spin_lock";
/// Past this, remaining work is skipped so that the whole run stays < 10 min.
const BUDGET: Duration = Duration::from_secs(9 * 60);
const LINUX_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";

struct Opts {
    rounds: usize,
    seconds: u64,
    gdb_startup_reps: usize,
    ktrace_startup_reps: usize,
}

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
    Bench::new(opts)?.run()
}

/// A line some child printed, with the moment we read it.
type Lines = Vec<(Instant, String)>;

struct Finished {
    start: Instant,
    end: Instant,
    ok: bool,
    lines: Lines,
}

impl Finished {
    fn find(&self, needle: &str) -> Option<&(Instant, String)> {
        self.lines.iter().find(|(_, l)| l.contains(needle))
    }
}

/// Runs `cmd`, collecting its stdout and stderr lines with timestamps; kills
/// it after `limit`.
fn run_lines(cmd: &mut Command, limit: Duration) -> Result<Finished> {
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

/// Polls the guest console for `ktrace-guest tick <uptime>` heartbeats and
/// remembers when each first showed up on the host.
struct Ticks {
    seen: Arc<Mutex<Vec<(Instant, f64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticks {
    fn watch(console: PathBuf) -> Ticks {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Ticks already printed before the first poll have no known host time.
            let mut parsed: Option<usize> = None;
            while !st.load(Ordering::Relaxed) {
                let text = fs::read(&console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let now = Instant::now();
                let ticks = parse_ticks(&text);
                let from = *parsed.get_or_insert(ticks.len());
                if ticks.len() > from {
                    s.lock().unwrap().extend(ticks[from..].iter().map(|&u| (now, u)));
                    parsed = Some(ticks.len());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        Ticks { seen, stop, thread: Some(thread) }
    }

    /// Guest seconds per host second over [a, b]. The guest clock at `a` is
    /// extrapolated from the last heartbeat before `a` (the guest runs freely
    /// between measurements), but never past the first heartbeat after `a`;
    /// likewise backwards at `b`. So a heavily stopped guest that prints no
    /// heartbeat inside the window still gets a number. None until a
    /// heartbeat after `b` has been seen.
    fn progress(&self, a: Instant, b: Instant) -> Option<f64> {
        let ga = self.clock_at_start(a)?;
        let gb = self.clock_at_end(b)?;
        let host = b.duration_since(a).as_secs_f64();
        (host > 0.5).then(|| ((gb - ga) / host).max(0.0))
    }

    fn clock_at_start(&self, a: Instant) -> Option<f64> {
        let seen = self.seen.lock().unwrap();
        let before = seen.iter().rev().find(|(t, _)| *t <= a)?;
        let first_in = seen.iter().find(|(t, _)| *t > a).map_or(f64::INFINITY, |x| x.1);
        Some((before.1 + a.duration_since(before.0).as_secs_f64()).min(first_in))
    }

    fn clock_at_end(&self, b: Instant) -> Option<f64> {
        let seen = self.seen.lock().unwrap();
        let after = seen.iter().find(|(t, _)| *t >= b)?;
        let last_in = seen.iter().rev().find(|(t, _)| *t < b).map_or(f64::NEG_INFINITY, |x| x.1);
        Some((after.1 - after.0.duration_since(b).as_secs_f64()).max(last_in))
    }
}

impl Drop for Ticks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Uptimes of every complete heartbeat in the console text (lines may be
/// interleaved with kernel messages, so search anywhere).
fn parse_ticks(text: &str) -> Vec<f64> {
    const TAG: &str = "ktrace-guest tick ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(TAG) {
        rest = &rest[i + TAG.len()..];
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'));
        let Some(n) = n else { break }; // incomplete: the number may go on
        if let Ok(u) = rest[..n].parse() {
            out.push(u);
        }
    }
    out
}

/// One measured window of one tool.
#[derive(Clone)]
struct Sample {
    round: usize,
    evals: Option<f64>,
    matched: Option<f64>,
    progress: Option<f64>,
    seconds: f64,
    /// The host-time window, for `progress`, filled in after the heartbeat
    /// that follows it has been seen.
    window: (Instant, Instant),
    /// False for windows followed or preceded by other traced time without a
    /// free-running gap (GDB's modes): the estimate needs free running around.
    with_progress: bool,
}

impl Sample {
    fn json(&self) -> Value {
        json!({"round": self.round, "evals_per_s": self.evals, "matched_per_s": self.matched,
               "guest_progress": self.progress, "seconds": self.seconds})
    }
}

pub(crate) struct StartupSample {
    pub(crate) wall: f64,
    pub(crate) rss_kb: Option<u64>,
    pub(crate) ok: bool,
}

struct Bench {
    opts: Opts,
    root: PathBuf,
    ktrace: PathBuf,
    started: Instant,
    samples: BTreeMap<&'static str, Vec<Sample>>,
    startup: BTreeMap<(&'static str, &'static str), Vec<StartupSample>>,
    /// Median µs of an 8-byte `m` read, per tool, one value per round.
    rtt: BTreeMap<&'static str, Vec<f64>>,
    notes: Vec<String>,
}

/// Throughput tools, in their round-0 order.
const TOOLS: &[&str] = &["idle", "ktrace", "gdb", "bare-skip", "ktrace-bt", "bare-cond", "bare-step"];

/// Rows of the throughput table: (key, description).
const ROWS: &[(&str, &str)] = &[
    ("idle", "no tracer"),
    ("ktrace", "ktrace --no-backtrace --quiet"),
    ("ktrace-bt", "ktrace --json (full backtraces) >/dev/null"),
    ("gdb-cond", "gdb: break if <$gs_base+current_task>->pid"),
    ("gdb-lx", "gdb: Python stop() with scripts/gdb lx_current"),
    ("gdb-bt", "gdb: break if ..., then `bt` per match"),
    ("gdb-session", "gdb: whole session (the three modes above, back to back)"),
    ("bare-skip", "bare RSP loop: Z0 + `c ADDR+5` (no filter)"),
    ("bare-cond", "bare RSP loop: skip + one 8-byte read"),
    ("bare-step", "bare RSP loop: vCont;s + vCont;c"),
];

impl Bench {
    fn new(opts: Opts) -> Result<Bench> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
        let ktrace = root.join("target/release/ktrace");
        Ok(Bench {
            opts,
            root,
            ktrace,
            started: Instant::now(),
            samples: BTreeMap::new(),
            startup: BTreeMap::new(),
            rtt: BTreeMap::new(),
            notes: Vec::new(),
        })
    }

    fn over_budget(&self) -> bool {
        self.started.elapsed() > BUDGET
    }

    fn run(mut self) -> Result<()> {
        let image = crate::guest::prepare_verbose()?;
        crate::run(crate::cargo().current_dir(&self.root).args(["build", "--quiet", "--release", "-p", "ktrace-cli"]))?;
        crate::run(crate::cargo().current_dir(&self.root).args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "ktrace-rsp",
            "--example",
            "rtt",
        ]))?;
        let lx_dir = match lx_scripts() {
            Ok(dir) => Some(dir),
            Err(e) => {
                self.note(format!("scripts/gdb unavailable, gdb-lx skipped: {e:#}"));
                None
            }
        };
        let out_dir = self.root.join("target/bench");
        fs::create_dir_all(&out_dir)?;
        let load_before = fs::read_to_string("/proc/loadavg").unwrap_or_default();

        eprintln!("bench: booting the guest (TCG, 2 vCPUs, KASLR off, 1 testprog)…");
        let guest = Guest::boot(&image, &BootOptions { smp: 2, kaslr: false, testprogs: 1, ..Default::default() })?;
        let addr = guest.addr();
        let pid = guest.testprog_pid();
        let vmlinux = guest.vmlinux().to_path_buf();
        let runtime = self.symbol_address(&vmlinux, BREAK)?;
        eprintln!("bench: guest up on {addr}, testprog pid {pid}, {BREAK} at {runtime:#x}");
        let ticks = Ticks::watch(guest.console_path().to_path_buf());
        std::thread::sleep(Duration::from_secs(2));

        let env = Env { addr: &addr, pid, vmlinux: &vmlinux, runtime, lx_dir: lx_dir.as_deref(), out_dir: &out_dir };
        for round in 0..self.opts.rounds {
            for i in 0..TOOLS.len() {
                if self.over_budget() {
                    self.note(format!("time budget reached: round {} incomplete or skipped", round + 1));
                    break;
                }
                let tool = TOOLS[(i + round) % TOOLS.len()];
                eprintln!("bench: round {}/{}: {tool}", round + 1, self.opts.rounds);
                self.throughput(tool, round, &env)?;
                if !guest.is_running(Duration::from_secs(5)) {
                    self.note(format!("round {}: guest printed no heartbeat for 5 s after {tool}", round + 1));
                }
                self.fill_progress(&ticks);
            }
        }
        drop(ticks);

        self.startups(&env)?;
        self.round_trips(&env)?;
        if !guest.is_running(Duration::from_secs(5)) {
            self.note("guest printed no heartbeat for 5 s after the start-up runs".into());
        }
        let release = guest.release().to_string();
        drop(guest);

        let load_after = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let machine = machine(&release, load_before.trim(), load_after.trim());
        let table = self.table();
        println!("{table}");
        let results = self.json(machine);
        let path = out_dir.join("results.json");
        fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
        fs::write(out_dir.join("table.md"), &table)?;
        eprintln!("bench: wrote {} ({:.0} s in all)", path.display(), self.started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The RSP client's round trip against a plain Python loop doing the same
    /// 8-byte `m` reads of `linux_banner`, alternating, several rounds.
    fn round_trips(&mut self, env: &Env) -> Result<()> {
        let banner = self.symbol_address(env.vmlinux, "linux_banner")?;
        let port = env.addr.rsplit(':').next().context("port")?.to_string();
        let (hex, reads) = (format!("{banner:x}"), "2000");
        for round in 0..self.opts.rounds.max(3) {
            let order: [&'static str; 2] =
                if round % 2 == 0 { ["python", "ktrace-rsp"] } else { ["ktrace-rsp", "python"] };
            for tool in order {
                let mut cmd = if tool == "python" {
                    let mut c = Command::new("python3");
                    c.arg(self.root.join("xtask/assets/rtt_floor.py")).args([&port, &hex, reads]);
                    c
                } else {
                    let mut c = Command::new(self.root.join("target/release/examples/rtt"));
                    c.args([env.addr, &hex, reads]);
                    c
                };
                let out = cmd.output().with_context(|| format!("running the {tool} round trip"))?;
                let line = String::from_utf8_lossy(&out.stdout);
                match serde_json::from_str::<Value>(line.trim()).ok().and_then(|v| v["median_us"].as_f64()) {
                    Some(us) => self.rtt.entry(tool).or_default().push(us),
                    None => {
                        self.note(format!("{tool} round trip failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
                    }
                }
            }
        }
        Ok(())
    }

    fn note(&mut self, note: String) {
        eprintln!("bench: note: {note}");
        self.notes.push(note);
    }

    fn symbol_address(&self, vmlinux: &Path, name: &str) -> Result<u64> {
        let out = Command::new(&self.ktrace).args(["sym", "--json", "--vmlinux"]).arg(vmlinux).arg(name).output()?;
        let v: Value = serde_json::from_slice(&out.stdout).context("ktrace sym --json")?;
        let a = v["address"].as_str().context("address")?;
        Ok(u64::from_str_radix(a.trim_start_matches("0x"), 16)?)
    }

    /// Computes guest progress for the windows whose following heartbeat
    /// has now been seen.
    fn fill_progress(&mut self, ticks: &Ticks) {
        for (tool, samples) in &mut self.samples {
            for s in samples.iter_mut().filter(|s| s.progress.is_none() && s.with_progress) {
                s.progress = ticks.progress(s.window.0, s.window.1);
                if let Some(p) = s.progress {
                    eprintln!("bench:   {tool:<10} guest progress {p:.2}");
                }
            }
        }
    }

    fn push(&mut self, tool: &'static str, s: Sample) {
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        eprintln!("bench:   {tool:<10} evaluated/s {:>8}  matched/s {:>8}", show(s.evals), show(s.matched),);
        self.samples.entry(tool).or_default().push(s);
    }

    fn throughput(&mut self, tool: &'static str, round: usize, env: &Env) -> Result<()> {
        let secs = self.opts.seconds;
        match tool {
            "idle" => {
                let a = Instant::now();
                std::thread::sleep(Duration::from_secs(secs));
                let b = Instant::now();
                self.push(
                    tool,
                    Sample {
                        round,
                        evals: None,
                        matched: None,
                        progress: None,
                        seconds: secs as f64,
                        window: (a, b),
                        with_progress: true,
                    },
                );
            }
            "ktrace" | "ktrace-bt" => {
                let mut cmd = Command::new(&self.ktrace);
                cmd.args(["attach", env.addr, "--break", BREAK, "--pid", &env.pid.to_string()])
                    .arg("--vmlinux")
                    .arg(env.vmlinux)
                    .args(["--duration", &format!("{secs}s")]);
                if tool == "ktrace" {
                    cmd.args(["--quiet", "--no-backtrace"]);
                } else {
                    cmd.arg("--json");
                }
                // stdout (the per-hit output) goes to a file we discard: the
                // point is the cost of producing it, not of storing it.
                let sink = env.out_dir.join("ktrace-stdout.tmp");
                let out = run_stdout_to(&mut cmd, &sink, Duration::from_secs(secs + 60))?;
                let _ = fs::remove_file(&sink);
                let Some((end, line)) = out.find("hits seen,").cloned() else {
                    self.note(format!("{tool} round {}: no summary line (ok={})", round + 1, out.ok));
                    return Ok(());
                };
                let begin = out.find("attached to").map_or(out.start, |(t, _)| *t);
                let (hits, matched, seconds) = parse_summary(&line).context("ktrace summary line")?;
                self.push(
                    tool,
                    Sample {
                        round,
                        evals: Some(hits / seconds),
                        matched: Some(matched / seconds),
                        progress: None,
                        seconds,
                        window: (begin, end),
                        with_progress: true,
                    },
                );
            }
            "gdb" => {
                let mut modes = vec!["cond", "lx", "bt"];
                if env.lx_dir.is_none() {
                    modes.retain(|m| *m != "lx");
                }
                let script = self.root.join("xtask/assets/gdb_bench.py");
                let index = env.out_dir.join("gdb-index-cache");
                fs::create_dir_all(&index)?;
                let mut cmd = Command::new("gdb");
                cmd.args(["-nx", "-batch"])
                    // Only to make the sessions load faster; start-up is measured without it.
                    .arg("-iex")
                    .arg(format!("set index-cache directory {}", index.display()))
                    .args(["-iex", "set index-cache enabled on", "-x"])
                    .arg(&script)
                    .arg(env.vmlinux)
                    .env("KB_TARGET", env.addr)
                    .env("KB_PID", env.pid.to_string())
                    .env("KB_SECONDS", secs.to_string())
                    .env("KB_MODES", modes.join(","))
                    .env("KB_BREAK", BREAK);
                if let Some(dir) = env.lx_dir {
                    cmd.env("KB_LX_DIR", dir);
                }
                let out = run_lines(&mut cmd, Duration::from_secs(240 + 3 * secs))?;
                // The guest is stopped between GDB's modes, so guest progress
                // is measured over the whole session, attach to last result.
                let attached = out.find("kb-attached").map(|(t, _)| *t);
                let mut last_end = None;
                for mode in modes {
                    let key: &'static str = match mode {
                        "cond" => "gdb-cond",
                        "lx" => "gdb-lx",
                        _ => "gdb-bt",
                    };
                    let begin = out.find(&format!("kb-begin {mode}")).map(|(t, _)| *t);
                    let result = out.lines.iter().find_map(|(t, l)| {
                        let v: Value = serde_json::from_str(l.strip_prefix("kb-result ")?).ok()?;
                        (v["mode"] == mode).then_some((*t, v))
                    });
                    let (Some(begin), Some((end, v))) = (begin, result) else {
                        let tail: Vec<_> = out.lines.iter().rev().take(5).map(|(_, l)| l.as_str()).collect();
                        self.note(format!(
                            "gdb {mode} round {}: no result (ok={}); last lines: {tail:?}",
                            round + 1,
                            out.ok
                        ));
                        continue;
                    };
                    let seconds = v["seconds"].as_f64().unwrap_or(secs as f64);
                    let evals = v["evals"].as_f64().unwrap_or(0.0);
                    let matched = v["matched"].as_f64().unwrap_or(0.0);
                    self.push(
                        key,
                        Sample {
                            round,
                            evals: Some(evals / seconds),
                            matched: Some(matched / seconds),
                            progress: None,
                            seconds,
                            window: (begin, end),
                            with_progress: false,
                        },
                    );
                    last_end = Some(end);
                }
                if let (Some(a), Some(b)) = (attached, last_end) {
                    self.push(
                        "gdb-session",
                        Sample {
                            round,
                            evals: None,
                            matched: None,
                            progress: None,
                            seconds: b.duration_since(a).as_secs_f64(),
                            window: (a, b),
                            with_progress: true,
                        },
                    );
                }
                if out.find("kb-detached").is_none() {
                    self.note(format!("gdb round {}: did not report a clean detach", round + 1));
                }
                for (_, l) in out.lines.iter().filter(|(_, l)| l.starts_with("kb-error")) {
                    let l = l.clone();
                    self.note(format!("gdb round {}: {l}", round + 1));
                }
            }
            bare => {
                let mode = bare.strip_prefix("bare-").unwrap();
                let out = run_lines(
                    Command::new("python3")
                        .arg(self.root.join("xtask/assets/bare_loop.py"))
                        .arg(env.addr.rsplit(':').next().unwrap())
                        .arg(format!("{:#x}", env.runtime))
                        .arg(secs.to_string())
                        .arg(mode),
                    Duration::from_secs(secs + 60),
                )?;
                let Some(v) = out.lines.iter().find_map(|(_, l)| serde_json::from_str::<Value>(l).ok()) else {
                    self.note(format!("{bare} round {}: no result (ok={})", round + 1, out.ok));
                    return Ok(());
                };
                let seconds = v["seconds"].as_f64().unwrap_or(secs as f64);
                let hits = v["hits"].as_f64().unwrap_or(0.0);
                let tool: &'static str = TOOLS.iter().find(|t| **t == bare).unwrap();
                self.push(
                    tool,
                    Sample {
                        round,
                        evals: Some(hits / seconds),
                        matched: None,
                        progress: None,
                        seconds,
                        window: (out.start, out.end),
                        with_progress: true,
                    },
                );
            }
        }
        Ok(())
    }

    fn startups(&mut self, env: &Env) -> Result<()> {
        let k = self.ktrace.clone();
        let v = env.vmlinux;
        let ktrace_attach: Vec<String> = vec![
            "attach".into(),
            env.addr.into(),
            "--vmlinux".into(),
            v.display().to_string(),
            "--break".into(),
            BREAK.into(),
            "--count".into(),
            "1".into(),
            "--no-backtrace".into(),
        ];
        let target = format!("target remote {}", env.addr);
        let gdb_attach: Vec<String> =
            ["-nx", "-batch", &v.display().to_string(), "-ex", &target, "-ex", &format!("break {BREAK}")]
                .iter()
                .map(|s| s.to_string())
                .chain(["-ex", "continue", "-ex", "delete", "-ex", "detach"].map(String::from))
                .collect();
        let ktrace_layout: Vec<String> =
            ["layout", "--vmlinux", &v.display().to_string(), "task_struct.pid", "task_struct.comm"]
                .map(String::from)
                .to_vec();
        let gdb_layout: Vec<String> = ["-nx", "-batch", "-ex", "ptype /o struct task_struct", &v.display().to_string()]
            .map(String::from)
            .to_vec();
        let ktrace_sym: Vec<String> = ["sym", "--vmlinux", &v.display().to_string(), BREAK].map(String::from).to_vec();
        let gdb_sym: Vec<String> = ["-nx", "-batch", "-ex", &format!("info address {BREAK}"), &v.display().to_string()]
            .map(String::from)
            .to_vec();
        let cases: [(&'static str, Vec<String>, Vec<String>); 3] = [
            ("attach", ktrace_attach, gdb_attach),
            ("layout", ktrace_layout, gdb_layout),
            ("sym", ktrace_sym, gdb_sym),
        ];
        let reps = self.opts.ktrace_startup_reps.max(self.opts.gdb_startup_reps);
        for (case, kargs, gargs) in cases {
            for i in 0..reps {
                if self.over_budget() {
                    self.note(format!("time budget reached: start-up {case} cut short"));
                    break;
                }
                if i < self.opts.ktrace_startup_reps {
                    let s = time_v(Command::new(&k).args(&kargs), env.out_dir)?;
                    eprintln!("bench: start-up {case} ktrace: {:.2} s, {:?} KB", s.wall, s.rss_kb);
                    self.startup.entry((case, "ktrace")).or_default().push(s);
                }
                if i < self.opts.gdb_startup_reps {
                    let s = time_v(Command::new("gdb").args(&gargs), env.out_dir)?;
                    eprintln!("bench: start-up {case} gdb: {:.2} s, {:?} KB", s.wall, s.rss_kb);
                    self.startup.entry((case, "gdb")).or_default().push(s);
                }
            }
        }
        Ok(())
    }

    fn medians(&self, tool: &str) -> (Option<f64>, Option<f64>, Option<f64>, usize) {
        let s = self.samples.get(tool).map(Vec::as_slice).unwrap_or(&[]);
        (
            median(s.iter().filter_map(|s| s.evals)),
            median(s.iter().filter_map(|s| s.matched)),
            median(s.iter().filter_map(|s| s.progress)),
            s.len(),
        )
    }

    fn table(&self) -> String {
        let f1 = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let f2 = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let mut t = String::new();
        t += "Breakpoint throughput on `_raw_spin_lock`, filtered by testprog's pid (medians)\n\n";
        t += "| tool | runs | hits evaluated/s | matched/s | guest progress (guest s / host s) |\n";
        t += "|---|---:|---:|---:|---:|\n";
        for (key, desc) in ROWS {
            let (e, m, p, n) = self.medians(key);
            t += &format!("| {desc} | {n} | {} | {} | {} |\n", f1(e), f1(m), f2(p));
        }
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
            _ => "-".into(),
        };
        let (ke, km, ..) = self.medians("ktrace");
        let (be, bm, ..) = self.medians("ktrace-bt");
        let (ce, cm, ..) = self.medians("gdb-cond");
        let (le, lm, ..) = self.medians("gdb-lx");
        let (gbe, gbm, ..) = self.medians("gdb-bt");
        let best_bare = ["bare-skip", "bare-cond", "bare-step"]
            .iter()
            .filter_map(|b| self.medians(b).0)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        t += "\nRatios (of medians)\n\n";
        t += "| comparison | hits evaluated/s | matched/s |\n|---|---:|---:|\n";
        t += &format!("| ktrace / gdb condition | {} | {} |\n", ratio(ke, ce), ratio(km, cm));
        t += &format!("| ktrace / gdb lx_current stop() | {} | {} |\n", ratio(ke, le), ratio(km, lm));
        t += &format!("| ktrace --json / gdb bt (backtrace capture) | {} | {} |\n", ratio(be, gbe), ratio(bm, gbm));
        t += &format!("| ktrace / best bare loop | {} | - |\n", ratio(ke, best_bare));
        t += "\nStart-up, launch to done (median wall time, peak RSS)\n\n";
        t += "| case | ktrace | gdb | gdb / ktrace (time, RSS) |\n|---|---:|---:|---:|\n";
        for (case, desc) in [
            ("attach", "attach + first hit of `_raw_spin_lock` (unfiltered), detach"),
            ("layout", "`layout task_struct.pid task_struct.comm` / `ptype /o struct task_struct`"),
            ("sym", "`sym _raw_spin_lock` / `info address _raw_spin_lock`"),
        ] {
            let get = |tool| {
                let s = self.startup.get(&(case, tool)).map(Vec::as_slice).unwrap_or(&[]);
                let ok = s.iter().filter(|s| s.ok).count();
                (
                    median(s.iter().map(|s| s.wall)),
                    median(s.iter().filter_map(|s| s.rss_kb.map(|r| r as f64 / 1024.0))),
                    s.len(),
                    ok,
                )
            };
            let cell = |(w, r, n, ok): (Option<f64>, Option<f64>, usize, usize)| match (w, r) {
                (Some(w), Some(r)) => format!("{w:.2} s, {r:.0} MB (n={n}{})", if ok < n { ", failed!" } else { "" }),
                _ => "-".into(),
            };
            let (k, g) = (get("ktrace"), get("gdb"));
            t += &format!("| {desc} | {} | {} | {}, {} |\n", cell(k), cell(g), ratio(g.0, k.0), ratio(g.1, k.1));
        }
        let rtt = |tool| median(self.rtt.get(tool).into_iter().flatten().copied());
        let (ours, floor) = (rtt("ktrace-rsp"), rtt("python"));
        t += "\nRSP round trip: 8-byte `m` read of `linux_banner` (median of per-round medians, 2000 reads per round)\n\n";
        t += "| client | µs per read |\n|---|---:|\n";
        t += &format!("| ktrace-rsp `Session::read_memory` | {} |\n", f1(ours));
        t += &format!("| plain Python socket loop (floor) | {} |\n", f1(floor));
        if let (Some(a), Some(b)) = (ours, floor) {
            t += &format!("| ktrace-rsp adds to the floor | {:+.0} % |\n", (a / b - 1.0) * 100.0);
        }
        if !self.notes.is_empty() {
            t += "\nNotes from this run:\n\n";
            for n in &self.notes {
                t += &format!("- {n}\n");
            }
        }
        t
    }

    fn json(&self, machine: Value) -> Value {
        let mut tools = serde_json::Map::new();
        for (tool, samples) in &self.samples {
            let (e, m, p, n) = self.medians(tool);
            tools.insert(
                tool.to_string(),
                json!({
                    "runs": n, "median_evals_per_s": e, "median_matched_per_s": m, "median_guest_progress": p,
                    "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
                }),
            );
        }
        let mut startup = serde_json::Map::new();
        for ((case, tool), s) in &self.startup {
            startup.insert(format!("{case}/{tool}"), json!({
                "median_wall_s": median(s.iter().map(|s| s.wall)),
                "median_peak_rss_kb": median(s.iter().filter_map(|s| s.rss_kb.map(|r| r as f64))),
                "samples": s.iter().map(|s| json!({"wall_s": s.wall, "peak_rss_kb": s.rss_kb, "ok": s.ok})).collect::<Vec<_>>(),
            }));
        }
        json!({
            "machine": machine,
            "config": {"rounds": self.opts.rounds, "seconds": self.opts.seconds, "breakpoint": BREAK,
                       "guest": {"smp": 2, "kaslr": false, "accel": "tcg", "testprogs": 1}},
            "throughput": tools,
            "startup": startup,
            "rsp_round_trip_us": {
                "ktrace_rsp": self.rtt.get("ktrace-rsp"),
                "python_floor": self.rtt.get("python"),
            },
            "notes": self.notes,
            "total_seconds": self.started.elapsed().as_secs_f64(),
        })
    }
}

struct Env<'a> {
    addr: &'a str,
    pid: u32,
    vmlinux: &'a Path,
    runtime: u64,
    lx_dir: Option<&'a Path>,
    out_dir: &'a Path,
}

/// Like [`run_lines`], but stdout goes to `sink` (only stderr is read).
fn run_stdout_to(cmd: &mut Command, sink: &Path, limit: Duration) -> Result<Finished> {
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

/// `ktrace: 2853 hits seen, 798 matched in 5.00s (…)` → (hits, matched, seconds).
/// (hits seen, matched, seconds) from ktrace's summary line on stderr.
pub(crate) fn parse_summary(line: &str) -> Option<(f64, f64, f64)> {
    let rest = line.split("ktrace:").nth(1)?.trim();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let hits = words.first()?.parse().ok()?;
    let matched = words.get(3)?.parse().ok()?;
    let seconds: f64 = words.get(6)?.trim_end_matches('s').parse().ok()?;
    (seconds > 0.0).then_some((hits, matched, seconds))
}

pub(crate) fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The kernel's own GDB helpers (`scripts/gdb`), extracted from Debian's
/// linux-source tarball into the cache once. Only `linux.utils`,
/// `linux.tasks` and `linux.cpus` are imported (what `$lx_current()` needs);
/// none of them needs the generated `constants.py`.
fn lx_scripts() -> Result<PathBuf> {
    let base = cache_dir().join("gdb-scripts");
    let dir = base.join("linux-source-6.1/scripts/gdb");
    if dir.join("linux/cpus.py").exists() {
        return Ok(dir);
    }
    if !Path::new(LINUX_SOURCE).exists() {
        bail!("{LINUX_SOURCE} not found (apt install linux-source-6.1)");
    }
    eprintln!("bench: extracting scripts/gdb from {LINUX_SOURCE} (once)…");
    fs::create_dir_all(&base)?;
    crate::run(
        Command::new("tar").arg("-xJf").arg(LINUX_SOURCE).arg("-C").arg(&base).arg("linux-source-6.1/scripts/gdb"),
    )?;
    Ok(dir)
}

fn machine(release: &str, load_before: &str, load_after: &str) -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let cmd = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
    };
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": cpu,
        "host_kernel": cmd("uname", &["-r"]),
        "qemu": cmd("qemu-system-x86_64", &["--version"]),
        "gdb": cmd("gdb", &["--version"]),
        "guest_kernel_release": release,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    })
}
