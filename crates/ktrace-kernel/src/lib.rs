//! Understanding a running Linux kernel from the outside.
//!
//! Everything here goes through [`Target`], a small memory/register trait, so
//! the same code runs on QEMU's gdb stub (`impl Target for ktrace_rsp::Session`)
//! and on synthetic memory in tests ([`synthetic::SyntheticTarget`]).
//!
//! Cargo features:
//!
//! - `rsp` (default): the adapter `impl Target for ktrace_rsp::Session` and
//!   [`cpu_of_thread`]. Without it the crate does not depend on `ktrace-rsp`.
//!
//! - [`Kernel::attach`] matches the vmlinux to the guest by `linux_banner`,
//!   finding the KASLR slide when the kernel was relocated.
//! - Per-CPU data through `__per_cpu_offset[cpu]` (cross-checked with
//!   `gs_base`/`k_gs_base` by [`Kernel::percpu_base_from_registers`]).
//! - The current task on each CPU, through `current_task` or
//!   `pcpu_hot.current_task`, whichever the vmlinux has.
//! - What a CPU runs and whether it is the task a caller follows, as a
//!   read plan ([`Kernel::current_task_reads`]) that the caller batches with
//!   its own reads, decoded into a [`TaskIdent`].
//! - Task fields (pid, tgid, comm, state, flags, parent) and a bounded walk of
//!   the task list, threads included.

#![deny(missing_docs)]

mod current;
mod error;
#[cfg(feature = "rsp")]
pub mod guest;
mod kaslr;
mod kernel;
mod layout;
pub mod memory;
mod module;
mod module_debug;
mod module_sections;
mod printk;
mod regs;
#[cfg(feature = "rsp")]
mod rsp_target;
mod stack_copy;
pub mod synthetic;
mod target;
mod task;
pub mod trampoline;
pub mod unwind;
pub mod values;
pub mod vmcoreinfo;
pub mod x86;

pub use current::{CurrentTask, CurrentTaskReads};
pub use error::KernelError;
#[cfg(feature = "rsp")]
pub use guest::{Guest, GuestConfig, ReadThrough, Release};
pub use kernel::{CpuState, Kernel, KernelInfo};
pub use layout::{CurrentTaskVar, KernelLayout, PercpuOffset, PercpuSection, PercpuVar};
pub use memory::{GuestMemory, MemoryError, PhysicalMemory, Translation, WriteJournal, WrittenTo};
pub use module::{
    read_module_list, read_module_orc, read_module_symbols, read_modules, LoadedModule, ModuleInfo, ModuleLayout,
    ModuleRegion, ModuleSymbol, Modules, RegionLayout, SectAttrsLayout, MAX_MODULES,
};
pub use module_debug::ModuleDebugDir;
pub use module_sections::read_module_sections;
pub use printk::{KernelLog, LogRecord};
#[cfg(feature = "rsp")]
pub use rsp_target::{cpu_of_thread, StubMemoryError};
pub use stack_copy::{StackCopy, StackCopyError};
pub use target::{CpuId, Target};
pub use task::{decode_comm, le_u64, TaskIdent, TaskInfo, TaskRef, TaskState, MAX_TASKS};
pub use unwind::{Backtrace, Frame, FrameKind, Reg, Regs, StopReason, Unwinder};
