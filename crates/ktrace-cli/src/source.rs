//! Where `ps`, `info`, `lsmod`, `dmesg` and `bt` read the guest: the gdb
//! stub (the guest stops while ktrace reads), QEMU's RAM from the host
//! (`--live`: the guest keeps running), or a memory dump (`--core FILE`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use ktrace_guestmem::{CoreDump, HostMemory};
use ktrace_kernel::{Guest, Kernel, Release};
use ktrace_rsp::Session;

use crate::args::{explain, TargetArgs};
use crate::UsageError;

/// How to read the guest without the stub.
#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// Read QEMU's RAM from the host while the guest runs (no stop): QEMU is
    /// found by the stub address's listening socket, or `--qemu-pid`.
    #[arg(long)]
    pub live: bool,
    /// QEMU's pid, for `--live`.
    #[arg(long, value_name = "PID", requires = "live")]
    pub qemu_pid: Option<u32>,
    /// QEMU's QMP socket, for `--live`: its memory map (`info mtree -f`,
    /// `gpa2hva`) instead of `/proc/PID/maps`, and a check of the mapping.
    #[arg(long, value_name = "SOCKET", requires = "live")]
    pub qmp: Option<PathBuf>,
    /// Read a QEMU memory dump (`dump-guest-memory FILE`) instead of a guest.
    #[arg(long, value_name = "FILE", conflicts_with = "live")]
    pub core: Option<PathBuf>,
}

/// An open source (one per command: the size of a variant does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Source {
    /// The gdb stub: the guest is stopped until released (as the command said).
    Stub(Session, Release),
    /// QEMU's RAM, the guest running.
    Live(HostMemory),
    /// A dump.
    Core(CoreDump),
}

impl Source {
    /// True when the guest keeps running while it is read.
    pub fn is_live(&self) -> bool {
        matches!(self, Source::Live(_))
    }
}

/// Runs `$body` with `$mem` bound to the source as the kernel sees it,
/// turning the kernel's errors into `anyhow` errors.
#[macro_export]
macro_rules! with_memory {
    ($source:expr, $kernel:expr, |$mem:ident| $body:expr) => {
        match $source {
            $crate::source::Source::Stub(s, _) => {
                let mut $mem = $kernel.memory(s);
                $body.map_err(anyhow::Error::from)
            }
            $crate::source::Source::Live(h) => {
                let mut $mem = $kernel.memory(h);
                $body.map_err(anyhow::Error::from)
            }
            $crate::source::Source::Core(c) => {
                let mut $mem = $kernel.memory(c);
                $body.map_err(anyhow::Error::from)
            }
        }
    };
}

/// Opens the source `args` name and matches the kernel.
pub async fn open(args: &TargetArgs, source: &SourceArgs) -> Result<(Source, Kernel)> {
    let vm = Arc::new(crate::locate::vmlinux(args, source.core.as_deref()).await?);
    if let Some(path) = &source.core {
        let mut core = CoreDump::open(path).map_err(|e| UsageError(e.to_string()))?;
        let kernel = Kernel::attach_physical(&mut core, vm).await.map_err(|e| UsageError(e.to_string()))?;
        return Ok((Source::Core(core), kernel));
    }
    let addr = args.addr()?;
    if source.live {
        let pid = match source.qemu_pid {
            Some(pid) => pid,
            None => ktrace_guestmem::find_qemu(addr).map_err(|e| UsageError(e.to_string()))?,
        };
        let mut host = HostMemory::open(pid, source.qmp.as_deref()).map_err(|e| UsageError(e.to_string()))?;
        let kernel = Kernel::attach_physical(&mut host, vm.clone()).await.map_err(|e| UsageError(e.to_string()))?;
        if let Some(qmp) = &source.qmp {
            // The mapping must agree with QEMU's own view of the banner.
            let banner = kernel.runtime(vm.symbol("linux_banner")?.addr);
            let t = kernel.translation().context("a live kernel is read through its page tables")?;
            let phys = t.translate(&mut host, banner).await?.phys_of(banner);
            host.verify_with_qmp(qmp, phys, 32).map_err(|e| UsageError(e.to_string()))?;
        }
        return Ok((Source::Live(host), kernel));
    }
    let stub = args.stub()?;
    let guest = Guest::connect(&stub, vm, &args.guest()).await.map_err(|e| explain(addr, e.into()))?;
    let (session, kernel, release) = guest.into_parts();
    Ok((Source::Stub(session, release), kernel))
}

/// Lets go of the source: detaches from the stub (or leaves it stopped),
/// after `result`, which is returned.
pub async fn finish<T>(source: Source, result: Result<T>) -> Result<T> {
    match source {
        Source::Stub(session, release) => {
            let detached = release.release(session).await;
            let value = result?;
            detached.context("detaching (the guest may still be paused)")?;
            Ok(value)
        }
        Source::Live(_) | Source::Core(_) => result,
    }
}
