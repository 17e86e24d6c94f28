//! A running QEMU's RAM, read from the host through `/proc/PID/mem` while
//! the guest runs. Read-only.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ktrace_kernel::{CpuId, PhysicalMemory, Target};

use crate::{maps, qmp, GuestMemError};

/// One range of guest RAM and where QEMU keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// Guest physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// QEMU's (host virtual) address of its first byte.
    pub hva: u64,
}

/// Without QMP, only a guest whose RAM is one range from physical 0 is
/// mapped: below 2 GiB, QEMU's x86 machines (pc, q35) put no hole in it.
const MAX_RAM_WITHOUT_QMP: u64 = 2 << 30;

/// The RAM of a running QEMU.
#[derive(Debug)]
pub struct HostMemory {
    pid: u32,
    mem: File,
    mem_path: PathBuf,
    ranges: Vec<RamRange>,
    source: String,
    /// `/proc/PID/mem` opened for writing, once a caller asked for writes.
    writable: Option<File>,
    /// Reads served and bytes read (for the bench).
    pub stats: (u64, u64),
}

impl HostMemory {
    /// Opens the RAM of QEMU process `pid`: mapped through QMP at `qmp`
    /// (`info mtree -f`, `gpa2hva`) when given, else from its
    /// `/proc/PID/maps`.
    pub fn open(pid: u32, qmp_socket: Option<&Path>) -> Result<HostMemory, GuestMemError> {
        let (ranges, source) = match qmp_socket {
            Some(sock) => (ranges_from_qmp(sock)?, format!("QMP {}", sock.display())),
            None => (ranges_from_maps(pid)?, format!("/proc/{pid}/maps")),
        };
        let mem_path = PathBuf::from(format!("/proc/{pid}/mem"));
        let mem = File::open(&mem_path).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => GuestMemError::Permission { pid, source },
            _ => GuestMemError::Io { path: mem_path.clone(), source },
        })?;
        let host = HostMemory { pid, mem, mem_path, ranges, source, writable: None, stats: (0, 0) };
        // Opening is not reading: Yama's ptrace scope refuses at the first read.
        let first = host.ranges[0];
        let mut b = [0u8; 1];
        host.mem.read_exact_at(&mut b, first.hva).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => GuestMemError::Permission { pid, source },
            _ => GuestMemError::Io { path: host.mem_path.clone(), source },
        })?;
        Ok(host)
    }

    /// Allows [`PhysicalMemory::write_physical`] (QEMU's RAM written from
    /// the host while the guest runs). Reads stay as they are.
    pub fn allow_writes(&mut self) -> Result<(), GuestMemError> {
        let pid = self.pid;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&self.mem_path).map_err(|source| {
            match source.kind() {
                std::io::ErrorKind::PermissionDenied => GuestMemError::Permission { pid, source },
                _ => GuestMemError::Io { path: self.mem_path.clone(), source },
            }
        })?;
        self.writable = Some(file);
        Ok(())
    }

    /// The host address of guest physical `gpa..gpa + len`, all in one RAM range.
    fn host_address(&self, gpa: u64, len: usize) -> Result<u64, GuestMemError> {
        let r = self
            .ranges
            .iter()
            .find(|r| gpa >= r.gpa && gpa.saturating_add(len as u64) <= r.gpa + r.len)
            .ok_or(GuestMemError::NotRam { addr: gpa, len })?;
        Ok(r.hva + (gpa - r.gpa))
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The RAM ranges.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// How the RAM was mapped (`QMP …` or `/proc/PID/maps`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Checks the mapping against QEMU's own view: the bytes QMP's `xp`
    /// shows at `gpa` must equal what this backend reads there.
    pub fn verify_with_qmp(&mut self, qmp_socket: &Path, gpa: u64, len: usize) -> Result<(), GuestMemError> {
        let mut q = qmp::Qmp::connect(qmp_socket)?;
        let theirs = qmp::parse_xp_bytes(&q.hmp(&format!("xp /{len}xb 0x{gpa:x}"))?);
        let ours = self.read(gpa, len)?;
        if theirs != ours {
            return Err(GuestMemError::NoRam(format!(
                "QEMU's RAM as mapped through {} differs from QEMU's own view at physical 0x{gpa:x}: {ours:02x?} here, {theirs:02x?} by QMP xp",
                self.source
            )));
        }
        Ok(())
    }

    /// Reads guest physical `gpa..gpa + len` (one RAM range).
    pub fn read(&mut self, gpa: u64, len: usize) -> Result<Vec<u8>, GuestMemError> {
        let hva = self.host_address(gpa, len)?;
        let mut buf = vec![0u8; len];
        self.mem
            .read_exact_at(&mut buf, hva)
            .map_err(|source| GuestMemError::Io { path: self.mem_path.clone(), source })?;
        self.stats.0 += 1;
        self.stats.1 += len as u64;
        Ok(buf)
    }
}

