//! The x86-64 page-table format (Intel SDM vol. 3A, 4.5): 4-level and
//! 5-level (LA57) paging, 1 GiB, 2 MiB and 4 KiB pages. Sans-IO: this module
//! says which entry to read and what it means; [`crate::memory`] reads.

/// The smallest page.
pub const PAGE_SIZE: u64 = 4096;
/// CR4.LA57: the CPU translates with 5 levels.
pub const CR4_LA57: u64 = 1 << 12;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
/// PS: at level 3 a 1 GiB page, at level 2 a 2 MiB page.
const LARGE: u64 = 1 << 7;
/// Bits 12..51: the physical address of the next table or the page.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// How many levels the page tables have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PagingLevels {
    /// PML4 → PDPT → PD → PT: 48-bit virtual addresses.
    Four,
    /// PML5 → PML4 → …: 57-bit virtual addresses.
    Five,
}

impl PagingLevels {
    /// From a CPU's CR4.
    pub fn from_cr4(cr4: u64) -> PagingLevels {
        if cr4 & CR4_LA57 != 0 {
            PagingLevels::Five
        } else {
            PagingLevels::Four
        }
    }

    /// The number of levels: 4 or 5.
    pub fn count(self) -> u8 {
        match self {
            PagingLevels::Four => 4,
            PagingLevels::Five => 5,
        }
    }

    /// Width of a virtual address: 48 or 57 bits.
    pub fn virtual_bits(self) -> u32 {
        12 + 9 * u32::from(self.count())
    }

    /// True for a canonical address of the upper (kernel) half.
    pub fn is_upper_half(self, addr: u64) -> bool {
        let top = self.virtual_bits() - 1;
        // Bits top..63 all set.
        addr >> top == u64::MAX >> top
    }

    /// True for a canonical address (either half).
    pub fn is_canonical(self, addr: u64) -> bool {
        let top = self.virtual_bits() - 1;
        addr >> top == 0 || self.is_upper_half(addr)
    }
}

/// The byte offset in a table at `level` (1 = page table, up to 5) of the
/// entry that translates `vaddr`.
pub fn entry_offset(level: u8, vaddr: u64) -> u64 {
    let shift = 12 + 9 * (u32::from(level) - 1);
    ((vaddr >> shift) & 0x1ff) * 8
}

/// The size a leaf entry at `level` maps.
pub fn page_size(level: u8) -> u64 {
    PAGE_SIZE << (9 * (u32::from(level) - 1))
}

/// What one entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Not present: nothing is mapped below it.
    NotPresent,
    /// The next level's table, at this physical address.
    Table {
        /// Physical address of the table.
        phys: u64,
        /// RW: writes are allowed by this level.
        writable: bool,
    },
    /// A page of [`page_size`]`(level)`.
    Page {
        /// Physical address of the page.
        phys: u64,
        /// RW at this level.
        writable: bool,
    },
}

/// Decodes `entry`, read at `level`.
pub fn decode(level: u8, entry: u64) -> Entry {
    if entry & PRESENT == 0 {
        return Entry::NotPresent;
    }
    let writable = entry & WRITABLE != 0;
    let addr = entry & ADDR_MASK;
    match level {
        1 => Entry::Page { phys: addr, writable },
        2 | 3 if entry & LARGE != 0 => Entry::Page { phys: addr & !(page_size(level) - 1), writable },
        _ => Entry::Table { phys: addr, writable },
    }
}

/// A translated page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Virtual address of the page's start.
    pub virt: u64,
    /// Physical address of the page's start.
    pub phys: u64,
    /// 4 KiB, 2 MiB or 1 GiB.
    pub size: u64,
    /// Writable at every level.
    pub writable: bool,
}

impl Mapping {
    /// The physical address of `vaddr`, which lies in this page.
    pub fn phys_of(&self, vaddr: u64) -> u64 {
        self.phys + (vaddr - self.virt)
    }

    /// True when `vaddr` lies in this page.
    pub fn contains(&self, vaddr: u64) -> bool {
        vaddr.wrapping_sub(self.virt) < self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_canonical_halves() {
        assert!(PagingLevels::Four.is_upper_half(0xffff_8880_0000_0000));
        assert!(!PagingLevels::Four.is_upper_half(0xff77_a81e_000d_0e90), "5-level stack, not canonical in 4-level");
        assert!(PagingLevels::Five.is_upper_half(0xff77_a81e_000d_0e90));
        assert!(PagingLevels::Five.is_upper_half(0xffff_ffff_8100_0000));
        assert!(!PagingLevels::Five.is_upper_half(0x7fff_ffff_f000));
        assert!(PagingLevels::Five.is_canonical(0x00ff_ffff_ffff_f000));
        assert!(!PagingLevels::Four.is_canonical(0x00ff_ffff_ffff_f000));
        assert_eq!(PagingLevels::from_cr4(0x3406f0 | CR4_LA57), PagingLevels::Five);
    }

    #[test]
    fn valid_entry_offsets() {
        let v = 0xffff_ffff_8123_4567;
        assert_eq!(entry_offset(4, v), 511 * 8);
        assert_eq!(entry_offset(3, v), 510 * 8);
        assert_eq!(entry_offset(2, v), 9 * 8);
        assert_eq!(entry_offset(1, v), 0x34 * 8);
        assert_eq!(entry_offset(5, 0xff77_a81e_000d_0e90), 0x177 * 8);
    }

    #[test]
    fn valid_decoding_of_tables_and_large_pages() {
        assert_eq!(decode(4, 0x1_2345_6067), Entry::Table { phys: 0x1_2345_6000, writable: true });
        assert_eq!(decode(2, 0x8000_0000_0260_01e1), Entry::Page { phys: 0x0260_0000, writable: false });
        assert_eq!(decode(3, 0x4000_00e3), Entry::Page { phys: 0x4000_0000, writable: true });
        assert_eq!(decode(1, 0x8000_0000_0123_4163), Entry::Page { phys: 0x0123_4000, writable: true });
        assert_eq!(decode(2, 0x0123_4062), Entry::NotPresent);
        assert_eq!(page_size(3), 1 << 30);
    }
}
