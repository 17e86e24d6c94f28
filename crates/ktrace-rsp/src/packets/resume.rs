//! Legacy resume packets `c [addr]` / `s [addr]` and the high-level
//! [`Resume`] action.

use super::thread::ThreadId;
use super::vcont::{vcont_request, VContAction, VContKind};

/// How to resume a stopped target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Continue every thread.
    Continue,
    /// Single-step the current thread (the one that last stopped).
    Step,
    /// Continue only this thread (vCont) / continue with `Hc` set to it.
    ContinueThread(ThreadId),
    /// Single-step this thread.
    StepThread(ThreadId),
}

/// `c` or `c<addr>`.
pub fn continue_request(addr: Option<u64>) -> Vec<u8> {
    match addr {
        Some(a) => format!("c{a:x}").into_bytes(),
        None => b"c".to_vec(),
    }
}

/// `s` or `s<addr>`.
pub fn step_request(addr: Option<u64>) -> Vec<u8> {
    match addr {
        Some(a) => format!("s{a:x}").into_bytes(),
        None => b"s".to_vec(),
    }
}

/// Encode `action` as a `vCont` packet. `current` is the thread a plain
/// [`Resume::Step`] applies to.
pub fn resume_vcont(action: Resume, current: Option<ThreadId>) -> Vec<u8> {
    let a = |kind, thread| VContAction { kind, thread };
    let acts = match action {
        Resume::Continue => vec![a(VContKind::Continue, None)],
        Resume::Step => vec![a(VContKind::Step, current)],
        Resume::ContinueThread(t) => vec![a(VContKind::Continue, Some(t))],
        Resume::StepThread(t) => vec![a(VContKind::Step, Some(t))],
    };
    vcont_request(&acts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_resume_encoded() {
        assert_eq!(continue_request(None), b"c");
        assert_eq!(continue_request(Some(0x1000)), b"c1000");
        assert_eq!(step_request(Some(0xff)), b"sff");
    }

    #[test]
    fn resume_as_vcont() {
        let t: ThreadId = "p1.1".parse().unwrap();
        assert_eq!(resume_vcont(Resume::Continue, Some(t)), b"vCont;c");
        assert_eq!(resume_vcont(Resume::Step, Some(t)), b"vCont;s:p1.1");
        assert_eq!(resume_vcont(Resume::Step, None), b"vCont;s");
        assert_eq!(resume_vcont(Resume::ContinueThread(t), None), b"vCont;c:p1.1");
    }
}
