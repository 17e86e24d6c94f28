//! Lazy, targeted access to the DWARF in the vmlinux: no index of
//! `.debug_info` is built; units are parsed one at a time on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use gimli::{AttributeValue, DebugInfoOffset, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};

use crate::elf::ElfImage;
use crate::keyword::TypeKeyword;
use crate::SymbolError;

/// The gimli reader used throughout: a slice of the mmap'd file.
pub(crate) type R = EndianSlice<'static, RunTimeEndian>;
pub(crate) type Unit = gimli::Unit<R>;

/// A DIE anywhere in `.debug_info`: its unit (by header offset) and its
/// offset inside the unit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct DieRef {
    pub unit: usize,
    pub off: UnitOffset<usize>,
}

/// Function whose compilation units are searched first for types and
/// variables: between them they define every type ktrace needs.
const ANCHOR_FUNCTIONS: &[&str] = &["__schedule", "cpu_init", "start_kernel", "do_exit", "copy_process"];

pub(crate) struct DwarfInfo {
    pub dwarf: gimli::Dwarf<R>,
    aranges: OnceLock<Vec<(u64, u64, usize)>>,
    unit_offsets: OnceLock<Vec<usize>>,
    units: Mutex<HashMap<usize, Arc<Unit>>>,
    types: Mutex<HashMap<String, Option<DieRef>>>,
    vars: Mutex<HashMap<String, Option<DieRef>>>,
}

/// Load the DWARF sections of `image` as slices of the map. Compressed
/// sections are decompressed and leaked into `owned` (kept by the caller).
pub(crate) fn load_dwarf(image: &ElfImage, owned: &OwnedSections) -> Option<gimli::Dwarf<R>> {
    let info = image.section(".debug_info")?;
    if info.data.is_empty() {
        return None;
    }
    let file = object::read::elf::ElfFile64::<object::Endianness>::parse(image.data).ok()?;
    let load = |id: gimli::SectionId| -> Result<R, ()> {
        let data: &'static [u8] = match file.section_by_name(id.name()) {
            Some(s) => match s.compressed_data().map(|c| c.format) {
                Ok(object::CompressionFormat::None) | Err(_) => s.data().unwrap_or(&[]),
                Ok(_) => match s.uncompressed_data() {
                    Ok(std::borrow::Cow::Borrowed(b)) => b,
                    Ok(std::borrow::Cow::Owned(v)) => owned.keep(v),
                    Err(_) => &[],
                },
            },
            None => &[],
        };
        Ok(EndianSlice::new(data, RunTimeEndian::Little))
    };
    gimli::Dwarf::load(load).ok()
}

/// Storage for decompressed debug sections; they live as long as the
/// `Vmlinux` that owns this.
#[derive(Default)]
pub(crate) struct OwnedSections(Mutex<Vec<Box<[u8]>>>);

impl OwnedSections {
    pub(crate) fn keep(&self, v: Vec<u8>) -> &'static [u8] {
        let b = v.into_boxed_slice();
        // SAFETY: the boxed slice's heap buffer never moves and is only
        // freed when `OwnedSections` is dropped, which `Vmlinux` does after
        // dropping everything that borrows from it (field order).
        let s: &'static [u8] = unsafe { std::slice::from_raw_parts(b.as_ptr(), b.len()) };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(b);
        s
    }
}

fn derr(ctx: &str) -> impl Fn(gimli::Error) -> SymbolError + '_ {
    move |e| SymbolError::dwarf(ctx, e)
}

impl DwarfInfo {
    pub(crate) fn new(dwarf: gimli::Dwarf<R>) -> DwarfInfo {
        DwarfInfo {
            dwarf,
            aranges: OnceLock::new(),
            unit_offsets: OnceLock::new(),
            units: Mutex::default(),
            types: Mutex::default(),
            vars: Mutex::default(),
        }
    }

    /// Address ranges from `.debug_aranges` (code only), sorted.
    fn aranges(&self) -> &[(u64, u64, usize)] {
        self.aranges.get_or_init(|| {
            let mut out = Vec::new();
            let mut headers = self.dwarf.debug_aranges.headers();
            while let Ok(Some(h)) = headers.next() {
                let cu = h.debug_info_offset().0;
                let mut entries = h.entries();
                while let Ok(Some(e)) = entries.next() {
                    let r = e.range();
                    if r.end > r.begin {
                        out.push((r.begin, r.end, cu));
                    }
                }
            }
            out.sort_unstable();
            out
        })
    }

    /// The unit whose code contains `addr`, by `.debug_aranges`.
    pub(crate) fn unit_for_addr(&self, addr: u64) -> Option<usize> {
        let a = self.aranges();
        let idx = a.partition_point(|r| r.0 <= addr);
        a[..idx].iter().rev().take(8).find(|r| addr < r.1).map(|r| r.2)
    }

