//! What every state of a session shares: the connection, what the stub
//! announced, the last stop's thread, console output, and the one
//! detach-on-drop.

use super::config::ClientConfig;
use super::conn::Conn;
use crate::packets::stop::{is_stop_reply, parse_stop_reply};
use crate::packets::thread::Id;
use crate::packets::{detach, expect_ok, monitor, resume, thread};
use crate::{Capabilities, RegisterMap, Resume, RspError, StopReply, ThreadId, ThreadOp};

pub(crate) struct Shared {
    pub(crate) conn: Conn,
    pub(crate) caps: Capabilities,
    pub(crate) regmap: Option<RegisterMap>,
    pub(crate) pid: Option<u64>,
    pub(crate) last_thread: Option<ThreadId>,
    pub(crate) cfg: ClientConfig,
    pub(crate) console: Vec<u8>,
    /// The target was resumed and no stop has been seen since.
    pub(crate) running: bool,
    /// Dropping detaches: set once the session is handed out, cleared by an
    /// explicit detach, kill or disconnect.
    pub(crate) detach_on_drop: bool,
    /// `m`/`M` address guest physical memory (`Qqemu.PhyMemMode:1`). QEMU
    /// keeps the mode for the next client, so every way out switches it
    /// back to virtual.
    pub(crate) physical: bool,
}

impl Drop for Shared {
    /// Best-effort, non-blocking: `0x03` if the target runs, then the detach
    /// packet, so that QEMU removes breakpoints and resumes the guest.
    fn drop(&mut self) {
        // Left running without a detach: any byte would stop the VM, so the
        // physical mode stays (the next session reads it at connect).
        if !self.detach_on_drop && (!self.physical || self.running) {
            return;
        }
        let mut bytes = Vec::new();
        if self.running {
            bytes.push(0x03);
        }
        if self.physical {
            bytes.extend(crate::codec::encode_packet(&crate::packets::qemu::phys_mode_request(false)));
        }
        if self.detach_on_drop {
            bytes.extend(crate::codec::encode_packet(&self.detach_payload()));
        }
        self.conn.try_write_now(&bytes);
    }
}

impl Shared {
    pub(crate) fn new(conn: Conn, cfg: ClientConfig) -> Shared {
        Shared {
            conn,
            caps: Capabilities::default(),
            regmap: None,
            pid: None,
            last_thread: None,
            cfg,
            console: Vec::new(),
            running: false,
            detach_on_drop: false,
            physical: false,
        }
    }

    pub(crate) fn note_stop(&mut self, s: &StopReply) {
        self.running = false;
        if let Some(t) = s.thread() {
            self.last_thread = Some(t);
            if let Some(Id::Id(p)) = t.pid {
                self.pid = Some(p);
            }
        }
    }

    pub(crate) fn detach_payload(&self) -> Vec<u8> {
        let pid = if self.caps.multiprocess { Some(self.pid.unwrap_or(1)) } else { None };
        detach::detach_request(pid)
    }

    fn resume_packets(&self, action: Resume) -> (Option<Vec<u8>>, Vec<u8>) {
        if self.caps.vcont.is_some_and(|v| v.c && v.s) {
            return (None, resume::resume_vcont(action, self.last_thread));
        }
        match action {
            Resume::Continue => (None, resume::continue_request(None)),
            Resume::Step => (None, resume::step_request(None)),
            Resume::ContinueThread(t) => {
                (Some(thread::set_thread_request(ThreadOp::Continue, t)), resume::continue_request(None))
            }
            Resume::StepThread(t) => {
                (Some(thread::set_thread_request(ThreadOp::Continue, t)), resume::step_request(None))
            }
        }
    }

    /// The resume packet (after `Hc`, for legacy thread selection).
    pub(crate) async fn prepare_resume(&mut self, action: Resume) -> Result<Vec<u8>, RspError> {
        let (pre, pkt) = self.resume_packets(action);
        if let Some(pre) = pre {
            let r = self.conn.request(&pre).await?;
            expect_ok("Hc", &r)?;
        }
        Ok(pkt)
    }

    /// Sends a packet whose answer is not a reply (a resume, a step, `k`).
    pub(crate) async fn send(&mut self, pkt: &[u8], what: &str) -> Result<(), RspError> {
        self.conn.link.send(pkt);
        self.conn.flush_timeout(what).await
    }

    /// Wait for a stop reply, keeping `O` output. `timeout` false: wait forever.
    pub(crate) async fn wait_stop(&mut self, timeout: bool) -> Result<StopReply, RspError> {
        loop {
            let p = if timeout {
                self.conn.recv_packet("stop reply").await?
            } else {
                self.conn.recv_packet_forever().await?
            };
            if let Some(o) = monitor::parse_console_output(&p) {
                self.console.extend(o);
                continue;
            }
            if is_stop_reply(&p) {
                let s = parse_stop_reply(&p)?;
                self.note_stop(&s);
                return Ok(s);
            }
            tracing::trace!(target: "ktrace_rsp::wire", "ignoring unexpected packet while waiting for a stop");
        }
    }
}
