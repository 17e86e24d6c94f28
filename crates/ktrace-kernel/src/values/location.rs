//! DWARF location descriptions evaluated against a frame: where a
//! variable's value is (memory, a register, a computed value, pieces).
//!
//! A frame knows only some registers: all of them where the CPU stopped,
//! the stack pointer and the CFA in the frames the unwinder recovered. A
//! location that needs a register the frame does not know is
//! [`Place::OptimizedOut`], never a guess.

use gimli::{EndianSlice, EvaluationResult, Location, RunTimeEndian};
use ktrace_symbols::LocationExpr;

use crate::regs::{Reg, Regs};
use crate::{CpuId, Kernel, KernelError, Target};

/// x86-64 DWARF register numbers 0..=16: rax, rdx, rcx, rbx, rsi, rdi,
/// rbp, rsp, r8..r15, rip (the names of [`Reg`], in its order).
pub const DWARF_REGISTER_NAMES: [&str; 17] = [
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
];

/// The registers of one frame, by [`Reg`] (DWARF number), where known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameRegisters {
    regs: Regs,
    /// The canonical frame address (the caller's stack pointer before the call).
    pub cfa: Option<u64>,
}

impl FrameRegisters {
    /// A frame where only the stack pointer, the pc and the CFA are known
    /// (a caller's frame the unwinder recovered).
    pub fn unwound(pc: u64, sp: u64, cfa: Option<u64>) -> FrameRegisters {
        FrameRegisters { regs: Regs::from_pairs([(Reg::Rsp, sp), (Reg::Rip, pc)]), cfa }
    }

    /// Every register of frame 0 a target can read for `cpu` (a stub, a
    /// dump's notes); those it cannot read stay unknown.
    pub async fn read_from<T: Target>(target: &mut T, cpu: CpuId) -> FrameRegisters {
        let mut r = FrameRegisters::default();
        for reg in Reg::ALL {
            if let Ok(v) = target.read_register(cpu, reg.name()).await {
                r.regs.set(reg, v);
            }
        }
        r
    }

    /// Sets a register by its name (`rdi`); unknown names are ignored.
    pub fn set(&mut self, name: &str, value: u64) {
        if let Some(reg) = Reg::from_name(name) {
            self.regs.set(reg, value);
        }
    }

    /// Sets a register by DWARF number.
    pub fn set_number(&mut self, dwarf: u16, value: u64) {
        if let Some(reg) = Reg::from_dwarf(dwarf) {
            self.regs.set(reg, value);
        }
    }

    /// A register by DWARF number.
    pub fn get(&self, dwarf: u16) -> Option<u64> {
        self.regs.get(Reg::from_dwarf(dwarf)?)
    }

    /// A register by name.
    pub fn by_name(&self, name: &str) -> Option<u64> {
        self.regs.get(Reg::from_name(name)?)
    }

    /// The known registers.
    pub fn regs(&self) -> &Regs {
        &self.regs
    }
}

/// The CFA of the frame stopped at `pc` (runtime) with registers `regs`,
/// from the DWARF CFI there (`None` where no rule covers the pc or the
/// rule's register is not known).
pub fn stopped_frame_cfa(kernel: &Kernel, pc: u64, regs: &FrameRegisters) -> Option<u64> {
    match kernel.vmlinux().cfi(kernel.link(pc)).ok()??.cfa {
        ktrace_symbols::CfaRule::RegOffset { reg, offset } => Some(regs.get(reg)?.wrapping_add(offset as u64)),
        ktrace_symbols::CfaRule::Unsupported => None,
    }
}

/// Where a value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// In guest memory at this address.
    Memory(u64),
    /// In a register (its value).
    Register(u64),
    /// Computed (`DW_OP_stack_value`, implicit values): the bytes.
    Bytes(Vec<u8>),
    /// Pieces (`DW_OP_piece`): each piece's bytes, `None` where a piece
    /// is not available.
    Pieces(Vec<Option<Vec<u8>>>),
    /// Not recoverable in this frame: the reason.
    OptimizedOut(&'static str),
}

/// Bound on the evaluation's steps.
const MAX_ITERATIONS: u32 = 10_000;

/// Evaluates `expr` in a frame with `regs`. Addresses in the expression
/// (`DW_OP_addr`) are link-time: the kernel's slide is added.
pub async fn evaluate<T: Target>(
    kernel: &Kernel,
    target: &mut T,
    expr: &LocationExpr,
    regs: &FrameRegisters,
) -> Result<Place, KernelError<T::Error>> {
    match run(kernel, target, expr.bytes, expr, regs, false).await? {
        Evaluated::Pieces(pieces) => Ok(pieces),
        Evaluated::Unavailable(why) => Ok(Place::OptimizedOut(why)),
    }
}

