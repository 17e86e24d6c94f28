//! Fault cases against an in-process fake stub built on the `gdbstub` crate.
//!
//! The target is a toy x86-64 machine with two threads ("vCPUs"), 64 KiB of
//! memory at [`BASE`] (anything else answers an error), software breakpoints
//! and a "CPU" that runs by moving `rip` forward one byte at a time until it
//! reaches an inserted breakpoint.

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStubBuilder, MultiThreadStopReason};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::single_register_access::{SingleRegisterAccess, SingleRegisterAccessOps};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{Breakpoints, BreakpointsOps, SwBreakpoint, SwBreakpointOps};
use gdbstub::target::ext::monitor_cmd::{outputln, ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::ext::target_description_xml_override::{
    TargetDescriptionXmlOverride, TargetDescriptionXmlOverrideOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use ktrace_rsp::{BreakpointKind, ClientConfig, RspError, Session, StopReason, StopReply, StubAddr};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const BASE: u64 = 0xffff_ffff_8100_0000;
const MEM_LEN: usize = 64 * 1024;
const NTHREADS: usize = 2;
/// The stub's packet buffer; the client must split larger memory reads.
const PACKET_BUFFER: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Continue,
    Step,
}

/// How the fake misbehaves.
#[derive(Clone, Default)]
struct Faults {
    /// Serve gdbstub_arch's own target.xml (which lists no registers)
    /// instead of a full one.
    arch_xml: bool,
    /// Report `W code` a little while after a resume.
    exit_while_running: Option<u8>,
    /// Panic (dropping the connection) when memory at this address is read.
    panic_on_read: Option<u64>,
}

struct Machine {
    mem: Vec<u8>,
    regs: [X86_64CoreRegs; NTHREADS],
    bps: Vec<u64>,
    actions: [Option<Action>; NTHREADS],
    /// Threads without an action stay stopped (a `vCont` without a default
    /// action).
    locked: bool,
    faults: Faults,
    xml: String,
}

fn tid(i: usize) -> Tid {
    Tid::new(i + 1).unwrap()
}

fn idx(t: Tid) -> Result<usize, &'static str> {
    match t.get() {
        n @ 1..=NTHREADS => Ok(n - 1),
        _ => Err("no such thread"),
    }
}

impl Machine {
    fn new(faults: Faults) -> Self {
        let mut mem = vec![0u8; MEM_LEN];
        for (i, b) in mem.iter_mut().enumerate() {
            *b = (i * 7 + i / 256) as u8;
        }
        let mut regs: [X86_64CoreRegs; NTHREADS] = Default::default();
        for (i, r) in regs.iter_mut().enumerate() {
            r.rip = BASE + 0x10 + 0x1000 * i as u64;
            r.regs[7] = BASE + 0x8000 + 0x1000 * i as u64; // rsp
            r.regs[0] = 0x1111 * (i as u64 + 1); // rax
        }
        Machine {
            mem,
            regs,
            bps: Vec::new(),
            actions: [None; NTHREADS],
            locked: false,
            faults,
            xml: ktrace_fakestub::target_xml(),
        }
    }

    fn range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let off = addr.checked_sub(BASE)? as usize;
        let end = off.checked_add(len)?;
        (end <= self.mem.len()).then_some(off..end)
    }
}

impl Target for Machine {
    type Arch = X86_64_SSE;
    type Error = &'static str;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }
    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
    fn support_target_description_xml_override(&mut self) -> Option<TargetDescriptionXmlOverrideOps<'_, Self>> {
        if self.faults.arch_xml {
            None
        } else {
            Some(self)
        }
    }
}

