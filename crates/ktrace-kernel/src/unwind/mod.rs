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
//!
//! Every rule source (the vmlinux's and modules' ORC, DWARF CFI,
//! `pt_regs`, ktrace's trampoline, the heuristics past an end of stack)
//! becomes one normalized row (`row.rs`), which one function evaluates
//! (`engine.rs`) against the frame's registers ([`Regs`]) and the stack
//! (`stack.rs`).

use std::collections::HashMap;

mod engine;
mod frame;
mod heuristics;
mod reason;
mod row;
mod stack;
#[cfg(test)]
mod tests;

pub use crate::regs::{Reg, Regs};
pub use frame::{Backtrace, Frame, FrameKind, StackPages};
pub use reason::StopReason;
pub use stack::PAGE;

use crate::trampoline::{FrameMap, FRAME_NAME};
use crate::x86::paging::PagingLevels;
use crate::x86::AddressSpace;
use crate::{Kernel, Target};
use engine::{evaluate, Caller, Step};
use frame::unplaced;
use ktrace_symbols::{KernelAddr, OrcType, SourceFrame, SymbolError, Vmlinux};
use row::{PtRegsLayout, Source, UnwindRow};
use stack::StackReader;

/// The most pcs whose symbolization is cached (a few MB).
const MAX_SYMBOLIZED: usize = 16_384;

/// A pc's symbol, offset and source frames, cached per (link pc, is return address).
type Symbolized = (Option<String>, u64, Vec<SourceFrame>);

/// Unwinds kernel stacks. Built once per vmlinux; caches symbolized pcs.
#[derive(Debug)]
pub struct Unwinder {
    pt: PtRegsLayout,
    max_frames: usize,
    /// The size (and alignment) of a task stack: SPs in one such block are
    /// on the same stack.
    stack_block: u64,
    symbolized: HashMap<(u64, bool), Symbolized>,
    /// The address space of the kernel being unwound (set by each unwind).
    space: AddressSpace,
    /// ktrace's trampoline in the guest, when there is one: its frames are
    /// stepped through with their known stack effect.
    trampoline: Option<FrameMap>,
}

