//! The real `ktrace` against the real guest through [`FaultProxy`]: the stub
//! going away, a damaged or slow connection, a stub that goes silent.
//!
//! ktrace must never panic or hang: it either completes normally or fails
//! with one clear line (exit 1), keeps every JSON line of the hits it saw, and
//! prints its summary. Afterwards the guest runs and a fresh, direct
//! `ktrace attach` gets hits (no breakpoint left behind).
//!
//! One guest for the file (the QEMU-kill test takes it; the next test boots a
//! new one); the tests take turns on it.

mod common;

use std::time::Duration;

use common::*;
use ktrace_testguest::proxy::{Direction, FaultConfig, FaultProxy, Faults};
use ktrace_testguest::Guest;

/// Wall-clock bound on one ktrace run under faults: generous, so that a
/// loaded machine does not fail a test; every fault triggers on a phase of
/// the session or a number of bytes or hits, never on elapsed time.
const BOUND: Duration = Duration::from_secs(240);

fn attach_via(addr: &str, guest: &Guest, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> =
        ["attach", addr, "--vmlinux", path(guest.vmlinux()), "--break", HOT, "--json", "--no-backtrace"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Failed while running: exit 1, the summary, then one `ktrace: …` error line
/// as the last line; every stdout line parses as JSON and there is one per
/// matched hit.
#[track_caller]
fn assert_failed_cleanly(out: &Output) {
    out.assert_no_panic();
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    let summary = out.summary().unwrap_or_else(|| panic!("no summary line:\n{}", out.dump()));
    assert!(summary.contains("ended by Error"), "{summary}");
    let lines = out.stderr_lines();
    let last = *lines.last().unwrap();
    assert!(
        last.starts_with("ktrace: ") && !last.contains(" hits seen, "),
        "the error is not the last line:\n{}",
        out.dump()
    );
    assert!(last.len() < 400, "the error line is not short: {last}");
    // Nothing but the attach line, the summary and the error.
    let others: Vec<_> = lines
        .iter()
        .filter(|l| !l.starts_with("ktrace: attached to ") && !l.contains(" hits seen, ") && **l != last)
        .collect();
    assert!(others.is_empty(), "unexpected stderr lines {others:?}:\n{}", out.dump());
    let hits = out.json_lines();
    let (_, matched) = out.hits().unwrap();
    assert_eq!(hits.len() as u64, matched, "a matched hit is missing from stdout:\n{}", out.dump());
}

/// Either a normal end, or a clean failure (before the trace started: just
/// one error line, exit 1 or 2 — a damaged reply can look like a wrong target).
#[track_caller]
fn assert_completed_or_failed_cleanly(out: &Output) {
    out.assert_no_panic();
    if !out.stderr.contains("ktrace: attached to ") {
        assert!(matches!(out.code(), Some(1 | 2)), "{}", out.dump());
        assert_eq!(out.stderr_lines().len(), 1, "{}", out.dump());
        return;
    }
    match out.code() {
        Some(0) => {
            let s = out.summary().unwrap_or_else(|| panic!("no summary:\n{}", out.dump()));
            assert!(s.contains("breakpoints removed, guest running"), "{s}");
            let (_, matched) = out.hits().unwrap();
            assert_eq!(out.json_lines().len() as u64, matched, "{}", out.dump());
        }
        Some(1) => assert_failed_cleanly(out),
        other => panic!("exit {other:?}:\n{}", out.dump()),
    }
}

/// After a client vanished without `D`, QEMU keeps the VM paused (with the
/// breakpoints in place) until a debugger comes and detaches: `ktrace info`
/// must be able to do that.
fn resume_if_paused(guest: &Guest) -> bool {
    if guest.is_running(Duration::from_secs(5)) {
        return false;
    }
    let out = run(&["info", &guest.addr(), "--vmlinux", path(guest.vmlinux()), "--timeout", "10"], LIMIT);
    out.assert_no_panic();
    assert_eq!(out.code(), Some(0), "ktrace info could not recover the paused guest:\n{}", out.dump());
    true
}

// --- the stub goes away ---------------------------------------------------------

#[test]
fn qemu_killed_mid_trace() {
    let Some(g) = guest() else { return };
    let guest = g.take();
    let args = attach_via(&guest.addr(), &guest, &["--timeout", "5"]);
    let mut run = spawn(&strs(&args));
    assert!(run.wait_lines(5, BOUND), "no hits: {}", run.stdout_so_far());
    guest.kill();
    let out = run.finish(BOUND);
    eprintln!("QEMU killed: {}", out.dump());
    assert_failed_cleanly(&out);
    assert!(out.json_lines().len() >= 5);
    let last = out.stderr_lines().last().unwrap().to_lowercase();
    assert!(last.contains("closed") || last.contains("gone") || last.contains("connection"), "{last}");
    assert!(out.summary().unwrap().contains("guest NOT released"), "{}", out.dump());
}

#[test]
fn proxy_cut_mid_trace() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let proxy = FaultProxy::start(&guest.addr(), FaultConfig::default()).unwrap();
    let args = attach_via(&proxy.addr(), guest, &["--timeout", "5"]);
    let mut run = spawn(&strs(&args));
    assert!(run.wait_lines(5, BOUND), "no hits: {}", run.stdout_so_far());
    proxy.cut();
    let out = run.finish(BOUND);
    eprintln!("proxy cut: {}", out.dump());
    assert_failed_cleanly(&out);
    assert!(out.json_lines().len() >= 5);
    // QEMU saw the connection drop without `D`.
    let was_paused = resume_if_paused(guest);
    eprintln!("guest paused after the cut: {was_paused}");
    assert_guest_healthy(guest);
}

#[test]
fn proxy_cut_after_some_bytes() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    // During the handshake, and during attach (reading target.xml, the
    // banner, __per_cpu_offset): fixed byte counts, whatever the speed.
    for cut in [300u64, 20_000] {
        let faults = Faults { cut_after: Some(cut), ..Faults::default() };
        let proxy =
            FaultProxy::start(&guest.addr(), FaultConfig { to_client: faults, ..FaultConfig::default() }).unwrap();
        let args = attach_via(&proxy.addr(), guest, &["--timeout", "5", "--count", "100000"]);
        let out = run(&strs(&args), BOUND);
        eprintln!("cut after {cut} bytes: {}", out.dump());
        out.assert_no_panic();
        assert_ne!(out.code(), Some(0), "{}", out.dump());
        if out.summary().is_some() {
            assert_failed_cleanly(&out);
        } else {
            // Cut before the trace started: only the error line.
            assert_eq!(out.stderr_lines().len(), 1, "{}", out.dump());
        }
        resume_if_paused(guest);
    }
    // Mid-trace: after a number of hits (not of bytes, which a slow machine
    // takes long to reach).
    let proxy = FaultProxy::start(&guest.addr(), FaultConfig::default()).unwrap();
    let args = attach_via(&proxy.addr(), guest, &["--timeout", "5", "--count", "100000"]);
    let mut running = spawn(&strs(&args));
    assert!(running.wait_lines(50, BOUND), "no 50 hits: {}", running.stdout_so_far());
    proxy.cut();
    let out = running.finish(BOUND);
    eprintln!("cut after 50 hits: {}", out.dump());
    assert_failed_cleanly(&out);
    assert!(out.json_lines().len() >= 50);
    resume_if_paused(guest);
    assert_guest_healthy(guest);
}

