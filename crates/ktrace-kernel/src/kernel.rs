//! [`Kernel`]: a vmlinux matched to a running guest.

use std::sync::Arc;

use ktrace_symbols::{KernelAddr, Vmlinux};
use serde::Serialize;

use crate::layout::{KernelLayout, PercpuOffset};
use crate::memory::{GuestMemory, MemoryError, PhysicalMemory, Translation, WriteJournal};
use crate::module_debug::{ModuleDebugDir, ModuleDebugFiles};
use crate::task::{self, TaskInfo, TaskRef};
use crate::x86::paging::PagingLevels;
use crate::x86::AddressSpace;
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
    /// Per-CPU offset of the current-task pointer.
    current_task: PercpuOffset,
    /// Per-CPU offset of `runqueues.idle`, where the kernel has them.
    rq_idle: Option<PercpuOffset>,
    /// `struct module`'s layout, found on first use.
    module_layout: Arc<std::sync::OnceLock<Result<crate::ModuleLayout, String>>>,
    /// Modules' debug files.
    module_debug: Arc<ModuleDebugFiles>,
    /// The module list as last read (shared by clones: the same guest).
    module_cache: Arc<std::sync::Mutex<ModuleCache>>,
    /// The address-space layout the guest reports.
    space: AddressSpace,
    /// ktrace's own translation through the kernel's page tables, when the
    /// guest is read through physical memory.
    translation: Option<Arc<Translation>>,
    /// Told of every write first.
    journal: Option<Arc<dyn WriteJournal>>,
}

/// The loaded modules as last read, and when: the list is read again at
/// most once per generation (each resume of the guest starts one), when a
/// pc falls in the module area but in no known module.
#[derive(Debug, Default)]
struct ModuleCache {
    list: Option<Arc<crate::Modules>>,
    /// Bumped by [`Kernel::resumed`].
    generation: u64,
    /// The generation the list was last read (or given) in.
    read_in: Option<u64>,
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
    #[serde(serialize_with = "ktrace_symbols::hex::serialize")]
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
    #[serde(serialize_with = "ktrace_symbols::hex::serialize")]
    pub slide: u64,
    /// The CPUs and what each runs.
    pub cpus: Vec<CpuState>,
}

impl Kernel {
    /// Matches `vmlinux` to the guest behind `target` and reads what later
    /// queries need: the KASLR slide and every CPU's per-CPU base.
    pub async fn attach<T: Target>(target: &mut T, vmlinux: Arc<Vmlinux>) -> Result<Kernel, KernelError<T::Error>> {
        let layout = match KernelLayout::from_vmlinux(&vmlinux) {
            Ok(layout) => layout,
            Err(e) => {
                // Some other kernel (or not one at all): say so with both banners
                // rather than name the first missing symbol.
                let banner = vmlinux.banner()?;
                let banner_addr = vmlinux.symbol("linux_banner")?.addr;
                kaslr::find_slide(target, banner_addr, &banner).await?;
                return Err(e.into());
            }
        };
        Kernel::attach_with_layout(target, vmlinux, layout).await
    }

    /// [`Kernel::attach`] with a layout found elsewhere (tests: fixtures lack
    /// some of what [`KernelLayout::from_vmlinux`] needs).
    pub(crate) async fn attach_with_layout<T: Target>(
        target: &mut T,
        vmlinux: Arc<Vmlinux>,
        layout: KernelLayout,
    ) -> Result<Kernel, KernelError<T::Error>> {
        let banner = vmlinux.banner()?;
        let banner_addr = vmlinux.symbol("linux_banner")?.addr;
        let slide = kaslr::find_slide(target, banner_addr, &banner).await?;
        // Through the stub's own translation: the paging mode from CR4 where
        // the registers say it, the image mapping from the load segments.
        let levels = match target.cpus().await.ok().and_then(|c| c.first().copied()) {
            Some(cpu) => target.read_register(cpu, "cr4").await.map_or(PagingLevels::Four, PagingLevels::from_cr4),
            None => PagingLevels::Four,
        };
        let image = crate::x86::space::image_mapping(&vmlinux, None);
        Kernel::with_slide(target, vmlinux, layout, slide, AddressSpace::minimal(levels, image), None).await
    }

