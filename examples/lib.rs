//! Examples of embedding ktrace; see the `[[example]]`s of this package:
//!
//! - `stream_hits`: the tracer in a background task, hits arriving on a channel.
//! - `capture_json`: scripted backtrace capture to a JSON file.
//! - `list_tasks`: the kernel crate alone, listing the guest's tasks.
//!
//! Each takes `ADDR VMLINUX …` (e.g. `:1234 ./vmlinux`).

/// `ADDR VMLINUX` from the command line, or a usage message.
pub fn addr_and_vmlinux(usage: &str) -> (String, String, Vec<String>) {
    let mut args = std::env::args().skip(1);
    match (args.next(), args.next()) {
        (Some(addr), Some(vmlinux)) => (addr, vmlinux, args.collect()),
        _ => {
            eprintln!("usage: {usage}");
            std::process::exit(2);
        }
    }
}
