//! Every command in a pipe whose reader is gone (`ktrace ps | head -5` once
//! head has exited): ktrace ends as head expects (exit 0, or 141 if killed
//! by SIGPIPE), says nothing on stderr (but `attach`'s "attached to" line,
//! written before any hit), and the guest is released first.
//!
//! Deterministic: the read end of ktrace's stdout is closed before ktrace
//! writes anything, so its first write fails.

mod common;

use std::process::Stdio;

use common::{guest, path};

/// Runs ktrace with a stdout nobody reads; asserts the quiet, clean end.
fn closed_stdout(args: &[&str]) {
    let mut child =
        common::ktrace().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn ktrace");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    let ok = out.status.code() == Some(0) || out.status.code() == Some(141) || out.status.signal() == Some(13);
    assert!(ok, "ktrace {args:?}: {} with stdout closed; stderr: {stderr}", out.status);
    // `attach` says where it attached before it writes a hit (before it can
    // know): that line only; no error, no summary, no panic.
    let noise: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("ktrace: attached to ")).collect();
    assert!(noise.is_empty(), "ktrace {args:?} wrote to stderr with stdout closed: {stderr}");
}

#[test]
fn every_command_ends_quietly_when_its_reader_is_gone() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let addr = guest.addr();
    let vm = path(guest.vmlinux());
    let pid = guest.testprog_pid().to_string();
    for cmd in [
        &["ps", &addr, "--vmlinux", vm][..],
        &["ps", &addr, "--vmlinux", vm, "--live"],
        &["info", &addr, "--vmlinux", vm],
        &["lsmod", &addr, "--vmlinux", vm, "--json"],
        &["dmesg", &addr, "--vmlinux", vm],
        &["dmesg", &addr, "--vmlinux", vm, "--live"],
        &["bt", &addr, "--vmlinux", vm],
        &["bt", &addr, "--vmlinux", vm, "--pid", "1"],
        &["sym", "--vmlinux", vm, "_raw_spin_lock", "schedule"],
        &["layout", "--vmlinux", vm, "task_struct.pid"],
        &["attach", &addr, "--vmlinux", vm, "--break", "_raw_spin_lock", "--pid", &pid, "--count", "1000"],
        &["attach", &addr, "--vmlinux", vm, "--break", "_raw_spin_lock", "--pid", &pid, "--count", "1000", "--json"],
    ] {
        closed_stdout(cmd);
        // Released: the guest runs, and nothing of ktrace's is left in it.
        common::assert_guest_healthy(guest);
    }
}
