use ktrace_kernel::{KernelError, MemoryError, StubMemoryError};
use ktrace_rsp::{RspError, StopReply, ThreadId};
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
    Kernel(#[from] KernelError<StubMemoryError>),
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
    GuestGone(GoneReason),
    /// The configuration makes no sense.
    #[error("{0}")]
    Config(String),
    /// The background task running a [`crate::HitStream`] panicked or was aborted.
    #[error("the trace task failed: {0}")]
    TaskFailed(String),
}

impl From<KernelError<RspError>> for TraceError {
    fn from(e: KernelError<RspError>) -> TraceError {
        TraceError::Kernel(e.map_target(MemoryError::Target))
    }
}

impl From<StubMemoryError> for TraceError {
    fn from(e: StubMemoryError) -> TraceError {
        match e {
            MemoryError::Target(e) => TraceError::Rsp(e),
            other => TraceError::Kernel(KernelError::Target(other)),
        }
    }
}

/// Why [`TraceError::GuestGone`]: what a caller can tell apart.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GoneReason {
    /// The tracer no longer has its session (an earlier error consumed it).
    #[error("the session was lost")]
    SessionLost,
    /// The stub closed the connection: QEMU exited, or was killed.
    #[error("the gdb stub closed the connection (QEMU exited?)")]
    StubClosed,
    /// The stub reported that the target exited or was terminated.
    #[error("the stub reported {0:?}")]
    TargetEnded(StopReply),
    /// A stop on a thread that is no CPU.
    #[error("stop on unknown thread {0:?}")]
    UnknownThread(ThreadId),
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
