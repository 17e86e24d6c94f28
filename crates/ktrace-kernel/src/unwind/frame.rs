//! The frames of a backtrace.

use std::collections::HashMap;

use ktrace_symbols::SourceFrame;
use serde::Serialize;

use super::reason::{as_text, StopReason};

/// How a frame was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// The stopped instruction (frame 0).
    Stopped,
    /// A return address found on the stack.
    Call,
    /// A return address found on the stack with the DWARF CFI
    /// (`.debug_frame`) of the callee, which had no usable ORC data.
    CallCfi,
    /// The context interrupted by an interrupt, exception or syscall, restored
    /// from the `pt_regs` saved by entry code.
    Interrupted,
    /// The user-space context the kernel was entered from (end of the kernel stack).
    User,
}

/// One frame of a backtrace. Inlined functions at that address are expanded
/// in `source`, innermost first.
#[derive(Clone, Debug, Serialize)]
pub struct Frame {
    /// Runtime program counter.
    #[serde(serialize_with = "ktrace_symbols::hex::serialize")]
    pub pc: u64,
    /// How the frame was reached.
    pub kind: FrameKind,
    /// `symbol` containing the pc (the vmlinux's symbol table, or a module's kallsyms).
    pub function: Option<String>,
    /// The module whose code this is (absent for the vmlinux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Offset of the pc in that symbol.
    pub offset: u64,
    /// Where the `pt_regs` were found for [`FrameKind::Interrupted`] and [`FrameKind::User`].
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ktrace_symbols::hex::option")]
    pub regs_at: Option<u64>,
    /// Source locations, innermost inlined function first.
    pub source: Vec<SourceFrame>,
    /// The stack pointer in this frame.
    #[serde(skip)]
    pub sp: u64,
    /// The frame's canonical frame address (its caller's stack pointer
    /// before the call), where the step to the caller knew it.
    #[serde(skip)]
    pub cfa: Option<u64>,
    /// The pc is a return address (its scope is looked up at pc - 1).
    #[serde(skip)]
    pub return_address: bool,
    /// The arguments of the function and of each function inlined here,
    /// innermost first, when asked for ([`crate::values::FrameArguments`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<crate::values::argument::ScopeArguments>,
}

/// The placement fields of a frame before the walk fills them.
pub(super) fn unplaced(return_address: bool) -> Frame {
    Frame {
        pc: 0,
        kind: FrameKind::Call,
        function: None,
        module: None,
        offset: 0,
        regs_at: None,
        source: Vec::new(),
        sp: 0,
        cfa: None,
        return_address,
        args: Vec::new(),
    }
}

/// A backtrace and why it ended.
#[derive(Clone, Debug, Serialize)]
pub struct Backtrace {
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why unwinding stopped, when it was not the natural end of the stack
    /// (in JSON: the reason as text).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_text")]
    pub stopped: Option<StopReason>,
    /// The stack pages the unwind read (by page address), for readers of
    /// the frames' values that would read them again.
    #[serde(skip)]
    pub stack: StackPages,
}

/// Stack pages read during an unwind, by page address.
pub type StackPages = std::sync::Arc<HashMap<u64, Vec<u8>>>;