impl Unwinder {
    /// Prepares an unwinder (reads the `pt_regs` layout and the stack size
    /// from the vmlinux).
    pub fn new(vm: &Vmlinux) -> Result<Unwinder, SymbolError> {
        // A vmlinux without init's stack (test fixtures): x86-64's 16 KiB.
        let stack_block = crate::x86::space::thread_size(vm).unwrap_or(16 << 10);
        Ok(Unwinder {
            pt: PtRegsLayout::read(vm)?,
            max_frames: 64,
            stack_block,
            symbolized: HashMap::new(),
            space: AddressSpace::minimal(PagingLevels::Four, crate::x86::space::image_mapping(vm, None)),
            trampoline: None,
        })
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
        let first_kind = match (self.space.is_kernel(regs.ip()), saved) {
            (false, _) => FrameKind::User,
            (true, false) => FrameKind::Stopped,
            (true, true) => FrameKind::Call,
        };
        let mut frame = Caller { regs, kind: first_kind, regs_at: None, return_address: saved };
        let mut seen = std::collections::HashSet::new();
        let stopped = loop {
            let pc = frame.regs.ip();
            // ktrace's own code: its stack effect is known at every pc.
            if let Some(tf) = self.trampoline.as_ref().and_then(|m| m.at(pc)) {
                frames.push(Frame {
                    pc,
                    kind: frame.kind,
                    function: Some(FRAME_NAME.to_string()),
                    offset: tf.offset,
                    regs_at: frame.regs_at,
                    sp: frame.regs.sp(),
                    ..unplaced(frame.return_address)
                });
                if frames.len() >= self.max_frames {
                    break Some(StopReason::MaxFrames(self.max_frames));
                }
                let row = UnwindRow::call(Reg::Rsp, tf.depth as i64 + 8, Source::Trampoline);
                let caller = match evaluate(&row, &frame.regs, &mut stack, &self.space).await {
                    Step::Next(caller) => caller,
                    Step::End => break None,
                    Step::Stop(why) => break Some(why),
                };
                if let Err(why) = self.check_caller(&frame.regs, &caller) {
                    break Some(why);
                }
                if let Some(last) = frames.last_mut() {
                    last.cfa = Some(caller.regs.sp());
                }
                frame = caller;
                continue;
            }
            let in_vmlinux = kernel.vmlinux().is_code(kernel.link(pc));
            let modules = match frame.kind != FrameKind::User && !in_vmlinux {
                true => kernel.modules_at(stack.target, pc).await,
                false => None,
            };
            let module = modules.as_deref().and_then(|m| m.by_code_addr(pc));
            let shown = match module {
                Some(module) => Self::module_frame(module, pc, frame.kind, frame.regs_at, frame.return_address),
                None => self.frame(kernel, pc, frame.kind, frame.regs_at, frame.return_address),
            };
            frames.push(Frame { sp: frame.regs.sp(), ..shown });
            if frame.kind == FrameKind::User {
                break None;
            }
            if let Err(why) = self.check_frame(&frame.regs, in_vmlinux || module.is_some()) {
                break Some(why);
            }
            if frames.len() >= self.max_frames {
                break Some(StopReason::MaxFrames(self.max_frames));
            }
            if !seen.insert((frame.regs.ip(), frame.regs.sp())) {
                break Some(StopReason::Loop { pc: frame.regs.ip() });
            }
            let caller = match self.step(kernel, module, &mut stack, &frame).await {
                Step::Next(caller) => caller,
                Step::End => break None,
                Step::Stop(why) => break Some(why),
            };
            if let Err(why) = self.check_caller(&frame.regs, &caller) {
                break Some(why);
            }
            if matches!(caller.kind, FrameKind::Call | FrameKind::CallCfi) {
                if let Some(last) = frames.last_mut() {
                    last.cfa = Some(caller.regs.sp());
                }
            }
            if caller.regs.ip() == 0 {
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
            return Err(StopReason::OutsideKernelText {
                pc: regs.ip(),
                in_module_area: self.space.is_module(regs.ip()),
            });
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
        let ip = caller.regs.ip();
        if !self.space.is_kernel(ip) && ip != 0 {
            return Err(StopReason::UserReturnAddress { pc: ip });
        }
        let (sp, cfa) = (callee.sp(), caller.regs.sp());
        let same_stack = sp / self.stack_block == cfa / self.stack_block;
        if caller.kind != FrameKind::Interrupted && same_stack && cfa <= sp {
            return Err(StopReason::StackWentBackwards { sp, cfa });
        }
        Ok(())
    }

    /// One step: the rules covering the pc as one row, evaluated. ORC
    /// where it covers the pc (for module code: the module's table, read
    /// from guest memory), else the DWARF CFI; where they end the stack or
    /// say nothing, the heuristics of [`heuristics`] may still find a caller.
    async fn step<T: Target>(
        &self,
        kernel: &Kernel,
        module: Option<&crate::LoadedModule>,
        stack: &mut StackReader<'_, T>,
        frame: &Caller,
    ) -> Step {
        let state = &frame.regs;
        let pc = state.ip();
        let at = if frame.return_address { pc - 1 } else { pc };
        let lookup = kernel.link(at);
        let orc = match module {
            Some(m) => m.orc.as_ref().and_then(|t| t.lookup(KernelAddr(at))),
            None => match kernel.vmlinux().orc() {
                Ok(t) => t.lookup(lookup),
                // No tables at all: the DWARF CFI may still cover the code.
                Err(SymbolError::NoOrc { .. }) => None,
                Err(e) => return Step::Stop(StopReason::NoOrcTables(e.to_string())),
            },
        };
        let in_vmlinux = module.is_none();
        let row = orc.as_ref().and_then(|o| UnwindRow::from_orc(o, &self.pt));
        if orc.is_some_and(|o| o.kind == OrcType::EndOfStack) {
            let past = match in_vmlinux {
                true => match heuristics::sysret_row(kernel, frame) {
                    Some(row) => Some(row),
                    None => heuristics::called_here(kernel, frame, stack).await,
                },
                false => None,
            };
            return match past {
                Some(row) => evaluate(&row, state, stack, &self.space).await,
                None => Step::End,
            };
        }
        // On the way out to user space SP may be the user's already.
        if row.is_none() && in_vmlinux {
            if let Some(row) = heuristics::sysret_row(kernel, frame) {
                return evaluate(&row, state, stack, &self.space).await;
            }
        }
        // At the bottom of the stack (e.g. a CPU at entry_SYSCALL_64's first
        // instruction, still on the user stack) SP need not be a kernel address.
        if !self.space.is_kernel(state.sp()) {
            return Step::Stop(StopReason::BadStackPointer { sp: state.sp() });
        }
        if let Some(row) = row {
            return evaluate(&row, state, stack, &self.space).await;
        }
        // No (usable) ORC data here: try the DWARF CFI.
        if in_vmlinux {
            let vm = kernel.vmlinux();
            if let Ok(Some(cfi)) = vm.cfi(lookup) {
                let saved = vm.cfi_saved_registers(lookup).ok().flatten();
                return match UnwindRow::from_cfi(&cfi, saved.as_ref(), pc) {
                    Ok(row) => evaluate(&row, state, stack, &self.space).await,
                    Err(why) => Step::Stop(why),
                };
            }
            if let Some(row) = heuristics::called_here(kernel, frame, stack).await {
                return evaluate(&row, state, stack, &self.space).await;
            }
        }
        match orc {
            Some(o) if o.kind != OrcType::Undefined => Step::Stop(StopReason::UnsupportedOrc { pc, entry: o }),
            _ => Step::Stop(StopReason::NoUnwindData { pc }),
        }
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
    fn module_frame(module: &crate::LoadedModule, pc: u64, kind: FrameKind, regs_at: Option<u64>, ret: bool) -> Frame {
        let at = if ret { pc - 1 } else { pc };
        let (function, offset) = match module.symbolize(at) {
            Some((sym, off)) => (Some(sym.name.clone()), off + u64::from(ret)),
            None => (None, 0),
        };
        let source = module.source_frames(at);
        Frame { pc, kind, function, module: Some(module.info.name.clone()), offset, regs_at, source, ..unplaced(ret) }
    }
}
