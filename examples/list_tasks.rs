//! The kernel crate on its own: list the guest's tasks and what each CPU runs.
//!
//! cargo run -p ktrace-examples --example list_tasks -- :1234 ./vmlinux

use std::sync::Arc;

use ktrace_kernel::Kernel;
use ktrace_rsp::{ClientConfig, Session};
use ktrace_symbols::Vmlinux;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, vmlinux, _) = ktrace_examples::addr_and_vmlinux("list_tasks ADDR VMLINUX");
    let vmlinux = Arc::new(Vmlinux::open(vmlinux)?);
    let (mut session, _) = Session::connect(&addr.parse()?, ClientConfig::default()).await?;
    // Read everything while the guest is stopped, then always detach.
    let result = async {
        let kernel = Kernel::attach_stub(&mut session, vmlinux).await?;
        let mut mem = kernel.memory(&mut session);
        let tasks = kernel.tasks(&mut mem).await?;
        let cpus = kernel.cpu_states(&mut mem).await?;
        Ok::<_, ktrace_kernel::KernelError<ktrace_kernel::StubMemoryError>>((kernel, tasks, cpus))
    }
    .await;
    session.detach().await?;
    let (kernel, tasks, cpus) = result?;
    println!("{} on {} CPUs, KASLR slide 0x{:x}", kernel.release(), kernel.cpu_count(), kernel.slide());
    for t in &tasks {
        let running = cpus.iter().find(|c| c.current.task == t.task).map(|c| format!("cpu {}", c.cpu));
        println!("{:>6} {:>6} {} {:<16} {}", t.pid, t.tgid, t.state.letter(), t.comm, running.unwrap_or_default());
    }
    Ok(())
}
