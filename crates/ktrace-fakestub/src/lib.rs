//! A scripted fake of QEMU's gdb stub, for tests that drive a stop loop
//! without QEMU.
//!
//! The machine has a few threads ("vCPUs") with x86-64 registers, sparse
//! memory the test fills, software breakpoints and a target.xml like
//! QEMU's. It does not execute code: each time the guest is resumed, the
//! next [`Event`] of the script happens (a thread reaches an address, with
//! memory written first; or the stub dies). A single-step moves `rip` one
//! byte. Once the script is done the guest "runs" until interrupted.
//! Knows nothing of Linux.

use std::collections::{BTreeMap, VecDeque};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event as StubEvent, WaitForStopReasonError};
use gdbstub::stub::{GdbStubBuilder, MultiThreadStopReason};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::single_register_access::{SingleRegisterAccess, SingleRegisterAccessOps};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{Breakpoints, BreakpointsOps, SwBreakpoint, SwBreakpointOps};
use gdbstub::target::ext::target_description_xml_override::{
    TargetDescriptionXmlOverride, TargetDescriptionXmlOverrideOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;

/// What happens at the next resume.
#[derive(Clone, Debug)]
pub enum Event {
    /// `writes` land in memory, then thread `thread` (0-based) is at `rip`:
    /// a breakpoint stop if one is inserted there, else it runs on to the
    /// next event.
    Reach {
        /// The thread (vCPU index).
        thread: usize,
        /// Where it gets to.
        rip: u64,
        /// Memory written first (address, bytes).
        writes: Vec<(u64, Vec<u8>)>,
    },
    /// The stub dies: the connection closes.
    Die,
}

/// The fake machine, set up by the test before the stub starts.
#[derive(Clone, Debug)]
pub struct Machine {
    memory: BTreeMap<u64, Vec<u8>>,
    regs: Vec<X86_64CoreRegs>,
    script: VecDeque<Event>,
    breakpoints: Vec<u64>,
    stepping: Option<usize>,
}

/// What a test can see of the machine after (or while) the stub ran.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The breakpoints inserted at the end.
    pub breakpoints: Vec<u64>,
    /// Single-steps done.
    pub steps: u64,
    /// Resumes (continue) done.
    pub resumes: u64,
    /// The client detached (`D`).
    pub detached: bool,
    /// How the stub ended, when not by a detach.
    pub ended: Option<String>,
}

impl Machine {
    /// A machine with `threads` vCPUs and no memory.
    pub fn new(threads: usize) -> Machine {
        Machine {
            memory: BTreeMap::new(),
            regs: vec![X86_64CoreRegs::default(); threads],
            script: VecDeque::new(),
            breakpoints: Vec::new(),
            stepping: None,
        }
    }

    /// Maps `bytes` at `addr` (regions must not overlap).
    pub fn map(&mut self, addr: u64, bytes: &[u8]) -> &mut Machine {
        self.memory.insert(addr, bytes.to_vec());
        self
    }

