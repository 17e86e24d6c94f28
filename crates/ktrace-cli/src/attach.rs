//! `ktrace attach`: the main job.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ktrace_kernel::CpuId;
use ktrace_rsp::StubAddr;
use ktrace_tracer::{CancellationToken, Filter, Hit, HitSink, ResumeMode, StackCounts, TraceConfig, Tracer};

use crate::guard::{FileJournal, Guardian};

use crate::args::{explain, ModulesArg, TargetArgs};
use crate::inspect::warn_if_no_backtraces;
use crate::{format, UsageError};

/// `ktrace attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    modules: ModulesArg,
    /// Where to break: `symbol`, `symbol+0x10`, `0xADDR` (vmlinux address), `file.c:LINE`. Repeatable.
    #[arg(long = "break", short = 'b', required = true, value_name = "LOCATION")]
    breaks: Vec<String>,
    /// Use hardware breakpoints.
    #[arg(long)]
    hw: bool,
    /// Only hits in this thread (task pid).
    #[arg(long)]
    pid: Option<i32>,
    /// Only hits in this process (task tgid).
    #[arg(long)]
    tgid: Option<i32>,
    /// Only hits whose task comm matches (exact, or a glob with * ? [..]).
    #[arg(long)]
    comm: Option<String>,
    /// Only hits on these CPUs (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    cpu: Vec<u32>,
    /// Stop after N matched hits.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Stop after this long (`10s`, `500ms`, `2m`).
    #[arg(long, value_parser = crate::args::parse_duration)]
    duration: Option<Duration>,
    /// Wait for the --pid/--tgid/--comm task to appear instead of failing.
    #[arg(long)]
    wait: bool,
    /// Print no backtraces (faster).
    #[arg(long)]
    no_backtrace: bool,
    /// The most frames per backtrace.
    #[arg(long, default_value_t = 64)]
    max_frames: usize,
    /// Print nothing per hit (use with --stacks, --folded, --flamegraph).
    #[arg(long, short = 'q')]
    quiet: bool,
    /// At the end, print each distinct stack with its count, most frequent first.
    #[arg(long)]
    stacks: bool,
    /// Write collapsed stacks (flame graph input) to FILE.
    #[arg(long, value_name = "FILE")]
    folded: Option<PathBuf>,
    /// Write an SVG flame graph of the matched stacks to FILE.
    #[arg(long, value_name = "FILE")]
    flamegraph: Option<PathBuf>,
    /// Evaluate the filter inside the guest: patch each function's ftrace NOP
    /// to call a small filter written into kernel text padding. Each match is
    /// recorded in the guest (task, registers, a copy of its stack) in
    /// per-CPU rings in memory the kernel provably never uses, and read back
    /// while the guest runs: the guest does not stop. Falls back to stopping
    /// at each match, or to the stop loop, saying why, where that is not
    /// safe. Everything is restored at the end.
    #[arg(long)]
    in_guest: bool,
    /// With --in-guest: the most stack bytes each recorded match copies
    /// (from the function's entry toward the end of the task's stack); a
    /// backtrace that needs more ends with a reason.
    #[arg(long, value_name = "BYTES", default_value_t = 2048, requires = "in_guest")]
    stack_copy: u64,
    /// With --in-guest: when a CPU's ring is full, stop the guest until it is
    /// drained instead of dropping the match (drops are counted otherwise).
    #[arg(long, requires = "in_guest")]
    no_drop: bool,
    /// With --in-guest: stop the guest at each match (the filter still runs
    /// in the guest) instead of recording it.
    #[arg(long, requires = "in_guest")]
    stop_at_match: bool,
    /// Read guest memory through the stub's own translation (the stopped
    /// CPU's page tables, as GDB does) instead of the kernel's page tables
    /// over physical memory: fails where the CPU runs on user page tables
    /// (PTI). For comparisons.
    #[arg(long, hide = true)]
    stub_translation: bool,
    /// A C expression to print at each matching hit (repeatable): the
    /// stopped function's arguments and locals, globals, `current`,
    /// `this_cpu(var)`, `per_cpu(var, N)`, `$rdi`/`$cr3`, `.` `->` `[]` `*`
    /// `&`, casts to kernel types, arithmetic, comparisons, `container_of`.
    #[arg(long, value_name = "EXPR")]
    print: Vec<String>,
    /// Only hits where this C expression (same language as --print) is
    /// non-zero match, ANDed with --pid/--tgid/--comm/--cpu; evaluated in
    /// the stop loop.
    #[arg(long = "if", value_name = "EXPR")]
    condition: Option<String>,
    /// Leave the arguments out of the backtraces.
    #[arg(long)]
    no_args: bool,
    /// Print the stopped CPU's registers with each hit: general, segment
    /// and control (CR3 included), like GDB's `info registers`.
    #[arg(long)]
    regs: bool,
    /// Talk to the stub directly, without the guardian that cleans up after
    /// a killed ktrace (for tests of what a killed ktrace leaves).
    #[arg(long, hide = true)]
    no_guardian: bool,
    /// How to get past a breakpoint (auto probes the fastest safe way).
    #[arg(long, value_enum, default_value_t = ResumeArg::Auto)]
    resume: ResumeArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ResumeArg {
    Auto,
    Step,
    Reinsert,
}

