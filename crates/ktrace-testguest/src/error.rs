use std::path::PathBuf;

/// Why the guest could not be prepared or booted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// Something the guest needs is missing; the message says how to get it.
    #[error("missing {tool}; run: {install}")]
    MissingTool {
        /// What is missing (several things, comma-separated, when several are).
        tool: String,
        /// The command that installs it (one command for all of them).
        install: String,
    },
    /// An external command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr or exit status.
        detail: String,
    },
    /// The guest did not print what was expected in time.
    #[error("the guest did not become ready in {secs} s; console log at {log}:\n{tail}")]
    BootTimeout {
        /// Seconds waited.
        secs: u64,
        /// The console log file.
        log: PathBuf,
        /// The last lines of the console.
        tail: String,
    },
    /// QEMU exited during boot.
    #[error("qemu exited during boot ({status}); console log at {log}:\n{tail}")]
    QemuExited {
        /// Exit status.
        status: String,
        /// The console log file.
        log: PathBuf,
        /// The last lines of the console.
        tail: String,
    },
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> GuestError {
    let path = path.into();
    move |source| GuestError::Io { path, source }
}
