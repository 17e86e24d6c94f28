//! `ktrace sym` and `ktrace layout` on the real Debian vmlinux, checked
//! against `nm` and against what the oracle tests of the symbols crate
//! already compare with GDB.

use std::process::Command;

use serde_json::Value;

fn vmlinux() -> Option<std::path::PathBuf> {
    ktrace_testguest::test_vmlinux()
}

fn ktrace_json(args: &[&str], vmlinux: &std::path::Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_ktrace"))
        .args(args)
        .arg("--vmlinux")
        .arg(vmlinux)
        .arg("--json")
        .output()
        .expect("ktrace");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect()
}

fn nm_address(vmlinux: &std::path::Path, name: &str) -> u64 {
    let out = Command::new("nm").arg(vmlinux).output().expect("nm (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.split_whitespace().nth(2) == Some(name)).expect(name);
    u64::from_str_radix(line.split_whitespace().next().expect("addr"), 16).expect("hex")
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().expect("string").trim_start_matches("0x"), 16).expect("hex")
}

#[test]
fn sym_agrees_with_nm_and_symbolizes_addresses() {
    let Some(vm) = vmlinux() else { return };
    let names = ["_raw_spin_lock", "init_task", "linux_banner", "current_task", "do_sys_openat2"];
    let answers = ktrace_json(&[&["sym"][..], &names[..]].concat(), &vm);
    assert_eq!(answers.len(), names.len());
    for (name, a) in names.iter().zip(&answers) {
        assert_eq!(a["symbol"], *name);
        assert_eq!(hex(&a["address"]), nm_address(&vm, name), "{name}");
    }
    assert_eq!(answers[3]["percpu"], true, "current_task is per-CPU");
    assert_eq!(answers[0]["percpu"], false);

    let spin = nm_address(&vm, "_raw_spin_lock");
    let at = format!("0x{:x}", spin + 5);
    let back = ktrace_json(&["sym", &at, "_raw_spin_lock+0x5"], &vm);
    assert_eq!(back[0]["symbol"], "_raw_spin_lock");
    assert_eq!(back[0]["offset"], 5);
    assert_eq!(hex(&back[1]["address"]), spin + 5);
    let frames = back[0]["frames"].as_array().expect("frames");
    assert!(frames.iter().any(|f| f["file"].as_str().is_some_and(|p| p.ends_with("spinlock.c"))), "{frames:?}");
}

#[test]
fn layout_prints_member_offsets_and_type_sizes() {
    let Some(vm) = vmlinux() else { return };
    let answers = ktrace_json(&["layout", "task_struct.pid", "task_struct.comm", "list_head.next", "task_struct"], &vm);
    assert_eq!(answers[0]["member"], "task_struct.pid");
    assert_eq!(answers[0]["size"], 4);
    assert_eq!(answers[1]["size"], 16, "comm is TASK_COMM_LEN bytes");
    assert_eq!(answers[2]["offset"], 0);
    assert_eq!(answers[2]["size"], 8);
    let task_size = answers[3]["size"].as_u64().expect("size");
    let pid = answers[0]["offset"].as_u64().expect("offset");
    assert!(pid > 0 && pid < task_size, "pid at {pid} in a {task_size}-byte task_struct");
}

#[test]
fn unknown_names_are_usage_errors_with_suggestions() {
    let Some(vm) = vmlinux() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_ktrace"))
        .args(["sym", "_raw_spin_lok", "--vmlinux"])
        .arg(&vm)
        .output()
        .expect("ktrace");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("_raw_spin_lock"), "no suggestion: {err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ktrace"))
        .args(["layout", "task_struct.no_such", "--vmlinux"])
        .arg(&vm)
        .output()
        .expect("ktrace");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "one clear line");
}
