//! The one form every unwind rule takes: ORC entries (of the vmlinux and
//! of modules), DWARF CFI rows, `pt_regs` frames and ktrace's trampoline
//! become an [`UnwindRow`], which [`super::engine::evaluate`] applies.
//!
//! The ORC conversion follows the facts of drgn's `orc_to_cfi_x86_64`: the
//! CFA is `sp_reg + sp_offset` (or read through SP or BP for the indirect
//! bases), a call frame's return address is at CFA - 8 and its SP is the
//! CFA, a `pt_regs` frame has every register at its slot, and `bp_reg`
//! says where the caller's rbp is (PREV_SP: at CFA + bp_offset; BP: at
//! rbp + bp_offset; undefined: unchanged).

use ktrace_symbols::{CfaRule, CfiRow, OrcEntry, OrcReg, OrcType, RegRule, SavedRegisters, SymbolError, Vmlinux};

use super::reason::StopReason;
use crate::x86::registers::Reg;

/// How the canonical frame address (the caller's SP before its call) is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cfa {
    /// `reg + offset`.
    RegOffset(Reg, i64),
    /// `[reg + offset] + add` (ORC's SP_INDIRECT and BP_INDIRECT).
    Deref {
        /// The base register.
        reg: Reg,
        /// Added to it before the read.
        offset: i64,
        /// Added to the word read.
        add: i64,
    },
}

/// Where the caller's value of one register is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rule {
    /// This frame's value: unchanged, or not tracked by the rules (then
    /// carried as the last value known, as the kernel's unwinder does for
    /// the registers entry code bases a CFA on).
    Same,
    /// Not recoverable (for rip: the outermost frame).
    Undefined,
    /// Saved at CFA + offset; the step stops when it cannot be read.
    AtCfa(i64),
    /// Saved at CFA + offset where readable, else carried.
    MaybeAtCfa(i64),
    /// Saved at `reg + offset` where readable, else carried.
    MaybeAtReg(Reg, i64),
    /// The CFA plus offset (the caller's SP after a call frame).
    CfaPlus(i64),
    /// The value of another register of this frame (`sysretq`'s rip = rcx).
    InReg(Reg),
}

/// What kind of frame the row describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FrameType {
    /// A call frame: the caller's pc is a return address.
    Call,
    /// Registers saved by entry code: a `pt_regs` starting at CFA + `at`,
    /// whole (`full`) or only its IRET frame.
    PtRegs {
        /// Offset of the `pt_regs` from the CFA.
        at: i64,
        /// All of it (ORC REGS) or the IRET frame (REGS_PARTIAL).
        full: bool,
    },
    /// The return to user space (`sysretq`): the caller is the user context.
    UserReturn,
}

/// Where a row came from, for the caller's [`super::FrameKind`] and for
/// the words it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// An ORC entry (the vmlinux's or a module's).
    Orc(OrcEntry),
    /// `.debug_frame`.
    Cfi,
    /// ktrace's trampoline, whose stack effect is known at every pc.
    Trampoline,
    /// A return address found by a heuristic where the rules end the stack.
    Heuristic,
}

/// One normalized unwind row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct UnwindRow {
    /// The CFA.
    pub cfa: Cfa,
    /// Per register (by [`Reg::index`]), the caller's value.
    pub rules: [Rule; Reg::COUNT],
    /// The kind of frame.
    pub frame: FrameType,
    /// The caller's pc is an interrupted instruction, not a return address
    /// (ORC's signal bit; only for `pt_regs` frames).
    pub signal: bool,
    /// Where the row came from.
    pub source: Source,
}

impl UnwindRow {
    /// A call frame with CFA = `reg + offset`: return address at CFA - 8,
    /// SP = CFA, the other registers carried.
    pub(super) fn call(reg: Reg, offset: i64, source: Source) -> UnwindRow {
        UnwindRow {
            cfa: Cfa::RegOffset(reg, offset),
            rules: [Rule::Same; Reg::COUNT],
            frame: FrameType::Call,
            signal: false,
            source,
        }
        .with(Reg::Rip, Rule::AtCfa(-8))
        .with(Reg::Rsp, Rule::CfaPlus(0))
    }

    /// The row with `reg`'s rule set.
    pub(super) fn with(mut self, reg: Reg, rule: Rule) -> UnwindRow {
        self.rules[reg.index()] = rule;
        self
    }

    /// The rule for `reg`.
    pub(super) fn rule(&self, reg: Reg) -> Rule {
        self.rules[reg.index()]
    }

    /// An ORC entry as a row; `None` when the unwinder does not understand
    /// it ([`orc_usable`]).
    pub(super) fn from_orc(o: &OrcEntry, pt: &PtRegsLayout) -> Option<UnwindRow> {
        if !orc_usable(o) {
            return None;
        }
        let off = i64::from(o.sp_offset);
        let cfa = match o.sp_reg {
            OrcReg::Sp => Cfa::RegOffset(Reg::Rsp, off),
            OrcReg::Bp => Cfa::RegOffset(Reg::Rbp, off),
            OrcReg::Di => Cfa::RegOffset(Reg::Rdi, off),
            OrcReg::Dx => Cfa::RegOffset(Reg::Rdx, off),
            OrcReg::R10 => Cfa::RegOffset(Reg::R10, off),
            OrcReg::R13 => Cfa::RegOffset(Reg::R13, off),
            OrcReg::SpIndirect => Cfa::Deref { reg: Reg::Rsp, offset: 0, add: off },
            OrcReg::BpIndirect => Cfa::Deref { reg: Reg::Rbp, offset: off, add: 0 },
            _ => return None,
        };
        let mut row = match o.kind {
            OrcType::Call => UnwindRow::call(Reg::Rsp, 0, Source::Orc(*o)),
            OrcType::Regs => pt.row(true, Source::Orc(*o)),
            OrcType::RegsPartial => pt.row(false, Source::Orc(*o)),
            _ => return None,
        };
        row.cfa = cfa;
        row.signal = o.signal && row.frame != FrameType::Call;
        let bp = i64::from(o.bp_offset);
        match o.bp_reg {
            OrcReg::PrevSp => row.rules[Reg::Rbp.index()] = Rule::AtCfa(bp),
            OrcReg::Bp => row.rules[Reg::Rbp.index()] = Rule::MaybeAtReg(Reg::Rbp, bp),
            _ => {}
        }
        Some(row)
    }

