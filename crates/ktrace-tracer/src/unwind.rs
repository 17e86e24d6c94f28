//! Kernel stack unwinding with the ORC tables of the vmlinux.
//!
//! Follows the kernel's own `unwind_orc.c`: each ORC entry says how to find
//! the caller's stack pointer (CFA) from SP or BP, and whether the frame is a
//! call frame (return address below the CFA), a full `pt_regs` (an interrupt,
//! exception or syscall entry) or an IRET frame. Where GDB stops with `??` at
//! entry code, ktrace goes on through the saved `pt_regs` into the
//! interrupted context and says so in the frame.
//!
//! Code without usable ORC data falls back to the DWARF CFI of
//! `.debug_frame` ([`Vmlinux::cfi`]); frames found that way are
//! [`FrameKind::CallCfi`].

use std::collections::HashMap;

use ktrace_kernel::{Kernel, KernelError, Target};
use ktrace_symbols::{CfaRule, CfiRow, KernelAddr, OrcEntry, OrcReg, OrcType, RegRule, SourceFrame, Vmlinux};
use serde::Serialize;

/// The registers an unwind starts from (and finds again in `pt_regs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer.
    pub bp: u64,
    /// `rdi`, `rdx`, `r10`, `r13`: ORC may base the CFA on them in entry code.
    pub di: u64,
    /// `rdx`.
    pub dx: u64,
    /// `r10`.
    pub r10: u64,
    /// `r13`.
    pub r13: u64,
}

/// How a frame was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// The stopped instruction (frame 0).
    Stopped,
    /// A return address found on the stack.
    Call,
    /// A return address found on the stack with the DWARF CFI
    /// (`.debug_frame`) of the callee, which had no usable ORC data.
    CallCfi,
    /// The context interrupted by an interrupt, exception or syscall, restored
    /// from the `pt_regs` saved by entry code.
    Interrupted,
    /// The user-space context the kernel was entered from (end of the kernel stack).
    User,
}

/// One frame of a backtrace. Inlined functions at that address are expanded
/// in `source`, innermost first.
#[derive(Clone, Debug, Serialize)]
pub struct Frame {
    /// Runtime program counter.
    pub pc: u64,
    /// How the frame was reached.
    pub kind: FrameKind,
    /// `symbol` containing the pc (link-time symbol table).
    pub function: Option<String>,
    /// Offset of the pc in that symbol.
    pub offset: u64,
    /// Where the `pt_regs` were found for [`FrameKind::Interrupted`] and [`FrameKind::User`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regs_at: Option<u64>,
    /// Source locations, innermost inlined function first.
    pub source: Vec<SourceFrame>,
}

/// A backtrace and why it ended.
#[derive(Clone, Debug, Serialize)]
pub struct Backtrace {
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why unwinding stopped, when it was not the natural end of the stack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

/// Offsets in `struct pt_regs`.
#[derive(Clone, Copy, Debug)]
struct PtRegs {
    ip: u64,
    sp: u64,
    bp: u64,
    di: u64,
    dx: u64,
    r10: u64,
    r13: u64,
}

/// The most pcs whose symbolization is cached (a few MB).
const MAX_SYMBOLIZED: usize = 16_384;

/// A pc's symbol, offset and source frames, cached per (link pc, is return address).
type Symbolized = (Option<String>, u64, Vec<SourceFrame>);

/// Unwinds kernel stacks. Built once per vmlinux; caches symbolized pcs.
#[derive(Debug)]
pub struct Unwinder {
    pt: PtRegs,
    max_frames: usize,
    symbolized: HashMap<(u64, bool), Symbolized>,
}

const PAGE: u64 = 2048;

/// Reads stack words through aligned, cached 2 KiB chunks.
struct StackReader<'t, T> {
    target: &'t mut T,
    chunks: HashMap<u64, Option<Vec<u8>>>,
}

impl<T: Target> StackReader<'_, T> {
    async fn u64(&mut self, addr: u64) -> Option<u64> {
        let base = addr & !(PAGE - 1);
        if addr - base > PAGE - 8 {
            // Straddles two chunks: read it directly.
            return self.target.read_u64(addr).await.ok();
        }
        if !self.chunks.contains_key(&base) {
            let chunk = self.target.read_memory(base, PAGE as usize).await.ok();
            self.chunks.insert(base, chunk);
        }
        let chunk = self.chunks.get(&base)?.as_ref()?;
        let off = (addr - base) as usize;
        Some(u64::from_le_bytes(chunk[off..off + 8].try_into().ok()?))
    }
}

