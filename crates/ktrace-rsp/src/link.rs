//! The connection's protocol logic, sans-IO: acknowledgements, NAKs,
//! retransmission, reply timeouts and the resynchronisation of a damaged
//! pipelined batch.
//!
//! A [`Link`] owns no socket and reads no clock. Its driver (the tokio
//! client, or a test's simulated stub) tells it what arrived and when
//! ([`Link::handle_input`], [`Link::handle_timeout`]), and asks it what to
//! write ([`Link::transmit`]), when to wake it up ([`Link::poll_timeout`])
//! and whether the exchange under way has ended ([`Link::poll`]). The same
//! inputs give the same outputs: its tests run in simulated time.
//!
//! An exchange is one of:
//!
//! * [`Link::expect_packet`]: the next packet, whatever it is (a stop reply,
//!   console output, one part of a `qRcmd` answer);
//! * [`Link::start_batch`]: requests pipelined `depth` at a time, their
//!   replies in order. A window of one request is a plain request: a NAK
//!   retransmits it and a damaged reply is NAKed. A damaged reply inside a
//!   window of several cannot be NAKed (QEMU retransmits only its latest
//!   reply): the link drops input until the stub has been quiet for a while,
//!   then sends a window of idempotent reads and writes again one request at
//!   a time; any other window fails.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::trace;

use crate::codec::{encode_packet, Decoder, Event};
use crate::{ProtocolError, RspError};

const WIRE: &str = "ktrace_rsp::wire";

/// NAKs of one packet in a row before the link gives up.
pub const MAX_RETRANSMIT: u32 = 5;

/// A short name for a request in errors and logs: its text up to the first
/// separator, at most 24 bytes (`m1000,8` gives `m1000`).
pub fn name_of(payload: &[u8]) -> String {
    let end = payload.iter().position(|&b| b == b',' || b == b':' || b == b';').unwrap_or(payload.len()).min(24);
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// Whether sending `payload` twice does no harm (reads, and writes of the
/// same bytes): only such a window is sent again after a damaged batch.
fn idempotent(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(b'm' | b'M' | b'p' | b'g' | b'x' | b'X'))
}

/// What an exchange ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The packet [`Link::expect_packet`] waited for.
    Packet(Vec<u8>),
    /// The replies to a batch, one per request, in order.
    Replies(Vec<Vec<u8>>),
}

/// The protocol state of one connection to a stub.
#[derive(Debug)]
pub struct Link {
    dec: Decoder,
    max_packet: usize,
    timeout: Duration,
    ack_mode: bool,
    out: Vec<u8>,
    /// Packets sent in ack mode that the stub has not acknowledged yet.
    unacked: VecDeque<Vec<u8>>,
    last_sent: Option<Vec<u8>>,
    retransmits: u32,
    job: Job,
}

#[derive(Debug)]
enum Job {
    Idle,
    Packet { what: String, deadline: Option<Instant> },
    Batch(Batch),
    Done(Result<Outcome, RspError>),
}

#[derive(Debug)]
struct Batch {
    reqs: Vec<Vec<u8>>,
    depth: usize,
    /// Replies of the windows done; its length is where the current window starts.
    replies: Vec<Vec<u8>>,
    /// Requests before this index go one at a time (after a resynchronisation).
    single_until: usize,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Requests `replies.len()..end` are sent; `got` holds their replies so far.
    Window { end: usize, got: Vec<Vec<u8>>, deadline: Instant },
    /// The window was damaged: input is dropped until the stub is quiet.
    Draining { end: usize, cause: RspError, quiet_until: Instant, give_up: Instant },
}

impl Batch {
    fn start(&self) -> usize {
        self.replies.len()
    }

    /// A window of several requests in flight, whose damage cannot be NAKed.
    fn pipelined(&self) -> bool {
        matches!(self.phase, Phase::Window { end, .. } if end - self.start() > 1)
    }
}

impl Link {
    /// A link in ack mode. `max_packet` bounds the decoder; `timeout` is the
    /// longest wait for each reply.
    pub fn new(max_packet: usize, timeout: Duration) -> Link {
        Link {
            dec: Decoder::new(max_packet),
            max_packet,
            timeout,
            ack_mode: true,
            out: Vec::new(),
            unacked: VecDeque::new(),
            last_sent: None,
            retransmits: 0,
            job: Job::Idle,
        }
    }

    /// The longest wait for a reply.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether packets are acknowledged (until `QStartNoAckMode` succeeds).
    pub fn ack_mode(&self) -> bool {
        self.ack_mode
    }

