//! A GDB remote serial protocol (RSP) *client*.
//!
//! The crate has three layers:
//!
//! * [`codec`]: a sans-IO framing layer (no sockets, no clock): a
//!   [`codec::Decoder`] that is fed bytes and yields [`codec::Event`]s, and
//!   [`codec::encode_packet`]; above it [`link`], the sans-IO connection
//!   logic (acks, NAKs, retransmission, timeouts, batch resynchronisation)
//!   driven by bytes and `now`.
//! * [`packets`]: one module per packet family with request encoders and
//!   reply parsers (nom based), plus [`ThreadId`].
//! * [`client`]: a thin tokio driver of the link with a typed,
//!   state-checked API ([`Session`] when the target is stopped,
//!   [`RunningSession`] while it runs).
//!
//! [`target_xml`] builds a [`RegisterMap`] from the stub's `target.xml`.
//!
//! The crate does no terminal output; every packet sent or received is logged
//! with `tracing::trace!` under the target `ktrace_rsp::wire`.
#![deny(missing_docs)]

pub mod client;
pub mod codec;
mod error;
pub mod link;
pub mod packets;
pub mod target_xml;

pub use client::{Batch, BatchReplies, ClientConfig, RunningSession, Session, StubAddr};
pub use error::{ProtocolError, RspError};
pub use packets::breakpoint::BreakpointKind;
pub use packets::qsupported::Capabilities;
pub use packets::resume::Resume;
pub use packets::stop::{StopReason, StopReply, SIGINT, SIGTRAP};
pub use packets::thread::{Id, ThreadId, ThreadOp};
pub use target_xml::{RegisterInfo, RegisterMap};
