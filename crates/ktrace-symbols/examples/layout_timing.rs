//! Times typical queries against a vmlinux and prints peak RSS.
//!
//! `cargo run --release -p ktrace-symbols --example layout_timing -- [VMLINUX] [layout|symbol|frames|lines|orc|all]`
//!
//! Run one scenario per process to see its own peak RSS (VmHWM).

use std::time::Instant;

use ktrace_symbols::{KernelAddr, Vmlinux};

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l["VmHWM:".len()..].trim().to_owned()))
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().or_else(|| std::env::var("KTRACE_VMLINUX").ok()).unwrap_or_else(|| "vmlinux".into());
    let mode = args.next().unwrap_or_else(|| "layout".into());
    let t0 = Instant::now();
    let v = Vmlinux::open(&path)?;
    println!("open: {:?}", t0.elapsed());
    if mode == "layout" || mode == "all" {
        let pid = v.member("task_struct.pid")?;
        let comm = v.member("task_struct.comm")?;
        println!("task_struct.pid = {pid:?}\ntask_struct.comm = {comm:?}");
        println!("open + 2 members: {:?}, VmHWM {}", t0.elapsed(), vm_hwm());
    }
    if mode == "symbol" || mode == "all" {
        let t = Instant::now();
        let s = v.symbol("_raw_spin_lock")?;
        println!("{s:?}");
        println!("symbol: {:?}; open + symbol: {:?}, VmHWM {}", t.elapsed(), t0.elapsed(), vm_hwm());
    }
    if mode == "frames" || mode == "all" {
        for spec in ["_raw_spin_lock+4", "schedule+0x20", "do_sys_openat2+0x40"] {
            let t = Instant::now();
            let a = v.resolve(spec)?;
            let f = v.frames(a)?;
            println!("frames({spec} = {a}): {:?}: {f:?}", t.elapsed());
        }
        println!("open + frames: {:?}, VmHWM {}", t0.elapsed(), vm_hwm());
    }
    if mode == "lines" || mode == "all" {
        let t = Instant::now();
        let a = v.line_addresses("kernel/sched/core.c", 6500);
        println!("line_addresses(kernel/sched/core.c:6500) {:?}: {a:?}", t.elapsed());
        println!("VmHWM {}", vm_hwm());
    }
    if mode == "orc" || mode == "all" {
        let t = Instant::now();
        let o = v.orc()?;
        let e = o.lookup(KernelAddr(v.symbol("_raw_spin_lock")?.addr.0 + 4));
        println!("orc ({} entries) {:?}: {e:?}, VmHWM {}", o.len(), t.elapsed(), vm_hwm());
    }
    if mode == "misc" || mode == "all" {
        let t = Instant::now();
        println!("banner: {}", v.banner()?);
        println!("release: {}", v.release()?);
        for m in [
            "task_struct.tasks.next",
            "list_head.next",
            "task_struct.signal",
            "signal_struct.thread_head",
            "task_struct.thread_group",
            "pt_regs.ip",
            "task_struct.__state",
        ] {
            println!("{m}: {:?}", v.member(m));
        }
        println!("type_size(task_struct) = {:?}", v.type_size("task_struct"));
        println!("type_size(pt_regs) = {:?}", v.type_size("pt_regs"));
        println!("variable_type(init_task) = {:?}", v.variable_type("init_task"));
        println!("variable_type(current_task) = {:?}", v.variable_type("current_task"));
        println!("symbol(current_task) = {:?}", v.symbol("current_task"));
        println!("symbolize = {:?}", v.symbolize(v.resolve("_raw_spin_lock+5")?));
        println!("bad: {}", v.symbol("_raw_spin_lok").unwrap_err());
        println!("bad: {}", v.member("task_struct.pidd").unwrap_err());
        println!("misc: {:?}, VmHWM {}", t.elapsed(), vm_hwm());
    }
    Ok(())
}