// --- a damaged or slow connection --------------------------------------------------

fn under_faults(name: &str, direction: Direction, faults: Faults) {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let mut cfg = FaultConfig::default();
    match direction {
        Direction::StubToClient => cfg.to_client = faults,
        Direction::ClientToStub => cfg.to_stub = faults,
    }
    let proxy = FaultProxy::start(&guest.addr(), cfg).unwrap();
    let args = attach_via(&proxy.addr(), guest, &["--timeout", "5", "--count", "20"]);
    let out = run(&strs(&args), BOUND);
    let stats = proxy.stats();
    eprintln!("{name}: {stats:?}\n{}", out.dump());
    assert_completed_or_failed_cleanly(&out);
    drop(proxy);
    if out.code() == Some(0) {
        // It said it released the guest: it must be running.
        assert!(guest.is_running(Duration::from_secs(90)), "{name}: ktrace said the guest runs, it does not");
    } else {
        resume_if_paused(guest);
    }
    assert_guest_healthy(guest);
}

#[test]
fn corrupted_replies() {
    // Every ~5000th payload byte from the stub is wrong: bad checksums, NAKs
    // and retransmissions.
    under_faults("corrupt", Direction::StubToClient, Faults { corrupt_one_in: Some(5000), ..Faults::default() });
}

