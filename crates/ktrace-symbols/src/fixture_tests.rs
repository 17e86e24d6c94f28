//! Tests against the small ELF fixtures in `testdata/symbols/` (built from
//! C by `testdata/symbols/build.sh`).

use std::path::PathBuf;

use crate::{KernelAddr, SymbolError, SymbolKind, Vmlinux};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/symbols").join(name)
}

fn open() -> Vmlinux {
    Vmlinux::open(fixture("kernel_like.elf")).expect("fixture opens")
}

#[test]
fn open_errors_are_clear() {
    match Vmlinux::open(fixture("does-not-exist")) {
        Err(SymbolError::FileNotFound { .. }) => {}
        other => panic!("unexpected {:?}", other.err()),
    }
    match Vmlinux::open(fixture("kernel_like.c")) {
        Err(e @ SymbolError::NotElf { .. }) => assert!(e.to_string().contains("not an ELF file")),
        other => panic!("unexpected {:?}", other.err()),
    }
    match Vmlinux::open(fixture("kernel_like.stripped")) {
        Err(e @ SymbolError::NoSymbols { .. }) => assert!(e.to_string().contains("stripped")),
        other => panic!("unexpected {:?}", other.err()),
    }
}

#[test]
fn symbols_and_kinds() {
    let v = open();
    assert!(v.has_dwarf());
    assert!(v.path().ends_with("kernel_like.elf"));
    let s = v.symbol("__schedule").unwrap();
    assert_eq!(s.addr, KernelAddr(0xffff_ffff_8100_0000));
    assert_eq!(s.kind, SymbolKind::Text);
    assert_eq!(s.size, 0xe);
    assert_eq!(v.symbol("linux_banner").unwrap().kind, SymbolKind::ReadOnlyData);
    assert_eq!(v.symbol("init_task").unwrap().kind, SymbolKind::Data);
    assert_eq!(v.symbol("init_signals").unwrap().kind, SymbolKind::Bss);
    let p = v.symbol("pcpu_hot").unwrap();
    assert!(p.is_percpu());
    assert_eq!(p.addr, KernelAddr(0x20));
    let (start, end) = v.percpu_section_range().unwrap();
    assert!(start <= p.addr.0 && p.addr.0 < end);
    assert!(v.lookup_symbol("nope").is_none());
}

