//! The Debian kernel series the test bed covers.

use std::fmt;
use std::str::FromStr;

/// A Debian cloud-kernel series the test guest can run. Each one resolves to
/// its newest ABI through the meta-package `linux-image-cloud-amd64-dbg` in
/// its own suites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelSeries {
    /// Linux 6.1, Debian 12 bookworm (and bookworm-security).
    #[default]
    V6_1,
    /// Linux 6.12, Debian 13 trixie (and trixie-security).
    V6_12,
    /// Linux 7.x, trixie-backports.
    V7,
}

impl KernelSeries {
    /// Every series, oldest first.
    pub const ALL: [KernelSeries; 3] = [KernelSeries::V6_1, KernelSeries::V6_12, KernelSeries::V7];

    /// The short name: `6.1`, `6.12` or `7`.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelSeries::V6_1 => "6.1",
            KernelSeries::V6_12 => "6.12",
            KernelSeries::V7 => "7",
        }
    }

    /// The Debian suites (of `deb.debian.org/debian` or, for `-security`,
    /// `deb.debian.org/debian-security`) the series is published in.
    pub fn suites(self) -> &'static [&'static str] {
        match self {
            KernelSeries::V6_1 => &["bookworm", "bookworm-security"],
            KernelSeries::V6_12 => &["trixie", "trixie-security"],
            KernelSeries::V7 => &["trixie-backports"],
        }
    }

    /// True when a kernel version (a Debian package version such as
    /// `6.12.117-1`, or an ABI such as `6.1.0-56`) belongs to this series.
    pub fn contains(self, version: &str) -> bool {
        let upstream = version.split_once(':').map_or(version, |(_, v)| v);
        match self {
            KernelSeries::V6_1 => upstream.starts_with("6.1."),
            KernelSeries::V6_12 => upstream.starts_with("6.12."),
            KernelSeries::V7 => upstream.starts_with("7."),
        }
    }

    /// The environment variable that pins this series' ABI
    /// (`KTRACE_GUEST_ABI_6_1`, `KTRACE_GUEST_ABI_6_12`, `KTRACE_GUEST_ABI_7`).
    pub fn abi_env_var(self) -> &'static str {
        match self {
            KernelSeries::V6_1 => "KTRACE_GUEST_ABI_6_1",
            KernelSeries::V6_12 => "KTRACE_GUEST_ABI_6_12",
            KernelSeries::V7 => "KTRACE_GUEST_ABI_7",
        }
    }
}

impl fmt::Display for KernelSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A string that names no [`KernelSeries`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownSeries(pub String);

impl fmt::Display for UnknownSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown kernel series {:?}; expected 6.1, 6.12 or 7", self.0)
    }
}

impl std::error::Error for UnknownSeries {}

impl FromStr for KernelSeries {
    type Err = UnknownSeries;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "6.1" => Ok(KernelSeries::V6_1),
            "6.12" => Ok(KernelSeries::V6_12),
            "7" | "7.x" => Ok(KernelSeries::V7),
            other => Err(UnknownSeries(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_series_names_parse_and_round_trip() {
        assert_eq!("6.1".parse(), Ok(KernelSeries::V6_1));
        assert_eq!("6.12".parse(), Ok(KernelSeries::V6_12));
        assert_eq!("7".parse(), Ok(KernelSeries::V7));
        assert_eq!("7.x".parse(), Ok(KernelSeries::V7));
        for s in KernelSeries::ALL {
            assert_eq!(s.to_string().parse(), Ok(s));
        }
        assert_eq!(format!("[{:<5}]", KernelSeries::V6_12), "[6.12 ]");
    }

    #[test]
    fn invalid_series_names_are_rejected() {
        for bad in ["", "6", "6.10", "7.3", "all", "6.1.0"] {
            assert!(bad.parse::<KernelSeries>().is_err(), "{bad:?}");
        }
        assert!(UnknownSeries("x".into()).to_string().contains("6.1, 6.12 or 7"));
    }

    #[test]
    fn versions_belong_to_exactly_one_series() {
        let cases = [
            ("6.1.192-2", KernelSeries::V6_1),
            ("6.1.0-56", KernelSeries::V6_1),
            ("6.12.117-1", KernelSeries::V6_12),
            ("6.12.117+deb13", KernelSeries::V6_12),
            ("7.3.4-1~bpo13+1", KernelSeries::V7),
            ("7.10.1+deb13", KernelSeries::V7),
        ];
        for (version, series) in cases {
            let owners: Vec<_> = KernelSeries::ALL.into_iter().filter(|s| s.contains(version)).collect();
            assert_eq!(owners, [series], "{version}");
        }
        assert!(KernelSeries::ALL.iter().all(|s| !s.contains("6.10.1-1") && !s.contains("17.1-1")));
    }
}
