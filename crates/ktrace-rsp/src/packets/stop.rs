//! `?` and stop replies (`T`, `S`, `W`, `X`).

use super::thread::{thread_id, ThreadId};
use super::{check_reply, from_hex, hex_byte, hex_u64};
use crate::RspError;

/// GDB's signal number for a breakpoint or single-step stop.
pub const SIGTRAP: u8 = 5;
/// GDB's signal number for an interrupt (`0x03` sent by the client).
pub const SIGINT: u8 = 2;

/// `?`: ask why the target stopped. In QEMU this also removes all
/// breakpoints.
pub const QUERY_HALT_REASON: &[u8] = b"?";

/// Why a `T` stop happened, when the stub says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `swbreak`: a software breakpoint.
    SwBreak,
    /// `hwbreak`: a hardware breakpoint.
    HwBreak,
    /// `watch:addr`: a write watchpoint.
    Watch(u64),
    /// `rwatch:addr`: a read watchpoint.
    ReadWatch(u64),
    /// `awatch:addr`: an access watchpoint.
    AccessWatch(u64),
}

/// A stop reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReply {
    /// `S sig` or `T sig …`: the target stopped with a signal.
    Signal {
        /// The signal number (5 = SIGTRAP, 2 = SIGINT).
        signal: u8,
        /// `thread:` if present.
        thread: Option<ThreadId>,
        /// `core:` if present.
        core: Option<u32>,
        /// Breakpoint/watchpoint reason if present.
        reason: Option<StopReason>,
        /// `NN:value` register pairs (register number, raw target bytes).
        registers: Vec<(u32, Vec<u8>)>,
    },
    /// `W status[;process:pid]`: the process exited.
    Exited {
        /// Exit status.
        status: u8,
        /// The process, if given.
        pid: Option<u64>,
    },
    /// `X sig[;process:pid]`: the process was terminated by a signal.
    Terminated {
        /// The signal.
        signal: u8,
        /// The process, if given.
        pid: Option<u64>,
    },
}

impl StopReply {
    /// The stopping thread, if any.
    pub fn thread(&self) -> Option<ThreadId> {
        match self {
            StopReply::Signal { thread, .. } => *thread,
            _ => None,
        }
    }
}

