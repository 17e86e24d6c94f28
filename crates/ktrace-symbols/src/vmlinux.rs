//! [`Vmlinux`]: an opened vmlinux and every question it answers, each
//! index built on first use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::dwarf::{DieRef, DwarfInfo, OwnedSections, R};
use crate::elf::{ElfImage, LoadSegment};
use crate::symbols::SymbolIndex;
use crate::{banner, btf, cfi, dwarf, lines, symbols};
use crate::{CfiRow, KernelAddr, MemberLayout, OrcTable, SourceFrame, Symbol, SymbolError, SymbolOffset};

/// An opened vmlinux. Cheap to open; every index is built on first use and
/// cached, so all methods take `&self`. `Send + Sync`.
pub struct Vmlinux {
    // Everything borrowing from the map is declared (and so dropped) before it.
    symbols: OnceLock<Option<SymbolIndex>>,
    dwarf: OnceLock<Option<DwarfInfo>>,
    /// addr2line contexts, one per compilation unit (keyed by unit offset).
    addr2line: Mutex<HashMap<usize, addr2line::Context<R>>>,
    /// Types already worked out (what each is underneath, and its C name):
    /// a backtrace with arguments asks the same few again at every hit.
    pub(crate) type_memo: crate::type_shape::TypeMemo,
    /// [`Vmlinux::cfi_saved_registers`] by address (the frames of a trace
    /// are the same few pcs again and again).
    saved_registers_memo: Mutex<HashMap<u64, Option<cfi::SavedRegisters>>>,
    orc: OnceLock<Result<Option<OrcTable>, String>>,
    btf: OnceLock<Option<btf::BtfTypeNames>>,
    cfi: OnceLock<Result<Option<cfi::CfiIndex>, String>>,
    pub(crate) image: ElfImage,
    path: PathBuf,
    owned: OwnedSections,
    _map: memmap2::Mmap,
}

/// How many pcs' CFI rules are kept.
const MAX_SAVED_REGISTERS_MEMO: usize = 1 << 16;

/// How many per-unit addr2line contexts are kept.
const MAX_LINE_CONTEXTS: usize = 32;

/// How many functions [`Vmlinux::orc`] checks the ORC tables against.
const ORC_SELF_CHECK_SAMPLE: usize = 512;

/// Type names whose definition is searched for in the unit of a known
/// variable's type first (fast path), e.g. task_struct via `init_task`.
const TYPE_ANCHOR_VARS: &[(&str, &str)] = &[("task_struct", "init_task")];

