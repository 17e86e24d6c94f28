//! A QEMU memory dump (`dump-guest-memory`, ELF): guest RAM by physical
//! address from its `PT_LOAD` segments, each CPU's registers from its
//! `NT_PRSTATUS` note (`struct elf_prstatus`, whose `pr_reg` is x86-64's
//! `struct user_regs_struct`).

use std::path::{Path, PathBuf};

use ktrace_kernel::{CpuId, PhysicalMemory, Target};
use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::Endianness;

use crate::GuestMemError;

/// Offset of `pr_reg` in x86-64's `struct elf_prstatus`.
const PR_REG: usize = 112;
/// `struct user_regs_struct`, in order.
const USER_REGS: [&str; 27] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax",
    "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
];

#[derive(Debug, Clone, Copy)]
struct Load {
    paddr: u64,
    offset: u64,
    filesz: u64,
}

/// A memory dump, mapped.
pub struct CoreDump {
    path: PathBuf,
    map: memmap2::Mmap,
    loads: Vec<Load>,
    /// Per CPU: `pr_reg` words.
    cpus: Vec<Vec<u64>>,
}

impl std::fmt::Debug for CoreDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreDump").field("path", &self.path).field("cpus", &self.cpus.len()).finish()
    }
}

impl CoreDump {
    /// Opens a dump written by QEMU's `dump-guest-memory` (without paging:
    /// the segments carry physical addresses).
    pub fn open(path: impl AsRef<Path>) -> Result<CoreDump, GuestMemError> {
        let path = path.as_ref().to_path_buf();
        let bad = |why: &str| GuestMemError::BadDump { path: path.clone(), why: why.to_string() };
        let file = std::fs::File::open(&path).map_err(|source| GuestMemError::Io { path: path.clone(), source })?;
        // SAFETY: mapped read-only; like every core reader we assume nobody
        // truncates the dump while it is open.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|source| GuestMemError::Io { path: path.clone(), source })?;
        let elf = ElfFile64::<Endianness>::parse(&map[..]).map_err(|e| bad(&format!("not an ELF memory dump: {e}")))?;
        let e = elf.endian();
        if elf.elf_header().e_type.get(e) != object::elf::ET_CORE {
            return Err(bad("not a core file (QEMU's dump-guest-memory writes ET_CORE)"));
        }
        let mut loads = Vec::new();
        let mut cpus = Vec::new();
        for ph in elf.elf_program_headers() {
            match ph.p_type(e) {
                object::elf::PT_LOAD => {
                    loads.push(Load { paddr: ph.p_paddr(e), offset: ph.p_offset(e), filesz: ph.p_filesz(e) })
                }
                object::elf::PT_NOTE => {
                    let Ok(Some(mut notes)) = ph.notes(e, &map[..]) else { continue };
                    while let Ok(Some(note)) = notes.next() {
                        if note.n_type(e) == object::elf::NT_PRSTATUS && note.name() == b"CORE" {
                            let desc = note.desc();
                            let regs = desc
                                .get(PR_REG..PR_REG + USER_REGS.len() * 8)
                                .ok_or_else(|| bad("short NT_PRSTATUS note"))?
                                .chunks_exact(8)
                                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                                .collect();
                            cpus.push(regs);
                        }
                    }
                }
                _ => {}
            }
        }
        if loads.is_empty() {
            return Err(bad("no PT_LOAD segments"));
        }
        if loads.iter().any(|l| l.offset.saturating_add(l.filesz) > map.len() as u64) {
            return Err(bad("a segment lies past the end of the file (a truncated dump?)"));
        }
        Ok(CoreDump { path, map, loads, cpus })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, GuestMemError> {
        let seg = self
            .loads
            .iter()
            .find(|l| addr >= l.paddr && addr.saturating_add(len as u64) <= l.paddr + l.filesz)
            .ok_or(GuestMemError::NotRam { addr, len })?;
        let at = (seg.offset + (addr - seg.paddr)) as usize;
        Ok(self.map[at..at + len].to_vec())
    }
}

impl Target for CoreDump {
    type Error = GuestMemError;

    async fn read_memory(&mut self, addr: u64, _len: usize) -> Result<Vec<u8>, GuestMemError> {
        Err(GuestMemError::Unsupported(format!("0x{addr:x}: a memory dump is read by physical address only")))
    }

    async fn write_memory(&mut self, _addr: u64, _bytes: &[u8]) -> Result<(), GuestMemError> {
        Err(GuestMemError::Unsupported("a memory dump is read-only".into()))
    }

    async fn cpus(&mut self) -> Result<Vec<CpuId>, GuestMemError> {
        if self.cpus.is_empty() {
            return Err(GuestMemError::Unsupported("the dump has no NT_PRSTATUS notes".into()));
        }
        Ok((0..self.cpus.len() as u32).map(CpuId).collect())
    }

    async fn read_register(&mut self, cpu: CpuId, name: &str) -> Result<u64, GuestMemError> {
        let regs = self
            .cpus
            .get(cpu.0 as usize)
            .ok_or_else(|| GuestMemError::Unsupported(format!("the dump has no CPU {cpu}")))?;
        let i = USER_REGS
            .iter()
            .position(|r| *r == name)
            .ok_or_else(|| GuestMemError::Unsupported(format!("the dump's NT_PRSTATUS has no register {name}")))?;
        Ok(regs[i])
    }
}

impl PhysicalMemory for CoreDump {
    async fn read_physical(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, GuestMemError> {
        self.read(addr, len)
    }

    async fn read_physical_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, GuestMemError> {
        Ok(reqs.iter().map(|&(a, l)| self.read(a, l).ok()).collect())
    }

    async fn write_physical(&mut self, _addr: u64, _bytes: &[u8]) -> Result<(), GuestMemError> {
        Err(GuestMemError::Unsupported("a memory dump is read-only".into()))
    }

    fn ram(&self) -> Option<Vec<(u64, u64)>> {
        Some(self.loads.iter().map(|l| (l.paddr, l.paddr + l.filesz)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_files_are_refused_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("ktrace-core-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_elf = dir.join("not-elf");
        std::fs::write(&not_elf, b"hello").unwrap();
        let e = CoreDump::open(&not_elf).unwrap_err().to_string();
        assert!(e.contains("not an ELF memory dump"), "{e}");
        let missing = CoreDump::open(dir.join("missing")).unwrap_err();
        assert!(matches!(missing, GuestMemError::Io { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
