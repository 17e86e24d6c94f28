//! [`StackCopy`]: a stack copied at one moment, unwound later.
//!
//! A recorded hit carries the registers an unwind needs and a copy of the
//! stack from its stack pointer up (as `perf record --call-graph dwarf`
//! copies user stacks). The unwinder reads stack words from the copy and
//! everything else from the vmlinux and the module tables the kernel already
//! holds ([`crate::Kernel::know_modules`]); a frame whose stack lies outside the
//! copy ends the backtrace with [`crate::StopReason::UnreadableStack`],
//! never with a guess.

use crate::{CpuId, Target};

/// A read outside the copy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StackCopyError {
    /// The bytes are not in the copy.
    #[error("0x{addr:x} (+{len}) is outside the stack copy 0x{start:x}..0x{end:x}")]
    Outside {
        /// Where the read was.
        addr: u64,
        /// Its length.
        len: usize,
        /// The copy's first address.
        start: u64,
        /// The copy's end.
        end: u64,
    },
    /// A copy has no registers or CPUs of its own, and cannot be written.
    #[error("a stack copy has no {0}")]
    Unsupported(&'static str),
}

/// The bytes of a stack from `start`, as one CPU had them.
///
/// The unwinder reads stacks in aligned chunks of [`crate::unwind::PAGE`]
/// bytes: a copy whose ends are so aligned serves every word in it (a
/// chunk partly outside the copy is not served at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackCopy {
    start: u64,
    bytes: Vec<u8>,
}

impl StackCopy {
    /// A copy of the stack at `start`.
    pub fn new(start: u64, bytes: Vec<u8>) -> StackCopy {
        StackCopy { start, bytes }
    }

    /// Its first address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The address after its last byte.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl Target for StackCopy {
    type Error = StackCopyError;

    async fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, StackCopyError> {
        let outside = || StackCopyError::Outside { addr, len, start: self.start, end: self.end() };
        let from = addr.checked_sub(self.start).ok_or_else(outside)? as usize;
        let to = from.checked_add(len).filter(|&to| to <= self.bytes.len()).ok_or_else(outside)?;
        Ok(self.bytes[from..to].to_vec())
    }

    async fn write_memory(&mut self, _addr: u64, _bytes: &[u8]) -> Result<(), StackCopyError> {
        Err(StackCopyError::Unsupported("memory to write"))
    }

    async fn cpus(&mut self) -> Result<Vec<CpuId>, StackCopyError> {
        Err(StackCopyError::Unsupported("CPUs"))
    }

    async fn read_register(&mut self, _cpu: CpuId, _name: &str) -> Result<u64, StackCopyError> {
        Err(StackCopyError::Unsupported("registers"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn reads_inside_only() {
        run(async {
            let mut c = StackCopy::new(0x1000, (0..=255).collect());
            assert_eq!(c.read_memory(0x1010, 2).await.unwrap(), vec![0x10, 0x11]);
            assert_eq!(c.read_memory(0x10fe, 2).await.unwrap(), vec![0xfe, 0xff]);
            assert!(c.read_memory(0x10ff, 2).await.is_err(), "past the end");
            assert!(c.read_memory(0xfff, 2).await.is_err(), "below the start");
            let many = c.read_memory_many(&[(0x1000, 8), (0x2000, 8)]).await.unwrap();
            assert_eq!(many[0].as_deref(), Some(&[0, 1, 2, 3, 4, 5, 6, 7][..]));
            assert_eq!(many[1], None);
            assert!(c.write_memory(0x1000, &[1]).await.is_err());
        });
    }
}
