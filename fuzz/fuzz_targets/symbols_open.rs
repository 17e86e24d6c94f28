//! Fuzz `ktrace_symbols::Vmlinux` with arbitrary file contents: opening
//! and querying must return errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ktrace-symbols-fuzz-{}.elf", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(v) = ktrace_symbols::Vmlinux::open(&path) {
        let _ = v.symbol("init_task");
        let _ = v.resolve("init_task+0x10");
        let _ = v.banner();
        let _ = v.member("task_struct.pid");
        let _ = v.type_size("pt_regs");
        let _ = v.variable_type("current_task");
        let _ = v.line_addresses("core.c", 10);
        if let Some(s) = v.symbolize(ktrace_symbols::KernelAddr(0xffff_ffff_8100_0000)) {
            let _ = s.name.len();
        }
        let _ = v.frames(ktrace_symbols::KernelAddr(0xffff_ffff_8100_0000));
        if let Ok(o) = v.orc() {
            let _ = o.lookup(ktrace_symbols::KernelAddr(0xffff_ffff_8100_0000));
        }
    }
    let _ = std::fs::remove_file(&path);
});
