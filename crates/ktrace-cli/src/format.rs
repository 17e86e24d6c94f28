//! Text output: backtraces like GDB's `bt`, tasks like `ps`, errors with their causes.

use std::fmt::Write;

use ktrace_kernel::{CpuState, KernelInfo, TaskInfo};
use ktrace_symbols::short_source_path;
use ktrace_tracer::{Backtrace, CpuBacktrace, FrameKind, Hit, Summary};

/// `error: cause: cause`, each cause once.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn location(file: Option<&str>, line: Option<u32>) -> String {
    let file = file.map(short_source_path);
    match (file, line) {
        (Some(f), Some(l)) => format!(" at {f}:{l}"),
        (Some(f), None) => format!(" at {f}"),
        _ => String::new(),
    }
}

/// A backtrace as GDB prints one: one line per frame, inlined functions as
/// their own frames, and a marker where entry code saved `pt_regs`.
pub fn backtrace(bt: &Backtrace) -> String {
    let mut out = String::new();
    let mut n = 0;
    for f in &bt.frames {
        match f.kind {
            FrameKind::User => {
                match f.regs_at {
                    Some(at) => {
                        let _ = writeln!(out, "    -- user space (pt_regs at 0x{at:x}) --");
                    }
                    None => {
                        let _ = writeln!(out, "    -- stopped in user space --");
                    }
                }
                let _ = writeln!(out, "#{n:<3} 0x{:016x} in user space", f.pc);
                n += 1;
                continue;
            }
            FrameKind::Interrupted => {
                let _ = writeln!(out, "    -- interrupted context (pt_regs at 0x{:x}) --", f.regs_at.unwrap_or(0));
            }
            _ => {}
        }
        let func = f.function.as_deref().unwrap_or("??");
        let module = f.module.as_deref().map(|m| format!(" [{m}]")).unwrap_or_default();
        if f.source.is_empty() {
            let _ = writeln!(out, "#{n:<3} 0x{:016x} in {func}+0x{:x}{module}", f.pc, f.offset);
            n += 1;
            continue;
        }
        // Like GDB: the pc on the first (innermost) line of a physical frame,
        // its inlined callers below it, the symbol+offset on the real function.
        let last = f.source.len() - 1;
        for (i, s) in f.source.iter().enumerate() {
            let name = s.function.as_deref().unwrap_or(func);
            let loc = location(s.file.as_deref(), s.line);
            let pc = if i == 0 { format!("0x{:016x}", f.pc) } else { String::new() };
            let what = if i == last {
                format!("{func}+0x{:x}{module}", f.offset)
            } else {
                format!("{name} (inlined){module}")
            };
            // The scopes: the inlined functions by name, the real one last.
            let scope = match i == last {
                true => f.args.last(),
                false => f.args.iter().take(f.args.len().saturating_sub(1)).find(|a| a.function == name),
            };
            let args = scope.map(|s| arguments(&s.args)).unwrap_or_default();
            let _ = writeln!(out, "#{n:<3} {pc:18} in {what}{args}{loc}");
            n += 1;
        }
    }
    if let Some(why) = &bt.stopped {
        let _ = writeln!(out, "    (backtrace stopped: {why})");
    }
    out
}

/// ` (start=0, end=1024, flags=32768)`, as a GDB `bt` line shows arguments.
fn arguments(args: &[ktrace_kernel::values::Argument]) -> String {
    let list: Vec<String> = args.iter().map(|a| format!("{}={}", a.name, a.text)).collect();
    format!(" ({})", list.join(", "))
}

/// The stopped CPU's registers as `info registers` shows them: name, hex, decimal.
pub fn registers(regs: &[(String, u64)]) -> String {
    let mut out = String::new();
    for (name, v) in regs {
        let _ = writeln!(out, "    {name:<10} 0x{v:<18x} {}", *v as i64);
    }
    out
}

/// `--print` values as GDB's `print` shows them: `    current->pid = 2297`.
pub fn prints(prints: &[ktrace_kernel::values::Printed]) -> String {
    prints.iter().map(|p| format!("    {} = {}\n", p.expr, p.text)).collect()
}

/// The header line of a hit.
pub fn hit_header(hit: &Hit) -> String {
    format!(
        "hit {} at {:.6}s: cpu {} pid {} tgid {} comm {} at {} (0x{:x})",
        hit.seq, hit.elapsed, hit.cpu, hit.pid, hit.tgid, hit.comm, hit.breakpoint, hit.pc
    )
}

/// A hit as `attach` prints it: the header, the `--print` values, the
/// `--regs` registers, the backtrace, and a blank line.
pub fn hit_text(hit: &Hit) -> String {
    let bt = hit.backtrace.as_ref().map(backtrace).unwrap_or_default();
    let regs = hit.registers.as_deref().map(registers).unwrap_or_default();
    let prints = prints(&hit.prints);
    format!("{}\n{prints}{regs}{bt}\n", hit_header(hit))
}

