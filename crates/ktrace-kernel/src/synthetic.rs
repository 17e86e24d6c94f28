//! A [`Target`] over synthetic memory, for tests of code that reads the kernel.

use std::collections::{BTreeMap, HashMap};

use crate::memory::PhysicalMemory;
use crate::{CpuId, Target};

/// Sparse guest memory and per-CPU registers, filled by the test.
#[derive(Clone, Debug, Default)]
pub struct SyntheticTarget {
    regions: BTreeMap<u64, Vec<u8>>,
    registers: HashMap<(CpuId, String), u64>,
    cpus: u32,
    /// Physical memory, by 4 KiB page; pages never written read as zeros.
    phys: BTreeMap<u64, Box<[u8; 4096]>>,
    /// Number of memory requests served (to check batching and bounds);
    /// a batch of physical reads counts once.
    pub reads: usize,
}

/// The synthetic guest's RAM size: physical reads above it fail.
pub const SYNTHETIC_RAM: u64 = 4 << 30;

impl SyntheticTarget {
    /// An empty target with `cpus` CPUs.
    pub fn new(cpus: u32) -> SyntheticTarget {
        SyntheticTarget { cpus, ..SyntheticTarget::default() }
    }

    /// Maps `bytes` at `addr` (regions must not overlap).
    pub fn map(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        self.regions.insert(addr, bytes.to_vec());
        self
    }

    /// Writes into already-mapped memory, or maps a new region.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        if let Some((&start, region)) = self.regions.range_mut(..=addr).next_back() {
            let off = (addr - start) as usize;
            if off + bytes.len() <= region.len() {
                region[off..off + bytes.len()].copy_from_slice(bytes);
                return self;
            }
        }
        self.map(addr, bytes)
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&mut self, addr: u64, value: u64) -> &mut Self {
        self.write(addr, &value.to_le_bytes())
    }

    /// Writes guest physical memory.
    pub fn write_phys(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        for (i, &b) in bytes.iter().enumerate() {
            let a = addr + i as u64;
            self.phys.entry(a & !0xfff).or_insert_with(|| Box::new([0; 4096]))[(a & 0xfff) as usize] = b;
        }
        self
    }

    /// Reads a little-endian u64 of physical memory.
    pub fn phys_u64(&self, addr: u64) -> u64 {
        let mut b = [0u8; 8];
        for (i, v) in b.iter_mut().enumerate() {
            let a = addr + i as u64;
            *v = self.phys.get(&(a & !0xfff)).map_or(0, |p| p[(a & 0xfff) as usize]);
        }
        u64::from_le_bytes(b)
    }

    fn phys_bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if addr.checked_add(len as u64)? > SYNTHETIC_RAM {
            return None;
        }
        Some(
            (0..len as u64)
                .map(|i| addr + i)
                .map(|a| self.phys.get(&(a & !0xfff)).map_or(0, |p| p[(a & 0xfff) as usize]))
                .collect(),
        )
    }

    /// Sets a register of a CPU.
    pub fn set_register(&mut self, cpu: CpuId, name: &str, value: u64) -> &mut Self {
        self.registers.insert((cpu, name.to_string()), value);
        self
    }
}

/// What a [`SyntheticTarget`] cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyntheticError {
    /// Nothing is mapped at the address (or not for the whole length).
    #[error("0x{0:x}: unmapped")]
    Unmapped(u64),
    /// The test set no such register on the CPU.
    #[error("no register {name} on CPU {cpu}")]
    NoRegister {
        /// The CPU.
        cpu: CpuId,
        /// The register.
        name: String,
    },
}

impl Target for SyntheticTarget {
    type Error = SyntheticError;

    async fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, SyntheticError> {
        self.reads += 1;
        let unmapped = || SyntheticError::Unmapped(addr);
        let (&start, region) = self.regions.range(..=addr).next_back().ok_or_else(unmapped)?;
        let off = (addr - start) as usize;
        region.get(off..off + len).map(<[u8]>::to_vec).ok_or_else(unmapped)
    }

    async fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), SyntheticError> {
        let unmapped = || SyntheticError::Unmapped(addr);
        let (&start, region) = self.regions.range_mut(..=addr).next_back().ok_or_else(unmapped)?;
        let off = (addr - start) as usize;
        region.get_mut(off..off + bytes.len()).ok_or_else(unmapped)?.copy_from_slice(bytes);
        Ok(())
    }

    async fn cpus(&mut self) -> Result<Vec<CpuId>, SyntheticError> {
        Ok((0..self.cpus).map(CpuId).collect())
    }

    async fn read_register(&mut self, cpu: CpuId, name: &str) -> Result<u64, SyntheticError> {
        self.registers
            .get(&(cpu, name.to_string()))
            .copied()
            .ok_or_else(|| SyntheticError::NoRegister { cpu, name: name.into() })
    }
}

impl PhysicalMemory for SyntheticTarget {
    async fn read_physical(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, SyntheticError> {
        self.reads += 1;
        self.phys_bytes(addr, len).ok_or(SyntheticError::Unmapped(addr))
    }

    async fn read_physical_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, SyntheticError> {
        self.reads += 1;
        Ok(reqs.iter().map(|&(a, l)| self.phys_bytes(a, l)).collect())
    }

    async fn write_physical(&mut self, addr: u64, bytes: &[u8]) -> Result<(), SyntheticError> {
        if addr.saturating_add(bytes.len() as u64) > SYNTHETIC_RAM {
            return Err(SyntheticError::Unmapped(addr));
        }
        self.write_phys(addr, bytes);
        Ok(())
    }
}
