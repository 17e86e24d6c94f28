//! The adapter from `ktrace-rsp` to [`Target`] (cargo feature `rsp`): a
//! gdb stub's [`Session`] reads guest memory and registers, and its errors
//! stay [`RspError`]s. The only module of this crate that knows RSP.

use ktrace_rsp::{Id, RspError, Session, ThreadId, ThreadOp};

use crate::{CpuId, Target};

/// The CPU a gdb thread stands for: QEMU numbers its threads from 1, so
/// thread N is CPU N-1.
pub fn cpu_of_thread(tid: &ThreadId) -> Option<CpuId> {
    match tid.tid {
        Id::Id(n) if n >= 1 => Some(CpuId(n as u32 - 1)),
        _ => None,
    }
}

impl Target for Session {
    type Error = RspError;

    async fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, RspError> {
        Session::read_memory(self, addr, len).await
    }

    async fn read_memory_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, RspError> {
        let replies = Session::read_memory_many(self, reqs).await?;
        Ok(replies.into_iter().map(Result::ok).collect())
    }

    async fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), RspError> {
        Session::write_memory(self, addr, bytes).await
    }

    async fn cpus(&mut self) -> Result<Vec<CpuId>, RspError> {
        let threads = self.threads().await?;
        let mut cpus: Vec<CpuId> = threads.iter().filter_map(cpu_of_thread).collect();
        cpus.sort();
        Ok(cpus)
    }

    async fn read_register(&mut self, cpu: CpuId, name: &str) -> Result<u64, RspError> {
        let threads = self.threads().await?;
        let tid = threads.into_iter().find(|t| cpu_of_thread(t) == Some(cpu)).ok_or_else(|| {
            RspError::UnexpectedReply { request: "qfThreadInfo".into(), reply: format!("no thread for CPU {cpu}") }
        })?;
        self.set_thread(ThreadOp::General, tid).await?;
        self.read_register_u64(name).await
    }
}

/// QEMU's physical mode (`Qqemu.PhyMemMode`): reads and writes of guest
/// physical memory, whatever page tables the selected CPU runs on.
impl crate::PhysicalMemory for Session {
    async fn read_physical(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, RspError> {
        Session::read_physical(self, addr, len).await
    }

    async fn read_physical_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, RspError> {
        let replies = Session::read_physical_many(self, reqs).await?;
        Ok(replies.into_iter().map(Result::ok).collect())
    }

    async fn write_physical(&mut self, addr: u64, bytes: &[u8]) -> Result<(), RspError> {
        Session::write_physical(self, addr, bytes).await
    }
}

/// What reading the kernel over a gdb stub can fail with.
pub type StubMemoryError = crate::MemoryError<RspError>;

impl crate::Kernel {
    /// Matches `vmlinux` to the guest behind a gdb stub: through QEMU's
    /// physical mode and ktrace's own walk of the kernel's page tables where
    /// the stub has it ([`crate::Kernel::attach_physical`]), else through the
    /// stub's own virtual reads ([`crate::Kernel::attach`]). Read the kernel
    /// through [`crate::Kernel::memory`] from then on.
    pub async fn attach_stub(
        session: &mut Session,
        vmlinux: std::sync::Arc<ktrace_symbols::Vmlinux>,
    ) -> Result<crate::Kernel, crate::KernelError<StubMemoryError>> {
        if session.has_physical_memory() {
            match crate::Kernel::attach_physical(session, vmlinux.clone()).await {
                // A file that lacks what the physical view needs (another
                // kernel, a fixture): the stub's own view says why, with
                // both banners where they differ.
                Err(crate::KernelError::Symbols(_)) => {}
                other => return other,
            }
        }
        crate::Kernel::attach(session, vmlinux).await.map_err(|e| e.map_target(crate::MemoryError::Target))
    }
}
