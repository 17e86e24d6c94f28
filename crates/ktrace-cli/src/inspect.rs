//! `ktrace ps`, `ktrace info`, `ktrace bt`: one stop, read, resume.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use ktrace_kernel::values::{FrameArguments, FrameRegisters};
use ktrace_kernel::{trampoline, Backtrace, CpuState, Kernel, Regs, TaskInfo, Unwinder};
use ktrace_tracer::BtConfig;

use crate::args::{explain, ModulesArg, TargetArgs};
use crate::source::{self, Source, SourceArgs};
use crate::{format, with_memory, UsageError};

/// `ktrace bt`.
#[derive(Args, Debug, Clone)]
pub struct BtArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub modules: ModulesArg,
    /// One task's stack: a sleeping task from the frame the scheduler
    /// saved, a running one from its CPU's registers.
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,
    /// Every task's stack, like `--pid` for each (drgn's `stack_trace` of
    /// every task).
    #[arg(long, conflicts_with = "pid")]
    pub all_tasks: bool,
}

/// `ps`, `info`, `lsmod`, `dmesg`: a target, read through the stub, live or from a dump.
#[derive(Args, Debug, Clone)]
pub struct ReadArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub async fn ps(read: ReadArgs) -> Result<ExitCode> {
    let args = &read.target;
    let (mut source, kernel) = source::open(args, &read.source).await?;
    let live = source.is_live();
    let result = list_tasks(&mut source, &kernel, live).await;
    let (tasks, cpus, consistent) = source::finish(source, result).await?;
    if !consistent {
        eprintln!("ktrace: the task list changed while it was read (the guest runs): this listing may be inconsistent");
    }
    if args.json {
        let cpu_of = |t: &TaskInfo| cpus.iter().find(|c| c.current.task == t.task).map(|c| c.cpu);
        for t in &tasks {
            let mut v = serde_json::to_value(t)?;
            v["cpu"] = serde_json::json!(cpu_of(t).map(|c| c.0));
            outln!("{v}");
        }
    } else {
        out!("{}", format::ps_text(&tasks, &cpus));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn info(read: ReadArgs) -> Result<ExitCode> {
    let args = &read.target;
    let (mut source, kernel) = source::open(args, &read.source).await?;
    let result = with_memory!(&mut source, kernel, |mem| kernel.info(&mut mem).await);
    let info = source::finish(source, result).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        out!("{}", format::info_text(&info));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn lsmod(read: ReadArgs) -> Result<ExitCode> {
    let args = &read.target;
    let (mut source, kernel) = source::open(args, &read.source).await?;
    let result = with_memory!(&mut source, kernel, |mem| kernel.module_list(&mut mem).await);
    let modules = source::finish(source, result).await?;
    if args.json {
        for m in &modules {
            outln!("{}", serde_json::to_string(m)?);
        }
    } else {
        outln!("{:<24} {:>9}  {:<9} {:<18}  MODULE", "NAME", "SIZE", "STATE", "BASE");
        for m in &modules {
            outln!("{:<24} {:>9}  {:<9} 0x{:016x}  0x{:x}", m.name, m.size, m.state, m.base, m.module);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(args: TargetArgs) -> Result<ExitCode> {
    let vm = Arc::new(crate::locate::vmlinux(&args, None).await?);
    let stub = args.stub()?;
    let outcome = ktrace_tracer::restore_left_behind(&stub, vm, args.client())
        .await
        .map_err(|e| explain(args.addr().unwrap_or(""), e))?;
    let Some(at) = outcome.trampoline else {
        outln!("no ktrace trampoline in the guest; nothing to restore");
        return Ok(ExitCode::SUCCESS);
    };
    outln!(
        "trampoline at 0x{at:x}: {} site(s) restored to the ftrace NOP{}; {}",
        outcome.restored.len(),
        if outcome.foreign.is_empty() {
            String::new()
        } else {
            format!(", {} left alone (they hold something else)", outcome.foreign.len())
        },
        if outcome.erased { "trampoline erased" } else { "trampoline left in place (harmless: nothing calls it)" }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn bt(bt: BtArgs) -> Result<ExitCode> {
    let args = &bt.target;
    if bt.pid.is_some() || bt.all_tasks {
        return bt_tasks(&bt).await;
    }
    if bt.source.live || bt.source.core.is_some() {
        return bt_without_stub(&bt).await;
    }
    let vm = Arc::new(crate::locate::vmlinux(args, None).await?);
    warn_if_no_backtraces(&vm);
    let stub = args.stub()?;
    let cfg =
        BtConfig { client: args.client(), max_frames: 64, release: args.release(), module_debug: bt.modules.dir() };
    let (kernel, cpus) =
        ktrace_tracer::backtrace_all_cpus(&stub, vm, cfg).await.map_err(|e| explain(args.addr().unwrap_or(""), e))?;
    if args.json {
        for c in &cpus {
            outln!("{}", serde_json::to_string(c)?);
        }
    } else {
        out!("{}", format::bt_text(kernel.release(), kernel.cpu_count(), &cpus));
    }
    Ok(ExitCode::SUCCESS)
}

/// Says once, on stderr, when the vmlinux's ORC tables cannot be used, so
/// that backtraces are off (the rest of ktrace keeps working).
pub fn warn_if_no_backtraces(vm: &ktrace_symbols::Vmlinux) {
    if let Err(e @ ktrace_symbols::SymbolError::BadOrc { .. }) = vm.orc() {
        eprintln!("ktrace: warning: backtraces are off: {e}");
    }
}

/// Every task and what each CPU runs. A running guest (`live`) is read
/// until two walks agree (at most three times); `false` when they never did.
async fn list_tasks(source: &mut Source, kernel: &Kernel, live: bool) -> Result<(Vec<TaskInfo>, Vec<CpuState>, bool)> {
    let key = |tasks: &[TaskInfo]| tasks.iter().map(|t| (t.task, t.pid)).collect::<Vec<_>>();
    let mut last: Option<Vec<TaskInfo>> = None;
    for _ in 0..if live { 3 } else { 1 } {
        let tasks = with_memory!(&mut *source, kernel, |mem| kernel.tasks(&mut mem).await)?;
        let cpus = with_memory!(&mut *source, kernel, |mem| kernel.cpu_states(&mut mem).await)?;
        if !live || last.as_ref().is_some_and(|l| key(l) == key(&tasks)) {
            return Ok((tasks, cpus, true));
        }
        last = Some(tasks);
    }
    let tasks = last.unwrap_or_default();
    let cpus = with_memory!(&mut *source, kernel, |mem| kernel.cpu_states(&mut mem).await)?;
    Ok((tasks, cpus, false))
}

/// `ktrace dmesg`.
#[derive(Args, Debug, Clone)]
pub struct DmesgArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Keep printing new records as the kernel logs them, read from the host
    /// while the guest runs (implies `--live`), until Ctrl-C.
    #[arg(long, short = 'w', conflicts_with = "core")]
    pub follow: bool,
}

/// How often `dmesg --follow` looks for new records.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// `ktrace dmesg`: the kernel log.
pub async fn dmesg(dmesg: DmesgArgs) -> Result<ExitCode> {
    let args = &dmesg.read.target;
    let mut source_args = dmesg.read.source.clone();
    source_args.live |= dmesg.follow;
    let (mut source, kernel) = source::open(args, &source_args).await?;
    let result = with_memory!(&mut source, kernel, |mem| kernel.log(&mut mem).await);
    if !dmesg.follow {
        let log = source::finish(source, result).await?;
        print_log(&log, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let log = result?;
    print_log(&log, args.json)?;
    let mut last = log.records.last().map(|r| r.seq);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        // The guest ran: mappings outside the fixed ones may have changed.
        kernel.resumed();
        let log = with_memory!(&mut source, kernel, |mem| kernel.log(&mut mem).await)?;
        let new: Vec<_> = log.records.iter().filter(|r| last.is_none_or(|l| r.seq > l)).cloned().collect();
        if let (Some(l), Some(first)) = (last, new.first()) {
            if first.seq > l + 1 {
                eprintln!(
                    "ktrace: {} record(s) were overwritten in the ring before they could be read",
                    first.seq - l - 1
                );
            }
        }
        // Torn records here are old ones being overwritten: the gap says what was lost.
        print_log(&ktrace_kernel::KernelLog { records: new, torn: 0 }, args.json)?;
        if let Some(r) = log.records.last() {
            last = Some(r.seq);
        }
    }
}

/// Prints the records, and says on stderr how many were torn.
fn print_log(log: &ktrace_kernel::KernelLog, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for r in &log.records {
        use std::io::Write as _;
        match json {
            true => writeln!(out, "{}", serde_json::to_string(r)?)?,
            false => writeln!(out, "{}", r.line())?,
        }
    }
    if log.torn > 0 {
        eprintln!("ktrace: {} record(s) changed while they were read (the guest runs) and are left out", log.torn);
    }
    Ok(())
}

/// `bt --core` (every CPU's stack at the dump) and `bt --live` (what every
/// CPU runs: a running CPU's registers need a stop, so no stacks).
async fn bt_without_stub(bt: &BtArgs) -> Result<ExitCode> {
    let args = &bt.target;
    let (mut source, kernel) = source::open(args, &bt.source).await?;
    let kernel = kernel.with_module_debug(&bt.modules.dir());
    let states = with_memory!(&mut source, kernel, |mem| kernel.cpu_states(&mut mem).await)?;
    let mut unwinder = Unwinder::new(kernel.vmlinux())?.with_max_frames(64);
    unwinder.know_trampoline(trampoline_in(&mut source, &kernel).await);
    let mut arguments = FrameArguments::new();
    if !args.json {
        outln!("{} ({} CPUs)", kernel.release(), kernel.cpu_count());
    }
    for state in &states {
        let t = &state.current;
        let backtrace = match &mut source {
            Source::Core(core) => {
                let regs = Regs::read_from(core, state.cpu).await?;
                let mut bt = unwinder.unwind(&kernel, &mut kernel.memory(core), regs).await;
                let frame0 = FrameRegisters::read_from(core, state.cpu).await;
                fill_arguments(&mut source, &kernel, &mut arguments, &mut bt, &frame0).await;
                Some(bt)
            }
            _ => None,
        };
        if args.json {
            let v = serde_json::json!({ "cpu": state.cpu, "task": t, "backtrace": backtrace, "running": backtrace.is_none() });
            outln!("{v}");
            continue;
        }
        outln!("\ncpu {}: pid {} tgid {} comm {}", state.cpu, t.pid, t.tgid, t.comm);
        match backtrace {
            Some(b) => out!("{}", format::backtrace(&b)),
            None => outln!("    (running: its registers need a stop; use `ktrace bt` without --live)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ktrace bt --pid N` and `ktrace bt --all-tasks`.
async fn bt_tasks(bt: &BtArgs) -> Result<ExitCode> {
    let args = &bt.target;
    let (mut source, kernel) = source::open(args, &bt.source).await?;
    let kernel = kernel.with_module_debug(&bt.modules.dir());
    let result = tasks_backtraces(&mut source, &kernel, bt.pid).await;
    let stacks = source::finish(source, result).await?;
    for (task, cpu, backtrace) in &stacks {
        if args.json {
            outln!("{}", serde_json::json!({ "task": task, "cpu": cpu, "backtrace": backtrace }));
            continue;
        }
        let at = match cpu {
            Some(c) => format!("running on cpu {c}"),
            None => "not running".to_string(),
        };
        if bt.all_tasks {
            outln!();
        }
        outln!("pid {} tgid {} comm {} ({at})", task.pid, task.tgid, task.comm);
        match backtrace {
            Some(b) => out!("{}", format::backtrace(b)),
            None => outln!("    (running: its registers need a stop; use `ktrace bt` without --live)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A task, the CPU it runs on, and its stack (none for a running task read live).
type TaskStack = (TaskInfo, Option<ktrace_kernel::CpuId>, Option<ktrace_kernel::Backtrace>);

/// Every frame's arguments, as GDB's `bt` shows them (frame 0 with
/// `frame0`); a failure leaves them out and says why in the log.
async fn fill_arguments(
    source: &mut Source,
    kernel: &Kernel,
    arguments: &mut FrameArguments,
    bt: &mut Backtrace,
    frame0: &FrameRegisters,
) {
    if let Err(e) = with_memory!(source, kernel, |mem| arguments.fill(kernel, &mut mem, bt, frame0).await) {
        tracing::debug!("arguments: {e}");
    }
}

/// ktrace's trampoline in the guest, if any (the unwinder steps through it).
async fn trampoline_in(source: &mut Source, kernel: &Kernel) -> Option<trampoline::FrameMap> {
    match source {
        Source::Stub(s, _) => trampoline::frame_map_in(kernel, &mut kernel.memory(s)).await,
        Source::Live(h) => trampoline::frame_map_in(kernel, &mut kernel.memory(h)).await,
        Source::Core(c) => trampoline::frame_map_in(kernel, &mut kernel.memory(c)).await,
    }
}

/// The stacks of task `pid`, or of every task.
async fn tasks_backtraces(source: &mut Source, kernel: &Kernel, pid: Option<i32>) -> Result<Vec<TaskStack>> {
    let tasks = match pid {
        Some(pid) => vec![with_memory!(&mut *source, kernel, |mem| kernel.find_task_by_pid(&mut mem, pid).await)
            .map_err(|e| UsageError(e.to_string()))?],
        None => with_memory!(&mut *source, kernel, |mem| kernel.tasks(&mut mem).await)?,
    };
    let cpus = with_memory!(&mut *source, kernel, |mem| kernel.cpu_states(&mut mem).await)?;
    let mut unwinder = Unwinder::new(kernel.vmlinux())?.with_max_frames(64);
    unwinder.know_trampoline(trampoline_in(source, kernel).await);
    let mut arguments = FrameArguments::new();
    let mut stacks = Vec::with_capacity(tasks.len());
    for task in tasks {
        let cpu = cpus.iter().find(|c| c.current.task == task.task).map(|c| c.cpu);
        let (mut bt, frame0) = match (cpu, &mut *source) {
            (Some(_), Source::Live(_)) => {
                stacks.push((task, cpu, None));
                continue;
            }
            (Some(cpu), Source::Stub(s, _)) => {
                let regs = Regs::read_from(s, cpu).await?;
                (unwinder.unwind(kernel, &mut kernel.memory(s), regs).await, FrameRegisters::read_from(s, cpu).await)
            }
            (Some(cpu), Source::Core(c)) => {
                let regs = Regs::read_from(c, cpu).await?;
                (unwinder.unwind(kernel, &mut kernel.memory(c), regs).await, FrameRegisters::read_from(c, cpu).await)
            }
            (None, _) => {
                let regs = with_memory!(&mut *source, kernel, |mem| kernel.saved_regs(&mut mem, task.task).await)?;
                let bt = with_memory!(&mut *source, kernel, |mem| Ok::<_, std::convert::Infallible>(
                    unwinder.unwind_saved(kernel, &mut mem, regs).await
                ))?;
                // A task switched out: only what the switch saved is known.
                let frame0 = match bt.frames.first() {
                    Some(f) => FrameRegisters::unwound(f.pc, f.sp, f.cfa),
                    None => FrameRegisters::default(),
                };
                (bt, frame0)
            }
        };
        fill_arguments(source, kernel, &mut arguments, &mut bt, &frame0).await;
        stacks.push((task, cpu, Some(bt)));
    }
    Ok(stacks)
}
