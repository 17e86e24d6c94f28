//! [`Target`] over QEMU's gdb stub.

use ktrace_rsp::{Id, Session, ThreadId, ThreadOp};

use crate::{CpuId, KernelError, Target};

/// The CPU a gdb thread stands for: QEMU numbers its threads from 1, so
/// thread N is CPU N-1.
pub fn cpu_of_thread(tid: &ThreadId) -> Option<CpuId> {
    match tid.tid {
        Id::Id(n) if n >= 1 => Some(CpuId(n as u32 - 1)),
        _ => None,
    }
}

impl Target for Session {
    async fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, KernelError> {
        Session::read_memory(self, addr, len).await.map_err(KernelError::target)
    }

    async fn read_memory_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, KernelError> {
        let replies = Session::read_memory_many(self, reqs).await.map_err(KernelError::target)?;
        Ok(replies.into_iter().map(Result::ok).collect())
    }

    async fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), KernelError> {
        Session::write_memory(self, addr, bytes).await.map_err(KernelError::target)
    }

    async fn cpus(&mut self) -> Result<Vec<CpuId>, KernelError> {
        let threads = self.threads().await.map_err(KernelError::target)?;
        let mut cpus: Vec<CpuId> = threads.iter().filter_map(cpu_of_thread).collect();
        cpus.sort();
        Ok(cpus)
    }

    async fn read_register(&mut self, cpu: CpuId, name: &str) -> Result<u64, KernelError> {
        let threads = self.threads().await.map_err(KernelError::target)?;
        let tid = threads
            .into_iter()
            .find(|t| cpu_of_thread(t) == Some(cpu))
            .ok_or_else(|| KernelError::Corrupt(format!("the stub has no thread for CPU {cpu}")))?;
        self.set_thread(ThreadOp::General, tid).await.map_err(KernelError::target)?;
        self.read_register_u64(name).await.map_err(KernelError::target)
    }
}
