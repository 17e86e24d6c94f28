//! What to trace and how: [`TraceConfig`] and its builder methods.

use std::time::Duration;

use ktrace_kernel::ModuleDebugDir;
use ktrace_rsp::ClientConfig;

use crate::filter::Filter;

/// How the tracer gets a CPU past the breakpoint it stopped on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResumeMode {
    /// Probe: skip the instruction by moving RIP when it is a NOP (the ftrace
    /// `nop5` at function entry, `endbr64`), else single-step over it with the
    /// breakpoint in place, falling back to remove/step/reinsert if the stub
    /// reports the same breakpoint again.
    #[default]
    Auto,
    /// Always single-step with the breakpoint in place.
    Step,
    /// Always remove, single-step, reinsert.
    RemoveStepReinsert,
}

/// How ktrace lets go of the guest when it is done.
pub use ktrace_kernel::guest::Release as GuestRelease;

/// What to trace and how, built with [`TraceConfig::new`] and its methods:
/// `TraceConfig::new().breakpoint("_raw_spin_lock").pid(2297).count(10)`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TraceConfig {
    /// Breakpoint locations (`symbol`, `symbol+off`, `0xaddr` (link-time), `file.c:line`).
    pub(crate) breakpoints: Vec<String>,
    /// Use hardware breakpoints (`Z1`).
    pub(crate) hardware: bool,
    /// Which hits to report.
    pub(crate) filter: Filter,
    /// Stop after this many matched hits.
    pub(crate) count: Option<u64>,
    /// Stop after this long.
    pub(crate) duration: Option<Duration>,
    /// Capture a backtrace for each matched hit.
    pub(crate) backtrace: bool,
    /// The most frames per backtrace.
    pub(crate) max_frames: usize,
    /// How to get past a breakpoint.
    pub(crate) resume: ResumeMode,
    /// Wait for a `--pid`/`--tgid`/`--comm` task to appear instead of failing.
    pub(crate) wait_for_task: bool,
    /// The RSP client settings.
    pub(crate) client: ClientConfig,
    /// Resume the guest at the end, or leave it paused.
    pub(crate) release: GuestRelease,
    /// Evaluate the filter inside the guest (`--in-guest`): a trampoline
    /// called from each function's ftrace NOP, so the guest stops only on
    /// matching hits. Where that cannot be made safe, the stop loop is used.
    pub(crate) in_guest: bool,
    /// Where modules' debug files are (source lines in module frames).
    pub(crate) module_debug: ModuleDebugDir,
    /// Read the kernel through the stub's own translation (the selected
    /// CPU's page tables, as GDB does) instead of ktrace's walk of the
    /// kernel's page tables over QEMU's physical mode. For comparison only.
    pub(crate) stub_translation: bool,
    /// Every write into the guest is recorded here first (an undo log a
    /// guardian process replays if ktrace dies).
    pub(crate) journal: Option<Journal>,
    /// Where to connect again when the connection is lost (the stub itself,
    /// when the trace talks to it through a guardian); the address given
    /// to [`crate::Tracer::attach`] when `None`.
    pub(crate) reconnect_to: Option<ktrace_rsp::StubAddr>,
    /// With backtraces: the arguments of every frame, from DWARF.
    pub(crate) arguments: bool,
    /// The stopped CPU's registers with each hit.
    pub(crate) registers: bool,
    /// `--print`: C expressions evaluated at each matching hit.
    pub(crate) prints: Vec<String>,
    /// `--if`: a C expression that must be non-zero for a hit to match
    /// (ANDed with the filter).
    pub(crate) condition: Option<String>,
    /// With `in_guest`: the most stack bytes each recorded match copies.
    pub(crate) stack_copy: u64,
    /// With `in_guest`: stop the guest to drain a full ring instead of
    /// dropping the match.
    pub(crate) no_drop: bool,
    /// With `in_guest`: stop at each match instead of recording it.
    pub(crate) stop_at_match: bool,
}

/// A [`ktrace_kernel::WriteJournal`] for [`TraceConfig::journal`] (`Debug` for the config).
#[derive(Clone)]
pub(crate) struct Journal(pub(crate) std::sync::Arc<dyn ktrace_kernel::WriteJournal>);

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            breakpoints: Vec::new(),
            hardware: false,
            filter: Filter::default(),
            count: None,
            duration: None,
            backtrace: true,
            max_frames: 64,
            resume: ResumeMode::Auto,
            wait_for_task: false,
            release: GuestRelease::Resume,
            client: ClientConfig::default(),
            in_guest: false,
            module_debug: ModuleDebugDir::Default,
            stub_translation: false,
            journal: None,
            reconnect_to: None,
            arguments: true,
            registers: false,
            prints: Vec::new(),
            condition: None,
            stack_copy: 2048,
            no_drop: false,
            stop_at_match: false,
        }
    }
}

