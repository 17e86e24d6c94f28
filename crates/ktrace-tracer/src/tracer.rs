//! The stop loop: breakpoints in, filtered hits with backtraces out.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ktrace_kernel::{
    cpu_of_thread, le_u64, CurrentTask, Guest, GuestConfig, Kernel, ReadThrough, Target, TaskIdent, TaskRef,
};
use ktrace_rsp::{Batch, BreakpointKind, Session, StopReply, StubAddr, ThreadId};
use ktrace_symbols::Vmlinux;
use tokio_util::sync::CancellationToken;

use crate::config::{GuestRelease, ResumeMode, TraceConfig};
use crate::connection::{Connection, Waited, Woken};
use crate::hit::{EndReason, Hit, InGuestReport, RecordingReport, Summary};
use crate::in_guest::{self, BreakAt, InGuest};
use crate::location::{self, Location};
use crate::recording::{self, Recording};
use crate::regs::{GLayout, RegisterSet};
use crate::{ExprRole, GoneReason, TraceError, TraceFailure};
use ktrace_kernel::trampoline::Record;
use ktrace_kernel::unwind::Unwinder;
use ktrace_kernel::values::{EvalContext, FrameArguments, FrameRegisters, Printed};
use ktrace_kernel::x86::registers::Reg;
use ktrace_kernel::{Regs, StackCopy, Translation};

/// Receives the hits of a trace, and progress while it runs.
pub trait HitSink {
    /// A matched hit. Return `ControlFlow::Break(())` to end the trace.
    fn hit(&mut self, hit: Hit) -> ControlFlow<()>;

    /// Called about five times a second with the counters so far.
    fn progress(&mut self, _seen: u64, _matched: u64, _elapsed: Duration) {}

    /// A one-line note on how the trace runs (e.g. why `--in-guest` falls
    /// back to the stop loop for a function).
    fn note(&mut self, _text: &str) {}
}