    /// A `.debug_frame` row (and, where known, the rules of the
    /// callee-saved registers there) as a row, or why it cannot be used.
    pub(super) fn from_cfi(row: &CfiRow, saved: Option<&SavedRegisters>, pc: u64) -> Result<UnwindRow, StopReason> {
        let unsupported = |why: String| StopReason::UnsupportedCfi { pc, why };
        let (reg, offset) = match row.cfa {
            CfaRule::RegOffset { reg, offset } => match Reg::from_dwarf(reg).filter(|r| *r != Reg::Rip) {
                Some(r) => (r, offset),
                None => return Err(unsupported(format!("the CFA is based on unsupported register {reg}"))),
            },
            CfaRule::Unsupported => return Err(unsupported("the CFA is a DWARF expression".into())),
        };
        let rip = match row.rip {
            RegRule::Offset(o) => Rule::AtCfa(o),
            RegRule::Undefined => Rule::Undefined,
            other => return Err(unsupported(format!("unsupported return address rule {other:?}"))),
        };
        let mut out = UnwindRow::call(reg, offset, Source::Cfi).with(Reg::Rip, rip);
        for (dwarf, rule) in saved.into_iter().flat_map(|s| s.0) {
            let Some(r) = Reg::from_dwarf(dwarf) else { continue };
            out.rules[r.index()] = match rule {
                RegRule::Offset(o) => Rule::MaybeAtCfa(o),
                RegRule::SameValue => Rule::Same,
                RegRule::Undefined | RegRule::Unsupported => Rule::Undefined,
            };
        }
        // rbp as before: must be read where saved; kept where the rule is
        // anything else (best effort).
        out.rules[Reg::Rbp.index()] = match row.rbp {
            RegRule::Offset(o) => Rule::AtCfa(o),
            _ => Rule::Same,
        };
        Ok(out)
    }
}

/// Whether the unwinder understands an ORC entry (others fall back to CFI).
pub(super) fn orc_usable(o: &OrcEntry) -> bool {
    matches!(
        o.sp_reg,
        OrcReg::Sp
            | OrcReg::Bp
            | OrcReg::SpIndirect
            | OrcReg::BpIndirect
            | OrcReg::Di
            | OrcReg::Dx
            | OrcReg::R10
            | OrcReg::R13
    ) && matches!(o.kind, OrcType::Call | OrcType::Regs | OrcType::RegsPartial)
}

/// Where `struct pt_regs` saves each register, read from DWARF once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PtRegsLayout {
    offsets: [Option<u64>; Reg::COUNT],
}

impl PtRegsLayout {
    /// The registers a `pt_regs` must have for the unwinder to use it.
    const REQUIRED: [Reg; 7] = [Reg::Rip, Reg::Rsp, Reg::Rbp, Reg::Rdi, Reg::Rdx, Reg::R10, Reg::R13];

    /// The layout in the vmlinux's DWARF (`pt_regs.ip`, `pt_regs.sp`, ...).
    pub(super) fn read(vm: &Vmlinux) -> Result<PtRegsLayout, SymbolError> {
        let mut offsets = [None; Reg::COUNT];
        for reg in Reg::ALL {
            match vm.member(&format!("pt_regs.{}", reg.pt_regs_member())) {
                Ok(m) => offsets[reg.index()] = Some(m.offset),
                Err(e) if PtRegsLayout::REQUIRED.contains(&reg) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(PtRegsLayout { offsets })
    }

    /// A layout from `(register, offset)` pairs (tests).
    #[cfg(test)]
    pub(super) fn from_pairs(pairs: &[(Reg, u64)]) -> PtRegsLayout {
        let mut offsets = [None; Reg::COUNT];
        for &(r, o) in pairs {
            offsets[r.index()] = Some(o);
        }
        PtRegsLayout { offsets }
    }

    /// The offset of `reg`'s slot.
    pub(super) fn offset(&self, reg: Reg) -> Option<u64> {
        self.offsets[reg.index()]
    }

    /// A `pt_regs` frame whose CFA is the `pt_regs` (`full`) or its IRET
    /// frame (at `pt_regs.ip`): ip and sp must be read, the other registers
    /// of a full one are read where they can be, the rest carried.
    fn row(&self, full: bool, source: Source) -> UnwindRow {
        let ip = self.offset(Reg::Rip).unwrap_or(0) as i64;
        let at = if full { 0 } else { -ip };
        let mut row = UnwindRow {
            cfa: Cfa::RegOffset(Reg::Rsp, 0),
            rules: [Rule::Same; Reg::COUNT],
            frame: FrameType::PtRegs { at, full },
            signal: false,
            source,
        };
        for reg in Reg::ALL {
            let Some(off) = self.offset(reg) else { continue };
            let slot = at.wrapping_add(off as i64);
            row.rules[reg.index()] = match reg {
                Reg::Rip | Reg::Rsp => Rule::AtCfa(slot),
                _ if full => Rule::MaybeAtCfa(slot),
                _ => Rule::Same,
            };
        }
        row
    }
}
