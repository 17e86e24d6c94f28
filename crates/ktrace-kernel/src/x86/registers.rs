//! The x86-64 registers a debugger shows, by the names QEMU's gdb stub
//! (`target.xml`) gives them.

/// The integer registers of GDB's `info registers`, in its order:
/// general, segment, control.
pub const INFO_REGISTERS: &[&str] = &[
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "rsp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rip",
    "eflags",
    "cs",
    "ss",
    "ds",
    "es",
    "fs",
    "gs",
    "fs_base",
    "gs_base",
    "k_gs_base",
    "cr0",
    "cr2",
    "cr3",
    "cr4",
    "cr8",
    "efer",
];

/// The page-table root bits of CR3 (bits 0-11 are the PCID, bit 63 the
/// no-flush hint).
pub const CR3_ROOT: u64 = 0x000f_ffff_ffff_f000;
