//! The arguments of every frame of a backtrace, as GDB's `bt` shows them.
//!
//! The frame where the CPU stopped knows every register; the frames the
//! unwinder recovered know their stack pointer and CFA only, so an argument
//! kept in a register there is `<optimized out>` (GDB, which also tracks
//! callee-saved registers and entry values, may know more: never less
//! correct).

use std::collections::HashMap;
use std::sync::Arc;

use ktrace_symbols::{KernelAddr, RegRule, Scope};

use super::argument::{Argument, ScopeArguments};
use super::format::{format_value, value_json, Detail};
use super::location::FrameRegisters;
use super::value::{read_variable, VariableValue};
use crate::regs::{Reg, Regs};
use crate::unwind::{Backtrace, FrameKind};
use crate::{Kernel, KernelError, Target};

/// A target that answers reads inside the stack pages an unwind read from
/// them, and the rest from the guest.
struct StackFirst<'a, T> {
    pages: &'a HashMap<u64, Vec<u8>>,
    target: &'a mut T,
}

impl<T> StackFirst<'_, T> {
    fn cached(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let base = addr & !(crate::unwind::PAGE - 1);
        let off = (addr - base) as usize;
        let page = self.pages.get(&base)?;
        page.get(off..off.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

impl<T: Target> Target for StackFirst<'_, T> {
    type Error = T::Error;

    async fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, Self::Error> {
        match self.cached(addr, len) {
            Some(b) => Ok(b),
            None => self.target.read_memory(addr, len).await,
        }
    }

    async fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Self::Error> {
        self.target.write_memory(addr, bytes).await
    }

    async fn cpus(&mut self) -> Result<Vec<crate::CpuId>, Self::Error> {
        self.target.cpus().await
    }

    async fn read_register(&mut self, cpu: crate::CpuId, name: &str) -> Result<u64, Self::Error> {
        self.target.read_register(cpu, name).await
    }
}

/// The caller's callee-saved registers ([`Reg::CALLEE_SAVED`]), from the
/// callee's (at `pc`, CFA `cfa`) and the CFI rules there.
async fn callers_saved<T: Target>(
    kernel: &Kernel,
    target: &mut T,
    pc: u64,
    ret: bool,
    cfa: u64,
    callee: &Regs,
) -> Regs {
    let link = kernel.link(pc).0;
    let at = KernelAddr(if ret { link - 1 } else { link });
    let mut out = Regs::default();
    let Ok(Some(rules)) = kernel.vmlinux().cfi_saved_registers(at) else { return out };
    for (dwarf, rule) in rules.0 {
        let Some(reg) = Reg::from_dwarf(dwarf) else { continue };
        let value = match rule {
            RegRule::SameValue => callee.get(reg),
            RegRule::Offset(o) => target.read_u64(cfa.wrapping_add(o as u64)).await.ok(),
            _ => None,
        };
        if let Some(v) = value {
            out.set(reg, v);
        }
    }
    out
}

/// Bound on the scopes kept per pc.
const MAX_CACHED: usize = 4096;

/// Reads the arguments of backtraces, caching each pc's scopes.
#[derive(Default)]
pub struct FrameArguments {
    scopes: HashMap<(u64, bool), Arc<Vec<Scope>>>,
}

impl FrameArguments {
    /// A reader with an empty cache.
    pub fn new() -> FrameArguments {
        FrameArguments::default()
    }

    /// Fills the `args` of each frame of `bt`: frame 0 with `stopped`, the
    /// registers of the stopped CPU, callers with what the unwinder knew.
    pub async fn fill<T: Target>(
        &mut self,
        kernel: &Kernel,
        target: &mut T,
        bt: &mut Backtrace,
        stopped: &FrameRegisters,
    ) -> Result<(), KernelError<T::Error>> {
        // Saved registers and stack slots are mostly on the pages the unwind read.
        let pages = bt.stack.clone();
        let target = &mut StackFirst { pages: &pages, target };
        // The callee-saved registers, carried from frame to frame through
        // the CFI's rules (where a rule is missing, the chain breaks).
        let mut saved =
            Regs::from_pairs(Reg::CALLEE_SAVED.into_iter().filter_map(|r| Some((r, stopped.regs().get(r)?))));
        let mut previous: Option<(u64, bool, Option<u64>)> = None;
        for (i, frame) in bt.frames.iter_mut().enumerate() {
            let usable = frame.module.is_none()
                && matches!(frame.kind, FrameKind::Stopped | FrameKind::Call | FrameKind::CallCfi);
            if i > 0 {
                saved = match (previous, usable && frame.kind != FrameKind::Stopped) {
                    (Some((pc, ret, Some(cfa))), true) => callers_saved(kernel, target, pc, ret, cfa, &saved).await,
                    _ => Regs::default(),
                };
            }
            previous = Some((frame.pc, frame.return_address, frame.cfa));
            if !usable {
                continue;
            }
            let mut regs = match i {
                0 if frame.kind == FrameKind::Stopped => stopped.clone(),
                _ => {
                    let mut r = FrameRegisters::unwound(frame.pc, frame.sp, frame.cfa);
                    for (reg, v) in saved.known() {
                        r.set_number(reg.dwarf(), v);
                    }
                    r
                }
            };
            regs.cfa = regs.cfa.or(frame.cfa);
            let scopes = self.scopes_at(kernel, frame.pc, frame.return_address)?;
            let mut out = Vec::with_capacity(scopes.len());
            for scope in scopes.iter() {
                let mut args = Vec::with_capacity(scope.params.len());
                for p in &scope.params {
                    let type_name = kernel.vmlinux().type_display(p.ty).unwrap_or_else(|_| "?".into());
                    // A location ktrace cannot evaluate is not known here, like any other.
                    let value = match read_variable(kernel, target, p, &regs).await {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::debug!("argument {} of {}: {e}", p.name, scope.function);
                            VariableValue::OptimizedOut("its location cannot be evaluated")
                        }
                    };
                    let arg = match value {
                        VariableValue::Known(v) => Argument {
                            name: p.name.clone(),
                            type_name,
                            value: Some(value_json(kernel, &v)),
                            text: format_value(kernel, target, &v, Detail::Summary).await,
                            optimized_out: false,
                        },
                        VariableValue::OptimizedOut(_) => Argument {
                            name: p.name.clone(),
                            type_name,
                            value: None,
                            text: "<optimized out>".into(),
                            optimized_out: true,
                        },
                    };
                    args.push(arg);
                }
                out.push(ScopeArguments { function: scope.function.clone(), args });
            }
            frame.args = out;
        }
        Ok(())
    }

    /// The scopes at runtime `pc` (a return address when `ret`), cached.
    pub fn scopes_at(
        &mut self,
        kernel: &Kernel,
        pc: u64,
        ret: bool,
    ) -> Result<Arc<Vec<Scope>>, ktrace_symbols::SymbolError> {
        let link = kernel.link(pc).0;
        if let Some(s) = self.scopes.get(&(link, ret)) {
            return Ok(s.clone());
        }
        if self.scopes.len() >= MAX_CACHED {
            self.scopes.clear();
        }
        let at = KernelAddr(if ret { link - 1 } else { link });
        let s = Arc::new(kernel.vmlinux().scopes_at(at)?);
        self.scopes.insert((link, ret), s.clone());
        Ok(s)
    }
}
