//! Loaded kernel modules, read from guest memory: the `modules` list, each
//! module's memory regions, its kallsyms and its ORC tables. No file is
//! needed; the layout of `struct module` comes from the vmlinux's DWARF.
//!
//! Two layouts of the regions exist: `core_layout`/`init_layout` (`struct
//! module_layout`, up to Linux 6.3) and `mem[MOD_MEM_NUM_TYPES]` (`struct
//! module_memory`, 6.4 and later), whose region names come from the
//! enumerators of `enum mod_mem_type`.

use std::collections::HashSet;

use std::sync::Arc;

use ktrace_symbols::{KernelAddr, ModuleDebug, OrcFormat, OrcTable, SourceFrame, Vmlinux, ORC_ENTRY_SIZE};
use serde::Serialize;

use crate::task::le_u64;
use crate::{KernelError, Target};
use ktrace_symbols::SymbolError;

/// The most modules a walk follows before calling the list corrupt.
pub const MAX_MODULES: usize = 8192;
/// The most kallsyms symbols read from one module.
const MAX_MODULE_SYMBOLS: usize = 1 << 20;
/// The most ORC entries read from one module.
const MAX_MODULE_ORCS: usize = 1 << 22;
/// Size of an `Elf64_Sym`.
const ELF64_SYM_SIZE: usize = 24;

/// Where a module's memory regions are described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionLayout {
    /// `core_layout` and `init_layout` (`struct module_layout { base, size, text_size, … }`).
    CoreInit {
        /// `module.core_layout`.
        core: u64,
        /// `module.init_layout`.
        init: u64,
        /// `module_layout.base`.
        base: u64,
        /// `module_layout.size`.
        size: u64,
        /// `module_layout.text_size`.
        text_size: u64,
    },
    /// `mem[]` (`struct module_memory { base, size, … }`), indexed by `enum mod_mem_type`.
    Mem {
        /// `module.mem`.
        mem: u64,
        /// `sizeof(struct module_memory)`.
        stride: u64,
        /// `module_memory.base`.
        base: u64,
        /// `module_memory.size`.
        size: u64,
        /// The region names by index (`MOD_TEXT`, `MOD_DATA`, …).
        names: Vec<String>,
    },
}

/// Offsets of `struct module` and friends, from DWARF.
#[derive(Clone, Debug)]
pub struct ModuleLayout {
    /// Link address of the `modules` list head.
    pub modules: KernelAddr,
    /// `module.list`.
    pub list: u64,
    /// `module.name` and its size.
    pub name: (u64, u64),
    /// `module.state` and its size.
    pub state: (u64, u64),
    /// `enum module_state` enumerators.
    pub states: Vec<(String, i64)>,
    /// The regions.
    pub regions: RegionLayout,
    /// `module.kallsyms`, and in `struct mod_kallsyms`: `symtab`, `num_symtab`, `strtab`.
    pub kallsyms: Option<(u64, u64, u64, u64)>,
    /// `module.arch.orc_unwind_ip`, `.orc_unwind`, `.num_orcs`.
    pub orc: Option<(u64, u64, u64)>,
    /// Where each module's sections are (`module.sect_attrs`), where the kernel keeps them.
    pub sections: Option<SectAttrsLayout>,
}

/// Offsets of the section table, from DWARF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectAttrsLayout {
    /// `module.sect_attrs`.
    pub sect_attrs: u64,
    /// `module_sect_attrs.grp.bin_attrs`.
    pub bin_attrs: u64,
    /// `bin_attribute.attr.name`.
    pub name: u64,
    /// The section's address, from the `struct bin_attribute`:
    /// `module_sect_attr.address - module_sect_attr.battr`, or
    /// `bin_attribute.private`.
    pub address: u64,
}

