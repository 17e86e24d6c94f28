//! The running state: [`RunningSession`].

use super::session::{Inner, Session};
use crate::{RspError, StopReply};

/// A connection whose target is running.
///
/// Dropping it without turning it back into a [`Session`] and detaching
/// writes `0x03` (if no stop was seen) and the detach packet without
/// blocking (best effort), so QEMU resumes the guest without breakpoints.
pub struct RunningSession {
    inner: Option<Inner>,
    stop: Option<StopReply>,
}

impl Drop for RunningSession {
    fn drop(&mut self) {
        if let Some(mut i) = self.inner.take() {
            i.drop_detach(self.stop.is_none());
        }
    }
}

impl RunningSession {
    pub(crate) fn new(inner: Inner) -> Self {
        RunningSession { inner: Some(inner), stop: None }
    }

    pub(crate) fn inner_mut(&mut self) -> &mut Inner {
        self.inner.as_mut().expect("present")
    }

    /// Wait (without timeout) for the target to stop. Cancel-safe: it can be
    /// used in `tokio::select!`; `O` console packets are kept for
    /// [`RunningSession::take_console_output`]. A closed stub gives
    /// [`RspError::Closed`].
    pub async fn wait_stop(&mut self) -> Result<StopReply, RspError> {
        if let Some(s) = &self.stop {
            return Ok(s.clone());
        }
        let s = self.inner_mut().wait_stop(false).await?;
        self.stop = Some(s.clone());
        Ok(s)
    }

    /// Back to the stopped state; only after [`RunningSession::wait_stop`]
    /// returned a stop ([`RspError::NotStopped`] otherwise, and the session
    /// is then dropped, which detaches).
    pub fn into_stopped(mut self) -> Result<Session, RspError> {
        if self.stop.is_none() {
            return Err(RspError::NotStopped);
        }
        Ok(Session { inner: self.inner.take() })
    }

    /// Send `0x03` and wait (with the request timeout) for the stop reply.
    /// If a stop was already seen, nothing is sent.
    pub async fn interrupt(mut self) -> Result<(Session, StopReply), RspError> {
        if let Some(s) = self.stop.clone() {
            return Ok((Session { inner: self.inner.take() }, s));
        }
        let i = self.inner_mut();
        i.conn.queue_raw(&[0x03]);
        i.conn.flush_timeout("interrupt").await?;
        let s = i.wait_stop(true).await?;
        self.stop = Some(s.clone());
        Ok((Session { inner: self.inner.take() }, s))
    }

    /// Console output (`O` packets) received while running.
    pub fn take_console_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.inner_mut().console)
    }
}
