//! At the same paused stop, ktrace's backtrace agrees with GDB's `bt` frame
//! by frame, for the frames GDB can show.
//!
//! ktrace stops the guest at `_raw_spin_lock`, unwinds, and disconnects
//! without detaching: QEMU keeps the VM paused, so GDB then sees exactly the
//! same state. Each kernel of the test bed boots with KASLR on; GDB loads the
//! vmlinux at the slide ktrace found (`symbol-file -o SLIDE`), and the slide
//! itself is checked by GDB reading `linux_banner` there.

use std::sync::Arc;

use ktrace_kernel::Kernel;
use ktrace_rsp::{BreakpointKind, ClientConfig, Id, Resume, Session, StopReply};
use ktrace_symbols::Vmlinux;
use ktrace_testguest::gdb::{gdb_batch_with, GdbOptions};
use ktrace_testguest::{test_guest_on, BootOptions, KernelSeries};
use ktrace_tracer::{backtrace_cpus, FrameKind, Unwinder};

/// Function names innermost first, inlined frames expanded as GDB shows them.
fn ktrace_names(bt: &ktrace_tracer::Backtrace) -> Vec<String> {
    let mut names = Vec::new();
    for f in &bt.frames {
        if f.kind == FrameKind::User {
            break;
        }
        if f.source.is_empty() {
            names.push(f.function.clone().unwrap_or_else(|| "??".into()));
        }
        for s in &f.source {
            names.push(s.function.clone().or_else(|| f.function.clone()).unwrap_or_else(|| "??".into()));
        }
    }
    names
}

/// `#3  0xffff… in name (args) at …` or `#0  name (args) at …` → name,
/// up to the first frame GDB cannot really show: `??`, or a pc outside the
/// kernel (past the entry code GDB unwinds into user-space garbage, e.g.
/// `0x0000000000000001 in fixed_percpu_data ()`).
///
/// GDB also synthesizes frames for tail calls from DWARF call-site data
/// (e.g. `__get_unused_fd_flags`, which ends in `jmp alloc_fd`): their pc is
/// the byte after a `jmp rel32`, not a return address on the stack, and the
/// kernel's own unwinder does not show them either. `is_tail_call(pc)` drops them.
fn gdb_names(out: &str, is_tail_call: impl Fn(u64) -> bool) -> Vec<String> {
    // `thread N` prints frame #0 too: take the last block that starts at #0.
    let lines: Vec<&str> = out.lines().collect();
    let start = lines.iter().rposition(|l| l.starts_with("#0 ")).unwrap_or(0);
    lines[start..]
        .iter()
        .filter(|l| l.starts_with('#'))
        .map_while(|l| {
            let rest = l.split_once(char::is_whitespace)?.1.trim_start();
            let rest = match rest.split_once(" in ") {
                Some((addr, name)) if addr.starts_with("0x") => {
                    let pc = u64::from_str_radix(addr.trim_start_matches("0x"), 16).ok()?;
                    if pc < 0xffff_8000_0000_0000 {
                        return None;
                    }
                    if is_tail_call(pc) {
                        return Some(None);
                    }
                    name
                }
                _ => rest,
            };
            let name = rest.split([' ', '(']).next()?;
            (name != "??").then(|| Some(name.to_string()))
        })
        .flatten()
        .collect()
}

#[test]
fn kernel_6_1_backtrace_matches_gdb() {
    backtrace_matches_gdb_bt_at_the_same_stop(KernelSeries::V6_1);
}

#[test]
fn kernel_6_12_backtrace_matches_gdb() {
    backtrace_matches_gdb_bt_at_the_same_stop(KernelSeries::V6_12);
}

#[test]
fn kernel_7_backtrace_matches_gdb() {
    backtrace_matches_gdb_bt_at_the_same_stop(KernelSeries::V7);
}

/// One guest at a time (TCG on 2 cores).
static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn backtrace_matches_gdb_bt_at_the_same_stop(series: KernelSeries) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let opts = BootOptions { kaslr: true, smp: 2, ..BootOptions::default() };
    let Some(guest) = test_guest_on(series, opts) else { return };
    let vmlinux = Arc::new(Vmlinux::open(guest.vmlinux()).expect("vmlinux"));
    let bp = vmlinux.symbol("_raw_spin_lock").expect("symbol").addr.0;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (cpu_thread, ktrace_bt, slide) = rt.block_on(async {
        let addr = guest.addr().parse().expect("addr");
        let (mut session, _) = Session::connect(&addr, ClientConfig::default()).await.expect("connect");
        let kernel = Kernel::attach(&mut session, vmlinux.clone()).await.expect("kernel");
        let bp = kernel.runtime(ktrace_symbols::KernelAddr(bp));
        session.insert_breakpoint(BreakpointKind::Software, bp, 1).await.expect("Z0");
        let mut running = session.resume(Resume::Continue).await.expect("resume");
        let stop = running.wait_stop().await.expect("stop");
        let mut session = running.into_stopped().expect("stopped");
        session.remove_breakpoint(BreakpointKind::Software, bp, 1).await.expect("z0");
        let thread = match stop {
            StopReply::Signal { thread: Some(t), .. } => t,
            other => panic!("unexpected stop {other:?}"),
        };
        let Id::Id(n) = thread.tid else { panic!("thread {thread:?}") };
        let mut unwinder = Unwinder::new(&vmlinux).expect("unwinder");
        let cpus = backtrace_cpus(&mut session, &kernel, &mut unwinder).await.expect("bt");
        // Leave the VM paused at this very stop for GDB.
        session.disconnect();
        (n, cpus[(n - 1) as usize].backtrace.clone(), kernel.slide())
    });
    let ours = ktrace_names(&ktrace_bt);
    assert_eq!(ours.first().map(String::as_str), Some("_raw_spin_lock"));

    let commands =
        ["printf \"banner: %s\", linux_banner".to_string(), format!("thread {cpu_thread}"), "bt 40".to_string()];
    let opts = GdbOptions { symbol_offset: Some(slide), ..GdbOptions::default() };
    let gdb_out = gdb_batch_with(guest.vmlinux(), guest.port(), &commands, &opts).expect("gdb");
    assert!(
        gdb_out.contains(&format!("banner: Linux version {} ", guest.release())),
        "GDB, at ktrace's slide 0x{slide:x}, does not read the banner:\n{gdb_out}"
    );
    let theirs = gdb_names(&gdb_out, |pc| {
        vmlinux.section_bytes_at(ktrace_symbols::KernelAddr(pc.wrapping_sub(slide) - 5), 1) == Some(&[0xe9][..])
    });
    assert!(theirs.len() >= 3, "GDB showed too little to compare:\n{gdb_out}");
    for (i, name) in theirs.iter().enumerate() {
        assert_eq!(ours.get(i), Some(name), "frame #{i} differs\nktrace: {ours:?}\ngdb:    {theirs:?}\n{gdb_out}");
    }
    eprintln!("agreed on all {} frames GDB could show; ktrace showed {}", theirs.len(), ours.len());
    assert!(guest.is_running(std::time::Duration::from_secs(30)), "GDB's detach should leave the guest running");
}
