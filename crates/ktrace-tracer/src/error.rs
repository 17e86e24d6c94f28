use ktrace_kernel::{KernelError, MemoryError, StubMemoryError};
use ktrace_rsp::{RspError, StopReply, ThreadId};
use ktrace_symbols::SymbolError;

/// What can stop a trace. Messages speak of the library's terms (a
/// location, a filter, an expression); a front end adds its own flag names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The connection to the stub failed (also when a read through it did:
    /// stub errors arrive here and nowhere else).
    #[error("gdb stub: {0}")]
    Rsp(RspError),
    /// Reading the kernel failed (not through a stub error: those are [`TraceError::Rsp`]).
    #[error(transparent)]
    Kernel(KernelError<StubMemoryError>),
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
    /// No breakpoint location was given.
    #[error("no breakpoint location given")]
    NoBreakpoints,
    /// A location names a module function that no loaded module has.
    #[error("{spec}: {reason}")]
    ModuleLocation {
        /// The location as written.
        spec: String,
        /// Why it is not found (the module is not loaded, or lacks the symbol).
        reason: String,
    },
    /// The CPU filter names a CPU the guest does not have.
    #[error("CPU {cpu}: the guest has {count} CPUs (0-{})", count.saturating_sub(1))]
    CpuOutOfRange {
        /// The CPU asked for.
        cpu: u32,
        /// How many the guest has.
        count: usize,
    },
    /// An expression does not parse.
    #[error("{role} {error}")]
    Expression {
        /// What the expression was for.
        role: ExprRole,
        /// Why it does not parse.
        error: ktrace_expr::ParseError,
    },
    /// No task has the filter's pid.
    #[error("no task with pid {pid} in the guest")]
    NoTaskWithPid {
        /// The pid asked for.
        pid: i32,
    },
    /// No task matches the filter's tgid and comm.
    #[error("no task in the guest matches the filter ({filter})")]
    NoMatchingTask {
        /// The filter.
        filter: crate::Filter,
    },
    /// The stub did not describe its registers (no `target.xml`).
    #[error("the stub did not describe its registers (no qXfer:features:read target.xml)")]
    NoRegisterMap,
    /// The stub's register description lacks a register the tracer needs.
    #[error("the stub has no register {0}; is this an x86-64 guest?")]
    MissingRegister(&'static str),
    /// The guest stopped for good (QEMU quit or the machine powered off).
    #[error("the guest is gone: {0}")]
    GuestGone(GoneReason),
    /// Reading the in-guest records from QEMU's RAM on this host failed.
    #[error("reading the in-guest records from QEMU's RAM: {0}")]
    Recording(String),
    /// The background task running a [`crate::HitStream`] panicked or was aborted.
    #[error("the trace task failed: {0}")]
    TaskFailed(String),
}

impl From<RspError> for TraceError {
    fn from(e: RspError) -> TraceError {
        TraceError::Rsp(e)
    }
}

impl From<KernelError<StubMemoryError>> for TraceError {
    fn from(e: KernelError<StubMemoryError>) -> TraceError {
        match e {
            KernelError::Target(MemoryError::Target(e)) => TraceError::Rsp(e),
            other => TraceError::Kernel(other),
        }
    }
}

impl From<KernelError<RspError>> for TraceError {
    fn from(e: KernelError<RspError>) -> TraceError {
        e.map_target(MemoryError::Target).into()
    }
}

impl From<StubMemoryError> for TraceError {
    fn from(e: StubMemoryError) -> TraceError {
        KernelError::Target(e).into()
    }
}

/// What an expression of a [`crate::TraceConfig`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExprRole {
    /// A value printed at each hit ([`crate::TraceConfig::prints`]).
    Print,
    /// The condition a hit must meet ([`crate::TraceConfig::condition`]).
    Condition,
}

impl std::fmt::Display for ExprRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExprRole::Print => "print expression",
            ExprRole::Condition => "condition",
        })
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
