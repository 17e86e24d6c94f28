//! `kill -9` of a running `ktrace attach`: its guardian does what a clean
//! exit does (breakpoints removed, patched sites and ktrace's code put back
//! from the undo log, detach), so the guest runs on at once with nothing of
//! ktrace's left in it. During the stop loop, during `--in-guest`, and
//! between recording a patch in the undo log and making it.

mod common;

use std::time::{Duration, Instant};

use common::{guest, path, run, spawn, LIMIT};
use ktrace_testguest::Guest;

/// Kills `args` with SIGKILL once it has printed `lines` lines (or at once
/// when it aborts by itself), then says how long until the guest ran.
fn killed(guest: &Guest, args: &[&str], lines: usize, env: Option<(&str, &str)>) -> Duration {
    let mut cmd = common::ktrace();
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let mut running = match env {
        Some(_) => {
            let out = cmd.args(args).output().expect("ktrace");
            assert!(!out.status.success(), "ktrace was to abort itself: {}", String::from_utf8_lossy(&out.stderr));
            let beats = guest.heartbeats();
            let t = Instant::now();
            while guest.heartbeats() == beats && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return t.elapsed();
        }
        None => spawn(args),
    };
    assert!(running.wait_lines(lines, Duration::from_secs(60)), "no hits before SIGKILL");
    running.signal("KILL");
    let _ = running.finish(LIMIT);
    let beats = guest.heartbeats();
    let t = Instant::now();
    while guest.heartbeats() == beats && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
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
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let pid = guest.testprog_pid().to_string();
    let vm = path(guest.vmlinux());
    let addr = guest.addr();
    let stop_loop = ["attach", &addr, "--vmlinux", vm, "--break", "_raw_spin_lock", "--pid", &pid, "--json"];
    let in_guest =
        ["attach", &addr, "--vmlinux", vm, "--break", "urandom_read_iter", "--pid", &pid, "--json", "--in-guest"];
    // Heartbeats come once a second: the guest ran again within about one.
    let limit = Duration::from_millis(2500);

    let t = killed(guest, &stop_loop, 3, None);
    eprintln!("the guest ran again {t:?} after SIGKILL in the stop loop");
    assert!(t < limit, "the guest ran again {t:?} after SIGKILL in the stop loop");
    nothing_left(guest);

    let t = killed(guest, &in_guest, 3, None);
    eprintln!("the guest ran again {t:?} after SIGKILL with --in-guest");
    assert!(t < limit, "the guest ran again {t:?} after SIGKILL with --in-guest");
    nothing_left(guest);

    // Killed right after the undo log recorded a write, before it was made:
    // the rings in borrowed memory (1), ktrace's code (2), the trampoline's
    // site table (4) and a site's call (5).
    for n in ["1", "2", "4", "5"] {
        let t = killed(guest, &in_guest, 0, Some(("KTRACE_TEST_ABORT_AFTER_JOURNAL", n)));
        eprintln!("the guest ran again {t:?} after an abort at journal entry {n}");
        assert!(t < limit, "the guest ran again {t:?} after an abort at journal entry {n}");
        nothing_left(guest);
    }
}
