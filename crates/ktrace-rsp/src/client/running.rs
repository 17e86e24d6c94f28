//! The running state: [`RunningSession`].

use super::state::{RunningSession, Session, Stopped};
use crate::{RspError, StopReply};

impl RunningSession {
    /// Wait (without timeout) for the target to stop. Cancel-safe: it can be
    /// used in `tokio::select!`; `O` console packets are kept for
    /// [`RunningSession::take_console_output`]. A closed stub gives
    /// [`RspError::Closed`].
    pub async fn wait_stop(&mut self) -> Result<StopReply, RspError> {
        if let Some(s) = &self.state.stop {
            return Ok(s.clone());
        }
        let s = self.shared.wait_stop(false).await?;
        self.state.stop = Some(s.clone());
        Ok(s)
    }

    /// Back to the stopped state; only after [`RunningSession::wait_stop`]
    /// returned a stop ([`RspError::NotStopped`] otherwise, and the session
    /// is then dropped, which detaches).
    pub fn into_stopped(self) -> Result<Session, RspError> {
        if self.state.stop.is_none() {
            return Err(RspError::NotStopped);
        }
        Ok(self.into_state(Stopped))
    }

    /// Send `0x03` and wait (with the request timeout) for the stop reply.
    /// If a stop was already seen, nothing is sent.
    pub async fn interrupt(mut self) -> Result<(Session, StopReply), RspError> {
        if let Some(s) = self.state.stop.take() {
            return Ok((self.into_state(Stopped), s));
        }
        let shared = &mut self.shared;
        shared.conn.link.send_raw(&[0x03]);
        shared.conn.flush_timeout("interrupt").await?;
        let s = shared.wait_stop(true).await?;
        Ok((self.into_state(Stopped), s))
    }

    /// Console output (`O` packets) received while running.
    pub fn take_console_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.shared.console)
    }
}
