//! Sans-IO framing of the remote serial protocol.
//!
//! [`Decoder`] is fed raw bytes with [`Decoder::feed`] and yields [`Event`]s
//! from [`Decoder::next_event`]; `Ok(None)` means more bytes are needed.
//! Bad checksums, garbage and oversized packets are reported as
//! [`Event::Malformed`], never as a panic. Memory is bounded by the maximum
//! packet size given to [`Decoder::new`] (plus whatever the caller feeds
//! without pulling events).
//!
//! [`encode_packet`] frames a payload: `$payload#cs` with `$ # } *` escaped
//! as `}` followed by the byte XOR 0x20.

use std::collections::VecDeque;

/// Default maximum size of a raw (still escaped) packet body.
pub const DEFAULT_MAX_PACKET: usize = 256 * 1024;

/// One item decoded from the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A `$…#cs` packet; the payload is un-escaped and run-length expanded.
    Packet(Vec<u8>),
    /// A `%…#cs` notification (payload decoded like a packet's).
    Notification(Vec<u8>),
    /// A `+` acknowledgement.
    Ack,
    /// A `-` negative acknowledgement (the peer wants a retransmission).
    Nack,
    /// A 0x03 interrupt byte.
    Interrupt,
    /// Something that is not a valid item: bad checksum, garbage bytes,
    /// oversized packet, bad run-length encoding.
    Malformed {
        /// Human-readable reason.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Body { notification: bool },
    Sum1 { notification: bool },
    Sum2 { notification: bool, hi: u8 },
}

/// Incremental decoder of the RSP byte stream.
#[derive(Debug)]
pub struct Decoder {
    input: VecDeque<u8>,
    state: State,
    body: Vec<u8>,
    sum: u8,
    oversized: bool,
    garbage: usize,
    max_packet: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PACKET)
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Decoder {
    /// A decoder that discards (and reports) packets whose raw body exceeds
    /// `max_packet` bytes.
    pub fn new(max_packet: usize) -> Self {
        Decoder {
            input: VecDeque::new(),
            state: State::Idle,
            body: Vec::new(),
            sum: 0,
            oversized: false,
            garbage: 0,
            max_packet: max_packet.max(1),
        }
    }

    /// Append received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend(bytes);
    }

    /// Number of fed bytes not yet consumed.
    pub fn buffered(&self) -> usize {
        self.input.len() + self.body.len()
    }

    /// Pull the next decoded event; `Ok(None)` means more input is needed.
    ///
    /// The `Result` is kept for forward compatibility; today every problem is
    /// reported as [`Event::Malformed`].
    pub fn next_event(&mut self) -> Result<Option<Event>, crate::RspError> {
        while let Some(b) = self.input.pop_front() {
            match self.state {
                State::Idle => {
                    let ev = match b {
                        b'$' | b'%' => {
                            self.state = State::Body { notification: b == b'%' };
                            self.body.clear();
                            self.sum = 0;
                            self.oversized = false;
                            None
                        }
                        b'+' => Some(Event::Ack),
                        b'-' => Some(Event::Nack),
                        0x03 => Some(Event::Interrupt),
                        _ => {
                            self.garbage += 1;
                            if self.garbage >= 256 {
                                return Ok(Some(self.take_garbage()));
                            }
                            continue;
                        }
                    };
                    if self.garbage > 0 {
                        // Report the garbage first, then re-process this byte.
                        self.state = State::Idle;
                        self.input.push_front(b);
                        return Ok(Some(self.take_garbage()));
                    }
                    if let Some(ev) = ev {
                        return Ok(Some(ev));
                    }
                }
                State::Body { notification } => {
                    if b == b'#' {
                        self.state = State::Sum1 { notification };
                    } else if b == b'$' && !notification {
                        // A new packet starts inside a packet: report the
                        // truncated one and restart.
                        self.body.clear();
                        self.sum = 0;
                        self.oversized = false;
                        return Ok(Some(Event::Malformed { reason: "packet restarted before its end".into() }));
                    } else {
                        self.sum = self.sum.wrapping_add(b);
                        if self.body.len() < self.max_packet {
                            self.body.push(b);
                        } else {
                            self.oversized = true;
                        }
                    }
                }
                State::Sum1 { notification } => match hex_val(b) {
                    Some(hi) => self.state = State::Sum2 { notification, hi },
                    None => return Ok(Some(self.bad_sum_char(b))),
                },
                State::Sum2 { notification, hi } => {
                    let Some(lo) = hex_val(b) else {
                        return Ok(Some(self.bad_sum_char(b)));
                    };
                    self.state = State::Idle;
                    let body = std::mem::take(&mut self.body);
                    if self.oversized {
                        return Ok(Some(Event::Malformed {
                            reason: format!("packet larger than {} bytes discarded", self.max_packet),
                        }));
                    }
                    let want = (hi << 4) | lo;
                    if want != self.sum {
                        return Ok(Some(Event::Malformed {
                            reason: format!("bad checksum: got {want:02x}, computed {:02x}", self.sum),
                        }));
                    }
                    return Ok(Some(match decode_body(&body, self.max_packet) {
                        Ok(p) if notification => Event::Notification(p),
                        Ok(p) => Event::Packet(p),
                        Err(reason) => Event::Malformed { reason },
                    }));
                }
            }
        }
        Ok(None)
    }

    fn take_garbage(&mut self) -> Event {
        let n = std::mem::take(&mut self.garbage);
        Event::Malformed { reason: format!("{n} garbage byte(s) outside a packet") }
    }

    fn bad_sum_char(&mut self, b: u8) -> Event {
        self.state = State::Idle;
        self.body.clear();
        if b == b'$' || b == b'%' || b == b'+' || b == b'-' || b == 0x03 {
            self.input.push_front(b);
        }
        Event::Malformed { reason: format!("non-hex checksum character {b:#04x}") }
    }
}

