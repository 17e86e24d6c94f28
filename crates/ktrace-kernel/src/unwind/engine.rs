//! The one evaluator: an [`UnwindRow`] applied to a frame's registers and
//! its stack gives the caller's registers.

use super::frame::FrameKind;
use super::reason::StopReason;
use super::row::{Cfa, FrameType, Rule, Source, UnwindRow};
use super::stack::StackReader;
use crate::regs::Regs;
use crate::x86::registers::Reg;
use crate::x86::AddressSpace;
use crate::Target;

/// The caller's frame as one unwind step found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Caller {
    pub regs: Regs,
    pub kind: FrameKind,
    /// Where the `pt_regs` were, for interrupted and user frames.
    pub regs_at: Option<u64>,
    /// The pc is a return address (look it up at pc - 1), not an
    /// interrupted instruction.
    pub return_address: bool,
}

/// What one unwind step says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The caller's frame.
    Next(Caller),
    /// The natural bottom of the stack.
    End,
    /// The unwind cannot go on.
    Stop(StopReason),
}

impl From<Result<Caller, StopReason>> for Step {
    fn from(r: Result<Caller, StopReason>) -> Step {
        match r {
            Ok(c) => Step::Next(c),
            Err(why) => Step::Stop(why),
        }
    }
}

/// The order registers are recovered in: the pc first (its word is the
/// first a step cannot do without), then the stack and frame pointers.
const ORDER: [Reg; Reg::COUNT] = {
    let mut order = [Reg::Rip; Reg::COUNT];
    order[1] = Reg::Rsp;
    order[2] = Reg::Rbp;
    let mut i = 0;
    let mut n = 3;
    while i < Reg::COUNT {
        let r = Reg::ALL[i];
        if !matches!(r, Reg::Rip | Reg::Rsp | Reg::Rbp) {
            order[n] = r;
            n += 1;
        }
        i += 1;
    }
    order
};

/// What a word a row reads is, for a stop reason.
fn what(row: &UnwindRow, reg: Reg) -> &'static str {
    match (row.frame, reg) {
        (FrameType::PtRegs { .. }, _) => "pt_regs",
        (_, Reg::Rip) if row.source == Source::Trampoline => "return address into the traced function",
        (_, Reg::Rip) => "return address",
        (_, Reg::Rbp) => "saved rbp",
        _ => "saved register",
    }
}

/// Applies `row` to the frame with registers `regs`: the caller's frame,
/// [`Step::End`] when the row leaves the return address undefined (the
/// outermost frame), or why the step cannot be made.
pub(super) async fn evaluate<T: Target>(
    row: &UnwindRow,
    regs: &Regs,
    stack: &mut StackReader<'_, T>,
    space: &AddressSpace,
) -> Step {
    if row.rule(Reg::Rip) == Rule::Undefined {
        return Step::End;
    }
    let pc = regs.ip();
    let reg = |r: Reg| regs.get(r).ok_or(StopReason::UnknownRegister { pc, reg: r });
    let cfa = match row.cfa {
        Cfa::RegOffset(r, off) => reg(r).map(|v| v.wrapping_add(off as u64)),
        Cfa::Deref { reg: r, offset, add } => match reg(r) {
            Ok(base) => stack
                .word("saved stack pointer", base.wrapping_add(offset as u64))
                .await
                .map(|v| v.wrapping_add(add as u64)),
            Err(why) => Err(why),
        },
    };
    let cfa = match cfa {
        Ok(c) => c,
        Err(why) => return Step::Stop(why),
    };
    let mut next = *regs;
    for r in ORDER {
        match row.rule(r) {
            Rule::Same => {}
            Rule::Undefined => next.clear(r),
            Rule::AtCfa(off) => match stack.word(what(row, r), cfa.wrapping_add(off as u64)).await {
                Ok(v) => next.set(r, v),
                Err(why) => return Step::Stop(why),
            },
            Rule::MaybeAtCfa(off) => {
                if let Some(v) = stack.u64(cfa.wrapping_add(off as u64)).await {
                    next.set(r, v);
                }
            }
            Rule::MaybeAtReg(base, off) => {
                if let Some(base) = regs.get(base) {
                    if let Some(v) = stack.u64(base.wrapping_add(off as u64)).await {
                        next.set(r, v);
                    }
                }
            }
            Rule::CfaPlus(off) => next.set(r, cfa.wrapping_add(off as u64)),
            Rule::InReg(from) => match regs.get(from) {
                Some(v) => next.set(r, v),
                None => next.clear(r),
            },
        }
    }
    let caller = match row.frame {
        FrameType::Call => Caller {
            regs: next,
            kind: if row.source == Source::Cfi { FrameKind::CallCfi } else { FrameKind::Call },
            regs_at: None,
            return_address: true,
        },
        FrameType::PtRegs { at, .. } => Caller {
            regs: next,
            kind: if space.is_kernel(next.ip()) { FrameKind::Interrupted } else { FrameKind::User },
            regs_at: Some(cfa.wrapping_add(at as u64)),
            // A signal frame's pc is the interrupted instruction; otherwise
            // (e.g. a pt_regs built by a call) a return address.
            return_address: !row.signal,
        },
        FrameType::UserReturn => Caller { regs: next, kind: FrameKind::User, regs_at: None, return_address: false },
    };
    Step::Next(caller)
}
