//! What ktrace does to a guest the user paused (QEMU monitor `stop`, here
//! QMP): by default QEMU's detach resumes it; `--leave-stopped` leaves it
//! paused, with no breakpoint of ktrace's left behind.

mod common;

use std::time::Duration;

use ktrace_testguest::{test_guest, BootOptions, Guest, Qmp};

fn run(guest: &Guest, args: &[&str]) -> common::Output {
    let vmlinux = guest.vmlinux().to_str().expect("utf-8 path").to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--vmlinux", &vmlinux]);
    let out = common::run(&all, Duration::from_secs(120));
    out.assert_no_panic();
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    out
}

#[test]
fn a_paused_guest_stays_paused_with_leave_stopped() {
    let Some(guest) = test_guest(BootOptions { qmp: true, ..BootOptions::default() }) else { return };
    let mut qmp = Qmp::connect(guest.qmp_socket().expect("QMP socket")).expect("QMP");
    let addr = guest.addr();
    let pid = guest.testprog_pid().to_string();

    // info, ps, bt: paused before, paused after.
    for cmd in ["info", "ps", "bt"] {
        qmp.stop().expect("stop");
        run(&guest, &[cmd, &addr, "--leave-stopped"]);
        assert!(!qmp.running().expect("status"), "{cmd} --leave-stopped resumed the paused guest");
    }
    // attach: hits while it traces, then the guest is left paused, and its
    // breakpoints are gone: resumed by hand, the guest runs on (a stray
    // breakpoint on _raw_spin_lock would stop it at once, waiting for a debugger).
    let out =
        run(&guest, &["attach", &addr, "--break", "_raw_spin_lock", "--pid", &pid, "--count", "3", "--leave-stopped"]);
    assert!(out.stderr.contains("guest left paused"), "{}", out.dump());
    assert!(!qmp.running().expect("status"), "attach --leave-stopped resumed the guest");
    qmp.cont().expect("cont");
    assert!(guest.is_running(Duration::from_secs(60)), "the guest does not run after cont: a breakpoint was left?");
    std::thread::sleep(Duration::from_secs(2));
    assert!(qmp.running().expect("status"), "the guest stopped again: a breakpoint of ktrace's was left behind");

    // Without the flag, QEMU's detach resumes a guest the user had paused (documented).
    qmp.stop().expect("stop");
    run(&guest, &["info", &addr]);
    assert!(qmp.running().expect("status"), "detach resumes the guest");
}