impl SectAttrsLayout {
    /// The layout, or `None` when the kernel keeps no section table
    /// (built without `CONFIG_KALLSYMS` or `CONFIG_SYSFS`).
    pub fn from_vmlinux(vm: &Vmlinux) -> Result<Option<SectAttrsLayout>, SymbolError> {
        if !vm.has_member("module.sect_attrs") {
            return Ok(None);
        }
        let off = |p: &str| vm.member(p).map(|m| m.offset);
        let address = if vm.has_member("module_sect_attr.address") {
            off("module_sect_attr.address")?.wrapping_sub(off("module_sect_attr.battr")?)
        } else {
            off("bin_attribute.private")?
        };
        Ok(Some(SectAttrsLayout {
            sect_attrs: off("module.sect_attrs")?,
            bin_attrs: off("module_sect_attrs.grp.bin_attrs")?,
            name: off("bin_attribute.attr.name")?,
            address,
        }))
    }
}

impl ModuleLayout {
    /// Finds the layout in the vmlinux; fails on a kernel without modules.
    pub fn from_vmlinux(vm: &Vmlinux) -> Result<ModuleLayout, SymbolError> {
        let off = |p: &str| vm.member(p).map(|m| m.offset);
        let name = vm.member("module.name")?;
        let state = vm.member("module.state")?;
        let regions = if vm.has_member("module.mem") {
            let names: Vec<String> = vm
                .enumerators("enum mod_mem_type")?
                .into_iter()
                .filter(|(n, _)| n != "MOD_MEM_NUM_TYPES" && !n.starts_with("MOD_INVALID"))
                .map(|(n, _)| n)
                .collect();
            RegionLayout::Mem {
                mem: off("module.mem")?,
                stride: vm.type_size("struct module_memory")?,
                base: off("module_memory.base")?,
                size: off("module_memory.size")?,
                names,
            }
        } else {
            RegionLayout::CoreInit {
                core: off("module.core_layout")?,
                init: off("module.init_layout")?,
                base: off("module_layout.base")?,
                size: off("module_layout.size")?,
                text_size: off("module_layout.text_size")?,
            }
        };
        let kallsyms = match (
            off("module.kallsyms"),
            off("mod_kallsyms.symtab"),
            off("mod_kallsyms.num_symtab"),
            off("mod_kallsyms.strtab"),
        ) {
            (Ok(k), Ok(s), Ok(n), Ok(t)) => Some((k, s, n, t)),
            _ => None,
        };
        let orc = match (off("module.arch.orc_unwind_ip"), off("module.arch.orc_unwind"), off("module.arch.num_orcs")) {
            (Ok(ip), Ok(u), Ok(n)) => Some((ip, u, n)),
            _ => None,
        };
        Ok(ModuleLayout {
            modules: vm.symbol("modules")?.addr,
            list: off("module.list")?,
            name: (name.offset, name.size),
            state: (state.offset, state.size),
            states: vm.enumerators("enum module_state")?,
            regions,
            kallsyms,
            orc,
            // Only the lines of module debug files need it: a kernel
            // without it (or with an unknown one) still lists modules.
            sections: SectAttrsLayout::from_vmlinux(vm).ok().flatten(),
        })
    }
}

/// One memory region of a module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleRegion {
    /// `MOD_TEXT`, `MOD_DATA`, … (or `core`, `core_text`, `init`).
    pub kind: String,
    /// Start address.
    #[serde(serialize_with = "ktrace_symbols::hex::serialize")]
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Whether it holds code.
    pub text: bool,
}

/// A loaded module, as `lsmod` and `/proc/modules` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleInfo {
    /// The `struct module`.
    #[serde(serialize_with = "ktrace_symbols::hex::serialize")]
    pub module: u64,
    /// Its name.
    pub name: String,
    /// `Live`, `Loading`, `Unloading` (as `/proc/modules`) or `Unformed`.
    pub state: String,
    /// Where its code starts (what `/proc/modules` shows).
    #[serde(serialize_with = "ktrace_symbols::hex::serialize")]
    pub base: u64,
    /// Its size in bytes, all regions (what `/proc/modules` shows).
    pub size: u64,
    /// Its regions, empty ones left out.
    pub regions: Vec<ModuleRegion>,
}

