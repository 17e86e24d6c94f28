//! A tokio client: a thin driver of the sans-IO [`crate::link::Link`] over a
//! socket, and a typestate API on top.
//!
//! [`Session::connect`] returns a [`Session`] (target stopped). Resuming
//! consumes it and yields a [`RunningSession`]; once a stop has been seen the
//! running session turns back into a `Session`. Both are a [`Client`] in a
//! marker state ([`Stopped`], [`Running`]) over one shared state.
//!
//! Dropping either without [`Session::detach`] performs a best-effort,
//! non-blocking write of `0x03` (if running) and the detach packet, so that a
//! stub like QEMU removes its breakpoints and resumes the guest instead of
//! leaving it paused. Prefer calling `detach()` explicitly: it waits for the
//! stub's answer and reports errors.

mod batch;
mod config;
mod conn;
mod running;
mod shared;
mod state;
mod stopped;
mod transport;

pub use batch::{Batch, BatchReplies, MemoryRead, RegisterRead};
pub use config::{ClientConfig, StubAddr};
pub use state::{Client, Running, RunningSession, Session, Stopped};
