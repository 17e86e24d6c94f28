//! The ELF symbol table: name lookup, address lookup and suggestions.

use object::read::elf::ElfFile64;
use object::{Object, ObjectSymbol, SectionKind};

use crate::elf::{ElfImage, PERCPU_SECTION};
use crate::KernelAddr;

/// What kind of thing a symbol names, derived from the section it lives in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub enum SymbolKind {
    /// Code (an executable section).
    Text,
    /// Writable initialised data.
    Data,
    /// Read-only data.
    ReadOnlyData,
    /// Zero-initialised data (NOBITS).
    Bss,
    /// A per-CPU variable (in `.data..percpu`): one instance per CPU, in
    /// each CPU's per-CPU area. Where the section is linked at 0 its address
    /// is an offset into that area; elsewhere it is a kernel address of the
    /// section's template (see `Vmlinux::percpu_section_range`).
    PerCpu,
    /// An absolute symbol (a constant, not in any section).
    Absolute,
    /// Anything else (non-allocated sections, unknown).
    Other,
}

/// A symbol from the vmlinux symbol table.
#[derive(Clone, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub struct Symbol {
    /// The symbol name.
    pub name: String,
    /// Its link-time address (for per-CPU symbols: its address in the per-CPU
    /// section, which is an offset where that section is linked at 0).
    pub addr: KernelAddr,
    /// Its size in bytes as recorded in the symbol table (0 if unknown).
    pub size: u64,
    /// What it names.
    pub kind: SymbolKind,
}

impl Symbol {
    /// Whether this is a per-CPU variable (in the per-CPU section).
    pub fn is_percpu(&self) -> bool {
        self.kind == SymbolKind::PerCpu
    }
}

/// An address expressed relative to the symbol containing it.
#[derive(Clone, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub struct SymbolOffset {
    /// The containing symbol.
    pub name: String,
    /// Offset of the address from the start of the symbol.
    pub offset: u64,
    /// Size of the symbol (0 for assembly labels without a size).
    pub size: u64,
}

impl std::fmt::Display for SymbolOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.size > 0 {
            write!(f, "{}+0x{:x}/0x{:x}", self.name, self.offset, self.size)
        } else {
            write!(f, "{}+0x{:x}", self.name, self.offset)
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub addr: u64,
    pub size: u64,
    pub name: &'static str,
    pub kind: SymbolKind,
    pub func: bool,
    pub global: bool,
}

impl Entry {
    pub(crate) fn to_symbol(self) -> Symbol {
        Symbol { name: self.name.to_owned(), addr: KernelAddr(self.addr), size: self.size, kind: self.kind }
    }
}

/// All named symbols, sorted by name (for lookups) and by address.
pub(crate) struct SymbolIndex {
    /// Sorted by name, then by preference (global, function, non-zero size).
    by_name: Vec<Entry>,
    /// Non-per-CPU, non-absolute symbols sorted by address.
    by_addr: Vec<Entry>,
}

/// How far back `symbolize` walks looking for a symbol that contains the
/// address (symbols nested inside bigger ones are rare in vmlinux).
const MAX_WALK_BACK: usize = 64;