impl MultiThreadBase for Machine {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, t: Tid) -> TargetResult<(), Self> {
        *regs = self.regs[idx(t).map_err(TargetError::Fatal)?].clone();
        Ok(())
    }
    fn write_registers(&mut self, regs: &X86_64CoreRegs, t: Tid) -> TargetResult<(), Self> {
        self.regs[idx(t).map_err(TargetError::Fatal)?] = regs.clone();
        Ok(())
    }
    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }
    fn read_addrs(&mut self, addr: u64, data: &mut [u8], _t: Tid) -> TargetResult<usize, Self> {
        if let Some(p) = self.faults.panic_on_read {
            if (addr..addr.wrapping_add(data.len() as u64)).contains(&p) {
                panic!("fake stub dies while reading {addr:#x}");
            }
        }
        let r = self.range(addr, data.len()).ok_or(TargetError::Errno(14))?;
        data.copy_from_slice(&self.mem[r]);
        Ok(data.len())
    }
    fn write_addrs(&mut self, addr: u64, data: &[u8], _t: Tid) -> TargetResult<(), Self> {
        let r = self.range(addr, data.len()).ok_or(TargetError::Errno(14))?;
        self.mem[r].copy_from_slice(data);
        Ok(())
    }
    fn list_active_threads(&mut self, register_thread: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for i in 0..NTHREADS {
            register_thread(tid(i));
        }
        Ok(())
    }
    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleRegisterAccess<Tid> for Machine {
    fn read_register(&mut self, t: Tid, reg: X86_64CoreRegId, buf: &mut [u8]) -> TargetResult<usize, Self> {
        let r = &self.regs[idx(t).map_err(TargetError::Fatal)?];
        let bytes: Vec<u8> = match reg {
            X86_64CoreRegId::Gpr(n) => r.regs[n as usize].to_le_bytes().to_vec(),
            X86_64CoreRegId::Rip => r.rip.to_le_bytes().to_vec(),
            X86_64CoreRegId::Eflags => r.eflags.to_le_bytes().to_vec(),
            _ => return Err(TargetError::NonFatal),
        };
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }
    fn write_register(&mut self, t: Tid, reg: X86_64CoreRegId, val: &[u8]) -> TargetResult<(), Self> {
        let r = &mut self.regs[idx(t).map_err(TargetError::Fatal)?];
        let v = val.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64);
        match reg {
            X86_64CoreRegId::Gpr(n) => r.regs[n as usize] = v,
            X86_64CoreRegId::Rip => r.rip = v,
            X86_64CoreRegId::Eflags => r.eflags = v as u32,
            _ => return Err(TargetError::NonFatal),
        }
        Ok(())
    }
}

impl MultiThreadResume for Machine {
    fn resume(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.actions = [None; NTHREADS];
        self.locked = false;
        Ok(())
    }
    fn set_resume_action_continue(&mut self, t: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("no signals");
        }
        self.actions[idx(t)?] = Some(Action::Continue);
        Ok(())
    }
    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for Machine {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.locked = true;
        Ok(())
    }
}

impl MultiThreadSingleStep for Machine {
    fn set_resume_action_step(&mut self, t: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("no signals");
        }
        self.actions[idx(t)?] = Some(Action::Step);
        Ok(())
    }
}

impl Breakpoints for Machine {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Machine {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.range(addr, 1).is_none() {
            return Ok(false);
        }
        self.bps.push(addr);
        Ok(true)
    }
    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        match self.bps.iter().position(|&b| b == addr) {
            Some(p) => {
                self.bps.remove(p);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl MonitorCmd for Machine {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), Self::Error> {
        outputln!(out, "echo: {}", String::from_utf8_lossy(cmd));
        Ok(())
    }
}

impl TargetDescriptionXmlOverride for Machine {
    fn target_description_xml(
        &self,
        annex: &[u8],
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        if annex != b"target.xml" {
            return Err(TargetError::NonFatal);
        }
        let x = self.xml.as_bytes();
        let start = (offset as usize).min(x.len());
        let n = length.min(buf.len()).min(x.len() - start);
        buf[..n].copy_from_slice(&x[start..start + n]);
        Ok(n)
    }
}

/// The connection, recording every byte the client sent.
struct Rec {
    s: TcpStream,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Connection for Rec {
    type Error = std::io::Error;
    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        Connection::write(&mut self.s, byte)
    }
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        Connection::write_all(&mut self.s, buf)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Connection::flush(&mut self.s)
    }
    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        self.s.set_nodelay(true)
    }
}

impl ConnectionExt for Rec {
    fn read(&mut self) -> Result<u8, Self::Error> {
        let b = ConnectionExt::read(&mut self.s)?;
        self.log.lock().unwrap().push(b);
        Ok(b)
    }
    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        ConnectionExt::peek(&mut self.s)
    }
}

