//! `ktrace bt`: stop once, backtrace every CPU, resume.

use std::sync::Arc;

use ktrace_kernel::{cpu_of_thread, CpuId, Kernel, TaskInfo};
use ktrace_rsp::{ClientConfig, Session, StubAddr, ThreadOp};
use ktrace_symbols::Vmlinux;
use serde::Serialize;

use crate::regs::GLayout;
use crate::unwind::{Backtrace, Unwinder};
use crate::TraceError;

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

/// Stops the guest once, unwinds every CPU, and lets go of it as `release`
/// says (detach: the guest runs on).
pub async fn backtrace_all_cpus(
    addr: &StubAddr,
    vmlinux: Arc<Vmlinux>,
    client: ClientConfig,
    max_frames: usize,
    release: crate::GuestRelease,
) -> Result<(Kernel, Vec<CpuBacktrace>), TraceError> {
    let mut unwinder = Unwinder::new(&vmlinux)?.with_max_frames(max_frames);
    let (mut session, _) = Session::connect(addr, client).await?;
    let result = collect(&mut session, vmlinux, &mut unwinder).await;
    let detached = release.release(session).await;
    let out = result?;
    detached?;
    Ok(out)
}

async fn collect(
    session: &mut Session,
    vmlinux: Arc<Vmlinux>,
    unwinder: &mut Unwinder,
) -> Result<(Kernel, Vec<CpuBacktrace>), TraceError> {
    let kernel = Kernel::attach(session, vmlinux).await?;
    let cpus = backtrace_cpus(session, &kernel, unwinder).await?;
    Ok((kernel, cpus))
}

/// Unwinds every CPU of a stopped session (for embedding: the session stays
/// stopped and attached).
pub async fn backtrace_cpus(
    session: &mut Session,
    kernel: &Kernel,
    unwinder: &mut Unwinder,
) -> Result<Vec<CpuBacktrace>, TraceError> {
    let glayout = GLayout::new(session.register_map())?;
    let threads = session.threads().await?;
    let mut out = Vec::new();
    for tid in threads {
        let Some(cpu) = cpu_of_thread(&tid) else { continue };
        session.set_thread(ThreadOp::General, tid).await?;
        let regs = glayout.decode(&session.read_registers().await?);
        let task = kernel.current_task(session, cpu).await?;
        let task = kernel.task_info(session, task).await?;
        let backtrace = unwinder.unwind(kernel, session, regs).await;
        out.push(CpuBacktrace { cpu, task, backtrace });
    }
    Ok(out)
}
