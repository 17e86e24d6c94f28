//! Reading stack words through cached chunks.

use std::collections::HashMap;

use super::reason::StopReason;
use crate::Target;

/// The unit the unwinder reads stacks in (the pages of [`super::Backtrace::stack`]).
pub const PAGE: u64 = 2048;

/// Reads stack words through aligned, cached 2 KiB chunks.
pub(crate) struct StackReader<'t, T> {
    pub(super) target: &'t mut T,
    pub(super) chunks: HashMap<u64, Option<Vec<u8>>>,
    /// The stack block size: a miss reads on to the end of its block in
    /// one pipelined batch (an unwind walks up the stack towards its end,
    /// where the entry code's `pt_regs` are).
    pub(super) block: u64,
}

impl<T: Target> StackReader<'_, T> {
    pub(super) async fn u64(&mut self, addr: u64) -> Option<u64> {
        let base = addr & !(PAGE - 1);
        if addr - base > PAGE - 8 {
            // Straddles two chunks: read it directly.
            return self.target.read_u64(addr).await.ok();
        }
        if !self.chunks.contains_key(&base) {
            let end = (base | (self.block - 1)).wrapping_add(1);
            let bases: Vec<u64> = (0..)
                .map(|k| base + k * PAGE)
                .take_while(|&b| b < end || b == base)
                .filter(|b| !self.chunks.contains_key(b))
                .collect();
            let reqs: Vec<(u64, usize)> = bases.iter().map(|&b| (b, PAGE as usize)).collect();
            match self.target.read_memory_many(&reqs).await {
                Ok(chunks) => self.chunks.extend(bases.into_iter().zip(chunks)),
                Err(_) => {
                    self.chunks.insert(base, None);
                }
            }
        }
        match self.chunks.get(&base)? {
            Some(chunk) => {
                let off = (addr - base) as usize;
                Some(u64::from_le_bytes(chunk[off..off + 8].try_into().ok()?))
            }
            // The chunk is not all readable (a guard page, or a stack copy
            // that starts inside it): the word alone may be.
            None => self.target.read_u64(addr).await.ok(),
        }
    }

    /// A stack word, or the reason to stop.
    pub(super) async fn word(&mut self, what: &'static str, addr: u64) -> Result<u64, StopReason> {
        self.u64(addr).await.ok_or(StopReason::UnreadableStack { what, addr })
    }
}
