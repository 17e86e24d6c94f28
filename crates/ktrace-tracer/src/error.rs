use ktrace_kernel::KernelError;
use ktrace_rsp::RspError;
use ktrace_symbols::SymbolError;

/// What can stop a trace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The connection to the stub failed.
    #[error("gdb stub: {0}")]
    Rsp(#[from] RspError),
    /// Reading the kernel failed.
    #[error(transparent)]
    Kernel(#[from] KernelError<RspError>),
    /// The vmlinux could not answer.
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    /// The stub refused a breakpoint.
    #[error("cannot insert a breakpoint at {spec} (0x{addr:x}): {source}")]
    Breakpoint {
        /// The location as written.
        spec: String,
        /// Its runtime address.
        addr: u64,
        /// The stub's answer.
        source: RspError,
    },
    /// The filter names a task that is not in the guest.
    #[error("{0}")]
    NoSuchTask(String),
    /// The guest stopped for good (QEMU quit or the machine powered off).
    #[error("the guest is gone: {0}")]
    GuestGone(String),
    /// The configuration makes no sense.
    #[error("{0}")]
    Config(String),
    /// The background task running a [`crate::HitStream`] panicked or was aborted.
    #[error("the trace task failed: {0}")]
    TaskFailed(String),
}

/// A trace that failed part-way: the error and what was counted before it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TraceFailure {
    /// What went wrong.
    #[source]
    pub error: TraceError,
    /// The counters up to the failure.
    pub summary: crate::Summary,
}