/// Prints or streams hits as they come, and counts stacks.
struct Output {
    json: bool,
    quiet: bool,
    collect_stacks: bool,
    stacks: StackCounts,
    out: BufWriter<std::io::Stdout>,
    status_line: bool,
    failed: Option<std::io::Error>,
}

impl HitSink for Output {
    fn hit(&mut self, hit: Hit) -> ControlFlow<()> {
        if self.collect_stacks {
            self.stacks.add(&hit);
        }
        let res = if self.json {
            serde_json::to_string(&hit).map_err(std::io::Error::other).and_then(|line| writeln!(self.out, "{line}"))
        } else if !self.quiet {
            write!(self.out, "{}", format::hit_text(&hit))
        } else {
            Ok(())
        };
        // JSON lines are flushed per hit so a consumer (or a crash) loses nothing.
        let res = res.and_then(|_| if self.json || self.status_line { self.out.flush() } else { Ok(()) });
        if let Err(e) = res {
            // stdout closed (e.g. `| head`): stop tracing cleanly.
            self.failed = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn note(&mut self, text: &str) {
        if self.status_line {
            eprint!("\r\x1b[2K");
        }
        eprintln!("ktrace: {text}");
    }

    fn progress(&mut self, seen: u64, matched: u64, elapsed: Duration) {
        if self.status_line {
            let _ = self.out.flush();
            let rate = seen as f64 / elapsed.as_secs_f64().max(1e-9);
            eprint!("\r\x1b[2Khits {seen}  matched {matched}  {rate:.0}/s  {:.1}s", elapsed.as_secs_f64());
        }
    }
}

pub async fn run(args: AttachArgs) -> Result<ExitCode> {
    let vm = Arc::new(crate::locate::vmlinux(&args.target, None).await?);
    let stub = args.target.stub()?;
    let filter = Filter {
        pid: args.pid,
        tgid: args.tgid,
        comm: args.comm.clone(),
        cpus: args.cpu.iter().map(|&c| CpuId(c)).collect(),
    };
    let want_stacks = args.stacks || args.folded.is_some() || args.flamegraph.is_some();
    let mut cfg = TraceConfig::new()
        .hardware(args.hw)
        .filter(filter)
        .backtrace(!args.no_backtrace)
        .max_frames(args.max_frames)
        .resume(match args.resume {
            ResumeArg::Auto => ResumeMode::Auto,
            ResumeArg::Step => ResumeMode::Step,
            ResumeArg::Reinsert => ResumeMode::RemoveStepReinsert,
        })
        .wait_for_task(args.wait)
        .client(args.target.client())
        .release(args.target.release())
        .in_guest(args.in_guest)
        .stack_copy(args.stack_copy)
        .no_drop(args.no_drop)
        .stop_at_match(args.stop_at_match)
        .stub_translation(args.stub_translation)
        .module_debug_dir(args.modules.dir())
        .arguments(!args.no_args)
        .registers(args.regs);
    for b in &args.breaks {
        cfg = cfg.breakpoint(b);
    }
    for p in &args.print {
        cfg = cfg.print(p);
    }
    if let Some(c) = &args.condition {
        cfg = cfg.condition(c);
    }
    if let Some(n) = args.count {
        cfg = cfg.count(n);
    }
    if let Some(d) = args.duration {
        cfg = cfg.duration(d);
    }
    if want_stacks && args.no_backtrace {
        return Err(UsageError("--stacks/--folded/--flamegraph need backtraces; drop --no-backtrace".into()).into());
    }
    // Signals first: Ctrl-C or SIGTERM at any point after this ends cleanly.
    let cancel = CancellationToken::new();
    spawn_signal_handlers(cancel.clone())?;
    if !args.no_backtrace {
        warn_if_no_backtraces(&vm);
    }
    // Bad input is refused before the guardian (or anything) reaches the stub.
    let plan = Tracer::plan(&vm, &cfg).map_err(|e| explain(args.target.addr().unwrap_or(""), e))?;
    // The guardian holds the stub connection and cleans up if ktrace is killed.
    let guardian = match args.no_guardian {
        true => None,
        false => Guardian::start(args.target.addr()?, args.target.client().timeout)?,
    };
    let (guardian, via, cfg) = if let Some(g) = guardian {
        let journal = FileJournal::create(&g.journal, args.target.leave_stopped)?;
        let via = StubAddr::Unix(g.socket.clone());
        let cfg = cfg.journal(Arc::new(journal)).reconnect_to(stub.clone());
        (Some(g), via, cfg)
    } else {
        (None, stub.clone(), cfg)
    };
    let tracer = match Tracer::attach_planned(&via, vm, cfg, plan).await {
        Ok(t) => t,
        Err(e) => {
            if let Some(g) = guardian {
                g.finish();
            }
            return Err(explain(args.target.addr().unwrap_or(""), e));
        }
    };
    let kernel = tracer.kernel();
    let places: Vec<String> = tracer.locations().iter().map(|l| l.spec.clone()).collect();
    eprintln!(
        "ktrace: attached to {} ({}, {} CPUs, KASLR slide 0x{:x}); tracing {}{}",
        args.target.addr().unwrap_or(""),
        kernel.release(),
        kernel.cpu_count(),
        kernel.slide(),
        places.join(", "),
        if std::io::stderr().is_terminal() { "; Ctrl-C to stop" } else { "" }
    );
    if let (true, Some(pid)) = (args.wait, args.pid) {
        eprintln!("ktrace: waiting for pid {pid} to appear (the guest runs meanwhile)");
    }
    let mut output = Output {
        json: args.target.json,
        quiet: args.quiet,
        collect_stacks: want_stacks,
        stacks: StackCounts::default(),
        out: BufWriter::new(std::io::stdout()),
        status_line: std::io::stderr().is_terminal() && !args.quiet,
        failed: None,
    };
    let result = tracer.run(&mut output, cancel).await;
    if let Some(g) = guardian {
        g.finish();
    }
    let _ = output.out.flush();
    if output.status_line {
        eprint!("\r\x1b[2K");
    }
    let (summary, error) = match result {
        Ok(s) => (s, None),
        Err(f) => (f.summary, Some(f.error)),
    };
    let stdout_closed = output.failed.as_ref().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
    if stdout_closed && summary.guest_released && error.is_none() {
        // `| head` has what it wanted: end as it expects, quietly.
        return Ok(ExitCode::SUCCESS);
    }
    if args.stacks {
        print_stacks(&mut output)?;
    }
    if let Some(path) = &args.folded {
        std::fs::write(path, output.stacks.folded()).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.flamegraph {
        write_flamegraph(&output.stacks, path, &places.join(", "))?;
    }
    eprint!("{}", format::summary_text(&summary, args.target.leave_stopped, args.target.addr().unwrap_or("")));
    if let Some(error) = error {
        return Err(anyhow::Error::from(error).context("tracing stopped"));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stacks(output: &mut Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (stack, count) in output.stacks.sorted() {
        writeln!(out, "@[")?;
        for f in stack {
            writeln!(out, "    {f}")?;
        }
        writeln!(out, "]: {count}\n")?;
    }
    Ok(())
}

fn write_flamegraph(stacks: &StackCounts, path: &PathBuf, title: &str) -> Result<()> {
    let folded = stacks.folded();
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!("ktrace: {title}");
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), BufWriter::new(file))
        .with_context(|| format!("writing the flame graph {}", path.display()))?;
    Ok(())
}

/// Ctrl-C and SIGTERM end the trace cleanly: breakpoints removed, guest running.
fn spawn_signal_handlers(cancel: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        cancel.cancel();
    });
    Ok(())
}
