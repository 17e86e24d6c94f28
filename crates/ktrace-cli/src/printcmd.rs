//! `ktrace print`: C expressions evaluated once, in a stopped guest (as
//! the CPU stopped: its registers, current task and frame), a running one
//! (`--live`: no registers) or a dump (`--core`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ktrace_kernel::values::{self, EvalContext, FrameArguments, FrameRegisters, Printed};
use ktrace_kernel::{CpuId, Kernel, Target, Translation};

use crate::args::TargetArgs;
use crate::source::{self, Source, SourceArgs};
use crate::UsageError;

/// `ktrace print`.
#[derive(Args, Debug, Clone)]
pub struct PrintArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// The CPU whose registers, current task and frame the expressions see.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub cpu: u32,
    /// C expressions, as for `attach --print` (`current->comm`,
    /// `this_cpu(runqueues).nr_running`, `$cr3`, `jiffies`).
    #[arg(value_name = "EXPR")]
    pub exprs: Vec<String>,
}

pub async fn print(mut args: PrintArgs) -> Result<ExitCode> {
    // Without a stub (`--core FILE`) the first word is an expression.
    if args.source.core.is_some() {
        if let Some(first) = args.target.addr.take() {
            args.exprs.insert(0, first);
        }
    }
    if args.exprs.is_empty() {
        return Err(UsageError("give at least one expression, e.g. `ktrace print :1234 'current->comm'`".into()).into());
    }
    let (mut source, kernel) = source::open(&args.target, &args.source).await?;
    if args.cpu as usize >= kernel.cpu_count() {
        let n = kernel.cpu_count();
        source::finish(source, Ok(())).await?;
        return Err(UsageError(format!("--cpu {}: the guest has CPUs 0-{}", args.cpu, n - 1)).into());
    }
    let result = match &mut source {
        Source::Stub(s, _) => evaluate_all(&kernel, s, &args, true).await,
        Source::Core(c) => evaluate_all(&kernel, c, &args, true).await,
        Source::Live(h) => evaluate_all(&kernel, h, &args, false).await,
    };
    let printed = source::finish(source, result).await?;
    let mut failed = false;
    for p in printed {
        match p {
            Ok(p) if args.target.json => outln!("{}", serde_json::to_string(&p)?),
            Ok(p) => outln!("{} = {}", p.expr, p.text),
            Err(e) => {
                eprintln!("ktrace: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Every expression; a parse error is the user's (exit 2), an evaluation
/// error is reported with the others' values.
async fn evaluate_all<T: ktrace_kernel::PhysicalMemory + Target>(
    kernel: &Kernel,
    backend: &mut T,
    args: &PrintArgs,
    has_registers: bool,
) -> Result<Vec<Result<Printed, values::EvalError>>> {
    let vm = kernel.vmlinux();
    let is_type = |n: &str| vm.type_named(n).is_ok();
    let exprs: Vec<ktrace_expr::Expr> = args
        .exprs
        .iter()
        .map(|e| ktrace_expr::parse(e, &is_type).map_err(|e| UsageError(e.to_string())))
        .collect::<Result<_, _>>()?;
    let cpu = CpuId(args.cpu);
    let mut registers = Vec::new();
    if has_registers {
        for name in ktrace_kernel::x86::registers::INFO_REGISTERS {
            if let Ok(v) = backend.read_register(cpu, name).await {
                registers.push((name.to_string(), v));
            }
        }
    }
    let mut frame = FrameRegisters::default();
    for (name, v) in &registers {
        frame.set(name, *v);
    }
    let rip = registers.iter().find(|(n, _)| n == "rip").map(|r| r.1);
    frame.cfa = rip.and_then(|pc| values::stopped_frame_cfa(kernel, pc, &frame));
    let scopes = match rip {
        Some(pc) if kernel.space().is_kernel(pc) => FrameArguments::new().scopes_at(kernel, pc, false)?,
        _ => Default::default(),
    };
    let user = match (kernel.translation(), registers.iter().find(|(n, _)| n == "cr3")) {
        (Some(k), Some((_, cr3))) => Some(Translation::of_cr3(*cr3, k.space())),
        _ => None,
    };
    let ctx = EvalContext { kernel, cpu, frame: rip.map(|_| &frame), registers: &registers, scopes: &scopes };
    let mut out = Vec::with_capacity(exprs.len());
    for (source, e) in args.exprs.iter().zip(&exprs) {
        let mut memory = kernel.memory(backend).with_user_space(user.as_ref());
        out.push(values::print(&ctx, &mut memory, source, e).await);
    }
    Ok(out)
}
