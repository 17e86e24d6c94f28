//! ktrace's own page-table walk over the stub's physical mode, against the
//! real guests: page-table isolation forced on (`pti=on`, CPUs in user
//! mode run on page tables without the kernel's data), 5-level paging
//! (`-cpu max`), on QEMU 7.2 and 10.0.
//!
//! At one stop, the translated view must equal the stub's own virtual
//! reads wherever those work (a CPU in kernel mode), find every testprog,
//! and report the paging mode the CPUs run. Every way out leaves QEMU in
//! virtual mode and the guest running.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ktrace_kernel::x86::paging::PagingLevels;
use ktrace_kernel::{Kernel, Target};
use ktrace_rsp::{ClientConfig, Session, StubAddr};
use ktrace_symbols::Vmlinux;
use ktrace_testguest::{test_guest, BootOptions, KernelSeries, QemuBuild};

static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn check(opts: BootOptions) {
    let _one = ONE_GUEST_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(guest) = test_guest(BootOptions { testprogs: 2, ..opts.clone() }) else { return };
    let vm = Arc::new(Vmlinux::open(guest.vmlinux()).expect("vmlinux"));
    let addr: StubAddr = guest.addr().parse().expect("addr");
    let want_levels = if opts.five_level { PagingLevels::Five } else { PagingLevels::Four };
    block_on(async {
        let (mut s, _) = Session::connect(&addr, ClientConfig::default()).await.expect("connect");
        assert!(s.has_physical_memory(), "QEMU's stub offers PhyMemMode");
        let kernel = Kernel::attach_physical(&mut s, vm.clone()).await.expect("attach through physical memory");
        let space = kernel.space().clone();
        eprintln!("{:?} {}: {space:?}, slide 0x{:x}", opts.qemu, guest.release(), kernel.slide());
        assert_eq!(space.levels, want_levels);
        assert!(space.page_offset_base.is_some_and(|b| space.is_kernel(b)), "{space:?}");
        assert!(space.vmalloc_base.is_some() && space.vmemmap_base.is_some());
        assert_eq!(space.image.1 - space.image.0, 1 << 30, "KERNEL_IMAGE_SIZE from vmcoreinfo");

        // Every testprog, through the translation.
        let tasks = kernel.tasks(&mut kernel.memory(&mut s)).await.expect("tasks");
        for &pid in guest.testprog_pids() {
            let t = tasks.iter().find(|t| t.pid == pid as i32).unwrap_or_else(|| panic!("testprog {pid} in {tasks:?}"));
            assert_eq!(t.comm, "testprog");
            assert!(space.is_kernel(t.task.0), "task 0x{:x}", t.task.0);
        }
        let cpus = kernel.cpu_states(&mut kernel.memory(&mut s)).await.expect("cpu states");
        assert_eq!(cpus.len(), opts.smp as usize);

        // The same bytes as the stub's virtual reads, where the selected CPU
        // can read them (kernel mode). Per-CPU data, a task and a stack.
        let mut compared = 0;
        for state in &cpus {
            let cpu = state.cpu;
            let cr3 = Target::read_register(&mut s, cpu, "cr3").await.expect("cr3");
            let cs = Target::read_register(&mut s, cpu, "cs").await.expect("cs");
            let sp = Target::read_register(&mut s, cpu, "rsp").await.expect("rsp");
            let slot = kernel.current_task_slot(cpu).expect("current task slot");
            let objects = [(slot, 8), (state.current.task.0, 256), (sp & !7, 64)];
            for (at, len) in objects {
                if !space.is_kernel(at) {
                    continue;
                }
                let ours = match kernel.memory(&mut s).read_memory(at, len).await {
                    Ok(b) => b,
                    // A CPU whose stack pointer is at the top of its stack: the
                    // bytes above are the guard page, which the stub cannot read either.
                    Err(e) => {
                        let stub = Target::read_memory(&mut s, at, len).await;
                        assert!(stub.is_err(), "CPU {cpu}: ktrace cannot read 0x{at:x} ({e}), the stub can");
                        eprintln!("CPU {cpu}: 0x{at:x} is not mapped for either ({e})");
                        continue;
                    }
                };
                match Target::read_memory(&mut s, at, len).await {
                    Ok(stub) => {
                        assert_eq!(ours, stub, "CPU {cpu} at 0x{at:x} (cr3 0x{cr3:x}, cs 0x{cs:x})");
                        compared += 1;
                    }
                    // Under PTI a CPU in user mode has no kernel data mapped:
                    // exactly what the own translation is for.
                    Err(e) => eprintln!("CPU {cpu} (cs 0x{cs:x}) cannot read 0x{at:x} itself: {e}"),
                }
            }
        }
        assert!(compared > 0, "no CPU could check the translation against the stub");
        s.detach().await.expect("detach");

        // QEMU keeps the memory mode for the next client: it must be virtual again.
        let (mut s, _) = Session::connect(&addr, ClientConfig::default()).await.expect("reconnect");
        assert_eq!(s.request(b"qqemu.PhyMemMode").await.expect("mode"), b"0");
        s.detach().await.expect("detach");
    });
    assert!(guest.is_running(Duration::from_secs(30)), "the guest runs after detach");
}

#[test]
fn pti_on_qemu_10() {
    check(BootOptions {
        kernel: KernelSeries::V6_1,
        qemu: Some(QemuBuild::V10_0),
        pti: true,
        ..BootOptions::default()
    });
}

#[test]
fn five_level_paging_on_qemu_7_2() {
    check(BootOptions {
        kernel: KernelSeries::V7,
        qemu: Some(QemuBuild::V7_2),
        five_level: true,
        ..BootOptions::default()
    });
}

#[test]
fn five_level_paging_with_pti_on_qemu_10() {
    check(BootOptions {
        kernel: KernelSeries::V6_12,
        qemu: Some(QemuBuild::V10_0),
        five_level: true,
        pti: true,
        smp: 4,
        ..BootOptions::default()
    });
}
