//! `ps`, `info`, `lsmod`, `dmesg` without stopping the guest (`--live`:
//! QEMU's RAM read from the host, mapped through `/proc/PID/maps` or QMP),
//! and from a memory dump (`--core`), against the real guests on QEMU 7.2
//! and 10.0.
//!
//! Oracles: the same command through the stub (the guest stopped), the
//! serial console for `dmesg`, drgn on the same dump for `--core`, and the
//! guest's heartbeats on the console for "the guest keeps running".

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::oracles::{ask_drgn_with_stacks, hex, json_lines, pause_and_dump};
use ktrace_testguest::{test_guest, BootOptions, Guest, KernelSeries, QemuBuild, Qmp};
use serde_json::Value;

static ONE_GUEST: Mutex<()> = Mutex::new(());

fn ktrace(guest: &Guest, args: &[&str]) -> String {
    let out = common::ktrace().args(args).arg("--vmlinux").arg(guest.vmlinux()).output().expect("run ktrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ktrace {args:?} failed ({}): {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "ktrace {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Tasks by task pointer: (pid, tgid, comm).
fn tasks(json: &str) -> BTreeMap<u64, (i64, i64, String)> {
    json_lines(json)
        .iter()
        .map(|t| {
            let comm = t["comm"].as_str().unwrap_or_default().to_string();
            (hex(&t["task"]), (t["pid"].as_i64().unwrap(), t["tgid"].as_i64().unwrap(), comm))
        })
        .collect()
}

/// The console lines a record shows (levels the console prints: below 7).
fn console_lines(records: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| r["level"].as_u64().unwrap() < 7) {
        let ts = r["ts_nsec"].as_u64().unwrap();
        let prefix = format!("[{:5}.{:06}] ", ts / 1_000_000_000, ts % 1_000_000_000 / 1000);
        out.extend(r["text"].as_str().unwrap().split('\n').map(|l| format!("{prefix}{l}").trim_end().to_string()));
    }
    out
}

/// The pcs of drgn's physical frames (inlined ones left out), up to the first user pc.
fn drgn_kernel_pcs(stack: &Value) -> Vec<u64> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["inline"].as_bool().unwrap_or(false))
        .map(|f| f["pc"].as_u64().unwrap())
        .take_while(|&pc| pc >= 0xffff_8000_0000_0000)
        .collect()
}

/// The pcs of ktrace's frames (`{"backtrace": …}`), up to the first user pc.
fn ktrace_kernel_pcs(bt: &Value) -> Vec<u64> {
    bt["backtrace"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| hex(&f["pc"]))
        .take_while(|&pc| pc >= 0xffff_8000_0000_0000)
        .collect()
}

/// The serial console's lines.
fn console_of(guest: &Guest) -> Vec<String> {
    guest.console().replace('\r', "").lines().map(|l| l.trim_end().to_string()).collect()
}

/// Whether the kernel's `line` is on the console. The initramfs's own
/// output shares the serial line, so a kernel line may follow user text
/// on one console line: a console line that ends with it counts.
fn on_console(console: &[String], line: &str) -> bool {
    console.iter().any(|c| c.ends_with(line))
}

