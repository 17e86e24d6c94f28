//! Kernel modules on every kernel of the test bed (KASLR on): the guest
//! loads `brd` and reads `/dev/ram0` with `dd` in a loop.
//!
//! - `ktrace lsmod` agrees with the guest's own `/proc/modules` (printed on
//!   its console at boot, as root) and with drgn's module list on a memory
//!   dump of the same paused state;
//! - `--break brd_submit_bio` (a module function) hits in `dd`, with
//!   backtraces through the module into the vmlinux and down to
//!   `entry_SYSCALL_64`, every frame named;
//! - a vmlinux function called from brd shows the module's frames, named
//!   `[brd]`, between vmlinux frames;
//! - `sym --guest` names module symbols and addresses.

mod common;

use std::process::Command;
use std::sync::Mutex;

use common::oracles::{hex, json_lines, pause_and_ask_drgn};
use ktrace_testguest::{test_guest_on, BootOptions, Guest, KernelSeries, Qmp};

static ONE_GUEST: Mutex<()> = Mutex::new(());

fn ktrace(guest: &Guest, args: &[&str]) -> (String, String) {
    let out = common::ktrace().args(args).arg("--vmlinux").arg(guest.vmlinux()).output().expect("run ktrace");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "ktrace {args:?} failed ({}): {stderr}", out.status);
    (stdout, stderr)
}

/// A vmlinux function the guest's brd calls on its read path (from its relocations).
fn vmlinux_callee_of_brd(guest: &Guest) -> &'static str {
    let ko = guest.modules_debug_dir().join("kernel/drivers/block/brd.ko");
    let out = Command::new("objdump").arg("-dr").arg(&ko).output().expect("objdump");
    let text = String::from_utf8_lossy(&out.stdout);
    ["xa_load", "xas_load", "radix_tree_lookup"]
        .into_iter()
        .find(|f| {
            text.contains(&format!("R_X86_64_PLT32\t{f}-0x4")) || text.contains(&format!("R_X86_64_PLT32 {f}-0x4"))
        })
        .unwrap_or_else(|| panic!("brd.ko calls none of xa_load, xas_load, radix_tree_lookup"))
}

fn check_modules(series: KernelSeries) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let opts = BootOptions { kaslr: true, qmp: true, ..BootOptions::default() };
    let Some(guest) = test_guest_on(series, opts) else { return };
    let addr = guest.addr();
    eprintln!("== {series} ({})", guest.release());

    // lsmod against /proc/modules as the guest printed it.
    let proc_modules = guest.modules_from_console();
    assert!(proc_modules.iter().any(|m| m.name == "brd"), "brd not loaded: {proc_modules:?}");
    let (out, _) = ktrace(&guest, &["lsmod", &addr, "--json"]);
    let ours = json_lines(&out);
    ours.iter().for_each(|m| common::json_schema::check("module", m));
    assert_eq!(ours.len(), proc_modules.len(), "ktrace {ours:?} vs /proc/modules {proc_modules:?}");
    for p in &proc_modules {
        let o = ours.iter().find(|o| o["name"] == p.name.as_str()).unwrap_or_else(|| panic!("{} missing", p.name));
        assert_eq!(o["size"], p.size, "{}: size", p.name);
        assert_eq!(hex(&o["base"]), p.base, "{}: base", p.name);
        assert_eq!(o["state"], p.state.as_str(), "{}: state", p.name);
    }

    // drgn's module list on a dump of the same paused state.
    let mut qmp = Qmp::connect(guest.qmp_socket().expect("QMP")).expect("QMP");
    let drgn = pause_and_ask_drgn(&guest, &mut qmp);
    let (out, _) = ktrace(&guest, &["lsmod", &addr, "--json"]);
    let ours = json_lines(&out);
    if let Some(drgn) = drgn {
        let theirs = drgn["modules"].as_array().expect("drgn modules");
        assert_eq!(ours.len(), theirs.len(), "ktrace {ours:?} drgn {theirs:?}");
        for (o, t) in ours.iter().zip(theirs) {
            assert_eq!(o["name"], t["name"]);
            assert_eq!(hex(&o["module"]), t["address"].as_u64().unwrap(), "struct module of {}", t["name"]);
            assert_eq!(hex(&o["base"]), t["base"].as_u64().unwrap(), "base of {}", t["name"]);
        }
    }

    // A breakpoint on a module function, hit by dd.
    let (out, _) = ktrace(
        &guest,
        &["attach", &addr, "--break", "brd_submit_bio", "--comm", "dd", "--wait", "--count", "5", "--json"],
    );
    let hits = json_lines(&out);
    assert_eq!(hits.len(), 5);
    for h in &hits {
        common::json_schema::check("hit", h);
        let frames = h["backtrace"]["frames"].as_array().expect("frames");
        assert_eq!(
            (frames[0]["function"].as_str(), frames[0]["module"].as_str()),
            (Some("brd_submit_bio"), Some("brd"))
        );
        assert!(h["backtrace"].get("stopped").is_none(), "{h}");
        assert!(frames.iter().filter(|f| f["kind"] != "user").all(|f| f["function"].is_string()), "{h}");
        assert!(frames.iter().any(|f| f["function"] == "entry_SYSCALL_64"), "{h}");
        assert_eq!(frames.last().unwrap()["kind"], "user");
    }
    let brd_submit_bio = hex(&hits[0]["pc"]);

    // A vmlinux function called from brd: the module's frames in between.
    let callee = vmlinux_callee_of_brd(&guest);
    let (out, _) =
        ktrace(&guest, &["attach", &addr, "--break", callee, "--comm", "dd", "--wait", "--count", "20", "--json"]);
    let hits = json_lines(&out);
    let through_brd = hits.iter().find(|h| {
        h["backtrace"]["frames"].as_array().unwrap().iter().any(|f| f["module"] == "brd" && f["function"].is_string())
    });
    let h = through_brd.unwrap_or_else(|| panic!("no {callee} hit came through brd: {hits:?}"));
    let frames = h["backtrace"]["frames"].as_array().unwrap();
    assert!(h["backtrace"].get("stopped").is_none(), "{h}");
    assert!(frames.iter().any(|f| f["function"] == "entry_SYSCALL_64"), "{h}");
    assert!(frames.iter().any(|f| f["module"] == "brd" && f["function"] == "brd_submit_bio"), "{h}");

    // sym --guest: a module name and a module address.
    let (out, _) =
        ktrace(&guest, &["sym", "--guest", &addr, "--json", "brd_submit_bio", &format!("0x{:x}", brd_submit_bio + 4)]);
    let answers = json_lines(&out);
    assert_eq!(answers[0]["module"], "brd");
    assert_eq!(hex(&answers[0]["address"]), brd_submit_bio);
    assert_eq!((answers[1]["symbol"].as_str(), answers[1]["offset"].as_u64()), (Some("brd_submit_bio"), Some(4)));
    common::json_schema::check("sym_name", &answers[0]);
    common::json_schema::check("sym_address", &answers[1]);

    // A module that is not loaded is an error that says so.
    let out = common::ktrace()
        .args(["attach", &addr, "--break", "loop:lo_rw_aio", "--count", "1", "--vmlinux"])
        .arg(guest.vmlinux())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("module `loop` is not loaded"));
    assert!(guest.is_running(std::time::Duration::from_secs(60)));
}

#[test]
fn modules_on_6_1() {
    check_modules(KernelSeries::V6_1);
}

#[test]
fn modules_on_6_12() {
    check_modules(KernelSeries::V6_12);
}

#[test]
fn modules_on_7() {
    check_modules(KernelSeries::V7);
}
