//! The low memory in-guest records may borrow, proven from the real guests
//! (Debian 6.1, 6.12 and 7.x, KASLR on), with the console's e820 map and
//! GDB as the oracles: every page of it is RAM by the firmware's map,
//! above the BIOS's 64 KiB, outside the real-mode trampoline and the boot
//! loader's first `setup_data`, and
//! `PG_reserved` in GDB's reading of its `struct page`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ktrace_kernel::trampoline::borrowable_low_memory;
use ktrace_kernel::Kernel;
use ktrace_rsp::{ClientConfig, Session, StubAddr};
use ktrace_symbols::Vmlinux;
use ktrace_testguest::gdb::{gdb_batch_with, parse_u64, value, GdbExit, GdbOptions};
use ktrace_testguest::{test_guest_on, BootOptions, KernelSeries};

static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// The console's `BIOS-e820: [mem 0x…-0x…] usable` ranges (`System RAM`
/// since 6.16), as `[start, end)`.
fn console_ram(console: &str) -> Vec<(u64, u64)> {
    console
        .lines()
        .filter(|l| {
            l.contains("BIOS-e820: [mem ") && (l.trim_end().ends_with("usable") || l.trim_end().ends_with("System RAM"))
        })
        .filter_map(|l| {
            let range = l.split("[mem ").nth(1)?.split(']').next()?;
            let (a, b) = range.split_once('-')?;
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            Some((hex(a)?, hex(b)? + 1))
        })
        .collect()
}

fn check(series: KernelSeries) {
    let _one = ONE_GUEST_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = BootOptions { smp: 2, kaslr: true, ..BootOptions::default() };
    let Some(guest) = test_guest_on(series, opts) else { return };
    let vm = Arc::new(Vmlinux::open(guest.vmlinux()).expect("vmlinux"));
    let addr: StubAddr = guest.addr().parse().expect("addr");
    let want = 128 << 10;
    let (area, slide) = block_on(async {
        let (mut s, _) = Session::connect(&addr, ClientConfig::default()).await.expect("connect");
        let kernel = Kernel::attach_physical(&mut s, vm.clone()).await.expect("attach");
        let area = borrowable_low_memory(&kernel, &mut s, want).await.expect("low memory to borrow");
        // Asking for more than there is: refused, with the largest run.
        let err = borrowable_low_memory(&kernel, &mut s, 2 << 20).await.expect_err("2 MiB below 1 MiB");
        assert!(err.to_string().contains(&format!("{} KiB at 0x{:x}", area.len >> 10, area.phys)), "{err}");
        s.detach().await.expect("detach");
        (area, kernel.slide())
    });
    eprintln!("{}: {} KiB at 0x{:x} (0x{:x})", guest.release(), area.len >> 10, area.phys, area.virt);
    assert!(area.len >= want && area.phys % 4096 == 0 && area.len % 4096 == 0);
    assert!(area.phys >= 64 << 10 && area.phys + area.len <= 1 << 20, "{area:?}");
    let ram = console_ram(&guest.console());
    assert!(
        !ram.is_empty(),
        "no e820 map on the console: {}",
        guest.console().lines().filter(|l| l.contains("e820")).collect::<Vec<_>>().join("\n")
    );
    assert!(
        ram.iter().any(|&(s, e)| s <= area.phys && area.phys + area.len <= e),
        "{area:?} is not in one usable e820 range of {ram:x?}"
    );

    let pfn = |p: u64| p / 4096;
    let (first, last) = (pfn(area.phys), pfn(area.phys + area.len - 1));
    let cmds = vec![
        "p/x (unsigned long)real_mode_header - page_offset_base".to_string(),
        "p/x (unsigned long)&real_mode_blob_end - (unsigned long)&real_mode_blob".to_string(),
        // `flags` is a word, or (7.x) a struct holding one.
        format!("p *(unsigned long *)&((struct page *)vmemmap_base)[{first}].flags & (1UL << PG_reserved)"),
        format!("p *(unsigned long *)&((struct page *)vmemmap_base)[{last}].flags & (1UL << PG_reserved)"),
        "p/x page_offset_base".to_string(),
        "p/x boot_params.hdr.setup_data".to_string(),
    ];
    let opts = GdbOptions { exit: GdbExit::Detach, symbol_offset: Some(slide), ..GdbOptions::default() };
    let out = gdb_batch_with(guest.vmlinux(), guest.port(), &cmds, &opts).expect("gdb");
    let v = |n: u32| value(&out, n).and_then(|v| parse_u64(&v)).unwrap_or_else(|| panic!("GDB's ${n}:\n{out}"));
    let (rm, rm_size) = (v(1), v(2));
    assert!(rm_size > 0 && rm < 1 << 20, "GDB: real mode at 0x{rm:x}, 0x{rm_size:x} bytes");
    assert!(
        area.phys + area.len <= rm || area.phys >= rm + rm_size,
        "{area:?} overlaps the real-mode trampoline at 0x{rm:x}"
    );
    assert_ne!(v(3), 0, "GDB: the first page is not PG_reserved");
    assert_ne!(v(4), 0, "GDB: the last page is not PG_reserved");
    assert_eq!(area.virt, v(5) + area.phys, "the direct map's address");
    let setup_data = v(6);
    assert!(
        !(area.phys..area.phys + area.len).contains(&setup_data),
        "the boot loader's setup_data 0x{setup_data:x} is in {area:?}"
    );
    eprintln!("real mode at 0x{rm:x} (0x{rm_size:x} bytes), setup_data at 0x{setup_data:x}");
    assert!(guest.is_running(Duration::from_secs(30)), "the guest runs after detach");
}

#[test]
fn low_memory_on_6_1() {
    check(KernelSeries::V6_1);
}

#[test]
fn low_memory_on_6_12() {
    check(KernelSeries::V6_12);
}

#[test]
fn low_memory_on_7() {
    check(KernelSeries::V7);
}
