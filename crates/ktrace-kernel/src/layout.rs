//! Offsets the kernel crate reads, found once in the vmlinux.

use ktrace_symbols::{KernelAddr, Vmlinux};
use serde::Serialize;

use ktrace_symbols::SymbolError;

/// Where a per-CPU variable sits inside each CPU's per-CPU area: the value
/// added to `__per_cpu_offset[cpu]` to reach that CPU's instance. Not a kernel
/// address (see [`PercpuSection::offset_of`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct PercpuOffset(pub u64);

impl PercpuOffset {
    /// The offset of a member `bytes` into the variable.
    pub fn plus(self, bytes: u64) -> PercpuOffset {
        PercpuOffset(self.0.wrapping_add(bytes))
    }
}

/// How the per-CPU section (`.data..percpu`) is linked, read from its
/// section header.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub enum PercpuSection {
    /// Linked at address 0 (x86-64 up to Linux 6.x): a per-CPU symbol's
    /// address is its offset, whatever the KASLR slide.
    ZeroBased,
    /// Linked among the kernel's other sections (Linux 7.x): the kernel adds
    /// `__per_cpu_offset[cpu]` to the symbol's runtime (slid) address.
    Linked {
        /// The section's link address.
        start: KernelAddr,
    },
}

impl PercpuSection {
    /// From the vmlinux's section table.
    pub fn from_vmlinux(vm: &Vmlinux) -> Result<PercpuSection, SymbolError> {
        match vm.percpu_section_range() {
            Some((0, _)) => Ok(PercpuSection::ZeroBased),
            Some((start, _)) => Ok(PercpuSection::Linked { start: KernelAddr(start) }),
            None => Err(SymbolError::UnknownSymbol {
                name: ".data..percpu (the per-CPU section)".into(),
                suggestions: Vec::new(),
            }),
        }
    }

    /// The per-CPU offset of the per-CPU symbol at link address `sym`, in a
    /// kernel slid by `slide`.
    pub fn offset_of(self, sym: KernelAddr, slide: u64) -> PercpuOffset {
        match self {
            PercpuSection::ZeroBased => PercpuOffset(sym.0),
            PercpuSection::Linked { .. } => PercpuOffset(sym.0.wrapping_add(slide)),
        }
    }
}

/// A per-CPU variable that is either a variable of its own or a member of
/// `struct pcpu_hot` (6.2 to 6.14 gathered the hottest ones there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PercpuVar {
    /// `DEFINE_PER_CPU(…, name)`.
    Own {
        /// Link address of the variable (in the per-CPU section).
        symbol: KernelAddr,
    },
    /// `pcpu_hot.name`.
    PcpuHot {
        /// Link address of `pcpu_hot` (in the per-CPU section).
        symbol: KernelAddr,
        /// Offset of the member inside `struct pcpu_hot`.
        member: u64,
    },
}

/// Where the per-CPU pointer to the current task lives (`current_task` up to
/// 6.1 and again from 6.15, `pcpu_hot.current_task` in between).
pub type CurrentTaskVar = PercpuVar;

impl PercpuVar {
    /// The current-task pointer. See [`PercpuVar::find`].
    pub fn from_vmlinux(vm: &Vmlinux) -> Result<PercpuVar, SymbolError> {
        PercpuVar::find(vm, "current_task").ok_or_else(|| SymbolError::UnknownSymbol {
            name: "current_task (or pcpu_hot), the per-CPU current task pointer".into(),
            suggestions: Vec::new(),
        })
    }

    /// The hot per-CPU variable `name`, chosen from the symbol table first:
    /// a per-CPU symbol of that name where the vmlinux has one, else the
    /// member of `pcpu_hot` (whose offset DWARF gives).
    pub fn find(vm: &Vmlinux, name: &str) -> Option<PercpuVar> {
        if let Some(sym) = vm.lookup_symbol(name).filter(|s| s.is_percpu()) {
            return Some(PercpuVar::Own { symbol: sym.addr });
        }
        let hot = vm.lookup_symbol("pcpu_hot").filter(|s| s.is_percpu())?;
        let member = vm.member(&format!("pcpu_hot.{name}")).ok()?.offset;
        Some(PercpuVar::PcpuHot { symbol: hot.addr, member })
    }

    /// Link address of the variable in the per-CPU section.
    pub fn link_addr(self) -> KernelAddr {
        match self {
            PercpuVar::Own { symbol } => symbol,
            PercpuVar::PcpuHot { symbol, member } => KernelAddr(symbol.0 + member),
        }
    }

    /// The variable's per-CPU offset.
    pub fn percpu_offset(self, section: PercpuSection, slide: u64) -> PercpuOffset {
        section.offset_of(self.link_addr(), slide)
    }
}