    /// Writes into mapped memory, or maps a new region.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> &mut Machine {
        if let Some((&start, region)) = self.memory.range_mut(..=addr).next_back() {
            let off = (addr - start) as usize;
            if off + bytes.len() <= region.len() {
                region[off..off + bytes.len()].copy_from_slice(bytes);
                return self;
            }
        }
        self.map(addr, bytes)
    }

    /// Sets a thread's `rip` and `rsp`.
    pub fn set_pc(&mut self, thread: usize, rip: u64, rsp: u64) -> &mut Machine {
        self.regs[thread].rip = rip;
        self.regs[thread].regs[7] = rsp;
        self
    }

    /// Appends an event to the script.
    pub fn then(&mut self, event: Event) -> &mut Machine {
        self.script.push_back(event);
        self
    }

    fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        let Some((&start, region)) = self.memory.range(..=addr).next_back() else { return false };
        let off = (addr - start) as usize;
        match region.get(off..off + out.len()) {
            Some(src) => {
                out.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// A running fake stub: its address and the thread serving it.
pub struct FakeStub {
    /// Where to connect (`127.0.0.1:PORT`).
    pub addr: String,
    record: Arc<Mutex<Record>>,
    thread: JoinHandle<()>,
}

impl FakeStub {
    /// Serves `machine` to one client on a fresh loopback port.
    pub fn spawn(machine: Machine) -> FakeStub {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = l.local_addr().expect("local address").to_string();
        let record = Arc::new(Mutex::new(Record::default()));
        let shared = record.clone();
        let thread = std::thread::spawn(move || {
            let Ok((s, _)) = l.accept() else { return };
            let mut m = Served { machine, record: shared.clone() };
            let Ok(stub) = GdbStubBuilder::new(Conn(s)).build() else { return };
            match stub.run_blocking::<Loop>(&mut m) {
                Ok(gdbstub::stub::DisconnectReason::Disconnect) => shared.lock().expect("record").detached = true,
                other => shared.lock().expect("record").ended = Some(format!("{other:?}")),
            }
            shared.lock().expect("record").breakpoints = m.machine.breakpoints.clone();
        });
        FakeStub { addr, record, thread }
    }

    /// Waits for the stub to end (the client detached or left, or it died)
    /// and returns what it saw.
    pub fn join(self) -> Record {
        let _ = self.thread.join();
        self.record.lock().expect("record").clone()
    }
}

struct Served {
    machine: Machine,
    record: Arc<Mutex<Record>>,
}

fn tid(i: usize) -> Tid {
    Tid::new(i + 1).expect("thread ids start at 1")
}

impl Served {
    fn idx(&self, t: Tid) -> Result<usize, &'static str> {
        let i = t.get() - 1;
        (i < self.machine.regs.len()).then_some(i).ok_or("no such thread")
    }
}

impl Target for Served {
    type Arch = X86_64_SSE;
    type Error = &'static str;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }
    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
    fn support_target_description_xml_override(&mut self) -> Option<TargetDescriptionXmlOverrideOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for Served {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, t: Tid) -> TargetResult<(), Self> {
        *regs = self.machine.regs[self.idx(t).map_err(TargetError::Fatal)?].clone();
        Ok(())
    }
    fn write_registers(&mut self, regs: &X86_64CoreRegs, t: Tid) -> TargetResult<(), Self> {
        let i = self.idx(t).map_err(TargetError::Fatal)?;
        self.machine.regs[i] = regs.clone();
        Ok(())
    }
    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }
    fn read_addrs(&mut self, addr: u64, data: &mut [u8], _t: Tid) -> TargetResult<usize, Self> {
        match self.machine.read(addr, data) {
            true => Ok(data.len()),
            false => Err(TargetError::Errno(14)),
        }
    }
    fn write_addrs(&mut self, addr: u64, data: &[u8], _t: Tid) -> TargetResult<(), Self> {
        self.machine.write(addr, data);
        Ok(())
    }
    fn list_active_threads(&mut self, register_thread: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for i in 0..self.machine.regs.len() {
            register_thread(tid(i));
        }
        Ok(())
    }
    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleRegisterAccess<Tid> for Served {
    fn read_register(&mut self, t: Tid, reg: X86_64CoreRegId, buf: &mut [u8]) -> TargetResult<usize, Self> {
        let r = &self.machine.regs[self.idx(t).map_err(TargetError::Fatal)?];
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
        let i = self.idx(t).map_err(TargetError::Fatal)?;
        let r = &mut self.machine.regs[i];
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

impl MultiThreadResume for Served {
    fn resume(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.machine.stepping = None;
        Ok(())
    }
    fn set_resume_action_continue(&mut self, _t: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        match signal {
            Some(_) => Err("no signals"),
            None => Ok(()),
        }
    }
    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for Served {
    /// Only the stepped thread moves on a step; the script moves the others.
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl MultiThreadSingleStep for Served {
    fn set_resume_action_step(&mut self, t: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("no signals");
        }
        self.machine.stepping = Some(self.idx(t)?);
        Ok(())
    }
}

impl Breakpoints for Served {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Served {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if !self.machine.breakpoints.contains(&addr) {
            self.machine.breakpoints.push(addr);
        }
        Ok(true)
    }
    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let before = self.machine.breakpoints.len();
        self.machine.breakpoints.retain(|&b| b != addr);
        Ok(self.machine.breakpoints.len() != before)
    }
}

impl TargetDescriptionXmlOverride for Served {
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
        let xml = target_xml();
        let x = xml.as_bytes();
        let start = (offset as usize).min(x.len());
        let n = length.min(buf.len()).min(x.len() - start);
        buf[..n].copy_from_slice(&x[start..start + n]);
        Ok(n)
    }
}

/// A register description in the layout of `X86_64CoreRegs`, as QEMU's
/// (general registers, rip, eflags, segments, x87, SSE).
pub fn target_xml() -> String {
    let mut regs: Vec<(String, u32, &str)> = Vec::new();
    for n in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] {
        regs.push((n.into(), 64, if n == "rsp" || n == "rbp" { "data_ptr" } else { "int64" }));
    }
    for k in 8..16 {
        regs.push((format!("r{k}"), 64, "int64"));
    }
    regs.push(("rip".into(), 64, "code_ptr"));
    regs.push(("eflags".into(), 32, "int32"));
    for n in ["cs", "ss", "ds", "es", "fs", "gs"] {
        regs.push((n.into(), 32, "int32"));
    }
    for k in 0..8 {
        regs.push((format!("st{k}"), 80, "i387_ext"));
    }
    for n in ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"] {
        regs.push((n.into(), 32, "int"));
    }
    for k in 0..16 {
        regs.push((format!("xmm{k}"), 128, "vec128"));
    }
    regs.push(("mxcsr".into(), 32, "int"));
    let mut x = String::from(
        "<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\"><target version=\"1.0\">\
         <architecture>i386:x86-64</architecture><feature name=\"org.gnu.gdb.i386.core\">",
    );
    for (n, (name, bits, ty)) in regs.iter().enumerate() {
        x.push_str(&format!("<reg name=\"{name}\" bitsize=\"{bits}\" type=\"{ty}\" regnum=\"{n}\"/>"));
    }
    x.push_str("</feature></target>");
    x
}