/// Does this payload look like a stop reply (`T`/`S`/`W`/`X` + two hex digits)?
pub fn is_stop_reply(p: &[u8]) -> bool {
    matches!(p, [b'T' | b'S' | b'W' | b'X', a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit())
}

fn bad(p: &[u8]) -> RspError {
    RspError::unexpected("stop reply", p)
}

fn hex_all(v: &[u8]) -> Option<u64> {
    match hex_u64(v) {
        Ok((b"", n)) => Some(n),
        _ => None,
    }
}

/// Parse a stop reply.
pub fn parse_stop_reply(reply: &[u8]) -> Result<StopReply, RspError> {
    let p = check_reply("stop reply", reply)?;
    let (kind, rest) = p.split_first().ok_or_else(|| bad(p))?;
    let (rest, sig) = hex_byte(rest).map_err(|_| bad(p))?;
    match kind {
        b'S' if rest.is_empty() => {
            Ok(StopReply::Signal { signal: sig, thread: None, core: None, reason: None, registers: Vec::new() })
        }
        b'W' | b'X' => {
            let pid = match rest {
                b"" => None,
                r => Some(r.strip_prefix(b";process:").and_then(hex_all).ok_or_else(|| bad(p))?),
            };
            Ok(if *kind == b'W' {
                StopReply::Exited { status: sig, pid }
            } else {
                StopReply::Terminated { signal: sig, pid }
            })
        }
        b'T' => parse_t_pairs(sig, rest).ok_or_else(|| bad(p)),
        _ => Err(bad(p)),
    }
}

fn parse_t_pairs(signal: u8, rest: &[u8]) -> Option<StopReply> {
    let (mut thread, mut core, mut reason, mut registers) = (None, None, None, Vec::new());
    for pair in rest.split(|&b| b == b';').filter(|s| !s.is_empty()) {
        let (key, val) = match pair.iter().position(|&b| b == b':') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        match key {
            b"thread" => {
                let (r, t) = thread_id(val).ok()?;
                if !r.is_empty() {
                    return None;
                }
                thread = Some(t);
            }
            b"core" => core = Some(u32::try_from(hex_all(val)?).ok()?),
            b"swbreak" => reason = Some(StopReason::SwBreak),
            b"hwbreak" => reason = Some(StopReason::HwBreak),
            b"watch" => reason = Some(StopReason::Watch(hex_all(val)?)),
            b"rwatch" => reason = Some(StopReason::ReadWatch(hex_all(val)?)),
            b"awatch" => reason = Some(StopReason::AccessWatch(hex_all(val)?)),
            k if !k.is_empty() && k.iter().all(u8::is_ascii_hexdigit) => {
                let n = u32::try_from(hex_all(k)?).ok()?;
                registers.push((n, from_hex(val)?));
            }
            // Unknown keys (e.g. `library`, `fork`) are ignored, as the
            // protocol requires.
            _ => {}
        }
    }
    Some(StopReply::Signal { signal, thread, core, reason, registers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::thread::Id;

    #[test]
    fn valid_stop_reply_with_thread() {
        let r = parse_stop_reply(b"T05thread:p01.02;").unwrap();
        assert_eq!(
            r,
            StopReply::Signal {
                signal: 5,
                thread: Some(ThreadId { pid: Some(Id::Id(1)), tid: Id::Id(2) }),
                core: None,
                reason: None,
                registers: vec![],
            }
        );
        assert_eq!(parse_stop_reply(b"T02thread:01;").unwrap().thread(), Some(ThreadId::new(1)));
    }

    #[test]
    fn valid_stop_reply_with_registers_core_and_reason() {
        let r = parse_stop_reply(b"T05swbreak:;06:0100000000000000;thread:3;core:1;library:;").unwrap();
        let StopReply::Signal { core, reason, registers, .. } = r else { panic!() };
        assert_eq!(core, Some(1));
        assert_eq!(reason, Some(StopReason::SwBreak));
        assert_eq!(registers, vec![(6, vec![1, 0, 0, 0, 0, 0, 0, 0])]);
        let r = parse_stop_reply(b"T05watch:ffffffff82a079c0;").unwrap();
        assert!(matches!(r, StopReply::Signal { reason: Some(StopReason::Watch(0xffffffff82a079c0)), .. }));
        assert!(matches!(
            parse_stop_reply(b"T05hwbreak:;").unwrap(),
            StopReply::Signal { reason: Some(StopReason::HwBreak), .. }
        ));
        assert!(matches!(
            parse_stop_reply(b"T05awatch:10;").unwrap(),
            StopReply::Signal { reason: Some(StopReason::AccessWatch(16)), .. }
        ));
        assert!(matches!(
            parse_stop_reply(b"T05rwatch:10;").unwrap(),
            StopReply::Signal { reason: Some(StopReason::ReadWatch(16)), .. }
        ));
    }

    #[test]
    fn valid_signal_exit_terminate() {
        assert!(matches!(parse_stop_reply(b"S02").unwrap(), StopReply::Signal { signal: 2, .. }));
        assert_eq!(parse_stop_reply(b"W00").unwrap(), StopReply::Exited { status: 0, pid: None });
        assert_eq!(parse_stop_reply(b"X09;process:1").unwrap(), StopReply::Terminated { signal: 9, pid: Some(1) });
    }

    #[test]
    fn invalid_stop_replies() {
        for bad in [&b"T"[..], b"T5", b"Q05", b"T05thread:zz;", b"T05core:x;", b"T0501:abc;", b"W00;pid:1", b"S05junk"]
        {
            assert!(parse_stop_reply(bad).is_err(), "{:?}", bad);
        }
        assert!(matches!(parse_stop_reply(b""), Err(RspError::Unsupported { .. })));
        assert!(is_stop_reply(b"T02thread:01;"));
        assert!(!is_stop_reply(b"OK"));
    }
}
