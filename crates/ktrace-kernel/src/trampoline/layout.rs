//! Where things sit in the trampoline's region, and the header that lets a
//! later ktrace recognise (and clean up after) a trampoline left behind.
//!
//! ```text
//! +0    magic (16 bytes)            +16  hit page address    +24 slot count, version
//! +32   filter data: task mask/want, tgid mask/want, comm mask/want, CPU mask
//! +128  the patched site of each slot (0: free)
//! +256  the filter body             +416 one 16-byte entry per slot
//! ```
//! The hit instructions are on a page of their own: slot `i`'s at
//! `hit_page + 16 * i`; then the `--if` conditions (their count, then each,
//! see [`crate::trampoline::condition`]) at 0x100 and the routine that
//! evaluates them at 0x200; the record routine's data and code at 0x400.

/// Marks a region as ktrace's trampoline.
pub const MAGIC: [u8; 16] = *b"ktrace:tramp:v1\0";
/// Format version in the header.
pub const VERSION: u32 = 2;
/// Patched sites one trampoline serves.
pub const SLOTS: usize = 16;
/// CPUs the CPU mask can name.
pub const MAX_CPUS: usize = 256;

pub(crate) const HIT_PAGE: usize = 16;
pub(crate) const TARGET_MASK: usize = 32;
pub(crate) const TARGET: usize = 40;
pub(crate) const TGID_MASK: usize = 48;
pub(crate) const TGID: usize = 52;
pub(crate) const COMM_MASK: usize = 64;
pub(crate) const COMM_WANT: usize = 80;
pub(crate) const CPU_MASK: usize = 96;
pub(crate) const DATA_END: usize = CPU_MASK + MAX_CPUS / 8;
pub(crate) const SITES: usize = 128;
pub(crate) const BODY: usize = 256;
pub(crate) const BODY_MAX: usize = 160;
pub(crate) const ENTRIES: usize = BODY + BODY_MAX;
pub(crate) const ENTRY_SIZE: usize = 16;
/// Bytes of the region.
pub const REGION_LEN: usize = ENTRIES + SLOTS * ENTRY_SIZE;
/// Spacing of the hit instructions on the hit page.
pub(crate) const HIT_STRIDE: u64 = 16;

const _: () = assert!(DATA_END == SITES && SITES + SLOTS * 8 == BODY);

/// Where the conditions are on the hit page (after the hit stubs): their
/// count (a `u32` in a quadword), then each.
pub const CONDITIONS: u64 = 0x100;
pub(crate) use super::condition::{CONDITION_SIZE, MAX_CONDITIONS};
/// The bytes of the conditions on the hit page.
pub(crate) const CONDITIONS_LEN: usize = 8 + MAX_CONDITIONS * CONDITION_SIZE;
/// Where the routine evaluating them is on the hit page.
pub const CONDITIONS_CODE: u64 = 0x200;
/// The most bytes that routine may take (checked by a test).
pub const CONDITIONS_CODE_MAX: u64 = 0x100;

/// Where the record routine's data is on the hit page (after the conditions).
pub const RECORD_DATA: u64 = 0x400;
/// Where the record routine is on the hit page.
pub const RECORD_CODE: u64 = 0x440;
/// The most bytes the routine may take (checked by a test).
pub const RECORD_CODE_MAX: u64 = 0x240;

const _: () = assert!(
    SLOTS as u64 * HIT_STRIDE <= CONDITIONS
        && CONDITIONS + CONDITIONS_LEN as u64 <= CONDITIONS_CODE
        && CONDITIONS_CODE + CONDITIONS_CODE_MAX <= RECORD_DATA
        && RECORD_CODE + RECORD_CODE_MAX <= 4096
);

/// The region (header, data, code) and the hit page, at runtime addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Start of the region (16-byte aligned).
    pub base: u64,
    /// The page holding the hit instructions.
    pub hit_page: u64,
}