impl ModuleInfo {
    /// Whether `addr` is in one of its code regions.
    pub fn contains_code(&self, addr: u64) -> bool {
        self.regions.iter().any(|r| r.text && addr >= r.base && addr < r.base.saturating_add(r.size))
    }
}

/// A module symbol from its kallsyms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleSymbol {
    /// The name.
    pub name: String,
    /// Runtime address.
    pub addr: u64,
    /// Size in bytes (0 when unknown).
    pub size: u64,
    /// A function.
    pub func: bool,
}

/// A module with its symbols and ORC table.
#[derive(Debug)]
pub struct LoadedModule {
    /// What lsmod shows.
    pub info: ModuleInfo,
    /// Its symbols, sorted by address.
    pub symbols: Vec<ModuleSymbol>,
    /// Its ORC table (runtime addresses), when it has one.
    pub orc: Option<OrcTable>,
    /// Its debug file placed where it was loaded, once asked for
    /// ([`crate::Kernel::module_debug`]) and found to match.
    pub debug: Option<Arc<ModuleDebug>>,
}

impl LoadedModule {
    /// The function containing `addr` and the offset into it.
    pub fn symbolize(&self, addr: u64) -> Option<(&ModuleSymbol, u64)> {
        let idx = self.symbols.partition_point(|s| s.addr <= addr);
        let sym = self.symbols[..idx].iter().rev().find(|s| s.func || s.size > 0)?;
        let end = if sym.size > 0 { sym.addr + sym.size } else { u64::MAX };
        (addr < end && self.info.contains_code(addr)).then(|| (sym, addr - sym.addr))
    }

    /// Source frames at `addr` (file:line and inlined functions) from the
    /// module's debug file; empty without one.
    pub fn source_frames(&self, addr: u64) -> Vec<SourceFrame> {
        self.debug.as_ref().and_then(|d| d.frames(addr).ok()).unwrap_or_default()
    }

    /// The symbol called `name`.
    pub fn symbol(&self, name: &str) -> Option<&ModuleSymbol> {
        self.symbols.iter().find(|s| s.name == name)
    }
}

/// The loaded modules, read once and kept until refreshed.
#[derive(Debug, Default)]
pub struct Modules {
    /// In list order (the most recently loaded first).
    pub modules: Vec<LoadedModule>,
}

impl Modules {
    /// The module whose code contains `addr`.
    pub fn by_code_addr(&self, addr: u64) -> Option<&LoadedModule> {
        self.modules.iter().find(|m| m.info.contains_code(addr))
    }

    /// The module whose code contains `addr`, to change.
    pub fn by_code_addr_mut(&mut self, addr: u64) -> Option<&mut LoadedModule> {
        self.modules.iter_mut().find(|m| m.info.contains_code(addr))
    }

    /// The module called `name`.
    pub fn by_name(&self, name: &str) -> Option<&LoadedModule> {
        self.modules.iter().find(|m| m.info.name == name)
    }

    /// A symbol: `module:symbol`, or a bare name looked up in every module.
    pub fn resolve(&self, spec: &str) -> Option<(&LoadedModule, &ModuleSymbol)> {
        match spec.split_once(':') {
            Some((m, s)) => self.by_name(m).and_then(|m| Some((m, m.symbol(s)?))),
            None => self.modules.iter().find_map(|m| Some((m, m.symbol(spec)?))),
        }
    }
}

fn read_err<E>(what: String, addr: u64) -> impl FnOnce(KernelError<E>) -> KernelError<E> {
    move |e| e.reading(what, addr)
}

/// Walks the `modules` list: every module's name, state and regions.
pub async fn read_module_list<T: Target>(
    target: &mut T,
    layout: &ModuleLayout,
    slide: u64,
) -> Result<Vec<ModuleInfo>, KernelError<T::Error>> {
    let head = layout.modules.0.wrapping_add(slide);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut node = target.read_u64(head).await.map_err(read_err("the modules list head".into(), head))?;
    while node != head {
        if node == 0 || !seen.insert(node) {
            return Err(KernelError::Corrupt(format!("the modules list loops or breaks at 0x{node:x}")));
        }
        if out.len() >= MAX_MODULES {
            return Err(KernelError::Corrupt(format!("the modules list has more than {MAX_MODULES} entries")));
        }
        let module = node.wrapping_sub(layout.list);
        out.push(read_module(target, layout, module).await?);
        node = target.read_u64(node).await.map_err(read_err(format!("module 0x{module:x}'s list link"), node))?;
    }
    Ok(out)
}

