//! Memory the kernel never uses, proven from the guest: where in-guest
//! records can go.
//!
//! Kernel text is mapped read-only, so the trampoline's padding cannot hold
//! records. x86 kernels keep the first MiB of RAM out of the page allocator
//! (since 5.13 all of it) and map it read-write in the direct map; after
//! boot little of it is used: the BIOS areas and the real-mode trampoline.
//! [`borrowable_low_memory`] takes nothing on trust and proves each page:
//!
//! 1. RAM in the kernel's own e820 table (`e820_table`, type
//!    `E820_TYPE_RAM`), so no BIOS area, ACPI table or device memory;
//! 2. above the first 64 KiB, which the kernel keeps for BIOSes that write
//!    there (`CONFIG_X86_RESERVE_LOW`'s default, also the IVT and BDA);
//! 3. outside the real-mode trampoline (`real_mode_header`, the size of
//!    `real_mode_blob`), which CPU bring-up, resume and reboot run, and
//!    outside the boot loader's `setup_data` list (`boot_params`), which
//!    the kernel keeps and shows in `/sys/kernel/boot_params`;
//! 4. `PG_reserved` in its `struct page`, so the page allocator never hands
//!    it out;
//! 5. present and writable in the kernel's direct map, at its own frame.
//!
//! Layouts (the e820 entry, `struct page.flags`, the flag's bit) come from
//! the vmlinux's DWARF; addresses from the guest.

use ktrace_symbols::Vmlinux;

use super::Refusal;
use crate::{Kernel, KernelError, MemoryError, PhysicalMemory, Target};

/// What a proof fails with: a read (through the kernel's page tables), or a refusal.
type Failed<T> = KernelError<MemoryError<<T as Target>::Error>>;

const PAGE: u64 = 4096;
/// The end of the first MiB: the ISA range the search stays in.
const LOW_END: u64 = 1 << 20;
/// The first 64 KiB, kept for the BIOS.
const BIOS_LOW: u64 = 64 << 10;

/// Guest RAM ktrace may borrow: `len` bytes at physical `phys`, mapped at
/// `virt` in the kernel's direct map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowMemory {
    /// Physical address (page aligned).
    pub phys: u64,
    /// Bytes (whole pages).
    pub len: u64,
    /// Its address in the direct map.
    pub virt: u64,
}

/// The longest run of pages below 1 MiB that the kernel provably never
/// uses (see the module's docs), at least `want` bytes; else why not.
pub async fn borrowable_low_memory<T: PhysicalMemory>(
    kernel: &Kernel,
    target: &mut T,
    want: u64,
) -> Result<LowMemory, Failed<T>> {
    let refuse = |why: String| KernelError::Refused(Refusal::Borrow(why));
    let vm = kernel.vmlinux();
    let space = kernel.space();
    let (Some(page_offset), Some(vmemmap)) = (space.page_offset_base, space.vmemmap_base) else {
        return Err(refuse("the direct map's and the page array's bases are not known".into()));
    };
    let translation = kernel.translation().ok_or_else(|| refuse("no page-table walk of the kernel's own".into()))?;
    let mut ranges = e820_ram(kernel, target).await?;
    let mut excluded = vec![real_mode(kernel, target, page_offset).await?];
    excluded.extend(setup_data(kernel, target).await?);
    // `flags` is a word, or (7.x) a `memdesc_flags_t` holding one.
    let flags = vm.member("page.flags").map_err(|e| refuse(e.to_string()))?;
    if flags.size != 8 {
        return Err(refuse(format!("struct page's flags are {} bytes, not a word", flags.size)));
    }
    let flags_at = flags.offset;
    let page_size = vm.type_size("page").map_err(|e| refuse(e.to_string()))?;
    let reserved_bit = enumerator(vm, "enum pageflags", "PG_reserved")?;

    let mut best: Option<(u64, u64)> = None;
    let mut run: Option<(u64, u64)> = None;
    ranges.sort_unstable();
    for (start, end) in ranges {
        let first = (start.max(BIOS_LOW) + PAGE - 1) & !(PAGE - 1);
        let mut page = first;
        while page + PAGE <= end.min(LOW_END) {
            let ok = !excluded.iter().any(|r| r.start < page + PAGE && page < r.end)
                && is_reserved(kernel, target, vmemmap + (page / PAGE) * page_size + flags_at, reserved_bit).await
                && match translation.translate(target, page_offset + page).await {
                    Ok(m) => m.writable && m.phys_of(page_offset + page) == page,
                    Err(_) => false,
                };
            run = match (ok, run) {
                (true, Some((s, e))) if e == page => Some((s, page + PAGE)),
                (true, _) => Some((page, page + PAGE)),
                (false, _) => None,
            };
            if let Some((s, e)) = run {
                if best.is_none_or(|(bs, be)| e - s > be - bs) {
                    best = Some((s, e));
                }
            }
            page += PAGE;
        }
        run = None;
    }
    match best {
        Some((s, e)) if e - s >= want => Ok(LowMemory { phys: s, len: e - s, virt: page_offset + s }),
        Some((s, e)) => Err(refuse(format!(
            "the largest run of unused low memory is {} KiB at 0x{s:x}; {} KiB are needed",
            (e - s) >> 10,
            want.div_ceil(1024)
        ))),
        None => Err(refuse("no page below 1 MiB is provably unused by the kernel".into())),
    }
}

