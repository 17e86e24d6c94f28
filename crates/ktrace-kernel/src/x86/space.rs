//! The kernel's virtual address-space layout, as the guest has it: the
//! paging mode the CPUs run, the bases the kernel chose at boot
//! (`page_offset_base`, `vmalloc_base`, `vmemmap_base`, randomised with
//! KASLR and different with 5-level paging), where the kernel image and
//! the module area are. Every "is this a kernel address" question asks it.

use serde::Serialize;

use super::paging::PagingLevels;

/// The layout of one running kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddressSpace {
    /// 4 or 5 levels.
    pub levels: PagingLevels,
    /// Start of the direct map of all physical memory (`page_offset_base`).
    #[serde(serialize_with = "ktrace_symbols::hex::option")]
    pub page_offset_base: Option<u64>,
    /// Start of the vmalloc area (`vmalloc_base`).
    #[serde(serialize_with = "ktrace_symbols::hex::option")]
    pub vmalloc_base: Option<u64>,
    /// Start of the `struct page` array (`vmemmap_base`).
    #[serde(serialize_with = "ktrace_symbols::hex::option")]
    pub vmemmap_base: Option<u64>,
    /// The kernel image's mapping: `__START_KERNEL_map` (from the vmlinux's
    /// load segments) and its size (`KERNEL_IMAGE_SIZE` from the guest's
    /// vmcoreinfo, else up to the image's end).
    #[serde(serialize_with = "ktrace_symbols::hex::serialize_range")]
    pub image: (u64, u64),
    /// Where modules are loaded: from the end of the image mapping up to
    /// the top of the address space.
    #[serde(serialize_with = "ktrace_symbols::hex::serialize_range")]
    pub modules: (u64, u64),
}

impl AddressSpace {
    /// A layout known only by its paging mode and image (tests, and
    /// guests read through the stub's own translation).
    pub fn minimal(levels: PagingLevels, image: (u64, u64)) -> AddressSpace {
        AddressSpace {
            levels,
            page_offset_base: None,
            vmalloc_base: None,
            vmemmap_base: None,
            image,
            modules: (image.1, u64::MAX),
        }
    }

    /// True for an address of the kernel's half of the address space
    /// (canonical for the paging mode, top bit set).
    pub fn is_kernel(&self, addr: u64) -> bool {
        self.levels.is_upper_half(addr)
    }

    /// True for an address in the module area.
    pub fn is_module(&self, addr: u64) -> bool {
        addr >= self.modules.0 && addr < self.modules.1
    }

    /// True where the mapping never changes while the kernel runs: the
    /// direct map (from `page_offset_base` up to the vmalloc area) and the
    /// kernel image. Translations there stay valid across resumes.
    pub fn is_fixed_mapping(&self, addr: u64) -> bool {
        let in_image = addr >= self.image.0 && addr < self.image.1;
        let in_direct_map = match (self.page_offset_base, self.vmalloc_base) {
            (Some(start), Some(end)) if start < end => addr >= start && addr < end,
            _ => false,
        };
        in_image || in_direct_map
    }
}

/// KASLR keeps the slide below this: the kernel text mapping is 1 GiB
/// (`KERNEL_IMAGE_SIZE` where no vmcoreinfo says otherwise).
pub const SLIDE_RANGE: u64 = 1 << 30;

/// The image mapping `(start, end)`: `__START_KERNEL_map` (the text
/// segment's link address minus its load address) and, with `known`
/// The size (and alignment) of a task's kernel stack, `THREAD_SIZE`: that of
/// init's stack, between `init_stack` and its end (`__end_init_stack` since
/// 6.2, `__end_init_task` before); `None` when the vmlinux has neither.
pub fn thread_size(vmlinux: &ktrace_symbols::Vmlinux) -> Option<u64> {
    let start = vmlinux.lookup_symbol("init_stack")?.addr.0;
    ["__end_init_stack", "__end_init_task"]
        .iter()
        .find_map(|end| vmlinux.lookup_symbol(end))
        .map(|end| end.addr.0.wrapping_sub(start))
        .filter(|size| size.is_power_of_two())
}

/// The kernel image's mapping: from the start of the image mapping
/// (`__START_KERNEL_map` and `KERNEL_IMAGE_SIZE` from vmcoreinfo), its size;
/// else up to the end of the last segment, plus the largest slide. A
/// vmlinux without `_text` (test fixtures) has no known image mapping.
pub(crate) fn image_mapping(vmlinux: &ktrace_symbols::Vmlinux, known: Option<(u64, u64)>) -> (u64, u64) {
    if let Some((start, size)) = known {
        return (start, start.wrapping_add(size));
    }
    let Some(text) = vmlinux.lookup_symbol("_text").map(|s| s.addr) else { return (0, 0) };
    let lma = vmlinux.load_address(text).unwrap_or_default();
    let start = text.0.wrapping_sub(lma);
    let end =
        vmlinux.load_segments().iter().filter(|s| s.vaddr >= start).map(|s| s.vaddr + s.memsz).max().unwrap_or(text.0);
    (start, end.saturating_add(SLIDE_RANGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_five_level_stacks_are_kernel_addresses() {
        let four = AddressSpace::minimal(PagingLevels::Four, (0xffff_ffff_8000_0000, 0xffff_ffff_c000_0000));
        let five = AddressSpace { levels: PagingLevels::Five, ..four.clone() };
        assert!(!four.is_kernel(0xff77_a81e_000d_0e90));
        assert!(five.is_kernel(0xff77_a81e_000d_0e90));
        assert!(four.is_module(0xffff_ffff_c012_3456));
        assert!(!four.is_module(0xffff_ffff_8112_3456));
    }

    #[test]
    fn valid_fixed_mappings() {
        let s = AddressSpace {
            page_offset_base: Some(0xffff_8880_0000_0000),
            vmalloc_base: Some(0xffff_c900_0000_0000),
            ..AddressSpace::minimal(PagingLevels::Four, (0xffff_ffff_8000_0000, 0xffff_ffff_c000_0000))
        };
        assert!(s.is_fixed_mapping(0xffff_8880_0123_4000));
        assert!(s.is_fixed_mapping(0xffff_ffff_8123_4000));
        assert!(!s.is_fixed_mapping(0xffff_c900_0041_b000), "a vmalloc'ed stack can be remapped");
    }
}