fn is_kernel(addr: u64) -> bool {
    addr >= 0xffff_8000_0000_0000
}

/// Whether the unwinder understands an ORC entry (others fall back to CFI).
fn orc_usable(o: &OrcEntry) -> bool {
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
    ) && !matches!(o.kind, OrcType::Other(_))
}

/// The value of DWARF x86-64 register `reg` in `regs`, for the registers
/// the CFA may be based on.
fn dwarf_reg(regs: &Regs, reg: u16) -> Option<u64> {
    Some(match reg {
        ktrace_symbols::DWARF_RSP => regs.sp,
        ktrace_symbols::DWARF_RBP => regs.bp,
        1 => regs.dx,
        5 => regs.di,
        10 => regs.r10,
        13 => regs.r13,
        _ => return None,
    })
}

/// One unwind step with a `.debug_frame` row: the caller's registers,
/// `Ok(None)` when the return address is undefined (the outermost frame),
/// or why the step is impossible.
async fn cfi_step<T: Target>(
    row: &CfiRow,
    state: &Regs,
    stack: &mut StackReader<'_, T>,
) -> Result<Option<Regs>, String> {
    let cfa = match row.cfa {
        CfaRule::RegOffset { reg, offset } => {
            let base =
                dwarf_reg(state, reg).ok_or_else(|| format!("the CFA is based on unsupported register {reg}"))?;
            base.wrapping_add(offset as u64)
        }
        CfaRule::Unsupported => return Err("the CFA is a DWARF expression".into()),
    };
    let ra_at = match row.rip {
        RegRule::Offset(o) => cfa.wrapping_add(o as u64),
        RegRule::Undefined => return Ok(None),
        other => return Err(format!("unsupported return address rule {other:?}")),
    };
    if cfa <= state.sp {
        return Err("stack pointer went backwards".into());
    }
    let ip = stack.u64(ra_at).await.ok_or_else(|| format!("unreadable stack at 0x{ra_at:x}"))?;
    let mut next = Regs { ip, sp: cfa, ..*state };
    if let RegRule::Offset(o) = row.rbp {
        let at = cfa.wrapping_add(o as u64);
        next.bp = stack.u64(at).await.ok_or_else(|| format!("unreadable saved rbp at 0x{at:x}"))?;
    }
    // SameValue keeps rbp; Undefined/Unsupported leave it as it was (best effort).
    Ok(Some(next))
}

impl Unwinder {
    /// Prepares an unwinder (reads the `pt_regs` layout from DWARF).
    pub fn new(vm: &Vmlinux) -> Result<Unwinder, KernelError> {
        let off = |m: &str| vm.member(&format!("pt_regs.{m}")).map(|l| l.offset);
        Ok(Unwinder {
            pt: PtRegs {
                ip: off("ip")?,
                sp: off("sp")?,
                bp: off("bp")?,
                di: off("di")?,
                dx: off("dx")?,
                r10: off("r10")?,
                r13: off("r13")?,
            },
            max_frames: 64,
            symbolized: HashMap::new(),
        })
    }

    /// Sets the most frames a backtrace may have.
    pub fn with_max_frames(mut self, n: usize) -> Self {
        self.max_frames = n.max(1);
        self
    }

