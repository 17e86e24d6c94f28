//! Unit tests of the unwinder.

use super::row::{orc_usable, PtRegsLayout};
use super::*;
use crate::synthetic::SyntheticTarget;
use ktrace_symbols::{CfaRule, CfiRow, OrcEntry, OrcReg, OrcType, RegRule};

const STACK: u64 = 0xffff_c900_0000_0000;
const CALLER: u64 = 0xffff_ffff_8123_4567;

fn target() -> SyntheticTarget {
    let mut t = SyntheticTarget::new(1);
    t.map(STACK, &[0u8; 4096]);
    t
}

async fn step(t: &mut SyntheticTarget, row: CfiRow, regs: Regs) -> Result<Option<Regs>, String> {
    let mut stack = StackReader { target: t, chunks: HashMap::new(), block: 16 << 10 };
    let space = unwinder().space;
    let row = match UnwindRow::from_cfi(&row, None, regs.ip()) {
        Ok(row) => row,
        Err(why) => return Err(why.to_string()),
    };
    match evaluate(&row, &regs, &mut stack, &space).await {
        Step::Next(caller) => {
            unwinder().check_caller(&regs, &caller).map_err(|e| e.to_string())?;
            Ok(Some(caller.regs))
        }
        Step::End => Ok(None),
        Step::Stop(why) => Err(why.to_string()),
    }
}

/// An unwinder without a vmlinux (only its checks are used).
fn unwinder() -> Unwinder {
    let pt = PtRegsLayout::from_pairs(&[
        (Reg::Rip, 0x80),
        (Reg::Rsp, 0x98),
        (Reg::Rbp, 0x20),
        (Reg::Rdi, 0x70),
        (Reg::Rdx, 0x60),
        (Reg::R10, 0x38),
        (Reg::R13, 0x10),
    ]);
    Unwinder {
        pt,
        max_frames: 64,
        stack_block: 16 << 10,
        symbolized: HashMap::new(),
        space: AddressSpace::minimal(PagingLevels::Four, (0xffff_ffff_8000_0000, 0xffff_ffff_c000_0000)),
        trampoline: None,
    }
}

fn caller(sp: u64, kind: FrameKind) -> Caller {
    Caller { regs: Regs::new(CALLER, sp, 0), kind, regs_at: None, return_address: true }
}

#[test]
fn the_stack_may_go_down_only_when_it_switches() {
    let u = unwinder();
    // An IRQ stack above the task stack: leaving it goes down, to another 16 KiB block.
    let irq_sp = 0xffff_c900_0000_7f00;
    let task_sp = 0xffff_c900_0000_2e00;
    let callee = Regs::new(CALLER, irq_sp, 0);
    assert_eq!(u.check_caller(&callee, &caller(task_sp, FrameKind::Call)), Ok(()));
    // Within one stack it must go up.
    let low = irq_sp - 0x100;
    assert_eq!(
        u.check_caller(&callee, &caller(low, FrameKind::Call)),
        Err(StopReason::StackWentBackwards { sp: irq_sp, cfa: low })
    );
    assert_eq!(u.check_caller(&callee, &caller(irq_sp + 8, FrameKind::CallCfi)), Ok(()));
    // A pt_regs frame may point anywhere; a call frame may not return to user space.
    assert_eq!(u.check_caller(&callee, &caller(low, FrameKind::Interrupted)), Ok(()));
    let mut user = caller(irq_sp + 8, FrameKind::Call);
    user.regs.set(Reg::Rip, 0x246);
    assert_eq!(u.check_caller(&callee, &user), Err(StopReason::UserReturnAddress { pc: 0x246 }));
    user.kind = FrameKind::User;
    assert_eq!(u.check_caller(&callee, &user), Ok(()));
}