/// The end-of-trace lines of `attach` (on stderr): the counters, why it
/// ended, what became of the guest, and what `--in-guest` left; `addr` is
/// the stub's address, for the `ktrace restore` hint.
pub fn summary_text(summary: &Summary, leave_stopped: bool, addr: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ktrace: {} hits seen, {} matched in {:.2}s ({:.0} hits/s, {:.0} matched/s); ended by {:?}; {}",
        summary.seen,
        summary.matched,
        summary.elapsed.as_secs_f64(),
        summary.seen_rate(),
        summary.matched_rate(),
        summary.end,
        match (summary.guest_released, leave_stopped) {
            (true, false) => "breakpoints removed, guest running",
            (true, true) => "breakpoints removed, guest left paused (--leave-stopped)",
            (false, _) => "guest NOT released",
        }
    );
    if let Some(r) = &summary.in_guest {
        if let Some(at) = r.trampoline {
            let _ = writeln!(
                out,
                "ktrace: --in-guest: {} of {} site(s) restored{}; trampoline at 0x{at:x} {}",
                r.restored,
                r.patched,
                if r.reconnected { " over a new connection" } else { "" },
                if r.erased { "erased" } else { "left in place (harmless; `ktrace restore` erases it)" }
            );
            if r.condition_in_guest {
                let _ = writeln!(out, "ktrace: --in-guest: --if was evaluated in the guest (no stop for it)");
            }
            if let Some(rec) = &r.recording {
                let _ = writeln!(
                    out,
                    "ktrace: --in-guest: {} match(es) recorded in the guest without stopping it ({} slots a CPU, stacks up to {} bytes, {}); {} dropped (ring full){}{}; borrowed memory {}",
                    rec.recorded,
                    rec.slots,
                    rec.stack_copy,
                    rec.drain,
                    rec.drops,
                    if rec.full_stops > 0 { format!(", {} stop(s) to drain a full ring", rec.full_stops) } else { String::new() },
                    if rec.unfinished > 0 { format!(", {} unfinished at the end", rec.unfinished) } else { String::new() },
                    if rec.memory_restored { "given back" } else { "NOT given back (unused by the kernel; harmless)" },
                );
            }
            if r.restored < r.patched {
                let _ = writeln!(
                    out,
                    "ktrace: --in-guest: {} site(s) still call the trampoline (harmless); `ktrace restore {addr}` puts them back",
                    r.patched - r.restored,
                );
            }
        }
    }
    out
}

/// A state column like `ps`.
pub fn state(letter: char) -> String {
    letter.to_string()
}

/// `ktrace ps`: every task, with the CPU it runs on (from `cpus`).
pub fn ps_text(tasks: &[TaskInfo], cpus: &[CpuState]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>7} {:>7} {:>2} {:>3}  {:<18}  COMM", "PID", "TGID", "ST", "CPU", "TASK");
    for t in tasks {
        let cpu = cpus.iter().find(|c| c.current.task == t.task).map_or("-".to_string(), |c| c.cpu.to_string());
        let comm = if t.is_kthread() { format!("[{}]", t.comm) } else { t.comm.clone() };
        let _ = writeln!(
            out,
            "{:>7} {:>7} {:>2} {:>3}  0x{:016x}  {}",
            t.pid,
            t.tgid,
            state(t.state.letter()),
            cpu,
            t.task.0,
            comm
        );
    }
    out
}

/// `ktrace info`: release, banner, KASLR, and what each CPU runs.
pub fn info_text(info: &KernelInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "release   {}", info.release);
    let _ = writeln!(out, "banner    {}", info.banner);
    if info.slide == 0 {
        let _ = writeln!(out, "kaslr     off (slide 0)");
    } else {
        let _ = writeln!(out, "kaslr     on, slide 0x{:x}", info.slide);
    }
    let _ = writeln!(out, "cpus      {}", info.cpus.len());
    for c in &info.cpus {
        let _ = writeln!(
            out,
            "cpu {:<3}  per-cpu 0x{:016x}  current pid {:<6} {} (task 0x{:x})",
            c.cpu, c.percpu_base, c.current.pid, c.current.comm, c.current.task.0
        );
    }
    out
}

/// `ktrace bt`: the release and CPU count, then each CPU's task and backtrace.
pub fn bt_text(release: &str, cpu_count: usize, cpus: &[CpuBacktrace]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{release} ({cpu_count} CPUs)");
    for c in cpus {
        let _ = writeln!(out, "\ncpu {}: pid {} tgid {} comm {}", c.cpu, c.task.pid, c.task.tgid, c.task.comm);
        out.push_str(&backtrace(&c.backtrace));
    }
    out
}
