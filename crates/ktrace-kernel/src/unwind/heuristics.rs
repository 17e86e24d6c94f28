//! Frames found where the rules end the stack or say nothing, from facts
//! of the code: a return address right after a call, and the return to
//! user space through `sysretq`. Each yields an [`UnwindRow`] the engine
//! then applies like any other.

use ktrace_symbols::KernelAddr;

use super::engine::Caller;
use super::row::{Cfa, FrameType, Rule, Source, UnwindRow};
use super::stack::StackReader;
use crate::x86::insn::{decode_sysret_path, ends_with_call, SysretPath, CALL_REL32};
use crate::x86::registers::Reg;
use crate::{Kernel, Target};

/// Whether runtime `ra` is a return address in the vmlinux: an address
/// in its code right after a call.
fn after_call(kernel: &Kernel, ra: u64) -> bool {
    let vm = kernel.vmlinux();
    let link = kernel.link(ra);
    vm.is_code(link) && vm.section_bytes_at(KernelAddr(link.0.wrapping_sub(7)), 7).is_some_and(ends_with_call)
}

/// Where the `call rel32` right before runtime return address `ra` goes
/// (runtime), when `ra` is one in the vmlinux's code.
fn called_from(kernel: &Kernel, ra: u64) -> Option<u64> {
    let vm = kernel.vmlinux();
    let link = kernel.link(ra);
    let c = vm.section_bytes_at(KernelAddr(link.0.wrapping_sub(5)), 5)?;
    let rel = i32::from_le_bytes([c[1], c[2], c[3], c[4]]);
    (vm.is_code(link) && c[0] == CALL_REL32).then(|| ra.wrapping_add(rel as i64 as u64))
}

/// A CPU stopped in code whose rules say "end of stack" (or nothing)
/// although it was called: 6.1's retpoline thunks
/// (`__x86_indirect_thunk_*`, `UNWIND_HINT_EMPTY`), which indirect calls
/// go through. On the function's first instruction nothing has touched
/// the stack: when `[SP]` is a return address in the vmlinux (right after
/// a call), that is the caller. Further in, `[SP]` must be right after a
/// `call rel32` into this function at or before the pc; or, inside a
/// retpoline's inner call (`call 1f; 2: pause; lfence; jmp 2b; 1: mov
/// %reg,(%rsp); ret`), `[SP]` is that call's return address (past the
/// call's target, at or before the pc) and `[SP + 8]` the one after the
/// call to the thunk. `None`: a real
/// bottom of the stack.
pub(super) async fn called_here<T: Target>(
    kernel: &Kernel,
    frame: &Caller,
    stack: &mut StackReader<'_, T>,
) -> Option<UnwindRow> {
    let state = &frame.regs;
    let (pc, sp) = (state.ip(), state.get(Reg::Rsp)?);
    if frame.return_address || !kernel.space().is_kernel(sp) {
        return None;
    }
    let offset = kernel.vmlinux().symbolize(kernel.link(pc))?.offset;
    let top = stack.u64(sp).await?;
    if offset == 0 {
        return after_call(kernel, top).then(|| UnwindRow::call(Reg::Rsp, 8, Source::Heuristic));
    }
    // Called into this function (at or before the pc: the thunks of an
    // array share one symbol).
    let start = pc - offset;
    let called_here = |ra: u64| called_from(kernel, ra).is_some_and(|t| start <= t && t <= pc);
    if called_here(top) {
        return Some(UnwindRow::call(Reg::Rsp, 8, Source::Heuristic));
    }
    let outer = stack.u64(sp.wrapping_add(8)).await?;
    let inner_call = called_from(kernel, outer).is_some_and(|t| start <= t && t < top && top <= pc);
    if inner_call && called_here(outer) {
        return Some(UnwindRow::call(Reg::Rsp, 16, Source::Heuristic));
    }
    None
}

/// The most instructions followed to a `sysretq`.
const SYSRET_PATH: usize = 16;

/// A CPU on the kernel's return to user space through `sysretq`, after
/// the user's registers were restored (where ORC ends the stack or says
/// nothing): the instructions from the pc on (read in the vmlinux) lead
/// to `sysretq` doing nothing an unwind sees but `swapgs`, NOPs, buffer
/// clearing, jumps and the pops of `rdi` and `rsp`. The caller is then
/// the user context: its pc in `rcx`, its stack in `rsp` (or in the word
/// `pop %rsp` will load).
pub(super) fn sysret_row(kernel: &Kernel, frame: &Caller) -> Option<UnwindRow> {
    let regs = &frame.regs;
    let rcx = regs.get(Reg::Rcx)?;
    if frame.return_address || kernel.space().is_kernel(rcx) {
        return None;
    }
    let vm = kernel.vmlinux();
    let mut at = kernel.link(regs.ip()).0;
    // SP moves by `pops` words until `pop %rsp` loads the user's.
    let mut pops: i64 = 0;
    let mut user_sp_at: Option<i64> = None;
    for _ in 0..SYSRET_PATH {
        if !vm.is_code(KernelAddr(at)) {
            return None;
        }
        let code = (1..=16).rev().find_map(|n| vm.section_bytes_at(KernelAddr(at), n))?;
        let (insn, len) = decode_sysret_path(code)?;
        at = at.wrapping_add(len as u64);
        match insn {
            SysretPath::Sysretq => {
                let cfa = match user_sp_at {
                    Some(k) => Cfa::Deref { reg: Reg::Rsp, offset: k, add: 0 },
                    None => Cfa::RegOffset(Reg::Rsp, pops * 8),
                };
                let mut row = UnwindRow::call(Reg::Rsp, 0, Source::Heuristic)
                    .with(Reg::Rip, Rule::InReg(Reg::Rcx))
                    .with(Reg::Rsp, Rule::CfaPlus(0));
                row.cfa = cfa;
                row.frame = FrameType::UserReturn;
                return Some(row);
            }
            SysretPath::NoEffect => {}
            SysretPath::PopRdi if user_sp_at.is_none() => pops += 1,
            SysretPath::PopRsp if user_sp_at.is_none() => user_sp_at = Some(pops * 8),
            SysretPath::PopRdi | SysretPath::PopRsp => return None,
            SysretPath::Jmp(rel) => at = at.wrapping_add(rel as u64),
        }
    }
    None
}