impl Vmlinux {
    /// Open and map a vmlinux. Fails with a clear error if the file is
    /// missing, not ELF, not an x86-64 executable, or has no symbols.
    pub fn open(path: impl AsRef<Path>) -> Result<Vmlinux, SymbolError> {
        let path = path.as_ref().to_owned();
        let file = std::fs::File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SymbolError::FileNotFound { path: path.clone() }
            } else {
                SymbolError::Io { path: path.clone(), source: e }
            }
        })?;
        // SAFETY: the file is mapped read-only; like every tool reading
        // vmlinux files we assume nobody truncates it while it is open.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| SymbolError::Io { path: path.clone(), source: e })?;
        // Random access: no readahead/fault-around inflating RSS.
        let _ = map.advise(memmap2::Advice::Random);
        // SAFETY: the mapping lives in `_map` until `Vmlinux` is dropped, and
        // all fields that borrow from it are dropped before it (field order);
        // no `'static` reference escapes through the public API.
        let data: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let image = ElfImage::parse(&path, data)?;
        let has_symtab = image.section(".symtab").is_some_and(|s| s.size > 0);
        if !has_symtab {
            return Err(SymbolError::NoSymbols { path });
        }
        Ok(Vmlinux {
            symbols: OnceLock::new(),
            dwarf: OnceLock::new(),
            addr2line: Mutex::default(),
            type_memo: Default::default(),
            saved_registers_memo: Mutex::default(),
            orc: OnceLock::new(),
            btf: OnceLock::new(),
            cfi: OnceLock::new(),
            image,
            path,
            owned: OwnedSections::default(),
            _map: map,
        })
    }

    /// The GNU build id (`NT_GNU_BUILD_ID` in `.notes`): its link-time
    /// address and bytes.
    pub fn build_id(&self) -> Option<(KernelAddr, &[u8])> {
        let notes = self.image.section(".notes")?;
        let d = notes.data;
        let mut at = 0usize;
        let word = |o: usize| d.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
        while at + 12 <= d.len() {
            let (namesz, descsz, kind) = (word(at)?, word(at + 4)?, word(at + 8)?);
            let name_at = at + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let next = desc_at + descsz.next_multiple_of(4);
            if kind == 3 && d.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                return Some((KernelAddr(notes.addr + desc_at as u64), d.get(desc_at..desc_at + descsz)?));
            }
            at = next;
        }
        None
    }

    /// The `PT_LOAD` segments, in file order.
    pub fn load_segments(&self) -> &[LoadSegment] {
        &self.image.segments
    }

    /// The load (physical, at link time) address of link-time address
    /// `addr`, from the segment that holds it. The per-CPU segment, linked
    /// at 0 on older kernels, is looked up last.
    pub fn load_address(&self, addr: KernelAddr) -> Option<u64> {
        let mut segs: Vec<&LoadSegment> = self.image.segments.iter().collect();
        segs.sort_by_key(|s| s.vaddr == 0);
        segs.iter().find(|s| addr.0 >= s.vaddr && addr.0 - s.vaddr < s.memsz).map(|s| s.paddr + (addr.0 - s.vaddr))
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file has DWARF debug info (`.debug_info`).
    pub fn has_dwarf(&self) -> bool {
        self.image.section(".debug_info").is_some_and(|s| !s.data.is_empty())
    }

    fn index(&self) -> Result<&SymbolIndex, SymbolError> {
        self.symbols
            .get_or_init(|| SymbolIndex::build(&self.image))
            .as_ref()
            .ok_or_else(|| SymbolError::NoSymbols { path: self.path.clone() })
    }

    /// The symbol called `name` (if several, the global / function one).
    pub fn symbol(&self, name: &str) -> Result<Symbol, SymbolError> {
        let idx = self.index()?;
        match idx.named(name).first() {
            Some(e) => Ok(e.to_symbol()),
            None => Err(SymbolError::UnknownSymbol { name: name.to_owned(), suggestions: idx.suggestions(name) }),
        }
    }

    /// Like [`Vmlinux::symbol`] but without the (slow) suggestions.
    pub fn lookup_symbol(&self, name: &str) -> Option<Symbol> {
        self.index().ok()?.named(name).first().map(|e| e.to_symbol())
    }

    /// A symbol whose name is so close to `name` (Jaro-Winkler ≥ 0.93) that
    /// `name` is most likely a typo of it.
    pub fn close_match(&self, name: &str) -> Option<String> {
        let idx = self.index().ok()?;
        idx.suggestions(name).into_iter().find(|s| strsim::jaro_winkler(name, s) >= 0.93)
    }

    /// All symbols called `name` (static functions may exist several times), best first.
    pub fn symbols_named(&self, name: &str) -> Vec<Symbol> {
        match self.index() {
            Ok(idx) => idx.named(name).iter().map(|e| e.to_symbol()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Resolve `symbol`, `symbol+0x10`, `symbol+16` or a hex address
    /// (`0xffffffff81a185a0`). `file:line` is handled by
    /// [`Vmlinux::line_addresses`], not here.
    pub fn resolve(&self, spec: &str) -> Result<KernelAddr, SymbolError> {
        let spec_t = spec.trim();
        let bad = |reason: &str| SymbolError::BadAddress { spec: spec.to_owned(), reason: reason.to_owned() };
        if spec_t.is_empty() {
            return Err(bad("it is empty"));
        }
        if spec_t.starts_with(|c: char| c.is_ascii_digit()) {
            return symbols::parse_number(spec_t).map(KernelAddr).ok_or_else(|| bad("not a valid number"));
        }
        let (name, off) = match spec_t.split_once('+') {
            Some((n, o)) => (n.trim(), symbols::parse_number(o).ok_or_else(|| bad("the offset is not a number"))?),
            None => (spec_t, 0),
        };
        if name.contains(':') {
            return Err(bad("file:line locations are resolved with line_addresses()"));
        }
        let sym = self.symbol(name)?;
        sym.addr.0.checked_add(off).map(KernelAddr).ok_or_else(|| bad("the offset overflows"))
    }

    /// The symbol containing `addr` and the offset into it. Functions are
    /// preferred over other symbols at the same place; per-CPU symbols are
    /// never returned (their addresses are offsets).
    pub fn symbolize(&self, addr: KernelAddr) -> Option<SymbolOffset> {
        // Outside the image (module space, the direct map…) no symbol holds it,
        // however close an assembly label without a size may be.
        self.image.alloc_section_at(addr.0)?;
        let (e, offset) = self.index().ok()?.containing(addr.0)?;
        Some(SymbolOffset { name: e.name.to_owned(), offset, size: e.size })
    }

    /// The static contents of the file at link-time address `addr` (for
    /// `.text`, `.rodata`, `.data`, and the per-CPU template); `None` if
    /// the range is not wholly inside one section with file contents.
    pub fn section_bytes_at(&self, addr: KernelAddr, len: usize) -> Option<&[u8]> {
        self.image.bytes_at(addr.0, len)
    }

    /// Whether the link-time address `addr` is in one of the vmlinux's
    /// code sections (`.text`, `.init.text`, ...).
    pub fn is_code(&self, addr: KernelAddr) -> bool {
        self.image.alloc_section_at(addr.0).is_some_and(|s| s.kind == object::SectionKind::Text)
    }

    /// The `[start, end)` of the per-CPU section (`.data..percpu`), whose
    /// symbols' addresses are offsets into each CPU's area.
    pub fn percpu_section_range(&self) -> Option<(u64, u64)> {
        self.image.percpu().map(|s| (s.addr, s.addr + s.size))
    }

    /// The `linux_banner` string ("Linux version 6.1.0-56-cloud-amd64 (...) #1 SMP ...").
    pub fn banner(&self) -> Result<String, SymbolError> {
        let sym = self
            .lookup_symbol("linux_banner")
            .ok_or_else(|| SymbolError::NoBanner { reason: "the symbol `linux_banner` is missing".into() })?;
        let len = if sym.size > 0 { sym.size as usize } else { banner::MAX_BANNER };
        let bytes = self
            .image
            .bytes_at(sym.addr.0, len)
            .or_else(|| self.image.bytes_at(sym.addr.0, 64))
            .ok_or_else(|| SymbolError::NoBanner { reason: format!("no file contents at {}", sym.addr) })?;
        let b = banner::banner_from_bytes(bytes);
        if b.is_empty() {
            return Err(SymbolError::NoBanner { reason: "`linux_banner` is empty in the file".into() });
        }
        Ok(b)
    }

    /// The kernel release ("6.1.0-56-cloud-amd64"), as `uname -r` prints it.
    pub fn release(&self) -> Result<String, SymbolError> {
        let b = self.banner()?;
        banner::release_from_banner(&b)
            .ok_or_else(|| SymbolError::NoBanner { reason: format!("unexpected banner format: {b:?}") })
    }

    pub(crate) fn dwarf(&self, what: &str) -> Result<&DwarfInfo, SymbolError> {
        self.dwarf
            .get_or_init(|| dwarf::load_dwarf(&self.image, &self.owned).map(DwarfInfo::new))
            .as_ref()
            .ok_or_else(|| SymbolError::NoDebugInfo { path: self.path.clone(), what: what.to_owned() })
    }

    /// Code addresses of the anchor functions (their units are searched first).
    pub(crate) fn anchors(&self) -> Vec<u64> {
        dwarf::anchor_functions().iter().filter_map(|n| self.lookup_symbol(n)).map(|s| s.addr.0).collect()
    }

    /// The type names of `.BTF`, if the file has a well-formed one.
    fn btf(&self) -> Option<&btf::BtfTypeNames> {
        self.btf.get_or_init(|| self.image.section(".BTF").and_then(|s| btf::BtfTypeNames::parse(s.data))).as_ref()
    }

    pub(crate) fn find_type(&self, name: &str) -> Result<(&DwarfInfo, DieRef), SymbolError> {
        let d = self.dwarf(&format!("the layout of `{name}`"))?;
        // A type the kernel does not have is answered from BTF's names, not
        // by a scan of all of .debug_info.
        if self.btf().is_some_and(|b| !b.has_type(name)) {
            return Err(SymbolError::UnknownType { name: name.trim().to_owned() });
        }
        let bare = name.trim().strip_prefix("struct ").unwrap_or(name.trim());
        // Fast path: take the type of a variable known to have it.
        if let Some((_, var)) = TYPE_ANCHOR_VARS.iter().find(|(t, _)| *t == bare) {
            if let Some(t) = d.find_variable_type(var, &self.anchors())? {
                let s = d.strip(t)?;
                if d.is_aggregate(s)? {
                    return Ok((d, s));
                }
            }
        }
        match d.find_type(name, &self.anchors())? {
            Some(t) => Ok((d, t)),
            None => Err(SymbolError::UnknownType { name: name.trim().to_owned() }),
        }
    }

    /// Offset, size and type of a member: `"task_struct.pid"`,
    /// `"task_struct.tasks.next"`, `"pcpu_hot.current_task"`. Members of
    /// anonymous structs/unions are found through them. Paths do not
    /// follow pointers.
    pub fn member(&self, path: &str) -> Result<MemberLayout, SymbolError> {
        let mut parts = path.trim().split('.');
        let ty = parts.next().unwrap_or("").trim();
        let members: Vec<&str> = parts.map(str::trim).collect();
        if ty.is_empty() || members.is_empty() || members.iter().any(|m| m.is_empty()) {
            return Err(SymbolError::BadMemberPath { path: path.to_owned() });
        }
        let (d, mut cur) = self.find_type(ty)?;
        let mut cur_name = ty.to_owned();
        let mut offset = 0u64;
        let mut last: Option<(u64, Option<DieRef>)> = None;
        for m in members {
            let s = d.strip(cur)?;
            if !d.is_aggregate(s)? {
                return Err(SymbolError::NotAStruct { type_name: d.type_name(Some(cur))?, member: m.to_owned() });
            }
            match d.find_member(s, m, 0)? {
                Some((off, size, mty)) => {
                    offset += off;
                    last = Some((size, mty));
                    cur_name = format!("{cur_name}.{m}");
                    match mty {
                        Some(t) => cur = t,
                        None => break,
                    }
                }
                None => {
                    let mut names = Vec::new();
                    d.member_names(s, 0, &mut names)?;
                    let mut scored: Vec<(f64, String)> =
                        names.into_iter().map(|n| (strsim::jaro_winkler(m, &n), n)).collect();
                    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                    return Err(SymbolError::UnknownMember {
                        type_name: cur_name,
                        member: m.to_owned(),
                        available: scored.into_iter().take(5).map(|(_, n)| n).collect(),
                    });
                }
            }
        }
        let (size, mty) = last.ok_or_else(|| SymbolError::BadMemberPath { path: path.to_owned() })?;
        Ok(MemberLayout { offset, size, type_name: d.type_name(mty)? })
    }

    /// Whether `member(path)` would succeed.
    pub fn has_member(&self, path: &str) -> bool {
        self.member(path).is_ok()
    }

    /// The enumerators of an enumeration type (`"enum module_state"`), in
    /// declaration order.
    pub fn enumerators(&self, name: &str) -> Result<Vec<(String, i64)>, SymbolError> {
        let (d, t) = self.find_type(name)?;
        d.enumerators(d.strip(t)?)
    }

    /// Size in bytes of a type: `"task_struct"`, `"struct task_struct"`, `"pt_regs"`.
    pub fn type_size(&self, name: &str) -> Result<u64, SymbolError> {
        let (d, t) = self.find_type(name)?;
        d.size_of(t)
    }

    /// The C type of a global (or per-CPU) variable: `"init_task"` →
    /// `"struct task_struct"`, `"current_task"` → `"struct task_struct *"`.
    pub fn variable_type(&self, name: &str) -> Result<String, SymbolError> {
        let d = self.dwarf(&format!("the type of `{name}`"))?;
        // Every global or per-CPU variable is in the symbol table.
        if self.lookup_symbol(name).is_none() {
            return Err(SymbolError::UnknownVariable { name: name.to_owned() });
        }
        match d.find_variable_type(name, &self.anchors())? {
            Some(t) => d.type_name(Some(t)),
            None => Err(SymbolError::UnknownVariable { name: name.to_owned() }),
        }
    }

    /// Source frames at `addr`, innermost (inlined) function first; the
    /// last frame is the real function. Only the one compilation unit
    /// containing `addr` (found by `.debug_aranges`) is parsed, with an
    /// addr2line context cached per unit. Addresses without debug info
    /// (e.g. some assembly) give one frame named from the symbol table.
    pub fn frames(&self, addr: KernelAddr) -> Result<Vec<SourceFrame>, SymbolError> {
        let d = self.dwarf("source lines")?;
        let name = || self.symbolize(addr).map(|s| s.name);
        let Some(u) = d.unit_for_addr(addr.0) else { return lines::frames_named(None, addr.0, name) };
        let mut cache = self.addr2line.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.contains_key(&u) {
            if cache.len() >= MAX_LINE_CONTEXTS {
                cache.clear();
            }
            let ctx = self.unit_context(d, u)?;
            cache.insert(u, ctx);
        }
        lines::frames_named(cache.get(&u), addr.0, name)
    }

    /// An addr2line context that sees only unit `u` of `.debug_info`.
    fn unit_context(&self, d: &DwarfInfo, u: usize) -> Result<addr2line::Context<R>, SymbolError> {
        let no_dwarf = || SymbolError::NoDebugInfo { path: self.path.clone(), what: "source lines".into() };
        let (start, end) = d.unit_range(u).ok_or_else(no_dwarf)?;
        let mut dw = dwarf::load_dwarf(&self.image, &self.owned).ok_or_else(no_dwarf)?;
        let info: &'static [u8] = gimli::Section::reader(&dw.debug_info).slice();
        let endian = gimli::RunTimeEndian::Little;
        dw.debug_info =
            gimli::DebugInfo::from(gimli::EndianSlice::new(info.get(start..end).ok_or_else(no_dwarf)?, endian));
        dw.debug_aranges = gimli::DebugAranges::from(gimli::EndianSlice::new(&[], endian));
        addr2line::Context::from_dwarf(dw).map_err(|e| SymbolError::dwarf("preparing line lookup", e))
    }

    /// The `is_stmt` addresses of `file:line` (`"kernel/sched/core.c"` or
    /// just `"core.c"` if unambiguous), sorted, for setting breakpoints.
    pub fn line_addresses(&self, file: &str, line: u32) -> Result<Vec<KernelAddr>, SymbolError> {
        let d = self.dwarf(&format!("the addresses of {file}:{line}"))?;
        lines::line_addresses(&d.dwarf, file, line)
    }

    /// The ORC unwind table, parsed on first use in the format its
    /// `.orc_header` names, and checked against the symbol table (see
    /// [`OrcTable::self_check`]): tables that fail the check are an error,
    /// so that no backtrace is built from a misread format.
    pub fn orc(&self) -> Result<&OrcTable, SymbolError> {
        let parsed = self.orc.get_or_init(|| {
            let table = OrcTable::parse(&self.image).map_err(|e| e.to_string())?;
            if let Some(t) = &table {
                let check = t.self_check(&self.text_function_starts(), ORC_SELF_CHECK_SAMPLE);
                if !check.ok() {
                    return Err(format!(
                        "the ORC tables fail ktrace's self-check: only {} of {} sampled C functions start with a call frame (CFA = SP + 8) when read as {:?}; this kernel's ORC format is one ktrace does not know",
                        check.passed,
                        check.sampled,
                        t.format()
                    ));
                }
            }
            Ok(table)
        });
        match parsed {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(SymbolError::NoOrc { path: self.path.clone() }),
            Err(reason) => Err(SymbolError::BadOrc { reason: reason.clone() }),
        }
    }

    /// Start addresses of the sized functions in `.text`.
    fn text_function_starts(&self) -> Vec<u64> {
        match (self.index(), self.image.section(".text")) {
            (Ok(idx), Some(text)) => idx.text_function_starts((text.addr, text.addr + text.size)),
            _ => Vec::new(),
        }
    }

    /// Where the caller's callee-saved registers are at link-time address
    /// `addr`, from `.debug_frame` (`Ok(None)`: no FDE covers it).
    pub fn cfi_saved_registers(&self, addr: KernelAddr) -> Result<Option<cfi::SavedRegisters>, SymbolError> {
        let memo = || self.saved_registers_memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&rules) = memo().get(&addr.0) {
            return Ok(rules);
        }
        let rules = match self.cfi_index()? {
            Some(idx) => idx.saved_registers(addr)?,
            None => None,
        };
        let mut m = memo();
        if m.len() >= MAX_SAVED_REGISTERS_MEMO {
            m.clear();
        }
        m.insert(addr.0, rules);
        Ok(rules)
    }

    /// The `.debug_frame` (DWARF CFI) unwind rules at link-time address
    /// `addr`, for code without ORC data. `Ok(None)` when the file has no
    /// `.debug_frame` or no FDE covers `addr`. The FDEs are indexed on the
    /// first call (tens of milliseconds); each lookup evaluates one FDE.
    pub fn cfi(&self, addr: KernelAddr) -> Result<Option<CfiRow>, SymbolError> {
        match self.cfi_index()? {
            Some(idx) => idx.row(addr),
            None => Ok(None),
        }
    }

    pub(crate) fn cfi_index(&self) -> Result<Option<&cfi::CfiIndex>, SymbolError> {
        match self.cfi.get_or_init(|| cfi::CfiIndex::parse(&self.image)) {
            Ok(idx) => Ok(idx.as_ref()),
            Err(message) => Err(SymbolError::dwarf("indexing .debug_frame", message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn vmlinux_is_send_sync() {
        assert_send_sync::<Vmlinux>();
    }

    /// Laziness: a layout question parses a handful of DWARF units, never
    /// all of `.debug_info`.
    #[test]
    fn a_layout_question_parses_few_dwarf_units() {
        let paths: Vec<PathBuf> =
            ktrace_testguest::KernelSeries::ALL.iter().filter_map(|&s| ktrace_testguest::test_vmlinux_of(s)).collect();
        assert!(!paths.is_empty() || !ktrace_testguest::in_ci(), "no test-bed vmlinux to check");
        for path in paths {
            let vm = Vmlinux::open(&path).expect("open");
            vm.member("task_struct.pid").expect("task_struct.pid");
            vm.member("pt_regs.ip").expect("pt_regs.ip");
            let d = vm.dwarf("the test").expect("DWARF");
            let (parsed, all) = (d.parsed_units(), d.unit_offsets().len());
            assert!(all > 100, "{}: only {all} units", path.display());
            assert!(parsed * 50 < all, "{}: {parsed} of {all} units parsed", path.display());
        }
    }

    #[test]
    fn kernel_addr_format() {
        assert_eq!(KernelAddr(0xffffffff81a185a0).to_string(), "0xffffffff81a185a0");
        assert_eq!(format!("{:x}", KernelAddr(0x10)), "10");
        assert_eq!(KernelAddr(1).to_string(), "0x0000000000000001");
    }
}
