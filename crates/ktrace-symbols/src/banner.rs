//! The kernel banner (`linux_banner`) and the release string in it.

/// Longest banner read when the symbol has no size.
pub(crate) const MAX_BANNER: usize = 512;

/// Turn the raw bytes of `linux_banner` into a string: stop at the first
/// NUL and drop the trailing newline.
pub(crate) fn banner_from_bytes(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_owned()
}

/// The release ("6.1.0-56-cloud-amd64") from a banner ("Linux version 6.1.0-56-cloud-amd64 (...) #1 SMP ...").
pub(crate) fn release_from_banner(banner: &str) -> Option<String> {
    let rest = banner.strip_prefix("Linux version ")?;
    rest.split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_banner() {
        let b = b"Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1\n\0junk";
        let s = banner_from_bytes(b);
        assert!(s.ends_with("6.1.158-1"));
        assert_eq!(release_from_banner(&s).as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(release_from_banner("hello"), None);
    }
}
