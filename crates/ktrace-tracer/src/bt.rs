//! `ktrace bt`: stop once, backtrace every CPU, resume.

use std::sync::Arc;

use ktrace_kernel::{cpu_of_thread, CpuId, Guest, GuestConfig, Kernel, ModuleDebugDir, TaskInfo};
use ktrace_rsp::{ClientConfig, Session, StubAddr, ThreadOp};
use ktrace_symbols::Vmlinux;
use serde::Serialize;

use crate::regs::{GLayout, RegisterSet};
use crate::TraceError;
use ktrace_kernel::unwind::{Backtrace, Unwinder};
use ktrace_kernel::values::FrameArguments;
use ktrace_kernel::Translation;

/// One CPU's state at the stop.
#[derive(Clone, Debug, Serialize)]
pub struct CpuBacktrace {
    /// The CPU.
    pub cpu: CpuId,
    /// Its current task.
    pub task: TaskInfo,
    /// Where it was.
    pub backtrace: Backtrace,
}

/// How `ktrace bt` connects and what it shows.
#[derive(Clone, Debug, Default)]
pub struct BtConfig {
    /// The RSP client settings.
    pub client: ClientConfig,
    /// The most frames per backtrace.
    pub max_frames: usize,
    /// Resume the guest at the end, or leave it paused.
    pub release: crate::GuestRelease,
    /// Where modules' debug files are (source lines in module frames).
    pub module_debug: ModuleDebugDir,
}

/// Stops the guest once, unwinds every CPU, and lets go of it as
/// `cfg.release` says (detach: the guest runs on).
pub async fn backtrace_all_cpus(
    addr: &StubAddr,
    vmlinux: Arc<Vmlinux>,
    cfg: BtConfig,
) -> Result<(Kernel, Vec<CpuBacktrace>), TraceError> {
    let mut unwinder = Unwinder::new(&vmlinux)?.with_max_frames(cfg.max_frames);
    let guest_cfg = GuestConfig {
        client: cfg.client,
        release: cfg.release,
        module_debug: cfg.module_debug,
        ..GuestConfig::default()
    };
    Guest::scope(addr, vmlinux, &guest_cfg, async |guest: &mut Guest| {
        let cpus = backtrace_cpus(&mut guest.session, &guest.kernel, &mut unwinder).await?;
        Ok::<_, TraceError>((guest.kernel.clone(), cpus))
    })
    .await
}

/// Unwinds every CPU of a stopped session (for embedding: the session stays
/// stopped and attached).
pub async fn backtrace_cpus(
    session: &mut Session,
    kernel: &Kernel,
    unwinder: &mut Unwinder,
) -> Result<Vec<CpuBacktrace>, TraceError> {
    let glayout = GLayout::new(session.register_map())?;
    let map = session.register_map().cloned().unwrap_or_default();
    let cr3 = glayout.cr3_regnum;
    unwinder.know_trampoline(ktrace_kernel::trampoline::frame_map_in(kernel, &mut kernel.memory(session)).await);
    let threads = session.threads().await?;
    let mut arguments = FrameArguments::new();
    let mut out = Vec::new();
    for tid in threads {
        let Some(cpu) = cpu_of_thread(&tid) else { continue };
        session.set_thread(ThreadOp::General, tid).await?;
        let g = session.read_registers().await?;
        let regs = glayout.decode(&g);
        let task = kernel.current_task(&mut kernel.memory(session), cpu).await?;
        let task = kernel.task_info(&mut kernel.memory(session), task).await?;
        let mut backtrace = unwinder.unwind(kernel, &mut kernel.memory(session), regs).await;
        // The arguments of every frame, as GDB's `bt` shows them.
        let frame0 = RegisterSet::new(&map, g.len()).frame(&g);
        let user = match (cr3, kernel.translation()) {
            (Some(n), Some(k)) => {
                let root = ktrace_kernel::le_u64(&session.read_register(n).await?);
                Some(Translation::of_cr3(root, k.space()))
            }
            _ => None,
        };
        let mut memory = kernel.memory(session).with_user_space(user.as_ref());
        if let Err(e) = arguments.fill(kernel, &mut memory, &mut backtrace, &frame0).await {
            tracing::debug!("arguments: {e}");
        }
        out.push(CpuBacktrace { cpu, task, backtrace });
    }
    Ok(out)
}
