//! drgn on a memory dump of the paused guest, and the JSON helpers the
//! oracle comparisons share.

use std::path::PathBuf;
use std::process::Command;

use ktrace_testguest::{in_ci, Guest, Qmp};
use serde_json::Value;

const DRGN_ORACLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ktrace-testguest/assets/drgn_oracle.py");

/// Pauses the guest, dumps its memory and runs drgn on the dump
/// (`assets/drgn_oracle.py`); the guest stays paused, so the next ktrace
/// command reads the same state (and its detach resumes the guest).
/// `None` only outside CI when drgn is not installed.
pub fn pause_and_ask_drgn(guest: &Guest, qmp: &mut Qmp) -> Option<Value> {
    let dump = pause_and_dump(guest, qmp);
    let answer = ask_drgn(&dump, guest.vmlinux());
    let _ = std::fs::remove_file(&dump);
    answer
}

/// Pauses the guest and dumps its memory to a file of its own (the guest
/// stays paused: `qmp.cont()` resumes it).
pub fn pause_and_dump(guest: &Guest, qmp: &mut Qmp) -> PathBuf {
    qmp.stop().expect("QMP stop");
    let dump: PathBuf = std::env::temp_dir().join(format!("ktrace-e2e-core-{}.elf", guest.port()));
    qmp.dump_guest_memory(&dump).expect("dump-guest-memory");
    dump
}

/// drgn's view of a dump (see `assets/drgn_oracle.py`); `None` outside CI when drgn is missing.
pub fn ask_drgn(dump: &std::path::Path, vmlinux: &std::path::Path) -> Option<Value> {
    ask_drgn_with_stacks(dump, vmlinux, &[])
}

/// [`ask_drgn`], with the stacks of the tasks `pids` (`"stacks": {pid: …}`).
pub fn ask_drgn_with_stacks(dump: &std::path::Path, vmlinux: &std::path::Path, pids: &[i64]) -> Option<Value> {
    let mut cmd = Command::new("python3");
    cmd.arg(DRGN_ORACLE).arg(dump).arg(vmlinux);
    if !pids.is_empty() {
        cmd.arg(pids.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
    }
    let out = cmd.output();
    match out {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).expect("drgn oracle JSON")),
        Ok(o) if !in_ci() && String::from_utf8_lossy(&o.stderr).contains("No module named 'drgn'") => {
            eprintln!("skipping the drgn comparison: drgn is not installed (pip install drgn)");
            None
        }
        Ok(o) => panic!("drgn oracle failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("python3: {e}"),
    }
}

/// An address as ktrace's JSON writes it (`"0x…"`).
pub fn hex(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is not a \"0x…\" string"));
    u64::from_str_radix(s.strip_prefix("0x").expect("0x prefix"), 16).expect("hex")
}

/// Every non-empty line of `text` as JSON.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}
