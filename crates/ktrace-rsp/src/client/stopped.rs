//! The stopped state: [`Session`].

use super::batch::Batch;
use super::config::{ClientConfig, StubAddr};
use super::conn::{name_of, Conn};
use super::shared::Shared;
use super::state::{Running, RunningSession, Session, Stopped};
use super::transport::Transport;
use crate::packets::monitor::RcmdReply;
use crate::packets::stop::{is_stop_reply, parse_stop_reply};
use crate::packets::thread::Id;
use crate::packets::{self, *};
use crate::{BreakpointKind, Capabilities, RegisterMap, Resume, RspError, StopReply, ThreadId, ThreadOp};

impl Session {
    fn i(&mut self) -> &mut Shared {
        &mut self.shared
    }

    fn into_running(self) -> RunningSession {
        let mut running = self.into_state(Running { stop: None });
        running.shared.running = true;
        running
    }

    /// Connect and synchronise.
    ///
    /// Sends `+`, `qSupported` (advertising multiprocess, swbreak, hwbreak,
    /// vContSupported and qXfer:features:read), `QStartNoAckMode` when offered
    /// and enabled in `cfg`, then `?`, fetches `target.xml` when offered and
    /// asks `vCont?`. Stop replies that arrive unsolicited (QEMU sends one when
    /// a client connects and stops the VM) are skipped.
    ///
    /// Note: in QEMU, `?` removes all breakpoints; that is acceptable at
    /// connect time (a previous client may have left some behind).
    ///
    /// Returns the answer to `?` (or the unsolicited stop if `?` gave none).
    pub async fn connect(addr: &StubAddr, cfg: ClientConfig) -> Result<(Session, Option<StopReply>), RspError> {
        let connect = async {
            Ok::<_, std::io::Error>(match addr {
                StubAddr::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(a).await?;
                    s.set_nodelay(true)?;
                    Transport::Tcp(s)
                }
                StubAddr::Unix(p) => Transport::Unix(tokio::net::UnixStream::connect(p).await?),
            })
        };
        let t = tokio::time::timeout(cfg.timeout, connect)
            .await
            .map_err(|_| RspError::Timeout { request: format!("connect {addr}") })??;
        let mut conn = Conn::new(t, cfg.max_packet, cfg.timeout);
        conn.link.send_raw(b"+");
        let q = qsupported::qsupported_request(qsupported::CLIENT_FEATURES);
        conn.link.send(&q);
        conn.flush_timeout("qSupported").await?;
        let mut unsolicited = None;
        let caps_reply = loop {
            let p = conn.recv_packet("qSupported").await?;
            if is_stop_reply(&p) {
                unsolicited = parse_stop_reply(&p).ok();
                continue;
            }
            break p;
        };
        let mut caps = match qsupported::parse_qsupported(&caps_reply) {
            Ok(c) => c,
            Err(RspError::Unsupported { .. }) => Capabilities::default(),
            Err(e) => return Err(e),
        };
        if cfg.no_ack && caps.no_ack_mode {
            let r = conn.request(qsupported::START_NO_ACK_MODE).await?;
            if r == b"OK" {
                conn.link.set_ack_mode(false);
            }
        }
        let mut shared = Shared::new(conn, cfg);
        if let Some(s) = &unsolicited {
            shared.note_stop(s);
        }
        let r = shared.conn.request(stop::QUERY_HALT_REASON).await?;
        let mut first = unsolicited;
        if let Ok(s) = parse_stop_reply(&r) {
            shared.note_stop(&s);
            first = Some(s);
        }
        match shared.conn.request(vcont::VCONT_QUERY).await {
            Ok(r) => caps.vcont = vcont::parse_vcont_support(&r).ok(),
            Err(e) => return Err(e),
        }
        // QEMU's physical mode, and the mode a previous client may have left.
        let qemu = shared.conn.request(qemu::SUPPORTED).await?;
        caps.phys_mem_mode = qemu::parse_supports_phys_mode(&qemu).unwrap_or(false);
        if caps.phys_mem_mode {
            let mode = shared.conn.request(qemu::PHYS_MODE_QUERY).await?;
            shared.physical = qemu::parse_phys_mode(&mode).unwrap_or(true);
        }
        let xfer = caps.xfer_features_read;
        shared.caps = caps;
        shared.detach_on_drop = true;
        let mut s = Session { shared, state: Stopped };
        if xfer {
            let root = s.read_features("target.xml").await?;
            // Fetch includes eagerly (the XML callback is synchronous).
            let mut docs = std::collections::HashMap::new();
            let mut pending: Vec<String> = includes(&root);
            while let Some(h) = pending.pop() {
                if docs.contains_key(&h) || docs.len() > 16 {
                    continue;
                }
                let d = s.read_features(&h).await?;
                pending.extend(includes(&d));
                docs.insert(h, d);
            }
            let map = RegisterMap::from_xml(&root, |h| {
                docs.get(h).cloned().ok_or_else(|| RspError::TargetXml(format!("missing {h}")))
            })?;
            s.i().regmap = Some(map);
        }
        Ok((s, first))
    }

    async fn read_features(&mut self, annex: &str) -> Result<String, RspError> {
        let mut out = Vec::new();
        let len = self.i().caps.packet_size.unwrap_or(4096).saturating_sub(16).max(64);
        loop {
            let r = self.i().conn.request(&xfer::features_read_request(annex, out.len(), len)).await?;
            let c = xfer::parse_xfer_read(&r)?;
            out.extend(c.data);
            if c.last || out.len() > 4 << 20 {
                break;
            }
        }
        String::from_utf8(out).map_err(|_| RspError::TargetXml(format!("{annex} is not UTF-8")))
    }

    pub(crate) fn chunk(&self) -> usize {
        let i = &self.shared;
        let by_packet = i.caps.packet_size.map(|p| p / 2).unwrap_or(usize::MAX);
        i.cfg.max_memory_chunk.min(by_packet).max(1)
    }

    /// Read `len` bytes at virtual address `addr` (through the selected
    /// CPU's page tables), split into chunks of at most
    /// min(packet size / 2, `max_memory_chunk`) bytes, all pipelined.
    pub async fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, RspError> {
        self.read_memory_many(&[(addr, len)]).await?.pop().expect("one result")
    }

    /// True when the stub can read and write guest physical memory
    /// (QEMU's `PhyMemMode`).
    pub fn has_physical_memory(&self) -> bool {
        self.shared.caps.phys_mem_mode
    }

    /// Switches `m`/`M` to physical or virtual addresses, when it is not
    /// already. Every way out of the session switches back to virtual.
    pub(crate) async fn set_physical(&mut self, physical: bool) -> Result<(), RspError> {
        if self.shared.physical == physical {
            return Ok(());
        }
        if !self.shared.caps.phys_mem_mode {
            return Err(RspError::Unsupported { request: "Qqemu.PhyMemMode".into() });
        }
        let r = self.i().conn.request(&qemu::phys_mode_request(physical)).await?;
        expect_ok("Qqemu.PhyMemMode", &r)?;
        self.shared.physical = physical;
        Ok(())
    }

    /// Reads `len` bytes of guest physical memory at `addr` (QEMU's
    /// `PhyMemMode`: no page tables, whatever the CPUs run).
    pub async fn read_physical(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, RspError> {
        self.read_physical_many(&[(addr, len)]).await?.pop().expect("one result")
    }

    /// [`Session::read_physical`] of several ranges, pipelined.
    pub async fn read_physical_many(
        &mut self,
        reqs: &[(u64, usize)],
    ) -> Result<Vec<Result<Vec<u8>, RspError>>, RspError> {
        let mut batch = Batch::new();
        let reads: Vec<_> = reqs.iter().map(|&(addr, len)| batch.read_physical(addr, len)).collect();
        let mut replies = self.run_batch(&batch).await?;
        Ok(reads.into_iter().map(|r| replies.memory(r)).collect())
    }

    /// Writes guest physical memory (read-only kernel text included: no page tables).
    pub async fn write_physical(&mut self, addr: u64, data: &[u8]) -> Result<(), RspError> {
        self.set_physical(true).await?;
        self.write_in_mode(addr, data).await
    }

    /// Read several ranges in one pipelined batch. Stub errors (e.g. `E14`
    /// for unmapped memory) are reported per item; transport errors fail the
    /// whole batch.
    pub async fn read_memory_many(
        &mut self,
        reqs: &[(u64, usize)],
    ) -> Result<Vec<Result<Vec<u8>, RspError>>, RspError> {
        let mut batch = Batch::new();
        let reads: Vec<_> = reqs.iter().map(|&(addr, len)| batch.read_memory(addr, len)).collect();
        let mut replies = self.run_batch(&batch).await?;
        Ok(reads.into_iter().map(|r| replies.memory(r)).collect())
    }

    /// Write virtual memory with `M` packets (pipelined when split).
    pub async fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), RspError> {
        self.set_physical(false).await?;
        self.write_in_mode(addr, data).await
    }

    async fn write_in_mode(&mut self, addr: u64, data: &[u8]) -> Result<(), RspError> {
        let max =
            (self.i().caps.packet_size.unwrap_or(4096).saturating_sub(40) / 2).clamp(1, self.i().cfg.max_memory_chunk);
        let pkts: Vec<Vec<u8>> = data
            .chunks(max)
            .enumerate()
            .map(|(k, c)| memory::write_request(addr.wrapping_add((k * max) as u64), c))
            .collect();
        let depth = self.i().cfg.pipeline_depth;
        for r in self.i().conn.pipeline(&pkts, depth).await? {
            expect_ok("M", &r)?;
        }
        Ok(())
    }

    /// `g`: all registers as raw bytes (layout: [`RegisterMap`] offsets).
    pub async fn read_registers(&mut self) -> Result<Vec<u8>, RspError> {
        let r = self.i().conn.request(registers::READ_ALL).await?;
        registers::parse_registers("g", &r)
    }

    /// `p n`: one register as raw target-order bytes.
    pub async fn read_register(&mut self, regnum: u32) -> Result<Vec<u8>, RspError> {
        let r = self.i().conn.request(&registers::read_one_request(regnum)).await?;
        registers::parse_registers("p", &r)
    }

    /// Read a register by name (via the register map) as a little-endian
    /// integer (at most 8 bytes are used).
    pub async fn read_register_u64(&mut self, name: &str) -> Result<u64, RspError> {
        let regnum = self
            .register_map()
            .and_then(|m| m.get(name))
            .map(|r| r.regnum)
            .ok_or_else(|| RspError::UnknownRegister(name.into()))?;
        let b = self.read_register(regnum).await?;
        Ok(super::batch::le_u64(&b))
    }

    /// `P n=value`.
    pub async fn write_register(&mut self, regnum: u32, value: &[u8]) -> Result<(), RspError> {
        let r = self.i().conn.request(&registers::write_one_request(regnum, value)).await?;
        expect_ok("P", &r)
    }

    /// `Hg` / `Hc`.
    pub async fn set_thread(&mut self, op: ThreadOp, tid: ThreadId) -> Result<(), RspError> {
        let r = self.i().conn.request(&thread::set_thread_request(op, tid)).await?;
        expect_ok("H", &r)
    }

    /// All threads (`qfThreadInfo`/`qsThreadInfo`). In QEMU threads are vCPUs.
    pub async fn threads(&mut self) -> Result<Vec<ThreadId>, RspError> {
        let mut all = Vec::new();
        let mut req = thread::THREAD_INFO_FIRST;
        while let Some(v) = thread::parse_thread_info(&self.i().conn.request(req).await?)? {
            all.extend(v);
            req = thread::THREAD_INFO_NEXT;
            if all.len() > 1 << 16 {
                return Err(crate::ProtocolError::EndlessThreadList.into());
            }
        }
        if let Some(Id::Id(p)) = all.first().and_then(|t| t.pid) {
            self.i().pid = Some(p);
        }
        Ok(all)
    }

    /// `qThreadExtraInfo` (decoded from hex).
    pub async fn thread_extra_info(&mut self, tid: ThreadId) -> Result<String, RspError> {
        let r = self.i().conn.request(&thread::thread_extra_info_request(tid)).await?;
        thread::parse_thread_extra_info(&r)
    }

    /// `qC`.
    pub async fn current_thread(&mut self) -> Result<ThreadId, RspError> {
        let r = self.i().conn.request(thread::CURRENT_THREAD).await?;
        thread::parse_current_thread(&r)
    }

    /// `Z0`–`Z4`.
    pub async fn insert_breakpoint(&mut self, kind: BreakpointKind, addr: u64, len: u32) -> Result<(), RspError> {
        let r = self.i().conn.request(&breakpoint::insert_request(kind, addr, len)).await?;
        expect_ok("Z", &r)
    }

    /// `z0`–`z4`.
    pub async fn remove_breakpoint(&mut self, kind: BreakpointKind, addr: u64, len: u32) -> Result<(), RspError> {
        let r = self.i().conn.request(&breakpoint::remove_request(kind, addr, len)).await?;
        expect_ok("z", &r)
    }

    /// `qRcmd`: run a monitor command and return its output.
    pub async fn monitor(&mut self, cmd: &str) -> Result<String, RspError> {
        let c = &mut self.i().conn;
        c.link.send(&monitor::rcmd_request(cmd));
        c.flush_timeout("qRcmd").await?;
        let mut out = Vec::new();
        loop {
            match monitor::parse_rcmd_reply(&c.recv_packet("qRcmd").await?)? {
                RcmdReply::Output(o) => out.extend(o),
                RcmdReply::Done => break,
                RcmdReply::FinalOutput(o) => {
                    out.extend(o);
                    break;
                }
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Resume the target (vCont when supported, else `c`/`s` with `Hc`).
    pub async fn resume(mut self, action: Resume) -> Result<RunningSession, RspError> {
        let pkt = self.i().prepare_resume(action).await?;
        let mut running = self.into_running();
        running.shared.send(&pkt, &name_of(&pkt)).await?;
        Ok(running)
    }

    /// `P regnum=value`, then the resume. In no-ack mode both go out in one
    /// socket write and the `P` reply is consumed afterwards. In ack mode
    /// (QEMU 7.2 does not offer `QStartNoAckMode`) the `P` reply is awaited
    /// first: acknowledging it after the resume would send a byte to a
    /// running target, which QEMU takes as an interrupt (a spurious `T02`
    /// stop). To move the PC and continue in one packet, use
    /// [`Session::continue_at`].
    pub async fn write_register_and_resume(
        mut self,
        regnum: u32,
        value: &[u8],
        action: Resume,
    ) -> Result<RunningSession, RspError> {
        if self.i().conn.link.ack_mode() {
            self.write_register(regnum, value).await?;
            return self.resume(action).await;
        }
        let pkt = self.i().prepare_resume(action).await?;
        let mut running = self.into_running();
        running.shared.conn.link.send(&registers::write_one_request(regnum, value));
        running.shared.send(&pkt, "P+resume").await?;
        let r = running.shared.conn.recv_packet("P").await?;
        expect_ok("P", &r)?;
        Ok(running)
    }

    /// `c ADDR`: continue with the PC of the thread that last stopped (QEMU's
    /// "continue CPU") set to `addr`. One packet and no reply until the next
    /// stop: the cheapest way to skip an instruction.
    pub async fn continue_at(self, addr: u64) -> Result<RunningSession, RspError> {
        let pkt = crate::packets::resume::continue_request(Some(addr));
        let mut running = self.into_running();
        running.shared.send(&pkt, "c").await?;
        Ok(running)
    }

    /// Single-step (`tid` or the last stopped thread) and wait for the stop.
    pub async fn step(&mut self, tid: Option<ThreadId>) -> Result<StopReply, RspError> {
        let action = tid.map(Resume::StepThread).unwrap_or(Resume::Step);
        let pkt = self.i().prepare_resume(action).await?;
        let i = self.i();
        i.send(&pkt, "step").await?;
        i.wait_stop(true).await
    }

    /// Send any packet and return the raw reply (no interpretation).
    pub async fn request(&mut self, payload: &[u8]) -> Result<Vec<u8>, RspError> {
        self.i().conn.request(payload).await
    }

    /// Detach: `D;pid` in multiprocess mode (pid from the threads or stop
    /// replies, else 1), else `D`. QEMU removes breakpoints and resumes.
    pub async fn detach(mut self) -> Result<(), RspError> {
        self.set_physical(false).await?;
        let inner = self.i();
        inner.detach_on_drop = false;
        let p = inner.detach_payload();
        let r = inner.conn.request(&p).await?;
        if packets::parse_error(&r).is_some() && p != b"D" {
            let r = inner.conn.request(b"D").await?;
            return expect_ok("D", &r);
        }
        expect_ok("D", &r)
    }

    /// `k`: kill the target (QEMU exits). No reply is awaited.
    pub async fn kill(mut self) -> Result<(), RspError> {
        let inner = self.i();
        inner.detach_on_drop = false;
        inner.physical = false;
        inner.send(kill::KILL, "k").await
    }
}

fn includes(xml: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("href=") {
        rest = &rest[i + 5..];
        let q = rest.chars().next().unwrap_or('"');
        if let Some(end) = rest[1..].find(q) {
            v.push(rest[1..1 + end].to_string());
        }
    }
    v
}
