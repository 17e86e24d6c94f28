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

pub use crate::regs::Regs;
use crate::trampoline::{FrameMap, FRAME_NAME};
use crate::x86::paging::PagingLevels;
use crate::x86::AddressSpace;
use crate::{Kernel, Modules, Target};
use ktrace_symbols::{
    CfaRule, CfiRow, KernelAddr, OrcEntry, OrcReg, OrcType, RegRule, SourceFrame, SymbolError, Vmlinux,
};
use serde::Serialize;

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
    #[serde(serialize_with = "ktrace_symbols::hex::serialize")]
    pub pc: u64,
    /// How the frame was reached.
    pub kind: FrameKind,
    /// `symbol` containing the pc (the vmlinux's symbol table, or a module's kallsyms).
    pub function: Option<String>,
    /// The module whose code this is (absent for the vmlinux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Offset of the pc in that symbol.
    pub offset: u64,
    /// Where the `pt_regs` were found for [`FrameKind::Interrupted`] and [`FrameKind::User`].
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ktrace_symbols::hex::option")]
    pub regs_at: Option<u64>,
    /// Source locations, innermost inlined function first.
    pub source: Vec<SourceFrame>,
    /// The stack pointer in this frame.
    #[serde(skip)]
    pub sp: u64,
    /// The frame's canonical frame address (its caller's stack pointer
    /// before the call), where the step to the caller knew it.
    #[serde(skip)]
    pub cfa: Option<u64>,
    /// The pc is a return address (its scope is looked up at pc - 1).
    #[serde(skip)]
    pub return_address: bool,
    /// The arguments of the function and of each function inlined here,
    /// innermost first, when asked for ([`crate::values::FrameArguments`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<crate::values::argument::ScopeArguments>,
}

/// The placement fields of a frame before the walk fills them.
fn unplaced(return_address: bool) -> Frame {
    Frame {
        pc: 0,
        kind: FrameKind::Call,
        function: None,
        module: None,
        offset: 0,
        regs_at: None,
        source: Vec::new(),
        sp: 0,
        cfa: None,
        return_address,
        args: Vec::new(),
    }
}

/// A backtrace and why it ended.
#[derive(Clone, Debug, Serialize)]
pub struct Backtrace {
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why unwinding stopped, when it was not the natural end of the stack
    /// (in JSON: the reason as text).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_text")]
    pub stopped: Option<StopReason>,
    /// The stack pages the unwind read (by page address), for readers of
    /// the frames' values that would read them again.
    #[serde(skip)]
    pub stack: StackPages,
}

/// Stack pages read during an unwind, by page address.
pub type StackPages = std::sync::Arc<HashMap<u64, Vec<u8>>>;

fn as_text<S: serde::Serializer>(why: &Option<StopReason>, s: S) -> Result<S::Ok, S::Error> {
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
        }
    }
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
    /// The size (and alignment) of a task stack: SPs in one such block are
    /// on the same stack.
    stack_block: u64,
    symbolized: HashMap<(u64, bool), Symbolized>,
    /// The loaded modules, once a pc outside the vmlinux needed them.
    modules: Option<Modules>,
    /// When the module list was last read.
    modules_read_at: Option<std::time::Instant>,
    /// The address space of the kernel being unwound (set by each unwind).
    space: AddressSpace,
    /// ktrace's trampoline in the guest, when there is one: its frames are
    /// stepped through with their known stack effect.
    trampoline: Option<FrameMap>,
}

/// The unit the unwinder reads stacks in (the pages of [`Backtrace::stack`]).
pub const PAGE: u64 = 2048;

/// Reads stack words through aligned, cached 2 KiB chunks.
struct StackReader<'t, T> {
    target: &'t mut T,
    chunks: HashMap<u64, Option<Vec<u8>>>,
    /// The stack block size: a miss reads on to the end of its block in
    /// one pipelined batch (an unwind walks up the stack towards its end,
    /// where the entry code's `pt_regs` are).
    block: u64,
}