    /// Matches `vmlinux` to the guest behind a physical-memory backend and
    /// reads it from then on through ktrace's own walk of the kernel's page
    /// tables (read what a kernel-mode CPU would, whatever the CPUs run).
    ///
    /// The image is found in physical memory by its banner, the slide from
    /// `phys_base`, the page tables at `init_top_pgt`; the paging mode from
    /// CR4 (where the backend has registers) or the kernel's
    /// `__pgtable_l5_enabled`; the layout from the kernel's
    /// `page_offset_base`, `vmalloc_base`, `vmemmap_base` and vmcoreinfo.
    /// Every later read goes through [`Kernel::memory`].
    pub async fn attach_physical<T: PhysicalMemory>(
        target: &mut T,
        vmlinux: Arc<Vmlinux>,
    ) -> Result<Kernel, KernelError<MemoryError<T::Error>>> {
        let layout = KernelLayout::from_vmlinux(&vmlinux)?;
        let t = |e: KernelError<T::Error>| e.map_target(MemoryError::Target);
        let image = kaslr::find_image_physical(target, &vmlinux).await.map_err(t)?;
        let text = vmlinux.symbol("_text")?.addr;
        let text_lma = vmlinux.load_address(text).unwrap_or_default();
        let phys_of = |name: &str| -> Result<u64, KernelError<MemoryError<T::Error>>> {
            let addr = vmlinux.symbol(name)?.addr;
            let lma = vmlinux
                .load_address(addr)
                .ok_or_else(|| KernelError::Corrupt(format!("{name} is in no load segment")))?;
            Ok(image.text_phys + (lma - text_lma))
        };
        let root = phys_of("init_top_pgt")?;
        let banner_virt = vmlinux.symbol("linux_banner")?.addr.0.wrapping_add(image.slide);
        let banner_phys = phys_of("linux_banner")?;
        let cpu0 = target.cpus().await.ok().and_then(|c| c.first().copied());
        let from_cr4 = match cpu0 {
            Some(cpu) => target.read_register(cpu, "cr4").await.ok().map(PagingLevels::from_cr4),
            None => None,
        };
        let from_kernel = match vmlinux.lookup_symbol("__pgtable_l5_enabled") {
            Some(_) => {
                let at = phys_of("__pgtable_l5_enabled")?;
                let raw = target.read_physical(at, 4).await.map_err(|e| KernelError::Target(MemoryError::Target(e)))?;
                let on = u32::from_le_bytes(crate::target::le_array(&raw)?) != 0;
                Some(if on { PagingLevels::Five } else { PagingLevels::Four })
            }
            None => None,
        };
        let tries: Vec<PagingLevels> = match from_cr4.or(from_kernel) {
            Some(l) => vec![l],
            None => vec![PagingLevels::Four, PagingLevels::Five],
        };
        let mut found = None;
        for levels in tries {
            let probe = Translation::new(root, AddressSpace::minimal(levels, (image.start_kernel_map, u64::MAX)));
            if let Ok(m) = probe.translate(target, banner_virt).await {
                if m.phys_of(banner_virt) == banner_phys {
                    found = Some(levels);
                    break;
                }
            }
        }
        let levels = found.ok_or_else(|| {
            KernelError::Corrupt(format!(
                "the kernel's page tables (init_top_pgt at physical 0x{root:x}) do not map linux_banner at 0x{banner_virt:x} to where the image is (physical 0x{banner_phys:x})"
            ))
        })?;
        let base = |name: &str| -> Option<u64> { vmlinux.lookup_symbol(name).and_then(|_| phys_of(name).ok()) };
        let mut bases = [None; 3];
        for (slot, name) in bases.iter_mut().zip(["page_offset_base", "vmalloc_base", "vmemmap_base"]) {
            if let Some(at) = base(name) {
                let raw = target.read_physical(at, 8).await.map_err(|e| KernelError::Target(MemoryError::Target(e)))?;
                *slot = Some(u64::from_le_bytes(crate::target::le_array(&raw)?));
            }
        }
        let probe = Translation::new(root, AddressSpace::minimal(levels, (image.start_kernel_map, u64::MAX)));
        let image_size = {
            let mut mem = GuestMemory::new(target, Some(&probe));
            crate::vmcoreinfo::read(&mut mem, &vmlinux, image.slide).await.and_then(|v| v.number("KERNEL_IMAGE_SIZE"))
        };
        let mapping = crate::x86::space::image_mapping(&vmlinux, image_size.map(|size| (image.start_kernel_map, size)));
        let space = AddressSpace {
            levels,
            page_offset_base: bases[0],
            vmalloc_base: bases[1],
            vmemmap_base: bases[2],
            image: mapping,
            modules: (mapping.1, u64::MAX),
        };
        let translation = Arc::new(Translation::new(root, space.clone()));
        let mut mem = GuestMemory::new(target, Some(&translation));
        let kernel = Kernel::with_slide(&mut mem, vmlinux, layout, image.slide, space, None).await?;
        Ok(Kernel { translation: Some(translation), ..kernel })
    }

    /// Checks that `vmlinux` is the kernel the guest behind `target` runs,
    /// from physical memory alone and cheaply (no DWARF): its banner at a
    /// load address, and its GNU build id where the file has one. Returns
    /// the build id (hex) when there is one.
    pub async fn identify<T: PhysicalMemory>(
        target: &mut T,
        vmlinux: &Vmlinux,
    ) -> Result<Option<String>, KernelError<T::Error>> {
        let image = kaslr::find_image_physical(target, vmlinux).await?;
        let Some((at, id)) = vmlinux.build_id() else { return Ok(None) };
        let text = vmlinux.symbol("_text")?.addr;
        let (Some(text_lma), Some(lma)) = (vmlinux.load_address(text), vmlinux.load_address(at)) else {
            return Ok(None);
        };
        let live =
            target.read_physical(image.text_phys + (lma - text_lma), id.len()).await.map_err(KernelError::Target)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        if live != id {
            return Err(KernelError::BannerMismatch {
                file: format!("{} (build id {})", vmlinux.banner()?.trim_end(), hex(id)),
                guest: format!("the same banner, but build id {}", hex(&live)),
            });
        }
        Ok(Some(hex(id)))
    }

