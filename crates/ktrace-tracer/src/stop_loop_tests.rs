//! The stop loop's decisions, driven by the scripted fake stub
//! (`ktrace-fakestub`) over the 6.1 test vmlinux: a miss resumes, a match
//! becomes a hit, a breakpoint that is no NOP is single-stepped past, a
//! stub that dies ends the trace with the guest gone, and a cancel ends it
//! cleanly. Skips outside CI when the vmlinux cannot be prepared.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use ktrace_fakestub::{Event, FakeStub, Machine};
use ktrace_rsp::{ClientConfig, StubAddr};
use ktrace_symbols::Vmlinux;
use tokio_util::sync::CancellationToken;

use crate::{EndReason, GoneReason, Hit, TraceConfig, TraceError, Tracer};

const SLIDE: u64 = 0x1c0_0000;
const PERCPU: [u64; 2] = [0xffff_8880_7f00_0000, 0xffff_8880_7f10_0000];
const TASK_A: u64 = 0xffff_8880_0400_0000;
const TASK_B: u64 = 0xffff_8880_0410_0000;

/// The 6.1 vmlinux and the runtime addresses the fake kernel needs.
struct FakeKernel {
    vm: Arc<Vmlinux>,
    function: u64,
}

impl FakeKernel {
    fn load() -> Option<FakeKernel> {
        let path = ktrace_testguest::test_vmlinux_of(ktrace_testguest::KernelSeries::V6_1)?;
        let vm = Arc::new(Vmlinux::open(&path).expect("vmlinux opens"));
        let function = vm.symbol("_raw_spin_lock").expect("_raw_spin_lock").addr.0 + SLIDE;
        Some(FakeKernel { vm, function })
    }

    fn sym(&self, name: &str) -> u64 {
        self.vm.symbol(name).unwrap_or_else(|e| panic!("{name}: {e}")).addr.0
    }

    fn member(&self, path: &str) -> u64 {
        self.vm.member(path).unwrap_or_else(|e| panic!("{path}: {e}")).offset
    }

    /// A two-CPU guest: the banner, the per-CPU offsets, two tasks
    /// (`testprog` pid 91, `other` pid 92), and `code` at the traced function.
    fn machine(&self, code: &[u8]) -> Machine {
        let mut m = Machine::new(2);
        m.map(self.sym("linux_banner") + SLIDE, self.vm.banner().expect("banner").as_bytes());
        let offsets: Vec<u8> = PERCPU.iter().flat_map(|o| o.to_le_bytes()).collect();
        m.map(self.sym("__per_cpu_offset") + SLIDE, &offsets);
        for (base, pid, comm) in [(TASK_A, 91i32, "testprog"), (TASK_B, 92, "other")] {
            m.map(base, &vec![0u8; 0x4000]);
            m.write(base + self.member("task_struct.pid"), &pid.to_le_bytes());
            m.write(base + self.member("task_struct.tgid"), &pid.to_le_bytes());
            let mut name = [0u8; 16];
            name[..comm.len()].copy_from_slice(comm.as_bytes());
            m.write(base + self.member("task_struct.comm"), &name);
        }
        for (cpu, base) in PERCPU.iter().enumerate() {
            m.map(*base, &vec![0u8; 0x40000]);
            m.write(self.current(cpu), &TASK_B.to_le_bytes());
            m.set_pc(cpu, 0xffff_ffff_8100_0000 + SLIDE, base + 0x1000);
        }
        m.map(self.function, code);
        // init_task alone on the task list (a walk finds only it).
        let init = self.sym("init_task") + SLIDE;
        let tasks = init + self.member("task_struct.tasks");
        m.map(init, &vec![0u8; 0x4000]);
        m.write(tasks, &tasks.to_le_bytes()).write(tasks + 8, &tasks.to_le_bytes());
        m.write(init + self.member("task_struct.comm"), b"swapper/0\0");
        m
    }

    /// Where CPU `cpu`'s current-task pointer is (6.1: `current_task`, per-CPU at 0).
    fn current(&self, cpu: usize) -> u64 {
        PERCPU[cpu] + self.sym("current_task")
    }

    /// An event: `cpu` reaches the traced function running `task`.
    fn hit(&self, cpu: usize, task: u64) -> Event {
        Event::Reach { thread: cpu, rip: self.function, writes: vec![(self.current(cpu), task.to_le_bytes().to_vec())] }
    }
}

fn config() -> TraceConfig {
    TraceConfig::new()
        .breakpoint("_raw_spin_lock")
        .comm("testprog")
        .wait_for_task(true)
        .backtrace(false)
        .client(ClientConfig { timeout: Duration::from_secs(2), ..ClientConfig::default() })
        .stub_translation(true)
}

