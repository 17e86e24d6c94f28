use std::fmt;

use crate::KernelError;

/// A CPU of the guest, numbered from 0 as the kernel numbers them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize)]
pub struct CpuId(pub u32);

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The little a kernel reader needs from a stopped target: memory and registers.
///
/// Addresses are runtime (guest virtual) addresses; KASLR is applied by the caller.
/// As gdbstub's `Target`, it names its own error type: kernel code hands it
/// back unboxed in [`KernelError::Target`].
#[allow(async_fn_in_trait)]
pub trait Target {
    /// What a failed read says (`ktrace_rsp::RspError` for a gdb stub).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads `len` bytes of guest virtual memory.
    async fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, Self::Error>;

    /// Reads several ranges at once; an unreadable range gives `None`.
    /// Implementations should pipeline the requests.
    async fn read_memory_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, Self::Error> {
        let mut out = Vec::with_capacity(reqs.len());
        for &(addr, len) in reqs {
            out.push(self.read_memory(addr, len).await.ok());
        }
        Ok(out)
    }

    /// Writes guest virtual memory (the stub writes through the page
    /// tables, also to read-only kernel text).
    async fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Self::Error>;

    /// The CPUs of the guest.
    async fn cpus(&mut self) -> Result<Vec<CpuId>, Self::Error>;

    /// Reads a 64-bit register (`rip`, `rsp`, `gs_base`, `k_gs_base`, `cs`, …) of a CPU.
    async fn read_register(&mut self, cpu: CpuId, name: &str) -> Result<u64, Self::Error>;

    /// Reads a little-endian u64.
    async fn read_u64(&mut self, addr: u64) -> Result<u64, KernelError<Self::Error>> {
        let bytes = self.read_memory(addr, 8).await.map_err(KernelError::Target)?;
        Ok(u64::from_le_bytes(le_array(&bytes)?))
    }
}

pub(crate) fn le_array<const N: usize, E>(bytes: &[u8]) -> Result<[u8; N], KernelError<E>> {
    bytes
        .get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KernelError::Corrupt(format!("short read: {} of {N} bytes", bytes.len())))
}
