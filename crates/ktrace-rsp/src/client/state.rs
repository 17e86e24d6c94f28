//! The session typestate, after gdbstub's `state_machine.rs`: one
//! [`Client`] over the [`Shared`] state, and a marker type per state, so a
//! method exists only in the state where it makes sense. Transitions move
//! the shared state from one marker to the next; dropping a client in any
//! state detaches once, in [`Shared`]'s `Drop`.

use super::shared::Shared;
use crate::{Capabilities, RegisterMap, StopReply, ThreadId};

/// A connection to a stub, in state `S` ([`Stopped`] or [`Running`]).
pub struct Client<S> {
    pub(crate) shared: Shared,
    pub(crate) state: S,
}

/// The target is stopped: memory, registers, breakpoints, resume.
#[derive(Debug)]
pub struct Stopped;

/// The target runs: wait for its stop, or interrupt it.
#[derive(Debug)]
pub struct Running {
    /// The stop seen while running, if any.
    pub(crate) stop: Option<StopReply>,
}

/// A connection whose target is stopped.
///
/// Dropping a `Session` without [`Session::detach`] writes the detach packet
/// without blocking (best effort), so QEMU removes breakpoints and resumes
/// the guest.
pub type Session = Client<Stopped>;

/// A connection whose target is running.
///
/// Dropping it without turning it back into a [`Session`] and detaching
/// writes `0x03` (if no stop was seen) and the detach packet without
/// blocking (best effort), so QEMU resumes the guest without breakpoints.
pub type RunningSession = Client<Running>;

impl<S> Client<S> {
    /// The same connection in another state.
    pub(crate) fn into_state<T>(self, state: T) -> Client<T> {
        Client { shared: self.shared, state }
    }

    /// What the stub announced in `qSupported` (and `vCont?`).
    pub fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    /// The register map from `target.xml`, if the stub offered one.
    pub fn register_map(&self) -> Option<&RegisterMap> {
        self.shared.regmap.as_ref()
    }

    /// The thread of the last stop reply seen.
    pub fn last_stop_thread(&self) -> Option<ThreadId> {
        self.shared.last_thread
    }
}
