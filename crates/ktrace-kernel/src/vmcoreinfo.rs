//! The kernel's vmcoreinfo (`vmcoreinfo_data`, `vmcoreinfo_size`): the
//! `KEY=value` lines the kernel writes for dump tools (`OSRELEASE`,
//! `BUILD-ID`, `NUMBER(KERNEL_IMAGE_SIZE)`, `KERNELOFFSET`, …).

use ktrace_symbols::Vmlinux;

use crate::{PhysicalMemory, Target};

/// The largest vmcoreinfo read (the kernel keeps it in one page).
const MAX_SIZE: u64 = 4096;

/// Bytes read at a time by [`find_in_ram`].
const SCAN_CHUNK: u64 = 4 << 20;

/// The vmcoreinfo text found in the guest's RAM without a vmlinux: the
/// kernel keeps it in a page of its own, `OSRELEASE=` first, `NUL`-ended,
/// with `PAGESIZE=` and `KERNELOFFSET=` in it (so a stray copy of the word
/// elsewhere is not taken). Needs a backend that knows the RAM's ranges
/// ([`PhysicalMemory::ram`]); `Ok(None)` when none is found.
pub async fn find_in_ram<T: PhysicalMemory>(target: &mut T) -> Result<Option<VmcoreInfo>, T::Error> {
    const KEY: &[u8] = b"OSRELEASE=";
    for (start, end) in target.ram().unwrap_or_default() {
        // `vmcoreinfo_data` is a page of its own: only page starts are looked at.
        let mut at = start.next_multiple_of(MAX_SIZE);
        while at + MAX_SIZE <= end {
            let len = SCAN_CHUNK.min(end - at) & !(MAX_SIZE - 1);
            let bytes = target.read_physical(at, len as usize).await?;
            for page in bytes.chunks_exact(MAX_SIZE as usize).filter(|p| p.starts_with(KEY)) {
                let text = &page[..page.iter().position(|&b| b == 0).unwrap_or(page.len())];
                let text = String::from_utf8_lossy(text);
                if text.contains("\nPAGESIZE=") && text.contains("\nKERNELOFFSET=") {
                    return Ok(Some(VmcoreInfo::parse(&text)));
                }
            }
            at += len;
        }
    }
    Ok(None)
}

/// The parsed lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmcoreInfo {
    lines: Vec<(String, String)>,
}

impl VmcoreInfo {
    /// Parses `KEY=value` lines.
    pub fn parse(text: &str) -> VmcoreInfo {
        VmcoreInfo {
            lines: text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `NUMBER(name)=value` (decimal, or hex with 0x).
    pub fn number(&self, name: &str) -> Option<u64> {
        let v = self.get(&format!("NUMBER({name})"))?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse::<i64>().ok().map(|n| n as u64),
        }
    }
}

/// Reads the guest's vmcoreinfo; `None` where the kernel has none or it
/// cannot be read.
pub(crate) async fn read<T: Target>(target: &mut T, vmlinux: &Vmlinux, slide: u64) -> Option<VmcoreInfo> {
    let data = vmlinux.lookup_symbol("vmcoreinfo_data")?.addr.0.wrapping_add(slide);
    let size = vmlinux.lookup_symbol("vmcoreinfo_size")?.addr.0.wrapping_add(slide);
    let ptr = target.read_u64(data).await.ok()?;
    let len = target.read_u64(size).await.ok()?.min(MAX_SIZE);
    if ptr == 0 || len == 0 {
        return None;
    }
    let bytes = target.read_memory(ptr, len as usize).await.ok()?;
    Some(VmcoreInfo::parse(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_lines_and_numbers() {
        let v = VmcoreInfo::parse("OSRELEASE=6.1.0-57-cloud-amd64\nBUILD-ID=abc\nNUMBER(KERNEL_IMAGE_SIZE)=1073741824\nNUMBER(phys_base)=-2147483648\nKERNELOFFSET=1e000000\n");
        assert_eq!(v.get("OSRELEASE"), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(v.number("KERNEL_IMAGE_SIZE"), Some(1 << 30));
        assert_eq!(v.number("phys_base"), Some((-2147483648i64) as u64));
        assert_eq!(v.number("missing"), None);
    }
}
