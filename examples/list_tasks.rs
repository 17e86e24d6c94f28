//! The kernel crate on its own: list the guest's tasks and what each CPU runs.
//!
//! cargo run -p ktrace-examples --example list_tasks -- :1234 ./vmlinux

use std::sync::Arc;

use ktrace_kernel::{Guest, GuestConfig};
use ktrace_symbols::Vmlinux;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, vmlinux, _) = ktrace_examples::addr_and_vmlinux("list_tasks ADDR VMLINUX");
    let vmlinux = Arc::new(Vmlinux::open(vmlinux)?);
    // Read everything while the guest is stopped; the scope always lets it go.
    let cfg = GuestConfig::default();
    let (kernel, tasks, cpus) = Guest::scope(&addr.parse()?, vmlinux, &cfg, async |guest: &mut Guest| {
        let mut mem = guest.kernel.memory(&mut guest.session);
        let tasks = guest.kernel.tasks(&mut mem).await?;
        let cpus = guest.kernel.cpu_states(&mut mem).await?;
        Ok::<_, Box<dyn std::error::Error>>((guest.kernel.clone(), tasks, cpus))
    })
    .await?;
    println!("{} on {} CPUs, KASLR slide 0x{:x}", kernel.release(), kernel.cpu_count(), kernel.slide());
    for t in &tasks {
        let running = cpus.iter().find(|c| c.current.task == t.task).map(|c| format!("cpu {}", c.cpu));
        println!("{:>6} {:>6} {} {:<16} {}", t.pid, t.tgid, t.state.letter(), t.comm, running.unwrap_or_default());
    }
    Ok(())
}
