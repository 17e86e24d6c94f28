//! `kill -9` of a running `ktrace attach`: its guardian does what a clean
//! exit does (breakpoints removed, patched sites and ktrace's code put back
//! from the undo log, detach), so the guest runs on at once with nothing of
//! ktrace's left in it. During the stop loop, during `--in-guest`, and
//! between recording a patch in the undo log and making it.

mod common;

use std::time::{Duration, Instant};

use common::{path, run, spawn, LIMIT};
use ktrace_testguest::{test_guest, BootOptions, Guest, Qmp};

/// How long after `since` the VM was last seen paused, watching QEMU's run
/// state (QMP `query-status`, every 5 ms) for `watch`: the guest has run
/// without a pause since then. Zero when it was never seen paused.
fn paused_until(qmp: &mut Qmp, since: Instant, watch: Duration) -> Duration {
    let mut last_paused = Duration::ZERO;
    while since.elapsed() < watch {
        let seen = since.elapsed();
        if !qmp.running().expect("QMP query-status") {
            last_paused = seen;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    last_paused
}

/// Kills `args` with SIGKILL once it has printed `lines` lines (or lets it
/// abort by itself when `env` tells it to), then says how long the guest
/// stayed paused after ktrace was gone, and checks it makes progress.
fn killed(guest: &Guest, qmp: &mut Qmp, args: &[&str], lines: usize, env: Option<(&str, &str)>) -> Duration {
    let mut cmd = common::ktrace();
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let gone = match env {
        Some(_) => {
            let out = cmd.args(args).output().expect("ktrace");
            assert!(!out.status.success(), "ktrace was to abort itself: {}", String::from_utf8_lossy(&out.stderr));
            Instant::now()
        }
        None => {
            let mut running = spawn(args);
            assert!(running.wait_lines(lines, Duration::from_secs(60)), "no hits before SIGKILL");
            running.signal("KILL");
            let gone = Instant::now();
            let _ = running.finish(LIMIT);
            gone
        }
    };
    let paused = paused_until(qmp, gone, Duration::from_secs(3));
    let beats = guest.heartbeats();
    let t = Instant::now();
    while guest.heartbeats() == beats && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(guest.heartbeats() > beats, "the guest makes no progress after ktrace was killed");
    paused
}

/// Nothing of ktrace's is left: no trampoline for `restore` to find, and a
/// fresh trace works.
fn nothing_left(guest: &Guest) {
    let out = run(&["restore", &guest.addr(), "--vmlinux", path(guest.vmlinux())], LIMIT);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(out.stdout.contains("no ktrace trampoline in the guest"), "left behind: {}", out.dump());
    common::assert_guest_healthy(guest);
}

#[test]
fn the_guest_survives_a_killed_ktrace() {
    let Some(guest) =
        test_guest(BootOptions { smp: 2, kaslr: true, testprogs: 1, qmp: true, ..BootOptions::default() })
    else {
        return;
    };
    let mut qmp = Qmp::connect(guest.qmp_socket().expect("booted with QMP")).expect("QMP");
    let pid = guest.testprog_pid().to_string();
    let vm = path(guest.vmlinux());
    let addr = guest.addr();
    let stop_loop = ["attach", &addr, "--vmlinux", vm, "--break", "_raw_spin_lock", "--pid", &pid, "--json"];
    let in_guest =
        ["attach", &addr, "--vmlinux", vm, "--break", "urandom_read_iter", "--pid", &pid, "--json", "--in-guest"];
    // The bound: the guest runs again within a second of ktrace's death.
    let limit = Duration::from_secs(1);
    let check = |what: &str, t: Duration| {
        eprintln!("the guest was last paused {t:?} after {what}");
        assert!(t < limit, "the guest was still paused {t:?} after {what}");
        nothing_left(&guest);
    };

    let t = killed(&guest, &mut qmp, &stop_loop, 3, None);
    check("SIGKILL in the stop loop", t);
    let t = killed(&guest, &mut qmp, &in_guest, 3, None);
    check("SIGKILL with --in-guest", t);

    // Killed right after the undo log recorded a write, before it was made:
    // the rings in borrowed memory (1), ktrace's code (2), the trampoline's
    // site table (4) and a site's call (5).
    for n in ["1", "2", "4", "5"] {
        let t = killed(&guest, &mut qmp, &in_guest, 0, Some(("KTRACE_TEST_ABORT_AFTER_JOURNAL", n)));
        check(&format!("an abort at journal entry {n}"), t);
    }
}
