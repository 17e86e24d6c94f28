//! Offsets the kernel crate reads, found once in the vmlinux.

use ktrace_symbols::{KernelAddr, Vmlinux};

use crate::KernelError;

/// Where the per-CPU pointer to the current task lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurrentTaskVar {
    /// `DEFINE_PER_CPU(struct task_struct *, current_task)` (up to 6.1).
    CurrentTask {
        /// Offset of `current_task` in the per-CPU area.
        offset: u64,
    },
    /// `pcpu_hot.current_task` (6.2 and later).
    PcpuHot {
        /// Offset of `pcpu_hot` in the per-CPU area.
        offset: u64,
        /// Offset of `current_task` inside `struct pcpu_hot`.
        member: u64,
    },
}

impl CurrentTaskVar {
    /// `pcpu_hot.current_task` where the vmlinux has it, else `current_task`.
    pub fn from_vmlinux(vm: &Vmlinux) -> Result<CurrentTaskVar, KernelError> {
        Ok(match vm.lookup_symbol("pcpu_hot") {
            Some(sym) if vm.has_member("pcpu_hot.current_task") => {
                CurrentTaskVar::PcpuHot { offset: sym.addr.0, member: vm.member("pcpu_hot.current_task")?.offset }
            }
            _ => CurrentTaskVar::CurrentTask { offset: vm.symbol("current_task")?.addr.0 },
        })
    }

    /// Offset of the current-task pointer inside a CPU's per-CPU area.
    pub fn percpu_offset(self) -> u64 {
        match self {
            CurrentTaskVar::CurrentTask { offset } => offset,
            CurrentTaskVar::PcpuHot { offset, member } => offset + member,
        }
    }
}

/// Member offsets of `task_struct` and friends, and the symbols the kernel crate uses.
#[derive(Clone, Debug)]
pub struct KernelLayout {
    /// How to find the current task.
    pub current_task: CurrentTaskVar,
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
    pub fn from_vmlinux(vm: &Vmlinux) -> Result<KernelLayout, KernelError> {
        let off = |path: &str| vm.member(path).map(|m| m.offset);
        let current_task = CurrentTaskVar::from_vmlinux(vm)?;
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
    fn current_task_slot_in_both_layouts() {
        assert_eq!(CurrentTaskVar::CurrentTask { offset: 0x1fb80 }.percpu_offset(), 0x1fb80);
        assert_eq!(CurrentTaskVar::PcpuHot { offset: 0x32000, member: 0 }.percpu_offset(), 0x32000);
        assert_eq!(CurrentTaskVar::PcpuHot { offset: 0x32000, member: 0x10 }.percpu_offset(), 0x32010);
    }
}
