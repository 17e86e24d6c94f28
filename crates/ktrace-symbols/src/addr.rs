//! [`KernelAddr`]: a link-time address of the vmlinux.

use crate::hex;

/// A kernel address (link-time virtual address, or a per-CPU offset). In
/// JSON a `"0x…"` string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize)]
pub struct KernelAddr(#[serde(serialize_with = "hex::serialize")] pub u64);

impl std::fmt::Display for KernelAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

impl std::fmt::LowerHex for KernelAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl From<u64> for KernelAddr {
    fn from(v: u64) -> Self {
        KernelAddr(v)
    }
}