async fn read_module<T: Target>(
    target: &mut T,
    layout: &ModuleLayout,
    module: u64,
) -> Result<ModuleInfo, KernelError<T::Error>> {
    let name_bytes = target
        .read_memory(module + layout.name.0, layout.name.1 as usize)
        .await
        .map_err(KernelError::Target)
        .map_err(read_err(format!("module 0x{module:x}'s name"), module + layout.name.0))?;
    let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
    let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
    let raw_state =
        target.read_memory(module + layout.state.0, layout.state.1 as usize).await.map_err(KernelError::Target)?;
    let state_value = le_u64(&raw_state) as i64;
    let state = layout
        .states
        .iter()
        .find(|(_, v)| *v == state_value)
        .map(|(n, _)| state_name(n))
        .unwrap_or_else(|| format!("state {state_value}"));
    let mut regions = Vec::new();
    match &layout.regions {
        RegionLayout::CoreInit { core, init, base, size, text_size } => {
            for (kind, at) in [("core", core), ("init", init)] {
                let l = module + at;
                let b = target.read_u64(l + base).await?;
                let s = le_u64(&target.read_memory(l + size, 4).await.map_err(KernelError::Target)?);
                let t = le_u64(&target.read_memory(l + text_size, 4).await.map_err(KernelError::Target)?);
                if s > 0 {
                    regions.push(ModuleRegion { kind: format!("{kind}_text"), base: b, size: t, text: true });
                    regions.push(ModuleRegion { kind: kind.into(), base: b + t, size: s - t.min(s), text: false });
                }
            }
        }
        RegionLayout::Mem { mem, stride, base, size, names } => {
            for (i, kind) in names.iter().enumerate() {
                let m = module + mem + i as u64 * stride;
                let b = target.read_u64(m + base).await?;
                let s = le_u64(&target.read_memory(m + size, 4).await.map_err(KernelError::Target)?);
                if s > 0 {
                    regions.push(ModuleRegion { kind: kind.clone(), base: b, size: s, text: kind.contains("TEXT") });
                }
            }
        }
    }
    let base = regions.iter().find(|r| r.text).map_or(0, |r| r.base);
    let size = regions.iter().map(|r| r.size).sum();
    Ok(ModuleInfo { module, name, state, base, size, regions })
}

/// The state as `/proc/modules` prints it: `MODULE_STATE_LIVE` → `Live`,
/// `COMING` → `Loading`, `GOING` → `Unloading` (others: capitalized).
fn state_name(enumerator: &str) -> String {
    let s = enumerator.strip_prefix("MODULE_STATE_").unwrap_or(enumerator).to_ascii_lowercase();
    match s.as_str() {
        "coming" => "Loading".into(),
        "going" => "Unloading".into(),
        _ => {
            let mut c = s.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        }
    }
}

