//! The registers of one frame, as a CPU had them or an unwind recovered them.

pub use crate::x86::registers::Reg;
use crate::{CpuId, Target};

/// Registers by [`Reg`]; each is known or not (an unwind step recovers only
/// what its rules say). Unknown registers read as `None` ([`Regs::get`]) or
/// 0 (the `ip()`/`sp()`/`bp()` accessors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    values: [u64; Reg::COUNT],
    /// Bit `reg.index()` set: the register is known.
    known: u32,
}

impl Regs {
    /// The registers an unwind needs at least: pc, stack and frame pointer.
    pub fn new(ip: u64, sp: u64, bp: u64) -> Regs {
        Regs::from_pairs([(Reg::Rip, ip), (Reg::Rsp, sp), (Reg::Rbp, bp)])
    }

    /// Registers from `(register, value)` pairs; the others are unknown.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Reg, u64)>) -> Regs {
        let mut r = Regs::default();
        for (reg, v) in pairs {
            r.set(reg, v);
        }
        r
    }

    /// A register, where known.
    pub fn get(&self, reg: Reg) -> Option<u64> {
        (self.known & (1 << reg.index()) != 0).then(|| self.values[reg.index()])
    }

    /// Sets a register (it becomes known).
    pub fn set(&mut self, reg: Reg, value: u64) {
        self.values[reg.index()] = value;
        self.known |= 1 << reg.index();
    }

    /// Forgets a register.
    pub fn clear(&mut self, reg: Reg) {
        self.values[reg.index()] = 0;
        self.known &= !(1 << reg.index());
    }

    /// These registers with `reg` set to `value`.
    pub fn with(mut self, reg: Reg, value: u64) -> Regs {
        self.set(reg, value);
        self
    }

    /// The known registers, in DWARF order.
    pub fn known(&self) -> impl Iterator<Item = (Reg, u64)> + '_ {
        Reg::ALL.into_iter().filter_map(|r| Some((r, self.get(r)?)))
    }

    /// The instruction pointer (0 when unknown).
    pub fn ip(&self) -> u64 {
        self.values[Reg::Rip.index()]
    }

    /// The stack pointer (0 when unknown).
    pub fn sp(&self) -> u64 {
        self.values[Reg::Rsp.index()]
    }

    /// The frame pointer (0 when unknown).
    pub fn bp(&self) -> u64 {
        self.values[Reg::Rbp.index()]
    }

    /// A CPU's registers by name, from any target (a stub, a dump): every
    /// [`Reg`]; pc, stack and frame pointer must be readable, the others
    /// are unknown where the target cannot read them.
    pub async fn read_from<T: Target>(target: &mut T, cpu: CpuId) -> Result<Regs, T::Error> {
        let mut r = Regs::default();
        for reg in Reg::ALL {
            match target.read_register(cpu, reg.name()).await {
                Ok(v) => r.set(reg, v),
                Err(e) if matches!(reg, Reg::Rip | Reg::Rsp | Reg::Rbp) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_known_and_not() {
        let mut r = Regs::new(1, 2, 3);
        assert_eq!((r.ip(), r.sp(), r.bp()), (1, 2, 3));
        assert_eq!(r.get(Reg::Rcx), None);
        r.set(Reg::Rcx, 0);
        assert_eq!(r.get(Reg::Rcx), Some(0));
        r.clear(Reg::Rcx);
        assert_eq!(r, Regs::new(1, 2, 3));
        assert_eq!(r.known().count(), 3);
    }
}
