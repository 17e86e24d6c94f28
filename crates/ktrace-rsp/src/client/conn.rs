//! Framing, acknowledgements, retransmission and timeouts over a
//! [`Transport`].

use super::transport::Transport;
use crate::codec::{encode_packet, Decoder, Event};
use crate::RspError;
use std::collections::VecDeque;
use std::time::Duration;
use tracing::trace;

const WIRE: &str = "ktrace_rsp::wire";
const MAX_RETRANSMIT: u32 = 5;

pub(crate) fn name_of(payload: &[u8]) -> String {
    let end = payload.iter().position(|&b| b == b',' || b == b':' || b == b';').unwrap_or(payload.len()).min(24);
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

pub(crate) struct Conn {
    t: Transport,
    dec: Decoder,
    out: Vec<u8>,
    pub(crate) ack_mode: bool,
    unacked: VecDeque<Vec<u8>>,
    last_sent: Option<Vec<u8>>,
    retransmits: u32,
    pub(crate) timeout: Duration,
    rbuf: Box<[u8]>,
    /// Several replies are outstanding: a damaged one cannot be NAKed (QEMU
    /// would retransmit its latest reply, not the damaged one).
    in_batch: bool,
    max_packet: usize,
}

/// Set in `recv_packet_forever` when a reply inside a batch was damaged.
const DAMAGED_BATCH: &str = "a reply inside a pipelined batch was damaged";

impl Conn {
    pub(crate) fn new(t: Transport, max_packet: usize, timeout: Duration) -> Self {
        Conn {
            t,
            dec: Decoder::new(max_packet),
            out: Vec::new(),
            ack_mode: true,
            unacked: VecDeque::new(),
            last_sent: None,
            retransmits: 0,
            timeout,
            rbuf: vec![0; 16 * 1024].into_boxed_slice(),
            in_batch: false,
            max_packet,
        }
    }

    pub(crate) fn queue_packet(&mut self, payload: &[u8]) {
        trace!(target: WIRE, "> ${}", String::from_utf8_lossy(payload));
        let f = encode_packet(payload);
        self.out.extend_from_slice(&f);
        if self.ack_mode {
            self.unacked.push_back(f.clone());
        }
        self.last_sent = Some(f);
    }

    pub(crate) fn queue_raw(&mut self, bytes: &[u8]) {
        trace!(target: WIRE, "> raw {:?}", String::from_utf8_lossy(bytes));
        self.out.extend_from_slice(bytes);
    }

    /// Write everything queued; cancel-safe (progress is kept in `out`).
    pub(crate) async fn flush(&mut self) -> Result<(), RspError> {
        while !self.out.is_empty() {
            let n = self.t.write(&self.out).await.map_err(io_err)?;
            if n == 0 {
                return Err(RspError::Closed);
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    pub(crate) async fn flush_timeout(&mut self, request: &str) -> Result<(), RspError> {
        let d = self.timeout;
        tokio::time::timeout(d, self.flush()).await.map_err(|_| RspError::Timeout { request: request.into() })?
    }

    fn try_flush(&mut self) {
        while !self.out.is_empty() {
            match self.t.try_write(&self.out) {
                Ok(n) if n > 0 => {
                    self.out.drain(..n);
                }
                _ => break,
            }
        }
    }

    /// Best-effort non-blocking write of whatever is queued plus `extra`.
    pub(crate) fn try_write_now(&mut self, extra: &[u8]) {
        self.out.extend_from_slice(extra);
        trace!(target: WIRE, "> (drop) {:?}", String::from_utf8_lossy(extra));
        self.try_flush();
    }

    /// Next packet, handling acks, nacks and malformed input. No timeout;
    /// cancel-safe (every state change happens synchronously between reads).
    pub(crate) async fn recv_packet_forever(&mut self) -> Result<Vec<u8>, RspError> {
        loop {
            if !self.out.is_empty() {
                self.flush().await?;
            }
            let ev = match self.dec.next_event()? {
                Some(ev) => ev,
                None => {
                    let n = self.t.read(&mut self.rbuf).await.map_err(io_err)?;
                    if n == 0 {
                        trace!(target: WIRE, "< EOF");
                        return Err(RspError::Closed);
                    }
                    self.dec.feed(&self.rbuf[..n]);
                    continue;
                }
            };
            match ev {
                Event::Packet(p) => {
                    trace!(target: WIRE, "< ${}", String::from_utf8_lossy(&p));
                    if self.ack_mode {
                        self.out.push(b'+');
                        self.try_flush();
                    }
                    return Ok(p);
                }
                Event::Ack => {
                    trace!(target: WIRE, "< +");
                    self.unacked.pop_front();
                    self.retransmits = 0;
                }
                Event::Nack => {
                    trace!(target: WIRE, "< -");
                    if self.in_batch {
                        return Err(RspError::Protocol(DAMAGED_BATCH.into()));
                    }
                    if self.unacked.len() > 1 {
                        return Err(RspError::Protocol("the stub rejected a packet inside a pipelined batch".into()));
                    }
                    self.retransmits += 1;
                    if self.retransmits > MAX_RETRANSMIT {
                        return Err(RspError::Protocol("too many retransmissions".into()));
                    }
                    if let Some(f) = self.last_sent.clone() {
                        trace!(target: WIRE, "> (retransmit) {}", String::from_utf8_lossy(&f));
                        self.out.extend_from_slice(&f);
                    }
                }
                Event::Malformed { reason } => {
                    trace!(target: WIRE, "< malformed: {reason}");
                    if self.in_batch {
                        return Err(RspError::Protocol(DAMAGED_BATCH.into()));
                    }
                    if self.ack_mode && !reason.contains("garbage") {
                        self.out.push(b'-');
                    }
                }
                Event::Notification(n) => {
                    trace!(target: WIRE, "< %{}", String::from_utf8_lossy(&n));
                }
                Event::Interrupt => trace!(target: WIRE, "< 0x03"),
            }
        }
    }

    pub(crate) async fn recv_packet(&mut self, request: &str) -> Result<Vec<u8>, RspError> {
        let d = self.timeout;
        tokio::time::timeout(d, self.recv_packet_forever())
            .await
            .map_err(|_| RspError::Timeout { request: request.into() })?
    }

    /// Send one request and wait for its reply.
    pub(crate) async fn request(&mut self, payload: &[u8]) -> Result<Vec<u8>, RspError> {
        let name = name_of(payload);
        self.queue_packet(payload);
        self.flush_timeout(&name).await?;
        self.recv_packet(&name).await
    }

    /// Send requests pipelined (at most `depth` in flight, each window in
    /// one write) and return the raw replies in order.
    ///
    /// A damaged reply (bad checksum, garbage, a NAK of a request, or a reply
    /// that never completes) inside a window cannot be recovered in place:
    /// the stub only retransmits its latest reply. The connection is then
    /// drained until quiet, and a window of idempotent reads and writes is
    /// sent again one request at a time; any other window fails.
    pub(crate) async fn pipeline(&mut self, reqs: &[Vec<u8>], depth: usize) -> Result<Vec<Vec<u8>>, RspError> {
        let mut replies = Vec::with_capacity(reqs.len());
        for window in reqs.chunks(depth.max(1)) {
            if window.len() == 1 {
                replies.push(self.request(&window[0]).await?);
                continue;
            }
            for r in window {
                self.queue_packet(r);
            }
            let name = name_of(&window[0]);
            self.flush_timeout(&name).await?;
            self.in_batch = true;
            let mut got = Vec::with_capacity(window.len());
            let mut damaged = None;
            for r in window {
                match self.recv_packet(&name_of(r)).await {
                    Ok(p) => got.push(p),
                    Err(e @ (RspError::Protocol(_) | RspError::Timeout { .. })) => {
                        damaged = Some(e);
                        break;
                    }
                    Err(e) => {
                        self.in_batch = false;
                        return Err(e);
                    }
                }
            }
            self.in_batch = false;
            let Some(err) = damaged else {
                replies.extend(got);
                continue;
            };
            trace!(target: WIRE, "batch damaged ({err}); resynchronising");
            self.resync().await?;
            if !window.iter().all(|r| matches!(r.first(), Some(b'm' | b'M' | b'p' | b'g' | b'x' | b'X'))) {
                return Err(err);
            }
            for r in window {
                replies.push(self.request(r).await?);
            }
        }
        Ok(replies)
    }

    /// Reads and drops input until the stub has been quiet for a while, then
    /// starts framing afresh.
    async fn resync(&mut self) -> Result<(), RspError> {
        let quiet = (self.timeout / 10).clamp(Duration::from_millis(50), Duration::from_millis(300));
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout(quiet, self.t.read(&mut self.rbuf)).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(RspError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(io_err(e)),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RspError::Protocol("the stub does not stop sending after a damaged batch".into()));
            }
        }
        self.dec = Decoder::new(self.max_packet);
        self.unacked.clear();
        self.retransmits = 0;
        Ok(())
    }
}

fn io_err(e: std::io::Error) -> RspError {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof => RspError::Closed,
        _ => RspError::Io(e),
    }
}
