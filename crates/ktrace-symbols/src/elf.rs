//! Opening the vmlinux: mapping the file, validating the ELF header and
//! keeping a small table of its sections.

use std::path::Path;

use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, SectionKind};

use crate::SymbolError;

/// Name of the section that holds the per-CPU variable template. Up to Linux
/// 6.x it is linked at address 0, so its symbols' addresses are offsets into
/// each CPU's area; newer kernels link it among the others (the per-CPU offset
/// is then computed from the section's runtime address, see ktrace-kernel).
pub(crate) const PERCPU_SECTION: &str = ".data..percpu";

/// One section of the file.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub name: &'static str,
    pub index: usize,
    pub addr: u64,
    pub size: u64,
    /// File contents (empty for NOBITS sections).
    pub data: &'static [u8],
    pub kind: SectionKind,
    /// Whether the section is loaded into memory (SHF_ALLOC).
    pub alloc: bool,
}

/// One `PT_LOAD` program header: where a part of the image is linked
/// (virtual) and loaded (physical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Link-time virtual address.
    pub vaddr: u64,
    /// Load (physical) address at link time: where the image lands without
    /// physical KASLR.
    pub paddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// Alignment (`CONFIG_PHYSICAL_ALIGN` for a vmlinux's segments).
    pub align: u64,
}

/// The parsed section table.
pub(crate) struct ElfImage {
    pub data: &'static [u8],
    pub sections: Vec<Section>,
    pub segments: Vec<LoadSegment>,
}

impl ElfImage {
    /// Validate `data` as an x86-64 vmlinux and read its section table.
    pub(crate) fn parse(path: &Path, data: &'static [u8]) -> Result<ElfImage, SymbolError> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(SymbolError::NotElf {
                path: path.to_owned(),
                reason: "the file does not start with the ELF magic bytes".into(),
            });
        }
        if data.get(4) != Some(&2) {
            return Err(SymbolError::NotVmlinux { path: path.to_owned(), reason: "it is a 32-bit ELF file".into() });
        }
        let file = ElfFile64::<object::Endianness>::parse(data)
            .map_err(|e| SymbolError::NotElf { path: path.to_owned(), reason: e.to_string() })?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err(SymbolError::NotVmlinux {
                path: path.to_owned(),
                reason: format!("its architecture is {:?}", file.architecture()),
            });
        }
        if file.kind() != object::ObjectKind::Executable {
            return Err(SymbolError::NotVmlinux {
                path: path.to_owned(),
                reason: format!(
                    "it is a {:?} ELF file, not an executable (a kernel module or object file?)",
                    file.kind()
                ),
            });
        }
        use object::read::elf::ProgramHeader as _;
        let endian = file.endian();
        let segments = file
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
            .map(|ph| LoadSegment {
                vaddr: ph.p_vaddr(endian),
                paddr: ph.p_paddr(endian),
                memsz: ph.p_memsz(endian),
                align: ph.p_align(endian),
            })
            .collect();
        let mut sections = Vec::new();
        for s in file.sections() {
            let flags = match s.flags() {
                object::SectionFlags::Elf { sh_flags, .. } => sh_flags.0,
                _ => 0,
            };
            let data = if s.kind() == SectionKind::UninitializedData { &[][..] } else { s.data().unwrap_or(&[]) };
            sections.push(Section {
                name: s.name().unwrap_or(""),
                index: s.index().0,
                addr: s.address(),
                size: s.size(),
                data,
                kind: s.kind(),
                alloc: flags & object::elf::SHF_ALLOC.0 != 0,
            });
        }
        Ok(ElfImage { data, sections, segments })
    }

    /// The section called `name`.
    pub(crate) fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The section with ELF index `index`.
    pub(crate) fn section_by_index(&self, index: usize) -> Option<&Section> {
        self.sections.iter().find(|s| s.index == index)
    }

    /// The loaded (SHF_ALLOC) section whose address range holds `addr`.
    pub(crate) fn alloc_section_at(&self, addr: u64) -> Option<&Section> {
        self.sections.iter().find(|s| s.alloc && addr >= s.addr && addr < s.addr.saturating_add(s.size))
    }

    /// The per-CPU section, if any.
    pub(crate) fn percpu(&self) -> Option<&Section> {
        self.section(PERCPU_SECTION)
    }

    /// Bytes of the file image at link-time address `addr`. Other sections
    /// are looked up first; the per-CPU section only when nothing else
    /// matches (where it is linked at 0 it overlaps no kernel address).
    pub(crate) fn bytes_at(&self, addr: u64, len: usize) -> Option<&'static [u8]> {
        let hit = |s: &&Section| {
            s.alloc
                && !s.data.is_empty()
                && addr >= s.addr
                && addr.checked_add(len as u64).is_some_and(|end| end <= s.addr + s.data.len() as u64)
        };
        let sec = self
            .sections
            .iter()
            .filter(|s| s.name != PERCPU_SECTION)
            .find(hit)
            .or_else(|| self.percpu().filter(hit))?;
        let start = (addr - sec.addr) as usize;
        sec.data.get(start..start + len)
    }
}
