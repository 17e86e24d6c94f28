//! One measured window of one tool: hits evaluated and matched per second
//! while tracing `_raw_spin_lock` filtered by testprog's pid.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::process::{run_lines, run_stdout_to, Finished};
use super::run::{Bench, TOOLS};
use super::stats::{parse_summary, Sample};
use super::{Env, BREAK};

impl Bench {
    /// Measures `tool` for one window of `--seconds`.
    pub(super) fn throughput(&mut self, tool: &'static str, round: usize, env: &Env) -> Result<()> {
        match tool {
            "idle" => {
                self.idle(round);
                Ok(())
            }
            "ktrace" | "ktrace-bt" | "ktrace-bt-noargs" | "ktrace-if" => self.ktrace(tool, round, env),
            "gdb" => self.gdb(round, env),
            bare => self.bare(bare, round, env),
        }
    }

    /// No tracer: the guest's own pace.
    fn idle(&mut self, round: usize) {
        let secs = self.opts.seconds;
        let a = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let b = Instant::now();
        self.push("idle", Sample::new(round, None, None, secs as f64, (a, b), true));
    }

    /// `ktrace attach --pid`, quiet or with `--json` backtraces (with the
    /// arguments of every frame, or `--no-args`); `ktrace-if`: the filter
    /// is a condition on the traced function's argument instead of `--pid`
    /// (one that never holds: every stop is evaluated, none matches).
    fn ktrace(&mut self, tool: &'static str, round: usize, env: &Env) -> Result<()> {
        let secs = self.opts.seconds;
        let mut cmd = Command::new(&self.ktrace);
        cmd.args(["attach", env.addr, "--break", BREAK])
            .arg("--vmlinux")
            .arg(env.vmlinux)
            .args(["--duration", &format!("{secs}s")]);
        if tool != "ktrace-if" {
            cmd.args(["--pid", &env.pid.to_string()]);
        }
        match tool {
            "ktrace" => cmd.args(["--quiet", "--no-backtrace"]),
            "ktrace-if" => cmd.args(["--quiet", "--no-backtrace", "--if", "lock == 0"]),
            "ktrace-bt-noargs" => cmd.args(["--json", "--no-args"]),
            _ => cmd.arg("--json"),
        };
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
        self.push(tool, Sample::new(round, Some(hits / seconds), Some(matched / seconds), seconds, (begin, end), true));
        Ok(())
    }

    /// One GDB session running each mode of `gdb_bench.py` back to back.
    fn gdb(&mut self, round: usize, env: &Env) -> Result<()> {
        let secs = self.opts.seconds;
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
        let last_end = self.gdb_modes(&out, &modes, round);
        if let (Some(a), Some(b)) = (attached, last_end) {
            let seconds = b.duration_since(a).as_secs_f64();
            self.push("gdb-session", Sample::new(round, None, None, seconds, (a, b), true));
        }
        if out.find("kb-detached").is_none() {
            self.note(format!("gdb round {}: did not report a clean detach", round + 1));
        }
        for (_, l) in out.lines.iter().filter(|(_, l)| l.starts_with("kb-error")) {
            let l = l.clone();
            self.note(format!("gdb round {}: {l}", round + 1));
        }
        Ok(())
    }

    /// A sample per GDB mode from the session's `kb-begin`/`kb-result`
    /// lines; returns when the last mode ended.
    fn gdb_modes(&mut self, out: &Finished, modes: &[&str], round: usize) -> Option<Instant> {
        let mut last_end = None;
        for &mode in modes {
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
                self.note(format!("gdb {mode} round {}: no result (ok={}); last lines: {tail:?}", round + 1, out.ok));
                continue;
            };
            let seconds = v["seconds"].as_f64().unwrap_or(self.opts.seconds as f64);
            let evals = v["evals"].as_f64().unwrap_or(0.0);
            let matched = v["matched"].as_f64().unwrap_or(0.0);
            let sample =
                Sample::new(round, Some(evals / seconds), Some(matched / seconds), seconds, (begin, end), false);
            self.push(key, sample);
            last_end = Some(end);
        }
        last_end
    }

    /// `bare_loop.py` in one of its modes (`bare-skip`, `bare-cond`, `bare-step`).
    fn bare(&mut self, bare: &str, round: usize, env: &Env) -> Result<()> {
        let secs = self.opts.seconds;
        let mode = bare.strip_prefix("bare-").context("a bare-* tool")?;
        let port = env.addr.rsplit(':').next().context("port")?;
        let out = run_lines(
            Command::new("python3")
                .arg(self.root.join("xtask/assets/bare_loop.py"))
                .arg(port)
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
        let tool: &'static str = TOOLS.iter().find(|t| **t == bare).context("a known tool")?;
        self.push(tool, Sample::new(round, Some(hits / seconds), None, seconds, (out.start, out.end), true));
        Ok(())
    }
}