/// The RAM ranges of the kernel's e820 table, as `[start, end)`.
async fn e820_ram<T: PhysicalMemory>(kernel: &Kernel, target: &mut T) -> Result<Vec<(u64, u64)>, Failed<T>> {
    let refuse = |why: String| KernelError::Refused(Refusal::Borrow(why));
    let vm = kernel.vmlinux();
    let layout = |path: &str| vm.member(path).map(|m| m.offset).map_err(|e| refuse(format!("{path}: {e}")));
    let table_var = vm.lookup_symbol("e820_table").ok_or_else(|| refuse("the vmlinux has no e820_table".into()))?;
    let mut memory = kernel.memory(target);
    let table = memory.read_u64(table_var.addr.0.wrapping_add(kernel.slide())).await?;
    let count = memory.read_memory(table + layout("e820_table.nr_entries")?, 4).await.map_err(KernelError::Target)?;
    let count = u32::from_le_bytes(count[..4].try_into().unwrap_or_default()) as u64;
    let entry_size = vm.type_size("e820_entry").map_err(|e| refuse(e.to_string()))?;
    let (addr, size, kind) = (layout("e820_entry.addr")?, layout("e820_entry.size")?, layout("e820_entry.type")?);
    let ram = enumerator(vm, "enum e820_type", "E820_TYPE_RAM")?;
    // A table larger than the array it is in is not believed.
    let max = vm.member("e820_table.entries").map(|m| m.size / entry_size.max(1)).unwrap_or(0);
    if count == 0 || count > max {
        return Err(refuse(format!("e820_table says {count} entries (its array holds {max})")));
    }
    let entries = table + layout("e820_table.entries")?;
    let bytes = memory.read_memory(entries, (count * entry_size) as usize).await.map_err(KernelError::Target)?;
    let field = |e: &[u8], at: u64, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&e[at as usize..at as usize + n]);
        u64::from_le_bytes(b)
    };
    Ok(bytes
        .chunks_exact(entry_size as usize)
        .filter(|e| field(e, kind, 4) == ram)
        .map(|e| (field(e, addr, 8), field(e, addr, 8).saturating_add(field(e, size, 8))))
        .collect())
}

/// The pages of the real-mode trampoline.
async fn real_mode<T: PhysicalMemory>(
    kernel: &Kernel,
    target: &mut T,
    page_offset: u64,
) -> Result<std::ops::Range<u64>, Failed<T>> {
    let refuse = |why: String| KernelError::Refused(Refusal::Borrow(why));
    let vm = kernel.vmlinux();
    let sym = |n: &str| vm.lookup_symbol(n).map(|s| s.addr.0).ok_or_else(|| refuse(format!("the vmlinux has no {n}")));
    let size = sym("real_mode_blob_end")?.wrapping_sub(sym("real_mode_blob")?);
    let header = kernel.memory(target).read_u64(sym("real_mode_header")?.wrapping_add(kernel.slide())).await?;
    let phys = header.wrapping_sub(page_offset);
    if header == 0 || phys >= LOW_END || size > LOW_END {
        return Err(refuse(format!("real_mode_header 0x{header:x} (size 0x{size:x}) is not in low memory")));
    }
    let start = phys & !(PAGE - 1);
    Ok(start..(phys + size + PAGE - 1) & !(PAGE - 1))
}

/// The pages of each `setup_data` the boot loader passed.
async fn setup_data<T: PhysicalMemory>(
    kernel: &Kernel,
    target: &mut T,
) -> Result<Vec<std::ops::Range<u64>>, Failed<T>> {
    let refuse = |why: String| KernelError::Refused(Refusal::Borrow(why));
    let vm = kernel.vmlinux();
    let at = |path: &str| vm.member(path).map(|m| m.offset).map_err(|e| refuse(format!("{path}: {e}")));
    let params = vm.lookup_symbol("boot_params").ok_or_else(|| refuse("the vmlinux has no boot_params".into()))?;
    let head = params.addr.0.wrapping_add(kernel.slide()) + at("boot_params.hdr.setup_data")?;
    let (next_at, len_at, data_at) = (at("setup_data.next")?, at("setup_data.len")?, at("setup_data.data")?);
    let mut pa = kernel.memory(target).read_u64(head).await?;
    let mut out = Vec::new();
    while pa != 0 {
        if out.len() >= 64 {
            return Err(refuse("the setup_data list does not end".into()));
        }
        let header = target
            .read_physical(pa, data_at as usize)
            .await
            .map_err(|e| KernelError::Target(MemoryError::Target(e)))?;
        let word = |o: u64, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&header[o as usize..o as usize + n]);
            u64::from_le_bytes(b)
        };
        let end = pa + data_at + word(len_at, 4);
        out.push(pa & !(PAGE - 1)..(end + PAGE - 1) & !(PAGE - 1));
        pa = word(next_at, 8);
    }
    Ok(out)
}

async fn is_reserved<T: PhysicalMemory>(kernel: &Kernel, target: &mut T, flags: u64, bit: u64) -> bool {
    match kernel.memory(target).read_u64(flags).await {
        Ok(f) => f & (1 << bit) != 0,
        Err(_) => false,
    }
}

fn enumerator<E>(vm: &Vmlinux, ty: &str, name: &str) -> Result<u64, KernelError<E>> {
    let all = vm.enumerators(ty).map_err(|e| KernelError::Refused(Refusal::Borrow(format!("{ty}: {e}"))))?;
    all.iter()
        .find(|(n, _)| n == name)
        .map(|&(_, v)| v as u64)
        .ok_or_else(|| KernelError::Refused(Refusal::Borrow(format!("{ty} has no {name}"))))
}
