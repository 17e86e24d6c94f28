//! The registers an unwind needs, as one CPU had them.

use crate::{CpuId, Target};

/// The registers an unwind starts from (and finds again in `pt_regs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer.
    pub bp: u64,
    /// `rdi` (ORC may base the CFA on `rdi`, `rdx`, `r10` or `r13` in entry code).
    pub di: u64,
    /// `rdx`.
    pub dx: u64,
    /// `r10`.
    pub r10: u64,
    /// `r13`.
    pub r13: u64,
}

impl Regs {
    /// A CPU's registers by name, from any target (a stub, a dump).
    pub async fn read_from<T: Target>(target: &mut T, cpu: CpuId) -> Result<Regs, T::Error> {
        let mut r = Regs::default();
        for (field, name) in [
            (&mut r.ip, "rip"),
            (&mut r.sp, "rsp"),
            (&mut r.bp, "rbp"),
            (&mut r.di, "rdi"),
            (&mut r.dx, "rdx"),
            (&mut r.r10, "r10"),
            (&mut r.r13, "r13"),
        ] {
            *field = target.read_register(cpu, name).await?;
        }
        Ok(r)
    }
}
