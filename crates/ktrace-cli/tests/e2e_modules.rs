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
//! - `sym --guest` names module symbols and addresses;
//! - with `--modules DIR` (the guest's debug `.ko` files) module frames have
//!   file:line and inlined frames, the same lines as GDB's `info line` with
//!   the `.ko` added where the guest loaded its sections; a `.ko` of another
//!   module is refused, a missing directory noted;
//! - `--break _raw_spin_lock --comm dd`: dd writing new blocks through brd
//!   takes brd's lock, and the backtraces go through brd's frames, named,
//!   down to `entry_SYSCALL_64`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::oracles::{hex, json_lines, pause_and_ask_drgn};
use ktrace_symbols::short_source_path;
use ktrace_testguest::gdb::gdb_module_lines;
use ktrace_testguest::{test_guest_on, BootOptions, Guest, KernelSeries, Qmp};
use serde_json::Value;

static ONE_GUEST: Mutex<()> = Mutex::new(());

/// The most `_raw_spin_lock` traces of 50 hits tried for one through brd.
const SPIN_LOCK_TRACES: usize = 10;

fn ktrace(guest: &Guest, args: &[&str]) -> (String, String) {
    ktrace_in(guest, args, None)
}

/// `ktrace ARGS --vmlinux … [--modules DIR]`, which must succeed.
fn ktrace_in(guest: &Guest, args: &[&str], modules: Option<&Path>) -> (String, String) {
    let mut cmd = common::ktrace();
    cmd.args(args).arg("--vmlinux").arg(guest.vmlinux());
    if let Some(dir) = modules {
        cmd.arg("--modules").arg(dir);
    }
    let out = cmd.output().expect("run ktrace");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "ktrace {args:?} failed ({}): {stderr}", out.status);
    (stdout, stderr)
}