impl<T: Target> StackReader<'_, T> {
    async fn u64(&mut self, addr: u64) -> Option<u64> {
        let base = addr & !(PAGE - 1);
        if addr - base > PAGE - 8 {
            // Straddles two chunks: read it directly.
            return self.target.read_u64(addr).await.ok();
        }
        if !self.chunks.contains_key(&base) {
            let end = (base | (self.block - 1)).wrapping_add(1);
            let bases: Vec<u64> = (0..)
                .map(|k| base + k * PAGE)
                .take_while(|&b| b < end || b == base)
                .filter(|b| !self.chunks.contains_key(b))
                .collect();
            let reqs: Vec<(u64, usize)> = bases.iter().map(|&b| (b, PAGE as usize)).collect();
            match self.target.read_memory_many(&reqs).await {
                Ok(chunks) => self.chunks.extend(bases.into_iter().zip(chunks)),
                Err(_) => {
                    self.chunks.insert(base, None);
                }
            }
        }
        let chunk = self.chunks.get(&base)?.as_ref()?;
        let off = (addr - base) as usize;
        Some(u64::from_le_bytes(chunk[off..off + 8].try_into().ok()?))
    }

    /// A stack word, or the reason to stop.
    async fn word(&mut self, what: &'static str, addr: u64) -> Result<u64, StopReason> {
        self.u64(addr).await.ok_or(StopReason::UnreadableStack { what, addr })
    }
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

/// The caller's frame as one unwind step found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Caller {
    regs: Regs,
    kind: FrameKind,
    /// Where the `pt_regs` were, for interrupted and user frames.
    regs_at: Option<u64>,
    /// The pc is a return address (look it up at pc - 1), not an
    /// interrupted instruction.
    return_address: bool,
}

/// What one unwind step says.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// The caller's frame.
    Next(Caller),
    /// The natural bottom of the stack.
    End,
    /// The unwind cannot go on.
    Stop(StopReason),
}

/// A CPU stopped on the first instruction of code whose ORC entry says
/// "end of stack" although it was called: 6.1's retpoline thunks
/// (`__x86_indirect_thunk_*`, `UNWIND_HINT_EMPTY`), which indirect calls
/// go through. Nothing has touched
/// the stack yet, so when SP is a kernel address and `[SP]` is a return
/// address in the vmlinux (an address in its code right after a `call`),
/// that is the caller. `None`: a real bottom of the stack.
async fn called_at_entry<T: Target>(kernel: &Kernel, frame: &Caller, stack: &mut StackReader<'_, T>) -> Option<Caller> {
    let state = &frame.regs;
    let vm = kernel.vmlinux();
    if frame.return_address || !kernel.space().is_kernel(state.sp) || vm.symbolize(kernel.link(state.ip))?.offset != 0 {
        return None;
    }
    let ra = stack.u64(state.sp).await?;
    let link = kernel.link(ra);
    let before = vm.section_bytes_at(KernelAddr(link.0.wrapping_sub(7)), 7);
    let is_return_address = vm.is_code(link) && before.is_some_and(crate::x86::insn::ends_with_call);
    is_return_address.then(|| Caller {
        regs: Regs { ip: ra, sp: state.sp.wrapping_add(8), ..*state },
        kind: FrameKind::Call,
        regs_at: None,
        return_address: true,
    })
}

/// One unwind step with a `.debug_frame` row: the caller's registers,
/// [`Step::End`] when the return address is undefined (the outermost frame).
async fn cfi_step<T: Target>(row: &CfiRow, state: &Regs, stack: &mut StackReader<'_, T>) -> Step {
    let unsupported = |why: String| Step::Stop(StopReason::UnsupportedCfi { pc: state.ip, why });
    let cfa = match row.cfa {
        CfaRule::RegOffset { reg, offset } => match dwarf_reg(state, reg) {
            Some(base) => base.wrapping_add(offset as u64),
            None => return unsupported(format!("the CFA is based on unsupported register {reg}")),
        },
        CfaRule::Unsupported => return unsupported("the CFA is a DWARF expression".into()),
    };
    let ra_at = match row.rip {
        RegRule::Offset(o) => cfa.wrapping_add(o as u64),
        RegRule::Undefined => return Step::End,
        other => return unsupported(format!("unsupported return address rule {other:?}")),
    };
    let ip = match stack.word("return address", ra_at).await {
        Ok(ip) => ip,
        Err(why) => return Step::Stop(why),
    };
    let mut next = Regs { ip, sp: cfa, ..*state };
    if let RegRule::Offset(o) = row.rbp {
        match stack.word("saved rbp", cfa.wrapping_add(o as u64)).await {
            Ok(bp) => next.bp = bp,
            Err(why) => return Step::Stop(why),
        }
    }
    // SameValue keeps rbp; Undefined/Unsupported leave it as it was (best effort).
    Step::Next(Caller { regs: next, kind: FrameKind::CallCfi, regs_at: None, return_address: true })
}

