//! `attach --in-guest --if` on the test bed's kernels, KASLR on: a
//! comparison of an argument or of a field of `current` with a constant is
//! evaluated in the guest, so matches are recorded without a stop (as with
//! `--pid`) and every hit meets the condition; a condition the guest
//! cannot evaluate falls back to the stop loop, which says why.
//!
//! `rw_verify_area(int read_write, …, size_t count)` is called by every
//! read and write of testprog: `read_write` is 0 for its reads and 1 for
//! its writes, so the condition has something to filter.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;

use ktrace_testguest::{test_guest_on, BootOptions, Guest, KernelSeries};
use serde_json::Value;

/// One guest at a time: they are CPU-bound under TCG on a 2-core machine.
static ONE_GUEST: Mutex<()> = Mutex::new(());

const FUNCTION: &str = "rw_verify_area";

fn run(guest: &Guest, extra: &[&str]) -> common::Output {
    let addr = guest.addr();
    let mut args = vec!["attach", &addr, "--vmlinux", common::path(guest.vmlinux()), "--break", FUNCTION, "--json"];
    args.extend(["--timeout", "10"]);
    args.extend(extra);
    let out = common::run(&args, common::LIMIT);
    out.assert_no_panic();
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    out
}

/// Frame 0's argument `name`, as a number.
fn arg(hit: &Value, name: &str) -> i64 {
    let frame0 = &hit["backtrace"]["frames"][0];
    frame0["args"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|scope| scope["args"].as_array().cloned().unwrap_or_default())
        .find(|a| a["name"] == name)
        .and_then(|a| a["value"].as_i64())
        .unwrap_or_else(|| panic!("no value of {name} in frame 0: {frame0}"))
}

/// The notes of a trace whose `--if` ran in the guest and whose matches
/// were recorded there.
fn assert_in_guest(out: &common::Output, n: u64) {
    assert!(out.stderr.contains("is evaluated in the guest"), "{}", out.dump());
    assert!(out.stderr.contains("--if was evaluated in the guest (no stop for it)"), "{}", out.dump());
    assert!(out.stderr.contains("match(es) recorded in the guest without stopping it"), "{}", out.dump());
    assert!(!out.stderr.contains("stops at each match"), "{}", out.dump());
    assert!(!out.stderr.contains("the stop loop evaluates"), "{}", out.dump());
    assert_eq!(out.hits(), Some((n, n)), "no stop that did not match: {}", out.dump());
}

fn on(series: KernelSeries) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let opts = BootOptions { smp: 2, kaslr: true, testprogs: 2, ..BootOptions::default() };
    let Some(guest) = test_guest_on(series, opts) else { return };
    let pids = guest.testprog_pids();
    let (pid, other) = (pids[0].to_string(), pids[1] as i64);

    // Without --if, both of testprog's calls: the condition has work to do.
    let all = run(&guest, &["--pid", &pid, "--count", "12", "--in-guest"]);
    let seen: BTreeSet<i64> = all.json_lines().iter().map(|h| arg(h, "read_write")).collect();
    assert_eq!(seen, BTreeSet::from([0, 1]), "{}", all.dump());

    // An argument by name, with --pid: only its writes, recorded.
    let out = run(&guest, &["--pid", &pid, "--count", "30", "--in-guest", "--if", "read_write == 1"]);
    assert_in_guest(&out, 30);
    let hits = out.json_lines();
    assert_eq!(hits.len(), 30, "{}", out.dump());
    for hit in &hits {
        common::json_schema::check("hit", hit);
        assert_eq!(hit["pid"].as_i64().map(|p| p.to_string()), Some(pid.clone()), "{hit}");
        assert_eq!(arg(hit, "read_write"), 1, "{hit}");
        assert_eq!(hit["backtrace"]["frames"][0]["function"], FUNCTION, "{hit}");
    }

    // current->pid instead of --pid, ANDed with a negated argument and an
    // unsigned one: testprog's reads of 4096 bytes, from no other process.
    let cond = format!("current->pid == {pid} && !read_write && count >= 4096");
    let out = run(&guest, &["--count", "20", "--in-guest", "--if", &cond]);
    assert_in_guest(&out, 20);
    let hits = out.json_lines();
    assert_eq!(hits.len(), 20, "{}", out.dump());
    for hit in &hits {
        assert_eq!(hit["pid"].as_i64().map(|p| p.to_string()), Some(pid.clone()), "{hit}");
        assert_ne!(hit["pid"].as_i64(), Some(other));
        assert_eq!(arg(hit, "read_write"), 0, "{hit}");
        assert_eq!(arg(hit, "count"), 4096, "{hit}");
    }

    // The argument register itself, signed and compared with a negative
    // constant (read_write's upper half is not read_write's).
    let out = run(&guest, &["--pid", &pid, "--count", "10", "--in-guest", "--if", "$rdi != 0 && read_write > -1"]);
    assert_in_guest(&out, 10);
    assert!(out.json_lines().iter().all(|h| arg(h, "read_write") == 1), "{}", out.dump());

    // With --print the guest stops at each match (on the hit `nop`), but
    // only at those the compiled --if lets through.
    let out =
        run(&guest, &["--pid", &pid, "--count", "5", "--in-guest", "--if", "read_write == 1", "--print", "count"]);
    assert!(out.stderr.contains("is evaluated in the guest"), "{}", out.dump());
    assert!(out.stderr.contains("--print reads the stopped CPU: the guest stops at each match"), "{}", out.dump());
    assert_eq!(out.hits(), Some((5, 5)), "a stop for each match only: {}", out.dump());
    let hits = out.json_lines();
    assert_eq!(hits.len(), 5, "{}", out.dump());
    for hit in &hits {
        assert_eq!(arg(hit, "read_write"), 1, "{hit}");
        assert_eq!(hit["prints"][0]["text"], "4096", "{hit}");
    }

    // A disjunction stays with the stop loop: ktrace says which part and
    // why, the guest stops at each match, and the stop loop's hits meet it.
    let cond = "read_write == 1 || count == 3";
    let out = run(&guest, &["--pid", &pid, "--count", "5", "--in-guest", "--if", cond]);
    let why = format!("--if '{cond}': '{cond}' is a disjunction");
    assert!(out.stderr.contains(&why), "{}", out.dump());
    assert!(out.stderr.contains("the stop loop evaluates --if instead"), "{}", out.dump());
    assert!(out.stderr.contains("--if reads the stopped CPU: the guest stops at each match"), "{}", out.dump());
    assert!(!out.stderr.contains("--if was evaluated in the guest"), "{}", out.dump());
    let hits = out.json_lines();
    assert_eq!(hits.len(), 5, "{}", out.dump());
    assert!(hits.iter().all(|h| arg(h, "read_write") == 1), "{}", out.dump());

    common::assert_guest_healthy(&guest);
    assert!(!guest.console().contains("Oops"), "the guest oopsed:\n{}", guest.console());
}

#[test]
fn if_in_guest_on_6_1() {
    on(KernelSeries::V6_1);
}

#[test]
fn if_in_guest_on_6_12() {
    on(KernelSeries::V6_12);
}

#[test]
fn if_in_guest_on_7() {
    on(KernelSeries::V7);
}