/// Member offsets of `task_struct` and friends, and the symbols the kernel crate uses.
#[derive(Clone, Debug)]
pub struct KernelLayout {
    /// How to find the current task.
    pub current_task: CurrentTaskVar,
    /// How per-CPU addresses are formed.
    pub percpu: PercpuSection,
    /// Link address of `__per_cpu_offset`.
    pub per_cpu_offset: KernelAddr,
    /// Link address of `init_task`.
    pub init_task: KernelAddr,
    /// `task_struct.pid`.
    pub pid: u64,
    /// `task_struct.tgid`.
    pub tgid: u64,
    /// `task_struct.comm` (16 bytes).
    pub comm: u64,
    /// `task_struct.__state` (or `state` on old kernels) and its size.
    pub state: (u64, u64),
    /// `task_struct.exit_state`.
    pub exit_state: Option<u64>,
    /// `task_struct.flags`.
    pub flags: u64,
    /// `task_struct.real_parent`.
    pub real_parent: u64,
    /// `task_struct.tasks` (a `list_head`).
    pub tasks: u64,
    /// The thread list: `(signal, signal_struct.thread_head, task_struct.thread_node)`
    /// where the kernel has it, else `task_struct.thread_group`.
    pub threads: ThreadList,
}

/// How a process's threads are linked.
#[derive(Clone, Copy, Debug)]
pub enum ThreadList {
    /// `task->signal->thread_head`, linked through `task->thread_node`.
    SignalThreadHead {
        /// `task_struct.signal`.
        signal: u64,
        /// `signal_struct.thread_head`.
        thread_head: u64,
        /// `task_struct.thread_node`.
        thread_node: u64,
    },
    /// `task->thread_group` (removed in 6.7).
    ThreadGroup {
        /// `task_struct.thread_group`.
        thread_group: u64,
    },
}

impl KernelLayout {
    /// Finds everything in the vmlinux (symbols and DWARF, targeted lookups).
    pub fn from_vmlinux(vm: &Vmlinux) -> Result<KernelLayout, SymbolError> {
        let off = |path: &str| vm.member(path).map(|m| m.offset);
        let current_task = CurrentTaskVar::from_vmlinux(vm)?;
        let percpu = PercpuSection::from_vmlinux(vm)?;
        let state = match vm.member("task_struct.__state") {
            Ok(m) => (m.offset, m.size),
            Err(_) => {
                let m = vm.member("task_struct.state")?;
                (m.offset, m.size)
            }
        };
        let threads = if vm.has_member("signal_struct.thread_head") && vm.has_member("task_struct.thread_node") {
            ThreadList::SignalThreadHead {
                signal: off("task_struct.signal")?,
                thread_head: off("signal_struct.thread_head")?,
                thread_node: off("task_struct.thread_node")?,
            }
        } else {
            ThreadList::ThreadGroup { thread_group: off("task_struct.thread_group")? }
        };
        Ok(KernelLayout {
            current_task,
            percpu,
            per_cpu_offset: vm.symbol("__per_cpu_offset")?.addr,
            init_task: vm.symbol("init_task")?.addr,
            pid: off("task_struct.pid")?,
            tgid: off("task_struct.tgid")?,
            comm: off("task_struct.comm")?,
            state,
            exit_state: off("task_struct.exit_state").ok(),
            flags: off("task_struct.flags")?,
            real_parent: off("task_struct.real_parent")?,
            tasks: off("task_struct.tasks")?,
            threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_task_offset_in_both_variables_and_both_sections() {
        let zero = PercpuSection::ZeroBased;
        let slide = 0x1c00_0000;
        let var = PercpuVar::Own { symbol: KernelAddr(0x1fb80) };
        assert_eq!(var.percpu_offset(zero, slide), PercpuOffset(0x1fb80));
        let var = CurrentTaskVar::PcpuHot { symbol: KernelAddr(0x32000), member: 0x10 };
        assert_eq!(var.percpu_offset(zero, slide), PercpuOffset(0x32010));
        // A section linked at its own address: the symbol's slid address.
        let linked = PercpuSection::Linked { start: KernelAddr(0xffff_ffff_83cc_4000) };
        let var = PercpuVar::Own { symbol: KernelAddr(0xffff_ffff_83cc_5000) };
        assert_eq!(var.percpu_offset(linked, 0), PercpuOffset(0xffff_ffff_83cc_5000));
        assert_eq!(var.percpu_offset(linked, slide), PercpuOffset(0xffff_ffff_9fcc_5000));
        assert_eq!(PercpuOffset(0x10).plus(8), PercpuOffset(0x18));
    }
}