#[test]
fn stop_reasons_say_why() {
    let r = StopReason::OutsideKernelText { pc: 0xffff_ffff_c012_3456, in_module_area: true };
    assert!(r.to_string().contains("in no loaded module's code"), "{r}");
    let r = StopReason::OutsideKernelText { pc: 0xffff_8880_0012_3456, in_module_area: false };
    assert_eq!(r.to_string(), "pc 0xffff888000123456 is outside the kernel's code");
    let r = StopReason::UserReturnAddress { pc: 0x246 };
    assert!(r.to_string().contains("no pt_regs frame"), "{r}");
    let bt = Backtrace { frames: Vec::new(), stopped: Some(StopReason::Loop { pc: 0x10 }), stack: Default::default() };
    let json = serde_json::to_value(&bt).unwrap();
    assert_eq!(json["stopped"], "the unwind loops (frame 0x10 again)");
    let bt = Backtrace { frames: Vec::new(), stopped: None, stack: Default::default() };
    assert!(serde_json::to_value(&bt).unwrap().get("stopped").is_none());
}

fn row(reg: u16, offset: i64, rbp: RegRule) -> CfiRow {
    CfiRow { cfa: CfaRule::RegOffset { reg, offset }, rip: RegRule::Offset(-8), rbp }
}

#[tokio::test]
async fn cfi_step_at_function_entry() {
    // Just after `call`: the return address is at rsp, CFA = rsp + 8.
    let mut t = target();
    let sp = STACK + 0x100;
    t.write_u64(sp, CALLER);
    let regs = Regs::new(0xffff_ffff_81a1_85a0, sp, 0x1234).with(Reg::Rdi, 7);
    let next = step(&mut t, row(ktrace_symbols::DWARF_RSP, 8, RegRule::SameValue), regs).await.unwrap().unwrap();
    assert_eq!(next, Regs::new(CALLER, sp + 8, 0x1234).with(Reg::Rdi, 7));
}

#[tokio::test]
async fn cfi_step_in_rbp_frame() {
    // push %rbp; mov %rsp,%rbp; sub $0x40,%rsp: CFA = rbp + 16, rbp at CFA-16.
    let mut t = target();
    let bp = STACK + 0x200;
    t.write_u64(bp, STACK + 0x300).write_u64(bp + 8, CALLER);
    let regs = Regs::new(0xffff_ffff_81a1_0b10, bp - 0x40, bp);
    let next = step(&mut t, row(ktrace_symbols::DWARF_RBP, 16, RegRule::Offset(-16)), regs).await.unwrap().unwrap();
    assert_eq!((next.ip(), next.sp(), next.bp()), (CALLER, bp + 16, STACK + 0x300));
    // The same frame described from rsp (after the push, before the mov).
    let regs = regs.with(Reg::Rsp, bp).with(Reg::Rbp, 0xdead);
    let next = step(&mut t, row(ktrace_symbols::DWARF_RSP, 16, RegRule::Offset(-16)), regs).await.unwrap().unwrap();
    assert_eq!((next.ip(), next.sp(), next.bp()), (CALLER, bp + 16, STACK + 0x300));
    // DRAP-style CFA in r10.
    let regs = regs.with(Reg::Rsp, bp - 0x80).with(Reg::R10, bp + 16);
    let next = step(&mut t, row(10, 0, RegRule::SameValue), regs).await.unwrap().unwrap();
    assert_eq!((next.ip(), next.sp(), next.bp()), (CALLER, bp + 16, 0xdead));
}

#[tokio::test]
async fn cfi_step_refusals() {
    let mut t = target();
    let regs = Regs::new(0xffff_ffff_8100_0000, STACK + 0x100, STACK + 0x180);
    let undefined = CfiRow { rip: RegRule::Undefined, ..row(ktrace_symbols::DWARF_RSP, 8, RegRule::SameValue) };
    assert_eq!(step(&mut t, undefined, regs).await, Ok(None));
    let expr = CfiRow { cfa: CfaRule::Unsupported, rip: RegRule::Offset(-8), rbp: RegRule::SameValue };
    assert!(step(&mut t, expr, regs).await.unwrap_err().contains("expression"));
    assert!(step(&mut t, row(3, 8, RegRule::SameValue), regs).await.unwrap_err().contains("register 3"));
    // A CFA at or below sp on the same stack would loop.
    assert!(step(&mut t, row(ktrace_symbols::DWARF_RSP, 0, RegRule::SameValue), regs)
        .await
        .unwrap_err()
        .contains("backwards"));
    // Unmapped stack.
    let regs = regs.with(Reg::Rsp, 0xffff_c900_1000_0000);
    assert!(step(&mut t, row(ktrace_symbols::DWARF_RSP, 8, RegRule::SameValue), regs)
        .await
        .unwrap_err()
        .contains("unreadable"));
}