    /// Unwinds from `regs` on a stopped CPU.
    pub async fn unwind<T: Target>(&mut self, kernel: &Kernel, target: &mut T, regs: Regs) -> Backtrace {
        let mut stack = StackReader { target, chunks: HashMap::new() };
        let mut frames = Vec::new();
        let mut state = regs;
        // A CPU stopped in user mode has no kernel stack to walk.
        let mut kind = if is_kernel(state.ip) { FrameKind::Stopped } else { FrameKind::User };
        let mut regs_at = None;
        // The last pt_regs seen, for ORC entries based on DI/DX/R10/R13.
        let mut truncated = None;
        loop {
            let is_return_address = matches!(kind, FrameKind::Call | FrameKind::CallCfi);
            frames.push(self.frame(kernel, state.ip, kind, regs_at, is_return_address));
            if kind == FrameKind::User {
                break;
            }
            if frames.len() >= self.max_frames {
                truncated = Some(format!("stopped after {} frames", self.max_frames));
                break;
            }
            let lookup = kernel.link(if is_return_address { state.ip - 1 } else { state.ip });
            let orc = kernel.vmlinux().orc().ok().and_then(|t| t.lookup(lookup));
            if orc.is_some_and(|o| o.end) {
                break;
            }
            let Some(orc) = orc.filter(orc_usable) else {
                // No (usable) ORC data here: try the DWARF CFI.
                let row = kernel.vmlinux().cfi(lookup);
                match row {
                    Ok(Some(row)) => match cfi_step(&row, &state, &mut stack).await {
                        Ok(Some(next)) => {
                            if next.ip == 0 {
                                break;
                            }
                            if !is_kernel(next.ip) {
                                truncated = Some(format!("return address 0x{:x} is not in the kernel", next.ip));
                                break;
                            }
                            state = next;
                            kind = FrameKind::CallCfi;
                            regs_at = None;
                            continue;
                        }
                        // The CFI marks the outermost frame.
                        Ok(None) => {}
                        Err(why) => truncated = Some(format!("DWARF CFI at 0x{:x}: {why}", state.ip)),
                    },
                    Ok(None) | Err(_) => match orc {
                        None => truncated = Some(format!("no ORC or DWARF CFI data for 0x{:x}", state.ip)),
                        // As before: an undefined sp_reg ends the stack; other unknowns say why.
                        Some(o) if o.sp_reg == OrcReg::Undefined => {}
                        Some(o) => truncated = Some(format!("unsupported ORC entry {o:?} at 0x{:x}", state.ip)),
                    },
                }
                break;
            };
            let (base, indirect) = match orc.sp_reg {
                OrcReg::Sp => (state.sp.wrapping_add(orc.sp_offset as i64 as u64), false),
                OrcReg::Bp => (state.bp.wrapping_add(orc.sp_offset as i64 as u64), false),
                OrcReg::SpIndirect => (state.sp, true),
                OrcReg::BpIndirect => (state.bp.wrapping_add(orc.sp_offset as i64 as u64), true),
                OrcReg::Di => (state.di.wrapping_add(orc.sp_offset as i64 as u64), false),
                OrcReg::Dx => (state.dx.wrapping_add(orc.sp_offset as i64 as u64), false),
                OrcReg::R10 => (state.r10.wrapping_add(orc.sp_offset as i64 as u64), false),
                OrcReg::R13 => (state.r13.wrapping_add(orc.sp_offset as i64 as u64), false),
                // Excluded by `orc_usable`.
                _ => unreachable!("unusable ORC entry {orc:?}"),
            };
            let mut cfa = base;
            if indirect {
                let Some(v) = stack.u64(base).await else {
                    truncated = Some(format!("unreadable stack at 0x{base:x}"));
                    break;
                };
                cfa = v;
                if orc.sp_reg == OrcReg::SpIndirect {
                    cfa = cfa.wrapping_add(orc.sp_offset as i64 as u64);
                }
            }
            let mut next = state;
            match orc.kind {
                OrcType::Call => {
                    let Some(ip) = stack.u64(cfa.wrapping_sub(8)).await else {
                        truncated = Some(format!("unreadable stack at 0x{:x}", cfa - 8));
                        break;
                    };
                    if cfa <= state.sp {
                        truncated = Some("stack pointer went backwards".into());
                        break;
                    }
                    next.ip = ip;
                    next.sp = cfa;
                    kind = FrameKind::Call;
                    regs_at = None;
                }
                OrcType::Regs | OrcType::RegsPartial => {
                    // REGS: cfa points at a full pt_regs. REGS_PARTIAL: at the IRET frame inside one.
                    let regs = if orc.kind == OrcType::Regs { cfa } else { cfa.wrapping_sub(self.pt.ip) };
                    let (Some(ip), Some(sp)) = (stack.u64(regs + self.pt.ip).await, stack.u64(regs + self.pt.sp).await)
                    else {
                        truncated = Some(format!("unreadable pt_regs at 0x{regs:x}"));
                        break;
                    };
                    next.ip = ip;
                    next.sp = sp;
                    if orc.kind == OrcType::Regs {
                        for (field, off) in [
                            (&mut next.bp, self.pt.bp),
                            (&mut next.di, self.pt.di),
                            (&mut next.dx, self.pt.dx),
                            (&mut next.r10, self.pt.r10),
                            (&mut next.r13, self.pt.r13),
                        ] {
                            if let Some(v) = stack.u64(regs + off).await {
                                *field = v;
                            }
                        }
                    }
                    kind = if is_kernel(ip) { FrameKind::Interrupted } else { FrameKind::User };
                    regs_at = Some(regs);
                }
                OrcType::Other(_) => unreachable!("unusable ORC entry {orc:?}"),
            }
            match orc.bp_reg {
                OrcReg::PrevSp => match stack.u64(cfa.wrapping_add(orc.bp_offset as i64 as u64)).await {
                    Some(bp) => next.bp = bp,
                    None => {
                        truncated = Some("unreadable saved rbp".into());
                        break;
                    }
                },
                OrcReg::Bp => {
                    if let Some(bp) = stack.u64(state.bp.wrapping_add(orc.bp_offset as i64 as u64)).await {
                        next.bp = bp;
                    }
                }
                _ => {}
            }
            if next.ip == 0 {
                break;
            }
            if kind != FrameKind::User && !is_kernel(next.ip) {
                truncated = Some(format!("return address 0x{:x} is not in the kernel", next.ip));
                break;
            }
            state = next;
        }
        Backtrace { frames, truncated }
    }