    /// The rest of an attach, once the slide is known.
    async fn with_slide<T: Target>(
        target: &mut T,
        vmlinux: Arc<Vmlinux>,
        layout: KernelLayout,
        slide: u64,
        space: AddressSpace,
        translation: Option<Arc<Translation>>,
    ) -> Result<Kernel, KernelError<T::Error>> {
        let release = vmlinux.release()?;
        let cpus = match target.cpus().await {
            Ok(cpus) => cpus,
            // A backend without CPUs (guest RAM, a dump): the kernel's own
            // online mask says which there are.
            Err(e) => online_cpus(target, &vmlinux, slide).await?.ok_or(KernelError::Target(e))?,
        };
        let table = layout.per_cpu_offset.0.wrapping_add(slide);
        let raw = target
            .read_memory(table, 8 * cpus.len())
            .await
            .map_err(KernelError::Target)
            .map_err(|e| e.reading(format!("__per_cpu_offset[0..{}]", cpus.len()), table))?;
        let percpu_bases: Vec<u64> =
            raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        if percpu_bases.len() != cpus.len() {
            return Err(KernelError::Corrupt("short read of __per_cpu_offset".into()));
        }
        let current_task = layout.current_task.percpu_offset(layout.percpu, slide);
        let rq_idle = match (vmlinux.lookup_symbol("runqueues"), vmlinux.member("rq.idle")) {
            (Some(sym), Ok(m)) if sym.is_percpu() => Some(layout.percpu.offset_of(sym.addr, slide).plus(m.offset)),
            _ => None,
        };
        Ok(Kernel {
            vmlinux,
            layout,
            slide,
            percpu_bases,
            current_task,
            rq_idle,
            module_layout: Arc::default(),
            module_debug: Arc::new(ModuleDebugFiles::new(&ModuleDebugDir::Default, &release)),
            module_cache: Arc::default(),
            release,
            space,
            translation,
            journal: None,
        })
    }

    /// Every write through [`Kernel::memory`] is recorded in `journal`
    /// before it is made.
    pub fn with_journal(mut self, journal: Arc<dyn WriteJournal>) -> Kernel {
        self.journal = Some(journal);
        self
    }

    /// The address-space layout of the guest.
    pub fn space(&self) -> &AddressSpace {
        &self.space
    }

    /// ktrace's own translation, when the kernel is read through physical memory.
    pub fn translation(&self) -> Option<&Translation> {
        self.translation.as_deref()
    }

    /// `target` as the kernel sees its memory: through ktrace's walk of the
    /// kernel's page tables when attached with [`Kernel::attach_physical`],
    /// else through the target's own virtual reads.
    pub fn memory<'a, T: PhysicalMemory>(&'a self, target: &'a mut T) -> GuestMemory<'a, T> {
        GuestMemory::new(target, self.translation.as_deref()).with_journal(self.journal.as_deref())
    }

    /// Where a task that is not running resumes: `switch_to` left a
    /// `struct inactive_task_frame` at `task->thread.sp` (saved registers
    /// and the return address into `__schedule`), the way drgn and the
    /// kernel's own unwinder start a sleeping task's stack.
    pub async fn saved_regs<T: Target>(
        &self,
        target: &mut T,
        task: TaskRef,
    ) -> Result<crate::regs::Regs, KernelError<T::Error>> {
        let vm = &self.vmlinux;
        let sp_at = task.0 + vm.member("task_struct.thread.sp")?.offset;
        let sp = target.read_u64(sp_at).await.map_err(|e| e.reading("the task's saved stack pointer", sp_at))?;
        let size = vm.type_size("inactive_task_frame")?;
        let frame = target
            .read_memory(sp, size as usize)
            .await
            .map_err(KernelError::Target)
            .map_err(|e| e.reading("the task's switch frame", sp))?;
        let word = |member: &str| -> Result<u64, KernelError<T::Error>> {
            let off = vm.member(&format!("inactive_task_frame.{member}"))?.offset as usize;
            Ok(u64::from_le_bytes(crate::target::le_array(frame.get(off..).unwrap_or_default())?))
        };
        use crate::regs::Reg;
        let mut regs = crate::regs::Regs::new(word("ret_addr")?, sp + size, word("bp")?);
        // The callee-saved registers switch_to pushed (which ones depends
        // on the kernel's version).
        for reg in [Reg::Rbx, Reg::R12, Reg::R13, Reg::R14, Reg::R15] {
            if vm.member(&format!("inactive_task_frame.{}", reg.pt_regs_member())).is_ok() {
                regs.set(reg, word(reg.pt_regs_member())?);
            }
        }
        Ok(regs)
    }

