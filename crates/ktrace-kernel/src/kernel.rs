//! [`Kernel`]: a vmlinux matched to a running guest.

use std::sync::Arc;

use ktrace_symbols::{KernelAddr, Vmlinux};
use serde::Serialize;

use crate::layout::KernelLayout;
use crate::task::{self, TaskInfo, TaskRef};
use crate::{kaslr, CpuId, KernelError, Target};

/// A vmlinux matched to a running guest: the slide, the layout and each CPU's
/// per-CPU base. Cheap to query; holds no connection.
#[derive(Clone)]
pub struct Kernel {
    vmlinux: Arc<Vmlinux>,
    layout: KernelLayout,
    slide: u64,
    release: String,
    percpu_bases: Vec<u64>,
    rq_idle: Option<(u64, u64)>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("vmlinux", &self.vmlinux.path())
            .field("release", &self.release)
            .field("slide", &format_args!("0x{:x}", self.slide))
            .field("cpus", &self.percpu_bases.len())
            .finish()
    }
}

/// What one CPU is running.
#[derive(Clone, Debug, Serialize)]
pub struct CpuState {
    /// The CPU.
    pub cpu: CpuId,
    /// Its per-CPU base (`__per_cpu_offset[cpu]`).
    pub percpu_base: u64,
    /// Its current task.
    pub current: TaskInfo,
}

/// What `ktrace info` shows.
#[derive(Clone, Debug, Serialize)]
pub struct KernelInfo {
    /// `uname -r` of the guest.
    pub release: String,
    /// The full `linux_banner`.
    pub banner: String,
    /// The KASLR slide (0 with `nokaslr`).
    pub slide: u64,
    /// The CPUs and what each runs.
    pub cpus: Vec<CpuState>,
}

impl Kernel {
    /// Matches `vmlinux` to the guest behind `target` and reads what later
    /// queries need: the KASLR slide and every CPU's per-CPU base.
    pub async fn attach<T: Target>(target: &mut T, vmlinux: Arc<Vmlinux>) -> Result<Kernel, KernelError> {
        let layout = KernelLayout::from_vmlinux(&vmlinux)?;
        let banner = vmlinux.banner()?;
        let banner_addr = vmlinux.symbol("linux_banner")?.addr;
        let slide = kaslr::find_slide(target, banner_addr, &banner).await?;
        let release = vmlinux.release()?;
        let cpus = target.cpus().await?;
        let table = layout.per_cpu_offset.0.wrapping_add(slide);
        let raw = target.read_memory(table, 8 * cpus.len()).await?;
        let percpu_bases: Vec<u64> =
            raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        if percpu_bases.len() != cpus.len() {
            return Err(KernelError::Corrupt("short read of __per_cpu_offset".into()));
        }
        let rq_idle = match (vmlinux.lookup_symbol("runqueues"), vmlinux.member("rq.idle")) {
            (Some(sym), Ok(m)) if sym.is_percpu() => Some((sym.addr.0, m.offset)),
            _ => None,
        };
        Ok(Kernel { vmlinux, layout, slide, release, percpu_bases, rq_idle })
    }

    /// The vmlinux.
    pub fn vmlinux(&self) -> &Arc<Vmlinux> {
        &self.vmlinux
    }

    /// The offsets in use.
    pub fn layout(&self) -> &KernelLayout {
        &self.layout
    }

    /// The KASLR slide: runtime address minus link address.
    pub fn slide(&self) -> u64 {
        self.slide
    }

    /// The kernel release (`uname -r`).
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Number of CPUs.
    pub fn cpu_count(&self) -> usize {
        self.percpu_bases.len()
    }

    /// The runtime address of a link-time (vmlinux) address.
    pub fn runtime(&self, link: KernelAddr) -> u64 {
        link.0.wrapping_add(self.slide)
    }

    /// The link-time (vmlinux) address of a runtime address.
    pub fn link(&self, runtime: u64) -> KernelAddr {
        KernelAddr(runtime.wrapping_sub(self.slide))
    }

    /// A CPU's per-CPU base, as read from `__per_cpu_offset` at attach.
    pub fn percpu_base(&self, cpu: CpuId) -> Option<u64> {
        self.percpu_bases.get(cpu.0 as usize).copied()
    }

    /// The runtime address of a per-CPU variable's instance on `cpu`.
    pub fn percpu_addr(&self, cpu: CpuId, percpu_offset: u64) -> Option<u64> {
        Some(self.percpu_base(cpu)?.wrapping_add(percpu_offset))
    }

