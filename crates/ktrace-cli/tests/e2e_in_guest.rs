//! `attach --in-guest` on every kernel of the test bed (6.1, 6.12, 7.x),
//! KASLR on: the same hits and backtraces as the stop loop, no stop for
//! another process, every way out puts the ftrace NOP back and erases the
//! trampoline (after a lost connection, over a new one), a trampoline left
//! by a killed ktrace is harmless and cleaned up later, a site that is not
//! the ftrace NOP is refused, and the trampoline's code is what GDB
//! disassembles.
//!
//! Guest memory is read through QMP (`x` in the human monitor) while no
//! debugger is attached, and written through GDB.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use ktrace_testguest::gdb::{gdb_batch, gdb_batch_with, GdbExit, GdbOptions};
use ktrace_testguest::proxy::{FaultConfig, FaultProxy};
use ktrace_testguest::{test_guest_on, BootOptions, Guest, KernelSeries, Qmp};
use serde_json::Value;

/// One guest at a time: they are CPU-bound under TCG on a 2-core machine.
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// A function on testprog's read path with one caller chain.
const FUNCTION: &str = "urandom_read_iter";
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
/// Where the memory ktrace may borrow starts (above the BIOS's 64 KiB).
const LOW: u64 = 0x10000;

struct Bed {
    guest: Guest,
    qmp: Qmp,
    /// testprog and a second process running the same program.
    pids: (i32, i32),
    /// The trampoline's hit page (the record routine is on it), once known.
    hit_page: Option<u64>,
    /// The memory lent for records and what it held before ktrace came.
    borrowed: Option<(u64, Vec<u8>)>,
}

fn boot(series: KernelSeries, smp: u32) -> Option<Bed> {
    let opts = BootOptions { smp, kaslr: true, testprogs: 2, qmp: true, ..BootOptions::default() };
    let guest = test_guest_on(series, opts)?;
    let qmp = Qmp::connect(guest.qmp_socket().expect("QMP socket")).expect("QMP");
    let p = guest.testprog_pids();
    let pids = (p[0] as i32, p[1] as i32);
    Some(Bed { guest, qmp, pids, hit_page: None, borrowed: None })
}

fn attach(bed: &Bed, extra: &[&str]) -> Vec<String> {
    attach_at(bed, &bed.guest.addr(), extra)
}

fn attach_at(bed: &Bed, addr: &str, extra: &[&str]) -> Vec<String> {
    let g = &bed.guest;
    let mut args: Vec<String> = ["attach", addr, "--vmlinux", common::path(g.vmlinux()), "--break", FUNCTION]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--json", "--timeout", "10", "--pid", &bed.pids.0.to_string()].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> common::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run(&args, common::LIMIT);
    out.assert_no_panic();
    out
}

/// Reads guest memory with the monitor's `x` (the VM keeps its state).
fn read_bytes(qmp: &mut Qmp, addr: u64, n: usize) -> Vec<u8> {
    qmp.read_virtual(addr, n).expect("reading guest memory through QMP")
}

/// The function's ftrace site: after `endbr64` where the kernel has one.
fn site_of(qmp: &mut Qmp, function: u64) -> u64 {
    let head = read_bytes(qmp, function, 4);
    function + if head == [0xf3, 0x0f, 0x1e, 0xfa] { 4 } else { 0 }
}

/// The trampoline's address, from ktrace's note on stderr.
fn trampoline_of(out: &common::Output) -> u64 {
    let line = out.stderr.lines().find(|l| l.contains("patched to call the filter at")).unwrap_or_else(|| {
        panic!("--in-guest was not used:\n{}", out.dump());
    });
    let hex = line.rsplit("0x").next().expect("address");
    u64::from_str_radix(hex.trim(), 16).expect("hex address")
}

/// The record routine's address, from ktrace's note on stderr.
fn routine_of(out: &common::Output) -> u64 {
    let line = out.stderr.lines().find(|l| l.contains("recorded by the routine at")).unwrap_or_else(|| {
        panic!("matches were not recorded in the guest:\n{}", out.dump());
    });
    let rest = line.split("recorded by the routine at 0x").nth(1).expect("address");
    let end = rest.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(rest.len());
    u64::from_str_radix(&rest[..end], 16).expect("hex address")
}