enum Loop {}

type Stop = MultiThreadStopReason<u64>;

impl BlockingEventLoop for Loop {
    type Target = Machine;
    type Connection = Rec;
    type StopReason = Stop;

    fn wait_for_stop_reason(
        m: &mut Machine,
        conn: &mut Rec,
    ) -> Result<Event<Stop>, WaitForStopReasonError<&'static str, std::io::Error>> {
        let started = std::time::Instant::now();
        for n in 0u64.. {
            if n % 64 == 0 {
                if conn.peek().map(|b| b.is_some()).unwrap_or(true) {
                    let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                    return Ok(Event::IncomingData(b));
                }
                if let Some(code) = m.faults.exit_while_running {
                    if started.elapsed() > Duration::from_millis(100) {
                        return Ok(Event::TargetStopped(Stop::Exited(code)));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            // gdbstub's contract: threads without an explicit action
            // continue, unless the scheduler is locked.
            for i in 0..NTHREADS {
                let a = match m.actions[i] {
                    Some(a) => a,
                    None if m.locked => continue,
                    None => Action::Continue,
                };
                m.regs[i].rip = m.regs[i].rip.wrapping_add(1);
                let rip = m.regs[i].rip;
                if a == Action::Step {
                    return Ok(Event::TargetStopped(Stop::DoneStep));
                }
                if m.bps.contains(&rip) {
                    return Ok(Event::TargetStopped(Stop::SwBreak(tid(i))));
                }
                if m.range(rip, 1).is_none() {
                    return Ok(Event::TargetStopped(Stop::SignalWithThread { tid: tid(i), signal: Signal::SIGSEGV }));
                }
            }
        }
        unreachable!()
    }

    fn on_interrupt(_m: &mut Machine) -> Result<Option<Stop>, &'static str> {
        Ok(Some(Stop::Signal(Signal::SIGINT)))
    }
}

struct Stub {
    addr: StubAddr,
    log: Arc<Mutex<Vec<u8>>>,
    thread: JoinHandle<Result<DisconnectReason, String>>,
}

fn spawn(faults: Faults) -> Stub {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = StubAddr::Tcp(l.local_addr().unwrap().to_string());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let thread = std::thread::spawn(move || {
        let (s, _) = l.accept().map_err(|e| e.to_string())?;
        let mut m = Machine::new(faults);
        let stub = GdbStubBuilder::new(Rec { s, log: log2 })
            .packet_buffer_size(PACKET_BUFFER)
            .build()
            .map_err(|e| e.to_string())?;
        stub.run_blocking::<Loop>(&mut m).map_err(|e| e.to_string())
    });
    Stub { addr, log, thread }
}

impl Stub {
    /// Wait (bounded) for the stub thread to end.
    async fn join(self) -> std::thread::Result<Result<DisconnectReason, String>> {
        let t = self.thread;
        tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || t.join()))
            .await
            .expect("stub thread ends")
            .unwrap()
    }
    fn client_bytes(&self) -> Vec<u8> {
        self.log.lock().unwrap().clone()
    }
}

fn cfg() -> ClientConfig {
    ClientConfig { timeout: Duration::from_secs(2), ..ClientConfig::default() }
}

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("no hang")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn expected(addr: u64, len: usize) -> Vec<u8> {
    let m = Machine::new(Faults::default());
    m.mem[m.range(addr, len).unwrap()].to_vec()
}

