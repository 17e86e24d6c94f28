//! The results: a Markdown table for people, `results.json` for tools.

use serde_json::{json, Value};

use super::run::Bench;
use super::stats::{median, Sample};
use super::BREAK;

/// Rows of the throughput table: (key, description).
const ROWS: &[(&str, &str)] = &[
    ("idle", "no tracer"),
    ("ktrace", "ktrace --no-backtrace --quiet"),
    ("ktrace-bt", "ktrace --json (full backtraces, arguments in every frame) >/dev/null"),
    ("ktrace-bt-noargs", "ktrace --json --no-args (full backtraces, no arguments) >/dev/null"),
    ("ktrace-if", "ktrace --if 'lock == 0' (a condition on the argument, no --pid) --no-backtrace --quiet"),
    ("gdb-cond", "gdb: break if <$gs_base+current_task>->pid"),
    ("gdb-lx", "gdb: Python stop() with scripts/gdb lx_current"),
    ("gdb-bt", "gdb: break if ..., then `bt` per match"),
    ("gdb-session", "gdb: whole session (the three modes above, back to back)"),
    ("bare-skip", "bare RSP loop: Z0 + `c ADDR+5` (no filter)"),
    ("bare-cond", "bare RSP loop: skip + one 8-byte read"),
    ("bare-step", "bare RSP loop: vCont;s + vCont;c"),
];

impl Bench {
    pub(super) fn table(&self) -> String {
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
        let (ne, nm, ..) = self.medians("ktrace-bt-noargs");
        let (ie, ..) = self.medians("ktrace-if");
        t += &format!(
            "| backtraces with arguments / without (target ≥ 0.9) | {} | {} |\n",
            ratio(be, ne),
            ratio(bm, nm)
        );
        t += &format!("| --if on an argument / --pid (target ≥ 1.0) | {} | - |\n", ratio(ie, ke));
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

    pub(super) fn json(&self, machine: Value) -> Value {
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