/// The test guest's vmlinux (or `KTRACE_VMLINUX`); `None` (skip) outside CI.
fn real_vmlinux() -> Option<std::sync::Arc<Vmlinux>> {
    let path = ktrace_testguest::test_vmlinux()?;
    Some(std::sync::Arc::new(Vmlinux::open(&path).expect("vmlinux opens")))
}

/// A whole unwind over synthetic memory: the stopped pc is in
/// `fixup_vdso_exception`, which has an undefined ORC entry in this
/// kernel but a `.debug_frame` FDE; the caller is then unwound by ORC.
#[tokio::test]
async fn unwind_falls_back_to_cfi() {
    let Some(vm) = real_vmlinux() else { return };
    const SLIDE: u64 = 8 * (2 << 20);
    let sym = |n: &str| vm.symbol(n).unwrap().addr.0;
    let stopped = sym("fixup_vdso_exception") + 4;
    let orc = vm.orc().unwrap();
    let o = orc.lookup(KernelAddr(stopped)).unwrap();
    if orc_usable(&o) || o.kind == OrcType::EndOfStack {
        panic!("fixup_vdso_exception has usable ORC now ({o:?}); pick another function for this test");
    }
    let caller = sym("_raw_spin_lock") + 1; // ORC at its entry: CFA = sp + 8
    let mut t = target();
    let banner = vm.banner().unwrap();
    t.map(sym("linux_banner") + SLIDE, banner.as_bytes());
    t.map(sym("__per_cpu_offset") + SLIDE, &0xffff_8880_0000_0000u64.to_le_bytes());
    let sp = STACK + 0x100;
    t.write_u64(sp, caller + SLIDE).write_u64(sp + 8, 0);
    let kernel = Kernel::attach(&mut t, vm.clone()).await.expect("attach to synthetic memory");
    assert_eq!(kernel.slide(), SLIDE);
    let mut u = Unwinder::new(&vm).unwrap();
    let regs = Regs::new(stopped + SLIDE, sp, 0);
    let bt = u.unwind(&kernel, &mut t, regs).await;
    let got: Vec<_> = bt.frames.iter().map(|f| (f.kind, f.function.as_deref(), f.offset)).collect();
    assert_eq!(
        got,
        [(FrameKind::Stopped, Some("fixup_vdso_exception"), 4), (FrameKind::CallCfi, Some("_raw_spin_lock"), 1),],
        "{bt:?}"
    );
    assert_eq!(bt.stopped, None);
}

/// A CPU caught on the first instruction of the syscall entry is still on
/// the user stack: the ORC entry there ends the stack, so the backtrace
/// ends there, without a "bad stack pointer".
#[tokio::test]
async fn the_syscall_entry_ends_the_stack_even_on_the_user_stack() {
    let Some(vm) = real_vmlinux() else { return };
    const SLIDE: u64 = 6 * (2 << 20);
    let sym = |n: &str| vm.symbol(n).unwrap().addr.0;
    let mut t = target();
    t.map(sym("linux_banner") + SLIDE, vm.banner().unwrap().as_bytes());
    t.map(sym("__per_cpu_offset") + SLIDE, &0xffff_8880_0000_0000u64.to_le_bytes());
    let kernel = Kernel::attach(&mut t, vm.clone()).await.expect("attach to synthetic memory");
    let mut u = Unwinder::new(&vm).unwrap();
    let regs = Regs::new(sym("entry_SYSCALL_64") + SLIDE, 0x7ffc_c5bd_3b08, 0);
    let bt = u.unwind(&kernel, &mut t, regs).await;
    assert_eq!(bt.frames.len(), 1, "{bt:?}");
    assert_eq!(bt.frames[0].function.as_deref(), Some("entry_SYSCALL_64"));
    assert_eq!(bt.stopped, None);
    // Anywhere else a user SP is a reason to stop.
    let regs = regs.with(Reg::Rip, sym("_raw_spin_lock") + SLIDE);
    let bt = u.unwind(&kernel, &mut t, regs).await;
    assert_eq!(bt.stopped, Some(StopReason::BadStackPointer { sp: 0x7ffc_c5bd_3b08 }));
}