impl HostMemory {
    /// Writes guest physical memory at `gpa` (one RAM range), once
    /// [`HostMemory::allow_writes`] was called.
    pub fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), GuestMemError> {
        let hva = self.host_address(gpa, bytes.len())?;
        let Some(file) = &self.writable else {
            return Err(GuestMemError::Unsupported("live reads from the host are read-only".into()));
        };
        file.write_all_at(bytes, hva).map_err(|source| GuestMemError::Io { path: self.mem_path.clone(), source })
    }
}

fn ranges_from_maps(pid: u32) -> Result<Vec<RamRange>, GuestMemError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = std::fs::read_to_string(&path).map_err(|source| GuestMemError::Io { path: path.clone(), source })?;
    let lines = maps::parse(&text);
    let ram = maps::guest_ram(&lines)
        .ok_or_else(|| GuestMemError::NoRam(format!("no anonymous read-write mapping in {}", path.display())))?;
    let len = ram.end - ram.start;
    if len > MAX_RAM_WITHOUT_QMP {
        return Err(GuestMemError::NoRam(format!(
            "the guest has more than {} GiB of RAM, which QEMU splits around the PCI hole: give --qmp SOCKET (QEMU's -qmp unix:SOCKET,server=on,wait=off) so that ktrace reads QEMU's memory map",
            MAX_RAM_WITHOUT_QMP >> 30
        )));
    }
    Ok(vec![RamRange { gpa: 0, len, hva: ram.start }])
}

fn ranges_from_qmp(socket: &Path) -> Result<Vec<RamRange>, GuestMemError> {
    let mut q = qmp::Qmp::connect(socket)?;
    let lines = qmp::parse_mtree_ram(&q.hmp("info mtree -f")?);
    if lines.is_empty() {
        return Err(GuestMemError::NoRam("QMP's info mtree -f shows no RAM in the memory address space".into()));
    }
    let mut out = Vec::new();
    for l in lines {
        let answer = q.hmp(&format!("gpa2hva 0x{:x}", l.start))?;
        let hva = qmp::parse_gpa2hva(&answer)
            .ok_or_else(|| GuestMemError::Qmp(format!("gpa2hva 0x{:x}: {}", l.start, answer.trim())))?;
        out.push(RamRange { gpa: l.start, len: l.end - l.start, hva });
    }
    Ok(out)
}

impl Target for HostMemory {
    type Error = GuestMemError;

    async fn read_memory(&mut self, addr: u64, _len: usize) -> Result<Vec<u8>, GuestMemError> {
        Err(GuestMemError::Unsupported(format!(
            "0x{addr:x}: QEMU's RAM is read by physical address only (ktrace translates virtual ones)"
        )))
    }

    async fn write_memory(&mut self, _addr: u64, _bytes: &[u8]) -> Result<(), GuestMemError> {
        Err(GuestMemError::Unsupported("live reads from the host are read-only".into()))
    }

    async fn cpus(&mut self) -> Result<Vec<CpuId>, GuestMemError> {
        Err(GuestMemError::Unsupported("QEMU's RAM does not say how many CPUs there are".into()))
    }

    async fn read_register(&mut self, cpu: CpuId, name: &str) -> Result<u64, GuestMemError> {
        Err(GuestMemError::Unsupported(format!("CPU {cpu}'s {name}: a running CPU's registers need a stop")))
    }
}

impl PhysicalMemory for HostMemory {
    async fn read_physical(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, GuestMemError> {
        self.read(addr, len)
    }

    async fn read_physical_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, GuestMemError> {
        Ok(reqs.iter().map(|&(a, l)| self.read(a, l).ok()).collect())
    }

    async fn write_physical(&mut self, addr: u64, bytes: &[u8]) -> Result<(), GuestMemError> {
        self.write(addr, bytes)
    }

    fn ram(&self) -> Option<Vec<(u64, u64)>> {
        Some(self.ranges.iter().map(|r| (r.gpa, r.gpa + r.len)).collect())
    }
}
