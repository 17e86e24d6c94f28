//! What the tracer reports: hits, summaries and aggregated stacks.

use std::collections::HashMap;
use std::time::Duration;

use ktrace_kernel::{CpuId, TaskRef};
use serde::Serialize;

use ktrace_kernel::unwind::{Backtrace, FrameKind};

/// One matching breakpoint hit. Serialized with stable field names (one JSON
/// object per hit for `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    /// 1-based number of the hit among matched hits.
    pub seq: u64,
    /// Wall-clock time, seconds since the Unix epoch.
    pub time: f64,
    /// Seconds since tracing started.
    pub elapsed: f64,
    /// The CPU that hit the breakpoint.
    pub cpu: CpuId,
    /// Thread id of the current task.
    pub pid: i32,
    /// Process id of the current task.
    pub tgid: i32,
    /// Command name of the current task.
    pub comm: String,
    /// Address of the current `task_struct`.
    pub task: TaskRef,
    /// The `--break` location that fired, as the user wrote it.
    pub breakpoint: String,
    /// Runtime address of the breakpoint.
    #[serde(serialize_with = "ktrace_symbols::hex::serialize")]
    pub pc: u64,
    /// The backtrace, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backtrace: Option<Backtrace>,
    /// The stopped CPU's registers (`--regs`), in `info registers` order;
    /// in JSON an object of `"0x…"` strings.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "registers_json")]
    pub registers: Option<Vec<(String, u64)>>,
    /// The `--print` expressions' values, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prints: Vec<ktrace_kernel::values::Printed>,
}

fn registers_json<S: serde::Serializer>(regs: &Option<Vec<(String, u64)>>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let regs = regs.as_deref().unwrap_or_default();
    let mut map = s.serialize_map(Some(regs.len()))?;
    for (name, v) in regs {
        map.serialize_entry(name, &format!("0x{v:x}"))?;
    }
    map.end()
}

impl Hit {
    /// The stack as function names, innermost first, inlined functions
    /// expanded; the key of [`StackCounts`].
    pub fn stack_key(&self) -> Vec<String> {
        let Some(bt) = &self.backtrace else { return Vec::new() };
        let mut key = Vec::new();
        for f in &bt.frames {
            if f.kind == FrameKind::User {
                key.push("[user]".to_string());
                continue;
            }
            let inlined: Vec<&str> =
                f.source.iter().filter(|s| s.inlined).filter_map(|s| s.function.as_deref()).collect();
            key.extend(inlined.into_iter().map(str::to_string));
            key.push(f.function.clone().unwrap_or_else(|| format!("0x{:x}", f.pc)));
        }
        key
    }
}

/// Why a trace ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `--count` matched hits were seen.
    Count,
    /// `--duration` elapsed.
    Duration,
    /// Cancelled (Ctrl-C, SIGTERM, or the embedding program).
    Cancelled,
    /// The hit callback asked to stop.
    Stopped,
    /// The filtered task exited.
    TaskExited,
    /// An error ended it (see the error).
    Error,
}

/// Counters of a trace.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Breakpoint hits evaluated.
    pub seen: u64,
    /// Hits that matched the filter.
    pub matched: u64,
    /// Time from the first resume to the end.
    pub elapsed: Duration,
    /// Why it ended.
    pub end: EndReason,
    /// Whether breakpoints were removed and the guest left running.
    pub guest_released: bool,
    /// What `--in-guest` did, when it was asked for.
    pub in_guest: Option<InGuestReport>,
}

/// What the in-guest filter did for this trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InGuestReport {
    /// Where the trampoline was (runtime address), when it was used.
    pub trampoline: Option<u64>,
    /// Functions patched.
    pub patched: usize,
    /// Why a function (or the whole trace) uses the stop loop instead.
    pub fallbacks: Vec<String>,
    /// Sites a killed ktrace had left patched, put back before starting.
    pub left_behind: usize,
    /// Sites put back to the ftrace NOP at the end.
    pub restored: usize,
    /// Whether the trampoline was erased again (else it stays, harmless,
    /// for the next `--in-guest` or `ktrace restore`).
    pub erased: bool,
    /// Whether the connection was lost (or ktrace panicked) and the sites
    /// were restored over a new one.
    pub reconnected: bool,
    /// Whether `--if` was compiled into the filter: evaluated in the guest.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub condition_in_guest: bool,
    /// How matches were recorded in the guest and read back, when they were
    /// (else each match stopped the guest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingReport>,
}

