//! DWARF call frame information (`.debug_frame`): how to find the caller's
//! frame at an address, for the code the ORC tables do not cover.
//!
//! The FDEs are indexed by address on first use (one pass over the
//! section, building a sorted `(start, end, offset)` table); each lookup is
//! then a binary search plus the evaluation of one FDE's CFI program.
//! `.rela.debug_frame` is deliberately not applied: the vmlinux is an
//! `ET_EXEC` whose section contents already hold final addresses.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use gimli::{BaseAddresses, CommonInformationEntry, DebugFrame, LittleEndian, UnwindContext, UnwindSection};
use object::{Object, ObjectSection};

use crate::elf::ElfImage;
use crate::{KernelAddr, SymbolError};

type Slice<'a> = gimli::EndianSlice<'a, LittleEndian>;

/// DWARF register number of `%rbp` on x86-64.
pub const DWARF_RBP: u16 = 6;
/// DWARF register number of `%rsp` on x86-64.
pub const DWARF_RSP: u16 = 7;

/// How to compute the canonical frame address (the caller's stack pointer
/// just before its `call`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub enum CfaRule {
    /// `CFA = reg + offset`, with `reg` in DWARF x86-64 numbering (6 = rbp,
    /// 7 = rsp; 1 = rdx, 5 = rdi, 10 = r10, 13 = r13).
    RegOffset {
        /// DWARF register number.
        reg: u16,
        /// Added to the register's value.
        offset: i64,
    },
    /// A DWARF expression, which this crate does not evaluate.
    Unsupported,
}

/// Where the caller's value of a register is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub enum RegRule {
    /// Saved in memory at `CFA + offset`.
    Offset(i64),
    /// Not changed by this function.
    SameValue,
    /// Not recoverable (for the return address: the outermost frame).
    Undefined,
    /// Any other DWARF rule (register copies, expressions, ...).
    Unsupported,
}

/// The unwind rules of `.debug_frame` at one address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub struct CfiRow {
    /// How to compute the CFA.
    pub cfa: CfaRule,
    /// Where the return address is (the CIE's return-address column).
    pub rip: RegRule,
    /// Where the caller's `%rbp` is.
    pub rbp: RegRule,
}

/// The FDE index of `.debug_frame`.
pub(crate) struct CfiIndex {
    data: Cow<'static, [u8]>,
    bases: BaseAddresses,
    /// `(start, end, offset of the FDE)`, sorted by start.
    fdes: Vec<(u64, u64, usize)>,
    /// Reused between lookups: evaluating a CFI program then allocates nothing.
    ctx: Mutex<Box<UnwindContext<usize>>>,
}

impl CfiIndex {
    /// Reads and indexes `.debug_frame`; `Ok(None)` if there is none.
    /// Errors are plain messages (the caller wraps them in a [`SymbolError`]).
    pub(crate) fn parse(image: &ElfImage) -> Result<Option<CfiIndex>, String> {
        let file = object::read::elf::ElfFile64::<object::Endianness>::parse(image.data).map_err(|e| e.to_string())?;
        let Some(sec) = file.section_by_name(".debug_frame") else {
            return Ok(None);
        };
        let data = sec.uncompressed_data().map_err(|e| format!("cannot decompress it: {e}"))?;
        if data.is_empty() {
            return Ok(None);
        }
        // `.debug_frame` addresses are absolute; `.text` is the only base
        // a (DW_EH_PE_textrel) pointer encoding could refer to.
        let text = image.section(".text").map_or(0, |s| s.addr);
        let bases = BaseAddresses::default().set_text(text);
        let fdes = index_fdes(&data, &bases)?;
        Ok(Some(CfiIndex { data, bases, fdes, ctx: Mutex::new(Box::new(UnwindContext::new())) }))
    }

