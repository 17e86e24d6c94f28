//! Filtered kernel breakpoint tracing with backtraces, over QEMU's gdb stub.
//!
//! [`Tracer::attach`] connects (RSP), matches the vmlinux to the guest
//! (kernel crate) and resolves the `--break` locations (symbol crate);
//! [`Tracer::run`] inserts the breakpoints and evaluates every stop in its own
//! loop: the filter ([`Filter`]) is checked with as few reads as possible (for
//! `--pid`, one 8-byte read of the CPU's current-task pointer compared with
//! the target's `task_struct`), a miss resumes at once, and a match becomes a
//! [`Hit`] with an ORC-unwound [`Backtrace`] handed to a [`HitSink`].
//! [`backtrace_all_cpus`] is `ktrace bt`.
//!
//! The crate does no terminal output; the CLI formats hits.

#![deny(missing_docs)]

mod bt;
mod config;
mod connection;
mod error;
mod filter;
mod hit;
mod in_guest;
mod location;
mod recording;
mod regs;
mod stream;
mod tracer;

pub use bt::{backtrace_all_cpus, backtrace_cpus, BtConfig, CpuBacktrace};
pub use config::{GuestRelease, ResumeMode, TraceConfig};
pub use error::{ExprRole, GoneReason, TraceError, TraceFailure};
pub use filter::Filter;
pub use hit::{EndReason, Hit, InGuestReport, RecordingReport, StackCounts, Summary};
pub use in_guest::{restore_left_behind, RestoreOutcome};
pub use ktrace_kernel::unwind::{Backtrace, Frame, FrameKind, Regs, StopReason, Unwinder};
pub use location::{resolve as resolve_location, Location};
pub use stream::HitStream;
pub use tokio_util::sync::CancellationToken;
pub use tracer::{HitSink, Plan, Tracer};
