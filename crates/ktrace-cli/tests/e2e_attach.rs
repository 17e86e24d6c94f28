//! `ktrace attach` end to end against the real guest: filters, several
//! breakpoints, `file:line`, backtraces that reach the syscall entry.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use ktrace_testguest::{test_guest, BootOptions, Guest};
use serde_json::Value;

fn ktrace(guest: &Guest, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ktrace"))
        .arg("attach")
        .arg(guest.addr())
        .arg("--vmlinux")
        .arg(guest.vmlinux())
        .args(args)
        .output()
        .expect("run ktrace")
}

/// Runs `ktrace attach --json …` and returns the hits.
fn hits(guest: &Guest, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ktrace(guest, &all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ktrace {args:?} failed: {stderr}");
    assert!(stderr.contains("breakpoints removed, guest running"), "{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Function names innermost first: inlined functions, then the symbol, per frame.
fn functions(hit: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for f in hit["backtrace"]["frames"].as_array().into_iter().flatten() {
        for s in f["source"].as_array().into_iter().flatten() {
            if s["inlined"] == true {
                names.extend(s["function"].as_str().map(str::to_string));
            }
        }
        names.extend(f["function"].as_str().map(str::to_string));
    }
    names
}

fn reaches_syscall_entry(hits: &[Value], function: &str) -> bool {
    hits.iter().any(|h| {
        let f = functions(h);
        f.iter().any(|n| n == function) && f.iter().any(|n| n == "entry_SYSCALL_64")
    })
}

fn pids(hits: &[Value]) -> BTreeSet<i64> {
    hits.iter().map(|h| h["pid"].as_i64().expect("pid")).collect()
}

#[test]
fn attach_filters_breakpoints_and_backtraces_on_the_real_guest() {
    let opts = BootOptions { testprogs: 2, smp: 2, kaslr: true, ..BootOptions::default() };
    let Some(guest) = test_guest(opts) else { return };
    let (p1, p2) = (guest.testprog_pids()[0], guest.testprog_pids()[1]);
    let (p1s, p2s) = (p1.to_string(), p2.to_string());

    // --pid: every hit is testprog #1, frame 0 is the breakpoint, and the
    // stacks reach the syscall entry from the open, read and write paths.
    let by_pid = hits(&guest, &["--break", "_raw_spin_lock", "--pid", &p1s, "--count", "150"]);
    assert_eq!(by_pid.len(), 150);
    assert_eq!(pids(&by_pid), BTreeSet::from([i64::from(p1)]), "the second testprog must be excluded");
    for hit in &by_pid {
        assert_eq!(hit["comm"], "testprog");
        assert_eq!(hit["breakpoint"], "_raw_spin_lock");
        assert_eq!(functions(hit).first().map(String::as_str), Some("_raw_spin_lock"), "{hit}");
    }
    // testprog takes spinlocks in open and close (fd table); read and write
    // of /dev/urandom and /dev/null take none, so they are traced directly below.
    for path in ["do_sys_openat2", "close_fd"] {
        assert!(
            reaches_syscall_entry(&by_pid, path),
            "no backtrace from {path} reaching entry_SYSCALL_64; stacks:\n{:#?}",
            by_pid.iter().take(8).map(functions).collect::<Vec<_>>()
        );
    }

    // --pid of the other testprog: only it.
    let other = hits(&guest, &["--break", "_raw_spin_lock", "--pid", &p2s, "--count", "20", "--no-backtrace"]);
    assert_eq!(pids(&other), BTreeSet::from([i64::from(p2)]));
    assert!(other.iter().all(|h| h.get("backtrace").is_none()));

    // --comm, exact and glob: both testprogs, nothing else.
    for comm in ["testprog", "test*"] {
        let by_comm = hits(&guest, &["--break", "_raw_spin_lock", "--comm", comm, "--count", "60", "--no-backtrace"]);
        assert_eq!(by_comm.len(), 60);
        assert!(by_comm.iter().all(|h| h["comm"] == "testprog"), "--comm {comm}");
        assert!(pids(&by_comm).is_subset(&BTreeSet::from([i64::from(p1), i64::from(p2)])));
    }

    // --cpu, alone and combined with --comm.
    let on_cpu1 = hits(&guest, &["--break", "_raw_spin_lock", "--cpu", "1", "--count", "30", "--no-backtrace"]);
    assert!(on_cpu1.iter().all(|h| h["cpu"] == 1), "--cpu 1 gave other CPUs");
    let combined = hits(
        &guest,
        &["--break", "_raw_spin_lock", "--cpu", "0", "--comm", "testprog", "--count", "10", "--no-backtrace"],
    );
    assert!(combined.iter().all(|h| h["cpu"] == 0 && h["comm"] == "testprog"));

    // Several --break at once, and a file:line location taken from a real stack.
    let several = hits(
        &guest,
        &[
            "--break",
            "_raw_spin_lock",
            "--break",
            "ksys_read",
            "--break",
            "ksys_write",
            "--pid",
            &p1s,
            "--count",
            "200",
        ],
    );
    let fired: BTreeSet<&str> = several.iter().filter_map(|h| h["breakpoint"].as_str()).collect();
    assert_eq!(fired, BTreeSet::from(["_raw_spin_lock", "ksys_read", "ksys_write"]));
    for path in ["ksys_read", "ksys_write"] {
        assert!(reaches_syscall_entry(&several, path), "no backtrace from {path} reaching entry_SYSCALL_64");
    }
    // The line of ksys_read's entry, as the hits at `--break ksys_read` give it.
    let line = several
        .iter()
        .filter(|h| h["breakpoint"] == "ksys_read")
        .flat_map(|h| h["backtrace"]["frames"][0]["source"].as_array().cloned().unwrap_or_default())
        .find(|s| s["function"] == "ksys_read" && s["line"].is_u64())
        .map(|s| format!("read_write.c:{}", s["line"]))
        .expect("a ksys_read frame with a line");
    let at_line = hits(&guest, &["--break", &line, "--pid", &p1s, "--count", "3"]);
    assert_eq!(at_line.len(), 3, "file:line breakpoint {line}");
    assert!(at_line.iter().all(|h| functions(h).first().map(String::as_str) == Some("ksys_read")));

    assert!(guest.is_running(Duration::from_secs(20)), "the guest stopped running");
}

#[test]
fn attach_summarises_stacks_and_writes_folded_and_flamegraph() {
    let Some(guest) = test_guest(BootOptions::default()) else { return };
    let dir = std::env::temp_dir().join(format!("ktrace-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let (folded, svg) = (dir.join("stacks.folded"), dir.join("stacks.svg"));
    let pid = guest.testprog_pid().to_string();
    let out = ktrace(
        &guest,
        &[
            "--break",
            "_raw_spin_lock",
            "--pid",
            &pid,
            "--count",
            "40",
            "--quiet",
            "--stacks",
            "--folded",
            folded.to_str().expect("utf-8"),
            "--flamegraph",
            svg.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let counts: u64 =
        stdout.lines().filter_map(|l| l.strip_prefix("]: ")).map(|n| n.trim().parse::<u64>().expect("count")).sum();
    assert_eq!(counts, 40, "stack counts must add up to the hits:\n{stdout}");
    let folded = std::fs::read_to_string(&folded).expect("folded file");
    let total: u64 =
        folded.lines().map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).expect("count")).sum();
    assert_eq!(total, 40);
    assert!(folded.lines().all(|l| l.contains(";_raw_spin_lock ")), "leaf must be the breakpoint:\n{folded}");
    let svg = std::fs::read_to_string(&svg).expect("svg");
    assert!(svg.contains("<svg") && svg.contains("_raw_spin_lock"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ps_and_info_show_the_guest_and_leave_it_running() {
    let Some(guest) = test_guest(BootOptions { smp: 2, ..BootOptions::default() }) else { return };
    let run = |cmd: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_ktrace"))
            .args([cmd, &guest.addr(), "--json", "--vmlinux"])
            .arg(guest.vmlinux())
            .output()
            .expect("run ktrace");
        assert!(out.status.success(), "ktrace {cmd}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tasks: Vec<Value> = run("ps").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let has = |pid: i64, comm: &str| tasks.iter().any(|t| t["pid"] == pid && t["comm"] == comm);
    assert!(has(i64::from(guest.testprog_pid()), "testprog"), "testprog missing from ps");
    assert!(has(1, "init"));
    for cpu in 0..2 {
        assert!(has(0, &format!("swapper/{cpu}")), "swapper/{cpu} missing from ps");
    }
    let info: Value = serde_json::from_str(&run("info")).expect("info json");
    assert_eq!(info["release"], guest.release());
    assert_eq!(info["cpus"].as_array().map(Vec::len), Some(2));
    assert_ne!(info["slide"], "0x0", "the guest booted with KASLR");
    assert!(guest.is_running(Duration::from_secs(20)), "ps/info left the guest stopped");
}

/// Page-table isolation forced on: at `entry_SYSCALL_64`, before the CR3
/// switch, the CPU runs on the user page tables, which map no per-CPU data
/// or task structs (GDB and the stub's own reads fail there). ktrace reads
/// through the kernel's page tables, so the `--pid` filter and the
/// backtrace work on every hit (QEMU 10.0).
#[test]
fn attach_at_the_syscall_entry_on_a_pti_guest() {
    let opts = BootOptions {
        testprogs: 2,
        pti: true,
        qemu: Some(ktrace_testguest::QemuBuild::V10_0),
        ..BootOptions::default()
    };
    let Some(guest) = test_guest(opts) else { return };
    let p1 = guest.testprog_pids()[0];
    let got = hits(&guest, &["--break", "entry_SYSCALL_64", "--pid", &p1.to_string(), "--count", "20"]);
    assert_eq!(got.len(), 20);
    assert_eq!(pids(&got), BTreeSet::from([i64::from(p1)]));
    for hit in &got {
        assert_eq!(hit["comm"], "testprog");
        assert_eq!(functions(hit).first().map(String::as_str), Some("entry_SYSCALL_64"), "{hit}");
        assert!(hit["backtrace"]["stopped"].is_null(), "the syscall entry is the bottom of the stack: {hit}");
    }
}

/// 5-level paging (`-cpu max`): stacks at 0xff…, the direct map at
/// 0xff1…: whole backtraces down to the syscall entry (QEMU 7.2, Linux 7.x).
#[test]
fn whole_backtraces_on_a_five_level_guest() {
    let opts = BootOptions {
        kernel: ktrace_testguest::KernelSeries::V7,
        testprogs: 1,
        five_level: true,
        ..BootOptions::default()
    };
    let Some(guest) = test_guest(opts) else { return };
    let p1 = guest.testprog_pids()[0];
    let got = hits(&guest, &["--break", "_raw_spin_lock", "--pid", &p1.to_string(), "--count", "40"]);
    assert_eq!(got.len(), 40);
    for hit in &got {
        let sp_frames = hit["backtrace"]["frames"].as_array().unwrap().len();
        assert!(hit["backtrace"]["stopped"].is_null() && sp_frames > 3, "a whole backtrace: {hit}");
    }
    assert!(reaches_syscall_entry(&got, "_raw_spin_lock"), "some stacks reach entry_SYSCALL_64");
}