    fn section(&self) -> DebugFrame<Slice<'_>> {
        let mut s = DebugFrame::new(&self.data, LittleEndian);
        s.set_address_size(8);
        s
    }

    /// Number of FDEs.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.fdes.len()
    }

    /// The FDE offset covering `addr`.
    fn fde_offset(&self, addr: u64) -> Option<usize> {
        let i = self.fdes.partition_point(|&(start, _, _)| start <= addr);
        // FDEs do not overlap in practice; look back over empty ones anyway.
        self.fdes[..i].iter().rev().take(4).find(|&&(s, e, _)| s <= addr && addr < e).map(|&(_, _, o)| o)
    }

    /// The unwind row at `addr`, `None` if no FDE covers it.
    pub(crate) fn row(&self, addr: KernelAddr) -> Result<Option<CfiRow>, SymbolError> {
        self.with_row(addr, convert)
    }

    /// Where the caller's callee-saved registers are, at `addr`.
    pub(crate) fn saved_registers(&self, addr: KernelAddr) -> Result<Option<SavedRegisters>, SymbolError> {
        self.with_row(addr, |row, _| {
            SavedRegisters(CALLEE_SAVED.map(|r| (r, rule_of(row, gimli::Register(r), RegRule::SameValue))))
        })
    }

    fn with_row<T>(
        &self,
        addr: KernelAddr,
        f: impl FnOnce(&gimli::UnwindTableRow<usize>, gimli::Register) -> T,
    ) -> Result<Option<T>, SymbolError> {
        let Some(off) = self.fde_offset(addr.0) else {
            return Ok(None);
        };
        let section = self.section();
        let err = |e| SymbolError::dwarf(format!("evaluating .debug_frame at {addr}"), e);
        let fde = section
            .fde_from_offset(&self.bases, gimli::DebugFrameOffset(off), DebugFrame::cie_from_offset)
            .map_err(err)?;
        let mut ctx = self.ctx.lock().unwrap_or_else(|e| e.into_inner());
        let row = match fde.unwind_info_for_address(&section, &self.bases, &mut ctx, addr.0) {
            Ok(row) => row,
            Err(gimli::Error::NoUnwindInfoForAddress) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        Ok(Some(f(row, fde.cie().return_address_register())))
    }

    /// Like [`CfiIndex::row`] but finding the FDE with gimli's linear
    /// `fde_for_address` and a fresh context (for measurements).
    #[cfg(test)]
    pub(crate) fn row_linear(&self, addr: KernelAddr) -> Option<CfiRow> {
        let section = self.section();
        let fde = section.fde_for_address(&self.bases, addr.0, DebugFrame::cie_from_offset).ok()?;
        let mut ctx = UnwindContext::new();
        let row = fde.unwind_info_for_address(&section, &self.bases, &mut ctx, addr.0).ok()?;
        Some(convert(row, fde.cie().return_address_register()))
    }
}

fn index_fdes(data: &[u8], bases: &BaseAddresses) -> Result<Vec<(u64, u64, usize)>, String> {
    let mut section = DebugFrame::new(data, LittleEndian);
    section.set_address_size(8);
    let err = |e: gimli::Error| e.to_string();
    let mut cies: HashMap<usize, CommonInformationEntry<Slice<'_>>> = HashMap::new();
    let mut fdes = Vec::new();
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().map_err(err)? {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial
            .parse(|s, b, o| {
                if let Some(c) = cies.get(&o.0) {
                    return Ok(c.clone());
                }
                let c = s.cie_from_offset(b, o)?;
                cies.insert(o.0, c.clone());
                Ok(c)
            })
            .map_err(err)?;
        if fde.len() > 0 {
            fdes.push((fde.initial_address(), fde.end_address(), fde.offset()));
        }
    }
    fdes.sort_unstable();
    Ok(fdes)
}

/// The callee-saved registers of the x86-64 ABI, DWARF numbers: rbx,
/// rbp, r12..r15.
pub const CALLEE_SAVED: [u16; 6] = [3, 6, 12, 13, 14, 15];

/// Where the caller's value of each callee-saved register is:
/// `(DWARF number, rule)` in [`CALLEE_SAVED`]'s order. A register without
/// a rule keeps its value (GCC's convention, which GDB follows too).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SavedRegisters(pub [(u16, RegRule); 6]);

fn rule_of(row: &gimli::UnwindTableRow<usize>, r: gimli::Register, default: RegRule) -> RegRule {
    match row.register(r) {
        None => default,
        Some(gimli::RegisterRule::Offset(o)) => RegRule::Offset(o),
        Some(gimli::RegisterRule::SameValue) => RegRule::SameValue,
        Some(gimli::RegisterRule::Undefined) => RegRule::Undefined,
        Some(_) => RegRule::Unsupported,
    }
}

