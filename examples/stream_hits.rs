//! Embedding the tracer: it runs in a background task and its hits arrive
//! as a stream; the consumer cancels it when it has seen enough.
//!
//! cargo run -p ktrace-examples --example stream_hits -- :1234 ./vmlinux _raw_spin_lock 10

use std::sync::Arc;

use ktrace_symbols::Vmlinux;
use ktrace_tracer::{CancellationToken, TraceConfig, Tracer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, vmlinux, rest) = ktrace_examples::addr_and_vmlinux("stream_hits ADDR VMLINUX [SYMBOL] [N]");
    let symbol = rest.first().cloned().unwrap_or_else(|| "_raw_spin_lock".into());
    let wanted: usize = rest.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);

    let vmlinux = Arc::new(Vmlinux::open(vmlinux)?);
    let cfg = TraceConfig::new().breakpoint(symbol);
    let tracer = Tracer::attach(&addr.parse()?, vmlinux, cfg).await?;

    let cancel = CancellationToken::new();
    let mut hits = tracer.stream(cancel.clone());
    let mut seen = 0;
    while let Some(hit) = hits.next().await {
        let caller =
            hit.backtrace.as_ref().and_then(|bt| bt.frames.get(1)).and_then(|f| f.function.clone()).unwrap_or_default();
        println!("{:>4} cpu {} {:>6} {:<16} called from {caller}", hit.seq, hit.cpu, hit.pid, hit.comm);
        seen += 1;
        if seen == wanted {
            cancel.cancel();
        }
    }
    let summary = hits.finish().await?;
    eprintln!("{} hits, guest released: {}", summary.matched, summary.guest_released);
    Ok(())
}
