//! The debug file of a kernel module (`brd.ko` from a `-dbg` package): an
//! ELF relocatable object (ET_REL) whose DWARF refers to its sections at
//! address 0 through `.rela.debug_*` relocations. Given where each section
//! was loaded (a "section name → runtime address" map, which the caller
//! reads wherever it can), the relocations are applied to copies of the
//! debug sections and addr2line answers frames for runtime pcs.
//!
//! Nothing here knows where the map comes from or what a running kernel
//! is; the caller checks that the file is the loaded module with
//! [`ModuleDebug::symbol_address`] against its own symbol table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex, SymbolSection};

use crate::dwarf::{OwnedSections, R};
use crate::lines::{self, SourceFrame};
use crate::SymbolError;

/// A module's debug file, relocated to where the module was loaded.
pub struct ModuleDebug {
    // The context borrows from `owned`: declared (and so dropped) before it.
    // addr2line fills it on use, so it is not `Sync` by itself.
    ctx: Mutex<addr2line::Context<R>>,
    /// Defined functions and objects: (runtime address, size, name), sorted.
    symbols: Vec<(u64, u64, String)>,
    /// `name=` of `.modinfo`.
    name: Option<String>,
    path: PathBuf,
    /// The file and the relocated sections, which `ctx` borrows.
    _owned: OwnedSections,
}

impl std::fmt::Debug for ModuleDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleDebug").field("path", &self.path).field("name", &self.name).finish_non_exhaustive()
    }
}

impl ModuleDebug {
    /// Opens `path` (a `.ko` with DWARF) and relocates its debug sections:
    /// a section named in `sections` is at that runtime address; other
    /// loaded sections are taken as not loaded (their code is never
    /// matched), non-loaded sections (the `.debug_*` themselves) at 0.
    pub fn open(path: impl AsRef<Path>, sections: &HashMap<String, u64>) -> Result<ModuleDebug, SymbolError> {
        let path = path.as_ref().to_owned();
        let bytes = std::fs::read(&path).map_err(|e| SymbolError::Io { path: path.clone(), source: e })?;
        let owned = OwnedSections::default();
        let data = owned.keep(bytes);
        let not_module = |reason: String| SymbolError::NotModule { path: path.clone(), reason };
        let file = ElfFile64::<object::Endianness>::parse(data).map_err(|e| not_module(e.to_string()))?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err(not_module(format!("its architecture is {:?}", file.architecture())));
        }
        if file.kind() != object::ObjectKind::Relocatable {
            return Err(not_module(format!("it is a {:?} ELF file, not a relocatable object", file.kind())));
        }
        if file.section_by_name(".debug_info").is_none_or(|s| s.size() == 0) {
            return Err(SymbolError::NoDebugInfo { path, what: "module source lines".into() });
        }
        let placed = Placement::new(&file, sections);
        let relocate_err = |section: &str, reason: String| SymbolError::Relocation {
            path: path.clone(),
            section: section.to_owned(),
            reason,
        };
        let mut relocated: HashMap<&'static str, &'static [u8]> = HashMap::new();
        for section in file.sections() {
            let Ok(name) = section.name() else { continue };
            if !name.starts_with(".debug_") {
                continue;
            }
            let mut bytes = section.uncompressed_data().map_err(|e| relocate_err(name, e.to_string()))?.into_owned();
            for (offset, reloc) in section.relocations() {
                let RelocationFlags::Elf { r_type } = reloc.flags() else {
                    return Err(relocate_err(name, "a relocation that is not ELF".into()));
                };
                let symbol = match reloc.target() {
                    RelocationTarget::Symbol(i) => placed.symbol_value(&file, i),
                    RelocationTarget::Section(i) => placed.section(i),
                    _ => None,
                };
                // A symbol outside every loaded section (an init section
                // already freed, an undefined symbol) resolves to 0: its
                // code is then never matched by a runtime pc.
                let value = symbol.unwrap_or(0);
                apply(&mut bytes, offset, r_type.0, value, reloc.addend(), offset)
                    .map_err(|reason| relocate_err(name, reason))?;
            }
            relocated.insert(name, owned.keep(bytes));
        }
        let dwarf = gimli::Dwarf::load(|id| -> Result<R, ()> {
            let data = relocated.get(id.name()).copied().unwrap_or(&[]);
            Ok(gimli::EndianSlice::new(data, gimli::RunTimeEndian::Little))
        })
        .map_err(|()| SymbolError::dwarf("loading the module's DWARF", "unreadable section"))?;
        let ctx = addr2line::Context::from_dwarf(dwarf).map_err(|e| SymbolError::dwarf("preparing line lookup", e))?;
        let mut symbols: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| s.is_definition() && matches!(s.kind(), object::SymbolKind::Text | object::SymbolKind::Data))
            .filter_map(|s| Some((placed.symbol_value(&file, s.index())?, s.size(), s.name().ok()?.to_owned())))
            .collect();
        symbols.sort();
        let name = file
            .section_by_name(".modinfo")
            .and_then(|s| s.data().ok())
            .and_then(|d| d.split(|&b| b == 0).find_map(|kv| kv.strip_prefix(b"name=")))
            .map(|n| String::from_utf8_lossy(n).into_owned());
        Ok(ModuleDebug { ctx: Mutex::new(ctx), symbols, name, path, _owned: owned })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The module's name as its `.modinfo` records it (`name=brd`).
    pub fn module_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The runtime address of the function or object `name`, where its
    /// section was placed.
    pub fn symbol_address(&self, name: &str) -> Option<u64> {
        self.symbols.iter().find(|s| s.2 == name).map(|s| s.0)
    }

    /// Source frames at runtime address `pc`, innermost (inlined) function
    /// first, as [`crate::Vmlinux::frames`] gives them.
    pub fn frames(&self, pc: u64) -> Result<Vec<SourceFrame>, SymbolError> {
        let ctx = self.ctx.lock().unwrap_or_else(|e| e.into_inner());
        lines::frames_named(Some(&ctx), pc, || self.function_at(pc))
    }

    /// The function symbol containing `pc`.
    fn function_at(&self, pc: u64) -> Option<String> {
        let idx = self.symbols.partition_point(|s| s.0 <= pc);
        self.symbols[..idx].iter().rev().find(|s| pc < s.0 + s.1.max(1)).map(|s| s.2.clone())
    }
}

