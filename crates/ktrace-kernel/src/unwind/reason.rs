//! Why a backtrace ended before the bottom of the stack.

use ktrace_symbols::OrcEntry;

use crate::x86::registers::Reg;

pub(super) fn as_text<S: serde::Serializer>(why: &Option<StopReason>, s: S) -> Result<S::Ok, S::Error> {
    match why {
        Some(why) => s.collect_str(why),
        None => s.serialize_none(),
    }
}

/// Why a backtrace ended before a real stack bottom. Each is a state the
/// unwinder cannot get past without guessing, so it stops and says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The frame limit was reached.
    MaxFrames(usize),
    /// The vmlinux's ORC tables are unusable (missing, or in a format that
    /// failed the self-check), so only the stopped frame is shown.
    NoOrcTables(String),
    /// Neither ORC nor DWARF CFI covers this pc.
    NoUnwindData {
        /// The pc (runtime).
        pc: u64,
    },
    /// An ORC entry this unwinder cannot evaluate.
    UnsupportedOrc {
        /// The pc (runtime).
        pc: u64,
        /// The entry, for the report.
        entry: OrcEntry,
    },
    /// A DWARF CFI rule this unwinder cannot evaluate.
    UnsupportedCfi {
        /// The pc (runtime).
        pc: u64,
        /// What is unsupported.
        why: String,
    },
    /// A stack word could not be read.
    UnreadableStack {
        /// What was being read.
        what: &'static str,
        /// Its address.
        addr: u64,
    },
    /// The next frame's stack pointer is not above this one's, on the same stack.
    StackWentBackwards {
        /// This frame's stack pointer.
        sp: u64,
        /// The caller's stack pointer (CFA).
        cfa: u64,
    },
    /// The stack pointer is not a kernel address.
    BadStackPointer {
        /// The stack pointer.
        sp: u64,
    },
    /// A call frame's return address is a user-space address: only a
    /// `pt_regs` frame can lead out of the kernel.
    UserReturnAddress {
        /// The return address.
        pc: u64,
    },
    /// The pc is a kernel address outside the vmlinux's code.
    OutsideKernelText {
        /// The pc.
        pc: u64,
        /// It lies in the guest's module area.
        in_module_area: bool,
    },
    /// The same frame came back: the unwind would loop.
    Loop {
        /// The repeated pc.
        pc: u64,
    },
    /// The CFA is based on a register whose value this frame does not know.
    UnknownRegister {
        /// The pc (runtime).
        pc: u64,
        /// The register.
        reg: Reg,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::MaxFrames(n) => write!(f, "stopped after {n} frames"),
            StopReason::NoOrcTables(why) => write!(f, "backtraces are off: {why}"),
            StopReason::NoUnwindData { pc } => write!(f, "no ORC or DWARF CFI data for 0x{pc:x}"),
            StopReason::UnsupportedOrc { pc, entry } => write!(f, "unsupported ORC entry {entry:?} at 0x{pc:x}"),
            StopReason::UnsupportedCfi { pc, why } => write!(f, "DWARF CFI at 0x{pc:x}: {why}"),
            StopReason::UnreadableStack { what, addr } => write!(f, "unreadable {what} at 0x{addr:x}"),
            StopReason::StackWentBackwards { sp, cfa } => {
                write!(f, "stack pointer went backwards (0x{cfa:x} after 0x{sp:x}, on the same stack)")
            }
            StopReason::BadStackPointer { sp } => write!(f, "stack pointer 0x{sp:x} is not a kernel address"),
            StopReason::UserReturnAddress { pc } => {
                write!(f, "return address 0x{pc:x} is not in the kernel, and no pt_regs frame leads there")
            }
            StopReason::OutsideKernelText { pc, in_module_area } => {
                if *in_module_area {
                    write!(f, "pc 0x{pc:x} is in the module area but in no loaded module's code (BPF or freed code?)")
                } else {
                    write!(f, "pc 0x{pc:x} is outside the kernel's code")
                }
            }
            StopReason::Loop { pc } => write!(f, "the unwind loops (frame 0x{pc:x} again)"),
            StopReason::UnknownRegister { pc, reg } => write!(
                f,
                "the CFA at 0x{pc:x} is based on register {} ({}), whose value is not known in this frame",
                reg.dwarf(),
                reg.name()
            ),
        }
    }
}
