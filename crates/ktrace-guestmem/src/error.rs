use std::path::PathBuf;

/// Why guest memory could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestMemError {
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The QEMU process's memory may not be read.
    #[error("cannot read the memory of QEMU (pid {pid}): {source}; run ktrace as the user running QEMU, or as root (ptrace access is needed)")]
    Permission {
        /// QEMU's pid.
        pid: u32,
        /// The error.
        source: std::io::Error,
    },
    /// No QEMU process was found.
    #[error("{0}")]
    NoQemu(String),
    /// The guest's RAM could not be located in QEMU's address space.
    #[error("{0}")]
    NoRam(String),
    /// A physical address outside the guest's RAM.
    #[error("physical 0x{addr:x} (+{len}) is not guest RAM")]
    NotRam {
        /// The address.
        addr: u64,
        /// The length.
        len: usize,
    },
    /// A QMP exchange failed.
    #[error("QMP: {0}")]
    Qmp(String),
    /// The file is not a QEMU memory dump ktrace can read.
    #[error("{path}: {why}")]
    BadDump {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// This backend cannot do that (registers of a running guest, writes).
    #[error("{0}")]
    Unsupported(String),
}