impl Region {
    /// The entry a site patched into `slot` calls.
    pub fn entry(&self, slot: usize) -> u64 {
        self.base + (ENTRIES + slot * ENTRY_SIZE) as u64
    }

    /// Slot `slot`'s hit instruction (ktrace's breakpoint).
    pub fn hit(&self, slot: usize) -> u64 {
        self.hit_page + slot as u64 * HIT_STRIDE
    }

    /// The slot whose hit instruction is at `addr`.
    pub fn slot_of_hit(&self, addr: u64) -> Option<usize> {
        let off = addr.checked_sub(self.hit_page)?;
        (off % HIT_STRIDE == 0 && (off / HIT_STRIDE) < SLOTS as u64).then_some((off / HIT_STRIDE) as usize)
    }

    /// Whether `addr` is inside the region's code, the hit instructions or
    /// the record routine.
    pub fn contains_code(&self, addr: u64) -> bool {
        (self.base + BODY as u64..self.base + REGION_LEN as u64).contains(&addr)
            || (self.hit_page..self.hit_page + SLOTS as u64 * HIT_STRIDE).contains(&addr)
            || self.conditions_offset(addr).is_some()
            || self.record_offset(addr).is_some()
    }

    /// The offset of `addr` in the conditions' routine, when it is there.
    pub fn conditions_offset(&self, addr: u64) -> Option<u64> {
        let start = self.hit_page + CONDITIONS_CODE;
        (start..start + CONDITIONS_CODE_MAX).contains(&addr).then(|| addr - start)
    }

    /// The offset of `addr` in the record routine, when it is there.
    pub fn record_offset(&self, addr: u64) -> Option<u64> {
        let start = self.hit_page + RECORD_CODE;
        (start..start + RECORD_CODE_MAX).contains(&addr).then(|| addr - start)
    }
}

/// What a header says: the hit page and each slot's patched site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The hit page it was built with.
    pub hit_page: u64,
    /// The patched site of each slot (`None`: free).
    pub sites: [Option<u64>; SLOTS],
}

impl Header {
    /// Decodes the first [`BODY`] bytes of a region; `None` without the magic.
    pub fn decode(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < BODY || bytes[..16] != MAGIC {
            return None;
        }
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or_default());
        let mut sites = [None; SLOTS];
        for (i, s) in sites.iter_mut().enumerate() {
            *s = Some(u64_at(SITES + 8 * i)).filter(|&a| a != 0);
        }
        Some(Header { hit_page: u64_at(HIT_PAGE), sites })
    }

    /// The header's first [`TARGET_MASK`] bytes (magic, hit page, counts).
    pub(crate) fn prefix(hit_page: u64) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&hit_page.to_le_bytes());
        b.extend_from_slice(&(SLOTS as u32).to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        b
    }
}

/// The filter the body evaluates, as data. A field left `None` matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterData {
    /// Only this task (`task_struct` address; 0 matches nothing).
    pub task: Option<u64>,
    /// Only this tgid.
    pub tgid: Option<i32>,
    /// Only this exact comm (at most 15 bytes).
    pub comm: Option<Vec<u8>>,
    /// Only these CPUs (each below [`MAX_CPUS`]).
    pub cpus: Option<Vec<u32>>,
    /// `--if`, compiled: all must hold (at most [`MAX_CONDITIONS`]).
    pub conditions: Vec<super::Condition>,
}