fn convert(row: &gimli::UnwindTableRow<usize>, ra: gimli::Register) -> CfiRow {
    let cfa = match *row.cfa() {
        gimli::CfaRule::RegisterAndOffset { register, offset } => CfaRule::RegOffset { reg: register.0, offset },
        gimli::CfaRule::Expression(_) => CfaRule::Unsupported,
    };
    let rule = |r: gimli::Register, default: RegRule| rule_of(row, r, default);
    // A register without a rule: rbp is callee-saved (same value); a
    // return address column without a rule cannot be recovered.
    CfiRow { cfa, rip: rule(ra, RegRule::Undefined), rbp: rule(gimli::Register(DWARF_RBP), RegRule::SameValue) }
}

#[cfg(test)]
mod tests {
    //! Against the real Debian vmlinux (skipped with a message when it is
    //! missing, unless `CI=true`), checked with `readelf` and the ORC tables.
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::*;
    use crate::{OrcReg, OrcType, Vmlinux};

    fn ci() -> bool {
        ktrace_testguest::in_ci()
    }

    fn vmlinux() -> Option<&'static Vmlinux> {
        static VM: OnceLock<Option<Vmlinux>> = OnceLock::new();
        VM.get_or_init(|| ktrace_testguest::test_vmlinux().map(|p| Vmlinux::open(p).expect("the vmlinux opens")))
            .as_ref()
    }

    fn sym(vm: &Vmlinux, name: &str) -> u64 {
        vm.symbol(name).unwrap().addr.0
    }

    #[test]
    fn function_entries_and_prologues() {
        let Some(vm) = vmlinux() else { return };
        let t = Instant::now();
        let entry = vm.cfi(KernelAddr(sym(vm, "_raw_spin_lock"))).unwrap().expect("an FDE for _raw_spin_lock");
        eprintln!("first cfi() (index build + lookup): {:?}", t.elapsed());
        assert_eq!(entry.cfa, CfaRule::RegOffset { reg: DWARF_RSP, offset: 8 });
        assert_eq!(entry.rip, RegRule::Offset(-8));
        assert_eq!(entry.rbp, RegRule::SameValue);
        // __schedule: push %rbp; mov %rsp,%rbp (readelf: +1 rsp+16 rbp c-16, +4 rbp+16).
        let s = sym(vm, "__schedule");
        let row = |off| vm.cfi(KernelAddr(s + off)).unwrap().unwrap();
        assert_eq!(row(0).cfa, CfaRule::RegOffset { reg: DWARF_RSP, offset: 8 });
        assert_eq!(
            row(1),
            CfiRow {
                cfa: CfaRule::RegOffset { reg: DWARF_RSP, offset: 16 },
                rip: RegRule::Offset(-8),
                rbp: RegRule::Offset(-16)
            }
        );
        assert_eq!(
            row(0x20),
            CfiRow {
                cfa: CfaRule::RegOffset { reg: DWARF_RBP, offset: 16 },
                rip: RegRule::Offset(-8),
                rbp: RegRule::Offset(-16)
            }
        );
        // Addresses outside .text have no FDE.
        assert_eq!(vm.cfi(KernelAddr(0x1000)).unwrap(), None);
        assert_eq!(vm.cfi(KernelAddr(u64::MAX)).unwrap(), None);
    }

    #[test]
    fn lookups_are_fast() {
        let Some(vm) = vmlinux() else { return };
        let idx = vm.cfi_index().unwrap().expect(".debug_frame");
        assert!(idx.len() > 10_000, "only {} FDEs", idx.len());
        let addrs: Vec<KernelAddr> =
            idx.fdes.iter().step_by(idx.fdes.len() / 200).map(|&(s, e, _)| KernelAddr(s + (e - s) / 2)).collect();
        let t = Instant::now();
        for &a in &addrs {
            assert!(vm.cfi(a).unwrap().is_some(), "no row at {a}");
        }
        let indexed = t.elapsed() / addrs.len() as u32;
        let t = Instant::now();
        let few = &addrs[..addrs.len().min(10)];
        for &a in few {
            assert_eq!(idx.row_linear(a), vm.cfi(a).unwrap(), "at {a}");
        }
        let linear = t.elapsed() / few.len() as u32;
        eprintln!("cfi() per lookup: indexed {indexed:?}, gimli fde_for_address (linear) {linear:?}");
        // Generous for a busy debug build; a release lookup takes microseconds.
        assert!(indexed.as_millis() < 20, "cfi() lookup took {indexed:?}");
    }

    /// `CFA rsp+8 rbp+16 r10+0 exp`, `c-8 u s ...` as readelf prints them.
    fn readelf_cfa(s: &str) -> CfaRule {
        if s == "exp" {
            return CfaRule::Unsupported;
        }
        let (reg, off) = s.split_at(s.find(['+', '-']).expect("reg+off"));
        let reg = match reg {
            "rsp" => DWARF_RSP,
            "rbp" => DWARF_RBP,
            "rdi" => 5,
            "rdx" => 1,
            "r10" => 10,
            "r13" => 13,
            other => panic!("unexpected CFA register {other}"),
        };
        CfaRule::RegOffset { reg, offset: off.trim_start_matches('+').parse().unwrap() }
    }

    fn readelf_reg(s: Option<&str>, default: RegRule) -> Vec<RegRule> {
        match s {
            None => vec![default],
            // `u` is printed both for "no rule" and for DW_CFA_undefined.
            Some("u") => vec![default, RegRule::Undefined],
            Some("s") => vec![RegRule::SameValue],
            Some(c) if c.starts_with("c") => vec![RegRule::Offset(c[1..].parse().unwrap())],
            Some(_) => vec![RegRule::Unsupported],
        }
    }

    #[test]
    fn agrees_with_readelf_and_orc() {
        let Some(vm) = vmlinux() else { return };
        let out = match std::process::Command::new("readelf").arg("--debug-dump=frames-interp").arg(vm.path()).output()
        {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            other if ci() => panic!("readelf failed: {other:?}"),
            other => {
                eprintln!("skipping: readelf failed: {:?}", other.map(|o| o.status));
                return;
            }
        };
        let orc = vm.orc().unwrap();
        let (mut in_fde, mut cols, mut checked, mut orc_checked) = (false, Vec::<String>::new(), 0, 0);
        for (n, line) in out.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.get(3) == Some(&"FDE") {
                in_fde = true;
                continue;
            }
            if words.get(3) == Some(&"CIE") {
                in_fde = false;
                continue;
            }
            if words.first() == Some(&"LOC") {
                cols = words.iter().map(|w| w.to_string()).collect();
                continue;
            }
            // Every 3rd row keeps the debug-build test to a few seconds.
            if !in_fde || words.len() != cols.len() || n % 3 != 0 {
                continue;
            }
            let Ok(loc) = u64::from_str_radix(words[0], 16) else {
                continue;
            };
            let col = |name: &str| cols.iter().position(|c| c == name).map(|i| words[i]);
            let row = vm.cfi(KernelAddr(loc)).unwrap().unwrap_or_else(|| panic!("no row at {loc:x} ({line})"));
            assert_eq!(row.cfa, readelf_cfa(words[1]), "CFA at {loc:x}: {line}");
            assert!(readelf_reg(col("ra"), RegRule::Undefined).contains(&row.rip), "ra at {loc:x}: {line} vs {row:?}");
            assert!(
                readelf_reg(col("rbp"), RegRule::SameValue).contains(&row.rbp),
                "rbp at {loc:x}: {line} vs {row:?}"
            );
            checked += 1;
            // ORC (generated by objtool from the code) must agree on rsp-based call frames.
            if let (Some(o), CfaRule::RegOffset { reg: DWARF_RSP, offset }) = (orc.lookup(KernelAddr(loc)), row.cfa) {
                if o.kind == OrcType::Call && o.sp_reg == OrcReg::Sp {
                    assert_eq!(o.sp_offset as i64, offset, "ORC {o:?} vs CFI {row:?} at {loc:x}");
                    orc_checked += 1;
                }
            }
        }
        eprintln!("{checked} readelf rows checked, {orc_checked} of them against ORC");
        assert!(checked > 10_000 && orc_checked > 1_000, "{checked} rows, {orc_checked} ORC");
    }
}
