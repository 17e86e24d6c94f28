//! Scripted backtrace capture: N hits of a breakpoint in one process, written
//! as a JSON array to a file, then a one-line summary.
//!
//! cargo run -p ktrace-examples --example capture_json -- :1234 ./vmlinux PID out.json

use std::ops::ControlFlow;
use std::sync::Arc;

use ktrace_symbols::Vmlinux;
use ktrace_tracer::{CancellationToken, Hit, TraceConfig, Tracer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, vmlinux, rest) = ktrace_examples::addr_and_vmlinux("capture_json ADDR VMLINUX PID OUT.json");
    let pid: i32 = rest.first().ok_or("PID missing")?.parse()?;
    let out = rest.get(1).cloned().unwrap_or_else(|| "hits.json".into());

    let cfg = TraceConfig::new().breakpoint("_raw_spin_lock").breakpoint("ksys_write").pid(pid).count(25);
    let tracer = Tracer::attach(&addr.parse()?, Arc::new(Vmlinux::open(vmlinux)?), cfg).await?;
    let mut hits: Vec<Hit> = Vec::new();
    let mut sink = |hit: Hit| {
        hits.push(hit);
        ControlFlow::Continue(())
    };
    let summary = tracer.run(&mut sink, CancellationToken::new()).await?;
    std::fs::write(&out, serde_json::to_string_pretty(&hits)?)?;
    println!("{} of {} hits matched pid {pid}; written to {out}", summary.matched, summary.seen);
    Ok(())
}
