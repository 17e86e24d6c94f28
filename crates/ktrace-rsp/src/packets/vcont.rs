//! `vCont?` and `vCont;…` requests.

use super::check_reply;
use super::thread::ThreadId;
use crate::RspError;

/// `vCont?`.
pub const VCONT_QUERY: &[u8] = b"vCont?";

/// Actions the stub accepts in `vCont`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VContSupport {
    /// `c`.
    pub c: bool,
    /// `C sig`.
    pub c_sig: bool,
    /// `s`.
    pub s: bool,
    /// `S sig`.
    pub s_sig: bool,
    /// `t` (stop).
    pub t: bool,
    /// `r start,end` (range step).
    pub r: bool,
}

/// Parse a `vCont?` reply (`vCont;c;C;s;S`).
pub fn parse_vcont_support(reply: &[u8]) -> Result<VContSupport, RspError> {
    let r = check_reply("vCont?", reply)?;
    let rest = r.strip_prefix(b"vCont").ok_or_else(|| RspError::unexpected("vCont?", r))?;
    let mut s = VContSupport::default();
    for a in rest.split(|&b| b == b';').filter(|a| !a.is_empty()) {
        match a {
            b"c" => s.c = true,
            b"C" => s.c_sig = true,
            b"s" => s.s = true,
            b"S" => s.s_sig = true,
            b"t" => s.t = true,
            b"r" => s.r = true,
            _ => {}
        }
    }
    Ok(s)
}

/// One `vCont` action kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VContKind {
    /// `c`.
    Continue,
    /// `C sig`.
    ContinueSignal(u8),
    /// `s`.
    Step,
    /// `S sig`.
    StepSignal(u8),
    /// `t`.
    Stop,
    /// `r start,end`.
    RangeStep(u64, u64),
}

/// One `vCont` action, optionally restricted to a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VContAction {
    /// What to do.
    pub kind: VContKind,
    /// Which thread (`None` = every thread without an earlier action).
    pub thread: Option<ThreadId>,
}

/// `vCont;action[:tid];…`.
pub fn vcont_request(actions: &[VContAction]) -> Vec<u8> {
    let mut s = String::from("vCont");
    for a in actions {
        match a.kind {
            VContKind::Continue => s.push_str(";c"),
            VContKind::ContinueSignal(sig) => s.push_str(&format!(";C{sig:02x}")),
            VContKind::Step => s.push_str(";s"),
            VContKind::StepSignal(sig) => s.push_str(&format!(";S{sig:02x}")),
            VContKind::Stop => s.push_str(";t"),
            VContKind::RangeStep(a, b) => s.push_str(&format!(";r{a:x},{b:x}")),
        }
        if let Some(t) = a.thread {
            s.push_str(&format!(":{t}"));
        }
    }
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_vcont_query_reply() {
        let s = parse_vcont_support(b"vCont;c;C;s;S").unwrap();
        assert!(s.c && s.c_sig && s.s && s.s_sig && !s.t && !s.r);
    }

    #[test]
    fn invalid_vcont_query_reply() {
        assert!(parse_vcont_support(b"cont;c").is_err());
        assert!(matches!(parse_vcont_support(b""), Err(RspError::Unsupported { .. })));
    }

    #[test]
    fn vcont_actions_encoded() {
        let t: ThreadId = "p1.2".parse().unwrap();
        assert_eq!(vcont_request(&[VContAction { kind: VContKind::Continue, thread: None }]), b"vCont;c");
        assert_eq!(vcont_request(&[VContAction { kind: VContKind::Step, thread: Some(t) }]), b"vCont;s:p1.2");
        assert_eq!(
            vcont_request(&[
                VContAction { kind: VContKind::StepSignal(5), thread: Some(t) },
                VContAction { kind: VContKind::ContinueSignal(2), thread: None },
            ]),
            b"vCont;S05:p1.2;C02"
        );
    }
}