/// Reads a module's kallsyms (`mod->kallsyms`): its symbols, sorted by address.
pub async fn read_module_symbols<T: Target>(
    target: &mut T,
    layout: &ModuleLayout,
    info: &ModuleInfo,
) -> Result<Vec<ModuleSymbol>, KernelError<T::Error>> {
    let Some((kallsyms, symtab, num_symtab, strtab)) = layout.kallsyms else { return Ok(Vec::new()) };
    let m = info.module;
    let k = target.read_u64(m + kallsyms).await.map_err(read_err(format!("{}'s kallsyms", info.name), m + kallsyms))?;
    if k == 0 {
        return Ok(Vec::new());
    }
    let syms_at = target.read_u64(k + symtab).await?;
    let count = le_u64(&target.read_memory(k + num_symtab, 4).await.map_err(KernelError::Target)?) as usize;
    let strs_at = target.read_u64(k + strtab).await?;
    if count > MAX_MODULE_SYMBOLS {
        return Err(KernelError::Corrupt(format!("module {} claims {count} symbols", info.name)));
    }
    let raw = target
        .read_memory(syms_at, count * ELF64_SYM_SIZE)
        .await
        .map_err(KernelError::Target)
        .map_err(read_err(format!("{}'s symbol table", info.name), syms_at))?;
    let entries: Vec<(u32, u8, u64, u64)> = raw
        .chunks_exact(ELF64_SYM_SIZE)
        .map(|e| (le_u64(&e[0..4]) as u32, e[4], le_u64(&e[8..16]), le_u64(&e[16..24])))
        .collect();
    // The string table ends after the last name referenced, whose length is
    // unknown: read in small chunks up to the first unreadable one.
    // Chunks are aligned, so that none straddles into an unmapped page.
    const CHUNK: u64 = 256;
    let end = strs_at + entries.iter().map(|e| u64::from(e.0)).max().unwrap_or(0) + CHUNK;
    let first = strs_at & !(CHUNK - 1);
    let reqs: Vec<(u64, usize)> = (first..end).step_by(CHUNK as usize).map(|a| (a, CHUNK as usize)).collect();
    let mut strings = Vec::new();
    for chunk in target.read_memory_many(&reqs).await.map_err(KernelError::Target)? {
        match chunk {
            Some(c) => strings.extend_from_slice(&c),
            None => break,
        }
    }
    let strings = strings.get((strs_at - first) as usize..).unwrap_or(&[]).to_vec();
    let mut out: Vec<ModuleSymbol> = entries
        .into_iter()
        .filter_map(|(name, st_info, value, size)| {
            let bytes = strings.get(name as usize..)?;
            let end = bytes.iter().position(|&b| b == 0)?;
            let name = String::from_utf8_lossy(&bytes[..end]).into_owned();
            (!name.is_empty() && value != 0).then_some(ModuleSymbol {
                name,
                addr: value,
                size,
                func: st_info & 0xf == 2,
            })
        })
        .collect();
    out.sort_by_key(|s| s.addr);
    Ok(out)
}

/// Reads a module's ORC tables (`mod->arch.orc_unwind_ip`, `orc_unwind`,
/// `num_orcs`), decoded in the vmlinux's format.
pub async fn read_module_orc<T: Target>(
    target: &mut T,
    layout: &ModuleLayout,
    info: &ModuleInfo,
    format: OrcFormat,
) -> Result<Option<OrcTable>, KernelError<T::Error>> {
    let Some((ip, unwind, num)) = layout.orc else { return Ok(None) };
    let m = info.module;
    let ip_at = target.read_u64(m + ip).await?;
    let unwind_at = target.read_u64(m + unwind).await?;
    let n = le_u64(&target.read_memory(m + num, 4).await.map_err(KernelError::Target)?) as usize;
    if n == 0 || ip_at == 0 || unwind_at == 0 {
        return Ok(None);
    }
    if n > MAX_MODULE_ORCS {
        return Err(KernelError::Corrupt(format!("module {} claims {n} ORC entries", info.name)));
    }
    let ips = target
        .read_memory(ip_at, 4 * n)
        .await
        .map_err(KernelError::Target)
        .map_err(read_err(format!("{}'s ORC ips", info.name), ip_at))?;
    let entries = target
        .read_memory(unwind_at, ORC_ENTRY_SIZE * n)
        .await
        .map_err(KernelError::Target)
        .map_err(read_err(format!("{}'s ORC entries", info.name), unwind_at))?;
    Ok(Some(OrcTable::from_raw(ip_at, &ips, &entries, format)?))
}