fn check(series: KernelSeries, qemu: QemuBuild) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let opts = BootOptions { kernel: series, qemu: Some(qemu), qmp: true, testprogs: 2, ..BootOptions::default() };
    let Some(guest) = test_guest(opts) else { return };
    let addr = guest.addr();
    let qmp_socket = guest.qmp_socket().expect("QMP socket").to_str().unwrap().to_string();

    // ps --live, in a loop, while the guest makes progress.
    let beats = guest.heartbeats();
    let started = Instant::now();
    let mut live = String::new();
    for _ in 0..5 {
        live = ktrace(&guest, &["ps", &addr, "--live", "--json"]);
    }
    let took = started.elapsed();
    // The guest beats once a second: it ran all along.
    std::thread::sleep(Duration::from_millis(1500));
    let progressed = guest.heartbeats() - beats;
    assert!(progressed as f64 >= took.as_secs_f64() - 1.0, "{progressed} heartbeats in {took:?} of ps --live");
    let stopped = ktrace(&guest, &["ps", &addr, "--json"]);
    let (live, stopped) = (tasks(&live), tasks(&stopped));
    for &pid in guest.testprog_pids() {
        assert!(live.values().any(|t| t.0 == pid as i64 && t.2 == "testprog"), "testprog {pid} in ps --live");
    }
    let same: Vec<_> = live.iter().filter(|(k, v)| stopped.get(k) == Some(v)).collect();
    // Tasks that did not change are equal; short-lived ones (the init
    // loop's sleeps) may come and go between the two reads.
    assert!(same.len() + 4 >= stopped.len() && same.len() * 10 >= live.len() * 9, "live {live:?}\nstopped {stopped:?}");

    // With QMP's memory map, and its check of the mapping.
    let via_qmp = tasks(&ktrace(&guest, &["ps", &addr, "--live", "--qmp", &qmp_socket, "--json"]));
    assert!(via_qmp.iter().filter(|(k, v)| stopped.get(k) == Some(v)).count() + 4 >= stopped.len());

    // lsmod and info.
    assert_eq!(
        ktrace(&guest, &["lsmod", &addr, "--live", "--json"]),
        ktrace(&guest, &["lsmod", &addr, "--json"]),
        "lsmod --live equals lsmod"
    );
    let info: Value = serde_json::from_str(&ktrace(&guest, &["info", &addr, "--live", "--json"])).unwrap();
    assert_eq!(info["release"], guest.release());
    assert_eq!(info["cpus"].as_array().unwrap().len(), 2);

    // dmesg: live and through the stub, each line on the console.
    for args in [&["dmesg", &addr, "--live", "--json"][..], &["dmesg", &addr, "--json"][..]] {
        let records = json_lines(&ktrace(&guest, args));
        let lines = console_lines(&records);
        // A line logged while ktrace ran (the TSC's late calibration) is
        // in the log before it is on the console: wait for the console.
        let waited = Instant::now();
        let console = loop {
            let console = console_of(&guest);
            if lines.iter().all(|l| on_console(&console, l)) || waited.elapsed() > Duration::from_secs(20) {
                break console;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert!(lines.iter().any(|l| l.contains("Linux version")), "{args:?}: no banner in {} lines", lines.len());
        let missing: Vec<&String> = lines.iter().filter(|l| !on_console(&console, l)).collect();
        assert!(
            missing.is_empty(),
            "{args:?}: {} of {} lines not on the console: {missing:?}",
            missing.len(),
            lines.len()
        );
    }

    follow_the_log(&guest, &addr);
    print_once(&guest, &addr);

    // --core against drgn on the same dump.
    let mut qmp = Qmp::connect(guest.qmp_socket().unwrap()).expect("QMP");
    let dump = pause_and_dump(&guest, &mut qmp);
    let dump_s = dump.to_str().unwrap().to_string();
    let core_ps = tasks(&ktrace(&guest, &["ps", "--core", &dump_s, "--json"]));
    let core_lsmod = json_lines(&ktrace(&guest, &["lsmod", "--core", &dump_s, "--json"]));
    let core_bt = json_lines(&ktrace(&guest, &["bt", "--core", &dump_s, "--json"]));
    let core_dmesg = json_lines(&ktrace(&guest, &["dmesg", "--core", &dump_s, "--json"]));
    // Sleeping tasks: init (pid 1) and kthreadd (pid 2).
    let sleeping: Vec<Value> = [1, 2]
        .iter()
        .map(|pid| {
            serde_json::from_str(&ktrace(&guest, &["bt", "--core", &dump_s, "--pid", &pid.to_string(), "--json"]))
                .unwrap()
        })
        .collect();
    let all_tasks = json_lines(&ktrace(&guest, &["bt", "--core", &dump_s, "--all-tasks", "--json"]));
    // drgn's stacks of every task (pid 0 names one idle task per CPU: left out).
    let pids: Vec<i64> = core_ps.values().map(|t| t.0).filter(|&p| p > 0).collect();
    // `ktrace print --core`: what CPU 0 ran, as `bt --core` says, and a per-CPU walk.
    let printed = json_lines(&ktrace(
        &guest,
        &["print", "--core", &dump_s, "--json", "per_cpu(runqueues, 0).curr->pid", "init_task.comm", "$rip"],
    ));
    assert_eq!(printed[0]["value"], core_bt[0]["task"]["pid"], "print --core: {printed:?}");
    assert_eq!(printed[1]["value"], "swapper/0");
    assert_eq!(hex(&printed[2]["value"]), hex(&core_bt[0]["backtrace"]["frames"][0]["pc"]), "$rip of CPU 0");
    let drgn = ask_drgn_with_stacks(&dump, guest.vmlinux(), &pids);
    let _ = std::fs::remove_file(&dump);
    qmp.cont().expect("QMP cont");
    let console = console_of(&guest);
    assert!(console_lines(&core_dmesg).iter().all(|l| on_console(&console, l)));
    if let Some(drgn) = drgn {
        let theirs: BTreeMap<u64, (i64, i64, String)> = drgn["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let v =
                    (t["pid"].as_i64().unwrap(), t["tgid"].as_i64().unwrap(), t["comm"].as_str().unwrap().to_string());
                (t["task"].as_u64().unwrap(), v)
            })
            .collect();
        for (task, t) in &theirs {
            assert_eq!(core_ps.get(task), Some(t), "task 0x{task:x}: drgn {t:?}");
        }
        let names: Vec<(String, u64)> =
            core_lsmod.iter().map(|m| (m["name"].as_str().unwrap().to_string(), hex(&m["base"]))).collect();
        let drgn_names: Vec<(String, u64)> = drgn["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_string(), m["base"].as_u64().unwrap()))
            .collect();
        assert_eq!(names, drgn_names, "lsmod --core equals drgn's modules");
        // --all-tasks: one stack per task, each as --pid gives it.
        assert_eq!(all_tasks.len(), core_ps.len(), "bt --all-tasks has every task");
        for one in &sleeping {
            let pid = &one["task"]["pid"];
            let same = all_tasks.iter().find(|t| &t["task"]["pid"] == pid).expect("the task in --all-tasks");
            assert_eq!(same, one, "bt --all-tasks and bt --pid {pid} agree");
        }
        // Every argument value ktrace shows equals drgn's, sleeping tasks and CPUs alike.
        let mut values = 0;
        for ours in all_tasks.iter().filter(|t| t["task"]["pid"].as_i64() > Some(0) && t["cpu"].is_null()) {
            let pid = ours["task"]["pid"].as_i64().unwrap();
            values += same_argument_values(ours, &drgn["stacks"][pid.to_string()], &format!("pid {pid}"));
        }
        for (ours, theirs) in core_bt.iter().zip(drgn["cpus"].as_array().unwrap()) {
            values += same_argument_values(ours, theirs, &format!("CPU {}", theirs["cpu"]));
        }
        assert!(values >= 20, "only {values} argument values compared with drgn's");
        eprintln!("{values} argument values equal drgn's");
        let mut compared = 0;
        for ours in all_tasks.iter().filter(|t| t["task"]["pid"].as_i64() > Some(0) && t["cpu"].is_null()) {
            let pid = ours["task"]["pid"].as_i64().unwrap();
            let theirs = &drgn["stacks"][pid.to_string()];
            assert!(theirs["error"].is_null(), "drgn could not unwind pid {pid}: {theirs}");
            assert_eq!(
                ktrace_kernel_pcs(ours),
                drgn_kernel_pcs(theirs),
                "bt --all-tasks, pid {pid}: {ours} vs {theirs}"
            );
            compared += 1;
        }
        assert!(compared * 10 >= all_tasks.len() * 8, "{compared} of {} sleeping stacks compared", all_tasks.len());
        for (pid, ours) in [1, 2].iter().zip(&sleeping) {
            let theirs = &drgn["stacks"][pid.to_string()];
            assert!(theirs["error"].is_null(), "drgn could not unwind pid {pid}: {theirs}");
            let (drgn_pcs, our_pcs) = (drgn_kernel_pcs(theirs), ktrace_kernel_pcs(ours));
            assert!(ours["cpu"].is_null(), "pid {pid} sleeps: {ours}");
            assert!(drgn_pcs.len() > 2, "drgn's stack of pid {pid}: {theirs}");
            assert_eq!(our_pcs, drgn_pcs, "bt --pid {pid} --core: ktrace {ours} drgn {theirs}");
        }
        for (ours, theirs) in core_bt.iter().zip(drgn["cpus"].as_array().unwrap()) {
            assert_eq!(ours["task"]["pid"], theirs["pid"], "CPU {}: {ours} vs drgn {theirs}", theirs["cpu"]);
            if !theirs["error"].is_null() {
                continue;
            }
            let (drgn_pcs, our_pcs) = (drgn_kernel_pcs(theirs), ktrace_kernel_pcs(ours));
            assert!(
                our_pcs.starts_with(&drgn_pcs) || drgn_pcs.starts_with(&our_pcs) && our_pcs.len() + 1 >= drgn_pcs.len(),
                "CPU {} bt --core: ktrace {our_pcs:x?} drgn {drgn_pcs:x?}",
                theirs["cpu"]
            );
        }
    }
    common::assert_guest_healthy(&guest);
}

/// Each argument ktrace gives a number (integers, pointers) in a frame of
/// `ours` equals the variable of that name drgn reads in its frame of the
/// same pc and function. Returns how many were compared.
fn same_argument_values(ours: &Value, theirs: &Value, what: &str) -> usize {
    let number = |v: &Value| match v {
        Value::Number(n) => n.as_i64().map(|i| i as u64).or(n.as_u64()),
        Value::String(s) if s.starts_with("0x") => u64::from_str_radix(&s[2..], 16).ok(),
        _ => None,
    };
    let mut drgn_vars = BTreeMap::new();
    for f in theirs["frames"].as_array().into_iter().flatten() {
        if let (Some(pc), Some(name)) = (f["pc"].as_u64(), f["name"].as_str()) {
            drgn_vars.insert((pc, name.to_string()), &f["vars"]);
        }
    }
    let mut compared = 0;
    for frame in ours["backtrace"]["frames"].as_array().into_iter().flatten() {
        let pc = hex(&frame["pc"]);
        for scope in frame["args"].as_array().into_iter().flatten() {
            let function = scope["function"].as_str().unwrap_or_default().to_string();
            let Some(vars) = drgn_vars.get(&(pc, function.clone())) else { continue };
            for arg in scope["args"].as_array().into_iter().flatten() {
                let name = arg["name"].as_str().unwrap_or_default();
                let (Some(ours), Some(theirs)) = (number(&arg["value"]), number(&vars[name])) else { continue };
                assert_eq!(ours, theirs, "{what}, {function} at 0x{pc:x}: {arg} but drgn reads 0x{theirs:x}");
                compared += 1;
            }
        }
    }
    compared
}

/// `ktrace print`: through the stub (the CPU's registers and current task)
/// and live (no registers: said so, the other values still printed).
fn print_once(guest: &Guest, addr: &str) {
    let exprs = ["init_task.comm", "sizeof(struct task_struct)", "per_cpu(runqueues, 1).cpu", "$cr3 != 0"];
    let stopped = json_lines(&ktrace(guest, &[&["print", addr, "--json"][..], &exprs].concat()));
    let size: Value = serde_json::from_str(&ktrace(guest, &["layout", "task_struct", "--json"])).unwrap();
    assert_eq!(stopped[0]["value"], "swapper/0", "{stopped:?}");
    assert_eq!(stopped[1]["value"], size["size"], "sizeof agrees with `ktrace layout`");
    assert_eq!(stopped[2]["value"], 1, "runqueues of CPU 1 says cpu 1");
    assert_eq!(stopped[3]["value"], 1, "CR3 is read: {stopped:?}");
    let out = common::ktrace()
        .args(["print", addr, "--live", "--json", "init_task.comm", "$rip"])
        .arg("--vmlinux")
        .arg(guest.vmlinux())
        .output()
        .expect("run ktrace");
    assert_eq!(out.status.code(), Some(1), "a live read has no registers");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("$rip: registers need a stopped CPU"), "{stderr}");
    let live = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(live.len(), 1, "the other expression is printed: {live:?}");
    assert_eq!(live[0]["value"], "swapper/0");
}