#[tokio::test]
async fn valid_session_against_gdbstub() {
    let stub = spawn(Faults::default());
    let (mut s, first) = within(Session::connect(&stub.addr, cfg())).await.unwrap();
    let first = first.expect("gdbstub answers `?`");
    assert!(matches!(first, StopReply::Signal { .. }), "{first:?}");

    let caps = s.capabilities().clone();
    assert!(caps.no_ack_mode, "gdbstub offers QStartNoAckMode");
    assert!(caps.xfer_features_read);
    assert_eq!(caps.packet_size, Some(PACKET_BUFFER));
    assert!(caps.vcont.is_some_and(|v| v.c && v.s), "{:?}", caps.vcont);

    // Registers by name through the target.xml map.
    let map = s.register_map().expect("target.xml fetched").clone();
    assert_eq!(map.architecture.as_deref(), Some("i386:x86-64"));
    assert_eq!(map.get("rip").unwrap().regnum, 16);
    let rip0 = within(s.read_register_u64("rip")).await.unwrap();
    assert!(rip0 == BASE + 0x10 || rip0 == BASE + 0x1010, "{rip0:#x}");
    let rsp = within(s.read_register_u64("rsp")).await.unwrap();
    assert_eq!(rsp - BASE, rip0 - BASE - 0x10 + 0x8000);
    let g = within(s.read_registers()).await.unwrap();
    let off = map.get("rip").unwrap().offset;
    assert_eq!(u64::from_le_bytes(g[off..off + 8].try_into().unwrap()), rip0);
    assert_eq!(g.len(), map.registers().iter().map(|r| r.bitsize as usize / 8).sum::<usize>());

    // Memory: small, and larger than the packet size (split into several `m`).
    assert_eq!(within(s.read_memory(BASE, 16)).await.unwrap(), expected(BASE, 16));
    let before = stub.client_bytes().len();
    let big = within(s.read_memory(BASE + 0x100, 5000)).await.unwrap();
    assert_eq!(big, expected(BASE + 0x100, 5000));
    let sent = stub.client_bytes()[before..].to_vec();
    let m_packets = sent.windows(2).filter(|w| w == b"$m").count();
    assert!(m_packets >= 5000 / (PACKET_BUFFER / 2), "{m_packets} m packets for 5000 bytes");
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    within(s.write_memory(BASE + 0x2000, &data)).await.unwrap();
    assert_eq!(within(s.read_memory(BASE + 0x2000, 3000)).await.unwrap(), data);

    // Threads = vCPUs.
    let threads = within(s.threads()).await.unwrap();
    assert_eq!(threads.len(), 2, "{threads:?}");

    // Breakpoint, resume, stop at it.
    let bp = BASE + 0x80;
    within(s.insert_breakpoint(BreakpointKind::Software, bp, 1)).await.unwrap();
    let mut run = within(s.resume(ktrace_rsp::Resume::Continue)).await.unwrap();
    let stop = within(run.wait_stop()).await.unwrap();
    match &stop {
        StopReply::Signal { signal, reason, thread, .. } => {
            assert_eq!(*signal, 5, "SIGTRAP");
            assert!(thread.is_some(), "{stop:?}");
            assert_eq!(*reason, Some(StopReason::SwBreak), "{stop:?}");
        }
        other => panic!("{other:?}"),
    }
    let mut s = run.into_stopped().unwrap();
    assert_eq!(s.last_stop_thread(), stop.thread());
    // `p` goes to the thread gdbstub selected for the stop (Hg is implicit).
    let rip = within(s.read_register_u64("rip")).await.unwrap();
    assert_eq!(rip, bp);
    within(s.remove_breakpoint(BreakpointKind::Software, bp, 1)).await.unwrap();

    // Single step moves rip by one "instruction".
    let st = within(s.step(None)).await.unwrap();
    assert!(matches!(st, StopReply::Signal { signal: 5, .. }), "{st:?}");
    assert_eq!(within(s.read_register_u64("rip")).await.unwrap(), bp + 1);

    let out = within(s.monitor("hello there")).await.unwrap();
    assert_eq!(out, "echo: hello there\n");

    within(s.detach()).await.unwrap();
    let bytes = stub.client_bytes();
    let reason = stub.join().await.expect("stub thread did not panic");
    assert!(matches!(reason, Ok(DisconnectReason::Disconnect)), "{reason:?}");

    // No-ack mode: after QStartNoAckMode the client acks only its reply.
    let p = find(&bytes, b"$QStartNoAckMode#").expect("client asked for no-ack mode");
    let after = &bytes[p + b"$QStartNoAckMode#xx".len()..];
    let acks = after.iter().filter(|&&b| b == b'+').count();
    assert_eq!(acks, 1, "client kept acking after no-ack mode: {}", String::from_utf8_lossy(after));

    // gdbstub_arch's own target.xml names a feature but lists no registers:
    // the map is empty and registers cannot be read by name.
    let stub = spawn(Faults { arch_xml: true, ..Faults::default() });
    let (mut s, _) = within(Session::connect(&stub.addr, cfg())).await.unwrap();
    let map = s.register_map().expect("target.xml offered").clone();
    assert_eq!(map.architecture.as_deref(), Some("i386:x86-64"));
    assert!(map.get("rip").is_none());
    assert!(matches!(within(s.read_register_u64("rip")).await, Err(RspError::UnknownRegister(_))));
    within(s.detach()).await.unwrap();
    stub.join().await.unwrap().unwrap();
}

