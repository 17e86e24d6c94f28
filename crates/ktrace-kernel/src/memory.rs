//! Guest memory as the kernel maps it: ktrace walks the kernel's own page
//! tables (`init_top_pgt`) over a backend that reads guest *physical*
//! memory, so a read no longer depends on which CPU a stub has selected or
//! on that CPU's CR3 (user page tables under page-table isolation).
//!
//! Backends implement [`PhysicalMemory`]: the gdb stub in QEMU's physical
//! mode, QEMU's RAM read from the host while the guest runs, a memory dump.
//! [`GuestMemory`] puts a [`Translation`] on top and is itself a
//! [`Target`], so everything that reads the kernel reads through it.
//!
//! Translations are cached. Pages in the direct map and the kernel image
//! ([`AddressSpace::is_fixed_mapping`]) stay cached across resumes; every
//! other page is walked again after a resume ([`Translation::resumed`]),
//! with the tables seen before as hints, so such a walk costs one pipelined
//! round trip instead of one per level.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::x86::paging::{self, Entry, Mapping, PAGE_SIZE};
use crate::x86::AddressSpace;
use crate::{CpuId, Target};

/// A backend that reads guest physical memory. It is also a [`Target`]
/// (registers, CPUs, virtual reads where it has them), with one error type.
#[allow(async_fn_in_trait)]
pub trait PhysicalMemory: Target {
    /// Reads `len` bytes of guest physical memory.
    async fn read_physical(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, Self::Error>;

    /// Reads several ranges; an unreadable range gives `None`.
    async fn read_physical_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, Self::Error> {
        let mut out = Vec::with_capacity(reqs.len());
        for &(addr, len) in reqs {
            out.push(self.read_physical(addr, len).await.ok());
        }
        Ok(out)
    }

    /// Writes guest physical memory.
    async fn write_physical(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Self::Error>;

    /// The guest's RAM as `(start, end)` physical ranges, where the backend
    /// knows them (a host mapping, a dump); `None` for a gdb stub.
    fn ram(&self) -> Option<Vec<(u64, u64)>> {
        None
    }
}

/// Why a read through the kernel's page tables failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError<E> {
    /// The backend failed.
    #[error(transparent)]
    Target(E),
    /// No present mapping: the entry at `level` (5 or 4 = top, 1 = page
    /// table) is not present.
    #[error("0x{addr:x} is not mapped (no present entry at level {level} of the kernel's page tables)")]
    NotMapped {
        /// The virtual address.
        addr: u64,
        /// The level whose entry is not present.
        level: u8,
    },
    /// A page table itself could not be read (outside the guest's RAM).
    #[error("0x{addr:x}: the page table at physical 0x{table:x} cannot be read")]
    BadTable {
        /// The virtual address.
        addr: u64,
        /// Physical address of the entry.
        table: u64,
    },
    /// The undo log could not record a write, so it was not made.
    #[error("the undo log refused a write: {0}")]
    Journal(String),
    /// Not a canonical address in this paging mode.
    #[error("0x{addr:x} is not a canonical address")]
    NotCanonical {
        /// The address.
        addr: u64,
    },
}

/// Bounds of the caches (entries, then everything is dropped).
const MAX_CACHED: usize = 1 << 16;

#[derive(Default)]
struct Cache {
    /// Resumes so far.
    epoch: u64,
    /// Leaf mappings by (page shift, vaddr >> shift), with the epoch they were read in.
    pages: HashMap<(u32, u64), (Mapping, u64)>,
    /// Entries read since the last resume, by physical address.
    entries: HashMap<u64, u64>,
    /// Table physical address by (level, vaddr >> (12 + 9 * level)): hints
    /// of where the walk will read, checked against fresh entries.
    hints: HashMap<(u8, u64), u64>,
}

/// A walk in progress.
#[derive(Clone, Copy)]
struct Walk {
    vaddr: u64,
    level: u8,
    table: u64,
    writable: bool,
}

enum Advance {
    Done(Result<Mapping, (u8, Option<u64>)>),
    Needs(u64),
}

/// The kernel's page tables and a cache of what they say.
pub struct Translation {
    root: u64,
    space: AddressSpace,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Translation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translation")
            .field("root", &format_args!("0x{:x}", self.root))
            .field("space", &self.space)
            .finish()
    }
}