/// The numbers of init's `ktrace-guest kmsg N` records in `records`.
fn kmsg_numbers(records: &[Value]) -> Vec<u64> {
    records.iter().filter_map(|r| r["text"].as_str()?.strip_prefix("ktrace-guest kmsg ")?.trim().parse().ok()).collect()
}

/// `dmesg --follow` prints the log, then each record init logs once a
/// second (at debug level, off the console), in order and without gaps,
/// while the guest keeps running; Ctrl-C ends it with status 0.
fn follow_the_log(guest: &Guest, addr: &str) {
    let vmlinux = guest.vmlinux().to_str().unwrap().to_string();
    let follow = common::spawn(&["dmesg", addr, "--follow", "--json", "--vmlinux", &vmlinux]);
    let started = Instant::now();
    let beats = guest.heartbeats();
    // The log up to the start has some; three more must arrive while it follows.
    let mut first_seen: Option<u64> = None;
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        let so_far = follow.stdout_so_far();
        let complete = &so_far[..so_far.rfind('\n').map_or(0, |i| i + 1)];
        let newest = kmsg_numbers(&json_lines(complete)).last().copied();
        match (first_seen, newest) {
            (None, Some(n)) => first_seen = Some(n),
            (Some(f), Some(n)) if n >= f + 3 => break,
            _ => {}
        }
    }
    follow.signal("INT");
    let out = follow.finish(Duration::from_secs(10));
    assert!(out.status.success(), "dmesg --follow: {}", out.dump());
    let records = out.json_lines();
    let numbers = kmsg_numbers(&records);
    assert!(numbers.len() >= 5, "dmesg --follow saw {numbers:?} in {:?}: {}", started.elapsed(), out.dump());
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "kmsg records in order, none missing: {numbers:?}");
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "sequence numbers increase");
    assert!(records.iter().all(|r| r["caller"].as_str().is_some_and(|c| c.starts_with('T') || c.starts_with('C'))));
    assert!(guest.heartbeats() > beats + 2, "the guest ran while dmesg followed it");
}

#[test]
fn kernel_6_12_on_qemu_10() {
    check(KernelSeries::V6_12, QemuBuild::V10_0);
}

#[test]
fn kernel_7_on_qemu_7_2() {
    check(KernelSeries::V7, QemuBuild::V7_2);
}
