//! Decoding the registers the unwinder needs from a `g` reply.

use ktrace_rsp::RegisterMap;

use crate::TraceError;
use ktrace_kernel::unwind::{Reg, Regs};
// The integer registers `--regs` shows, in GDB's `info registers` order.
use ktrace_kernel::x86::registers::INFO_REGISTERS as SHOWN;

/// Byte offsets of the unwinder's registers in QEMU's `g` reply, by
/// [`Reg`], found by the names the stub's `target.xml` gives them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GLayout {
    offsets: [Option<usize>; Reg::COUNT],
    /// Register number of `rip` (for `p`/`P`).
    pub rip_regnum: u32,
    /// Register number of `cr3`, which QEMU leaves out of `g` (read with
    /// `p`), where the stub has it.
    pub cr3_regnum: Option<u32>,
}

/// Where each register `--regs` shows lies: in the `g` reply, or only
/// through `p` (QEMU leaves the control registers out of `g`).
#[derive(Clone, Debug, Default)]
pub(crate) struct RegisterSet {
    /// (name, offset in `g`, bytes) of those in the `g` reply.
    in_g: Vec<(&'static str, usize, usize)>,
    /// (name, regnum) of those read with `p`.
    by_number: Vec<(&'static str, u32)>,
}

impl RegisterSet {
    /// The registers of `SHOWN` the stub has; `g_len` is the size of its `g` reply.
    pub(crate) fn new(map: &RegisterMap, g_len: usize) -> RegisterSet {
        let mut set = RegisterSet::default();
        for &name in SHOWN {
            let Some(r) = map.get(name) else { continue };
            let bytes = (r.bitsize as usize).div_ceil(8);
            if bytes > 8 {
                continue;
            }
            match r.offset + bytes <= g_len {
                true => set.in_g.push((name, r.offset, bytes)),
                false => set.by_number.push((name, r.regnum)),
            }
        }
        set
    }

    /// The values in `g`.
    pub(crate) fn values_in_g(&self, g: &[u8]) -> Vec<(&'static str, u64)> {
        self.in_g
            .iter()
            .map(|&(name, at, n)| {
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(&g[at..at + n]);
                (name, u64::from_le_bytes(b))
            })
            .collect()
    }

    /// Frame 0's registers for DWARF locations, from `g`.
    pub(crate) fn frame(&self, g: &[u8]) -> ktrace_kernel::values::FrameRegisters {
        let mut frame = ktrace_kernel::values::FrameRegisters::default();
        for (name, v) in self.values_in_g(g) {
            frame.set(name, v);
        }
        frame
    }

    /// Those read one by one.
    pub(crate) fn by_number(&self) -> &[(&'static str, u32)] {
        &self.by_number
    }

    /// Back in `SHOWN`'s order.
    pub(crate) fn ordered(values: Vec<(&'static str, u64)>) -> Vec<(String, u64)> {
        let mut v: Vec<(usize, &'static str, u64)> =
            values.into_iter().map(|(n, x)| (SHOWN.iter().position(|s| *s == n).unwrap_or(usize::MAX), n, x)).collect();
        v.sort_by_key(|e| e.0);
        v.into_iter().map(|(_, n, x)| (n.to_string(), x)).collect()
    }
}

impl GLayout {
    /// The registers an unwind cannot start without.
    const REQUIRED: [Reg; 3] = [Reg::Rip, Reg::Rsp, Reg::Rbp];

    pub(crate) fn new(map: Option<&RegisterMap>) -> Result<GLayout, TraceError> {
        let map = map.ok_or(TraceError::NoRegisterMap)?;
        let mut offsets = [None; Reg::COUNT];
        for reg in Reg::ALL {
            match map.get(reg.name()) {
                Some(r) => offsets[reg.index()] = Some(r.offset),
                None if GLayout::REQUIRED.contains(&reg) => return Err(TraceError::MissingRegister(reg.name())),
                None => {}
            }
        }
        Ok(GLayout {
            offsets,
            rip_regnum: map.get("rip").map(|r| r.regnum).unwrap_or(16),
            cr3_regnum: map.get("cr3").map(|r| r.regnum),
        })
    }

    pub(crate) fn decode(&self, g: &[u8]) -> Regs {
        let at = |o: usize| g.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        let mut regs = Regs::default();
        for reg in Reg::ALL {
            match self.offsets[reg.index()].map(at) {
                Some(Some(v)) => regs.set(reg, v),
                // As before: a short reply reads as 0 for the registers an unwind needs.
                _ if GLayout::REQUIRED.contains(&reg) => regs.set(reg, 0),
                _ => {}
            }
        }
        regs
    }
}