/// The memory ktrace borrows for records, from its note on stderr:
/// (physical address, bytes).
fn borrowed_of(out: &common::Output) -> (u64, usize) {
    let line = out.stderr.lines().find(|l| l.contains("bytes borrowed at physical")).unwrap_or_else(|| {
        panic!("matches were not recorded in the guest:\n{}", out.dump());
    });
    let hex_after = |key: &str| {
        let rest = line.split(key).nth(1).expect(key).trim_start().trim_start_matches("0x");
        let end = rest.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(rest.len());
        u64::from_str_radix(&rest[..end], 16).expect("hex")
    };
    (hex_after("bytes borrowed at physical"), hex_after(" in ") as usize)
}

/// After ktrace has left: the site holds the ftrace NOP again, the
/// trampoline and the hit page are padding again, the borrowed memory
/// holds what it held before ktrace came, and the guest runs.
fn assert_restored(bed: &mut Bed, site: u64, trampoline: u64, what: &str) {
    assert_given_back(bed, site, trampoline, what, true)
}

/// [`assert_restored`]; `memory`: also the borrowed memory (not after a
/// SIGKILL without a guardian: its bytes were with the killed ktrace).
fn assert_given_back(bed: &mut Bed, site: u64, trampoline: u64, what: &str, memory: bool) {
    assert_eq!(read_bytes(&mut bed.qmp, site, 5), NOP5, "{what}: the ftrace NOP is not back");
    assert!(
        read_bytes(&mut bed.qmp, trampoline, 672).iter().all(|&b| b == 0xcc),
        "{what}: the trampoline was not erased"
    );
    if let Some(hit_page) = bed.hit_page {
        assert!(
            read_bytes(&mut bed.qmp, hit_page, 0x680).iter().all(|&b| b == 0xcc),
            "{what}: the hit page (hit stubs, record routine) was not erased"
        );
    }
    if let Some((phys, before)) = bed.borrowed.as_ref().filter(|_| memory) {
        let now = bed.qmp.read_physical(*phys, before.len()).expect("pmemsave");
        let differ: Vec<String> = now
            .iter()
            .zip(before)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("+0x{i:x}: {b:02x} -> {a:02x}"))
            .collect();
        assert!(
            differ.is_empty(),
            "{what}: {} bytes of the memory borrowed at physical 0x{phys:x} differ from before: {}",
            differ.len(),
            differ.iter().take(16).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    assert!(bed.qmp.running().expect("status"), "{what}: the guest is not running");
    assert!(bed.guest.is_running(Duration::from_secs(60)), "{what}: no heartbeat from the guest");
}

fn stack_names(hit: &Value) -> Vec<String> {
    hit["backtrace"]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(|f| f["function"].as_str().map(str::to_string))
        .collect()
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().expect("hex string").trim_start_matches("0x"), 16).expect("hex")
}

