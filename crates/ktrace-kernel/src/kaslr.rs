//! Matching the vmlinux to the guest and finding the KASLR slide.

use ktrace_symbols::KernelAddr;

use crate::{KernelError, Target};

/// KASLR moves the kernel by a multiple of this (CONFIG_PHYSICAL_ALIGN on x86-64).
pub const SLIDE_ALIGN: u64 = 2 << 20;
pub use crate::x86::space::SLIDE_RANGE;

/// Finds the slide at which the guest's `linux_banner` equals `banner`.
///
/// Tries 0 first (a `nokaslr` boot costs one read), then every 2 MiB-aligned
/// candidate within 1 GiB in one pipelined batch.
pub(crate) async fn find_slide<T: Target>(
    target: &mut T,
    banner_addr: KernelAddr,
    banner: &str,
) -> Result<u64, KernelError<T::Error>> {
    let want = banner.as_bytes();
    let at_link = target.read_memory(banner_addr.0, want.len()).await.map_err(KernelError::Target).ok();
    if at_link.as_deref() == Some(want) {
        return Ok(0);
    }
    let candidates: Vec<(u64, usize)> =
        (1..SLIDE_RANGE / SLIDE_ALIGN).map(|k| (banner_addr.0.wrapping_add(k * SLIDE_ALIGN), want.len())).collect();
    let found = target.read_memory_many(&candidates).await.map_err(KernelError::Target)?;
    let mut other_banner = None;
    for (k, bytes) in found.iter().enumerate() {
        let Some(bytes) = bytes else { continue };
        if bytes.as_slice() == want {
            return Ok((k as u64 + 1) * SLIDE_ALIGN);
        }
        if other_banner.is_none() && bytes.starts_with(b"Linux version ") {
            other_banner = Some(printable(bytes));
        }
    }
    let guest = match (at_link, other_banner) {
        (Some(bytes), _) if bytes.starts_with(b"Linux version ") => printable(&bytes),
        (_, Some(other)) => other,
        _ => "(no Linux banner at any 2 MiB-aligned KASLR slide within 1 GiB)".into(),
    };
    Err(KernelError::BannerMismatch { file: banner.trim_end().to_string(), guest })
}

fn printable(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticTarget;

    const BANNER: &str = "Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\n";
    const LINK: KernelAddr = KernelAddr(0xffff_ffff_8211_ffe0);

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn valid_no_slide_costs_one_read() {
        let mut t = SyntheticTarget::new(1);
        t.map(LINK.0, BANNER.as_bytes());
        assert_eq!(block_on(find_slide(&mut t, LINK, BANNER)).expect("slide"), 0);
        assert_eq!(t.reads, 1);
    }

    #[test]
    fn valid_slide_is_found_by_scanning() {
        let mut t = SyntheticTarget::new(1);
        let slide = 0x1c00_0000;
        t.map(LINK.0 + slide, BANNER.as_bytes());
        assert_eq!(block_on(find_slide(&mut t, LINK, BANNER)).expect("slide"), slide);
    }

    #[test]
    fn invalid_other_kernel_reports_both_banners() {
        let mut t = SyntheticTarget::new(1);
        let other = BANNER.replace("6.1.0-56", "6.1.0-99");
        t.map(LINK.0 + 0x40_0000, other.as_bytes());
        let err = block_on(find_slide(&mut t, LINK, BANNER)).expect_err("mismatch").to_string();
        assert!(err.contains("6.1.0-56") && err.contains("6.1.0-99"), "{err}");
    }
}

/// Where the kernel image is, found from physical memory alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PhysicalImage {
    /// Physical address of `_text`.
    pub text_phys: u64,
    /// The virtual KASLR slide.
    pub slide: u64,
    /// `__START_KERNEL_map`: where the image mapping starts (not slid).
    pub start_kernel_map: u64,
}

/// How far a gdb stub (which does not say how much RAM the guest has) is
/// scanned for the image: physical KASLR keeps it below the RAM's end.
const STUB_SCAN_LIMIT: u64 = 64 << 30;
/// Candidates read per round trip.
const SCAN_BATCH: usize = 512;

