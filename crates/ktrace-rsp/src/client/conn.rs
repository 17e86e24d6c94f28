//! The tokio driver of a [`Link`]: it moves bytes between the link and the
//! [`Transport`] and turns the link's deadlines into timers. The protocol
//! logic (acks, NAKs, retransmission, batch resynchronisation) is the link's.

use std::time::Duration;

use tokio::time::Instant;
use tracing::trace;

use super::transport::Transport;
use crate::link::{Link, Outcome};
use crate::RspError;

pub(crate) use crate::link::name_of;

const WIRE: &str = "ktrace_rsp::wire";

pub(crate) struct Conn {
    t: Transport,
    pub(crate) link: Link,
    rbuf: Box<[u8]>,
}

/// What woke the driver.
enum Wake {
    Wrote(usize),
    Read(usize),
    Deadline,
}

impl Conn {
    pub(crate) fn new(t: Transport, max_packet: usize, timeout: Duration) -> Self {
        Conn { t, link: Link::new(max_packet, timeout), rbuf: vec![0; 16 * 1024].into_boxed_slice() }
    }

    /// Write everything queued; cancel-safe (progress is kept in the link).
    pub(crate) async fn flush(&mut self) -> Result<(), RspError> {
        while !self.link.transmit().is_empty() {
            let n = self.t.write(self.link.transmit()).await.map_err(io_err)?;
            if n == 0 {
                return Err(RspError::Closed);
            }
            self.link.transmitted(n);
        }
        Ok(())
    }

    pub(crate) async fn flush_timeout(&mut self, request: &str) -> Result<(), RspError> {
        let d = self.link.timeout();
        tokio::time::timeout(d, self.flush()).await.map_err(|_| RspError::Timeout { request: request.into() })?
    }

    fn try_flush(&mut self) {
        while !self.link.transmit().is_empty() {
            match self.t.try_write(self.link.transmit()) {
                Ok(n) if n > 0 => self.link.transmitted(n),
                _ => break,
            }
        }
    }

    /// Best-effort non-blocking write of whatever is queued plus `extra`.
    pub(crate) fn try_write_now(&mut self, extra: &[u8]) {
        trace!(target: WIRE, "> (drop) {:?}", String::from_utf8_lossy(extra));
        self.link.send_raw(extra);
        self.try_flush();
    }

    /// Runs the link's exchange to its end. Cancel-safe: every state change
    /// happens synchronously between awaits, and an outcome is taken before
    /// the next await.
    async fn drive(&mut self) -> Result<Outcome, RspError> {
        loop {
            if let Some(outcome) = self.link.poll() {
                self.try_flush();
                return outcome;
            }
            let deadline = self.link.poll_timeout().map(Instant::from_std);
            let wake = if self.link.transmit().is_empty() {
                tokio::select! {
                    n = self.t.read(&mut self.rbuf) => Wake::Read(n.map_err(io_err)?),
                    _ = sleep_until(deadline) => Wake::Deadline,
                }
            } else {
                tokio::select! {
                    n = self.t.write(self.link.transmit()) => Wake::Wrote(n.map_err(io_err)?),
                    _ = sleep_until(deadline) => Wake::Deadline,
                }
            };
            let now = Instant::now().into_std();
            match wake {
                Wake::Wrote(0) => return Err(RspError::Closed),
                Wake::Wrote(n) => self.link.transmitted(n),
                Wake::Read(0) => {
                    trace!(target: WIRE, "< EOF");
                    return Err(RspError::Closed);
                }
                Wake::Read(n) => self.link.handle_input(&self.rbuf[..n], now),
                Wake::Deadline => self.link.handle_timeout(now),
            }
        }
    }

    async fn packet(&mut self, what: &str, timed: bool) -> Result<Vec<u8>, RspError> {
        self.link.expect_packet(what, timed, Instant::now().into_std());
        match self.drive().await? {
            Outcome::Packet(p) => Ok(p),
            Outcome::Replies(_) => unreachable!("expect_packet ends with a packet"),
        }
    }

    /// Next packet, whenever it comes; cancel-safe.
    pub(crate) async fn recv_packet_forever(&mut self) -> Result<Vec<u8>, RspError> {
        self.packet("a packet", false).await
    }

    /// Next packet, within the timeout.
    pub(crate) async fn recv_packet(&mut self, request: &str) -> Result<Vec<u8>, RspError> {
        self.packet(request, true).await
    }

    /// Send one request and wait for its reply.
    pub(crate) async fn request(&mut self, payload: &[u8]) -> Result<Vec<u8>, RspError> {
        let mut replies = self.pipeline(&[payload.to_vec()], 1).await?;
        Ok(replies.pop().expect("one reply per request"))
    }

    /// Send requests pipelined (at most `depth` in flight, each window in
    /// one write) and return the raw replies in order; see [`crate::link`]
    /// for what happens to a damaged window.
    pub(crate) async fn pipeline(&mut self, reqs: &[Vec<u8>], depth: usize) -> Result<Vec<Vec<u8>>, RspError> {
        self.link.start_batch(reqs.to_vec(), depth, Instant::now().into_std());
        match self.drive().await? {
            Outcome::Replies(r) => Ok(r),
            Outcome::Packet(_) => unreachable!("a batch ends with its replies"),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn io_err(e: std::io::Error) -> RspError {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof => RspError::Closed,
        _ => RspError::Io(e),
    }
}