/// Where the sections of the file are: runtime addresses of the loaded
/// (SHF_ALLOC) sections the map names, 0 for the others.
struct Placement {
    by_index: HashMap<SectionIndex, Option<u64>>,
}

impl Placement {
    fn new(file: &ElfFile64<'static, object::Endianness>, sections: &HashMap<String, u64>) -> Placement {
        let by_index = file
            .sections()
            .map(|s| {
                let alloc = matches!(s.flags(), object::SectionFlags::Elf { sh_flags, .. } if sh_flags.0 & object::elf::SHF_ALLOC.0 != 0);
                let at = if alloc { s.name().ok().and_then(|n| sections.get(n).copied()) } else { Some(0) };
                (s.index(), at)
            })
            .collect();
        Placement { by_index }
    }

    fn section(&self, index: SectionIndex) -> Option<u64> {
        self.by_index.get(&index).copied().flatten()
    }

    /// A defined symbol's runtime address (section symbols: the section's).
    fn symbol_value(&self, file: &ElfFile64<'static, object::Endianness>, index: object::SymbolIndex) -> Option<u64> {
        let sym = file.symbol_by_index(index).ok()?;
        match sym.section() {
            SymbolSection::Section(s) => Some(self.section(s)?.wrapping_add(sym.address())),
            SymbolSection::Absolute => Some(sym.address()),
            _ => None,
        }
    }
}