enum Evaluated {
    Pieces(Place),
    Unavailable(&'static str),
}

async fn run<T: Target>(
    kernel: &Kernel,
    target: &mut T,
    bytes: &'static [u8],
    expr: &LocationExpr,
    regs: &FrameRegisters,
    is_frame_base: bool,
) -> Result<Evaluated, KernelError<T::Error>> {
    let corrupt = |e: gimli::Error| KernelError::Corrupt(format!("a DWARF location expression: {e}"));
    let mut eval = gimli::Evaluation::new(EndianSlice::new(bytes, RunTimeEndian::Little), expr.encoding);
    eval.set_max_iterations(MAX_ITERATIONS);
    let mut step = eval.evaluate().map_err(corrupt)?;
    loop {
        step = match step {
            EvaluationResult::Complete => break,
            EvaluationResult::RequiresMemory { address, size, .. } => {
                let b = match target.read_memory(address, size as usize).await {
                    Ok(b) => b,
                    Err(_) => return Ok(Evaluated::Unavailable("its location cannot be read")),
                };
                let mut v = [0u8; 8];
                v[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
                eval.resume_with_memory(gimli::Value::Generic(u64::from_le_bytes(v))).map_err(corrupt)?
            }
            EvaluationResult::RequiresRegister { register, .. } => match regs.get(register.0) {
                Some(v) => eval.resume_with_register(gimli::Value::Generic(v)).map_err(corrupt)?,
                None => return Ok(Evaluated::Unavailable("a register this frame does not know")),
            },
            EvaluationResult::RequiresFrameBase => {
                let (Some(fb), false) = (expr.frame_base, is_frame_base) else {
                    return Ok(Evaluated::Unavailable("no frame base"));
                };
                let base = match Box::pin(run(kernel, target, fb, expr, regs, true)).await? {
                    Evaluated::Pieces(Place::Memory(a)) => a,
                    Evaluated::Pieces(Place::Register(v)) => v,
                    _ => return Ok(Evaluated::Unavailable("no frame base")),
                };
                eval.resume_with_frame_base(base).map_err(corrupt)?
            }
            EvaluationResult::RequiresCallFrameCfa => match regs.cfa {
                Some(cfa) => eval.resume_with_call_frame_cfa(cfa).map_err(corrupt)?,
                None => return Ok(Evaluated::Unavailable("the frame's CFA is not known")),
            },
            EvaluationResult::RequiresRelocatedAddress(a) => {
                // Per-CPU symbols of a section linked at 0 are offsets into
                // each CPU's area: KASLR does not move them.
                let percpu = kernel.vmlinux().percpu_section_range().is_some_and(|(lo, hi)| lo == 0 && a < hi);
                let runtime = if percpu { a } else { kernel.runtime(ktrace_symbols::KernelAddr(a)) };
                eval.resume_with_relocated_address(runtime).map_err(corrupt)?
            }
            EvaluationResult::RequiresEntryValue(_) => {
                return Ok(Evaluated::Unavailable("its value at entry is not known"));
            }
            EvaluationResult::RequiresTls(_) => return Ok(Evaluated::Unavailable("thread-local storage")),
            _ => return Ok(Evaluated::Unavailable("a DWARF operation ktrace does not evaluate")),
        };
    }
    let pieces = eval.result();
    let one = |loc: &Location<EndianSlice<'static, RunTimeEndian>>| -> Option<Place> {
        Some(match loc {
            Location::Empty => return None,
            Location::Register { register } => match regs.get(register.0) {
                Some(v) => Place::Register(v),
                None => Place::OptimizedOut("a register this frame does not know"),
            },
            Location::Address { address } => Place::Memory(*address),
            Location::Value { value } => Place::Bytes(value.to_u64(u64::MAX).ok()?.to_le_bytes().to_vec()),
            Location::Bytes { value } => Place::Bytes(value.slice().to_vec()),
            Location::ImplicitPointer { .. } => return None,
        })
    };
    if pieces.len() == 1 && pieces[0].size_in_bits.is_none() {
        return Ok(match one(&pieces[0].location) {
            Some(Place::OptimizedOut(why)) => Evaluated::Unavailable(why),
            Some(p) => Evaluated::Pieces(p),
            None if is_frame_base => Evaluated::Unavailable("no frame base"),
            None => Evaluated::Unavailable("no location here"),
        });
    }
    // Pieces: each read to bytes now (a register piece is its low bytes).
    let mut out = Vec::with_capacity(pieces.len());
    for p in &pieces {
        let bits = p.size_in_bits.unwrap_or(64);
        if bits % 8 != 0 || p.bit_offset.is_some_and(|o| o != 0) {
            return Ok(Evaluated::Unavailable("bit pieces"));
        }
        let len = (bits / 8) as usize;
        let bytes = match one(&p.location) {
            None => None,
            Some(Place::Register(v)) => Some(v.to_le_bytes()[..len.min(8)].to_vec()),
            Some(Place::Memory(a)) => target.read_memory(a, len).await.ok(),
            Some(Place::Bytes(mut b)) => {
                b.resize(len, 0);
                Some(b)
            }
            Some(_) => None,
        };
        out.push(bytes);
    }
    Ok(Evaluated::Pieces(Place::Pieces(out)))
}