/// 6.1's retpoline thunks say "end of stack" in ORC; a CPU stopped on
/// one's first instruction still has its caller, the return address at SP.
#[tokio::test]
async fn a_called_thunk_is_not_the_bottom_of_the_stack() {
    let Some(vm) = real_vmlinux() else { return };
    const SLIDE: u64 = 4 * (2 << 20);
    let sym = |n: &str| vm.symbol(n).unwrap();
    let thunk = sym("__x86_indirect_thunk_rax").addr.0;
    let orc = vm.orc().unwrap().lookup(KernelAddr(thunk)).unwrap();
    if orc.kind != OrcType::EndOfStack {
        return; // only kernels whose thunks end the stack (6.1) have the case
    }
    let (text, end) = (sym("_stext").addr.0, sym("_etext").addr.0);
    let code = vm.section_bytes_at(KernelAddr(text), (end - text) as usize).unwrap();
    let call = (0..code.len() - 5)
        .find(|&i| {
            code[i] == 0xe8
                && (text + i as u64 + 5)
                    .wrapping_add(i32::from_le_bytes(code[i + 1..i + 5].try_into().unwrap()) as i64 as u64)
                    == thunk
        })
        .expect("some function calls the rax thunk");
    let ra = text + call as u64 + 5;
    let mut t = target();
    t.map(sym("linux_banner").addr.0 + SLIDE, vm.banner().unwrap().as_bytes());
    t.map(sym("__per_cpu_offset").addr.0 + SLIDE, &0xffff_8880_0000_0000u64.to_le_bytes());
    let sp = STACK + 0x100;
    t.write_u64(sp, ra + SLIDE);
    let kernel = Kernel::attach(&mut t, vm.clone()).await.expect("attach to synthetic memory");
    let mut u = Unwinder::new(&vm).unwrap();
    let bt = u.unwind(&kernel, &mut t, Regs::new(thunk + SLIDE, sp, 0)).await;
    let got: Vec<_> = bt.frames.iter().take(2).map(|f| (f.kind, f.pc)).collect();
    assert_eq!(got, [(FrameKind::Stopped, thunk + SLIDE), (FrameKind::Call, ra + SLIDE)], "{bt:?}");
    // Not called (no return address at SP): the bottom, as ORC says.
    t.write_u64(sp, 0);
    let bt = u.unwind(&kernel, &mut t, Regs::new(thunk + SLIDE, sp, 0)).await;
    assert_eq!((bt.frames.len(), bt.stopped.clone()), (1, None), "{bt:?}");
}

/// The call sites of runtime-independent `target` in the vmlinux's text:
/// the return address after the first `call rel32` to it.
fn a_call_to(vm: &Vmlinux, target: u64) -> Option<u64> {
    let (text, end) = (vm.symbol("_stext").ok()?.addr.0, vm.symbol("_etext").ok()?.addr.0);
    let code = vm.section_bytes_at(KernelAddr(text), (end - text) as usize)?;
    let call = (0..code.len() - 5).find(|&i| {
        code[i] == 0xe8
            && (text + i as u64 + 5)
                .wrapping_add(i32::from_le_bytes(code[i + 1..i + 5].try_into().unwrap()) as i64 as u64)
                == target
    })?;
    Some(text + call as u64 + 5)
}

/// A kernel over synthetic memory for `vm`, slid by `slide`.
async fn synthetic_kernel(vm: &std::sync::Arc<Vmlinux>, slide: u64) -> (SyntheticTarget, Kernel) {
    let sym = |n: &str| vm.symbol(n).unwrap().addr.0;
    let mut t = target();
    t.map(sym("linux_banner") + slide, vm.banner().unwrap().as_bytes());
    t.map(sym("__per_cpu_offset") + slide, &0xffff_8880_0000_0000u64.to_le_bytes());
    let kernel = Kernel::attach(&mut t, vm.clone()).await.expect("attach to synthetic memory");
    (t, kernel)
}