#[test]
fn unknown_symbol_suggests() {
    let v = open();
    match v.symbol("__schedul") {
        Err(SymbolError::UnknownSymbol { name, suggestions }) => {
            assert_eq!(name, "__schedule".trim_end_matches('e'));
            assert_eq!(suggestions.first().map(String::as_str), Some("__schedule"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match v.symbol("hot") {
        Err(SymbolError::UnknownSymbol { suggestions, .. }) => assert!(suggestions.contains(&"pcpu_hot".to_owned())),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn resolve_specs() {
    let v = open();
    let base = 0xffff_ffff_8100_0000u64;
    assert_eq!(v.resolve("__schedule").unwrap(), KernelAddr(base));
    assert_eq!(v.resolve("__schedule+0x10").unwrap(), KernelAddr(base + 0x10));
    assert_eq!(v.resolve("__schedule+16").unwrap(), KernelAddr(base + 16));
    assert_eq!(v.resolve(" 0xffffffff81000004 ").unwrap(), KernelAddr(base + 4));
    assert!(matches!(v.resolve("__schedule+zz"), Err(SymbolError::BadAddress { .. })));
    assert!(matches!(v.resolve("kernel_like.c:57"), Err(SymbolError::BadAddress { .. })));
    assert!(matches!(v.resolve("nope+1"), Err(SymbolError::UnknownSymbol { .. })));
}

#[test]
fn symbolize_addresses() {
    let v = open();
    let s = v.symbolize(KernelAddr(0xffff_ffff_8100_0010)).unwrap();
    assert_eq!((s.name.as_str(), s.offset, s.size), ("regs_ip", 2, 8));
    let s = v.symbolize(KernelAddr(0xffff_ffff_8100_2008)).unwrap();
    assert_eq!((s.name.as_str(), s.offset), ("init_task", 8));
    assert!(v.symbolize(KernelAddr(0x1000)).is_none());
}

#[test]
fn bytes_banner_release() {
    let v = open();
    let b = v.section_bytes_at(v.symbol("linux_banner").unwrap().addr, 13).unwrap();
    assert_eq!(b, b"Linux version");
    assert_eq!(v.banner().unwrap(), "Linux version 6.9.0-ktrace-test (test@example) (gcc) #1 SMP PREEMPT_DYNAMIC");
    assert_eq!(v.release().unwrap(), "6.9.0-ktrace-test");
    // The per-CPU template: cpu_number_copy = 3 at offset 0.
    assert_eq!(v.section_bytes_at(KernelAddr(0), 4).unwrap(), &3i32.to_le_bytes());
    assert!(v.section_bytes_at(KernelAddr(0xffff_ffff_8100_2060), 4).is_none(), "bss has no file bytes");
}

#[test]
fn member_layouts() {
    let v = open();
    let m = v.member("task_struct.pid").unwrap();
    assert_eq!((m.offset, m.size, m.type_name.as_str()), (24, 4, "pid_t"));
    let m = v.member("task_struct.tgid").unwrap();
    assert_eq!((m.offset, m.size), (28, 4));
    let m = v.member("task_struct.comm").unwrap();
    assert_eq!((m.size, m.type_name.as_str()), (16, "char [16]"));
    let m = v.member("task_struct.tasks").unwrap();
    assert_eq!((m.offset, m.size, m.type_name.as_str()), (8, 16, "struct list_head"));
    let m = v.member("task_struct.tasks.prev").unwrap();
    assert_eq!((m.offset, m.size, m.type_name.as_str()), (16, 8, "struct list_head *"));
    let m = v.member("task_struct.signal").unwrap();
    assert_eq!(m.type_name, "struct signal_struct *");
    let m = v.member("signal_struct.thread_head").unwrap();
    assert_eq!(m.offset, 8);
    let m = v.member("task_struct.exit_signal").unwrap();
    assert_eq!((m.offset, m.size), (32, 2), "bit field spanning bits 7..16");
    let m = v.member("pcpu_hot.current_task").unwrap();
    assert_eq!((m.offset, m.size, m.type_name.as_str()), (0, 8, "struct task_struct *"));
    let m = v.member("pcpu_hot.cpu_number").unwrap();
    assert_eq!(m.offset, 12);
    assert_eq!(v.member("struct pt_regs.ip").unwrap().offset, 16 * 8);
    assert!(v.has_member("list_head.next"));
    assert!(!v.has_member("list_head.nxt"));
}

#[test]
fn member_errors() {
    let v = open();
    match v.member("task_struct.pidd") {
        Err(e @ SymbolError::UnknownMember { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("did you mean: pid"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(v.member("no_such_struct.x"), Err(SymbolError::UnknownType { .. })));
    assert!(matches!(v.member("task_struct"), Err(SymbolError::BadMemberPath { .. })));
    assert!(matches!(v.member("task_struct.signal.flags"), Err(SymbolError::NotAStruct { .. })));
}

#[test]
fn sizes_and_variable_types() {
    let v = open();
    assert_eq!(v.type_size("pt_regs").unwrap(), 21 * 8);
    assert_eq!(v.type_size("struct pt_regs").unwrap(), 21 * 8);
    assert_eq!(v.type_size("pcpu_hot").unwrap(), 64);
    assert_eq!(v.type_size("pid_t").unwrap(), 4);
    assert_eq!(v.type_size("task_struct").unwrap(), v.symbol("init_task").unwrap().size);
    assert_eq!(v.variable_type("init_task").unwrap(), "struct task_struct");
    assert_eq!(v.variable_type("pcpu_hot").unwrap(), "struct pcpu_hot");
    assert!(matches!(v.variable_type("nope"), Err(SymbolError::UnknownVariable { .. })));
}

#[test]
fn frames_with_inlining() {
    let v = open();
    let f = v.frames(KernelAddr(0xffff_ffff_8100_0004)).unwrap();
    let names: Vec<_> = f.iter().map(|f| f.function.as_deref().unwrap_or("?")).collect();
    assert_eq!(names.last(), Some(&"__schedule"));
    assert!(names.len() >= 2, "{f:?}");
    assert!(f[0].inlined && !f.last().unwrap().inlined);
    assert_eq!(f[0].line, Some(52));
    assert_eq!(f.last().unwrap().line, Some(58), "call site line of the inlined chain");
    assert!(f[0].file.as_deref().unwrap().ends_with("kernel_like.c"));
    let f = v.frames(KernelAddr(0xffff_ffff_8100_0016)).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].function.as_deref(), Some("cpu_init"));
    assert_eq!(f[0].line, Some(25));
}

#[test]
fn line_addresses_lookup() {
    let v = open();
    let a = v.line_addresses("kernel_like.c", 63).unwrap();
    assert_eq!(a, vec![KernelAddr(0xffff_ffff_8100_000e)]);
    let a = v.line_addresses("testdata/symbols/percpu.c", 25).unwrap();
    assert_eq!(a.first(), Some(&KernelAddr(0xffff_ffff_8100_0016)));
    match v.line_addresses("kernel_like.c", 60) {
        Err(e @ SymbolError::NoCodeAtLine { .. }) => assert!(e.to_string().contains("nearby lines")),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(v.line_addresses("nope.c", 1), Err(SymbolError::UnknownFile { .. })));
}

#[test]
fn no_orc_in_fixture() {
    let v = open();
    assert!(matches!(v.orc(), Err(SymbolError::NoOrc { .. })));
}