impl SymbolIndex {
    /// Read `.symtab`. Returns `None` if the file has no symbols.
    pub(crate) fn build(image: &ElfImage) -> Option<SymbolIndex> {
        let file = ElfFile64::<object::Endianness>::parse(image.data).ok()?;
        let mut by_name = Vec::with_capacity(160_000);
        for sym in file.symbols() {
            let kind0 = sym.kind();
            if matches!(kind0, object::SymbolKind::Section | object::SymbolKind::File) || sym.is_undefined() {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() {
                continue;
            }
            let kind = match sym.section() {
                object::SymbolSection::Absolute => SymbolKind::Absolute,
                object::SymbolSection::Section(idx) => match image.section_by_index(idx.0) {
                    Some(s) if s.name == PERCPU_SECTION => SymbolKind::PerCpu,
                    Some(s) if !s.alloc => SymbolKind::Other,
                    Some(s) => match s.kind {
                        SectionKind::Text => SymbolKind::Text,
                        SectionKind::UninitializedData | SectionKind::UninitializedTls => SymbolKind::Bss,
                        SectionKind::ReadOnlyData | SectionKind::ReadOnlyString | SectionKind::ReadOnlyDataWithRel => {
                            SymbolKind::ReadOnlyData
                        }
                        SectionKind::Data | SectionKind::Tls => SymbolKind::Data,
                        _ => SymbolKind::Other,
                    },
                    None => SymbolKind::Other,
                },
                _ => SymbolKind::Other,
            };
            by_name.push(Entry {
                addr: sym.address(),
                size: sym.size(),
                name,
                kind,
                func: kind0 == object::SymbolKind::Text,
                global: sym.is_global(),
            });
        }
        if by_name.is_empty() {
            return None;
        }
        let mut by_addr: Vec<Entry> = by_name
            .iter()
            .filter(|e| !matches!(e.kind, SymbolKind::PerCpu | SymbolKind::Absolute | SymbolKind::Other))
            .copied()
            .collect();
        by_addr.sort_unstable_by_key(|e| e.addr);
        by_name.sort_unstable_by(|a, b| {
            a.name
                .cmp(b.name)
                .then(b.global.cmp(&a.global))
                .then(b.func.cmp(&a.func))
                .then((b.size > 0).cmp(&(a.size > 0)))
                .then(a.addr.cmp(&b.addr))
        });
        Some(SymbolIndex { by_name, by_addr })
    }

    /// All symbols called `name`, best first (global, function, sized).
    pub(crate) fn named(&self, name: &str) -> &[Entry] {
        let start = self.by_name.partition_point(|e| e.name < name);
        let end = start + self.by_name[start..].partition_point(|e| e.name == name);
        &self.by_name[start..end]
    }

    /// Up to 5 existing names close to `name`.
    pub(crate) fn suggestions(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(f64, &str)> = Vec::new();
        let mut substr: Vec<&str> = Vec::new();
        let mut last = "";
        for e in &self.by_name {
            if e.name == last {
                continue;
            }
            last = e.name;
            if name.len() >= 3 && e.name.contains(name) {
                substr.push(e.name);
            }
            let s = strsim::jaro_winkler(name, e.name);
            if s >= 0.85 {
                scored.push((s, e.name));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.len().cmp(&b.1.len())));
        substr.sort_by_key(|s| (s.len(), *s));
        let mut out: Vec<String> = Vec::new();
        let push = |s: &str, out: &mut Vec<String>| {
            if out.len() < 5 && !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        };
        for (s, n) in &scored {
            if *s >= 0.93 {
                push(n, &mut out);
            }
        }
        for n in substr.iter().take(3) {
            push(n, &mut out);
        }
        for (_, n) in &scored {
            push(n, &mut out);
        }
        for n in &substr {
            push(n, &mut out);
        }
        out
    }

    /// Start addresses of sized functions in `.text` (ordinary C code; not
    /// entry or init text), sorted.
    pub(crate) fn text_function_starts(&self, text: (u64, u64)) -> Vec<u64> {
        let mut starts: Vec<u64> = self
            .by_addr
            .iter()
            .filter(|e| e.func && e.size >= 16 && e.addr >= text.0 && e.addr < text.1)
            .map(|e| e.addr)
            .collect();
        starts.dedup();
        starts
    }

    /// The symbol containing `addr`, preferring functions.
    pub(crate) fn containing(&self, addr: u64) -> Option<(Entry, u64)> {
        let idx = self.by_addr.partition_point(|e| e.addr <= addr);
        if idx == 0 {
            return None;
        }
        let mut best: Option<Entry> = None;
        for e in self.by_addr[..idx].iter().rev().take(MAX_WALK_BACK) {
            if e.size > 0 && addr < e.addr.saturating_add(e.size) {
                let better = match best {
                    None => true,
                    Some(b) => e.func && !b.func,
                };
                if better {
                    best = Some(*e);
                }
            }
        }
        if let Some(b) = best {
            return Some((b, addr - b.addr));
        }
        // An assembly label without a size: take the nearest one before
        // `addr`, but only if no sized symbol ends in between.
        let prev = self.by_addr[idx - 1];
        if prev.size == 0 {
            let sized_same = self.by_addr[..idx].iter().rev().take_while(|e| e.addr == prev.addr).any(|e| e.size > 0);
            if !sized_same {
                return Some((prev, addr - prev.addr));
            }
        }
        None
    }
}

/// Parse a number given as `0x...` hex or decimal.
pub(crate) fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(&h.replace('_', ""), 16).ok()
    } else {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("16"), Some(16));
        assert_eq!(parse_number("0xffffffff_81000000"), Some(0xffff_ffff_8100_0000));
        assert_eq!(parse_number("zz"), None);
    }

    #[test]
    fn symbol_offset_display() {
        let s = SymbolOffset { name: "f".into(), offset: 4, size: 0x20 };
        assert_eq!(s.to_string(), "f+0x4/0x20");
    }
}