impl Translation {
    /// Translation through the top-level table at physical `root`.
    pub fn new(root: u64, space: AddressSpace) -> Translation {
        Translation { root, space, cache: Mutex::default() }
    }

    /// The page tables a CPU's CR3 points to (a process's address space,
    /// user mappings included), with the kernel's layout `space`.
    pub fn of_cr3(cr3: u64, space: &AddressSpace) -> Translation {
        Translation::new(cr3 & crate::x86::registers::CR3_ROOT, space.clone())
    }

    /// Physical address of the top-level table (`init_top_pgt`).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The address-space layout the translation was made for.
    pub fn space(&self) -> &AddressSpace {
        &self.space
    }

    /// The guest ran: page tables may have changed except for the fixed
    /// mappings.
    pub fn resumed(&self) {
        let mut c = self.lock();
        c.epoch += 1;
        c.entries.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, c: &Cache, vaddr: u64) -> Option<Mapping> {
        for shift in [30, 21, 12] {
            if let Some(&(m, epoch)) = c.pages.get(&(shift, vaddr >> shift)) {
                if m.contains(vaddr) && (epoch == c.epoch || self.space.is_fixed_mapping(vaddr)) {
                    return Some(m);
                }
            }
        }
        None
    }

    fn start(&self, vaddr: u64) -> Walk {
        Walk { vaddr, level: self.space.levels.count(), table: self.root, writable: true }
    }

    /// Follows `w` as far as the entries already read allow.
    fn advance(c: &mut Cache, w: &mut Walk) -> Advance {
        loop {
            let at = w.table + paging::entry_offset(w.level, w.vaddr);
            let Some(&entry) = c.entries.get(&at) else { return Advance::Needs(at) };
            if entry == u64::MAX {
                return Advance::Done(Err((w.level, Some(at))));
            }
            match paging::decode(w.level, entry) {
                Entry::NotPresent => return Advance::Done(Err((w.level, None))),
                Entry::Page { phys, writable } => {
                    let size = paging::page_size(w.level);
                    let m = Mapping { virt: w.vaddr & !(size - 1), phys, size, writable: w.writable && writable };
                    return Advance::Done(Ok(m));
                }
                Entry::Table { phys, writable } if w.level > 1 => {
                    w.level -= 1;
                    w.table = phys;
                    w.writable &= writable;
                    c.hints.insert((w.level, w.vaddr >> (12 + 9 * u32::from(w.level))), phys);
                }
                Entry::Table { .. } => return Advance::Done(Err((w.level, None))),
            }
        }
    }

    /// The entries the walk will read below its current level, as far as
    /// the hints go.
    fn hinted(c: &Cache, w: &Walk) -> Vec<u64> {
        let mut out = Vec::new();
        let mut level = w.level;
        while level > 1 {
            level -= 1;
            let Some(&table) = c.hints.get(&(level, w.vaddr >> (12 + 9 * u32::from(level)))) else { break };
            let at = table + paging::entry_offset(level, w.vaddr);
            if !c.entries.contains_key(&at) {
                out.push(at);
            }
        }
        out
    }