/// Applies one x86-64 relocation at `offset` of `data`: `S + A` for the
/// absolute kinds, `S + A - P` for the PC-relative ones (`place` is the
/// runtime address of the field: its offset, for a section at 0).
pub(crate) fn apply(data: &mut [u8], offset: u64, r_type: u32, s: u64, a: i64, place: u64) -> Result<(), String> {
    use object::elf::{R_X86_64_32, R_X86_64_32S, R_X86_64_64, R_X86_64_NONE, R_X86_64_PC32, R_X86_64_PC64};
    let value = s.wrapping_add(a as u64);
    let (bytes, size): ([u8; 8], usize) = match r_type {
        t if t == R_X86_64_NONE.0 => return Ok(()),
        t if t == R_X86_64_64.0 => (value.to_le_bytes(), 8),
        t if t == R_X86_64_32.0 => {
            let v = u32::try_from(value).map_err(|_| format!("R_X86_64_32 value 0x{value:x} does not fit"))?;
            (u64::from(v).to_le_bytes(), 4)
        }
        t if t == R_X86_64_32S.0 => {
            let v = i32::try_from(value as i64).map_err(|_| format!("R_X86_64_32S value 0x{value:x} does not fit"))?;
            ((v as u32 as u64).to_le_bytes(), 4)
        }
        t if t == R_X86_64_PC32.0 => ((value.wrapping_sub(place) as u32 as u64).to_le_bytes(), 4),
        t if t == R_X86_64_PC64.0 => (value.wrapping_sub(place).to_le_bytes(), 8),
        other => return Err(format!("relocation type {other} is not one debug sections use")),
    };
    let at = usize::try_from(offset).map_err(|_| "offset out of range".to_string())?;
    let field = data
        .get_mut(at..at.saturating_add(size))
        .filter(|f| f.len() == size)
        .ok_or_else(|| format!("a relocation at 0x{offset:x} is past the section's end"))?;
    field.copy_from_slice(&bytes[..size]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_debug_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ModuleDebug>();
    }

    #[test]
    fn absolute_relocations_write_s_plus_a() {
        let mut d = [0xaau8; 16];
        apply(&mut d, 4, 1, 0xffff_ffff_c000_1000, 0x20, 4).unwrap();
        assert_eq!(&d[4..12], &0xffff_ffff_c000_1020u64.to_le_bytes());
        assert_eq!((d[3], d[12]), (0xaa, 0xaa), "only the field is written");
        apply(&mut d, 0, 10, 0x100, 0x23, 0).unwrap();
        assert_eq!(&d[0..4], &0x123u32.to_le_bytes());
    }

    #[test]
    fn thirty_two_bit_kinds_check_the_range() {
        let mut d = [0u8; 8];
        assert!(apply(&mut d, 0, 10, 0xffff_ffff_c000_0000, 0, 0).unwrap_err().contains("does not fit"));
        // 32S: sign-extended kernel addresses do fit.
        apply(&mut d, 0, 11, 0xffff_ffff_8100_0000, 0x10, 0).unwrap();
        assert_eq!(&d[0..4], &0x8100_0010u32.to_le_bytes());
        assert!(apply(&mut d, 0, 11, 0xffff_ffff_c000_0000 >> 1, 0, 0).is_err());
    }

    #[test]
    fn pc_relative_kinds_subtract_the_place() {
        let mut d = [0u8; 16];
        apply(&mut d, 8, 2, 0x1000, -4, 0x0f00).unwrap();
        assert_eq!(&d[8..12], &0xfcu32.to_le_bytes());
        apply(&mut d, 0, 24, 0x1000, 0, 0x2000).unwrap();
        assert_eq!(&d[0..8], &(-0x1000i64).to_le_bytes());
    }

    #[test]
    fn bad_relocations_are_errors() {
        let mut d = [0u8; 8];
        assert!(apply(&mut d, 6, 1, 0, 0, 0).unwrap_err().contains("past the section's end"));
        assert!(apply(&mut d, 0, 4, 0, 0, 0).unwrap_err().contains("relocation type 4"));
        apply(&mut d, 100, 0, 0, 0, 0).expect("R_X86_64_NONE writes nothing");
    }

    const TEXT: u64 = 0xffff_ffff_c000_1000;
    const INIT: u64 = 0xffff_ffff_c000_2000;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/symbols").join(name)
    }

    fn placed(init: bool) -> HashMap<String, u64> {
        let mut m = HashMap::from([(".text".to_string(), TEXT)]);
        if init {
            m.insert(".init.text".into(), INIT);
        }
        m
    }

    fn brief(f: &SourceFrame) -> (String, u32, bool) {
        let file = f.file.as_deref().map(crate::short_source_path).unwrap_or("?");
        (
            format!("{}@{}", f.function.as_deref().unwrap_or("?"), file.rsplit('/').next().unwrap()),
            f.line.unwrap_or(0),
            f.inlined,
        )
    }

    #[test]
    fn frames_at_relocated_addresses_with_inlined_functions() {
        let m = ModuleDebug::open(fixture("module_like.ko"), &placed(true)).expect("opens");
        assert_eq!(m.module_name(), Some("module_like"));
        assert_eq!(m.symbol_address("mod_work"), Some(TEXT));
        assert_eq!(m.symbol_address("mod_init"), Some(INIT));
        // `counter += by` of the inlined bump(), called from mod_work line 16.
        let frames: Vec<_> = m.frames(TEXT + 6).expect("frames").iter().map(brief).collect();
        assert_eq!(frames, [("bump@module_like.c".into(), 10, true), ("mod_work@module_like.c".into(), 16, false)]);
        let frames: Vec<_> = m.frames(INIT + 0xa).expect("frames").iter().map(brief).collect();
        assert_eq!(frames, [("mod_init@module_like.c".into(), 22, false)]);
        // Outside the module's code: nothing.
        assert!(m.frames(TEXT - 1).expect("frames").is_empty());
    }

    #[test]
    fn sections_not_in_the_map_are_never_matched() {
        let m = ModuleDebug::open(fixture("module_like.ko"), &placed(false)).expect("opens");
        assert_eq!(m.symbol_address("mod_init"), None);
        assert!(m.frames(INIT + 0xa).expect("frames").is_empty());
        assert_eq!(m.frames(TEXT + 0x14).expect("frames").last().and_then(|f| f.line), Some(17));
    }

    #[test]
    fn a_vmlinux_is_not_a_module_debug_file() {
        let err = ModuleDebug::open(fixture("kernel_like.elf"), &placed(true)).expect_err("ET_EXEC");
        assert!(matches!(err, SymbolError::NotModule { .. }), "{err}");
        assert!(err.to_string().contains("not a relocatable object"), "{err}");
        let err = ModuleDebug::open(fixture("module_like.c"), &placed(true)).expect_err("not ELF");
        assert!(matches!(err, SymbolError::NotModule { .. }), "{err}");
    }
}