/// Un-escape (`}x` → `x ^ 0x20`) and run-length expand (`c*n` → `c` repeated
/// `n - 29` more times) a raw packet body.
fn decode_body(raw: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'}' => {
                let Some(&n) = raw.get(i + 1) else {
                    return Err("escape character at end of packet".into());
                };
                out.push(n ^ 0x20);
                i += 2;
            }
            b'*' => {
                let (Some(&last), Some(&n)) = (out.last(), raw.get(i + 1)) else {
                    return Err("bad run-length encoding".into());
                };
                if n < 29 {
                    return Err("bad run-length count".into());
                }
                let count = (n - 29) as usize;
                if out.len() + count > max {
                    return Err("run-length expansion exceeds the maximum packet size".into());
                }
                out.extend(std::iter::repeat_n(last, count));
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Frame `payload` as `$…#cs`, escaping `$`, `#`, `}` and `*`.
pub fn encode_packet(payload: &[u8]) -> Vec<u8> {
    encode_with(b'$', payload)
}

/// Frame `payload` as a `%…#cs` notification.
pub fn encode_notification(payload: &[u8]) -> Vec<u8> {
    encode_with(b'%', payload)
}

fn encode_with(start: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.push(start);
    let mut sum: u8 = 0;
    for &b in payload {
        if matches!(b, b'$' | b'#' | b'}' | b'*') {
            out.push(b'}');
            out.push(b ^ 0x20);
            sum = sum.wrapping_add(b'}').wrapping_add(b ^ 0x20);
        } else {
            out.push(b);
            sum = sum.wrapping_add(b);
        }
    }
    out.push(b'#');
    out.extend_from_slice(format!("{sum:02x}").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(d: &mut Decoder) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(e) = d.next_event().unwrap() {
            v.push(e);
        }
        v
    }

    #[test]
    fn valid_packet() {
        let mut d = Decoder::default();
        d.feed(b"+$OK#9a");
        assert_eq!(all(&mut d), vec![Event::Ack, Event::Packet(b"OK".to_vec())]);
    }

    #[test]
    fn packet_split_across_feeds() {
        let mut d = Decoder::default();
        d.feed(b"$O");
        assert_eq!(d.next_event().unwrap(), None);
        d.feed(b"K#9");
        assert_eq!(d.next_event().unwrap(), None);
        d.feed(b"a");
        assert_eq!(d.next_event().unwrap(), Some(Event::Packet(b"OK".to_vec())));
    }

    #[test]
    fn invalid_checksum() {
        let mut d = Decoder::default();
        d.feed(b"$OK#00$OK#9a");
        let ev = all(&mut d);
        assert!(matches!(ev[0], Event::Malformed { .. }));
        assert_eq!(ev[1], Event::Packet(b"OK".to_vec()));
    }

    #[test]
    fn non_hex_checksum() {
        let mut d = Decoder::default();
        d.feed(b"$OK#z$OK#9a");
        let ev = all(&mut d);
        assert!(matches!(ev[0], Event::Malformed { .. }));
        assert_eq!(ev[1], Event::Packet(b"OK".to_vec()));
    }

    #[test]
    fn nack_interrupt_notification() {
        let mut d = Decoder::default();
        d.feed(b"-\x03");
        d.feed(&encode_notification(b"Stop:T05"));
        assert_eq!(all(&mut d), vec![Event::Nack, Event::Interrupt, Event::Notification(b"Stop:T05".to_vec())]);
    }

    #[test]
    fn garbage_reported_then_packet() {
        let mut d = Decoder::default();
        d.feed(b"xyz$OK#9a");
        let ev = all(&mut d);
        assert!(matches!(&ev[0], Event::Malformed { reason } if reason.contains("3 garbage")));
        assert_eq!(ev[1], Event::Packet(b"OK".to_vec()));
    }

    #[test]
    fn run_length_expanded() {
        // "0* " = '0' + 3 more (space is 32, 32-29 = 3)
        let mut d = Decoder::default();
        let body = b"0* ";
        let sum = body.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        d.feed(format!("${}#{sum:02x}", std::str::from_utf8(body).unwrap()).as_bytes());
        assert_eq!(all(&mut d), vec![Event::Packet(b"0000".to_vec())]);
    }

    #[test]
    fn escaped_bytes_decoded() {
        let enc = encode_packet(b"a$b#c}d*e");
        assert!(enc.starts_with(b"$a}\x04b}\x03c}]d}\x0ae#"));
        let mut d = Decoder::default();
        d.feed(&enc);
        assert_eq!(all(&mut d), vec![Event::Packet(b"a$b#c}d*e".to_vec())]);
    }

    #[test]
    fn oversized_packet_discarded() {
        let mut d = Decoder::new(8);
        d.feed(&encode_packet(b"0123456789abcdef"));
        d.feed(b"$OK#9a");
        let ev = all(&mut d);
        assert!(matches!(&ev[0], Event::Malformed { reason } if reason.contains("larger")));
        assert_eq!(ev[1], Event::Packet(b"OK".to_vec()));
        assert!(d.buffered() == 0);
    }

    #[test]
    fn encode_known_checksum() {
        assert_eq!(encode_packet(b"qC"), b"$qC#b4".to_vec());
        assert_eq!(encode_packet(b"?"), b"$?#3f".to_vec());
    }

    proptest! {
        #[test]
        fn round_trip_any_payload_any_split(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..5),
            cuts in proptest::collection::vec(1usize..50, 0..20),
        ) {
            let mut stream = Vec::new();
            for p in &payloads {
                stream.extend(encode_packet(p));
            }
            let mut d = Decoder::default();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            for c in cuts {
                let n = c.min(rest.len());
                d.feed(&rest[..n]);
                rest = &rest[n..];
                got.extend(all(&mut d));
            }
            d.feed(rest);
            got.extend(all(&mut d));
            let want: Vec<Event> = payloads.into_iter().map(Event::Packet).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let mut d = Decoder::new(64);
            d.feed(&bytes);
            let _ = all(&mut d);
            prop_assert!(d.buffered() <= 64);
        }
    }
}