#[tokio::test]
async fn invalid_memory_read_is_a_stub_error() {
    let stub = spawn(Faults::default());
    let (mut s, _) = within(Session::connect(&stub.addr, cfg())).await.unwrap();
    let end = BASE + MEM_LEN as u64;
    let r = within(s.read_memory_many(&[
        (BASE, 16),
        (0x1000, 16),        // unmapped
        (BASE + 0x40, 1500), // several packets, all fine
        (end - 8, 16),       // straddles the end
        (end - 8, 8),
    ]))
    .await
    .expect("stub errors are per item");
    assert_eq!(r.len(), 5);
    assert_eq!(r[0].as_ref().unwrap(), &expected(BASE, 16));
    assert!(matches!(r[1], Err(RspError::Stub { .. })), "{:?}", r[1]);
    assert_eq!(r[2].as_ref().unwrap(), &expected(BASE + 0x40, 1500));
    assert!(matches!(r[3], Err(RspError::Stub { .. })), "{:?}", r[3]);
    assert_eq!(r[4].as_ref().unwrap(), &expected(end - 8, 8));

    let e = within(s.read_memory(0xdead_0000, 4)).await.unwrap_err();
    assert!(matches!(e, RspError::Stub { .. }), "{e:?}");
    let e = within(s.write_memory(0x10, b"abc")).await.unwrap_err();
    assert!(matches!(e, RspError::Stub { .. }), "{e:?}");

    // Still usable.
    assert_eq!(within(s.read_memory(BASE + 8, 8)).await.unwrap(), expected(BASE + 8, 8));
    assert_eq!(within(s.threads()).await.unwrap().len(), 2);
    within(s.detach()).await.unwrap();
    stub.join().await.unwrap().unwrap();
}

#[tokio::test]
async fn target_exits_while_running() {
    let stub = spawn(Faults { exit_while_running: Some(3), ..Faults::default() });
    let (s, _) = within(Session::connect(&stub.addr, cfg())).await.unwrap();
    let mut run = within(s.resume(ktrace_rsp::Resume::Continue)).await.unwrap();
    let stop = within(run.wait_stop()).await.unwrap();
    assert!(matches!(stop, StopReply::Exited { status: 3, .. }), "{stop:?}");
    // gdbstub ends the session after `W`.
    let reason = stub.join().await.unwrap();
    assert!(matches!(reason, Ok(DisconnectReason::TargetExited(3))), "{reason:?}");
    let mut s = run.into_stopped().unwrap();
    let e = within(s.read_memory(BASE, 4)).await.unwrap_err();
    assert!(matches!(e, RspError::Closed), "{e:?}");
}

#[tokio::test]
async fn stub_thread_panics_or_closes() {
    let victim = BASE + 0x3000;
    let stub = spawn(Faults { panic_on_read: Some(victim), ..Faults::default() });
    let (mut s, _) = within(Session::connect(&stub.addr, cfg())).await.unwrap();
    assert_eq!(within(s.read_memory(BASE, 8)).await.unwrap(), expected(BASE, 8));
    // A pipelined batch whose third packet kills the stub.
    let e =
        within(s.read_memory_many(&[(BASE, 8), (BASE + 0x10, 8), (victim, 8), (BASE + 0x20, 8)])).await.unwrap_err();
    assert!(matches!(e, RspError::Closed), "{e:?}");
    assert!(stub.join().await.is_err(), "the stub thread panicked");
    // Later requests fail the same way, promptly.
    let e = within(s.read_memory(BASE, 8)).await.unwrap_err();
    assert!(matches!(e, RspError::Closed), "{e:?}");
    let e = within(s.detach()).await.unwrap_err();
    assert!(matches!(e, RspError::Closed), "{e:?}");
}
