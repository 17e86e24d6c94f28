//! Embedding the tracer: run it in a background task and consume its hits as
//! a stream (a channel), with cancellation from the consumer side.
//!
//! cargo run -p ktrace-examples --example stream_hits -- :1234 ./vmlinux _raw_spin_lock 10

use std::ops::ControlFlow;
use std::sync::Arc;

use ktrace_symbols::Vmlinux;
use ktrace_tracer::{CancellationToken, Hit, TraceConfig, Tracer};
use tokio::sync::mpsc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, vmlinux, rest) = ktrace_examples::addr_and_vmlinux("stream_hits ADDR VMLINUX [SYMBOL] [N]");
    let symbol = rest.first().cloned().unwrap_or_else(|| "_raw_spin_lock".into());
    let wanted: usize = rest.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);

    let vmlinux = Arc::new(Vmlinux::open(vmlinux)?);
    let cfg = TraceConfig { breakpoints: vec![symbol], ..TraceConfig::default() };
    let tracer = Tracer::attach(&addr.parse()?, vmlinux, cfg).await?;

    let (tx, mut hits) = mpsc::unbounded_channel::<Hit>();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let trace = tokio::spawn(async move {
        let mut sink = move |hit: Hit| {
            if tx.send(hit).is_err() {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        tracer.run(&mut sink, stop).await
    });

    let mut seen = 0;
    while let Some(hit) = hits.recv().await {
        let caller =
            hit.backtrace.as_ref().and_then(|bt| bt.frames.get(1)).and_then(|f| f.function.clone()).unwrap_or_default();
        println!("{:>4} cpu {} {:>6} {:<16} called from {caller}", hit.seq, hit.cpu, hit.pid, hit.comm);
        seen += 1;
        if seen == wanted {
            cancel.cancel();
        }
    }
    let summary = trace.await??;
    eprintln!("{} hits, guest released: {}", summary.matched, summary.guest_released);
    Ok(())
}