    /// Where `cpu`'s current-task pointer lives: one 8-byte read gives the current task.
    pub fn current_task_slot(&self, cpu: CpuId) -> Option<u64> {
        self.percpu_addr(cpu, self.layout.current_task.percpu_offset())
    }

    /// The per-CPU base as the CPU's registers give it: `gs_base` in kernel
    /// mode, `k_gs_base` in user mode or before `swapgs` (e.g. at
    /// `entry_SYSCALL_64`). An independent check of [`Kernel::percpu_base`].
    pub async fn percpu_base_from_registers<T: Target>(&self, target: &mut T, cpu: CpuId) -> Result<u64, KernelError> {
        let gs = target.read_register(cpu, "gs_base").await?;
        if self.percpu_bases.contains(&gs) {
            return Ok(gs);
        }
        let kgs = target.read_register(cpu, "k_gs_base").await?;
        if self.percpu_bases.contains(&kgs) || gs < (1u64 << 63) {
            return Ok(kgs);
        }
        Ok(gs)
    }

    /// The task running on `cpu`.
    pub async fn current_task<T: Target>(&self, target: &mut T, cpu: CpuId) -> Result<TaskRef, KernelError> {
        let slot = self
            .current_task_slot(cpu)
            .ok_or_else(|| KernelError::Corrupt(format!("no CPU {cpu}")))?;
        Ok(TaskRef(target.read_u64(slot).await?))
    }

    /// Reads one task's fields.
    pub async fn task_info<T: Target>(&self, target: &mut T, task: TaskRef) -> Result<TaskInfo, KernelError> {
        let mut v = task::read_tasks(target, &self.layout, &[task]).await?;
        Ok(v.remove(0))
    }

    /// Reads several tasks' fields in one batch.
    pub async fn task_infos<T: Target>(&self, target: &mut T, tasks: &[TaskRef]) -> Result<Vec<TaskInfo>, KernelError> {
        task::read_tasks(target, &self.layout, tasks).await
    }

    /// Reads only a task's pid (one 4-byte read).
    pub async fn task_pid<T: Target>(&self, target: &mut T, task: TaskRef) -> Result<i32, KernelError> {
        task::read_pid(target, &self.layout, task).await
    }

    /// Every task: the idle task of each CPU, then the task list with threads.
    pub async fn tasks<T: Target>(&self, target: &mut T) -> Result<Vec<TaskInfo>, KernelError> {
        let init = TaskRef(self.runtime(self.layout.init_task));
        let mut refs = task::all_tasks(target, &self.layout, init).await?;
        if let Some((runqueues, idle)) = self.rq_idle {
            for cpu in 1..self.cpu_count() as u32 {
                if let Some(slot) = self.percpu_addr(CpuId(cpu), runqueues + idle) {
                    let t = TaskRef(target.read_u64(slot).await?);
                    if t.0 != 0 && !refs.contains(&t) {
                        refs.insert(cpu as usize, t);
                    }
                }
            }
        }
        self.task_infos(target, &refs).await
    }

    /// The task with this pid.
    pub async fn find_task_by_pid<T: Target>(&self, target: &mut T, pid: i32) -> Result<TaskInfo, KernelError> {
        self.tasks(target)
            .await?
            .into_iter()
            .find(|t| t.pid == pid)
            .ok_or_else(|| KernelError::NoSuchTask(format!("with pid {pid}")))
    }

    /// The tasks whose comm is `comm`.
    pub async fn find_tasks_by_comm<T: Target>(&self, target: &mut T, comm: &str) -> Result<Vec<TaskInfo>, KernelError> {
        let found: Vec<TaskInfo> = self.tasks(target).await?.into_iter().filter(|t| t.comm == comm).collect();
        if found.is_empty() {
            return Err(KernelError::NoSuchTask(format!("named {comm:?}")));
        }
        Ok(found)
    }

    /// The current task of every CPU.
    pub async fn cpu_states<T: Target>(&self, target: &mut T) -> Result<Vec<CpuState>, KernelError> {
        let mut out = Vec::new();
        for cpu in 0..self.cpu_count() as u32 {
            let cpu = CpuId(cpu);
            let task = self.current_task(target, cpu).await?;
            out.push(CpuState {
                cpu,
                percpu_base: self.percpu_base(cpu).unwrap_or(0),
                current: self.task_info(target, task).await?,
            });
        }
        Ok(out)
    }

    /// Release, slide and what each CPU runs.
    pub async fn info<T: Target>(&self, target: &mut T) -> Result<KernelInfo, KernelError> {
        Ok(KernelInfo {
            release: self.release.clone(),
            banner: self.vmlinux.banner()?.trim_end().to_string(),
            slide: self.slide,
            cpus: self.cpu_states(target).await?,
        })
    }
}