/// Reads every module with its symbols and ORC table.
pub async fn read_modules<T: Target>(
    target: &mut T,
    layout: &ModuleLayout,
    slide: u64,
    format: Option<OrcFormat>,
) -> Result<Modules, KernelError<T::Error>> {
    let mut modules = Vec::new();
    for info in read_module_list(target, layout, slide).await? {
        let symbols = read_module_symbols(target, layout, &info).await?;
        let orc = match format {
            Some(f) => read_module_orc(target, layout, &info, f).await?,
            None => None,
        };
        modules.push(LoadedModule { info, symbols, orc, debug: None });
    }
    Ok(Modules { modules })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticTarget;

    const HEAD: u64 = 0xffff_ffff_8200_0000;
    const M1: u64 = 0xffff_ffff_c000_1000;
    const M2: u64 = 0xffff_ffff_c000_9000;

    fn mem_layout() -> ModuleLayout {
        ModuleLayout {
            modules: KernelAddr(HEAD),
            list: 8,
            name: (24, 56),
            state: (0, 4),
            states: vec![("MODULE_STATE_LIVE".into(), 0), ("MODULE_STATE_COMING".into(), 1)],
            regions: RegionLayout::Mem {
                mem: 0x100,
                stride: 0x40,
                base: 0,
                size: 8,
                names: vec!["MOD_TEXT".into(), "MOD_DATA".into(), "MOD_RODATA".into()],
            },
            kallsyms: Some((0x300, 0, 8, 16)),
            orc: None,
            sections: None,
        }
    }

    fn core_init_layout() -> ModuleLayout {
        ModuleLayout {
            regions: RegionLayout::CoreInit { core: 0x140, init: 0x190, base: 0, size: 8, text_size: 12 },
            ..mem_layout()
        }
    }

    fn module(t: &mut SyntheticTarget, at: u64, next: u64, prev: u64, name: &str, state: u32) {
        let mut b = vec![0u8; 0x400];
        b[0..4].copy_from_slice(&state.to_le_bytes());
        b[8..16].copy_from_slice(&(next).to_le_bytes());
        b[16..24].copy_from_slice(&(prev).to_le_bytes());
        b[24..24 + name.len()].copy_from_slice(name.as_bytes());
        t.map(at, &b);
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    /// Two modules linked after the head: brd (live), loop (coming).
    fn two_modules(t: &mut SyntheticTarget) {
        t.map(HEAD, &[0u8; 16]);
        t.write_u64(HEAD, M1 + 8).write_u64(HEAD + 8, M2 + 8);
        module(t, M1, M2 + 8, HEAD, "brd", 0);
        module(t, M2, HEAD, M1 + 8, "loop", 1);
    }

    #[test]
    fn mem_regions_layout() {
        let mut t = SyntheticTarget::new(1);
        two_modules(&mut t);
        // brd: text 0x3000 bytes at 0xffffffffc0200000, data 0x1000.
        t.write_u64(M1 + 0x100, 0xffff_ffff_c020_0000).write_u64(M1 + 0x108, 0x3000);
        t.write_u64(M1 + 0x140, 0xffff_ffff_c030_0000).write_u64(M1 + 0x148, 0x1000);
        let mods = block_on(read_module_list(&mut t, &mem_layout(), 0)).expect("list");
        assert_eq!(mods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["brd", "loop"]);
        assert_eq!((mods[0].state.as_str(), mods[1].state.as_str()), ("Live", "Loading"));
        assert_eq!((mods[0].base, mods[0].size), (0xffff_ffff_c020_0000, 0x4000));
        assert_eq!(mods[0].regions.len(), 2);
        assert!(mods[0].contains_code(0xffff_ffff_c020_0010));
        assert!(!mods[0].contains_code(0xffff_ffff_c030_0010), "data is not code");
        assert!(mods[1].regions.is_empty());
    }

    #[test]
    fn core_init_layout_regions() {
        let mut t = SyntheticTarget::new(1);
        two_modules(&mut t);
        // core: 0x5000 bytes, the first 0x2000 text; init empty.
        t.write_u64(M1 + 0x140, 0xffff_ffff_c040_0000);
        t.write(M1 + 0x148, &0x5000u32.to_le_bytes()).write(M1 + 0x14c, &0x2000u32.to_le_bytes());
        let mods = block_on(read_module_list(&mut t, &core_init_layout(), 0)).expect("list");
        let brd = &mods[0];
        assert_eq!((brd.base, brd.size), (0xffff_ffff_c040_0000, 0x5000));
        assert!(brd.contains_code(0xffff_ffff_c040_1fff));
        assert!(!brd.contains_code(0xffff_ffff_c040_2000));
    }

    #[test]
    fn a_cyclic_module_list_is_corrupt() {
        let mut t = SyntheticTarget::new(1);
        two_modules(&mut t);
        // loop's next points back at brd instead of the head.
        t.write_u64(M2 + 8, M1 + 8);
        let err = block_on(read_module_list(&mut t, &mem_layout(), 0)).expect_err("cycle").to_string();
        assert!(err.contains("loops"), "{err}");
        // A NULL link.
        t.write_u64(M2 + 8, 0);
        assert!(block_on(read_module_list(&mut t, &mem_layout(), 0)).is_err());
    }

    #[test]
    fn kallsyms_from_memory() {
        let mut t = SyntheticTarget::new(1);
        two_modules(&mut t);
        t.write_u64(M1 + 0x100, 0xffff_ffff_c020_0000).write_u64(M1 + 0x108, 0x3000);
        let kallsyms = 0xffff_ffff_c050_0000;
        let (symtab, strtab) = (0xffff_ffff_c051_0000u64, 0xffff_ffff_c052_0000u64);
        t.map(kallsyms, &[0u8; 24]);
        t.write_u64(M1 + 0x300, kallsyms).write_u64(kallsyms, symtab).write(kallsyms + 8, &3u32.to_le_bytes());
        t.write_u64(kallsyms + 16, strtab);
        let strings = b"\0brd_submit_bio\0brd_init\0rd_size\0";
        t.map(strtab, &[0u8; 256]).write(strtab, strings);
        t.map(symtab, &[0u8; 72]);
        let sym = |t: &mut SyntheticTarget, i: u64, name: u32, info: u8, value: u64, size: u64| {
            let at = symtab + 24 * i;
            t.write(at, &name.to_le_bytes()).write(at + 4, &[info]).write_u64(at + 8, value).write_u64(at + 16, size);
        };
        sym(&mut t, 0, 1, 0x02, 0xffff_ffff_c020_0100, 0x80); // brd_submit_bio, FUNC
        sym(&mut t, 1, 16, 0x12, 0xffff_ffff_c020_0000, 0x40); // brd_init, global FUNC
        sym(&mut t, 2, 25, 0x01, 0xffff_ffff_c030_0000, 4); // rd_size, OBJECT
        let l = mem_layout();
        let info = block_on(read_module_list(&mut t, &l, 0)).expect("list").remove(0);
        let symbols = block_on(read_module_symbols(&mut t, &l, &info)).expect("symbols");
        assert_eq!(
            symbols.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["brd_init", "brd_submit_bio", "rd_size"]
        );
        let m = LoadedModule { info, symbols, orc: None, debug: None };
        let (s, off) = m.symbolize(0xffff_ffff_c020_0110).expect("in brd_submit_bio");
        assert_eq!((s.name.as_str(), off), ("brd_submit_bio", 0x10));
        assert!(m.symbolize(0xffff_ffff_c020_0190).is_none(), "past its end");
        let mods = Modules { modules: vec![m] };
        assert_eq!(mods.resolve("brd:brd_submit_bio").map(|(_, s)| s.addr), Some(0xffff_ffff_c020_0100));
        assert_eq!(mods.resolve("brd_init").map(|(m, _)| m.info.name.as_str()), Some("brd"));
        assert!(mods.resolve("loop:brd_init").is_none());
        assert!(mods.by_code_addr(0xffff_ffff_c020_0000).is_some());
    }

    #[test]
    fn state_names_as_proc_modules_prints_them() {
        assert_eq!(state_name("MODULE_STATE_LIVE"), "Live");
        assert_eq!(state_name("MODULE_STATE_UNFORMED"), "Unformed");
        assert_eq!(state_name("MODULE_STATE_GOING"), "Unloading");
    }
}