    /// Translates every address in `vaddrs`, walking all of them in
    /// lockstep: each round reads, in one batch, every entry the walks
    /// need next and those the hints say they will need.
    pub async fn translate_many<T: PhysicalMemory>(
        &self,
        target: &mut T,
        vaddrs: &[u64],
    ) -> Result<Vec<Result<Mapping, MemoryError<T::Error>>>, MemoryError<T::Error>> {
        let mut out: Vec<Option<Result<Mapping, MemoryError<T::Error>>>> = Vec::with_capacity(vaddrs.len());
        let mut walks: Vec<(usize, Walk)> = Vec::new();
        {
            let c = self.lock();
            for (i, &v) in vaddrs.iter().enumerate() {
                if !self.space.levels.is_canonical(v) {
                    out.push(Some(Err(MemoryError::NotCanonical { addr: v })));
                } else if let Some(m) = self.cached(&c, v) {
                    out.push(Some(Ok(m)));
                } else {
                    out.push(None);
                    walks.push((i, self.start(v)));
                }
            }
        }
        let mut first_round = true;
        while !walks.is_empty() {
            let mut needed: Vec<u64> = Vec::new();
            {
                let mut c = self.lock();
                walks.retain_mut(|(i, w)| match Self::advance(&mut c, w) {
                    Advance::Done(result) => {
                        out[*i] = Some(result.map_err(|(level, bad)| match bad {
                            Some(table) => MemoryError::BadTable { addr: w.vaddr, table },
                            None => MemoryError::NotMapped { addr: w.vaddr, level },
                        }));
                        false
                    }
                    Advance::Needs(at) => {
                        needed.push(at);
                        if first_round {
                            needed.extend(Self::hinted(&c, w));
                        }
                        true
                    }
                });
                let mut seen = std::collections::HashSet::new();
                needed.retain(|a| seen.insert(*a));
                if c.pages.len() > MAX_CACHED || c.hints.len() > MAX_CACHED || c.entries.len() > MAX_CACHED {
                    let epoch = c.epoch;
                    *c = Cache { epoch, ..Cache::default() };
                }
                // Leaves found: remember them.
                let epoch = c.epoch;
                for m in out.iter().flatten().flatten() {
                    let shift = m.size.trailing_zeros();
                    c.pages.insert((shift, m.virt >> shift), (*m, epoch));
                }
            }
            first_round = false;
            if needed.is_empty() {
                continue;
            }
            let reqs: Vec<(u64, usize)> = needed.iter().map(|&a| (a, 8)).collect();
            let replies = target.read_physical_many(&reqs).await.map_err(MemoryError::Target)?;
            let mut c = self.lock();
            for (at, bytes) in needed.into_iter().zip(replies) {
                let value = bytes
                    .and_then(|b| b.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))))
                    // An unreadable table: u64::MAX marks it (no real entry has
                    // every bit set: bits 52..62 would be set with 51..12).
                    .unwrap_or(u64::MAX);
                c.entries.insert(at, value);
            }
        }
        Ok(out.into_iter().map(|r| r.expect("every walk ends")).collect())
    }

    /// Translates one address.
    pub async fn translate<T: PhysicalMemory>(
        &self,
        target: &mut T,
        vaddr: u64,
    ) -> Result<Mapping, MemoryError<T::Error>> {
        self.translate_many(target, &[vaddr]).await?.pop().expect("one result")
    }

    /// The physical pieces of `len` bytes at `vaddr`, one per page it
    /// touches (adjacent pieces merged).
    pub async fn pieces<T: PhysicalMemory>(
        &self,
        target: &mut T,
        reqs: &[(u64, usize)],
    ) -> Result<Vec<Result<Vec<(u64, usize)>, MemoryError<T::Error>>>, MemoryError<T::Error>> {
        let mut pages = Vec::new();
        let mut spans = Vec::with_capacity(reqs.len());
        for &(addr, len) in reqs {
            let start = pages.len();
            let mut at = addr;
            let end = addr.saturating_add(len as u64);
            while at < end || (len == 0 && at == addr && pages.len() == start) {
                pages.push(at);
                at = (at & !(PAGE_SIZE - 1)).saturating_add(PAGE_SIZE);
                if len == 0 {
                    break;
                }
            }
            spans.push(start..pages.len());
        }
        let mut maps = self.translate_many(target, &pages).await?.into_iter().map(Some).collect::<Vec<_>>();
        let mut out = Vec::with_capacity(reqs.len());
        for (&(addr, len), span) in reqs.iter().zip(spans) {
            let end = addr.saturating_add(len as u64);
            let mut pieces: Vec<(u64, usize)> = Vec::new();
            let mut failed = None;
            for k in span {
                let v = pages[k];
                match maps[k].take().expect("taken once") {
                    Ok(m) => {
                        let page_end = (v & !(PAGE_SIZE - 1)).saturating_add(PAGE_SIZE).min(end);
                        let (p, n) = (m.phys_of(v), (page_end - v) as usize);
                        match pieces.last_mut() {
                            Some(last) if last.0 + last.1 as u64 == p => last.1 += n,
                            _ => pieces.push((p, n)),
                        }
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            out.push(match failed {
                Some(e) => Err(e),
                None => Ok(pieces),
            });
        }
        Ok(out)
    }
}

/// Where a write went: guest physical memory, or a virtual address through
/// the target's own translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrittenTo {
    /// A guest physical address, and the virtual address it was written at.
    Physical {
        /// The physical address.
        phys: u64,
        /// The virtual address the kernel sees it at.
        virt: u64,
    },
    /// A virtual address (a target without a translation).
    Virtual(u64),
}

/// Told of every write before it is made (a write-ahead undo log): what
/// was there and what goes there, so that another process can put the
/// guest back if ktrace dies.
pub trait WriteJournal: Send + Sync {
    /// Records a write of `new` over `old` at `at`. An error stops the write.
    fn record(&self, at: WrittenTo, old: &[u8], new: &[u8]) -> std::io::Result<()>;
}

/// A backend read through the kernel's page tables: a [`Target`] whose
/// virtual reads are ktrace's own translation and physical reads. Without
/// a translation (a stub with no physical mode, synthetic memory) reads go
/// to the backend's own virtual reads.
pub struct GuestMemory<'a, T> {
    target: &'a mut T,
    translation: Option<&'a Translation>,
    /// For user addresses: the page tables of the stopped task's process.
    user: Option<&'a Translation>,
    journal: Option<&'a dyn WriteJournal>,
}

