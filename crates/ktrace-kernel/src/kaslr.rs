//! Matching the vmlinux to the guest and finding the KASLR slide.

use ktrace_symbols::KernelAddr;

use crate::{KernelError, Target};

/// KASLR moves the kernel by a multiple of this (CONFIG_PHYSICAL_ALIGN on x86-64).
pub const SLIDE_ALIGN: u64 = 2 << 20;
/// The kernel text mapping is 1 GiB, so the slide stays below it.
pub const SLIDE_RANGE: u64 = 1 << 30;

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
