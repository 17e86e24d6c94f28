//! Every command on every kernel of the test bed (6.1, 6.12, 7.x), KASLR on,
//! with 2 and 4 vCPUs, checked against drgn reading a memory dump of the
//! very state ktrace read.
//!
//! For each check the guest is paused through QMP and its memory dumped;
//! then a ktrace command reads that same paused state (QEMU's detach resumes
//! the VM afterwards). drgn (`pip install drgn`) reads the dump with the
//! kernel's own vmcoreinfo text found in it, so it learns the KASLR slide on
//! its own (`assets/drgn_oracle.py`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::oracles::{hex, pause_and_ask_drgn};
use ktrace_testguest::{test_guest_on, BootOptions, Guest, KernelSeries, Qmp};
use serde_json::Value;

/// One guest at a time: they are CPU-bound under TCG on a 2-core machine.
static ONE_GUEST: Mutex<()> = Mutex::new(());

fn ktrace_json(guest: &Guest, args: &[&str]) -> String {
    let out = common::ktrace()
        .args(args)
        .arg(guest.addr())
        .arg("--vmlinux")
        .arg(guest.vmlinux())
        .arg("--json")
        .output()
        .expect("run ktrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ktrace {args:?} failed ({}): {stderr}", out.status);
    assert!(!stderr.contains("warning"), "ktrace {args:?} warned: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_kernel(pc: u64) -> bool {
    pc >= 0xffff_8000_0000_0000
}

/// drgn's physical frames (one per pc), up to and including the first user
/// pc: drgn may add a guessed frame past it.
fn drgn_pcs(cpu: &Value) -> Vec<u64> {
    let mut pcs = Vec::new();
    for f in cpu["frames"].as_array().expect("frames") {
        if f["inline"] == true {
            continue;
        }
        let pc = f["pc"].as_u64().expect("pc");
        pcs.push(pc);
        if !is_kernel(pc) {
            break;
        }
    }
    pcs
}

/// drgn's backtrace is one frame, on a retpoline thunk's first instruction.
fn drgn_ends_at_called_thunk(cpu: &Value) -> bool {
    let frames = cpu["frames"].as_array().expect("frames");
    frames.len() == 1 && frames[0]["name"].as_str().is_some_and(|n| n.starts_with("__x86_indirect_thunk"))
}

fn ktrace_pcs(bt: &Value) -> Vec<u64> {
    bt["frames"].as_array().expect("frames").iter().map(|f| hex(&f["pc"])).collect()
}

/// A real stack bottom: user space entered through entry code, an idle
/// task's start, a new task's first return, or a CPU caught at the syscall
/// entry itself (still on the user stack: the ORC data marks it the end).
fn reaches_stack_bottom(bt: &Value) -> bool {
    let frames = bt["frames"].as_array().expect("frames");
    let Some(last) = frames.last() else { return false };
    let function = last["function"].as_str().unwrap_or("");
    bt.get("stopped").is_none()
        && (last["kind"] == "user"
            || ["secondary_startup_64", "ret_from_fork", "ret_from_fork_asm"].contains(&function)
            || (frames.len() == 1 && function == "entry_SYSCALL_64"))
}

fn all_kernel_frames_named(bt: &Value) -> bool {
    bt["frames"].as_array().expect("frames").iter().filter(|f| f["kind"] != "user").all(|f| f["function"].is_string())
}

fn check_kernel(series: KernelSeries, smp: u32) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let opts = BootOptions { smp, kaslr: true, qmp: true, ..BootOptions::default() };
    let Some(guest) = test_guest_on(series, opts) else { return };
    let mut qmp = Qmp::connect(guest.qmp_socket().expect("booted with QMP")).expect("QMP");
    let testprog = guest.testprog_pid() as i64;
    eprintln!("== {series} ({}), {smp} vCPUs", guest.release());

    // info: release, CPUs and current tasks, against drgn.
    let drgn = pause_and_ask_drgn(&guest, &mut qmp);
    let info: Value = serde_json::from_str(&ktrace_json(&guest, &["info"])).expect("info JSON");
    common::json_schema::check("info", &info);
    assert_eq!(info["release"], guest.release());
    assert_eq!(info["cpus"].as_array().expect("cpus").len(), smp as usize);
    if let Some(drgn) = &drgn {
        assert_eq!(drgn["release"], guest.release());
        let kernel_offset = format!("0x{:x}", drgn["kernel_offset"].as_u64().unwrap());
        assert_eq!(info["slide"], kernel_offset.as_str(), "KASLR slide: ktrace vs the kernel's KERNELOFFSET");
        for (ours, theirs) in info["cpus"].as_array().unwrap().iter().zip(drgn["cpus"].as_array().unwrap()) {
            let task = format!("0x{:x}", theirs["task"].as_u64().unwrap());
            assert_eq!(ours["current"]["task"], task.as_str(), "CPU {} current task", theirs["cpu"]);
            assert_eq!(ours["current"]["pid"], theirs["pid"]);
            assert_eq!(ours["current"]["comm"], theirs["comm"]);
        }
    }

    // ps: every task drgn lists, with the same pid, tgid, comm and state.
    let drgn = pause_and_ask_drgn(&guest, &mut qmp);
    let ps: Vec<Value> =
        ktrace_json(&guest, &["ps"]).lines().map(|l| serde_json::from_str(l).expect("ps JSON")).collect();
    assert!(ps.iter().any(|t| t["pid"] == testprog && t["comm"] == "testprog"), "testprog in ps");
    ps.iter().for_each(|t| common::json_schema::check("task", t));
    if let Some(drgn) = &drgn {
        let ours: BTreeMap<String, &Value> = ps.iter().map(|t| (t["task"].as_str().unwrap().to_string(), t)).collect();
        let theirs = drgn["tasks"].as_array().unwrap();
        for t in theirs {
            let key = format!("0x{:x}", t["task"].as_u64().unwrap());
            let o = ours.get(&key).unwrap_or_else(|| panic!("ktrace ps lacks task {key} ({t})"));
            for field in ["pid", "tgid", "comm", "state"] {
                assert_eq!(o[field], t[field], "task {key} {field}: ktrace {o} drgn {t}");
            }
        }
        // ktrace also lists every CPU's idle task (swapper/N, init_task
        // among them), which drgn's for_each_task does not.
        let drgn_tasks: std::collections::BTreeSet<String> =
            theirs.iter().map(|t| format!("0x{:x}", t["task"].as_u64().unwrap())).collect();
        let extra: Vec<&&Value> = ours.iter().filter(|(k, _)| !drgn_tasks.contains(*k)).map(|(_, t)| t).collect();
        assert!(
            extra.len() == smp as usize && extra.iter().all(|t| t["pid"] == 0),
            "tasks only ktrace lists (expected the {smp} idle tasks): {extra:?}"
        );
    }

    // bt: every CPU, frame for frame with drgn, down to a real stack bottom.
    let drgn = pause_and_ask_drgn(&guest, &mut qmp);
    let bts: Vec<Value> =
        ktrace_json(&guest, &["bt"]).lines().map(|l| serde_json::from_str(l).expect("bt JSON")).collect();
    assert_eq!(bts.len(), smp as usize);
    bts.iter().for_each(|bt| common::json_schema::check("cpu_backtrace", bt));
    for bt in &bts {
        let b = &bt["backtrace"];
        assert!(reaches_stack_bottom(b), "CPU {} does not reach a stack bottom: {b}", bt["cpu"]);
        assert!(all_kernel_frames_named(b), "CPU {} has an unnamed frame: {b}", bt["cpu"]);
    }
    if let Some(drgn) = &drgn {
        for (bt, theirs) in bts.iter().zip(drgn["cpus"].as_array().unwrap()) {
            assert_eq!(bt["task"]["pid"], theirs["pid"]);
            assert!(theirs["error"].is_null(), "drgn could not unwind CPU {}: {theirs}", theirs["cpu"]);
            let (ours, drgns) = (ktrace_pcs(&bt["backtrace"]), drgn_pcs(theirs));
            if drgn_ends_at_called_thunk(theirs) {
                // 6.1's retpoline thunks say "end of stack" in ORC; drgn
                // believes it, ktrace goes on to the caller at SP.
                assert!(
                    ours.len() > drgns.len() && ours.starts_with(&drgns),
                    "CPU {} backtrace: ktrace {bt} drgn {theirs}",
                    theirs["cpu"]
                );
            } else {
                assert_eq!(ours, drgns, "CPU {} backtrace: ktrace {bt} drgn {theirs}", theirs["cpu"]);
            }
        }
    }
    assert!(guest.is_running(std::time::Duration::from_secs(60)), "the guest runs again after ktrace bt");

    // attach: pid and comm filters, backtraces through the syscall entry.
    let pid = testprog.to_string();
    for filter in [["--pid", pid.as_str()], ["--comm", "testprog"]] {
        let mut args = vec!["attach"];
        let rest = ["--break", "_raw_spin_lock", "--count", "20"];
        let out = common::ktrace()
            .args(&args)
            .arg(guest.addr())
            .arg("--vmlinux")
            .arg(guest.vmlinux())
            .args(filter)
            .args(rest)
            .arg("--json")
            .output()
            .expect("run ktrace attach");
        args.clear();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "attach {filter:?}: {stderr}");
        let hits: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("hit JSON")).collect();
        assert_eq!(hits.len(), 20, "{stderr}");
        for h in &hits {
            common::json_schema::check("hit", h);
            assert_eq!(h["pid"], testprog, "{filter:?}: {h}");
            assert_eq!(h["comm"], "testprog");
            let b = &h["backtrace"];
            assert!(reaches_stack_bottom(b), "{filter:?}: hit does not reach a stack bottom: {b}");
            assert!(all_kernel_frames_named(b), "{filter:?}: unnamed frame: {b}");
        }
        assert!(
            hits.iter().any(|h| h["backtrace"]["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == "entry_SYSCALL_64")),
            "{filter:?}: no hit came through entry_SYSCALL_64"
        );
    }

    // sym and layout on this kernel's vmlinux.
    let sym = Command::new(env!("CARGO_BIN_EXE_ktrace"))
        .args(["sym", "_raw_spin_lock", "--json", "--vmlinux"])
        .arg(guest.vmlinux())
        .output()
        .expect("sym");
    let sym: Value = serde_json::from_slice(&sym.stdout).expect("sym JSON");
    common::json_schema::check("sym_name", &sym);
    assert_eq!(sym["address"], format!("0x{:x}", nm_address(guest.vmlinux(), "_raw_spin_lock")));
    let layout = Command::new(env!("CARGO_BIN_EXE_ktrace"))
        .args(["layout", "task_struct.pid", "task_struct", "--json", "--vmlinux"])
        .arg(guest.vmlinux())
        .output()
        .expect("layout");
    let layout: Vec<Value> = String::from_utf8_lossy(&layout.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("layout JSON"))
        .collect();
    common::json_schema::check("layout_member", &layout[0]);
    common::json_schema::check("layout_type", &layout[1]);
    assert_eq!(layout[0]["size"], 4);
    let sym = Command::new(env!("CARGO_BIN_EXE_ktrace"))
        .args(["sym", sym["address"].as_str().unwrap(), "--json", "--vmlinux"])
        .arg(guest.vmlinux())
        .output()
        .expect("sym address");
    let sym: Value = serde_json::from_slice(&sym.stdout).expect("sym address JSON");
    common::json_schema::check("sym_address", &sym);
    assert_eq!(sym["symbol"], "_raw_spin_lock");
    assert!(guest.is_running(std::time::Duration::from_secs(60)), "the guest runs at the end");
}

fn nm_address(vmlinux: &Path, name: &str) -> u64 {
    let out = Command::new("nm").arg(vmlinux).output().expect("nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let addr = w.next()?;
            (w.nth(1)? == name).then(|| u64::from_str_radix(addr, 16).ok()).flatten()
        })
        .expect("nm has the symbol")
}

#[test]
fn kernel_6_1_two_cpus() {
    check_kernel(KernelSeries::V6_1, 2);
}

#[test]
fn kernel_6_1_four_cpus() {
    check_kernel(KernelSeries::V6_1, 4);
}

#[test]
fn kernel_6_12_two_cpus() {
    check_kernel(KernelSeries::V6_12, 2);
}

#[test]
fn kernel_6_12_four_cpus() {
    check_kernel(KernelSeries::V6_12, 4);
}

#[test]
fn kernel_7_two_cpus() {
    check_kernel(KernelSeries::V7, 2);
}

#[test]
fn kernel_7_four_cpus() {
    check_kernel(KernelSeries::V7, 4);
}