impl<'a, T: PhysicalMemory> GuestMemory<'a, T> {
    /// `target` through `translation` (or its own virtual reads).
    pub fn new(target: &'a mut T, translation: Option<&'a Translation>) -> GuestMemory<'a, T> {
        GuestMemory { target, translation, user: None, journal: None }
    }

    /// Reads of user addresses through `user` (a process's page tables,
    /// e.g. rooted at a stopped CPU's CR3) instead of the kernel's, which
    /// map no user memory. Writes stay in kernel space.
    pub fn with_user_space(mut self, user: Option<&'a Translation>) -> GuestMemory<'a, T> {
        self.user = user;
        self
    }

    /// The translation for reads that start at `addr`.
    fn reads_at(&self, addr: u64) -> Option<&'a Translation> {
        match (self.user, self.translation) {
            (Some(u), Some(k)) if !k.space().is_kernel(addr) => Some(u),
            _ => self.translation,
        }
    }

    /// Every write recorded in `journal` first.
    pub fn with_journal(mut self, journal: Option<&'a dyn WriteJournal>) -> GuestMemory<'a, T> {
        self.journal = journal;
        self
    }

    /// The backend.
    pub fn backend(&mut self) -> &mut T {
        self.target
    }
}

impl<T: PhysicalMemory> Target for GuestMemory<'_, T> {
    type Error = MemoryError<T::Error>;

    async fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, Self::Error> {
        let Some(t) = self.reads_at(addr) else {
            return self.target.read_memory(addr, len).await.map_err(MemoryError::Target);
        };
        let pieces = t.pieces(self.target, &[(addr, len)]).await?.pop().expect("one")?;
        let mut out = Vec::with_capacity(len);
        let replies = self.target.read_physical_many(&pieces).await.map_err(MemoryError::Target)?;
        for (bytes, &(p, _)) in replies.into_iter().zip(&pieces) {
            let Some(bytes) = bytes else { return Err(MemoryError::BadTable { addr, table: p }) };
            out.extend(bytes);
        }
        Ok(out)
    }

    async fn read_memory_many(&mut self, reqs: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, Self::Error> {
        // One address space per batch: the user one only when every read is there.
        let all_user =
            !reqs.is_empty() && reqs.iter().all(|r| self.translation.is_some_and(|k| !k.space().is_kernel(r.0)));
        let chosen = if all_user && self.user.is_some() { self.user } else { self.translation };
        let Some(t) = chosen else {
            return self.target.read_memory_many(reqs).await.map_err(MemoryError::Target);
        };
        let pieces = t.pieces(self.target, reqs).await?;
        let flat: Vec<(u64, usize)> =
            pieces.iter().flat_map(|p| p.as_ref().map(|v| v.as_slice()).unwrap_or(&[])).copied().collect();
        let mut replies = self.target.read_physical_many(&flat).await.map_err(MemoryError::Target)?.into_iter();
        Ok(pieces
            .into_iter()
            .map(|p| {
                let p = p.ok()?;
                let mut out = Vec::new();
                let mut ok = true;
                for _ in &p {
                    match replies.next().flatten() {
                        Some(b) => out.extend(b),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            })
            .collect())
    }

    async fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Self::Error> {
        let Some(t) = self.translation else {
            if let Some(j) = self.journal {
                let old = self.target.read_memory(addr, bytes.len()).await.map_err(MemoryError::Target)?;
                j.record(WrittenTo::Virtual(addr), &old, bytes).map_err(|e| MemoryError::Journal(e.to_string()))?;
            }
            return self.target.write_memory(addr, bytes).await.map_err(MemoryError::Target);
        };
        let pieces = t.pieces(self.target, &[(addr, bytes.len())]).await?.pop().expect("one")?;
        let mut done = 0;
        for (p, n) in pieces {
            let new = &bytes[done..done + n];
            if let Some(j) = self.journal {
                let old = self.target.read_physical(p, n).await.map_err(MemoryError::Target)?;
                let at = WrittenTo::Physical { phys: p, virt: addr + done as u64 };
                j.record(at, &old, new).map_err(|e| MemoryError::Journal(e.to_string()))?;
            }
            self.target.write_physical(p, new).await.map_err(MemoryError::Target)?;
            done += n;
        }
        Ok(())
    }

    async fn cpus(&mut self) -> Result<Vec<CpuId>, Self::Error> {
        self.target.cpus().await.map_err(MemoryError::Target)
    }

    async fn read_register(&mut self, cpu: CpuId, name: &str) -> Result<u64, Self::Error> {
        self.target.read_register(cpu, name).await.map_err(MemoryError::Target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticTarget;
    use crate::x86::paging::PagingLevels;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    const ROOT: u64 = 0x10_0000;

    /// Page tables in synthetic physical memory: `vaddr` → `phys` with a
    /// leaf at `leaf_level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB).
    fn map(t: &mut SyntheticTarget, levels: PagingLevels, vaddr: u64, phys: u64, leaf_level: u8, next: &mut u64) {
        let mut table = ROOT;
        for level in (leaf_level + 1..=levels.count()).rev() {
            let at = table + paging::entry_offset(level, vaddr);
            let existing = t.phys_u64(at);
            table = if existing & 1 != 0 {
                existing & 0x000f_ffff_ffff_f000
            } else {
                *next += PAGE_SIZE;
                t.write_phys(at, &(*next | 0x63).to_le_bytes());
                *next
            };
        }
        let large = if leaf_level > 1 { 0x80 } else { 0 };
        t.write_phys(table + paging::entry_offset(leaf_level, vaddr), &(phys | 0x63 | large).to_le_bytes());
    }

    fn space(levels: PagingLevels) -> AddressSpace {
        let five = levels == PagingLevels::Five;
        AddressSpace {
            page_offset_base: Some(if five { 0xff11_0000_0000_0000 } else { 0xffff_8880_0000_0000 }),
            vmalloc_base: Some(if five { 0xffa0_0000_0000_0000 } else { 0xffff_c900_0000_0000 }),
            ..AddressSpace::minimal(levels, (0xffff_ffff_8000_0000, 0xffff_ffff_c000_0000))
        }
    }

    #[test]
    fn valid_walks_of_every_page_size_and_both_modes() {
        for levels in [PagingLevels::Four, PagingLevels::Five] {
            let mut t = SyntheticTarget::new(1);
            let mut next = 0x20_0000;
            let stack = if levels == PagingLevels::Five { 0xff77_a81e_000d_0000 } else { 0xffff_c900_000d_0000 };
            map(&mut t, levels, stack, 0x345_6000, 1, &mut next);
            map(&mut t, levels, 0xffff_ffff_8200_0000, 0x200_0000, 2, &mut next);
            map(&mut t, levels, 0xffff_8880_4000_0000, 0x4000_0000, 3, &mut next);
            t.write_phys(0x345_6e90, b"stack!");
            let tr = Translation::new(ROOT, space(levels));
            let m = block_on(tr.translate(&mut t, stack + 0xe90)).expect("4 KiB page");
            assert_eq!(m.phys_of(stack + 0xe90), 0x345_6e90);
            let m = block_on(tr.translate(&mut t, 0xffff_ffff_8212_3456)).expect("2 MiB page");
            assert_eq!((m.phys_of(0xffff_ffff_8212_3456), m.size), (0x212_3456, 2 << 20));
            let m = block_on(tr.translate(&mut t, 0xffff_8880_7fff_fff8)).expect("1 GiB page");
            assert_eq!((m.phys_of(0xffff_8880_7fff_fff8), m.size), (0x7fff_fff8, 1 << 30));
            let err = block_on(tr.translate(&mut t, stack + 0x1000)).expect_err("not mapped");
            assert!(matches!(err, MemoryError::NotMapped { level: 1, .. }), "{err}");
            let mut mem = GuestMemory::new(&mut t, Some(&tr));
            assert_eq!(block_on(mem.read_memory(stack + 0xe90, 6)).unwrap(), b"stack!");
        }
    }

    #[test]
    fn valid_cache_keeps_fixed_mappings_and_rewalks_the_rest_in_one_round_trip() {
        let levels = PagingLevels::Four;
        let mut t = SyntheticTarget::new(1);
        let mut next = 0x20_0000;
        let stack = 0xffff_c900_0041_b000; // vmalloc area of `space`
        map(&mut t, levels, stack, 0x345_6000, 1, &mut next);
        map(&mut t, levels, 0xffff_ffff_8200_0000, 0x200_0000, 2, &mut next);
        let tr = Translation::new(ROOT, space(levels));
        block_on(tr.translate(&mut t, stack)).unwrap();
        block_on(tr.translate(&mut t, 0xffff_ffff_8200_0000)).unwrap();
        tr.resumed();
        let reads = t.reads;
        block_on(tr.translate(&mut t, 0xffff_ffff_8200_1000)).unwrap();
        assert_eq!(t.reads, reads, "the image's 2 MiB page is still known");
        // The stack is remapped while the guest ran: the walk sees it.
        map(&mut t, levels, stack, 0x999_9000, 1, &mut next);
        let m = block_on(tr.translate(&mut t, stack)).unwrap();
        assert_eq!(m.phys, 0x999_9000);
        assert_eq!(t.reads - reads, 1, "one pipelined batch for all four levels");
    }

    #[test]
    fn valid_reads_across_pages_and_many_at_once() {
        let levels = PagingLevels::Four;
        let mut t = SyntheticTarget::new(1);
        let mut next = 0x20_0000;
        let v = 0xffff_c900_0000_0000;
        map(&mut t, levels, v, 0x500_0000, 1, &mut next);
        map(&mut t, levels, v + 0x1000, 0x300_0000, 1, &mut next);
        t.write_phys(0x500_0ffc, b"abcd");
        t.write_phys(0x300_0000, b"efgh");
        let tr = Translation::new(ROOT, space(levels));
        let mut mem = GuestMemory::new(&mut t, Some(&tr));
        assert_eq!(block_on(mem.read_memory(v + 0xffc, 8)).unwrap(), b"abcdefgh");
        let many = block_on(mem.read_memory_many(&[(v + 0xffc, 4), (v + 0x2000, 4), (v + 0x1000, 2)])).unwrap();
        assert_eq!(many, vec![Some(b"abcd".to_vec()), None, Some(b"ef".to_vec())]);
        block_on(mem.write_memory(v + 0xffe, b"XYZW")).unwrap();
        assert_eq!(block_on(mem.read_memory(v + 0xffc, 8)).unwrap(), b"abXYZWgh");
    }
}