struct Conn(TcpStream);

impl Connection for Conn {
    type Error = std::io::Error;
    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        Connection::write(&mut self.0, byte)
    }
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        Connection::write_all(&mut self.0, buf)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Connection::flush(&mut self.0)
    }
    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        self.0.set_nodelay(true)
    }
}

impl ConnectionExt for Conn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        ConnectionExt::read(&mut self.0)
    }
    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        ConnectionExt::peek(&mut self.0)
    }
}

enum Loop {}

type Stop = MultiThreadStopReason<u64>;

impl BlockingEventLoop for Loop {
    type Target = Served;
    type Connection = Conn;
    type StopReason = Stop;

    fn wait_for_stop_reason(
        m: &mut Served,
        conn: &mut Conn,
    ) -> Result<StubEvent<Stop>, WaitForStopReasonError<&'static str, std::io::Error>> {
        if let Some(i) = m.machine.stepping.take() {
            m.machine.regs[i].rip = m.machine.regs[i].rip.wrapping_add(1);
            m.record.lock().expect("record").steps += 1;
            return Ok(StubEvent::TargetStopped(Stop::DoneStep));
        }
        m.record.lock().expect("record").resumes += 1;
        while let Some(event) = m.machine.script.pop_front() {
            match event {
                Event::Die => {
                    let _ = conn.0.shutdown(std::net::Shutdown::Both);
                    return Err(WaitForStopReasonError::Connection(std::io::ErrorKind::ConnectionAborted.into()));
                }
                Event::Reach { thread, rip, writes } => {
                    for (addr, bytes) in writes {
                        m.machine.write(addr, &bytes);
                    }
                    m.machine.regs[thread].rip = rip;
                    if m.machine.breakpoints.contains(&rip) {
                        return Ok(StubEvent::TargetStopped(Stop::SwBreak(tid(thread))));
                    }
                }
            }
        }
        // Nothing more happens: run until the client interrupts.
        loop {
            if conn.peek().map(|b| b.is_some()).unwrap_or(true) {
                let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(StubEvent::IncomingData(b));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn on_interrupt(_m: &mut Served) -> Result<Option<Stop>, &'static str> {
        Ok(Some(Stop::Signal(Signal::SIGINT)))
    }
}