/// Everything on one guest of `series` with `smp` vCPUs (one ring each).
fn on(series: KernelSeries, smp: u32) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut bed) = boot(series, smp) else { return };
    let (pid, other) = bed.pids;

    // The stop loop's hits, to compare with.
    let stop_loop = run(&attach(&bed, &["--count", "10"]));
    assert_eq!(stop_loop.code(), Some(0), "{}", stop_loop.dump());
    let expected: BTreeSet<Vec<String>> = stop_loop.json_lines().iter().map(stack_names).collect();
    let function = hex(&stop_loop.json_lines()[0]["pc"]);

    // Low memory as it was before ktrace came (ktrace borrows from it).
    let low = bed.qmp.read_physical(LOW, 0x100000 - LOW as usize).expect("pmemsave");

    // In the guest: the same hits, backtraces and pc, and only matching
    // stops: none at all, each match is recorded in the guest.
    let out = run(&attach(&bed, &["--count", "30", "--in-guest"]));
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    let trampoline = trampoline_of(&out);
    let (phys, len) = borrowed_of(&out);
    assert!(out.stderr.contains(&format!("in {smp} ring(s)")), "one ring per vCPU: {}", out.dump());
    assert!(phys >= LOW && phys + len as u64 <= 0x100000, "borrowed 0x{len:x} bytes at 0x{phys:x}");
    let from = (phys - LOW) as usize;
    bed.borrowed = Some((phys, low[from..from + len].to_vec()));
    bed.hit_page = Some(routine_of(&out) - 0x440);
    assert!(out.stderr.contains("recorded in the guest without stopping it"), "{}", out.dump());
    assert!(out.stderr.contains("borrowed memory given back"), "{}", out.dump());
    let hits = out.json_lines();
    assert_eq!(hits.len(), 30, "{}", out.dump());
    for hit in &hits {
        common::json_schema::check("hit", hit);
        assert_eq!(hit["pid"], pid, "{hit}");
        assert_ne!(hit["pid"], other);
        assert_eq!(hit["comm"], "testprog");
        assert_eq!(hex(&hit["pc"]), function, "the hit is reported at the function's entry");
        let names = stack_names(hit);
        assert!(expected.contains(&names), "in-guest stack {names:?} is none of the stop loop's {expected:?}");
        assert_eq!(hit["backtrace"]["frames"].as_array().unwrap().last().unwrap()["kind"], "user", "{hit}");
    }
    assert_eq!(out.hits(), Some((30, 30)), "a stop that did not match (another process?): {}", out.dump());
    assert!(out.stderr.contains("1 site(s) restored"), "{}", out.dump());
    let site = site_of(&mut bed.qmp, function);
    assert_restored(&mut bed, site, trampoline, "--count");

    // --no-drop, with rings of a few slots: a full ring stops the guest
    // for a drain instead of dropping; every match arrives, whole.
    let out = run(&attach(&bed, &["--count", "200", "--in-guest", "--no-drop", "--stack-copy", "65536"]));
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(out.stderr.contains(" 0 dropped (ring full)"), "{}", out.dump());
    assert!(out.stderr.contains("stop(s) to drain a full ring"), "no ring filled up: {}", out.dump());
    let hits = out.json_lines();
    assert_eq!(hits.len(), 200, "{}", out.dump());
    for hit in &hits {
        assert_eq!(hit["pid"], pid, "{hit}");
        let names = stack_names(hit);
        assert!(expected.contains(&names), "--no-drop stack {names:?} is none of the stop loop's {expected:?}");
        assert_eq!(hit["backtrace"]["frames"].as_array().unwrap().last().unwrap()["kind"], "user", "{hit}");
    }
    let site = site_of(&mut bed.qmp, function);
    assert_restored(&mut bed, site, trampoline, "--no-drop");

    // Every way out: --duration, Ctrl-C, SIGTERM.
    let out = run(&attach(&bed, &["--duration", "2s", "--in-guest"]));
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert_restored(&mut bed, site, trampoline, "--duration");
    for sig in ["INT", "TERM"] {
        let args = attach(&bed, &["--in-guest"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut running = common::spawn(&args);
        assert!(running.wait_lines(3, Duration::from_secs(60)), "no hits before SIG{sig}");
        running.signal(sig);
        let out = running.finish(common::LIMIT);
        out.assert_no_panic();
        assert_eq!(out.code(), Some(0), "SIG{sig}: {}", out.dump());
        assert!(out.stderr.contains("erased"), "SIG{sig}: {}", out.dump());
        assert_restored(&mut bed, site, trampoline, &format!("SIG{sig}"));
    }

    // The connection lost mid-trace: ktrace fails, and puts the sites back
    // over a new connection.
    let proxy = FaultProxy::start(&bed.guest.addr(), FaultConfig::default()).expect("proxy");
    let args = attach_at(&bed, &proxy.addr(), &["--in-guest", "--log", "ktrace_tracer=debug"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut running = common::spawn(&args);
    assert!(running.wait_lines(3, Duration::from_secs(60)), "no hits before the cut");
    proxy.cut();
    let out = running.finish(common::LIMIT);
    out.assert_no_panic();
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert!(out.stderr.contains("1 of 1 site(s) restored over a new connection"), "{}", out.dump());
    drop(proxy);
    assert_restored(&mut bed, site, trampoline, &format!("connection lost:\n{}", out.stderr));

    left_stopped(&mut bed, site, trampoline);
    in_a_module(&mut bed);
    killed_while_patched(&mut bed, site, trampoline, &expected);
    foreign_site_is_refused(&mut bed, function, site);
    common::assert_guest_healthy(&bed.guest);
    assert!(!bed.guest.console().contains("Oops"), "the guest oopsed:\n{}", bed.guest.console());
}

/// SIGKILL while patched, with no guardian (`--no-guardian`: what a killed
/// ktrace leaves when nothing cleans up after it, e.g. the guardian killed
/// too; `tests/guardian.rs` has the guardian's own clean-up): QEMU keeps the VM paused; a client that attaches
/// and detaches lets it run with the patch in place (the trampoline has no
/// int3, so it runs on at full speed); GDB disassembles the trampoline as
/// ktrace wrote it; `ktrace restore` and a later `--in-guest` clean up.
fn killed_while_patched(bed: &mut Bed, site: u64, trampoline: u64, expected: &BTreeSet<Vec<String>>) {
    for cleanup in ["restore", "attach --in-guest"] {
        let args = attach(bed, &["--in-guest", "--no-guardian"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut running = common::spawn(&args);
        assert!(running.wait_lines(2, Duration::from_secs(60)), "no hits before SIGKILL");
        running.signal("KILL");
        let _ = running.finish(common::LIMIT);

        // Any client's detach resumes the VM; the site still calls the trampoline.
        let info =
            run(&["info".into(), bed.guest.addr(), "--vmlinux".into(), common::path(bed.guest.vmlinux()).into()]);
        assert_eq!(info.code(), Some(0), "{}", info.dump());
        assert!(
            bed.guest.is_running(Duration::from_secs(60)),
            "the guest does not run with the trampoline left behind"
        );
        let call = read_bytes(&mut bed.qmp, site, 5);
        assert_eq!(call[0], 0xe8, "the site was patched with a call");
        let target = (site + 5).wrapping_add(i32::from_le_bytes(call[1..5].try_into().unwrap()) as i64 as u64);
        assert!((trampoline..trampoline + 672).contains(&target), "the call goes to the trampoline");
        std::thread::sleep(Duration::from_secs(1));
        assert!(bed.qmp.running().expect("status"), "the guest stopped: the trampoline holds an int3?");

        if cleanup == "restore" {
            gdb_disassembles_the_trampoline(bed, trampoline, target);
            unwound_through_the_trampoline(bed, site, target, expected);
            let out = run(&[
                "restore".into(),
                bed.guest.addr(),
                "--vmlinux".into(),
                common::path(bed.guest.vmlinux()).into(),
            ]);
            assert_eq!(out.code(), Some(0), "{}", out.dump());
            assert!(out.stdout.contains("1 site(s) restored") && out.stdout.contains("erased"), "{}", out.dump());
        } else {
            let out = run(&attach(bed, &["--in-guest", "--count", "3"]));
            assert_eq!(out.code(), Some(0), "{}", out.dump());
            assert_eq!(out.json_lines().len(), 3, "{}", out.dump());
            assert!(out.stderr.contains("restored 1 site(s) a killed ktrace had left patched"), "{}", out.dump());
            assert!(out.stderr.contains("patched to call the filter"), "{}", out.dump());
            assert_eq!(out.hits(), Some((3, 3)), "{}", out.dump());
        }
        // Without a guardian the borrowed memory's bytes died with ktrace:
        // it keeps the rings (the kernel never uses it). tests/guardian.rs
        // checks that a guardian gives it back.
        assert_given_back(bed, site, trampoline, cleanup, false);
    }
    let out = run(&["restore".into(), bed.guest.addr(), "--vmlinux".into(), common::path(bed.guest.vmlinux()).into()]);
    assert!(out.stdout.contains("no ktrace trampoline"), "{}", out.dump());
}

/// `--leave-stopped`: the sites are restored and the VM stays paused; the
/// trampoline stays (the guest cannot run a drain) until `ktrace restore`.
fn left_stopped(bed: &mut Bed, site: u64, trampoline: u64) {
    let out = run(&attach(bed, &["--in-guest", "--count", "3", "--leave-stopped"]));
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(out.stderr.contains("1 site(s) restored") && out.stderr.contains("left in place"), "{}", out.dump());
    assert!(!bed.qmp.running().expect("status"), "--leave-stopped resumed the guest");
    assert_eq!(read_bytes(&mut bed.qmp, site, 5), NOP5, "the ftrace NOP is back");
    assert_eq!(&read_bytes(&mut bed.qmp, trampoline, 16), b"ktrace:tramp:v1\0", "the trampoline stays, marked");
    bed.qmp.cont().expect("cont");
    let out = run(&["restore".into(), bed.guest.addr(), "--vmlinux".into(), common::path(bed.guest.vmlinux()).into()]);
    assert!(out.stdout.contains("0 site(s) restored") && out.stdout.contains("erased"), "{}", out.dump());
    assert_restored(bed, site, trampoline, "--leave-stopped, then restore");
}

/// A module's function (brd, under the test bed's dd loop) with an exact comm.
fn in_a_module(bed: &mut Bed) {
    let g = &bed.guest;
    let args: Vec<String> =
        ["attach", &g.addr(), "--vmlinux", common::path(g.vmlinux()), "--break", "brd:brd_submit_bio"]
            .iter()
            .map(|s| s.to_string())
            .chain(
                ["--comm", "dd", "--wait", "--in-guest", "--count", "3", "--json", "--timeout", "10"].map(String::from),
            )
            .collect();
    let out = run(&args);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(out.stderr.contains("1 function(s) patched"), "{}", out.dump());
    assert_eq!(out.hits(), Some((3, 3)), "{}", out.dump());
    for hit in out.json_lines() {
        assert_eq!(hit["comm"], "dd", "{hit}");
        let top = &hit["backtrace"]["frames"][0];
        assert_eq!((top["function"].as_str(), top["module"].as_str()), (Some("brd_submit_bio"), Some("brd")), "{hit}");
    }
    assert!(out.stderr.contains("1 site(s) restored") && out.stderr.contains("erased"), "{}", out.dump());
}

/// GDB's `x/12i` of the filter body and of the entry the site calls.
fn gdb_disassembles_the_trampoline(bed: &Bed, trampoline: u64, entry: u64) {
    let body = trampoline + 256;
    let cmds = vec![format!("x/12i 0x{body:x}"), format!("x/4i 0x{entry:x}")];
    // Any x86-64 ELF gives GDB the architecture; the vmlinux would take long to load.
    let text = gdb_batch(std::path::Path::new("/bin/true"), bed.guest.port(), &cmds).expect("gdb");
    let insns: Vec<&str> = text.lines().filter(|l| l.starts_with(' ') && l.contains(":\t")).collect();
    let mnemonic = |l: &str| l.split(':').nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
    let got: Vec<String> = insns.iter().map(|l| mnemonic(l)).collect();
    let want = [
        "push", "push", "mov", "mov", "and", "cmp", "jne", "mov", "and", "cmp", "jne", "mov", // body
        "call", "jne", "call", "ret", // entry: a match calls the record routine
    ];
    assert_eq!(got, want, "GDB disassembles:\n{text}");
    assert!(insns[2].contains("%gs:") && insns[2].contains("%rax"), "the current task through %gs: {}", insns[2]);
    assert!(insns[4].contains("(%rip)") && insns[5].contains("(%rip)"), "filter data rip-relative:\n{text}");
    assert!(insns[12].contains(&format!("0x{body:x}")), "the entry calls the body: {}", insns[12]);
    // The record routine: every register and the flags saved, the CPU's
    // ring by %gs:cpu_number, a slot reserved with lock cmpxchg.
    let routine = bed.hit_page.expect("hit page") + 0x440;
    assert!(insns[14].contains(&format!("0x{routine:x}")), "a match calls the record routine: {}", insns[14]);
    let text =
        gdb_batch(std::path::Path::new("/bin/true"), bed.guest.port(), &[format!("x/90i 0x{routine:x}")]).expect("gdb");
    let insns: Vec<&str> = text.lines().filter(|l| l.starts_with(' ') && l.contains(":\t")).collect();
    let got: Vec<String> = insns.iter().map(|l| mnemonic(l)).collect();
    assert_eq!(got[0], "pushf", "GDB disassembles:\n{text}");
    assert_eq!(got[1..16].iter().filter(|m| *m == "push").count(), 15, "GDB disassembles:\n{text}");
    assert_eq!(got[16], "cld", "GDB disassembles:\n{text}");
    assert!(insns[17].contains("%gs:"), "the CPU number through %gs: {}", insns[17]);
    assert!(text.contains("lock cmpxchg %rcx,(%rbx)"), "the slot reserved with lock cmpxchg:\n{text}");
    assert!(text.contains("rdtsc"), "a time stamp:\n{text}");
    assert!(text.contains("divq   0x18(%rbx)"), "the slot index: head modulo the slots:\n{text}");
    // The count of CPUs inside, in the ring's header (+0x38), up and down.
    assert!(text.contains("lock incq 0x38(%rbx)"), "the count of CPUs inside goes up:\n{text}");
    assert!(text.contains("lock decq 0x38(%rbx)"), "and down:\n{text}");
}

/// A CPU stopped inside the trampoline's body (GDB's breakpoint there,
/// the VM left paused): `ktrace bt` names the frame as ktrace's, steps
/// through it into the patched function, and goes on to a real stack
/// bottom, the stop loop's stack for the function.
fn unwound_through_the_trampoline(bed: &mut Bed, site: u64, entry: u64, expected: &BTreeSet<Vec<String>>) {
    let call = read_bytes(&mut bed.qmp, entry, 5);
    assert_eq!(call[0], 0xe8, "the entry starts with its call of the body");
    let body = (entry + 5).wrapping_add(i32::from_le_bytes(call[1..5].try_into().unwrap()) as i64 as u64);
    // Two registers pushed: the return address into the function is 24 bytes up.
    let cmds = vec![format!("break *0x{:x}", body + 2), "continue".to_string()];
    let opts = GdbOptions { exit: GdbExit::LeavePaused, ..GdbOptions::default() };
    let text = gdb_batch_with(std::path::Path::new("/bin/true"), bed.guest.port(), &cmds, &opts).expect("gdb");
    assert!(text.contains(&format!("0x{:x}", body + 2)), "GDB did not stop in the body:\n{text}");
    let g = &bed.guest;
    let out = run(&["bt".into(), g.addr(), "--vmlinux".into(), common::path(g.vmlinux()).into(), "--json".into()]);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    let bts = out.json_lines();
    let inside: Vec<&Value> = bts
        .iter()
        .filter(|bt| {
            bt["backtrace"]["frames"][0]["pc"].is_string() && hex(&bt["backtrace"]["frames"][0]["pc"]) == body + 2
        })
        .collect();
    // Both testprogs read: both CPUs may have reached the breakpoint.
    assert!(!inside.is_empty(), "no CPU stopped in the trampoline: {}", out.dump());
    for bt in inside {
        let b = &bt["backtrace"];
        let frames = b["frames"].as_array().expect("frames");
        assert_eq!(frames[0]["function"], "[ktrace filter]", "{b}");
        assert_eq!(hex(&frames[1]["pc"]), site + 5, "the next frame returns into the patched function: {b}");
        assert!(b["stopped"].is_null(), "the unwind ended early: {b}");
        assert_eq!(frames.last().unwrap()["kind"], "user", "{b}");
        let names: Vec<String> = stack_names(bt).into_iter().skip(1).collect();
        assert!(expected.contains(&names), "through the trampoline: {names:?}, none of the stop loop's {expected:?}");
    }
    assert!(bed.guest.is_running(Duration::from_secs(60)), "the guest runs again after ktrace bt");
}

/// A site that holds a call (as under ftrace) is refused with the reason;
/// the trace still runs, in the stop loop.
fn foreign_site_is_refused(bed: &mut Bed, function: u64, site: u64) {
    let vm = ktrace_symbols::Vmlinux::open(bed.guest.vmlinux()).expect("vmlinux");
    let link = vm.symbol(FUNCTION).expect("symbol").addr.0;
    let call = vm.section_bytes_at(ktrace_symbols::KernelAddr(link + (site - function)), 5).expect("bytes").to_vec();
    assert_eq!(call[0], 0xe8, "the file has `call __fentry__` at the site");
    let poke = |bytes: &[u8]| {
        let cmds: Vec<String> = bytes
            .iter()
            .enumerate()
            .map(|(i, b)| format!("set *(unsigned char *)0x{:x} = 0x{b:02x}", site + i as u64))
            .collect();
        gdb_batch(std::path::Path::new("/bin/true"), bed.guest.port(), &cmds).expect("gdb");
    };
    poke(&call); // __fentry__ is a plain return: harmless while it is there
    let out = run(&attach(bed, &["--in-guest", "--count", "2"]));
    poke(&NOP5);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(out.stderr.contains("a call is at its ftrace site"), "{}", out.dump());
    assert!(out.stderr.contains("the stop loop evaluates it instead"), "{}", out.dump());
    assert_eq!(out.json_lines().len(), 2, "{}", out.dump());
    assert_eq!(read_bytes(&mut bed.qmp, site, 5), NOP5);
}

#[test]
fn in_guest_on_6_1() {
    on(KernelSeries::V6_1, 2);
}

#[test]
fn in_guest_on_6_12() {
    on(KernelSeries::V6_12, 2);
}

#[test]
fn in_guest_on_7() {
    on(KernelSeries::V7, 4);
}
