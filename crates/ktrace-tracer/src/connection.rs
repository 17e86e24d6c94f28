//! The tracer's one connection to the stub, owned in whichever state it is.

use std::time::Duration;

use ktrace_rsp::{Resume, RspError, RunningSession, Session, StopReply};
use tokio_util::sync::CancellationToken;

use crate::{GoneReason, TraceError};

/// The stub connection: stopped (reads and breakpoints allowed), running,
/// or lost (an error consumed it; nothing more can be sent).
#[derive(Default)]
pub(crate) enum Connection {
    /// The guest is stopped.
    Stopped(Session),
    /// The guest runs.
    Running(RunningSession),
    /// The connection is gone.
    #[default]
    Lost,
}

/// How a wait that may be cancelled ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// It ran its course.
    Done,
    /// The trace was cancelled while waiting.
    Cancelled,
}

/// How a wait for a stop ended.
pub(crate) enum Woken {
    /// The guest stopped on its own.
    Stop(StopReply),
    /// Cancelled: the guest was stopped.
    Cancelled,
    /// The deadline passed: the guest was stopped.
    Deadline,
    /// The tick passed: the guest still runs.
    Tick,
}

impl Connection {
    /// Whether the guest runs.
    pub(crate) fn is_running(&self) -> bool {
        matches!(self, Connection::Running(_))
    }

    /// The stopped session, or [`GoneReason::SessionLost`].
    pub(crate) fn stopped(&mut self) -> Result<&mut Session, TraceError> {
        match self {
            Connection::Stopped(s) => Ok(s),
            _ => Err(lost()),
        }
    }

    /// Takes the stopped session out (to release it); the state is then lost.
    pub(crate) fn take_stopped(&mut self) -> Option<Session> {
        match std::mem::take(self) {
            Connection::Stopped(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Resumes the guest; with `Some(pc)`, continues at that address.
    pub(crate) async fn resume(&mut self, at: Option<u64>) -> Result<(), TraceError> {
        let Connection::Stopped(session) = std::mem::take(self) else { return Err(lost()) };
        let running = match at {
            Some(pc) => session.continue_at(pc).await?,
            None => session.resume(Resume::Continue).await?,
        };
        *self = Connection::Running(running);
        Ok(())
    }

    /// Stops the running guest.
    pub(crate) async fn interrupt(&mut self) -> Result<StopReply, TraceError> {
        let Connection::Running(running) = std::mem::take(self) else { return Err(lost()) };
        let (session, stop) = running.interrupt().await?;
        *self = Connection::Stopped(session);
        Ok(stop)
    }

    /// Waits for the running guest to stop, for `cancel` or for `deadline`;
    /// after `quiet` without a stop it stops the guest itself (a stop that
    /// is none of the tracer's). The guest is stopped in every case.
    pub(crate) async fn wait(
        &mut self,
        cancel: &CancellationToken,
        deadline: Option<tokio::time::Instant>,
        quiet: Duration,
        tick: Option<Duration>,
    ) -> Result<Woken, TraceError> {
        let Connection::Running(running) = self else { return Err(lost()) };
        let why = tokio::select! {
            biased;
            stop = running.wait_stop() => Ok(stop),
            _ = cancel.cancelled() => Err(Some(Woken::Cancelled)),
            _ = sleep_until(deadline) => Err(Some(Woken::Deadline)),
            _ = tokio::time::sleep(quiet) => Err(None),
            _ = sleep_for(tick) => return Ok(Woken::Tick),
        };
        match why {
            Err(Some(woken)) => self.interrupt().await.map(|_| woken),
            // No stop for a while: is the stub still there? A silent stub
            // would otherwise be waited for forever. The stop this forces is
            // not one of ours and is resumed like any other.
            Err(None) => self.interrupt().await.map(Woken::Stop),
            Ok(Err(e)) => {
                *self = Connection::Lost;
                Err(guest_gone(e))
            }
            Ok(Ok(stop)) => {
                let Connection::Running(running) = std::mem::take(self) else { return Err(lost()) };
                *self = Connection::Stopped(running.into_stopped()?);
                Ok(Woken::Stop(stop))
            }
        }
    }

    /// Lets the guest run for `slice` (less when `cancel` fires) and stops it.
    pub(crate) async fn run_for(&mut self, slice: Duration, cancel: &CancellationToken) -> Result<Waited, TraceError> {
        if cancel.is_cancelled() {
            return Ok(Waited::Cancelled);
        }
        self.resume(None).await?;
        let waited = tokio::select! {
            _ = tokio::time::sleep(slice) => Waited::Done,
            _ = cancel.cancelled() => Waited::Cancelled,
        };
        self.interrupt().await?;
        Ok(waited)
    }
}

fn lost() -> TraceError {
    TraceError::GuestGone(GoneReason::SessionLost)
}

async fn sleep_for(tick: Option<Duration>) {
    match tick {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A stop the stub reported while waiting: the stub closing is the guest gone.
pub(crate) fn guest_gone(e: RspError) -> TraceError {
    match e {
        RspError::Closed => TraceError::GuestGone(GoneReason::StubClosed),
        other => other.into(),
    }
}
