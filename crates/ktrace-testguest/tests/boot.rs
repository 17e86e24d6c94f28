//! The guest harness itself: boots, reports its testprogs, dies with its owner.

use std::time::Duration;

use ktrace_testguest::{test_guest, test_guest_on, BootOptions, KernelSeries};

#[test]
fn guest_boots_runs_testprog_and_is_killed_on_drop() {
    let Some(guest) = test_guest(BootOptions::default()) else { return };
    assert!(guest.testprog_pid() > 1, "testprog pid {}", guest.testprog_pid());
    assert_eq!(guest.release(), guest.image().release());
    assert!(guest.is_running(Duration::from_secs(20)), "no heartbeat:\n{}", guest.console());
    let pid = guest.qemu_pid().expect("qemu pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(guest);
    let gone = std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| s.contains("State:\tZ"));
    assert!(gone, "qemu {pid} outlived its Guest");
}

#[test]
fn guest_starts_several_testprogs_when_asked() {
    let opts = BootOptions { testprogs: 2, kaslr: false, smp: 1, ..BootOptions::default() };
    let Some(guest) = test_guest(opts) else { return };
    let pids = guest.testprog_pids();
    assert_eq!(pids.len(), 2);
    assert_ne!(pids[0], pids[1]);
}

/// One boot per series (they are slow under TCG) checks the release and the
/// modules: `brd` is loaded at a kernel address, its debug file is there, and
/// the dd loop through it runs.
#[test]
fn every_kernel_series_boots_reports_its_release_and_loads_brd() {
    for series in KernelSeries::ALL {
        let opts = BootOptions { smp: 1, ..BootOptions::default() };
        let Some(guest) = test_guest_on(series, opts) else { return };
        assert_eq!(guest.kernel(), series);
        assert_eq!(guest.options().kernel, series);
        assert_eq!(guest.release(), guest.image().release());
        assert!(series.contains(guest.release()), "{series}: {}", guest.release());
        assert!(guest.testprog_pid() > 1);
        assert!(guest.boot_time() > Duration::ZERO);

        assert_eq!(guest.image().modules, ["brd"], "{series}");
        let modules = guest.modules_from_console();
        let Some(brd) = modules.iter().find(|m| m.name == "brd") else {
            panic!("{series}: brd is not in the guest's module list:\n{}", guest.console());
        };
        assert_eq!(brd.state, "Live", "{series}: {brd:?}");
        assert!(brd.base >= 0xffff_ffff_8000_0000, "{series}: brd at {:#x}, no kernel address", brd.base);
        assert!(brd.size > 0, "{series}: {brd:?}");
        let debug = guest.modules_debug_dir().join("kernel/drivers/block/brd.ko");
        assert!(debug.is_file(), "{series}: no {}", debug.display());
        let console = guest.console();
        assert!(console.contains("ktrace-guest dd started"), "{series}: no dd loop:\n{console}");
        assert!(console.contains("ktrace-guest dd writer started"), "{series}: no dd writer:\n{console}");
        let sections = guest.module_sections_from_console("brd");
        assert!(
            sections.contains(&(".text".to_string(), brd.base)),
            "{series}: brd's .text not at its base: {sections:?}"
        );
        assert!(!console.contains("ktrace-guest insmod"), "{series}: insmod failed:\n{console}");
        for bad in ["Oops", "BUG:", "Call Trace:", "Kernel panic"] {
            assert!(!console.contains(bad), "{series}: {bad} on the console:\n{console}");
        }
        eprintln!(
            "{series}: ready in {:.1} s, brd at {:#x} ({} bytes)",
            guest.boot_time().as_secs_f64(),
            brd.base,
            brd.size
        );
    }
}
