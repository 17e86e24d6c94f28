//! The orchestration: one guest serves every measurement; tools alternate
//! round by round; then the start-up and round-trip runs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ktrace_testguest::{cache_dir, BootOptions, Guest};
use serde_json::{json, Value};

use super::process::time_v;
use super::stats::{median, Sample, StartupSample, Ticks};
use super::{Env, Opts, BREAK, BUDGET};

pub(super) struct Bench {
    pub(super) opts: Opts,
    pub(super) root: PathBuf,
    pub(super) ktrace: PathBuf,
    pub(super) started: Instant,
    pub(super) samples: BTreeMap<&'static str, Vec<Sample>>,
    pub(super) startup: BTreeMap<(&'static str, &'static str), Vec<StartupSample>>,
    /// Median µs of an 8-byte `m` read, per tool, one value per round.
    pub(super) rtt: BTreeMap<&'static str, Vec<f64>>,
    pub(super) notes: Vec<String>,
}

/// Throughput tools, in their round-0 order.
pub(super) const TOOLS: &[&str] =
    &["idle", "ktrace", "gdb", "bare-skip", "ktrace-bt", "ktrace-if", "bare-cond", "ktrace-bt-noargs", "bare-step"];

impl Bench {
    pub(super) fn new(opts: Opts) -> Result<Bench> {
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

    pub(super) fn run(mut self) -> Result<()> {
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
        let out_dir = self.root.join("target/bench");
        fs::create_dir_all(&out_dir)?;
        let load_before = fs::read_to_string("/proc/loadavg").unwrap_or_default();

        eprintln!("bench: booting the guest (TCG, 2 vCPUs, KASLR off, 1 testprog)…");
        let guest = Guest::boot(&image, &BootOptions { smp: 2, kaslr: false, testprogs: 1, ..Default::default() })?;
        let addr = guest.addr();
        let pid = guest.testprog_pid();
        let vmlinux = guest.vmlinux().to_path_buf();
        let lx_dir = match lx_scripts(guest.release()) {
            Ok(dir) => Some(dir),
            Err(e) => {
                self.note(format!("scripts/gdb unavailable, gdb-lx skipped: {e:#}"));
                None
            }
        };
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

    pub(super) fn note(&mut self, note: String) {
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

    pub(super) fn push(&mut self, tool: &'static str, s: Sample) {
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        eprintln!("bench:   {tool:<10} evaluated/s {:>8}  matched/s {:>8}", show(s.evals), show(s.matched),);
        self.samples.entry(tool).or_default().push(s);
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
}

/// The `linux-source-X.Y` package that matches a guest's `uname -r`
/// (`6.1.0-56-cloud-amd64` → `6.1`, `7.3.4+deb13-cloud-amd64` → `7.3`).
fn source_version(release: &str) -> Option<String> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let (major, minor) = (parts.next()?, parts.next()?);
    (!major.is_empty() && !minor.is_empty()).then(|| format!("{major}.{minor}"))
}

/// The kernel's own GDB helpers (`scripts/gdb`) of the guest's kernel
/// version, extracted from Debian's linux-source tarball into the cache
/// once. Only `linux.utils`, `linux.tasks` and `linux.cpus` are imported
/// (what `$lx_current()` needs); none of them needs the generated `constants.py`.
fn lx_scripts(release: &str) -> Result<PathBuf> {
    let version = source_version(release).with_context(|| format!("no kernel version in {release:?}"))?;
    let name = format!("linux-source-{version}");
    let tarball = PathBuf::from(format!("/usr/src/{name}.tar.xz"));
    let base = cache_dir().join("gdb-scripts");
    let dir = base.join(&name).join("scripts/gdb");
    if dir.join("linux/cpus.py").exists() {
        return Ok(dir);
    }
    if !tarball.exists() {
        bail!("{} not found (apt install {name})", tarball.display());
    }
    eprintln!("bench: extracting scripts/gdb from {} (once)…", tarball.display());
    fs::create_dir_all(&base)?;
    crate::run(Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(&base).arg(format!("{name}/scripts/gdb")))?;
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

impl Bench {
    /// Median evaluated/s, matched/s and guest progress of a tool, and its number of runs.
    pub(super) fn medians(&self, tool: &str) -> (Option<f64>, Option<f64>, Option<f64>, usize) {
        let s = self.samples.get(tool).map(Vec::as_slice).unwrap_or(&[]);
        (
            median(s.iter().filter_map(|s| s.evals)),
            median(s.iter().filter_map(|s| s.matched)),
            median(s.iter().filter_map(|s| s.progress)),
            s.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_version_is_major_minor_of_the_release() {
        assert_eq!(source_version("6.1.0-56-cloud-amd64").as_deref(), Some("6.1"));
        assert_eq!(source_version("6.12.38+deb13-cloud-amd64").as_deref(), Some("6.12"));
        assert_eq!(source_version("7.3.4+deb13-cloud-amd64").as_deref(), Some("7.3"));
        assert_eq!(source_version("cloud"), None);
    }
}
