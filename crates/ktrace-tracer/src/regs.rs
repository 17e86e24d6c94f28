//! Decoding the registers the unwinder needs from a `g` reply.

use ktrace_rsp::RegisterMap;

use crate::TraceError;
use ktrace_kernel::unwind::Regs;

/// Byte offsets of the unwinder's registers in QEMU's `g` reply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GLayout {
    ip: usize,
    sp: usize,
    bp: usize,
    di: usize,
    dx: usize,
    r10: usize,
    r13: usize,
    /// Register number of `rip` (for `p`/`P`).
    pub rip_regnum: u32,
}

impl GLayout {
    pub(crate) fn new(map: Option<&RegisterMap>) -> Result<GLayout, TraceError> {
        let map = map.ok_or_else(|| {
            TraceError::Config("the stub did not describe its registers (no qXfer:features:read target.xml)".into())
        })?;
        let off = |name: &str| {
            map.get(name)
                .map(|r| r.offset)
                .ok_or_else(|| TraceError::Config(format!("the stub has no register {name}; is this an x86-64 guest?")))
        };
        Ok(GLayout {
            ip: off("rip")?,
            sp: off("rsp")?,
            bp: off("rbp")?,
            di: off("rdi")?,
            dx: off("rdx")?,
            r10: off("r10")?,
            r13: off("r13")?,
            rip_regnum: map.get("rip").map(|r| r.regnum).unwrap_or(16),
        })
    }

    pub(crate) fn decode(&self, g: &[u8]) -> Regs {
        let at = |o: usize| g.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        Regs {
            ip: at(self.ip),
            sp: at(self.sp),
            bp: at(self.bp),
            di: at(self.di),
            dx: at(self.dx),
            r10: at(self.r10),
            r13: at(self.r13),
        }
    }
}