/// 6.1's retpoline thunks end the stack in ORC past their first
/// instruction too: in the `pause; lfence; jmp` loop of the inner call,
/// `[SP]` is that call's return address and `[SP + 8]` the one into the
/// function that called the thunk.
#[tokio::test]
async fn a_thunk_is_not_the_bottom_of_the_stack_anywhere_inside() {
    let Some(vm) = real_vmlinux() else { return };
    const SLIDE: u64 = 10 * (2 << 20);
    let thunk_sym = vm.symbol("__x86_indirect_thunk_rax").unwrap();
    let thunk = thunk_sym.addr.0;
    let orc = vm.orc().unwrap();
    if orc.lookup(KernelAddr(thunk)).unwrap().kind != OrcType::EndOfStack {
        return; // only kernels whose thunks end the stack (6.1) have the case
    }
    // The inner call is the thunk's first instruction (5 bytes): the loop follows.
    let inner_ra = thunk + 5;
    let size = thunk_sym.size.max(16);
    let pc = (5..size)
        .map(|o| thunk + o)
        .find(|&pc| {
            orc.lookup(KernelAddr(pc)).is_none_or(|o| matches!(o.kind, OrcType::EndOfStack | OrcType::Undefined))
        })
        .expect("a pc inside the thunk that ends the stack");
    let ra = a_call_to(&vm, thunk).expect("some function calls the rax thunk");
    let (mut t, kernel) = synthetic_kernel(&vm, SLIDE).await;
    let mut u = Unwinder::new(&vm).unwrap();
    let sp = STACK + 0x100;
    t.write_u64(sp, inner_ra + SLIDE).write_u64(sp + 8, ra + SLIDE);
    let bt = u.unwind(&kernel, &mut t, Regs::new(pc + SLIDE, sp, 0)).await;
    let got: Vec<_> = bt.frames.iter().take(2).map(|f| (f.kind, f.pc, f.sp)).collect();
    assert_eq!(got, [(FrameKind::Stopped, pc + SLIDE, sp), (FrameKind::Call, ra + SLIDE, sp + 16)], "{bt:?}");
    // (The rax thunk is also the start of __x86_indirect_thunk_array.)
    assert!(bt.frames[0].function.as_deref().is_some_and(|f| f.starts_with("__x86_indirect_thunk")), "{bt:?}");
    // Right after the call to the thunk, anywhere in it: [SP] is the caller.
    t.write_u64(sp, ra + SLIDE);
    let bt = u.unwind(&kernel, &mut t, Regs::new(pc + SLIDE, sp, 0)).await;
    let got: Vec<_> = bt.frames.iter().take(2).map(|f| (f.kind, f.pc)).collect();
    assert_eq!(got, [(FrameKind::Stopped, pc + SLIDE), (FrameKind::Call, ra + SLIDE)], "{bt:?}");
    // No call to this thunk behind the words at SP: the bottom, as ORC says.
    t.write_u64(sp, inner_ra + SLIDE).write_u64(sp + 8, 0);
    let bt = u.unwind(&kernel, &mut t, Regs::new(pc + SLIDE, sp, 0)).await;
    assert_eq!((bt.frames.len(), bt.stopped.clone()), (1, None), "{bt:?}");
    // A return address after a call to another function is not this thunk's caller.
    let other = a_call_to(&vm, vm.symbol("_raw_spin_lock").unwrap().addr.0).expect("a call to _raw_spin_lock");
    t.write_u64(sp, other + SLIDE);
    let bt = u.unwind(&kernel, &mut t, Regs::new(pc + SLIDE, sp, 0)).await;
    assert_eq!((bt.frames.len(), bt.stopped.clone()), (1, None), "{bt:?}");
}

/// The 7.x test guest's vmlinux; `None` (skip) outside CI.
fn real_vmlinux_7() -> Option<std::sync::Arc<Vmlinux>> {
    let path = ktrace_testguest::test_vmlinux_of(ktrace_testguest::KernelSeries::V7)?;
    Some(std::sync::Arc::new(Vmlinux::open(&path).expect("vmlinux opens")))
}