    /// The kernel log (`dmesg`), from the printk ring buffer.
    pub async fn log<T: Target>(&self, target: &mut T) -> Result<crate::printk::KernelLog, KernelError<T::Error>> {
        crate::printk::read_log(target, &self.vmlinux, self.slide).await
    }

    /// The guest ran: translations outside the fixed mappings are walked again.
    pub fn resumed(&self) {
        self.module_cache().generation += 1;
        if let Some(t) = &self.translation {
            t.resumed();
        }
    }

    /// Looks for modules' debug files in `dir` (the default:
    /// `/usr/lib/debug/lib/modules/<release>/`): the modules read from now
    /// on whose file is there have source lines.
    pub fn with_module_debug(mut self, dir: &ModuleDebugDir) -> Kernel {
        self.module_debug = Arc::new(ModuleDebugFiles::new(dir, &self.release));
        self
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

    /// The per-CPU offset of the per-CPU symbol at link address `sym`.
    pub fn percpu_offset(&self, sym: KernelAddr) -> PercpuOffset {
        self.layout.percpu.offset_of(sym, self.slide)
    }

    /// The runtime address of a per-CPU variable's instance on `cpu`.
    pub fn percpu_addr(&self, cpu: CpuId, offset: PercpuOffset) -> Option<u64> {
        Some(self.percpu_base(cpu)?.wrapping_add(offset.0))
    }

    /// Where `cpu`'s current-task pointer lives: one 8-byte read gives the current task.
    pub fn current_task_slot(&self, cpu: CpuId) -> Option<u64> {
        self.percpu_addr(cpu, self.current_task)
    }

    /// The per-CPU base as the CPU's registers give it: `gs_base` in kernel
    /// mode, `k_gs_base` in user mode or before `swapgs` (e.g. at
    /// `entry_SYSCALL_64`). An independent check of [`Kernel::percpu_base`].
    pub async fn percpu_base_from_registers<T: Target>(
        &self,
        target: &mut T,
        cpu: CpuId,
    ) -> Result<u64, KernelError<T::Error>> {
        let gs = target.read_register(cpu, "gs_base").await.map_err(KernelError::Target)?;
        if self.percpu_bases.contains(&gs) {
            return Ok(gs);
        }
        let kgs = target.read_register(cpu, "k_gs_base").await.map_err(KernelError::Target)?;
        if self.percpu_bases.contains(&kgs) || gs < (1u64 << 63) {
            return Ok(kgs);
        }
        Ok(gs)
    }

    /// The task running on `cpu`.
    pub async fn current_task<T: Target>(&self, target: &mut T, cpu: CpuId) -> Result<TaskRef, KernelError<T::Error>> {
        let slot = self.current_task_slot(cpu).ok_or_else(|| KernelError::Corrupt(format!("no CPU {cpu}")))?;
        let task =
            target.read_u64(slot).await.map_err(|e| e.reading(format!("CPU {cpu}'s current task pointer"), slot))?;
        Ok(TaskRef(task))
    }

    /// Reads one task's fields.
    pub async fn task_info<T: Target>(&self, target: &mut T, task: TaskRef) -> Result<TaskInfo, KernelError<T::Error>> {
        let mut v = task::read_tasks(target, &self.layout, &[task]).await?;
        Ok(v.remove(0))
    }

    /// Reads several tasks' fields in one batch.
    pub async fn task_infos<T: Target>(
        &self,
        target: &mut T,
        tasks: &[TaskRef],
    ) -> Result<Vec<TaskInfo>, KernelError<T::Error>> {
        task::read_tasks(target, &self.layout, tasks).await
    }

    /// Reads only a task's pid (one 4-byte read).
    pub async fn task_pid<T: Target>(&self, target: &mut T, task: TaskRef) -> Result<i32, KernelError<T::Error>> {
        task::read_pid(target, &self.layout, task).await
    }

    /// Every task: the idle task of each CPU, then the task list with threads.
    pub async fn tasks<T: Target>(&self, target: &mut T) -> Result<Vec<TaskInfo>, KernelError<T::Error>> {
        let init = TaskRef(self.runtime(self.layout.init_task));
        let mut refs = task::all_tasks(target, &self.layout, init).await?;
        if let Some(rq_idle) = self.rq_idle {
            // After swapper/0 (init_task), in CPU order, skipping CPUs whose
            // idle task is missing or already listed.
            let mut at = 1;
            for cpu in 1..self.cpu_count() as u32 {
                if let Some(slot) = self.percpu_addr(CpuId(cpu), rq_idle) {
                    let t = target
                        .read_u64(slot)
                        .await
                        .map_err(|e| e.reading(format!("CPU {cpu}'s idle task pointer"), slot))?;
                    let t = TaskRef(t);
                    if t.0 != 0 && !refs.contains(&t) {
                        refs.insert(at, t);
                        at += 1;
                    }
                }
            }
        }
        self.task_infos(target, &refs).await
    }

    /// The loaded modules: list, kallsyms and ORC tables, read from guest
    /// memory (the `struct module` layout from DWARF, found on first use).
    pub async fn modules<T: Target>(&self, target: &mut T) -> Result<crate::Modules, KernelError<T::Error>> {
        let layout = self.module_layout()?;
        let format = self.vmlinux.orc().ok().map(|t| t.format());
        crate::read_modules(target, layout, self.slide, format).await
    }

    fn module_cache(&self) -> std::sync::MutexGuard<'_, ModuleCache> {
        self.module_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a module list just read (e.g. to resolve breakpoints) as the
    /// known one, so that the next backtraces do not read it again before
    /// the guest runs.
    pub fn know_modules(&self, modules: crate::Modules) {
        let mut cache = self.module_cache();
        cache.list = Some(Arc::new(modules));
        cache.read_in = Some(cache.generation);
    }

    /// The module list as last read or given, without reading it.
    pub fn known_modules(&self) -> Option<Arc<crate::Modules>> {
        self.module_cache().list.clone()
    }

    /// The known modules, made to hold the module whose code holds `pc`
    /// when one does: the list is read on the first pc in the module area,
    /// and again (at most once per generation, see [`Kernel::resumed`])
    /// when a pc there falls in no known module, since modules load while
    /// tracing. The debug file of the module holding `pc` is placed
    /// ([`Kernel::module_debug`]) on the first ask.
    pub async fn modules_at<T: Target>(&self, target: &mut T, pc: u64) -> Option<Arc<crate::Modules>> {
        let reread = {
            let mut cache = self.module_cache();
            let known = cache.list.as_ref().is_some_and(|m| m.by_code_addr(pc).is_some());
            let reread = !known && self.space.is_module(pc) && cache.read_in != Some(cache.generation);
            if reread {
                cache.read_in = Some(cache.generation);
            }
            reread
        };
        if reread {
            if let Ok(m) = self.modules(target).await {
                self.module_cache().list = Some(Arc::new(m));
            }
        }
        let list = self.known_modules()?;
        let module = list.by_code_addr(pc)?;
        if module.debug.is_some() {
            return Some(list);
        }
        // Without a debug file the module's kallsyms still name its frames.
        let Some(debug) = self.module_debug(target, module).await else { return Some(list) };
        drop(list);
        let mut cache = self.module_cache();
        // Placed in the list when no one else holds it; a holder sees the
        // file through `module_debug` (which opens each file once).
        if let Some(m) = cache.list.as_mut().and_then(Arc::get_mut).and_then(|l| l.by_code_addr_mut(pc)) {
            m.debug = Some(debug);
        }
        cache.list.clone()
    }

    /// The debug file of a loaded module, from the modules directory (see
    /// [`Kernel::with_module_debug`]), placed where the guest loaded its
    /// sections; `None` without one, or when it does not match the module
    /// (said once, as a warning). Each file is opened once per loaded
    /// module; asking again costs nothing.
    pub async fn module_debug<T: Target>(
        &self,
        target: &mut T,
        module: &crate::LoadedModule,
    ) -> Option<Arc<ktrace_symbols::ModuleDebug>> {
        let layout = self.module_layout::<T::Error>().ok()?;
        self.module_debug.for_module(target, layout.sections.as_ref(), module).await
    }

    /// The loaded modules' names, states and regions only (for `lsmod`).
    pub async fn module_list<T: Target>(
        &self,
        target: &mut T,
    ) -> Result<Vec<crate::ModuleInfo>, KernelError<T::Error>> {
        crate::read_module_list(target, self.module_layout()?, self.slide).await
    }

    fn module_layout<E>(&self) -> Result<&crate::ModuleLayout, KernelError<E>> {
        match self
            .module_layout
            .get_or_init(|| crate::ModuleLayout::from_vmlinux(&self.vmlinux).map_err(|e| e.to_string()))
        {
            Ok(l) => Ok(l),
            Err(why) => Err(KernelError::Corrupt(format!("the vmlinux does not describe kernel modules: {why}"))),
        }
    }

    /// The task with this pid.
    pub async fn find_task_by_pid<T: Target>(
        &self,
        target: &mut T,
        pid: i32,
    ) -> Result<TaskInfo, KernelError<T::Error>> {
        self.tasks(target)
            .await?
            .into_iter()
            .find(|t| t.pid == pid)
            .ok_or_else(|| KernelError::NoSuchTask(format!("with pid {pid}")))
    }

    /// The tasks whose comm is `comm`.
    pub async fn find_tasks_by_comm<T: Target>(
        &self,
        target: &mut T,
        comm: &str,
    ) -> Result<Vec<TaskInfo>, KernelError<T::Error>> {
        let found: Vec<TaskInfo> = self.tasks(target).await?.into_iter().filter(|t| t.comm == comm).collect();
        if found.is_empty() {
            return Err(KernelError::NoSuchTask(format!("named {comm:?}")));
        }
        Ok(found)
    }

    /// The current task of every CPU.
    pub async fn cpu_states<T: Target>(&self, target: &mut T) -> Result<Vec<CpuState>, KernelError<T::Error>> {
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
    pub async fn info<T: Target>(&self, target: &mut T) -> Result<KernelInfo, KernelError<T::Error>> {
        Ok(KernelInfo {
            release: self.release.clone(),
            banner: self.vmlinux.banner()?.trim_end().to_string(),
            slide: self.slide,
            cpus: self.cpu_states(target).await?,
        })
    }
}

/// The CPUs in the kernel's `__cpu_online_mask`, for backends with no CPUs of their own.
async fn online_cpus<T: Target>(
    target: &mut T,
    vmlinux: &Vmlinux,
    slide: u64,
) -> Result<Option<Vec<CpuId>>, KernelError<T::Error>> {
    let Some(sym) = vmlinux.lookup_symbol("__cpu_online_mask") else { return Ok(None) };
    let size = vmlinux.type_size("cpumask").unwrap_or(8).clamp(8, 1024) as usize;
    let bits = target.read_memory(sym.addr.0.wrapping_add(slide), size).await.map_err(KernelError::Target)?;
    let cpus: Vec<CpuId> =
        (0..bits.len() * 8).filter(|&i| bits[i / 8] & (1 << (i % 8)) != 0).map(|i| CpuId(i as u32)).collect();
    Ok((!cpus.is_empty()).then_some(cpus))
}

#[cfg(test)]
mod fixture_tests {
    //! The `pcpu_hot` layout (Linux 6.2+) end to end, on the ELF fixture
    //! `testdata/symbols/kernel_like.elf` and synthetic guest memory.
    //!
    //! The fixture has `linux_banner`, `init_task`, `struct task_struct` and a
    //! per-CPU `pcpu_hot`, but no `__per_cpu_offset`, `runqueues` or
    //! `task_struct.exit_state`: [`KernelLayout::from_vmlinux`] refuses it, so
    //! the layout is assembled from its parts here (with a made-up link
    //! address for `__per_cpu_offset`) and given to `attach_with_layout`.

    use super::*;
    use crate::layout::{CurrentTaskVar, PercpuSection, ThreadList};
    use crate::synthetic::SyntheticTarget;

    const SLIDE: u64 = 14 * (2 << 20);
    /// Where the fixture would have `__per_cpu_offset` (it has none).
    const PER_CPU_OFFSET: KernelAddr = KernelAddr(0xffff_ffff_8100_4000);
    const BASES: [u64; 2] = [0xffff_8880_0010_0000, 0xffff_8880_0020_0000];
    const USER_TASK: u64 = 0xffff_8880_0300_0000;

    fn fixture() -> Arc<Vmlinux> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/symbols/kernel_like.elf");
        Arc::new(Vmlinux::open(path).expect("fixture opens"))
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    fn layout(vm: &Vmlinux) -> KernelLayout {
        let off = |p: &str| vm.member(p).unwrap_or_else(|e| panic!("{p}: {e}")).offset;
        let state = vm.member("task_struct.__state").expect("__state");
        KernelLayout {
            current_task: CurrentTaskVar::from_vmlinux(vm).expect("current task var"),
            percpu: PercpuSection::from_vmlinux(vm).expect("per-CPU section"),
            per_cpu_offset: PER_CPU_OFFSET,
            init_task: vm.symbol("init_task").expect("init_task").addr,
            pid: off("task_struct.pid"),
            tgid: off("task_struct.tgid"),
            comm: off("task_struct.comm"),
            state: (state.offset, state.size),
            exit_state: None,
            flags: off("task_struct.flags"),
            real_parent: off("task_struct.real_parent"),
            tasks: off("task_struct.tasks"),
            threads: ThreadList::ThreadGroup { thread_group: off("task_struct.thread_group") },
        }
    }

    /// A task_struct at `at` whose lists point to themselves.
    fn task(t: &mut SyntheticTarget, l: &KernelLayout, at: u64, pid: i32, comm: &str, parent: u64) {
        let mut b = vec![0u8; 0x100];
        let mut put = |off: u64, bytes: &[u8]| b[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
        put(l.pid, &pid.to_le_bytes());
        put(l.tgid, &pid.to_le_bytes());
        put(l.comm, comm.as_bytes());
        put(l.real_parent, &parent.to_le_bytes());
        put(l.state.0, &1u32.to_le_bytes()[..l.state.1 as usize]);
        let ThreadList::ThreadGroup { thread_group } = l.threads else { unreachable!() };
        for list in [l.tasks, thread_group] {
            put(list, &(at + list).to_le_bytes());
            put(list + 8, &(at + list).to_le_bytes());
        }
        t.map(at, &b);
    }

    /// Two CPUs: CPU 0 runs `swapper/0` (init_task, in the kernel: `gs_base`
    /// is the per-CPU base), CPU 1 runs pid 42 in user mode (`k_gs_base`).
    fn guest(vm: &Vmlinux, l: &KernelLayout) -> SyntheticTarget {
        let mut t = SyntheticTarget::new(2);
        let banner_at = vm.symbol("linux_banner").expect("banner").addr.0 + SLIDE;
        t.map(banner_at, vm.banner().expect("banner").as_bytes());
        let table: Vec<u8> = BASES.iter().flat_map(|b| b.to_le_bytes()).collect();
        t.map(PER_CPU_OFFSET.0 + SLIDE, &table);
        let init = l.init_task.0 + SLIDE;
        for (base, current) in BASES.into_iter().zip([init, USER_TASK]) {
            let mut area = vec![0u8; 0x100];
            let slot = l.current_task.percpu_offset(l.percpu, SLIDE).0 as usize;
            area[slot..slot + 8].copy_from_slice(&current.to_le_bytes());
            t.map(base, &area);
        }
        task(&mut t, l, init, 0, "swapper/0", init);
        task(&mut t, l, USER_TASK, 42, "testprog", init);
        t.write_u64(init + l.tasks, USER_TASK + l.tasks);
        t.write_u64(USER_TASK + l.tasks, init + l.tasks);
        t.set_register(CpuId(0), "gs_base", BASES[0]);
        t.set_register(CpuId(1), "gs_base", 0x7f12_3456_7000);
        t.set_register(CpuId(1), "k_gs_base", BASES[1]);
        t
    }

    #[test]
    fn fixture_lacks_per_cpu_offset_for_from_vmlinux() {
        let err = KernelLayout::from_vmlinux(&fixture()).expect_err("no __per_cpu_offset");
        assert!(err.to_string().contains("__per_cpu_offset"), "{err}");
    }

    #[test]
    fn pcpu_hot_is_chosen_when_the_vmlinux_has_it() {
        let vm = fixture();
        let pcpu_hot = vm.symbol("pcpu_hot").expect("pcpu_hot").addr.0;
        let member = vm.member("pcpu_hot.current_task").expect("member").offset;
        assert_eq!(
            CurrentTaskVar::from_vmlinux(&vm).expect("var"),
            CurrentTaskVar::PcpuHot { symbol: KernelAddr(pcpu_hot), member }
        );
        assert_eq!(pcpu_hot, 0x20, "per-CPU symbols are offsets into the area");
    }

    #[test]
    fn current_tasks_through_pcpu_hot_with_kaslr() {
        let vm = fixture();
        let l = layout(&vm);
        let mut t = guest(&vm, &l);
        let k = block_on(Kernel::attach_with_layout(&mut t, vm.clone(), l.clone())).expect("attach");
        assert_eq!(k.slide(), SLIDE);
        assert_eq!(k.release(), "6.9.0-ktrace-test");
        assert_eq!(k.cpu_count(), 2);
        let init = l.init_task.0 + SLIDE;
        for (cpu, (want_task, want_pid, want_comm)) in
            [(init, 0, "swapper/0"), (USER_TASK, 42, "testprog")].into_iter().enumerate()
        {
            let cpu = CpuId(cpu as u32);
            assert_eq!(k.percpu_base(cpu), Some(BASES[cpu.0 as usize]));
            let regs = block_on(k.percpu_base_from_registers(&mut t, cpu)).expect("registers");
            assert_eq!(regs, BASES[cpu.0 as usize], "CPU {cpu}");
            let task = block_on(k.current_task(&mut t, cpu)).expect("current");
            assert_eq!(task, TaskRef(want_task), "CPU {cpu}");
            let info = block_on(k.task_info(&mut t, task)).expect("info");
            assert_eq!((info.pid, info.comm.as_str()), (want_pid, want_comm));
            assert_eq!(info.parent, TaskRef(init));
            assert_eq!(info.state.letter(), 'S');
        }
        let info = block_on(k.info(&mut t)).expect("info");
        assert_eq!(info.cpus.iter().map(|c| c.current.pid).collect::<Vec<_>>(), vec![0, 42]);
        let all = block_on(k.tasks(&mut t)).expect("tasks");
        assert_eq!(all.iter().map(|t| t.pid).collect::<Vec<_>>(), vec![0, 42]);
    }

    #[test]
    fn idle_tasks_of_other_cpus_come_from_runqueues() {
        // The fixture has no runqueues: place a made-up rq.idle in the
        // per-CPU area of CPU 1 and check it is listed after swapper/0.
        let vm = fixture();
        let l = layout(&vm);
        let mut t = guest(&vm, &l);
        let mut k = block_on(Kernel::attach_with_layout(&mut t, vm.clone(), l.clone())).expect("attach");
        assert_eq!(k.rq_idle, None, "the fixture has no runqueues");
        let (rq, idle) = (0x40, 0x18);
        k.rq_idle = Some(PercpuOffset(rq + idle));
        let idle1 = 0xffff_8880_0400_0000;
        task(&mut t, &l, idle1, 0, "swapper/1", l.init_task.0 + SLIDE);
        t.write_u64(BASES[1] + rq + idle, idle1);
        let all = block_on(k.tasks(&mut t)).expect("tasks");
        let names: Vec<&str> = all.iter().map(|t| t.comm.as_str()).collect();
        assert_eq!(names, vec!["swapper/0", "swapper/1", "testprog"]);
    }

    /// `--print`/`--if` expressions on the synthetic guest: `current`,
    /// globals, per-CPU data, registers, casts, comparisons, strings, and
    /// errors that say what is wrong.
    #[test]
    fn expressions_on_synthetic_memory() {
        use crate::values::{condition, print, EvalContext};
        let vm = fixture();
        let l = layout(&vm);
        let mut t = guest(&vm, &l);
        let k = block_on(Kernel::attach_with_layout(&mut t, vm.clone(), l.clone())).expect("attach");
        let registers = vec![("rdi".to_string(), USER_TASK), ("cr3".to_string(), 0x1234_5000)];
        let ctx = EvalContext { kernel: &k, cpu: CpuId(1), frame: None, registers: &registers, scopes: &[] };
        let is_type = |n: &str| vm.type_named(n).is_ok();
        let mut show = |src: &str| {
            let e = ktrace_expr::parse(src, &is_type).unwrap_or_else(|e| panic!("{e}"));
            block_on(print(&ctx, &mut t, src, &e)).map(|p| p.text).map_err(|e| e.to_string())
        };
        assert_eq!(show("current->pid").as_deref(), Ok("42"));
        assert_eq!(show("current->comm").as_deref(), Ok(r#""testprog\000\000\000\000\000\000\000""#));
        assert_eq!(show("init_task.comm").as_deref(), Ok(r#""swapper/0\000\000\000\000\000\000""#));
        assert_eq!(show("current->real_parent->pid").as_deref(), Ok("0"));
        assert_eq!(show("((struct task_struct *)$rdi)->pid + 1").as_deref(), Ok("43"));
        assert_eq!(show("$cr3 >> 12").as_deref(), Ok("74565"));
        assert_eq!(show("current == (struct task_struct *)$rdi").as_deref(), Ok("1"));
        assert_eq!(show("&init_task == current->real_parent").as_deref(), Ok("1"));
        assert_eq!(show("this_cpu(pcpu_hot).current_task == current").as_deref(), Ok("1"));
        assert_eq!(show("per_cpu(pcpu_hot, 0).current_task->pid").as_deref(), Ok("0"));
        assert_eq!(show("sizeof(int) * 2 - 1").as_deref(), Ok("7"));
        assert_eq!(show("-3 / 2").as_deref(), Ok("-1"));
        // C's conversions: to the common type before the operation.
        assert_eq!(show("(unsigned int)-1 == -1").as_deref(), Ok("1"));
        assert_eq!(show("(unsigned int)0 - 1").as_deref(), Ok("4294967295"));
        assert_eq!(show("(unsigned long)0 - 1 > 10").as_deref(), Ok("1"));
        assert_eq!(show("current->pid - 43 < 0").as_deref(), Ok("1"));
        assert_eq!(show("~(unsigned int)0").as_deref(), Ok("4294967295"));
        assert_eq!(show("(unsigned char)300").as_deref(), Ok("44"));
        assert_eq!(show("(_Bool)256").as_deref(), Ok("1"));
        assert_eq!(show("$cr3 == 0x12345000").as_deref(), Ok("1"));
        // An array decays to a pointer to its first element.
        assert_eq!(show("*(current->comm + 4)").as_deref(), Ok("112 'p'"));
        assert_eq!(show("current->comm[4] == *(current->comm + 4)").as_deref(), Ok("1"));
        let task = format!("0x{USER_TASK:x}");
        assert_eq!(show("current").as_deref(), Ok(format!("(struct task_struct *) {task}").as_str()));
        let e = show("current->pidd").unwrap_err();
        assert!(e.contains("current->pidd") && e.contains("no member `pidd`") && e.contains("pid"), "{e}");
        let e = show("pcpu_hot").unwrap_err();
        assert!(e.contains("this_cpu(pcpu_hot)"), "{e}");
        let e = show("1 / (current->pid - 42)").unwrap_err();
        assert!(e.contains("division by zero"), "{e}");
        let e = show("*(int *)0").unwrap_err();
        assert!(e.contains("NULL"), "{e}");
        let e = show("$r15").unwrap_err();
        assert!(e.contains("no such register"), "{e}");
        let e = show("per_cpu(pcpu_hot, 5)").unwrap_err();
        assert!(e.contains("CPUs 0-1"), "{e}");
        let e = show("nosuchthing + 1").unwrap_err();
        assert!(e.contains("nosuchthing"), "{e}");
        let mut holds = |src: &str| {
            let e = ktrace_expr::parse(src, &is_type).unwrap();
            block_on(condition(&ctx, &mut t, &e)).expect("evaluates")
        };
        assert!(holds(r#"current->comm == "testprog" && current->pid > 40"#));
        assert!(!holds(r#"current->comm == "testpro""#));
        assert!(holds(r#"current->comm != "sh" || *(int *)0"#), "|| short-circuits");
        assert!(!holds("current->pid == 42 ? 0 : 1"));
    }
}