    /// Offsets of all unit headers, in file order. Taken from
    /// `.debug_aranges` when it lists units (reading 2000+ scattered unit
    /// headers would fault in ~100 MB of the map); otherwise by walking the
    /// headers.
    /// How many units have been parsed so far (laziness is tested with it).
    #[cfg(test)]
    pub(crate) fn parsed_units(&self) -> usize {
        self.units.lock().map_or(0, |u| u.len())
    }

    pub(crate) fn unit_offsets(&self) -> &[usize] {
        self.unit_offsets.get_or_init(|| {
            let mut out = Vec::new();
            let mut headers = self.dwarf.debug_aranges.headers();
            while let Ok(Some(h)) = headers.next() {
                out.push(h.debug_info_offset().0);
            }
            if out.is_empty() {
                let mut it = self.dwarf.units();
                while let Ok(Some(h)) = it.next() {
                    out.push(h.offset().0);
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        })
    }

    /// The header offset of the unit containing `.debug_info` offset `o`.
    fn unit_containing(&self, o: usize) -> Option<usize> {
        let offs = self.unit_offsets();
        let idx = offs.partition_point(|&u| u <= o).checked_sub(1)?;
        let u = offs[idx];
        // Check that the unit really covers `o` (aranges may miss units).
        let h = self.dwarf.debug_info.header_from_offset(DebugInfoOffset(u)).ok()?;
        if o < u + h.length_including_self() {
            return Some(u);
        }
        let mut it = self.dwarf.units();
        while let Ok(Some(h)) = it.next() {
            let start = h.offset().0;
            if start <= o && o < start + h.length_including_self() {
                return Some(start);
            }
        }
        None
    }

    /// `(start, end)` in `.debug_info` of the unit at header offset `u`.
    pub(crate) fn unit_range(&self, u: usize) -> Option<(usize, usize)> {
        let h = self.dwarf.debug_info.header_from_offset(DebugInfoOffset(u)).ok()?;
        Some((u, u + h.length_including_self()))
    }

    fn parse_unit(&self, offset: usize) -> Result<Unit, SymbolError> {
        let header =
            self.dwarf.debug_info.header_from_offset(DebugInfoOffset(offset)).map_err(derr("reading a unit header"))?;
        self.dwarf.unit(header).map_err(derr("parsing a compilation unit"))
    }

    /// The (cached) unit at header offset `offset`.
    pub(crate) fn unit(&self, offset: usize) -> Result<Arc<Unit>, SymbolError> {
        if let Some(u) = self.units.lock().unwrap_or_else(|e| e.into_inner()).get(&offset) {
            return Ok(u.clone());
        }
        let u = Arc::new(self.parse_unit(offset)?);
        self.units.lock().unwrap_or_else(|e| e.into_inner()).insert(offset, u.clone());
        Ok(u)
    }

    /// Resolve a DW_AT_type-like reference attribute found in `unit`.
    pub(crate) fn resolve_ref(&self, unit: usize, v: AttributeValue<R>) -> Option<DieRef> {
        match v {
            AttributeValue::UnitRef(off) => Some(DieRef { unit, off }),
            AttributeValue::DebugInfoRef(DebugInfoOffset(o)) => {
                let u = self.unit_containing(o)?;
                Some(DieRef { unit: u, off: UnitOffset(o - u) })
            }
            _ => None,
        }
    }

    /// The name (DW_AT_name) of an entry, as bytes.
    pub(crate) fn name_of(&self, unit: &Unit, e: &gimli::DebuggingInformationEntry<R>) -> Option<&'static [u8]> {
        let v = e.attr_value(gimli::DW_AT_name)?;
        self.dwarf.attr_string(unit, v).ok().map(|s| s.slice())
    }

    /// Units to search for a named thing: the anchor units first, then
    /// (only if `all`) every unit in file order.
    fn search_order(&self, anchors: &[u64]) -> Vec<usize> {
        let mut order: Vec<usize> = Vec::new();
        for &a in anchors {
            if let Some(u) = self.unit_for_addr(a) {
                if !order.contains(&u) {
                    order.push(u);
                }
            }
        }
        order
    }

    /// Visit the top-level DIEs of unit `u` (children of the unit DIE),
    /// skipping subtrees, until `f` returns `Some`.
    fn scan_top_level<T>(
        &self,
        offset: usize,
        mut f: impl FnMut(&Unit, &gimli::DebuggingInformationEntry<R>) -> Option<T>,
    ) -> Result<Option<T>, SymbolError> {
        let unit = self.parse_unit(offset)?;
        let mut tree = unit.entries_tree(None).map_err(derr("reading a unit"))?;
        let root = tree.root().map_err(derr("reading a unit"))?;
        let mut children = root.children();
        while let Some(child) = children.next().map_err(derr("reading a unit"))? {
            if let Some(t) = f(&unit, child.entry()) {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// Search anchor units then all units for the first top-level DIE that
    /// `pred` accepts.
    fn find_top_level(
        &self,
        anchors: &[u64],
        pred: impl Fn(&Unit, &gimli::DebuggingInformationEntry<R>) -> bool,
    ) -> Result<Option<DieRef>, SymbolError> {
        let first = self.search_order(anchors);
        // `unit_offsets` is only computed if the anchors do not have it.
        let rest =
            std::iter::once(()).flat_map(|()| self.unit_offsets().iter().copied()).filter(|u| !first.contains(u));
        for u in first.iter().copied().chain(rest) {
            let hit = self.scan_top_level(u, |unit, e| pred(unit, e).then(|| e.offset()))?;
            if let Some(off) = hit {
                return Ok(Some(DieRef { unit: u, off }));
            }
        }
        Ok(None)
    }

    /// Find the definition of the type `name` ("task_struct", "struct
    /// task_struct", "union foo", "enum bar", "pid_t").
    pub(crate) fn find_type(&self, name: &str, anchors: &[u64]) -> Result<Option<DieRef>, SymbolError> {
        let key = name.trim().to_owned();
        if let Some(r) = self.types.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(*r);
        }
        let (keyword, bare) = TypeKeyword::split(&key);
        let tags: &[gimli::DwTag] = match keyword {
            TypeKeyword::Struct => &[gimli::DW_TAG_structure_type],
            TypeKeyword::Union => &[gimli::DW_TAG_union_type],
            TypeKeyword::Enum => &[gimli::DW_TAG_enumeration_type],
            TypeKeyword::None => &[
                gimli::DW_TAG_structure_type,
                gimli::DW_TAG_union_type,
                gimli::DW_TAG_typedef,
                gimli::DW_TAG_base_type,
                gimli::DW_TAG_enumeration_type,
            ],
        };
        let found = self.find_top_level(anchors, |unit, e| {
            tags.contains(&e.tag())
                && e.attr(gimli::DW_AT_declaration).is_none()
                && self.name_of(unit, e) == Some(bare.as_bytes())
        })?;
        self.types.lock().unwrap_or_else(|e| e.into_inner()).insert(key, found);
        Ok(found)
    }

    /// Find the type of the global variable `name`. `anchors` are code
    /// addresses whose units are searched first.
    pub(crate) fn find_variable_type(&self, name: &str, anchors: &[u64]) -> Result<Option<DieRef>, SymbolError> {
        if let Some(r) = self.vars.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(*r);
        }
        let var = self.find_top_level(anchors, |unit, e| {
            e.tag() == gimli::DW_TAG_variable
                && e.attr(gimli::DW_AT_type).is_some()
                && self.name_of(unit, e) == Some(name.as_bytes())
        })?;
        let ty = match var {
            Some(v) => {
                let unit = self.unit(v.unit)?;
                let e = unit.entry(v.off).map_err(derr("reading a variable"))?;
                e.attr_value(gimli::DW_AT_type).and_then(|t| self.resolve_ref(v.unit, t))
            }
            None => None,
        };
        self.vars.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), ty);
        Ok(ty)
    }
}

impl DwarfInfo {
    /// The value and enum type of enumerator `name`, from the enums the
    /// anchor units define at top level (no scan of every unit).
    pub(crate) fn find_enumerator(&self, name: &str, anchors: &[u64]) -> Result<Option<(i64, DieRef)>, SymbolError> {
        for u in self.search_order(anchors) {
            let unit = self.unit(u)?;
            let mut tree = unit.entries_tree(None).map_err(derr("reading a unit"))?;
            let root = tree.root().map_err(derr("reading a unit"))?;
            let mut children = root.children();
            while let Some(child) = children.next().map_err(derr("reading a unit"))? {
                if child.entry().tag() != gimli::DW_TAG_enumeration_type {
                    continue;
                }
                let enum_ref = DieRef { unit: u, off: child.entry().offset() };
                if let Some((_, v)) = self.enumerators(enum_ref)?.into_iter().find(|(n, _)| n == name) {
                    return Ok(Some((v, enum_ref)));
                }
            }
        }
        Ok(None)
    }
}

/// The anchor function names.
pub(crate) fn anchor_functions() -> &'static [&'static str] {
    ANCHOR_FUNCTIONS
}
