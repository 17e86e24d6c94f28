//! Unwinding a copy of a stack, as a recorded hit carries it: the same
//! frames as the live unwind at the same stop, on the real guests (Debian
//! 6.1, 6.12 and 7.x, KASLR, 2 vCPUs, testprog in its syscall loop).
//!
//! At each of several stops, every CPU is unwound twice: through the stub,
//! and from a copy of its stack taken from the stack pointer to the end of
//! the stack block it is on. Both must give the same frames; where the live
//! unwind leaves the block (an IRQ stack's switch back to the task's), the
//! copy's must stop there, at a read outside the copy, and not guess on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ktrace_kernel::unwind::PAGE;
use ktrace_kernel::{Kernel, Regs, StackCopy, StopReason, Target, Unwinder};
use ktrace_rsp::{ClientConfig, Resume, Session, StubAddr};
use ktrace_symbols::Vmlinux;
use ktrace_testguest::{test_guest_on, BootOptions, KernelSeries};

static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn pcs(bt: &ktrace_kernel::Backtrace) -> Vec<u64> {
    bt.frames.iter().map(|f| f.pc).collect()
}

fn check(series: KernelSeries) {
    let _one = ONE_GUEST_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = BootOptions { smp: 2, kaslr: true, testprogs: 2, ..BootOptions::default() };
    let Some(guest) = test_guest_on(series, opts) else { return };
    let vm = Arc::new(Vmlinux::open(guest.vmlinux()).expect("vmlinux"));
    let block = ktrace_kernel::x86::thread_size(&vm).expect("THREAD_SIZE from init's stack");
    assert_eq!(block, 16 << 10, "x86-64's THREAD_SIZE (without KASAN)");
    let addr: StubAddr = guest.addr().parse().expect("addr");
    let (mut whole, mut cut, mut deepest) = (0, 0, 0);
    block_on(async {
        let (mut s, _) = Session::connect(&addr, ClientConfig::default()).await.expect("connect");
        let kernel = Kernel::attach_stub(&mut s, vm.clone()).await.expect("attach");
        let mut unwinder = Unwinder::new(&vm).expect("unwinder");
        for _ in 0..12 {
            for cpu in Target::cpus(&mut kernel.memory(&mut s)).await.expect("cpus") {
                let regs = Regs::read_from(&mut kernel.memory(&mut s), cpu).await.expect("registers");
                let live = unwinder.unwind(&kernel, &mut kernel.memory(&mut s), regs).await;
                if !kernel.space().is_kernel(regs.sp()) {
                    continue;
                }
                let start = regs.sp() & !(PAGE - 1);
                let end = (regs.sp() | (block - 1)) + 1;
                // Up to the end of the block, or of the stack where it ends
                // first (an IRQ stack is not aligned to its size: its
                // guard page comes first).
                let mut bytes = Vec::new();
                let mut at = start;
                while at < end {
                    match kernel.memory(&mut s).read_memory(at, PAGE as usize).await {
                        Ok(b) => bytes.extend(b),
                        Err(_) => break,
                    }
                    at += PAGE;
                }
                assert!(at > regs.sp(), "CPU {cpu}: its stack pointer 0x{:x} is unreadable", regs.sp());
                let end = at;
                let mut copy = StackCopy::new(start, bytes);
                let copied = unwinder.unwind(&kernel, &mut copy, regs).await;
                let (ours, theirs) = (pcs(&copied), pcs(&live));
                if ours == theirs {
                    assert_eq!(copied.stopped, live.stopped, "CPU {cpu}: the same frames, another end");
                    whole += 1;
                    deepest = deepest.max(ours.len());
                    continue;
                }
                assert!(
                    theirs.starts_with(&ours),
                    "CPU {cpu}: from the copy {ours:x?}, live {theirs:x?} ({:?})",
                    copied.stopped
                );
                match copied.stopped {
                    Some(StopReason::UnreadableStack { addr, .. }) => {
                        assert!(!(start..end).contains(&addr), "CPU {cpu}: 0x{addr:x} is in the copy")
                    }
                    other => {
                        panic!("CPU {cpu}: the copy's unwind ended early with {other:?}: {ours:x?} vs {theirs:x?}")
                    }
                }
                cut += 1;
            }
            let running = s.resume(Resume::Continue).await.expect("resume");
            tokio::time::sleep(Duration::from_millis(150)).await;
            let (session, _) = running.interrupt().await.expect("interrupt");
            s = session;
            kernel.resumed();
        }
        s.detach().await.expect("detach");
    });
    eprintln!(
        "{}: {whole} stacks unwound whole from their copy, {cut} cut at its end; deepest {deepest} frames",
        guest.release()
    );
    assert!(whole >= 12, "only {whole} stacks unwound whole from a copy ({cut} cut)");
    assert!(deepest >= 5, "no deep stack among them (deepest {deepest} frames)");
    assert!(guest.is_running(Duration::from_secs(30)), "the guest runs after detach");
}

#[test]
fn stack_copies_on_6_1() {
    check(KernelSeries::V6_1);
}

#[test]
fn stack_copies_on_6_12() {
    check(KernelSeries::V6_12);
}

#[test]
fn stack_copies_on_7() {
    check(KernelSeries::V7);
}