    /// Turns acknowledgements on or off.
    pub fn set_ack_mode(&mut self, on: bool) {
        self.ack_mode = on;
    }

    /// Queues a packet that expects no reply of its own (or whose reply is
    /// awaited with [`Link::expect_packet`]).
    pub fn send(&mut self, payload: &[u8]) {
        trace!(target: WIRE, "> ${}", String::from_utf8_lossy(payload));
        let frame = encode_packet(payload);
        self.out.extend_from_slice(&frame);
        if self.ack_mode {
            self.unacked.push_back(frame.clone());
        }
        self.last_sent = Some(frame);
    }

    /// Queues bytes as they are (`+`, the interrupt byte `0x03`).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        trace!(target: WIRE, "> raw {:?}", String::from_utf8_lossy(bytes));
        self.out.extend_from_slice(bytes);
    }

    /// The bytes to write now.
    pub fn transmit(&self) -> &[u8] {
        &self.out
    }

    /// The driver wrote the first `n` bytes of [`Link::transmit`].
    pub fn transmitted(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// Starts waiting for the next packet, for at most the link's timeout
    /// when `timed` (else forever). `what` names it in a timeout error.
    pub fn expect_packet(&mut self, what: &str, timed: bool, now: Instant) {
        let deadline = timed.then(|| now + self.timeout);
        self.job = Job::Packet { what: what.into(), deadline };
        self.process(now);
    }

    /// Starts a batch: `reqs` sent `depth` at a time (each window in one
    /// write), their replies gathered in order.
    pub fn start_batch(&mut self, reqs: Vec<Vec<u8>>, depth: usize, now: Instant) {
        let batch = Batch {
            reqs,
            depth: depth.max(1),
            replies: Vec::new(),
            single_until: 0,
            phase: Phase::Window { end: 0, got: Vec::new(), deadline: now },
        };
        self.job = Job::Batch(batch);
        self.next_window(now);
    }

    /// The exchange's result, once it has one (then the link is idle).
    pub fn poll(&mut self) -> Option<Result<Outcome, RspError>> {
        match std::mem::replace(&mut self.job, Job::Idle) {
            Job::Done(r) => Some(r),
            other => {
                self.job = other;
                None
            }
        }
    }

    /// When to call [`Link::handle_timeout`], if the exchange waits for time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.job {
            Job::Packet { deadline, .. } => *deadline,
            Job::Batch(b) => match b.phase {
                Phase::Window { deadline, .. } => Some(deadline),
                Phase::Draining { quiet_until, .. } => Some(quiet_until),
            },
            Job::Idle | Job::Done(_) => None,
        }
    }

    /// Bytes from the stub.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        let quiet = self.quiet();
        if let Job::Batch(Batch { phase: Phase::Draining { quiet_until, give_up, .. }, .. }) = &mut self.job {
            trace!(target: WIRE, "< (dropped while resynchronising) {:?}", String::from_utf8_lossy(bytes));
            if now > *give_up {
                self.finish(Err(ProtocolError::EndlessAfterDamage.into()));
            } else {
                *quiet_until = now + quiet;
            }
            return;
        }
        self.dec.feed(bytes);
        self.process(now);
    }

    /// Time has come to `now`: a reply may be overdue, or a resynchronising
    /// link may have heard enough silence.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.job {
            Job::Packet { what, deadline: Some(d) } if now >= *d => {
                let request = std::mem::take(what);
                self.finish(Err(RspError::Timeout { request }));
            }
            Job::Batch(b) => match &mut b.phase {
                Phase::Window { got, deadline, .. } if now >= *deadline => {
                    let waiting = b.replies.len() + got.len();
                    let request = name_of(&b.reqs[waiting]);
                    let err = RspError::Timeout { request };
                    if b.pipelined() {
                        self.damaged(err, now);
                    } else {
                        self.finish(Err(err));
                    }
                }
                Phase::Draining { end, cause, quiet_until, .. } if now >= *quiet_until => {
                    let end = *end;
                    let cause = std::mem::replace(cause, RspError::Closed);
                    self.resynchronised(end, cause, now);
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn quiet(&self) -> Duration {
        (self.timeout / 10).clamp(Duration::from_millis(50), Duration::from_millis(300))
    }

    fn finish(&mut self, result: Result<Outcome, RspError>) {
        self.job = Job::Done(result);
    }

    /// Sends the batch's next window, or ends the batch.
    fn next_window(&mut self, now: Instant) {
        let Job::Batch(b) = &mut self.job else { return };
        let start = b.start();
        if start == b.reqs.len() {
            let replies = std::mem::take(&mut b.replies);
            self.finish(Ok(Outcome::Replies(replies)));
            return;
        }
        let size = if start < b.single_until { 1 } else { b.depth };
        let end = (start + size).min(b.reqs.len());
        b.phase = Phase::Window { end, got: Vec::with_capacity(end - start), deadline: now + self.timeout };
        let window: Vec<Vec<u8>> = b.reqs[start..end].to_vec();
        for r in &window {
            self.send(r);
        }
        self.process(now);
    }

    /// A pipelined window went wrong: drain, then maybe send it again.
    fn damaged(&mut self, cause: RspError, now: Instant) {
        trace!(target: WIRE, "batch damaged ({cause}); resynchronising");
        let (quiet, timeout) = (self.quiet(), self.timeout);
        let Job::Batch(b) = &mut self.job else { return };
        let Phase::Window { end, .. } = b.phase else { return };
        b.phase = Phase::Draining { end, cause, quiet_until: now + quiet, give_up: now + timeout };
    }

    /// The stub has been quiet after a damaged window: frame afresh, and
    /// send the window again one request at a time if that is harmless.
    fn resynchronised(&mut self, end: usize, cause: RspError, now: Instant) {
        self.dec = Decoder::new(self.max_packet);
        self.unacked.clear();
        self.retransmits = 0;
        let Job::Batch(b) = &mut self.job else { return };
        if !b.reqs[b.start()..end].iter().all(|r| idempotent(r)) {
            self.finish(Err(cause));
            return;
        }
        b.single_until = end;
        self.next_window(now);
    }

    /// Handles decoded input while the exchange wants it.
    fn process(&mut self, now: Instant) {
        loop {
            let wants_input = match &self.job {
                Job::Packet { .. } => true,
                Job::Batch(b) => matches!(b.phase, Phase::Window { .. }),
                Job::Idle | Job::Done(_) => false,
            };
            if !wants_input {
                return;
            }
            let ev = match self.dec.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => return self.finish(Err(e)),
            };
            self.on_event(ev, now);
        }
    }

    fn on_event(&mut self, ev: Event, now: Instant) {
        let pipelined = matches!(&self.job, Job::Batch(b) if b.pipelined());
        match ev {
            Event::Packet(p) => {
                trace!(target: WIRE, "< ${}", String::from_utf8_lossy(&p));
                if self.ack_mode {
                    self.out.push(b'+');
                }
                self.on_packet(p, now);
            }
            Event::Ack => {
                trace!(target: WIRE, "< +");
                self.unacked.pop_front();
                self.retransmits = 0;
            }
            Event::Nack => {
                trace!(target: WIRE, "< -");
                if pipelined {
                    self.damaged(ProtocolError::DamagedBatch.into(), now);
                } else if self.unacked.len() > 1 {
                    self.finish(Err(ProtocolError::RejectedInBatch.into()));
                } else {
                    self.retransmits += 1;
                    if self.retransmits > MAX_RETRANSMIT {
                        self.finish(Err(ProtocolError::TooManyRetransmissions.into()));
                    } else if let Some(f) = self.last_sent.clone() {
                        trace!(target: WIRE, "> (retransmit) {}", String::from_utf8_lossy(&f));
                        self.out.extend_from_slice(&f);
                    }
                }
            }
            Event::Malformed { reason } => {
                trace!(target: WIRE, "< malformed: {reason}");
                if pipelined {
                    self.damaged(ProtocolError::DamagedBatch.into(), now);
                } else if self.ack_mode && !reason.contains("garbage") {
                    self.out.push(b'-');
                }
            }
            Event::Notification(n) => trace!(target: WIRE, "< %{}", String::from_utf8_lossy(&n)),
            Event::Interrupt => trace!(target: WIRE, "< 0x03"),
        }
    }

    fn on_packet(&mut self, p: Vec<u8>, now: Instant) {
        let timeout = self.timeout;
        match &mut self.job {
            Job::Packet { .. } => self.finish(Ok(Outcome::Packet(p))),
            Job::Batch(b) => {
                let start = b.start();
                let Phase::Window { end, got, deadline } = &mut b.phase else { return };
                got.push(p);
                *deadline = now + timeout;
                if start + got.len() == *end {
                    let done = std::mem::take(got);
                    b.replies.extend(done);
                    self.next_window(now);
                }
            }
            Job::Idle | Job::Done(_) => {}
        }
    }
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