/// A CPU on the `sysretq` path of `entry_SYSCALL_64`, once the user's
/// registers are back (seen at `entry_SYSCALL_64+316` on 7.x): the
/// caller is the user context, its pc in rcx and its stack in rsp (or,
/// at `pop %rsp`, in the word at SP). Found from the instructions, not
/// from offsets.
#[tokio::test]
async fn the_sysret_path_leads_to_user_space() {
    let Some(vm) = real_vmlinux_7() else { return };
    const SLIDE: u64 = 12 * (2 << 20);
    let entry = vm.symbol("entry_SYSCALL_64").unwrap();
    let code = vm.section_bytes_at(entry.addr, entry.size.max(0x200) as usize).unwrap();
    let sysretq = entry.addr.0
        + code.windows(3).position(|w| w == crate::x86::insn::SYSRETQ).expect("entry_SYSCALL_64 has a sysretq") as u64;
    // The swapgs before it (entry_SYSRETQ_unsafe_stack) and the pop %rsp before that.
    let swapgs = (sysretq - 24..sysretq)
        .find(|&a| vm.section_bytes_at(KernelAddr(a), 3) == Some(&crate::x86::insn::SWAPGS[..]))
        .expect("a swapgs before the sysretq");
    let pop_rsp = swapgs - 1;
    assert_eq!(vm.section_bytes_at(KernelAddr(pop_rsp), 1), Some(&[crate::x86::insn::POP_RSP][..]));
    let (mut t, kernel) = synthetic_kernel(&vm, SLIDE).await;
    let mut u = Unwinder::new(&vm).unwrap();
    const USER_PC: u64 = 0x7f3a_1b2c_3d4e;
    const USER_SP: u64 = 0x7ffc_c5bd_3b08;
    for pc in [swapgs, sysretq] {
        let regs = Regs::new(pc + SLIDE, USER_SP, 0).with(Reg::Rcx, USER_PC);
        let bt = u.unwind(&kernel, &mut t, regs).await;
        let got: Vec<_> = bt.frames.iter().map(|f| (f.kind, f.pc, f.sp)).collect();
        assert_eq!(
            got,
            [(FrameKind::Stopped, pc + SLIDE, USER_SP), (FrameKind::User, USER_PC, USER_SP)],
            "at 0x{pc:x}: {bt:?}"
        );
        assert_eq!(bt.frames[0].function.as_deref().map(|f| f.starts_with("entry_SYS")), Some(true), "{bt:?}");
        assert_eq!(bt.stopped, None, "{bt:?}");
    }
    // At pop %rsp: SP is the entry stack, the user's is the word there.
    let sp = STACK + 0x200;
    t.write_u64(sp, USER_SP);
    let regs = Regs::new(pop_rsp + SLIDE, sp, 0).with(Reg::Rcx, USER_PC);
    let bt = u.unwind(&kernel, &mut t, regs).await;
    let got: Vec<_> = bt.frames.iter().map(|f| (f.kind, f.pc, f.sp)).collect();
    assert_eq!(got, [(FrameKind::Stopped, pop_rsp + SLIDE, sp), (FrameKind::User, USER_PC, USER_SP)], "{bt:?}");
    assert_eq!(bt.stopped, None);
    // Without rcx the user pc is not known: as before, no user frame.
    let bt = u.unwind(&kernel, &mut t, Regs::new(sysretq + SLIDE, USER_SP, 0)).await;
    assert_eq!(bt.frames.len(), 1, "{bt:?}");
    // The syscall entry itself is not on the way out.
    let regs = Regs::new(entry.addr.0 + SLIDE, USER_SP, 0).with(Reg::Rcx, USER_PC);
    let bt = u.unwind(&kernel, &mut t, regs).await;
    assert_eq!((bt.frames.len(), bt.stopped.clone()), (1, None), "{bt:?}");
}

#[test]
fn orc_usability() {
    let e =
        |sp_reg, kind| OrcEntry { sp_offset: 8, bp_offset: 0, sp_reg, bp_reg: OrcReg::Undefined, kind, signal: false };
    assert!(orc_usable(&e(OrcReg::Sp, OrcType::Call)));
    assert!(orc_usable(&e(OrcReg::SpIndirect, OrcType::Regs)));
    assert!(!orc_usable(&e(OrcReg::Undefined, OrcType::Call)));
    assert!(!orc_usable(&e(OrcReg::Other(12), OrcType::Call)));
    assert!(!orc_usable(&e(OrcReg::Sp, OrcType::Other(7))));
    assert!(!orc_usable(&e(OrcReg::Sp, OrcType::Undefined)));
    assert!(!orc_usable(&e(OrcReg::Ax, OrcType::Call)));
}
