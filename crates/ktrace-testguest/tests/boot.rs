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

#[test]
fn every_kernel_series_boots_and_reports_its_release() {
    for series in KernelSeries::ALL {
        let opts = BootOptions { smp: 1, ..BootOptions::default() };
        let Some(guest) = test_guest_on(series, opts) else { return };
        assert_eq!(guest.kernel(), series);
        assert_eq!(guest.options().kernel, series);
        assert_eq!(guest.release(), guest.image().release());
        assert!(series.contains(guest.release()), "{series}: {}", guest.release());
        assert!(guest.testprog_pid() > 1);
        assert!(guest.boot_time() > Duration::ZERO);
    }
}