/// What recording in the guest did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecordingReport {
    /// Matches recorded and read back (the guest did not stop for them).
    pub recorded: u64,
    /// Matches lost because their CPU's ring was full (`--no-drop` stops
    /// the guest to drain instead), as the guest counted them.
    pub drops: u64,
    /// Records a CPU had begun but not finished when the code was removed.
    pub unfinished: u64,
    /// Slots per CPU, and the most stack bytes each record copies.
    pub slots: u64,
    /// The most stack bytes a record copies.
    pub stack_copy: u64,
    /// How the rings were read.
    pub drain: String,
    /// Times the guest stopped because a ring was full (`--no-drop`).
    pub full_stops: u64,
    /// Whether the borrowed memory got its bytes back.
    pub memory_restored: bool,
}

impl Summary {
    /// Hits evaluated per second.
    pub fn seen_rate(&self) -> f64 {
        self.seen as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Matched hits per second.
    pub fn matched_rate(&self) -> f64 {
        self.matched as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Counts of distinct stacks, like bpftrace's `@[kstack] = count()`.
#[derive(Clone, Debug, Default)]
pub struct StackCounts {
    counts: HashMap<Vec<String>, u64>,
}

impl StackCounts {
    /// Counts the stack of a hit.
    pub fn add(&mut self, hit: &Hit) {
        *self.counts.entry(hit.stack_key()).or_default() += 1;
    }

    /// Distinct stacks, most frequent first (ties by stack, for stable output).
    pub fn sorted(&self) -> Vec<(&[String], u64)> {
        let mut v: Vec<(&[String], u64)> = self.counts.iter().map(|(k, &c)| (k.as_slice(), c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }

    /// Collapsed stacks for flame graph tools: `outer;…;inner count` per line.
    pub fn folded(&self) -> String {
        let mut out = String::new();
        for (stack, count) in self.sorted() {
            let names: Vec<&str> = stack.iter().rev().map(String::as_str).collect();
            out.push_str(&names.join(";"));
            out.push_str(&format!(" {count}\n"));
        }
        out
    }

    /// True when no stack was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrace_kernel::unwind::Frame;
    use ktrace_symbols::SourceFrame;

    fn hit(funcs: &[&str]) -> Hit {
        let frames = funcs
            .iter()
            .map(|f| Frame {
                pc: 0xffff_ffff_8100_0000,
                kind: FrameKind::Call,
                function: Some(f.to_string()),
                module: None,
                offset: 0,
                regs_at: None,
                source: vec![SourceFrame { function: Some(f.to_string()), file: None, line: None, inlined: false }],
                sp: 0,
                cfa: None,
                return_address: true,
                args: Vec::new(),
            })
            .collect();
        Hit {
            seq: 1,
            time: 0.0,
            elapsed: 0.0,
            cpu: CpuId(0),
            pid: 1,
            tgid: 1,
            comm: "init".into(),
            task: TaskRef(0),
            breakpoint: "x".into(),
            pc: 0,
            backtrace: Some(Backtrace { frames, stopped: None, stack: Default::default() }),
            registers: None,
            prints: Vec::new(),
        }
    }

    #[test]
    fn stacks_are_counted_and_folded_outermost_first() {
        let mut s = StackCounts::default();
        s.add(&hit(&["_raw_spin_lock", "do_sys_open"]));
        s.add(&hit(&["_raw_spin_lock", "do_sys_open"]));
        s.add(&hit(&["_raw_spin_lock", "ksys_read"]));
        let sorted = s.sorted();
        assert_eq!(sorted[0].1, 2);
        assert_eq!(sorted[0].0, ["_raw_spin_lock", "do_sys_open"]);
        assert_eq!(s.folded(), "do_sys_open;_raw_spin_lock 2\nksys_read;_raw_spin_lock 1\n");
    }
}