/// `push %rbp; mov %rsp,%rbp`: no NOP, so the loop single-steps past it.
const NOT_A_NOP: [u8; 16] =
    [0x55, 0x48, 0x89, 0xe5, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90];

async fn trace(
    machine: Machine,
    cfg: TraceConfig,
    vm: Arc<Vmlinux>,
    cancel: CancellationToken,
) -> (Result<crate::Summary, crate::TraceFailure>, Vec<Hit>, ktrace_fakestub::Record) {
    let stub = FakeStub::spawn(machine);
    let addr: StubAddr = stub.addr.parse().expect("address");
    let tracer = Tracer::attach(&addr, vm, cfg).await.expect("attach to the fake");
    let mut hits = Vec::new();
    let mut sink = |hit: Hit| {
        hits.push(hit);
        ControlFlow::Continue(())
    };
    let result = tokio::time::timeout(Duration::from_secs(20), tracer.run(&mut sink, cancel)).await.expect("no hang");
    let record = tokio::task::spawn_blocking(move || stub.join()).await.expect("stub joins");
    (result, hits, record)
}

#[tokio::test]
async fn a_miss_resumes_and_a_match_becomes_a_hit() {
    let Some(k) = FakeKernel::load() else { return };
    let mut m = k.machine(&NOT_A_NOP);
    m.then(k.hit(0, TASK_B)).then(k.hit(1, TASK_A)).then(k.hit(0, TASK_B)).then(k.hit(0, TASK_A));
    let (result, hits, record) = trace(m, config().count(2), k.vm.clone(), CancellationToken::new()).await;
    let summary = result.expect("the trace ends well");
    assert_eq!(summary.end, EndReason::Count);
    assert_eq!((summary.seen, summary.matched), (4, 2), "two misses, two matches");
    let got: Vec<_> = hits.iter().map(|h| (h.cpu.0, h.pid, h.comm.as_str(), h.pc)).collect();
    assert_eq!(got, [(1, 91, "testprog", k.function), (0, 91, "testprog", k.function)]);
    // Each stop but the last was stepped past (no NOP to skip); the guest
    // was detached with no breakpoint left.
    assert_eq!(record.steps, 3, "{record:?}");
    assert!(record.detached, "{record:?}");
    assert!(record.breakpoints.is_empty(), "{record:?}");
}

#[tokio::test]
async fn a_dead_stub_ends_the_trace_with_the_guest_gone() {
    let Some(k) = FakeKernel::load() else { return };
    let mut m = k.machine(&NOT_A_NOP);
    m.then(k.hit(1, TASK_A)).then(Event::Die);
    let (result, hits, _) = trace(m, config(), k.vm.clone(), CancellationToken::new()).await;
    let failure = result.expect_err("the stub died");
    assert!(
        matches!(failure.error, TraceError::GuestGone(GoneReason::StubClosed) | TraceError::Rsp(_)),
        "{:?}",
        failure.error
    );
    assert_eq!((failure.summary.matched, failure.summary.end), (1, EndReason::Error));
    assert!(!failure.summary.guest_released);
    assert_eq!(hits.len(), 1);
}

#[tokio::test]
async fn a_cancel_ends_the_trace_and_releases_the_guest() {
    let Some(k) = FakeKernel::load() else { return };
    let mut m = k.machine(&NOT_A_NOP);
    m.then(k.hit(1, TASK_A));
    let cancel = CancellationToken::new();
    let later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        later.cancel();
    });
    let (result, hits, record) = trace(m, config(), k.vm.clone(), cancel).await;
    let summary = result.expect("a cancel is a clean end");
    assert_eq!((summary.end, summary.matched, hits.len()), (EndReason::Cancelled, 1, 1));
    assert!(summary.guest_released);
    assert!(record.detached && record.breakpoints.is_empty(), "{record:?}");
}

#[tokio::test]
async fn a_task_filter_that_matches_no_task_is_refused() {
    let Some(k) = FakeKernel::load() else { return };
    // Without --wait, a comm no task has is refused before any breakpoint.
    let m = k.machine(&NOT_A_NOP);
    let stub = FakeStub::spawn(m);
    let addr: StubAddr = stub.addr.parse().expect("address");
    let cfg = config().wait_for_task(false).comm("nosuchtask");
    let err = Tracer::attach(&addr, k.vm.clone(), cfg).await.err().expect("refused");
    assert!(matches!(err, TraceError::NoMatchingTask { .. }), "{err:?}");
    let record = tokio::task::spawn_blocking(move || stub.join()).await.expect("stub joins");
    assert!(record.detached && record.breakpoints.is_empty(), "{record:?}");
}
