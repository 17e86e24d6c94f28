//! Thread packets: `H`, `qfThreadInfo`/`qsThreadInfo`, `qThreadExtraInfo`,
//! `qC`, `qAttached`, and the [`ThreadId`] syntax.

use super::{check_reply, from_hex, hex_u64, parse_all};
use crate::RspError;
use nom::branch::alt;
use nom::bytes::complete::tag;
use nom::combinator::{map, opt, value};
use nom::multi::separated_list1;
use nom::sequence::preceded;
use nom::{IResult, Parser};
use std::fmt;
use std::str::FromStr;

/// One component of a thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Id {
    /// `0`: any thread/process.
    Any,
    /// `-1`: all threads/processes.
    All,
    /// A concrete (positive) id.
    Id(u64),
}

/// A thread id: `p<pid>.<tid>` (multiprocess) or `<tid>`, hex, with `-1` and
/// `0` meaning all and any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadId {
    /// The process, when the multiprocess syntax is used.
    pub pid: Option<Id>,
    /// The thread.
    pub tid: Id,
}

impl ThreadId {
    /// A plain (non-multiprocess) thread id.
    pub fn new(tid: u64) -> Self {
        ThreadId { pid: None, tid: Id::Id(tid) }
    }
    /// `-1`: all threads.
    pub const ALL: ThreadId = ThreadId { pid: None, tid: Id::All };
    /// `0`: any thread.
    pub const ANY: ThreadId = ThreadId { pid: None, tid: Id::Any };
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Any => f.write_str("0"),
            Id::All => f.write_str("-1"),
            Id::Id(n) => write!(f, "{n:x}"),
        }
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(p) => write!(f, "p{p}.{}", self.tid),
            None => write!(f, "{}", self.tid),
        }
    }
}

impl FromStr for ThreadId {
    type Err = RspError;
    fn from_str(s: &str) -> Result<Self, RspError> {
        parse_all("thread-id", s.as_bytes(), thread_id)
    }
}

fn id(i: &[u8]) -> IResult<&[u8], Id> {
    alt((value(Id::All, tag("-1")), map(hex_u64, |n| if n == 0 { Id::Any } else { Id::Id(n) }))).parse(i)
}

/// nom parser for a thread id.
pub(crate) fn thread_id(i: &[u8]) -> IResult<&[u8], ThreadId> {
    alt((
        map((preceded(tag("p"), id), opt(preceded(tag("."), id))), |(p, t)| ThreadId {
            pid: Some(p),
            tid: t.unwrap_or(Id::All),
        }),
        map(id, |t| ThreadId { pid: None, tid: t }),
    ))
    .parse(i)
}

/// Which operation `H` selects the thread for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadOp {
    /// `Hg`: register/memory accesses.
    General,
    /// `Hc`: continue/step (legacy, without vCont).
    Continue,
}

/// `Hg<tid>` / `Hc<tid>`.
pub fn set_thread_request(op: ThreadOp, tid: ThreadId) -> Vec<u8> {
    let c = match op {
        ThreadOp::General => 'g',
        ThreadOp::Continue => 'c',
    };
    format!("H{c}{tid}").into_bytes()
}

/// `qfThreadInfo`.
pub const THREAD_INFO_FIRST: &[u8] = b"qfThreadInfo";
/// `qsThreadInfo`.
pub const THREAD_INFO_NEXT: &[u8] = b"qsThreadInfo";

/// Parse a `qfThreadInfo`/`qsThreadInfo` reply: `Some(list)` for `m…`,
/// `None` for `l` (end of list).
pub fn parse_thread_info(reply: &[u8]) -> Result<Option<Vec<ThreadId>>, RspError> {
    let r = check_reply("qfThreadInfo", reply)?;
    if r == b"l" {
        return Ok(None);
    }
    parse_all("qfThreadInfo", r, map(preceded(tag("m"), separated_list1(tag(","), thread_id)), Some))
}

/// `qThreadExtraInfo,<tid>`.
pub fn thread_extra_info_request(tid: ThreadId) -> Vec<u8> {
    format!("qThreadExtraInfo,{tid}").into_bytes()
}

/// Parse the hex-encoded string of a `qThreadExtraInfo` reply.
pub fn parse_thread_extra_info(reply: &[u8]) -> Result<String, RspError> {
    let r = check_reply("qThreadExtraInfo", reply)?;
    let bytes = from_hex(r).ok_or_else(|| RspError::unexpected("qThreadExtraInfo", r))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `qC`.
pub const CURRENT_THREAD: &[u8] = b"qC";

/// Parse a `qC` reply (`QC<tid>`).
pub fn parse_current_thread(reply: &[u8]) -> Result<ThreadId, RspError> {
    let r = check_reply("qC", reply)?;
    parse_all("qC", r, preceded(tag("QC"), thread_id))
}

/// `qAttached` (optionally `qAttached:pid`).
pub fn attached_request(pid: Option<u64>) -> Vec<u8> {
    match pid {
        Some(p) => format!("qAttached:{p:x}").into_bytes(),
        None => b"qAttached".to_vec(),
    }
}

/// Parse a `qAttached` reply: `true` when attached to an existing process.
pub fn parse_attached(reply: &[u8]) -> Result<bool, RspError> {
    match check_reply("qAttached", reply)? {
        b"1" => Ok(true),
        b"0" => Ok(false),
        r => Err(RspError::unexpected("qAttached", r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_id_formats() {
        for s in ["p1.2", "2", "-1", "0", "p1.-1", "p-1.-1", "pa.1f"] {
            assert_eq!(s.parse::<ThreadId>().unwrap().to_string(), s);
        }
        assert_eq!("p01.02".parse::<ThreadId>().unwrap(), ThreadId { pid: Some(Id::Id(1)), tid: Id::Id(2) });
        assert_eq!("0".parse::<ThreadId>().unwrap(), ThreadId::ANY);
        assert!("p".parse::<ThreadId>().is_err());
        assert!("x1".parse::<ThreadId>().is_err());
    }

    #[test]
    fn valid_thread_info_multiprocess() {
        let v = parse_thread_info(b"mp01.01,p01.02").unwrap().unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].to_string(), "p1.2");
        assert_eq!(parse_thread_info(b"l").unwrap(), None);
    }

    #[test]
    fn invalid_thread_info() {
        assert!(parse_thread_info(b"mzz").is_err());
        assert!(parse_thread_info(b"m").is_err());
    }

    #[test]
    fn valid_extra_info_hex() {
        assert_eq!(parse_thread_extra_info(b"4350552330205b68616c746564205d").unwrap(), "CPU#0 [halted ]");
    }

    #[test]
    fn valid_current_thread_and_attached() {
        assert_eq!(parse_current_thread(b"QCp01.01").unwrap().to_string(), "p1.1");
        assert!(parse_attached(b"1").unwrap());
        assert_eq!(set_thread_request(ThreadOp::General, "p1.2".parse().unwrap()), b"Hgp1.2");
        assert_eq!(set_thread_request(ThreadOp::Continue, ThreadId::ALL), b"Hc-1");
    }
}
