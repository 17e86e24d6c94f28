#![no_main]
//! Every reply parser never panics.
use ktrace_rsp::packets::*;
use ktrace_rsp::RegisterMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|p: &[u8]| {
    let _ = check_reply("x", p);
    let _ = expect_ok("x", p);
    let _ = stop::parse_stop_reply(p);
    let _ = qsupported::parse_qsupported(p);
    let _ = vcont::parse_vcont_support(p);
    let _ = thread::parse_thread_info(p);
    let _ = thread::parse_thread_extra_info(p);
    let _ = thread::parse_current_thread(p);
    let _ = thread::parse_attached(p);
    let _ = memory::parse_read(p);
    let _ = memory::parse_read_binary(p);
    let _ = registers::parse_registers("g", p);
    let _ = xfer::parse_xfer_read(p);
    let _ = monitor::parse_rcmd_reply(p);
    if let Ok(s) = std::str::from_utf8(p) {
        let _ = s.parse::<ktrace_rsp::ThreadId>();
        let _ = s.parse::<ktrace_rsp::StubAddr>();
        let _ = RegisterMap::from_xml(s, |_| Ok(String::from(s)));
    }
});
