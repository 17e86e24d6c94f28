//! Text output: backtraces like GDB's `bt`, tasks like `ps`, errors with their causes.

use std::fmt::Write;

use ktrace_symbols::short_source_path;
use ktrace_tracer::{Backtrace, FrameKind, Hit};

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

/// A state column like `ps`.
pub fn state(letter: char) -> String {
    letter.to_string()
}
