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

/// An x86-64 general-purpose register or `rip`: the registers unwinding
/// rules (ORC, DWARF CFI, `pt_regs`) and DWARF locations name. Declared in
/// DWARF order, so that a register's DWARF number is its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reg {
    /// `rax` (DWARF 0).
    Rax,
    /// `rdx` (DWARF 1).
    Rdx,
    /// `rcx` (DWARF 2).
    Rcx,
    /// `rbx` (DWARF 3).
    Rbx,
    /// `rsi` (DWARF 4).
    Rsi,
    /// `rdi` (DWARF 5).
    Rdi,
    /// `rbp` (DWARF 6).
    Rbp,
    /// `rsp` (DWARF 7).
    Rsp,
    /// `r8` (DWARF 8).
    R8,
    /// `r9` (DWARF 9).
    R9,
    /// `r10` (DWARF 10).
    R10,
    /// `r11` (DWARF 11).
    R11,
    /// `r12` (DWARF 12).
    R12,
    /// `r13` (DWARF 13).
    R13,
    /// `r14` (DWARF 14).
    R14,
    /// `r15` (DWARF 15).
    R15,
    /// `rip` (DWARF 16, the return address column).
    Rip,
}

impl Reg {
    /// How many there are.
    pub const COUNT: usize = 17;

    /// Every register, in DWARF order.
    pub const ALL: [Reg; Reg::COUNT] = [
        Reg::Rax,
        Reg::Rdx,
        Reg::Rcx,
        Reg::Rbx,
        Reg::Rsi,
        Reg::Rdi,
        Reg::Rbp,
        Reg::Rsp,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
        Reg::Rip,
    ];

    /// The registers a called function preserves (System V ABI).
    pub const CALLEE_SAVED: [Reg; 6] = [Reg::Rbx, Reg::Rbp, Reg::R12, Reg::R13, Reg::R14, Reg::R15];

    /// The register with DWARF number `n`.
    pub fn from_dwarf(n: u16) -> Option<Reg> {
        Reg::ALL.get(n as usize).copied()
    }

    /// Its DWARF number.
    pub fn dwarf(self) -> u16 {
        self as u16
    }

    /// Its index in [`Reg::ALL`] (its DWARF number).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name as QEMU's `target.xml` and GDB give it (`"rip"`, `"rsp"`).
    pub fn name(self) -> &'static str {
        REG_NAMES[self.index()]
    }

    /// The register called `name` (the stub's name).
    pub fn from_name(name: &str) -> Option<Reg> {
        REG_NAMES.iter().position(|n| *n == name).map(|i| Reg::ALL[i])
    }

    /// The member of the kernel's `struct pt_regs` that saves it.
    pub fn pt_regs_member(self) -> &'static str {
        let name = self.name();
        match self {
            Reg::R8 | Reg::R9 | Reg::R10 | Reg::R11 | Reg::R12 | Reg::R13 | Reg::R14 | Reg::R15 => name,
            _ => &name[1..],
        }
    }
}

/// The names of [`Reg::ALL`], in its order.
const REG_NAMES: [&str; Reg::COUNT] = [
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_by_number_and_name() {
        for r in Reg::ALL {
            assert_eq!(Reg::from_dwarf(r.dwarf()), Some(r));
            assert_eq!(Reg::from_name(r.name()), Some(r));
            assert!(INFO_REGISTERS.contains(&r.name()), "{r:?}");
        }
        assert_eq!(Reg::from_dwarf(7), Some(Reg::Rsp));
        assert_eq!(Reg::from_dwarf(6), Some(Reg::Rbp));
        assert_eq!(Reg::from_dwarf(17), None);
        assert_eq!(Reg::Rip.pt_regs_member(), "ip");
        assert_eq!(Reg::R13.pt_regs_member(), "r13");
        assert_eq!(Reg::Rcx.name(), "rcx");
    }
}