impl Unwinder {
    /// Prepares an unwinder (reads the `pt_regs` layout and the stack size
    /// from the vmlinux).
    pub fn new(vm: &Vmlinux) -> Result<Unwinder, SymbolError> {
        let off = |m: &str| vm.member(&format!("pt_regs.{m}")).map(|l| l.offset);
        // A vmlinux without init's stack (test fixtures): x86-64's 16 KiB.
        let stack_block = crate::x86::space::thread_size(vm).unwrap_or(16 << 10);
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
            stack_block,
            symbolized: HashMap::new(),
            modules: None,
            modules_read_at: None,
            space: AddressSpace::minimal(PagingLevels::Four, crate::x86::space::image_mapping(vm, None)),
            trampoline: None,
        })
    }

    /// Takes a module list just read (e.g. to resolve breakpoints), so that
    /// the next backtraces do not read it again.
    pub fn know_modules(&mut self, modules: Modules) {
        self.modules = Some(modules);
        self.modules_read_at = Some(std::time::Instant::now());
    }

    /// Tells the unwinder where ktrace's trampoline is (or that there is
    /// none): a pc inside it is shown as [`crate::trampoline::FRAME_NAME`]
    /// and stepped through into the patched function.
    pub fn know_trampoline(&mut self, map: Option<FrameMap>) {
        self.trampoline = map;
    }

    /// Sets the most frames a backtrace may have.
    pub fn with_max_frames(mut self, n: usize) -> Self {
        self.max_frames = n.max(1);
        self
    }

    /// Unwinds from `regs` on a stopped CPU.
    pub async fn unwind<T: Target>(&mut self, kernel: &Kernel, target: &mut T, regs: Regs) -> Backtrace {
        self.unwind_from(kernel, target, regs, false).await
    }

    /// Unwinds a task that is not running, from the frame `switch_to` saved
    /// ([`Kernel::saved_regs`]): its pc is a return address.
    pub async fn unwind_saved<T: Target>(&mut self, kernel: &Kernel, target: &mut T, regs: Regs) -> Backtrace {
        self.unwind_from(kernel, target, regs, true).await
    }

    async fn unwind_from<T: Target>(&mut self, kernel: &Kernel, target: &mut T, regs: Regs, saved: bool) -> Backtrace {
        self.space.clone_from(kernel.space());
        let mut stack = StackReader { target, chunks: HashMap::new(), block: self.stack_block };
        let mut frames = Vec::new();
        // A CPU stopped in user mode has no kernel stack to walk.
        let first_kind = match (self.space.is_kernel(regs.ip), saved) {
            (false, _) => FrameKind::User,
            (true, false) => FrameKind::Stopped,
            (true, true) => FrameKind::Call,
        };
        let mut frame = Caller { regs, kind: first_kind, regs_at: None, return_address: saved };
        let mut seen = std::collections::HashSet::new();
        let stopped = loop {
            let pc = frame.regs.ip;
            // ktrace's own code: its stack effect is known at every pc.
            if let Some(tf) = self.trampoline.as_ref().and_then(|m| m.at(pc)) {
                frames.push(Frame {
                    pc,
                    kind: frame.kind,
                    function: Some(FRAME_NAME.to_string()),
                    offset: tf.offset,
                    regs_at: frame.regs_at,
                    sp: frame.regs.sp,
                    ..unplaced(frame.return_address)
                });
                if frames.len() >= self.max_frames {
                    break Some(StopReason::MaxFrames(self.max_frames));
                }
                let at = frame.regs.sp.wrapping_add(tf.depth);
                let ret = match stack.word("return address into the traced function", at).await {
                    Ok(v) => v,
                    Err(why) => break Some(why),
                };
                let caller = Caller {
                    regs: Regs { ip: ret, sp: at.wrapping_add(8), ..frame.regs },
                    kind: FrameKind::Call,
                    regs_at: None,
                    return_address: true,
                };
                if let Err(why) = self.check_caller(&frame.regs, &caller) {
                    break Some(why);
                }
                if let Some(last) = frames.last_mut() {
                    last.cfa = Some(caller.regs.sp);
                }
                frame = caller;
                continue;
            }
            let in_vmlinux = kernel.vmlinux().is_code(kernel.link(pc));
            let in_module =
                frame.kind != FrameKind::User && !in_vmlinux && self.know_module(kernel, stack.target, pc).await;
            let shown = match in_module {
                true => self.module_frame(pc, frame.kind, frame.regs_at, frame.return_address),
                false => None,
            };
            let mut shown =
                shown.unwrap_or_else(|| self.frame(kernel, pc, frame.kind, frame.regs_at, frame.return_address));
            shown.sp = frame.regs.sp;
            frames.push(shown);
            if frame.kind == FrameKind::User {
                break None;
            }
            if let Err(why) = self.check_frame(&frame.regs, in_vmlinux || in_module) {
                break Some(why);
            }
            if frames.len() >= self.max_frames {
                break Some(StopReason::MaxFrames(self.max_frames));
            }
            if !seen.insert((frame.regs.ip, frame.regs.sp)) {
                break Some(StopReason::Loop { pc: frame.regs.ip });
            }
            let caller = match self.step(kernel, &mut stack, &frame).await {
                Step::Next(caller) => caller,
                Step::End => break None,
                Step::Stop(why) => break Some(why),
            };
            if let Err(why) = self.check_caller(&frame.regs, &caller) {
                break Some(why);
            }
            if matches!(caller.kind, FrameKind::Call | FrameKind::CallCfi) {
                if let Some(last) = frames.last_mut() {
                    last.cfa = Some(caller.regs.sp);
                }
            }
            if caller.regs.ip == 0 {
                break None;
            }
            frame = caller;
        };
        let pages = stack.chunks.into_iter().filter_map(|(base, c)| Some((base, c?))).collect();
        Backtrace { frames, stopped, stack: std::sync::Arc::new(pages) }
    }

    /// A frame the unwinder is about to step from must be in kernel code
    /// (its stack is checked by [`Unwinder::step`], past the end of the stack).
    fn check_frame(&self, regs: &Regs, in_code: bool) -> Result<(), StopReason> {
        if !in_code {
            return Err(StopReason::OutsideKernelText { pc: regs.ip, in_module_area: self.space.is_module(regs.ip) });
        }
        Ok(())
    }

    /// The caller a step found must make sense: a call frame returns to the
    /// kernel, and the stack grows towards the caller unless the step
    /// switched stacks (from an IRQ or exception stack to the task's).
    fn check_caller(&self, callee: &Regs, caller: &Caller) -> Result<(), StopReason> {
        if caller.kind == FrameKind::User {
            return Ok(());
        }
        if !self.space.is_kernel(caller.regs.ip) && caller.regs.ip != 0 {
            return Err(StopReason::UserReturnAddress { pc: caller.regs.ip });
        }
        let same_stack = callee.sp / self.stack_block == caller.regs.sp / self.stack_block;
        if caller.kind != FrameKind::Interrupted && same_stack && caller.regs.sp <= callee.sp {
            return Err(StopReason::StackWentBackwards { sp: callee.sp, cfa: caller.regs.sp });
        }
        Ok(())
    }

    /// One step: ORC where it covers the pc, else the DWARF CFI (for
    /// module code: the module's ORC table, read from guest memory).
    async fn step<T: Target>(&self, kernel: &Kernel, stack: &mut StackReader<'_, T>, frame: &Caller) -> Step {
        let state = &frame.regs;
        let at = if frame.return_address { state.ip - 1 } else { state.ip };
        // At the bottom of the stack (e.g. a CPU at entry_SYSCALL_64's first
        // instruction, still on the user stack) SP need not be a kernel address.
        let bad_sp = || Step::Stop(StopReason::BadStackPointer { sp: state.sp });
        if let Some(module) = self.modules.as_ref().and_then(|m| m.by_code_addr(state.ip)) {
            return match module.orc.as_ref().and_then(|t| t.lookup(KernelAddr(at))) {
                Some(o) if o.kind == OrcType::EndOfStack => Step::End,
                _ if !self.space.is_kernel(state.sp) => bad_sp(),
                Some(o) if orc_usable(&o) => self.orc_step(&o, state, stack).await,
                Some(o) if o.kind != OrcType::Undefined => {
                    Step::Stop(StopReason::UnsupportedOrc { pc: state.ip, entry: o })
                }
                _ => Step::Stop(StopReason::NoUnwindData { pc: state.ip }),
            };
        }
        let lookup = kernel.link(at);
        let orc = match kernel.vmlinux().orc() {
            Ok(t) => t.lookup(lookup),
            // No tables at all: the DWARF CFI may still cover the code.
            Err(ktrace_symbols::SymbolError::NoOrc { .. }) => None,
            Err(e) => return Step::Stop(StopReason::NoOrcTables(e.to_string())),
        };
        match orc {
            Some(o) if o.kind == OrcType::EndOfStack => match called_at_entry(kernel, frame, stack).await {
                Some(caller) => Step::Next(caller),
                None => Step::End,
            },
            _ if !self.space.is_kernel(state.sp) => bad_sp(),
            Some(o) if orc_usable(&o) => self.orc_step(&o, state, stack).await,
            // No (usable) ORC data here: try the DWARF CFI.
            _ => match kernel.vmlinux().cfi(lookup) {
                Ok(Some(row)) => cfi_step(&row, state, stack).await,
                Ok(None) | Err(_) => match orc {
                    Some(o) if o.kind != OrcType::Undefined => {
                        Step::Stop(StopReason::UnsupportedOrc { pc: state.ip, entry: o })
                    }
                    _ => Step::Stop(StopReason::NoUnwindData { pc: state.ip }),
                },
            },
        }
    }

    /// One step with an ORC entry (call frame or `pt_regs`).
    async fn orc_step<T: Target>(&self, orc: &OrcEntry, state: &Regs, stack: &mut StackReader<'_, T>) -> Step {
        let off = orc.sp_offset as i64 as u64;
        let (base, indirect) = match orc.sp_reg {
            OrcReg::Sp => (state.sp.wrapping_add(off), false),
            OrcReg::Bp => (state.bp.wrapping_add(off), false),
            OrcReg::SpIndirect => (state.sp, true),
            OrcReg::BpIndirect => (state.bp.wrapping_add(off), true),
            OrcReg::Di => (state.di.wrapping_add(off), false),
            OrcReg::Dx => (state.dx.wrapping_add(off), false),
            OrcReg::R10 => (state.r10.wrapping_add(off), false),
            OrcReg::R13 => (state.r13.wrapping_add(off), false),
            _ => return Step::Stop(StopReason::UnsupportedOrc { pc: state.ip, entry: *orc }),
        };
        let mut cfa = base;
        if indirect {
            cfa = match stack.word("saved stack pointer", base).await {
                Ok(v) => v,
                Err(why) => return Step::Stop(why),
            };
            if orc.sp_reg == OrcReg::SpIndirect {
                cfa = cfa.wrapping_add(off);
            }
        }
        let mut caller = match orc.kind {
            OrcType::Call => match stack.word("return address", cfa.wrapping_sub(8)).await {
                Ok(ip) => Caller {
                    regs: Regs { ip, sp: cfa, ..*state },
                    kind: FrameKind::Call,
                    regs_at: None,
                    return_address: true,
                },
                Err(why) => return Step::Stop(why),
            },
            OrcType::Regs | OrcType::RegsPartial => match self.pt_regs_step(orc, cfa, state, stack).await {
                Ok(caller) => caller,
                Err(why) => return Step::Stop(why),
            },
            _ => return Step::Stop(StopReason::UnsupportedOrc { pc: state.ip, entry: *orc }),
        };
        match orc.bp_reg {
            OrcReg::PrevSp => match stack.word("saved rbp", cfa.wrapping_add(orc.bp_offset as i64 as u64)).await {
                Ok(bp) => caller.regs.bp = bp,
                Err(why) => return Step::Stop(why),
            },
            OrcReg::Bp => {
                if let Some(bp) = stack.u64(state.bp.wrapping_add(orc.bp_offset as i64 as u64)).await {
                    caller.regs.bp = bp;
                }
            }
            _ => {}
        }
        Step::Next(caller)
    }

    /// The interrupted context from a `pt_regs` (REGS: `cfa` points at a
    /// full `pt_regs`; REGS_PARTIAL: at the IRET frame inside one).
    async fn pt_regs_step<T: Target>(
        &self,
        orc: &OrcEntry,
        cfa: u64,
        state: &Regs,
        stack: &mut StackReader<'_, T>,
    ) -> Result<Caller, StopReason> {
        let at = if orc.kind == OrcType::Regs { cfa } else { cfa.wrapping_sub(self.pt.ip) };
        let ip = stack.word("pt_regs", at + self.pt.ip).await?;
        let sp = stack.word("pt_regs", at + self.pt.sp).await?;
        let mut regs = Regs { ip, sp, ..*state };
        if orc.kind == OrcType::Regs {
            for (field, off) in [
                (&mut regs.bp, self.pt.bp),
                (&mut regs.di, self.pt.di),
                (&mut regs.dx, self.pt.dx),
                (&mut regs.r10, self.pt.r10),
                (&mut regs.r13, self.pt.r13),
            ] {
                if let Some(v) = stack.u64(at + off).await {
                    *field = v;
                }
            }
        }
        let kind = if self.space.is_kernel(ip) { FrameKind::Interrupted } else { FrameKind::User };
        // A signal frame's pc is the interrupted instruction; otherwise
        // (e.g. a pt_regs built by a call) a return address.
        Ok(Caller { regs, kind, regs_at: Some(at), return_address: !orc.signal })
    }

    fn frame(&mut self, kernel: &Kernel, pc: u64, kind: FrameKind, regs_at: Option<u64>, ret: bool) -> Frame {
        if kind == FrameKind::User {
            return Frame {
                pc,
                kind,
                function: None,
                module: None,
                offset: 0,
                regs_at,
                source: Vec::new(),
                ..unplaced(ret)
            };
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
                // A return address right after a call to a noreturn function
                // is the first byte past the caller: name it (and its line)
                // from pc - 1, as the kernel, GDB and drgn do.
                let at = if ret { KernelAddr(link.0 - 1) } else { link };
                let sym = vm.symbolize(at);
                let source = vm.frames(at).unwrap_or_default();
                let offset = sym.as_ref().map_or(0, |s| s.offset + u64::from(ret));
                (sym.map(|s| s.name), offset, source)
            })
            .clone();
        Frame { pc, kind, function, module: None, offset, regs_at, source, ..unplaced(ret) }
    }

    /// A frame in module code, named from the module's kallsyms, with
    /// source lines where its debug file was found.
    fn module_frame(&self, pc: u64, kind: FrameKind, regs_at: Option<u64>, ret: bool) -> Option<Frame> {
        let module = self.modules.as_ref()?.by_code_addr(pc)?;
        let at = if ret { pc - 1 } else { pc };
        let (function, offset) = match module.symbolize(at) {
            Some((sym, off)) => (Some(sym.name.clone()), off + u64::from(ret)),
            None => (None, 0),
        };
        let source = module.source_frames(at);
        Some(Frame {
            pc,
            kind,
            function,
            module: Some(module.info.name.clone()),
            offset,
            regs_at,
            source,
            ..unplaced(ret)
        })
    }

    /// Makes sure the module holding `pc` is known: the module list is read
    /// on the first pc outside the vmlinux, and read again (at most once a
    /// second) when a pc falls in no known module, since modules load while
    /// tracing; its debug file is placed on the first frame in it. Returns
    /// whether a module holds `pc`.
    async fn know_module<T: Target>(&mut self, kernel: &Kernel, target: &mut T, pc: u64) -> bool {
        let known = |m: &Option<Modules>| m.as_ref().is_some_and(|m| m.by_code_addr(pc).is_some());
        if !known(&self.modules) && self.space.is_module(pc) {
            if self.modules_read_at.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
                return false;
            }
            self.modules_read_at = Some(std::time::Instant::now());
            if let Ok(m) = kernel.modules(target).await {
                self.modules = Some(m);
            }
        }
        let Some(module) = self.modules.as_mut().and_then(|m| m.by_code_addr_mut(pc)) else { return false };
        if module.debug.is_none() {
            module.debug = kernel.module_debug(target, module).await;
        }
        true
    }
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
    ) && matches!(o.kind, OrcType::Call | OrcType::Regs | OrcType::RegsPartial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticTarget;

    const STACK: u64 = 0xffff_c900_0000_0000;
    const CALLER: u64 = 0xffff_ffff_8123_4567;

    fn target() -> SyntheticTarget {
        let mut t = SyntheticTarget::new(1);
        t.map(STACK, &[0u8; 4096]);
        t
    }

    async fn step(t: &mut SyntheticTarget, row: CfiRow, regs: Regs) -> Result<Option<Regs>, String> {
        let mut stack = StackReader { target: t, chunks: HashMap::new(), block: 16 << 10 };
        match cfi_step(&row, &regs, &mut stack).await {
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
        let pt = PtRegs { ip: 0x80, sp: 0x98, bp: 0x20, di: 0x70, dx: 0x60, r10: 0x38, r13: 0x10 };
        Unwinder {
            pt,
            max_frames: 64,
            stack_block: 16 << 10,
            symbolized: HashMap::new(),
            modules: None,
            modules_read_at: None,
            space: AddressSpace::minimal(PagingLevels::Four, (0xffff_ffff_8000_0000, 0xffff_ffff_c000_0000)),
            trampoline: None,
        }
    }

    fn caller(sp: u64, kind: FrameKind) -> Caller {
        Caller { regs: Regs { ip: CALLER, sp, ..Regs::default() }, kind, regs_at: None, return_address: true }
    }

    #[test]
    fn the_stack_may_go_down_only_when_it_switches() {
        let u = unwinder();
        // An IRQ stack above the task stack: leaving it goes down, to another 16 KiB block.
        let irq_sp = 0xffff_c900_0000_7f00;
        let task_sp = 0xffff_c900_0000_2e00;
        let callee = Regs { ip: CALLER, sp: irq_sp, ..Regs::default() };
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
        user.regs.ip = 0x246;
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
        let bt =
            Backtrace { frames: Vec::new(), stopped: Some(StopReason::Loop { pc: 0x10 }), stack: Default::default() };
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
        // A CFA at or below sp on the same stack would loop.
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
        let regs = Regs { ip: stopped + SLIDE, sp, bp: 0, ..Regs::default() };
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
        let regs = Regs { ip: sym("entry_SYSCALL_64") + SLIDE, sp: 0x7ffc_c5bd_3b08, ..Regs::default() };
        let bt = u.unwind(&kernel, &mut t, regs).await;
        assert_eq!(bt.frames.len(), 1, "{bt:?}");
        assert_eq!(bt.frames[0].function.as_deref(), Some("entry_SYSCALL_64"));
        assert_eq!(bt.stopped, None);
        // Anywhere else a user SP is a reason to stop.
        let regs = Regs { ip: sym("_raw_spin_lock") + SLIDE, ..regs };
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
        let bt = u.unwind(&kernel, &mut t, Regs { ip: thunk + SLIDE, sp, ..Regs::default() }).await;
        let got: Vec<_> = bt.frames.iter().take(2).map(|f| (f.kind, f.pc)).collect();
        assert_eq!(got, [(FrameKind::Stopped, thunk + SLIDE), (FrameKind::Call, ra + SLIDE)], "{bt:?}");
        // Not called (no return address at SP): the bottom, as ORC says.
        t.write_u64(sp, 0);
        let bt = u.unwind(&kernel, &mut t, Regs { ip: thunk + SLIDE, sp, ..Regs::default() }).await;
        assert_eq!((bt.frames.len(), bt.stopped.clone()), (1, None), "{bt:?}");
    }

    #[test]
    fn orc_usability() {
        let e = |sp_reg, kind| OrcEntry {
            sp_offset: 8,
            bp_offset: 0,
            sp_reg,
            bp_reg: OrcReg::Undefined,
            kind,
            signal: false,
        };
        assert!(orc_usable(&e(OrcReg::Sp, OrcType::Call)));
        assert!(orc_usable(&e(OrcReg::SpIndirect, OrcType::Regs)));
        assert!(!orc_usable(&e(OrcReg::Undefined, OrcType::Call)));
        assert!(!orc_usable(&e(OrcReg::Other(12), OrcType::Call)));
        assert!(!orc_usable(&e(OrcReg::Sp, OrcType::Other(7))));
        assert!(!orc_usable(&e(OrcReg::Sp, OrcType::Undefined)));
        assert!(!orc_usable(&e(OrcReg::Ax, OrcType::Call)));
    }
}
