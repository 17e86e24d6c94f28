//! [`Refusal`]: why the in-guest filter cannot be used here.

use super::layout::SLOTS;

/// Why the in-guest filter cannot be used; the tracer falls back to its
/// own stop loop and says this.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A traced function's entry is not an ftrace NOP ktrace may patch.
    #[error("{func}: {why}")]
    Site {
        /// The function.
        func: String,
        /// What is at its entry instead.
        why: String,
    },
    /// No padding large enough for the trampoline and its hit page.
    #[error("no run of 0xcc padding in .text outside the entry text is large enough for the trampoline")]
    NoPadding,
    /// The padding ktrace would use holds something else in the guest.
    #[error("the padding at 0x{addr:x} is in use in the guest ({what})")]
    PaddingInUse {
        /// Where.
        addr: u64,
        /// What was found.
        what: String,
    },
    /// The per-CPU data cannot be reached the way the kernel reaches it.
    #[error("per-CPU layout: {0}")]
    Percpu(String),
    /// The filter cannot be evaluated safely in the guest.
    #[error("{0}")]
    Filter(String),
    /// The record routine cannot be built for this kernel.
    #[error("recording in the guest: {0}")]
    Record(String),
    /// No guest memory can be proven unused for in-guest records.
    #[error("no memory to borrow for records: {0}")]
    Borrow(String),
    /// More functions than the trampoline has slots.
    #[error("more than {SLOTS} functions to patch")]
    TooManySites,
}