/// Finds the image in guest physical memory: physical KASLR places it at a
/// multiple of the load segments' alignment (`CONFIG_PHYSICAL_ALIGN`), so
/// the candidates are those, and the image is where `linux_banner` equals
/// the vmlinux's (tried first: the link-time load address, a `nokaslr`
/// boot). The virtual slide then follows from `phys_base`, which the
/// kernel keeps as "load address minus link-time load address":
/// `__pa_symbol(x) = x - __START_KERNEL_map + phys_base`.
pub(crate) async fn find_image_physical<T: crate::PhysicalMemory>(
    target: &mut T,
    vmlinux: &ktrace_symbols::Vmlinux,
) -> Result<PhysicalImage, KernelError<T::Error>> {
    let sym = |name: &str| vmlinux.symbol(name).map(|s| s.addr);
    let lma = |addr: KernelAddr, what: &str| {
        vmlinux
            .load_address(addr)
            .ok_or_else(|| KernelError::Corrupt(format!("{what} lies in no load segment of the vmlinux")))
    };
    let text = sym("_text")?;
    let text_lma = lma(text, "_text")?;
    let align = vmlinux
        .load_segments()
        .iter()
        .find(|s| s.paddr == text_lma || (text.0 >= s.vaddr && text.0 - s.vaddr < s.memsz))
        .map(|s| s.align)
        .filter(|a| a.is_power_of_two() && *a >= 4096)
        .ok_or_else(|| KernelError::Corrupt("the vmlinux's text segment has no usable alignment".into()))?;
    let banner = vmlinux.banner()?;
    let want = banner.as_bytes();
    let banner_off = lma(sym("linux_banner")?, "linux_banner")? - text_lma;
    let ranges = target.ram().unwrap_or_else(|| vec![(0, STUB_SCAN_LIMIT)]);
    let mut candidates = vec![text_lma];
    for &(start, end) in &ranges {
        let mut p = start.next_multiple_of(align);
        while p + banner_off + want.len() as u64 <= end {
            if p != text_lma {
                candidates.push(p);
            }
            p += align;
        }
    }
    let mut other_banner = None;
    let mut text_phys = None;
    'scan: for chunk in candidates.chunks(SCAN_BATCH) {
        let reqs: Vec<(u64, usize)> = chunk.iter().map(|&p| (p + banner_off, want.len())).collect();
        let found = target.read_physical_many(&reqs).await.map_err(KernelError::Target)?;
        for (&p, bytes) in chunk.iter().zip(found) {
            let Some(bytes) = bytes else { continue };
            if bytes == want {
                text_phys = Some(p);
                break 'scan;
            }
            if other_banner.is_none() && bytes.starts_with(b"Linux version ") {
                other_banner = Some(printable(&bytes));
            }
        }
    }
    let Some(text_phys) = text_phys else {
        return Err(KernelError::BannerMismatch {
            file: banner.trim_end().to_string(),
            guest: other_banner.unwrap_or_else(|| {
                format!("(no Linux banner at any 0x{align:x}-aligned physical load address of the guest's RAM)")
            }),
        });
    };
    let phys_base_at = text_phys + (lma(sym("phys_base")?, "phys_base")? - text_lma);
    let raw = target.read_physical(phys_base_at, 8).await.map_err(KernelError::Target)?;
    let phys_base = u64::from_le_bytes(crate::target::le_array(&raw)?);
    let start_kernel_map = text.0.wrapping_sub(text_lma);
    let slide = text_phys.wrapping_sub(phys_base).wrapping_sub(text_lma);
    if slide % align != 0 || slide >= SLIDE_RANGE {
        return Err(KernelError::Corrupt(format!(
            "phys_base 0x{phys_base:x} with the image at physical 0x{text_phys:x} gives no valid KASLR slide"
        )));
    }
    Ok(PhysicalImage { text_phys, slide, start_kernel_map })
}