/// Several damaged bytes per packet: the RSP checksum is 8 bits, so now and
/// then a damaged packet passes as good (e.g. a target.xml without `rdi`).
/// ktrace cannot detect that; it must still end cleanly.
#[test]
fn heavily_corrupted_replies() {
    under_faults("corrupt-heavy", Direction::StubToClient, Faults { corrupt_one_in: Some(20), ..Faults::default() });
}

#[test]
fn replies_split_into_single_bytes() {
    under_faults("split", Direction::StubToClient, Faults { split: true, ..Faults::default() });
}

#[test]
fn delayed_replies() {
    under_faults(
        "delay",
        Direction::StubToClient,
        Faults { delay: Some(Duration::from_millis(30)), ..Faults::default() },
    );
}

#[test]
fn duplicated_bytes_in_replies() {
    under_faults("duplicate", Direction::StubToClient, Faults { duplicate_one_in: Some(5000), ..Faults::default() });
}

#[test]
fn dropped_bytes_in_replies() {
    under_faults("drop", Direction::StubToClient, Faults { drop_one_in: Some(1000), ..Faults::default() });
}

#[test]
fn corrupted_requests() {
    under_faults(
        "corrupt-requests",
        Direction::ClientToStub,
        Faults { corrupt_one_in: Some(200), ..Faults::default() },
    );
}

// --- silence -----------------------------------------------------------------------

#[test]
fn stub_goes_silent_mid_trace() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let proxy = FaultProxy::start(&guest.addr(), FaultConfig::default()).unwrap();
    let args = attach_via(&proxy.addr(), guest, &["--timeout", "3"]);
    let mut run = spawn(&strs(&args));
    assert!(run.wait_lines(5, BOUND), "no hits: {}", run.stdout_so_far());
    proxy.set_silent(true);
    let silent_at = std::time::Instant::now();
    let out = run.finish(BOUND);
    let took = silent_at.elapsed();
    eprintln!("silent: ended {took:?} after the proxy went silent\n{}", out.dump());
    assert_failed_cleanly(&out);
    let last = out.stderr_lines().last().unwrap().to_lowercase();
    assert!(last.contains("timed out") || last.contains("timeout") || last.contains("not answer"), "{last}");
    // The --timeout is honoured (bounded generously for a loaded machine).
    assert!(took < Duration::from_secs(90), "took {took:?} with --timeout 3");
    drop(proxy);
    resume_if_paused(guest);
    assert_guest_healthy(guest);
}

#[test]
fn stub_silent_from_the_start() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let proxy = FaultProxy::start(&guest.addr(), FaultConfig::default()).unwrap();
    proxy.set_silent(true);
    let args = attach_via(&proxy.addr(), guest, &["--timeout", "2"]);
    let out = run(&strs(&args), BOUND);
    out.assert_no_panic();
    assert_ne!(out.code(), Some(0), "{}", out.dump());
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.dump());
    assert!(out.elapsed < Duration::from_secs(90), "took {:?}", out.elapsed);
    drop(proxy);
    resume_if_paused(guest);
    assert_guest_healthy(guest);
}
