//! Questions about the vmlinux's code: where ftrace's call sites are
//! (`__mcount_loc`), and where the linker filled `.text` with padding.

use crate::{KernelAddr, SymbolError, Vmlinux};

/// A run of one repeated fill byte in a code section, at link-time addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillRun {
    /// First byte of the run.
    pub start: KernelAddr,
    /// Its length in bytes.
    pub len: u64,
}

impl FillRun {
    /// One past the last byte.
    pub fn end(&self) -> KernelAddr {
        KernelAddr(self.start.0 + self.len)
    }
}

impl Vmlinux {
    /// The link-time addresses of every ftrace call site (`call __fentry__`
    /// at function entry), sorted, from the `__start_mcount_loc` ..
    /// `__stop_mcount_loc` table the build records (zero entries, left by
    /// discarded functions, dropped). Empty when the kernel has no ftrace.
    pub fn ftrace_sites(&self) -> Result<Vec<KernelAddr>, SymbolError> {
        let (Some(start), Some(stop)) =
            (self.lookup_symbol("__start_mcount_loc"), self.lookup_symbol("__stop_mcount_loc"))
        else {
            return Ok(Vec::new());
        };
        let len = stop.addr.0.saturating_sub(start.addr.0) as usize;
        let bytes = self.section_bytes_at(start.addr, len).ok_or_else(|| SymbolError::NotInFile {
            what: format!("the __mcount_loc table at 0x{:x} ({len} bytes)", start.addr.0),
        })?;
        let mut sites: Vec<KernelAddr> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .filter(|&a| a != 0)
            .map(KernelAddr)
            .collect();
        sites.sort_unstable();
        sites.dedup();
        Ok(sites)
    }

    /// Runs of at least `min_len` bytes equal to `fill` inside the code
    /// section `section` (e.g. the `0xcc` the kernel's linker script pads
    /// `.text` with), in address order.
    pub fn fill_runs(&self, section: &str, fill: u8, min_len: u64) -> Vec<FillRun> {
        let Some(sec) = self.image.section(section) else { return Vec::new() };
        fill_runs_in(sec.data, sec.addr, fill, min_len)
    }
}

fn fill_runs_in(data: &[u8], base: u64, fill: u8, min_len: u64) -> Vec<FillRun> {
    let mut runs = Vec::new();
    let mut i = 0usize;
    while i < data.len() {
        if data[i] != fill {
            i += 1;
            continue;
        }
        let start = i;
        while i < data.len() && data[i] == fill {
            i += 1;
        }
        let len = (i - start) as u64;
        if len >= min_len {
            runs.push(FillRun { start: KernelAddr(base + start as u64), len });
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_fill_bytes() {
        let mut data = vec![0x90u8; 10];
        data.extend([0xcc; 5]);
        data.push(0xc3);
        data.extend([0xcc; 2]);
        data.extend([0xcc; 0]);
        data.push(0x55);
        data.extend([0xcc; 7]);
        let runs = fill_runs_in(&data, 0x1000, 0xcc, 5);
        assert_eq!(
            runs,
            vec![FillRun { start: KernelAddr(0x100a), len: 5 }, FillRun { start: KernelAddr(0x1013), len: 7 },]
        );
        assert_eq!(runs[1].end(), KernelAddr(0x101a));
        assert!(fill_runs_in(&data, 0, 0xcc, 8).is_empty());
    }
}