impl FilterData {
    /// The bytes from [`TARGET_MASK`] to [`SITES`].
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; DATA_END - TARGET_MASK];
        let mut put = |at: usize, v: &[u8]| b[at - TARGET_MASK..at - TARGET_MASK + v.len()].copy_from_slice(v);
        if let Some(task) = self.task {
            put(TARGET_MASK, &u64::MAX.to_le_bytes());
            put(TARGET, &task.to_le_bytes());
        }
        if let Some(tgid) = self.tgid {
            put(TGID_MASK, &u32::MAX.to_le_bytes());
            put(TGID, &tgid.to_le_bytes());
        }
        if let Some(comm) = &self.comm {
            // The name and its NUL: the kernel does not clear the bytes after it.
            let n = (comm.len() + 1).min(16);
            put(COMM_MASK, &vec![0xff; n]);
            let mut want = comm.clone();
            want.push(0);
            want.truncate(16);
            put(COMM_WANT, &want);
        }
        let mut mask = [0u8; MAX_CPUS / 8];
        match &self.cpus {
            Some(cpus) => {
                for &c in cpus.iter().filter(|&&c| (c as usize) < MAX_CPUS) {
                    mask[c as usize / 8] |= 1 << (c % 8);
                }
            }
            None => mask = [0xff; MAX_CPUS / 8],
        }
        put(CPU_MASK, &mask);
        b
    }

    /// The bytes at [`CONDITIONS`] on the hit page: the count, then each
    /// condition (unused ones zero).
    pub fn encode_conditions(&self) -> Vec<u8> {
        let n = self.conditions.len().min(MAX_CONDITIONS);
        let mut b = (n as u64).to_le_bytes().to_vec();
        for c in &self.conditions[..n] {
            b.extend_from_slice(&c.encode());
        }
        b.resize(CONDITIONS_LEN, 0);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_slots_and_hits() {
        let r = Region { base: 0x1000, hit_page: 0x3000 };
        assert_eq!(r.entry(0), 0x1000 + ENTRIES as u64);
        assert_eq!(r.hit(2), 0x3020);
        assert_eq!(r.slot_of_hit(0x3020), Some(2));
        assert_eq!(r.slot_of_hit(0x3021), None);
        assert_eq!(r.slot_of_hit(0x3000 + 16 * SLOTS as u64), None);
        assert!(r.contains_code(0x1000 + BODY as u64));
        assert!(!r.contains_code(0x1000), "the header is not code");
        assert!(r.contains_code(0x3021));
        const { assert!(REGION_LEN <= 1024) };
    }

    #[test]
    fn header_round_trip() {
        let mut bytes = Header::prefix(0xffff_ffff_81a1_b000);
        bytes.resize(BODY, 0);
        bytes[SITES + 8..SITES + 16].copy_from_slice(&0xffff_ffff_816c_e920u64.to_le_bytes());
        let h = Header::decode(&bytes).expect("magic");
        assert_eq!(h.hit_page, 0xffff_ffff_81a1_b000);
        assert_eq!(h.sites[0], None);
        assert_eq!(h.sites[1], Some(0xffff_ffff_816c_e920));
        bytes[0] = 0xcc;
        assert_eq!(Header::decode(&bytes), None);
    }

    #[test]
    fn filter_data_masks() {
        let any = FilterData::default().encode();
        assert!(any[..CPU_MASK - TARGET_MASK].iter().all(|&b| b == 0), "no task, tgid or comm test");
        assert!(any[CPU_MASK - TARGET_MASK..].iter().all(|&b| b == 0xff), "every CPU");
        let f = FilterData {
            task: Some(0xffff_8880_0123_4500),
            tgid: Some(91),
            comm: Some(b"testprog".to_vec()),
            cpus: Some(vec![1, 9]),
            conditions: Vec::new(),
        }
        .encode();
        let at = |o: usize| o - TARGET_MASK;
        assert_eq!(&f[at(TARGET)..at(TARGET) + 8], &0xffff_8880_0123_4500u64.to_le_bytes());
        assert_eq!(&f[at(TGID)..at(TGID) + 4], &91i32.to_le_bytes());
        assert_eq!(&f[at(COMM_MASK)..at(COMM_MASK) + 10], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(&f[at(COMM_WANT)..at(COMM_WANT) + 9], b"testprog\0");
        assert_eq!(&f[at(CPU_MASK)..at(CPU_MASK) + 2], &[0b10, 0b10]);
    }
}