impl<F: FnMut(Hit) -> ControlFlow<()>> HitSink for F {
    fn hit(&mut self, hit: Hit) -> ControlFlow<()> {
        self(hit)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Past {
    /// Move RIP forward by this many bytes (the instruction is a NOP).
    Skip(u8),
    /// Single-step with the breakpoint in place; `probed` once a step was checked.
    Step { probed: bool },
    /// Remove, step, reinsert.
    Reinsert,
}

#[derive(Clone, Debug)]
struct Armed {
    addr: u64,
    spec: usize,
    past: Past,
    at: BreakAt,
}

/// The breakpoints of every resolved location, at runtime addresses.
fn armed_for(kernel: &Kernel, locations: &[Location]) -> Vec<Armed> {
    let mut armed = Vec::new();
    for (spec, loc) in locations.iter().enumerate() {
        for &a in &loc.addrs {
            armed.push(Armed { addr: kernel.runtime(a), spec, past: Past::Reinsert, at: BreakAt::Function });
        }
        if let Some((_, addr)) = loc.module.as_ref().and_then(|m| m.found.as_ref()) {
            armed.push(Armed { addr: *addr, spec, past: Past::Reinsert, at: BreakAt::Function });
        }
    }
    armed
}

/// A connected tracer: the stub, the kernel matched to the vmlinux, and the
/// resolved breakpoints (not yet inserted). See [`Tracer::run`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{ops::ControlFlow, sync::Arc};
/// use ktrace_tracer::{TraceConfig, Tracer};
///
/// let vmlinux = Arc::new(ktrace_symbols::Vmlinux::open("vmlinux")?);
/// let cfg = TraceConfig::new().breakpoint("_raw_spin_lock").pid(2297).count(10);
/// let tracer = Tracer::attach(&":1234".parse()?, vmlinux, cfg).await?;
/// let summary = tracer
///     .run(&mut |hit: ktrace_tracer::Hit| {
///         println!("{} {} {}", hit.cpu, hit.pid, hit.comm);
///         ControlFlow::Continue(())
///     }, tokio_util::sync::CancellationToken::new())
///     .await?;
/// println!("{} of {} hits matched", summary.matched, summary.seen);
/// # Ok(()) }
/// ```
pub struct Tracer {
    addr: StubAddr,
    conn: Connection,
    kernel: Kernel,
    cfg: TraceConfig,
    locations: Vec<Location>,
    armed: Vec<Armed>,
    glayout: GLayout,
    /// The registers `--regs` shows and frame 0's argument registers.
    register_set: Option<RegisterSet>,
    /// Frame arguments, with their scopes cached per pc.
    arguments: FrameArguments,
    /// `--print` and `--if`.
    exprs: Expressions,
    unwinder: Unwinder,
    /// For `--pid`: the task_struct to compare the current-task pointer with.
    target_task: Option<TaskRef>,
    inserted: Vec<u64>,
    /// The in-guest filter, while installed.
    in_guest: Option<InGuest>,
    in_guest_report: InGuestReport,
    /// `--if` is compiled into the in-guest filter: hits through the
    /// trampoline have met it.
    condition_in_guest: bool,
    /// The rings matches are recorded in, while in use.
    recording: Option<Recording>,
    /// Recorded functions by the return address into them (site + 5):
    /// (function, location index).
    recorded: std::collections::HashMap<u64, (u64, usize)>,
    recording_report: RecordingReport,
    /// Records read back, not yet turned into hits.
    pending: std::collections::VecDeque<Record>,
}

/// What [`Tracer::plan`] found in the vmlinux before any connection.
pub struct Plan {
    locations: Vec<Location>,
    unwinder: Unwinder,
    exprs: Expressions,
}

/// What a matching stop's values are computed from.
struct StopContext {
    regs0: Option<ktrace_kernel::Regs>,
    frame0: Option<FrameRegisters>,
    user: Option<Translation>,
    named: Option<Vec<(String, u64)>>,
    scopes: std::sync::Arc<Vec<ktrace_symbols::Scope>>,
}

/// The parsed `--print` and `--if` expressions.
#[derive(Default)]
struct Expressions {
    /// Each as written, and parsed.
    prints: Vec<(String, ktrace_expr::Expr)>,
    condition: Option<ktrace_expr::Expr>,
    /// They name a register QEMU leaves out of `g` (`$cr3`): read it with `p`.
    control_registers: bool,
    /// Reasons a condition could not be evaluated, each said once.
    reported: std::collections::HashSet<String>,
}

impl Tracer {
    /// Resolves the locations in the vmlinux (before touching the guest),
    /// connects, matches the kernel and resolves the filter's task.
    /// On any error the guest is detached and left running.
    pub async fn attach(addr: &StubAddr, vmlinux: Arc<Vmlinux>, cfg: TraceConfig) -> Result<Tracer, TraceError> {
        let plan = Self::plan(&vmlinux, &cfg)?;
        Self::attach_planned(addr, vmlinux, cfg, plan).await
    }

    /// The checks `attach` makes before touching the guest: the locations
    /// resolve in the vmlinux and its debug info can unwind. Callers that set
    /// up something around the connection (a guardian) call this first, so
    /// bad input never reaches the stub.
    pub fn plan(vmlinux: &Vmlinux, cfg: &TraceConfig) -> Result<Plan, TraceError> {
        if cfg.breakpoints.is_empty() {
            return Err(TraceError::NoBreakpoints);
        }
        let locations: Vec<Location> =
            cfg.breakpoints.iter().map(|spec| location::resolve(vmlinux, spec)).collect::<Result<_, _>>()?;
        let unwinder = Unwinder::new(vmlinux)?.with_max_frames(cfg.max_frames);
        let is_type = |name: &str| vmlinux.type_named(name).is_ok();
        let parse = |role: ExprRole, src: &str| {
            ktrace_expr::parse(src, &is_type).map_err(|error| TraceError::Expression { role, error })
        };
        let prints: Vec<(String, ktrace_expr::Expr)> = cfg
            .prints
            .iter()
            .map(|p| Ok((p.clone(), parse(ExprRole::Print, p)?)))
            .collect::<Result<_, TraceError>>()?;
        let condition = cfg.condition.as_deref().map(|c| parse(ExprRole::Condition, c)).transpose()?;
        let named: Vec<String> =
            prints.iter().map(|(_, e)| e).chain(condition.as_ref()).flat_map(|e| e.registers()).collect();
        let control_registers = named.iter().any(|r| r.starts_with("cr") || r == "efer");
        let exprs = Expressions { prints, condition, control_registers, reported: Default::default() };
        Ok(Plan { locations, unwinder, exprs })
    }

    /// `attach` with a plan made by [`Tracer::plan`] from the same vmlinux.
    pub async fn attach_planned(
        addr: &StubAddr,
        vmlinux: Arc<Vmlinux>,
        cfg: TraceConfig,
        plan: Plan,
    ) -> Result<Tracer, TraceError> {
        let Plan { locations, unwinder, exprs } = plan;
        let guest_cfg = GuestConfig {
            client: cfg.client.clone(),
            release: cfg.release,
            module_debug: cfg.module_debug.clone(),
            read_through: match cfg.stub_translation {
                true => ReadThrough::StubTranslation,
                false => ReadThrough::KernelPageTables,
            },
        };
        let guest = Guest::connect(addr, vmlinux, &guest_cfg).await?;
        let (mut session, kernel, release) = guest.into_parts();
        let mut locations = locations;
        let prepared = match Self::prepare(&mut session, kernel, &cfg).await {
            Ok(p) if locations.iter().any(|l| !l.is_resolved()) => {
                // Functions the vmlinux lacks: look in the loaded modules.
                match p.0.modules(&mut p.0.memory(&mut session)).await {
                    Ok(modules) => {
                        let resolved = location::resolve_in_modules(&mut locations, &modules);
                        // The backtraces of the first hits need not read them again.
                        p.0.know_modules(modules);
                        match resolved {
                            Ok(()) => Ok(p),
                            // `run` waits for the module to load.
                            Err(_) if cfg.wait_for_task => Ok(p),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }
            other => other,
        };
        match prepared {
            Ok((kernel, glayout, target_task)) => {
                let armed = armed_for(&kernel, &locations);
                Ok(Tracer {
                    addr: addr.clone(),
                    conn: Connection::Stopped(session),
                    kernel,
                    cfg,
                    locations,
                    armed,
                    glayout,
                    register_set: None,
                    arguments: FrameArguments::new(),
                    exprs,
                    unwinder,
                    target_task,
                    inserted: Vec::new(),
                    in_guest: None,
                    in_guest_report: InGuestReport::default(),
                    condition_in_guest: false,
                    recording: None,
                    recorded: Default::default(),
                    recording_report: RecordingReport::default(),
                    pending: Default::default(),
                })
            }
            Err(err) => {
                let _ = release.release(session).await;
                Err(err)
            }
        }
    }

    async fn prepare(
        session: &mut Session,
        mut kernel: Kernel,
        cfg: &TraceConfig,
    ) -> Result<(Kernel, GLayout, Option<TaskRef>), TraceError> {
        let glayout = GLayout::new(session.register_map())?;
        if let Some(j) = &cfg.journal {
            kernel = kernel.with_journal(j.0.clone());
        }
        let count = kernel.cpu_count();
        if let Some(cpu) = cfg.filter.cpus.iter().find(|cpu| cpu.0 as usize >= count) {
            return Err(TraceError::CpuOutOfRange { cpu: cpu.0, count });
        }
        let target_task = match cfg.filter.pid {
            Some(pid) => Self::find_pid(session, &kernel, pid, cfg.wait_for_task).await?,
            None => None,
        };
        if target_task.is_none() && (cfg.filter.tgid.is_some() || cfg.filter.comm.is_some()) && !cfg.wait_for_task {
            let tasks = kernel.tasks(&mut kernel.memory(session)).await?;
            if !tasks.iter().any(|t| cfg.filter.matches_task(t)) {
                return Err(TraceError::NoMatchingTask { filter: cfg.filter.clone() });
            }
        }
        Ok((kernel, glayout, target_task))
    }

    async fn find_pid(
        session: &mut Session,
        kernel: &Kernel,
        pid: i32,
        wait: bool,
    ) -> Result<Option<TaskRef>, TraceError> {
        match kernel.find_task_by_pid(&mut kernel.memory(session), pid).await {
            Ok(t) => Ok(Some(t.task)),
            // `run` waits for it (cancellably) before inserting breakpoints.
            Err(ktrace_kernel::KernelError::NoSuchTask(_)) if wait => Ok(None),
            Err(ktrace_kernel::KernelError::NoSuchTask(_)) => Err(TraceError::NoTaskWithPid { pid }),
            Err(e) => Err(e.into()),
        }
    }

    /// Lets the guest run in short slices until the `--pid` task exists
    /// (or the trace is cancelled).
    async fn wait_for_pid(
        &mut self,
        conn: &mut Connection,
        pid: i32,
        cancel: &CancellationToken,
    ) -> Result<Waited, TraceError> {
        loop {
            match self.kernel.find_task_by_pid(&mut self.kernel.memory(conn.stopped()?), pid).await {
                Ok(t) => {
                    self.target_task = Some(t.task);
                    return Ok(Waited::Done);
                }
                Err(ktrace_kernel::KernelError::NoSuchTask(_)) => {}
                Err(e) => return Err(e.into()),
            }
            if self.run_a_while(conn, Duration::from_millis(250), cancel).await? == Waited::Cancelled {
                return Ok(Waited::Cancelled);
            }
        }
    }

    /// Lets the guest run in short slices until every module location is in
    /// a loaded module (`--wait`), reading the module list again each time.
    async fn wait_for_modules(
        &mut self,
        conn: &mut Connection,
        cancel: &CancellationToken,
    ) -> Result<Waited, TraceError> {
        loop {
            let modules = self.kernel.modules(&mut self.kernel.memory(conn.stopped()?)).await?;
            let resolved = location::resolve_in_modules(&mut self.locations, &modules).is_ok();
            self.kernel.know_modules(modules);
            if resolved {
                self.armed = armed_for(&self.kernel, &self.locations);
                return Ok(Waited::Done);
            }
            if self.run_a_while(conn, Duration::from_millis(500), cancel).await? == Waited::Cancelled {
                return Ok(Waited::Cancelled);
            }
        }
    }

    /// Resumes the guest for `slice` (less if `cancel` fires) and stops it again.
    async fn run_a_while(
        &mut self,
        conn: &mut Connection,
        slice: Duration,
        cancel: &CancellationToken,
    ) -> Result<Waited, TraceError> {
        let waited = conn.run_for(slice, cancel).await?;
        self.kernel.resumed();
        Ok(waited)
    }

    /// The kernel as matched at attach (release, slide, CPUs).
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The resolved breakpoint locations.
    pub fn locations(&self) -> &[Location] {
        &self.locations
    }

    /// Detaches without tracing; the guest keeps running.
    pub async fn detach(mut self) -> Result<(), TraceError> {
        Ok(self.conn.take_stopped().ok_or_else(gone)?.detach().await?)
    }

    fn bp_kind(&self) -> BreakpointKind {
        if self.cfg.hardware {
            BreakpointKind::Hardware
        } else {
            BreakpointKind::Software
        }
    }

    /// Inserts the breakpoints, resumes the guest and evaluates every stop
    /// until `--count`, `--duration`, `cancel`, or the sink says stop. Every
    /// way out removes the breakpoints and detaches, leaving the guest running.
    pub async fn run<S: HitSink + ?Sized>(
        mut self,
        sink: &mut S,
        cancel: CancellationToken,
    ) -> Result<Summary, TraceFailure> {
        let start = Instant::now();
        let mut stats = Stats { seen: 0, matched: 0, start };
        let mut conn = std::mem::take(&mut self.conn);
        let result = CatchUnwind(Box::pin(self.run_loop(&mut conn, sink, &cancel, &mut stats))).await;
        let result = match result {
            Ok(r) => r,
            Err(panic) => {
                // The loop's state is unknown after a panic: let the session
                // go and put the sites back over a new connection before
                // going on unwinding.
                drop(conn);
                self.restore_over_new_connection().await;
                std::panic::resume_unwind(panic)
            }
        };
        let elapsed = start.elapsed();
        let (end, mut error) = match result {
            Ok(end) => (end, None),
            Err(error) => (EndReason::Error, Some(error)),
        };
        let session = match conn.take_stopped() {
            Some(mut session) => {
                if let Err(e) = self.last_records(&mut session, sink, &mut stats).await {
                    error.get_or_insert(e);
                }
                let session = self.take_out(session, &mut error).await;
                match session {
                    Some(mut session) => {
                        self.give_back(&mut session, sink, &mut stats, &mut error).await;
                        Some(session)
                    }
                    None => None,
                }
            }
            None => {
                self.restore_over_new_connection().await;
                None
            }
        };
        let mut released = false;
        if let Some(session) = session {
            released = self.cfg.release.release(session).await.is_ok();
        }
        let summary = self.summary(&stats, elapsed, end, released);
        match error {
            None => Ok(summary),
            Some(error) => Err(TraceFailure { error, summary }),
        }
    }

    /// Takes ktrace out of the stopped guest: the in-guest sites first (so
    /// nothing enters the trampoline any more), then the breakpoints, then
    /// the trampoline (after a drain). Returns the session to release, or
    /// `None` when it turned out dead: then the sites are put back over a
    /// new connection.
    async fn take_out(&mut self, mut session: Session, error: &mut Option<TraceError>) -> Option<Session> {
        let in_guest = self.in_guest.take();
        if let Some(ig) = &in_guest {
            if let Err(e) = in_guest::restore_sites(&mut session, &self.kernel, ig, &mut self.in_guest_report).await {
                error.get_or_insert(e);
                drop(session);
                self.in_guest = in_guest;
                self.restore_over_new_connection().await;
                return None;
            }
        }
        let kind = self.bp_kind();
        for addr in std::mem::take(&mut self.inserted) {
            let _ = session.remove_breakpoint(kind, addr, 1).await;
        }
        let Some(ig) = &in_guest else { return Some(session) };
        match self.cfg.release {
            GuestRelease::Resume => match in_guest::drain_and_erase(
                session,
                &self.kernel,
                &ig.plan.region,
                self.recording.as_ref().map(|r| &r.rings),
            )
            .await
            {
                Ok((session, erased)) => {
                    self.in_guest_report.erased = erased;
                    Some(session)
                }
                Err(e) => {
                    error.get_or_insert(e);
                    None
                }
            },
            GuestRelease::LeaveStopped => {
                if let Err(e) = in_guest::step_off_hits(&mut session, &ig.plan.region).await {
                    error.get_or_insert(e);
                }
                Some(session)
            }
        }
    }

    /// The session is gone (lost, or dropped by a panic) with sites still
    /// patched: connects again to put them back, drain and erase.
    async fn restore_over_new_connection(&mut self) {
        if self.in_guest.take().is_none() {
            return;
        }
        let vm = self.kernel.vmlinux().clone();
        let addr = self.cfg.reconnect_to.clone().unwrap_or_else(|| self.addr.clone());
        let lent = self.recording.as_ref().map(|r| r.lent());
        if let Ok(outcome) = in_guest::restore_lent(&addr, vm, self.cfg.client.clone(), lent).await {
            self.recording_report.memory_restored = outcome.given_back;
            self.in_guest_report.restored += outcome.restored.len();
            self.in_guest_report.erased = outcome.erased;
            self.in_guest_report.reconnected = true;
        }
    }

    fn summary(&self, stats: &Stats, elapsed: Duration, end: EndReason, released: bool) -> Summary {
        let mut in_guest = self.cfg.in_guest.then(|| self.in_guest_report.clone());
        if let (Some(report), Some(rec)) = (&mut in_guest, &self.recording) {
            report.recording = Some(RecordingReport { drops: rec.drops(), ..self.recording_report.clone() });
        }
        Summary { seen: stats.seen, matched: stats.matched, elapsed, end, guest_released: released, in_guest }
    }

    /// With recording, at the end (the guest stopped): the sites go back to
    /// the ftrace NOP so no new record starts, and what the rings hold
    /// becomes hits.
    async fn last_records<S: HitSink + ?Sized>(
        &mut self,
        session: &mut Session,
        sink: &mut S,
        stats: &mut Stats,
    ) -> Result<(), TraceError> {
        if self.recording.is_none() {
            return Ok(());
        }
        if let Some(ig) = &self.in_guest {
            in_guest::restore_sites(session, &self.kernel, ig, &mut self.in_guest_report).await?;
        }
        self.drain_stub(session).await?;
        self.deliver(sink, stats, None).await;
        Ok(())
    }

    /// With recording, once the trampoline is gone (or no CPU is in it):
    /// counts the records left unfinished and gives the borrowed memory its
    /// bytes back. While a CPU is inside the code, the memory stays lent.
    async fn give_back<S: HitSink + ?Sized>(
        &mut self,
        session: &mut Session,
        sink: &mut S,
        stats: &mut Stats,
        error: &mut Option<TraceError>,
    ) {
        if self.recording.is_none() {
            return;
        }
        // Records finished while the CPUs left the code.
        if let Err(e) = self.drain_stub(session).await {
            error.get_or_insert(e);
        }
        self.deliver(sink, stats, None).await;
        let Some(rec) = self.recording.as_mut() else { return };
        self.recording_report.unfinished = rec.unfinished();
        // Left in place (`--leave-stopped`, or a CPU stayed inside): the
        // memory goes back only when no CPU is in the code that writes it.
        let idle = match (self.in_guest_report.erased, rec.region) {
            (true, _) => true,
            (false, Some(region)) => {
                matches!(in_guest::any_cpu_inside(session, &region).await, Ok(false))
                    && matches!(in_guest::routine_idle(session, &self.kernel, &region, &rec.rings).await, Ok(true))
            }
            (false, None) => false,
        };
        if idle {
            match rec.give_back(session, &self.kernel).await {
                Ok(()) => self.recording_report.memory_restored = true,
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
    }

    /// The loop proper. Leaves `conn` stopped when it can still be used to
    /// clean up, lost otherwise.
    async fn run_loop<S: HitSink + ?Sized>(
        &mut self,
        conn: &mut Connection,
        sink: &mut S,
        cancel: &CancellationToken,
        stats: &mut Stats,
    ) -> Result<EndReason, TraceError> {
        if let (Some(pid), None) = (self.cfg.filter.pid, self.target_task) {
            if self.wait_for_pid(conn, pid, cancel).await? == Waited::Cancelled {
                return Ok(EndReason::Cancelled);
            }
        }
        if self.locations.iter().any(|l| !l.is_resolved())
            && self.wait_for_modules(conn, cancel).await? == Waited::Cancelled
        {
            return Ok(EndReason::Cancelled);
        }
        if self.cfg.in_guest {
            self.install_in_guest(conn.stopped()?, sink).await?;
        }
        self.arm(conn.stopped()?).await?;
        let deadline = self.cfg.duration.map(|d| tokio::time::Instant::now() + d);
        let probe = self.cfg.client.timeout.max(Duration::from_secs(1));
        // Recording: drain the rings from the host every few milliseconds
        // while the guest runs, or at short stops through the stub.
        let live = self.recording.as_ref().map(|r| r.is_live());
        let mut stub_drain = STUB_DRAIN_MAX;
        let mut last_stop = Instant::now();
        let mut last_progress = Instant::now();
        let mut resume: Option<u64> = None;
        loop {
            // Resume: `c ADDR` past a skipped NOP (one packet), or plain continue.
            if !conn.is_running() {
                conn.resume(resume.take()).await?;
            }
            let quiet = if live == Some(false) { stub_drain } else { probe };
            let left = quiet.saturating_sub(last_stop.elapsed()).max(Duration::from_millis(1));
            // Records waiting: back to them at once (a stop reply still
            // wins); none: read the rings again after a tick.
            let busy = !self.pending.is_empty() || self.recording.as_ref().is_some_and(|r| r.fullest() > 0);
            let tick = live.map(|_| if busy { BUSY_TICK } else { LIVE_DRAIN });
            let stop = match conn.wait(cancel, deadline, left, tick).await? {
                Woken::Stop(stop) => stop,
                Woken::Cancelled => return Ok(EndReason::Cancelled),
                Woken::Deadline => return Ok(EndReason::Duration),
                Woken::Tick => {
                    // The guest runs: read the rings (from the host), and
                    // turn records into hits for a slice of the tick.
                    // A host slower than the guest leaves the records in the
                    // rings (the guest counts what it cannot keep as drops)
                    // rather than queue without bound.
                    if live == Some(true) && self.pending.len() < MAX_PENDING {
                        self.drain_live().await?;
                        // QEMU answers from its RAM: no need to stop the
                        // guest to see that the stub is still there.
                        last_stop = Instant::now();
                    }
                    if let Some(end) = self.deliver(sink, stats, Some(LIVE_DRAIN)).await {
                        conn.interrupt().await?;
                        return Ok(end);
                    }
                    if last_progress.elapsed() >= Duration::from_millis(200) {
                        last_progress = Instant::now();
                        sink.progress(stats.seen, stats.matched, stats.start.elapsed());
                    }
                    continue;
                }
            };
            last_stop = Instant::now();
            self.kernel.resumed();
            if live == Some(false) {
                // Read whole rings at the stop; the hits are made while the
                // guest runs again. Stop more often while rings fill up.
                let (read, slots) = self.drain_stub(conn.stopped()?).await?;
                stub_drain = match read {
                    n if n * 4 >= slots => (stub_drain / 2).max(STUB_DRAIN_MIN),
                    n if n * 16 < slots => (stub_drain * 2).min(STUB_DRAIN_MAX),
                    _ => stub_drain,
                };
            }
            let thread = match &stop {
                // Only SIGTRAP is a breakpoint; anything else (an interrupt) just resumes.
                StopReply::Signal { signal, .. } if *signal != ktrace_rsp::SIGTRAP => continue,
                StopReply::Signal { thread, .. } => *thread,
                other => return Err(TraceError::GuestGone(GoneReason::TargetEnded(other.clone()))),
            };
            match self.on_stop(conn.stopped()?, thread, sink, stats).await? {
                Step::Resume(r) => resume = r,
                Step::End(reason) => return Ok(reason),
            }
            if cancel.is_cancelled() {
                return Ok(EndReason::Cancelled);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(EndReason::Duration);
            }
            if last_progress.elapsed() >= Duration::from_millis(200) {
                last_progress = Instant::now();
                sink.progress(stats.seen, stats.matched, stats.start.elapsed());
            }
        }
    }

    /// Reads the rings from QEMU's RAM (the guest running) into the queue.
    async fn drain_live(&mut self) -> Result<(), TraceError> {
        let Some(rec) = self.recording.as_mut() else { return Ok(()) };
        let records = rec.drain_live().await?;
        self.pending.extend(records);
        Ok(())
    }

    /// Reads the rings through the stub (the guest stopped) into the
    /// queue; returns (records read, the most one ring held).
    async fn drain_stub(&mut self, session: &mut Session) -> Result<(u64, u64), TraceError> {
        let Some(rec) = self.recording.as_mut() else { return Ok((0, 0)) };
        let records = rec.drain_stub(session).await?;
        let (most, slots) = (rec.fullest(), rec.rings.slots);
        self.pending.extend(records);
        Ok((most, slots))
    }

    /// Installs the in-guest filter where it can be: matches are recorded
    /// in the guest (or, where they cannot be, the breakpoints move onto
    /// the trampoline's hit instructions).
    async fn install_in_guest<S: HitSink + ?Sized>(
        &mut self,
        session: &mut Session,
        sink: &mut S,
    ) -> Result<(), TraceError> {
        // `--if` in the guest where it compiles: then it needs no stop.
        let conditions = match (&self.exprs.condition, &self.cfg.condition) {
            (Some(expr), Some(source)) => {
                let addrs: Vec<(u64, &Location)> =
                    self.armed.iter().map(|a| (a.addr, &self.locations[a.spec])).collect();
                match in_guest::compile_condition(&self.kernel, expr, source, &addrs) {
                    Ok(c) => Some(c),
                    Err(why) => {
                        sink.note(&format!("--in-guest: {why}; the stop loop evaluates --if instead"));
                        None
                    }
                }
            }
            _ => None,
        };
        let mut recording = self.set_up_recording(session, sink, conditions.is_some()).await?;
        let no_drop = self.cfg.no_drop;
        let rings = recording.as_ref().map(|r| (&r.rings, no_drop));
        let addrs: Vec<(u64, &Location)> = self.armed.iter().map(|a| (a.addr, &self.locations[a.spec])).collect();
        let mut report = InGuestReport::default();
        let want = in_guest::Want {
            filter: &self.cfg.filter,
            task: self.target_task,
            conditions: conditions.as_deref().unwrap_or_default(),
        };
        let installed = in_guest::install(session, &self.kernel, want, &addrs, rings, &mut report).await?;
        if let (Some(c), Some(_)) = (&conditions, &installed) {
            self.condition_in_guest = true;
            report.condition_in_guest = true;
            sink.note(&format!(
                "--in-guest: --if '{}' is evaluated in the guest ({} comparison(s)): no stop for it",
                self.cfg.condition.as_deref().unwrap_or_default(),
                c.len()
            ));
        }
        if report.left_behind > 0 {
            sink.note(&format!(
                "--in-guest: restored {} site(s) a killed ktrace had left patched; re-using its trampoline",
                report.left_behind
            ));
        }
        for reason in &report.fallbacks {
            sink.note(&format!("--in-guest: {reason}; the stop loop evaluates it instead"));
        }
        let Some(installed) = installed else {
            if let Some(r) = recording.take() {
                r.give_back(session, &self.kernel).await?;
            }
            self.in_guest_report = report;
            return Ok(());
        };
        let region = installed.in_guest.plan.region;
        match &recording {
            Some(r) => {
                // Recorded: no breakpoint for these; a record names its
                // function by the return address into it (site + 5).
                let mut recorded = Vec::new();
                for &(i, _, site) in &installed.moved {
                    self.recorded.insert(site + 5, (self.armed[i].addr, self.armed[i].spec));
                    recorded.push(i);
                }
                let mut i = 0;
                self.armed.retain(|_| {
                    i += 1;
                    !recorded.contains(&(i - 1))
                });
                if no_drop {
                    let params =
                        installed.in_guest.plan.record.clone().map_err(|r| TraceError::Recording(r.to_string()))?;
                    let code = ktrace_kernel::trampoline::record::routine(&region, params);
                    let stop = region.hit_page + ktrace_kernel::trampoline::record::CODE;
                    let addr = stop + ktrace_kernel::trampoline::record::full_stop(&code) as u64;
                    self.armed.push(Armed { addr, spec: 0, past: Past::Skip(1), at: BreakAt::RingFull });
                }
                sink.note(&format!(
                    "--in-guest: {} function(s) patched to call the filter at 0x{:x}",
                    report.patched, region.base
                ));
                sink.note(&format!(
                    "--in-guest: matches are recorded by the routine at 0x{:x} in {} ring(s) of {} slots (stacks up to {} bytes) in 0x{:x} bytes borrowed at physical 0x{:x}, {}",
                    region.hit_page + ktrace_kernel::trampoline::record::CODE,
                    r.rings.count,
                    r.rings.slots,
                    r.rings.max_stack(),
                    r.rings.count * r.rings.ring_bytes,
                    r.phys(),
                    recording::drain_method(r.is_live())
                ));
                self.recording_report = RecordingReport {
                    slots: r.rings.slots,
                    stack_copy: r.rings.max_stack(),
                    drain: recording::drain_method(r.is_live()).into(),
                    ..RecordingReport::default()
                };
            }
            None => {
                for &(i, hit, _) in &installed.moved {
                    let function = self.armed[i].addr;
                    self.armed[i] =
                        Armed { addr: hit, past: Past::Skip(1), at: BreakAt::HitOf(function), ..self.armed[i] };
                }
                sink.note(&format!(
                    "--in-guest: {} function(s) patched to call the filter at 0x{:x}",
                    report.patched, region.base
                ));
            }
        }
        self.unwinder.know_trampoline(Some(installed.in_guest.plan.frame_map(region.hit_page)));
        self.in_guest = Some(installed.in_guest);
        if let Some(r) = &mut recording {
            r.region = Some(region);
        }
        self.recording = recording;
        self.in_guest_report = report;
        Ok(())
    }

    /// The rings for recording matches in the guest, unless the trace
    /// needs a stop at each match (`--if`, `--print`, `--regs`) or the
    /// guest has no memory to lend (then it says why).
    async fn set_up_recording<S: HitSink + ?Sized>(
        &mut self,
        session: &mut Session,
        sink: &mut S,
        condition_in_guest: bool,
    ) -> Result<Option<Recording>, TraceError> {
        if self.cfg.stop_at_match {
            return Ok(None);
        }
        let mut needs_stop = Vec::new();
        if self.exprs.condition.is_some() && !condition_in_guest {
            needs_stop.push("--if");
        }
        if !self.exprs.prints.is_empty() {
            needs_stop.push("--print");
        }
        if self.cfg.registers {
            needs_stop.push("--regs");
        }
        if !needs_stop.is_empty() {
            sink.note(&format!(
                "--in-guest: {} read{} the stopped CPU: the guest stops at each match",
                needs_stop.join(" and "),
                if needs_stop.len() == 1 { "s" } else { "" }
            ));
            return Ok(None);
        }
        // QEMU on this host: the rings are read while the guest runs.
        let stub = self.cfg.reconnect_to.clone().unwrap_or_else(|| self.addr.clone());
        let qemu = ktrace_guestmem::find_qemu(&stub.to_string()).ok();
        match Recording::set_up(session, &self.kernel, self.cfg.stack_copy, qemu).await? {
            Ok(r) => Ok(Some(r)),
            Err(why) => {
                sink.note(&format!("--in-guest: {why}; the guest stops at each match instead"));
                Ok(None)
            }
        }
    }

    /// Turns queued records into hits for `sink`, for at most `slice` (all
    /// of them without one); `Some` when the trace should end (the sink
    /// said so, or `--count` was reached).
    async fn deliver<S: HitSink + ?Sized>(
        &mut self,
        sink: &mut S,
        stats: &mut Stats,
        slice: Option<Duration>,
    ) -> Option<EndReason> {
        let started = Instant::now();
        while let Some(rec) = self.pending.pop_front() {
            self.recording_report.recorded += 1;
            // Past `--count`: read (the ring moves on), not reported.
            if self.cfg.count.is_some_and(|c| stats.matched >= c) {
                continue;
            }
            stats.seen += 1;
            stats.matched += 1;
            let hit = self.hit_of_record(rec, stats).await;
            if sink.hit(hit).is_break() {
                return Some(EndReason::Stopped);
            }
            if self.cfg.count.is_some_and(|c| stats.matched >= c) {
                return Some(EndReason::Count);
            }
            if slice.is_some_and(|s| started.elapsed() >= s) {
                break;
            }
        }
        None
    }

    /// A recorded match as a hit, its backtrace unwound from the record's
    /// stack copy (a frame that needs other memory ends it with a reason).
    async fn hit_of_record(&mut self, rec: Record, stats: &Stats) -> Hit {
        let (function, spec) = self.recorded.get(&rec.return_address).copied().unwrap_or((rec.return_address - 5, 0));
        let sp = rec.register("rsp").unwrap_or(0);
        tracing::debug!(
            seq = rec.seq,
            sp = format_args!("0x{sp:x}"),
            stack = rec.stack.len(),
            task = format_args!("0x{:x}", rec.task),
            "record"
        );
        let backtrace = match self.cfg.backtrace {
            true => {
                let mut regs = Regs::new(function, sp, rec.register("rbp").unwrap_or(0));
                for &(name, value) in &rec.registers {
                    match Reg::from_name(name) {
                        Some(Reg::Rip | Reg::Rsp) | None => {}
                        Some(reg) => regs.set(reg, value),
                    }
                }
                let mut copy = StackCopy::new(sp, rec.stack);
                let mut bt = self.unwinder.unwind(&self.kernel, &mut copy, regs).await;
                if self.cfg.arguments {
                    // Frame 0 as the function's entry had it; memory beyond
                    // the copy is not there, so such values are unreadable.
                    let mut frame0 = FrameRegisters::default();
                    for &(name, value) in &rec.registers {
                        frame0.set(name, value);
                    }
                    frame0.set("rip", function);
                    frame0.cfa = ktrace_kernel::values::stopped_frame_cfa(&self.kernel, function, &frame0);
                    if let Err(e) = self.arguments.fill(&self.kernel, &mut copy, &mut bt, &frame0).await {
                        tracing::debug!("arguments of a recorded hit: {e}");
                    }
                }
                Some(bt)
            }
            false => None,
        };
        let comm = ktrace_kernel::decode_comm(&rec.comm);
        Hit {
            seq: stats.matched,
            time: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            elapsed: stats.start.elapsed().as_secs_f64(),
            cpu: ktrace_kernel::CpuId(rec.cpu),
            pid: rec.pid,
            tgid: rec.tgid,
            comm,
            task: TaskRef(rec.task),
            breakpoint: self.locations[spec].spec.clone(),
            pc: function,
            backtrace,
            registers: None,
            prints: Vec::new(),
        }
    }

    /// Probes how to get past each breakpoint and inserts them.
    async fn arm(&mut self, session: &mut Session) -> Result<(), TraceError> {
        let kind = self.bp_kind();
        for i in 0..self.armed.len() {
            let addr = self.armed[i].addr;
            if let BreakAt::HitOf(_) | BreakAt::RingFull = self.armed[i].at {
                // The hit `nop`: resume one byte on, at its `ret`.
                self.insert(session, i, kind).await?;
                continue;
            }
            let code = self.kernel.memory(session).read_memory(addr, 16).await?;
            self.armed[i].past = match (self.cfg.resume, ktrace_kernel::x86::insn::nop_length(&code)) {
                (ResumeMode::Auto, Some(n)) => Past::Skip(n),
                (ResumeMode::Auto | ResumeMode::Step, _) => Past::Step { probed: false },
                (ResumeMode::RemoveStepReinsert, _) => Past::Reinsert,
            };
            tracing::debug!(addr = format_args!("0x{addr:x}"), past = ?self.armed[i].past, "breakpoint armed");
            self.insert(session, i, kind).await?;
        }
        Ok(())
    }

    async fn insert(&mut self, session: &mut Session, i: usize, kind: BreakpointKind) -> Result<(), TraceError> {
        let addr = self.armed[i].addr;
        if self.inserted.contains(&addr) {
            return Ok(());
        }
        session.insert_breakpoint(kind, addr, 1).await.map_err(|source| TraceError::Breakpoint {
            spec: self.locations[self.armed[i].spec].spec.clone(),
            addr,
            source,
        })?;
        self.inserted.push(addr);
        Ok(())
    }

    /// Evaluates one stop; says how to resume or why to end.
    async fn on_stop<S: HitSink + ?Sized>(
        &mut self,
        session: &mut Session,
        thread: Option<ThreadId>,
        sink: &mut S,
        stats: &mut Stats,
    ) -> Result<Step, TraceError> {
        let thread = match thread {
            Some(t) => t,
            None => session.current_thread().await?,
        };
        let cpu = cpu_of_thread(&thread).ok_or(TraceError::GuestGone(GoneReason::UnknownThread(thread)))?;
        let wants_task = self.cfg.filter.matches_cpu(cpu);
        // One round trip: RIP, and what the CPU runs (for --pid, the target
        // task's identity too, confirmed only on a match).
        let mut batch = Batch::new();
        let rip = batch.read_register(self.glayout.rip_regnum);
        // `--if` reads registers at every stop: in the same round trip.
        let early = match (&self.exprs.condition, wants_task) {
            (Some(_), true) => Some((batch.read_registers(), self.glayout.cr3_regnum.map(|n| batch.read_register(n)))),
            _ => None,
        };
        let current = if wants_task { self.kernel.current_task_reads(cpu, self.target_task) } else { None };
        let ranges: Vec<(u64, usize)> = current.iter().flat_map(|c| c.ranges()).copied().collect();
        // Through the kernel's page tables: per-CPU data and task structs lie
        // in fixed mappings, so their translation is cached and costs nothing.
        let pieces: Vec<Vec<(u64, usize)>> = match self.kernel.translation() {
            Some(t) => t.pieces(session, &ranges).await?.into_iter().collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let reads: Vec<Vec<_>> = match self.kernel.translation() {
            Some(_) => pieces.iter().map(|p| p.iter().map(|&(a, l)| batch.read_physical(a, l)).collect()).collect(),
            None => ranges.iter().map(|&(a, l)| vec![batch.read_memory(a, l)]).collect(),
        };
        let mut replies = session.run_batch(&batch).await?;
        let rip = replies.register_u64(rip)?;
        let early = match early {
            Some((g, cr3)) => Some((replies.register(g)?, cr3.map(|c| replies.register_u64(c)).transpose()?)),
            None => None,
        };
        let Some(bp) = self.armed.iter().position(|a| a.addr == rip) else {
            // Not one of ours (e.g. an interrupt from another client): just go on.
            return Ok(Step::Resume(None));
        };
        if let BreakAt::RingFull = self.armed[bp].at {
            // A full ring (`--no-drop`): drain it, and the CPU tries again.
            self.recording_report.full_stops += 1;
            self.drain_stub(session).await?;
            return self.past_breakpoint(session, bp, thread, rip).await;
        }
        stats.seen += 1;
        // A stop on a hit `nop` is the traced function's entry: the
        // trampoline's return address is on the stack.
        let (pc, entry_frame) = match self.armed[bp].at {
            BreakAt::HitOf(function) => (function, true),
            BreakAt::Function | BreakAt::RingFull => (rip, false),
        };
        // Without a task filter, `--if` decides first: a stop it refuses
        // costs no read of the task's identity.
        let f = &self.cfg.filter;
        let no_task_filter = f.pid.is_none() && f.tgid.is_none() && f.comm.is_none();
        // Through the trampoline, a compiled `--if` has held already.
        let host_condition = self.exprs.condition.is_some() && !(self.condition_in_guest && entry_frame);
        let mut early = early;
        let mut decided = None;
        if host_condition && no_task_filter && current.is_some() {
            let stop = self.stop_context(session, early.take(), pc, entry_frame).await?;
            if !self.condition_holds(session, cpu, &stop).await {
                return self.past_breakpoint(session, bp, thread, rip).await;
            }
            decided = Some(stop);
        }
        let matched_task = match current {
            Some(current) => {
                let bytes = reads
                    .into_iter()
                    .map(|range| {
                        range.into_iter().map(|r| replies.memory(r)).collect::<Result<Vec<_>, _>>().map(|b| b.concat())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.match_task(session, current.decode(&bytes)).await?
            }
            None => None,
        };
        if let Some(task) = matched_task {
            let stop = match decided {
                Some(stop) => stop,
                None => {
                    let stop = self.stop_context(session, early, pc, entry_frame).await?;
                    if host_condition && !self.condition_holds(session, cpu, &stop).await {
                        return self.past_breakpoint(session, bp, thread, rip).await;
                    }
                    stop
                }
            };
            let StopContext { regs0, frame0, user, named, scopes } = stop;
            let ctx = EvalContext {
                kernel: &self.kernel,
                cpu,
                frame: frame0.as_ref(),
                registers: named.as_deref().unwrap_or_default(),
                scopes: &scopes,
            };
            let mut prints = Vec::with_capacity(self.exprs.prints.len());
            for (source, e) in &self.exprs.prints {
                let mut memory = self.kernel.memory(session).with_user_space(user.as_ref());
                prints.push(match ktrace_kernel::values::print(&ctx, &mut memory, source, e).await {
                    Ok(p) => p,
                    Err(err) => Printed {
                        expr: source.clone(),
                        type_name: String::new(),
                        text: format!("<error: {}>", err.reason),
                        value: serde_json::Value::Null,
                    },
                });
            }
            stats.matched += 1;
            let backtrace = match (&regs0, &frame0) {
                (Some(regs), Some(frame0)) if self.cfg.backtrace => {
                    let mut bt = self.unwinder.unwind(&self.kernel, &mut self.kernel.memory(session), *regs).await;
                    if self.cfg.arguments {
                        let mut memory = self.kernel.memory(session).with_user_space(user.as_ref());
                        if let Err(e) = self.arguments.fill(&self.kernel, &mut memory, &mut bt, frame0).await {
                            tracing::debug!("arguments: {e}");
                        }
                    }
                    Some(bt)
                }
                _ => None,
            };
            let registers = named.filter(|_| self.cfg.registers);
            let hit = Hit {
                seq: stats.matched,
                time: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                elapsed: stats.start.elapsed().as_secs_f64(),
                cpu,
                pid: task.pid,
                tgid: task.tgid,
                comm: task.comm,
                task: task.task,
                breakpoint: self.locations[self.armed[bp].spec].spec.clone(),
                pc,
                backtrace,
                registers,
                prints,
            };
            if sink.hit(hit).is_break() {
                return Ok(Step::End(EndReason::Stopped));
            }
            if self.cfg.count.is_some_and(|c| stats.matched >= c) {
                return Ok(Step::End(EndReason::Count));
            }
        }
        self.past_breakpoint(session, bp, thread, rip).await
    }

    /// What a matching stop's values are computed from: the registers
    /// (from `early`, the stop's own round trip, or read now), frame 0,
    /// the task's address space, and frame 0's scopes for expressions.
    async fn stop_context(
        &mut self,
        session: &mut Session,
        early: Option<(Vec<u8>, Option<u64>)>,
        pc: u64,
        entry_frame: bool,
    ) -> Result<StopContext, TraceError> {
        let wants_exprs = self.exprs.condition.is_some() || !self.exprs.prints.is_empty();
        // User pointers (`const char __user *`) are read through the task's
        // page tables: CR3 comes with the registers, in one round trip.
        let needs_user = (self.cfg.backtrace && self.cfg.arguments) || wants_exprs;
        let needs_g = self.cfg.backtrace || self.cfg.registers || wants_exprs;
        let (g, cr3) = match early {
            Some((g, cr3)) => (Some(g), cr3),
            None if needs_g => {
                let mut batch = Batch::new();
                let g = batch.read_registers();
                let cr3 = self.glayout.cr3_regnum.filter(|_| needs_user).map(|n| batch.read_register(n));
                let mut replies = session.run_batch(&batch).await?;
                (Some(replies.register(g)?), cr3.map(|c| replies.register_u64(c)).transpose()?)
            }
            None => (None, None),
        };
        if let (None, Some(g), Some(map)) = (&self.register_set, &g, session.register_map()) {
            self.register_set = Some(RegisterSet::new(map, g.len()));
        }
        // Frame 0 as the stopped function sees it (at a hit of the
        // in-guest filter: its entry, the trampoline's return popped).
        let regs0 = g.as_ref().map(|g| {
            let mut regs = self.glayout.decode(g);
            if entry_frame {
                regs.set(ktrace_kernel::Reg::Rip, pc);
                regs.set(ktrace_kernel::Reg::Rsp, regs.sp() + 8);
            }
            regs
        });
        let frame0 = match (&g, regs0) {
            (Some(g), Some(regs)) => Some(self.frame_registers(g, regs)),
            _ => None,
        };
        let user = match (cr3, self.kernel.translation()) {
            (Some(cr3), Some(k)) if needs_user => Some(Translation::of_cr3(cr3, k.space())),
            _ => None,
        };
        let named = match &g {
            Some(g) if self.cfg.registers || wants_exprs => {
                let control = self.cfg.registers || self.exprs.control_registers;
                Some(self.registers(session, g, entry_frame.then_some(pc), control).await?)
            }
            _ => None,
        };
        let scopes = match wants_exprs {
            true => self.arguments.scopes_at(&self.kernel, pc, false).unwrap_or_default(),
            false => Default::default(),
        };
        Ok(StopContext { regs0, frame0, user, named, scopes })
    }

    /// `--if` at this stop (true without one). A condition that cannot be
    /// evaluated does not hold, and says why once per reason.
    async fn condition_holds(&mut self, session: &mut Session, cpu: ktrace_kernel::CpuId, stop: &StopContext) -> bool {
        let Some(cond) = &self.exprs.condition else { return true };
        let ctx = EvalContext {
            kernel: &self.kernel,
            cpu,
            frame: stop.frame0.as_ref(),
            registers: stop.named.as_deref().unwrap_or_default(),
            scopes: &stop.scopes,
        };
        let mut memory = self.kernel.memory(session).with_user_space(stop.user.as_ref());
        match ktrace_kernel::values::condition(&ctx, &mut memory, cond).await {
            Ok(holds) => holds,
            Err(e) => {
                if self.exprs.reported.insert(e.to_string()) {
                    tracing::warn!("--if {e}: such hits do not match");
                }
                false
            }
        }
    }

    /// Frame 0's registers for DWARF locations: all of the `g` reply, as
    /// the stopped function sees them (`regs`: after the entry adjustment).
    fn frame_registers(&self, g: &[u8], regs: ktrace_kernel::Regs) -> FrameRegisters {
        let mut frame = self.register_set.as_ref().map(|set| set.frame(g)).unwrap_or_default();
        frame.set("rip", regs.ip());
        frame.set("rsp", regs.sp());
        frame.cfa = ktrace_kernel::values::stopped_frame_cfa(&self.kernel, regs.ip(), &frame);
        frame
    }

    /// `--regs`: the `g` reply's registers and the control registers by
    /// `p`; at a hit of the in-guest filter, rip and rsp as the traced
    /// function's entry had them.
    async fn registers(
        &self,
        session: &mut Session,
        g: &[u8],
        entry: Option<u64>,
        control: bool,
    ) -> Result<Vec<(String, u64)>, TraceError> {
        let Some(set) = &self.register_set else { return Ok(Vec::new()) };
        let mut values = set.values_in_g(g);
        for &(name, regnum) in set.by_number().iter().filter(|_| control) {
            let b = session.read_register(regnum).await?;
            values.push((name, le_u64(&b)));
        }
        if let Some(function) = entry {
            for (name, v) in values.iter_mut() {
                match *name {
                    "rip" => *v = function,
                    "rsp" => *v += 8,
                    _ => {}
                }
            }
        }
        Ok(RegisterSet::ordered(values))
    }

    /// The task a stop ran in, if the filter takes it.
    async fn match_task(
        &mut self,
        session: &mut Session,
        current: CurrentTask,
    ) -> Result<Option<TaskIdent>, TraceError> {
        match current {
            CurrentTask::Followed(task) if self.cfg.filter.pid == Some(task.pid) => {
                Ok(self.cfg.filter.matches_ident(&task).then_some(task))
            }
            CurrentTask::Followed(_) => {
                // The task exited and its task_struct was reused: look again.
                let pid = self.cfg.filter.pid.unwrap_or(-1);
                self.target_task =
                    self.kernel.find_task_by_pid(&mut self.kernel.memory(session), pid).await.ok().map(|t| t.task);
                if let Some(ig) = &mut self.in_guest {
                    ig.filter.task = Some(self.target_task.map_or(0, |t| t.0));
                    ktrace_kernel::trampoline::update_filter(
                        &mut self.kernel.memory(session),
                        &ig.plan.region,
                        &ig.filter,
                    )
                    .await?;
                }
                Ok(None)
            }
            // Not the --pid task, or it is not known (gone, and not found again).
            CurrentTask::Other(_) if self.target_task.is_some() || self.cfg.filter.pid.is_some() => Ok(None),
            CurrentTask::Other(task) => {
                let task = self.kernel.task_ident(session, task).await?;
                Ok(self.cfg.filter.matches_ident(&task).then_some(task))
            }
        }
    }

    /// Gets the stopped CPU past breakpoint `bp`, returning how to resume.
    async fn past_breakpoint(
        &mut self,
        session: &mut Session,
        bp: usize,
        thread: ThreadId,
        rip: u64,
    ) -> Result<Step, TraceError> {
        match self.armed[bp].past {
            Past::Skip(n) => Ok(Step::Resume(Some(rip + u64::from(n)))),
            Past::Step { probed } => {
                session.step(Some(thread)).await?;
                if !probed {
                    let after = le_u64(&session.read_register(self.glayout.rip_regnum).await?);
                    if after == rip {
                        // The stub reported the same breakpoint again (KVM's int3): fall back.
                        tracing::debug!("single-step did not move past 0x{rip:x}; using remove/step/reinsert");
                        self.armed[bp].past = Past::Reinsert;
                        return self.reinsert_step(session, thread, rip).await;
                    }
                    self.armed[bp].past = Past::Step { probed: true };
                }
                Ok(Step::Resume(None))
            }
            Past::Reinsert => self.reinsert_step(session, thread, rip).await,
        }
    }

    async fn reinsert_step(&mut self, session: &mut Session, thread: ThreadId, rip: u64) -> Result<Step, TraceError> {
        let kind = self.bp_kind();
        session.remove_breakpoint(kind, rip, 1).await?;
        session.step(Some(thread)).await?;
        session.insert_breakpoint(kind, rip, 1).await?;
        Ok(Step::Resume(None))
    }
}

/// Polls a future, turning a panic into an error value (the future is
/// boxed, so it is `Unpin` and needs no unsafe projection).
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

enum Step {
    /// Resume; with `Some(pc)` continue at that address (`c ADDR`).
    Resume(Option<u64>),
    End(EndReason),
}

/// How often the rings are read from QEMU's RAM while the guest runs.
const LIVE_DRAIN: Duration = Duration::from_millis(1);
/// How soon the loop comes back to records waiting to become hits, or to
/// rings that had records at the last read: at once, after a look at the stub.
const BUSY_TICK: Duration = Duration::ZERO;
/// The most records read back and not yet turned into hits (a burst the
/// host cannot keep up with waits here, up to ~40 MB, not in the rings).
const MAX_PENDING: usize = 16384;
/// How often (at most, and at least) the guest is stopped to read the
/// rings through the stub: more often while they fill up.
const STUB_DRAIN_MAX: Duration = Duration::from_millis(50);
const STUB_DRAIN_MIN: Duration = Duration::from_millis(5);

struct Stats {
    seen: u64,
    matched: u64,
    start: Instant,
}

fn gone() -> TraceError {
    TraceError::GuestGone(GoneReason::SessionLost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_the_loop_becomes_a_value() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let caught = rt.block_on(CatchUnwind(Box::pin(async {
            tokio::task::yield_now().await;
            panic!("in the loop")
        })));
        let panic = caught.expect_err("the panic is caught");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"in the loop"));
        assert_eq!(rt.block_on(CatchUnwind(Box::pin(async { 7 }))).ok(), Some(7));
    }
}

#[cfg(test)]
#[path = "stop_loop_tests.rs"]
mod stop_loop_tests;