impl TraceConfig {
    /// An empty configuration (no breakpoint yet; backtraces on), to build on:
    /// `TraceConfig::new().breakpoint("_raw_spin_lock").pid(2297).count(10)`.
    pub fn new() -> TraceConfig {
        TraceConfig::default()
    }

    /// Adds a breakpoint location.
    pub fn breakpoint(mut self, spec: impl Into<String>) -> Self {
        self.breakpoints.push(spec.into());
        self
    }

    /// Uses hardware breakpoints.
    pub fn hardware(mut self, yes: bool) -> Self {
        self.hardware = yes;
        self
    }

    /// Only hits in this thread.
    pub fn pid(mut self, pid: i32) -> Self {
        self.filter.pid = Some(pid);
        self
    }

    /// Only hits in this process.
    pub fn tgid(mut self, tgid: i32) -> Self {
        self.filter.tgid = Some(tgid);
        self
    }

    /// Only hits whose comm matches (exact or glob).
    pub fn comm(mut self, comm: impl Into<String>) -> Self {
        self.filter.comm = Some(comm.into());
        self
    }

    /// Only hits on this CPU (may be given several times).
    pub fn cpu(mut self, cpu: u32) -> Self {
        self.filter.cpus.push(ktrace_kernel::CpuId(cpu));
        self
    }

    /// Stops after `n` matched hits.
    pub fn count(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }

    /// Stops after this long.
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }

    /// Captures (or not) a backtrace per matched hit.
    pub fn backtrace(mut self, yes: bool) -> Self {
        self.backtrace = yes;
        self
    }

    /// Records every write into the guest in `journal` first.
    pub fn journal(mut self, journal: std::sync::Arc<dyn ktrace_kernel::WriteJournal>) -> Self {
        self.journal = Some(Journal(journal));
        self
    }

    /// Reads through the stub's own translation (see [`TraceConfig::stub_translation`]).
    pub fn stub_translation(mut self, yes: bool) -> Self {
        self.stub_translation = yes;
        self
    }

    /// Evaluates the filter inside the guest where it can (`--in-guest`).
    pub fn in_guest(mut self, yes: bool) -> Self {
        self.in_guest = yes;
        self
    }

    /// Looks for modules' debug files in this directory.
    pub fn module_debug(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.module_debug = ModuleDebugDir::Given(dir.into());
        self
    }

    /// Waits for the filtered task to appear instead of failing.
    pub fn wait_for_task(mut self, yes: bool) -> Self {
        self.wait_for_task = yes;
        self
    }

    /// The whole task and CPU filter at once.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// The most frames per backtrace (64 unless set).
    pub fn max_frames(mut self, n: usize) -> Self {
        self.max_frames = n;
        self
    }

    /// How to get past a breakpoint.
    pub fn resume(mut self, mode: ResumeMode) -> Self {
        self.resume = mode;
        self
    }

    /// The RSP client settings (timeouts).
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// How to let go of the guest at the end.
    pub fn release(mut self, release: GuestRelease) -> Self {
        self.release = release;
        self
    }

    /// Where modules' debug files are (default, given, or none).
    pub fn module_debug_dir(mut self, dir: ModuleDebugDir) -> Self {
        self.module_debug = dir;
        self
    }

    /// Where to connect again when the connection is lost (the stub
    /// itself, when [`crate::Tracer::attach`] is given a guardian's address).
    pub fn reconnect_to(mut self, addr: ktrace_rsp::StubAddr) -> Self {
        self.reconnect_to = Some(addr);
        self
    }

    /// With backtraces, shows (or not) every frame's arguments.
    pub fn arguments(mut self, yes: bool) -> Self {
        self.arguments = yes;
        self
    }

    /// Reports (or not) the stopped CPU's registers with each hit.
    pub fn registers(mut self, yes: bool) -> Self {
        self.registers = yes;
        self
    }

    /// Adds a C expression to evaluate at each matching hit.
    pub fn print(mut self, expr: impl Into<String>) -> Self {
        self.prints.push(expr.into());
        self
    }

    /// A C condition a hit must meet (ANDed with the filter).
    pub fn condition(mut self, expr: impl Into<String>) -> Self {
        self.condition = Some(expr.into());
        self
    }

    /// With `in_guest`: the most stack bytes each recorded match copies
    /// (from the stack pointer at the function's entry toward the end of
    /// the task's stack; 2048 unless set).
    pub fn stack_copy(mut self, bytes: u64) -> Self {
        self.stack_copy = bytes.clamp(64, 1 << 20);
        self
    }

    /// With `in_guest`: when a CPU's ring is full, stop the guest until it
    /// is drained instead of dropping the match.
    pub fn no_drop(mut self, yes: bool) -> Self {
        self.no_drop = yes;
        self
    }

    /// With `in_guest`: stop the guest at each match (the filter still runs
    /// in the guest) instead of recording it.
    pub fn stop_at_match(mut self, yes: bool) -> Self {
        self.stop_at_match = yes;
        self
    }
}