    fn frame(&mut self, kernel: &Kernel, pc: u64, kind: FrameKind, regs_at: Option<u64>, ret: bool) -> Frame {
        if kind == FrameKind::User {
            return Frame { pc, kind, function: None, offset: 0, regs_at, source: Vec::new() };
        }
        let vm = kernel.vmlinux();
        let link = kernel.link(pc);
        if self.symbolized.len() >= MAX_SYMBOLIZED && !self.symbolized.contains_key(&(link.0, ret)) {
            // A long trace over a wide part of the kernel: keep memory bounded.
            self.symbolized.clear();
        }
        let (function, offset, source) = self
            .symbolized
            .entry((link.0, ret))
            .or_insert_with(|| {
                let sym = vm.symbolize(link);
                let line_addr = if ret { KernelAddr(link.0 - 1) } else { link };
                let source = vm.frames(line_addr).unwrap_or_default();
                (sym.as_ref().map(|s| s.name.to_string()), sym.map_or(0, |s| s.offset), source)
            })
            .clone();
        Frame { pc, kind, function, offset, regs_at, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrace_kernel::synthetic::SyntheticTarget;

    const STACK: u64 = 0xffff_c900_0000_0000;
    const CALLER: u64 = 0xffff_ffff_8123_4567;

    fn target() -> SyntheticTarget {
        let mut t = SyntheticTarget::new(1);
        t.map(STACK, &[0u8; 4096]);
        t
    }

    async fn step(t: &mut SyntheticTarget, row: CfiRow, regs: Regs) -> Result<Option<Regs>, String> {
        let mut stack = StackReader { target: t, chunks: HashMap::new() };
        cfi_step(&row, &regs, &mut stack).await
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
        let regs = Regs { ip: 0xffff_ffff_81a1_85a0, sp, bp: 0x1234, di: 7, ..Regs::default() };
        let next = step(&mut t, row(ktrace_symbols::DWARF_RSP, 8, RegRule::SameValue), regs).await.unwrap().unwrap();
        assert_eq!(next, Regs { ip: CALLER, sp: sp + 8, bp: 0x1234, di: 7, ..Regs::default() });
    }

    #[tokio::test]
    async fn cfi_step_in_rbp_frame() {
        // push %rbp; mov %rsp,%rbp; sub $0x40,%rsp: CFA = rbp + 16, rbp at CFA-16.
        let mut t = target();
        let bp = STACK + 0x200;
        t.write_u64(bp, STACK + 0x300).write_u64(bp + 8, CALLER);
        let regs = Regs { ip: 0xffff_ffff_81a1_0b10, sp: bp - 0x40, bp, ..Regs::default() };
        let next = step(&mut t, row(ktrace_symbols::DWARF_RBP, 16, RegRule::Offset(-16)), regs).await.unwrap().unwrap();
        assert_eq!((next.ip, next.sp, next.bp), (CALLER, bp + 16, STACK + 0x300));
        // The same frame described from rsp (after the push, before the mov).
        let regs = Regs { sp: bp, bp: 0xdead, ..regs };
        let next = step(&mut t, row(ktrace_symbols::DWARF_RSP, 16, RegRule::Offset(-16)), regs).await.unwrap().unwrap();
        assert_eq!((next.ip, next.sp, next.bp), (CALLER, bp + 16, STACK + 0x300));
        // DRAP-style CFA in r10.
        let regs = Regs { sp: bp - 0x80, r10: bp + 16, ..regs };
        let next = step(&mut t, row(10, 0, RegRule::SameValue), regs).await.unwrap().unwrap();
        assert_eq!((next.ip, next.sp, next.bp), (CALLER, bp + 16, 0xdead));
    }

    #[tokio::test]
    async fn cfi_step_refusals() {
        let mut t = target();
        let regs = Regs { ip: 0xffff_ffff_8100_0000, sp: STACK + 0x100, bp: STACK + 0x180, ..Regs::default() };
        let undefined = CfiRow { rip: RegRule::Undefined, ..row(ktrace_symbols::DWARF_RSP, 8, RegRule::SameValue) };
        assert_eq!(step(&mut t, undefined, regs).await, Ok(None));
        let expr = CfiRow { cfa: CfaRule::Unsupported, rip: RegRule::Offset(-8), rbp: RegRule::SameValue };
        assert!(step(&mut t, expr, regs).await.unwrap_err().contains("expression"));
        assert!(step(&mut t, row(3, 8, RegRule::SameValue), regs).await.unwrap_err().contains("register 3"));
        // A CFA at or below sp would loop.
        assert!(step(&mut t, row(ktrace_symbols::DWARF_RSP, 0, RegRule::SameValue), regs)
            .await
            .unwrap_err()
            .contains("backwards"));
        // Unmapped stack.
        let regs = Regs { sp: 0xffff_c900_1000_0000, ..regs };
        assert!(step(&mut t, row(ktrace_symbols::DWARF_RSP, 8, RegRule::SameValue), regs)
            .await
            .unwrap_err()
            .contains("unreadable"));
    }

    /// The real vmlinux, or `None` (skip) when missing outside `CI=true`.
    fn real_vmlinux() -> Option<std::sync::Arc<Vmlinux>> {
        let home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
        let candidates: Vec<std::path::PathBuf> = match std::env::var_os("KTRACE_VMLINUX") {
            Some(p) => vec![p.into()],
            None => ["6.1.0-56", "6.1.0-56-cloud-amd64"]
                .iter()
                .map(|d| home.join(".cache/ktrace/guest").join(d).join("vmlinux"))
                .collect(),
        };
        match candidates.iter().find(|p| p.exists()) {
            Some(p) => Some(std::sync::Arc::new(Vmlinux::open(p).expect("vmlinux opens"))),
            None if std::env::var("CI").as_deref() == Ok("true") => panic!("no vmlinux at {candidates:?} and CI=true"),
            None => {
                eprintln!("skipping: no vmlinux at {candidates:?} (set KTRACE_VMLINUX)");
                None
            }
        }
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
        if orc_usable(&o) || o.end {
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
        let regs = Regs { ip: stopped + SLIDE, sp, bp: 0, ..Regs::default() };
        let bt = u.unwind(&kernel, &mut t, regs).await;
        let got: Vec<_> = bt.frames.iter().map(|f| (f.kind, f.function.as_deref(), f.offset)).collect();
        assert_eq!(
            got,
            [(FrameKind::Stopped, Some("fixup_vdso_exception"), 4), (FrameKind::CallCfi, Some("_raw_spin_lock"), 1),],
            "{bt:?}"
        );
        assert_eq!(bt.truncated, None);
    }

    #[test]
    fn orc_usability() {
        let e =
            |sp_reg, kind| OrcEntry { sp_offset: 8, bp_offset: 0, sp_reg, bp_reg: OrcReg::Undefined, kind, end: false };
        assert!(orc_usable(&e(OrcReg::Sp, OrcType::Call)));
        assert!(orc_usable(&e(OrcReg::SpIndirect, OrcType::Regs)));
        assert!(!orc_usable(&e(OrcReg::Undefined, OrcType::Call)));
        assert!(!orc_usable(&e(OrcReg::Other(12), OrcType::Call)));
        assert!(!orc_usable(&e(OrcReg::Sp, OrcType::Other(3))));
    }
}