/// Compares every brd frame of `hits` with GDB (the guest's debug `.ko`
/// placed at the guest's section addresses): the innermost source line is
/// GDB's `info line`, the symbol GDB's `info symbol`. Returns how many
/// frames were compared and how many of them had inlined frames.
fn compare_module_frames_with_gdb(guest: &Guest, hits: &[Value]) -> (usize, usize) {
    let frames: Vec<&Value> = hits
        .iter()
        .flat_map(|h| h["backtrace"]["frames"].as_array().expect("frames"))
        .filter(|f| f["module"] == "brd" && ["stopped", "call", "call_cfi"].contains(&f["kind"].as_str().unwrap()))
        .collect();
    // ktrace looks return addresses up at pc - 1, as GDB does.
    let at = |f: &Value| hex(&f["pc"]) - u64::from(f["kind"] != "stopped");
    let mut addrs: Vec<u64> = frames.iter().map(|f| at(f)).collect();
    addrs.sort_unstable();
    addrs.dedup();
    let ko = guest.modules_debug_dir().join("kernel/drivers/block/brd.ko");
    let sections: Vec<(String, u64)> = guest
        .module_sections_from_console("brd")
        .into_iter()
        .filter(|(name, _)| name != ".symtab" && name != ".strtab")
        .collect();
    assert!(sections.iter().any(|(n, _)| n == ".text"), "the guest printed no .text of brd: {sections:?}");
    let gdb = gdb_module_lines(&ko, &sections, &addrs).expect("gdb");
    let mut inlined = 0;
    for f in &frames {
        let g = &gdb[addrs.binary_search(&at(f)).unwrap()];
        let source = f["source"].as_array().expect("source");
        assert!(!source.is_empty(), "a brd frame without source lines: {f}");
        let inner = &source[0];
        let ours = (inner["build_path"].as_str().map(short_source_path), inner["line"].as_u64());
        let theirs = g.line.as_ref().map(|(file, line)| (short_source_path(file), u64::from(*line)));
        assert_eq!((ours.0, ours.1), theirs.map_or((None, None), |(f, l)| (Some(f), Some(l))), "line of {f} vs GDB");
        // GDB prints `brd_insert_page.part.0` as `brd_insert_page.part`.
        let ours = f["function"].as_str().unwrap();
        let ours_gdb_style = ours.trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('.');
        let theirs = g.symbol.as_deref().unwrap_or("?");
        assert!(ours == theirs || ours_gdb_style == theirs, "symbol of {f} vs GDB's {theirs}");
        assert_eq!(source.last().unwrap()["inlined"], false, "{f}");
        inlined += usize::from(source.len() > 1);
    }
    (frames.len(), inlined)
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
        // Without debug files (none at the default place on this host):
        // symbol+offset only.
        if !Path::new("/usr/lib/debug/lib/modules").join(guest.release()).exists() {
            assert!(frames.iter().filter(|f| f["module"] == "brd").all(|f| f["source"] == Value::Array(vec![])));
        }
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

    check_module_lines(&guest);

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

/// With `--modules`: lines in module frames, against GDB; `_raw_spin_lock`
/// through brd's write path; a wrong `.ko` and a missing directory.
fn check_module_lines(guest: &Guest) {
    let addr = guest.addr();
    let dir = guest.modules_debug_dir();
    let mut compared = (0, 0);
    let mut add = |c: (usize, usize)| compared = (compared.0 + c.0, compared.1 + c.1);

    // A module function and a vmlinux function brd calls.
    let (out, _) = ktrace_in(
        guest,
        &["attach", &addr, "--break", "brd_submit_bio", "--comm", "dd", "--wait", "--count", "3", "--json"],
        Some(dir),
    );
    let hits = json_lines(&out);
    let first = &hits[0]["backtrace"]["frames"][0];
    assert_eq!(first["source"].as_array().unwrap().last().unwrap()["function"], "brd_submit_bio", "{first}");
    add(compare_module_frames_with_gdb(guest, &hits));
    let callee = vmlinux_callee_of_brd(guest);
    let (out, _) =
        ktrace_in(guest, &["attach", &addr, "--break", callee, "--comm", "dd", "--count", "10", "--json"], Some(dir));
    add(compare_module_frames_with_gdb(guest, &json_lines(&out)));

    // _raw_spin_lock in dd: the writer's new blocks take brd's lock. Most
    // of dd's hits are elsewhere (ticks, page faults, exec), and a trace
    // sees little guest time: trace again until some came through brd.
    let mut through_brd: Vec<Value> = Vec::new();
    let mut traces = 0;
    while through_brd.is_empty() && traces < SPIN_LOCK_TRACES {
        traces += 1;
        let (out, _) = ktrace_in(
            guest,
            &["attach", &addr, "--break", "_raw_spin_lock", "--comm", "dd", "--count", "50", "--json"],
            Some(dir),
        );
        through_brd.extend(
            json_lines(&out)
                .into_iter()
                .filter(|h| h["backtrace"]["frames"].as_array().unwrap().iter().any(|f| f["module"] == "brd")),
        );
    }
    assert!(!through_brd.is_empty(), "no _raw_spin_lock hit in dd came through brd");
    for h in &through_brd {
        common::json_schema::check("hit", h);
        let frames = h["backtrace"]["frames"].as_array().unwrap();
        assert!(h["backtrace"].get("stopped").is_none(), "{h}");
        assert!(frames.iter().filter(|f| f["kind"] != "user").all(|f| f["function"].is_string()), "{h}");
        assert!(frames.iter().any(|f| f["function"] == "entry_SYSCALL_64"), "{h}");
    }
    add(compare_module_frames_with_gdb(guest, &through_brd));
    eprintln!(
        "{}: {} brd frames compared with GDB ({} with inlined frames); {} _raw_spin_lock hits through brd in {traces} trace(s) of 50",
        guest.release(),
        compared.0,
        compared.1,
        through_brd.len()
    );
    assert!(compared.0 >= 5 && compared.1 > 0, "{compared:?}");

    // sym --guest on a module address: its lines too.
    let brd_frame = through_brd[0]["backtrace"]["frames"].as_array().unwrap().iter().find(|f| f["module"] == "brd");
    let brd_pc = hex(&brd_frame.unwrap()["pc"]);
    let (out, _) = ktrace_in(guest, &["sym", "--guest", &addr, "--json", &format!("0x{brd_pc:x}")], Some(dir));
    let answer = &json_lines(&out)[0];
    common::json_schema::check("sym_address", answer);
    assert_eq!(answer["module"], "brd");
    assert!(!answer["frames"].as_array().unwrap().is_empty(), "{answer}");

    // Another module's file under brd's name is refused, with a reason.
    let wrong = std::env::temp_dir().join(format!("ktrace-wrong-ko-{}", std::process::id()));
    std::fs::create_dir_all(&wrong).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/symbols/module_like.ko");
    std::fs::copy(fixture, wrong.join("brd.ko")).unwrap();
    let (out, err) = ktrace_in(guest, &["sym", "--guest", &addr, "--json", &format!("0x{brd_pc:x}")], Some(&wrong));
    std::fs::remove_dir_all(&wrong).unwrap();
    assert!(err.contains("is not the loaded module brd"), "{err}");
    assert_eq!(json_lines(&out)[0]["frames"], Value::Array(vec![]));

    // A directory that is not there: one line that says so, symbol+offset.
    let (out, err) =
        ktrace_in(guest, &["sym", "--guest", &addr, &format!("0x{brd_pc:x}")], Some(Path::new("/nonexistent/ktrace")));
    assert_eq!(err.lines().filter(|l| l.contains("no such directory")).count(), 1, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
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
