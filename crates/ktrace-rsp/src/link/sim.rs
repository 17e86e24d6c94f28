//! A simulated stub and clock for the link's tests, after quinn-proto's
//! `tests/util.rs`: bytes move between a [`Link`] and a stub that behaves
//! like QEMU 7.2 (ack mode; a NAK retransmits its latest reply), and time
//! moves only when both sides wait. No sockets, no sleeps: every run is the same.

use std::time::{Duration, Instant};

use crate::codec::{encode_packet, Decoder, Event};
use crate::link::{Link, Outcome};
use crate::RspError;

/// What the stub does with one request.
#[derive(Clone, Debug)]
pub(super) enum Answer {
    /// Acknowledge it and reply with this payload.
    Reply(Vec<u8>),
    /// Acknowledge it and reply with a damaged frame (a NAK gets the intact one).
    Damaged(Vec<u8>),
    /// Acknowledge it and say nothing more.
    Nothing,
    /// NAK it.
    Nak,
}

type Script = Box<dyn FnMut(&[u8]) -> Answer>;

pub(super) struct Stub {
    dec: Decoder,
    ack_mode: bool,
    /// The latest reply, intact: what a NAK gets.
    last: Vec<u8>,
    to_client: Vec<u8>,
    script: Script,
    /// Every request received, in order.
    pub(super) requests: Vec<Vec<u8>>,
    /// How many requests arrived in each write of the client.
    pub(super) writes: Vec<usize>,
    /// `+` and `-` received from the client.
    pub(super) acks: usize,
    pub(super) naks: usize,
}

impl Stub {
    fn receive(&mut self, bytes: &[u8]) {
        self.dec.feed(bytes);
        let mut packets = 0;
        while let Ok(Some(ev)) = self.dec.next_event() {
            match ev {
                Event::Packet(p) => {
                    packets += 1;
                    self.answer(p);
                }
                Event::Ack => self.acks += 1,
                Event::Nack => {
                    self.naks += 1;
                    self.to_client.extend_from_slice(&self.last);
                }
                Event::Malformed { .. } => self.to_client.push(b'-'),
                Event::Notification(_) | Event::Interrupt => {}
            }
        }
        if packets > 0 {
            self.writes.push(packets);
        }
    }

    fn answer(&mut self, req: Vec<u8>) {
        let answer = (self.script)(&req);
        self.requests.push(req);
        if let Answer::Nak = answer {
            self.to_client.push(b'-');
            return;
        }
        if self.ack_mode {
            self.to_client.push(b'+');
        }
        match answer {
            Answer::Reply(p) => {
                self.last = encode_packet(&p);
                self.to_client.extend_from_slice(&self.last);
            }
            Answer::Damaged(p) => {
                self.last = encode_packet(&p);
                let mut bad = self.last.clone();
                bad[1] ^= 0x01;
                self.to_client.extend_from_slice(&bad);
            }
            Answer::Nothing | Answer::Nak => {}
        }
    }
}

/// QEMU's answer to `m ADDR,LEN`: the address's low byte, `LEN` times; `OK`
/// to anything else.
pub(super) fn memory(req: &[u8]) -> Answer {
    let text = std::str::from_utf8(req).expect("ASCII request");
    let Some((a, l)) = text.strip_prefix('m').and_then(|r| r.split_once(',')) else {
        return Answer::Reply(b"OK".to_vec());
    };
    let a = u64::from_str_radix(a, 16).expect("hex address");
    let l = usize::from_str_radix(l, 16).expect("hex length");
    Answer::Reply(format!("{:02x}", a & 0xff).repeat(l).into_bytes())
}

pub(super) struct Sim {
    pub(super) link: Link,
    pub(super) stub: Stub,
    start: Instant,
    now: Instant,
    /// The stub sends a garbage byte this often, whatever happens.
    pub(super) chatter: Option<Duration>,
    /// Bytes reach the link one at a time.
    pub(super) byte_by_byte: bool,
}

/// The link's reply timeout in these tests (as `tests/batch_damage.rs`).
pub(super) const TIMEOUT: Duration = Duration::from_millis(500);

impl Sim {
    /// A link and a stub in ack mode, past the handshake.
    pub(super) fn new(script: impl FnMut(&[u8]) -> Answer + 'static) -> Sim {
        let start = Instant::now();
        Sim {
            link: Link::new(crate::codec::DEFAULT_MAX_PACKET, TIMEOUT),
            stub: Stub {
                dec: Decoder::new(crate::codec::DEFAULT_MAX_PACKET),
                ack_mode: true,
                last: Vec::new(),
                to_client: Vec::new(),
                script: Box::new(script),
                requests: Vec::new(),
                writes: Vec::new(),
                acks: 0,
                naks: 0,
            },
            start,
            now: start,
            chatter: None,
            byte_by_byte: false,
        }
    }

    /// Both sides without acknowledgements.
    pub(super) fn no_ack(mut self) -> Sim {
        self.link.set_ack_mode(false);
        self.stub.ack_mode = false;
        self
    }

    /// Simulated time since the start.
    pub(super) fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub(super) fn now(&self) -> Instant {
        self.now
    }

    /// Runs until the link's exchange ends.
    pub(super) fn run(&mut self) -> Result<Outcome, RspError> {
        for _ in 0..100_000 {
            if let Some(r) = self.link.poll() {
                // What the link queued last (its `+`) goes out, as the driver's `try_flush`.
                let out = self.link.transmit().to_vec();
                self.link.transmitted(out.len());
                self.stub.receive(&out);
                return r;
            }
            let out = self.link.transmit().to_vec();
            if !out.is_empty() {
                self.link.transmitted(out.len());
                self.stub.receive(&out);
                continue;
            }
            let input = std::mem::take(&mut self.stub.to_client);
            if !input.is_empty() {
                if self.byte_by_byte {
                    for b in input {
                        self.link.handle_input(&[b], self.now);
                    }
                } else {
                    self.link.handle_input(&input, self.now);
                }
                continue;
            }
            let wake = self.link.poll_timeout().expect("the link waits for nothing: a real driver would hang");
            match self.chatter {
                Some(period) if self.now + period < wake => {
                    self.now += period;
                    self.link.handle_input(b"x", self.now);
                }
                _ => {
                    self.now = self.now.max(wake);
                    self.link.handle_timeout(self.now);
                }
            }
        }
        panic!("the exchange did not end");
    }

    /// A batch of text requests, `depth` in flight.
    pub(super) fn batch(&mut self, reqs: &[&str], depth: usize) -> Result<Vec<Vec<u8>>, RspError> {
        let reqs = reqs.iter().map(|r| r.as_bytes().to_vec()).collect();
        self.link.start_batch(reqs, depth, self.now);
        match self.run()? {
            Outcome::Replies(r) => Ok(r),
            other => panic!("a batch ended with {other:?}"),
        }
    }
}
