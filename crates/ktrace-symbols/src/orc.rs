//! The ORC unwind tables (`.orc_unwind_ip` + `.orc_unwind`), in every x86-64
//! format Linux has used, decoded into one normalized [`OrcEntry`].
//!
//! Every format has the same 6-byte `struct orc_entry` (`s16 sp_offset; s16
//! bp_offset;` then 16 bits of flags), but the flags changed twice:
//!
//! | format | bits 0-3 | 4-7 | 8-10 | 11 | registers |
//! |---|---|---|---|---|---|
//! | [`OrcFormat::EndBit`] | sp_reg | bp_reg | type:2, end:1 | | classic |
//! | [`OrcFormat::SignalEndBits`] | sp_reg | bp_reg | type:2, signal:1 | end | classic |
//! | [`OrcFormat::TypedEnd`] | sp_reg | bp_reg | type:3 | signal | classic |
//! | [`OrcFormat::RenumberedRegs`] | sp_reg | bp_reg | type:3 | signal | renumbered |
//!
//! The format is read from the file: the 20-byte hash in `.orc_header`
//! (present since Linux 6.4, backported to 6.3.10) names it; a vmlinux without
//! `.orc_header` has the oldest format. An unknown hash is an error, never a
//! guess. [`OrcTable::self_check`] then verifies the tables against the symbol
//! table (each ordinary C function starts with a call frame whose CFA is SP + 8),
//! which catches a format ktrace does not know under a hash it does.
//!
//! `.orc_unwind_ip[i]` is an `s32` relative to its own address; entry `i`
//! describes the code from that ip up to the next table ip.

use crate::elf::ElfImage;
use crate::{KernelAddr, SymbolError};

/// Size of one `struct orc_entry`, the same in every format.
pub const ORC_ENTRY_SIZE: usize = 6;
/// Size of the `.orc_header` hash.
pub const ORC_HEADER_SIZE: usize = 20;

/// The `.orc_header` hashes of the formats that have one (the hash
/// `scripts/orc_hash.sh` computes over `arch/x86/include/asm/orc_types.h`).
const KNOWN_HEADERS: &[([u8; ORC_HEADER_SIZE], OrcFormat)] = &[
    (
        [
            0xdb, 0x84, 0xae, 0xd4, 0x10, 0x3b, 0x31, 0xdd, 0x51, 0xe0, 0x17, 0xf8, 0xf7, 0x97, 0x83, 0xca, 0x98, 0x5c,
            0x2c, 0x51,
        ],
        OrcFormat::SignalEndBits,
    ),
    (
        [
            0xfe, 0x5d, 0x32, 0xbf, 0x58, 0x1b, 0xd6, 0x3b, 0x2c, 0xa9, 0xa5, 0xc6, 0x5b, 0xa5, 0xa6, 0x25, 0xea, 0xb3,
            0xfe, 0x24,
        ],
        OrcFormat::TypedEnd,
    ),
    (
        [
            0x13, 0x7c, 0x36, 0xad, 0x76, 0x27, 0xc4, 0xdd, 0x55, 0x93, 0x21, 0x76, 0xbb, 0x0e, 0xcd, 0xbd, 0x50, 0x41,
            0xfc, 0x82,
        ],
        OrcFormat::RenumberedRegs,
    ),
];

/// The encoding of `struct orc_entry`'s flags, detected once per table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub enum OrcFormat {
    /// `type:2` (CALL=0, REGS=1, REGS_PARTIAL=2) and an `end` bit; no
    /// `.orc_header` (Linux 4.14 up to 6.2).
    EndBit,
    /// `type:2`, `signal:1`, `end:1` (Linux 6.3).
    SignalEndBits,
    /// `type:3` (UNDEFINED=0, END_OF_STACK=1, CALL=2, REGS=3, REGS_PARTIAL=4)
    /// and a `signal` bit (Linux 6.4 up to 7.0).
    TypedEnd,
    /// [`OrcFormat::TypedEnd`] with the registers renumbered (SP=3,
    /// PREV_SP=8; Linux 7.1 and later).
    RenumberedRegs,
}

impl OrcFormat {
    /// The format named by an `.orc_header` section, or `None` when the file
    /// has none (the oldest format). An unknown hash is an error.
    pub fn from_header(header: Option<&[u8]>) -> Result<OrcFormat, SymbolError> {
        let Some(header) = header else { return Ok(OrcFormat::EndBit) };
        KNOWN_HEADERS.iter().find(|(hash, _)| hash.as_slice() == header).map(|&(_, f)| f).ok_or_else(|| {
            SymbolError::BadOrc {
                reason: format!(
                    "unrecognized .orc_header {} (a newer ORC format than this ktrace knows)",
                    header.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            }
        })
    }

    /// Decodes one raw entry into the normalized form.
    pub fn decode(self, b: &[u8; ORC_ENTRY_SIZE]) -> OrcEntry {
        let sp_offset = i16::from_le_bytes([b[0], b[1]]);
        let bp_offset = i16::from_le_bytes([b[2], b[3]]);
        let bits = u16::from_le_bytes([b[4], b[5]]);
        let reg = |n: u16| self.reg((n & 0xf) as u8);
        let (sp_reg, bp_reg) = (reg(bits), reg(bits >> 4));
        let (kind, signal) = match self {
            OrcFormat::EndBit | OrcFormat::SignalEndBits => {
                let end_bit = if self == OrcFormat::EndBit { 10 } else { 11 };
                let kind = if (bits >> end_bit) & 1 == 1 {
                    OrcType::EndOfStack
                } else if sp_reg == OrcReg::Undefined {
                    OrcType::Undefined
                } else {
                    match (bits >> 8) & 0x3 {
                        0 => OrcType::Call,
                        1 => OrcType::Regs,
                        2 => OrcType::RegsPartial,
                        n => OrcType::Other(n as u8),
                    }
                };
                // Before the signal bit, REGS frames were the signal frames.
                let signal = if self == OrcFormat::SignalEndBits {
                    (bits >> 10) & 1 == 1
                } else {
                    matches!(kind, OrcType::Regs | OrcType::RegsPartial)
                };
                (kind, signal)
            }
            OrcFormat::TypedEnd | OrcFormat::RenumberedRegs => {
                let kind = match (bits >> 8) & 0x7 {
                    0 => OrcType::Undefined,
                    1 => OrcType::EndOfStack,
                    2 => OrcType::Call,
                    3 => OrcType::Regs,
                    4 => OrcType::RegsPartial,
                    n => OrcType::Other(n as u8),
                };
                (kind, (bits >> 11) & 1 == 1)
            }
        };
        OrcEntry { sp_offset, bp_offset, sp_reg, bp_reg, kind, signal }
    }

    fn reg(self, n: u8) -> OrcReg {
        if self == OrcFormat::RenumberedRegs {
            match n {
                0 => OrcReg::Undefined,
                1 => OrcReg::Ax,
                2 => OrcReg::Dx,
                3 => OrcReg::Sp,
                4 => OrcReg::Bp,
                5 => OrcReg::Di,
                6 => OrcReg::R10,
                7 => OrcReg::R13,
                8 => OrcReg::PrevSp,
                9 => OrcReg::SpIndirect,
                10 => OrcReg::BpIndirect,
                n => OrcReg::Other(n),
            }
        } else {
            match n {
                0 => OrcReg::Undefined,
                1 => OrcReg::PrevSp,
                2 => OrcReg::Dx,
                3 => OrcReg::Di,
                4 => OrcReg::Bp,
                5 => OrcReg::Sp,
                6 => OrcReg::R10,
                7 => OrcReg::R13,
                8 => OrcReg::BpIndirect,
                9 => OrcReg::SpIndirect,
                n => OrcReg::Other(n),
            }
        }
    }
}

/// A register used as the base of an ORC computation (normalized: the same
/// in every format).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub enum OrcReg {
    /// No valid base: the register is unchanged (bp) or unknown (sp).
    Undefined,
    /// The stack pointer of the previous (caller's) frame, i.e. the CFA.
    PrevSp,
    /// %rax (only in [`OrcFormat::RenumberedRegs`]).
    Ax,
    /// %rdx.
    Dx,
    /// %rdi.
    Di,
    /// %rbp.
    Bp,
    /// %rsp.
    Sp,
    /// %r10.
    R10,
    /// %r13.
    R13,
    /// The value is at memory address %rbp + offset.
    BpIndirect,
    /// The value is at memory address %rsp, plus offset.
    SpIndirect,
    /// A register number this crate does not know.
    Other(u8),
}

/// What kind of frame the ORC entry describes (normalized).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub enum OrcType {
    /// No unwind information for this code.
    Undefined,
    /// The bottom of the stack (a user task's entry code, an idle task's
    /// start): the unwind ends here.
    EndOfStack,
    /// A normal call frame: the return address is at `CFA - 8`, where
    /// `CFA = sp_reg + sp_offset`; the caller's %rbp is at `CFA + bp_offset`
    /// when `bp_reg` is [`OrcReg::PrevSp`], unchanged when it is `Undefined`.
    Call,
    /// A full `struct pt_regs` is at `sp_reg + sp_offset` (interrupt/exception
    /// entry); the previous frame's registers are read from it.
    Regs,
    /// Only the iret frame (ip, cs, flags, sp, ss) of a `pt_regs` is at
    /// `sp_reg + sp_offset`, the rest of the registers are not saved.
    RegsPartial,
    /// A type value this crate does not know.
    Other(u8),
}

/// One decoded ORC entry, in the same form whatever the table's format.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub struct OrcEntry {
    /// Offset added to `sp_reg` to get the frame's CFA (the stack pointer
    /// value just before the call instruction that entered the function,
    /// i.e. the address just above the return address).
    pub sp_offset: i16,
    /// Offset from the CFA (when `bp_reg` is [`OrcReg::PrevSp`]) of the
    /// saved caller %rbp.
    pub bp_offset: i16,
    /// Base register for the CFA computation.
    pub sp_reg: OrcReg,
    /// Where the caller's %rbp is saved ([`OrcReg::Undefined`]: %rbp was not
    /// changed by this function).
    pub bp_reg: OrcReg,
    /// The kind of frame.
    pub kind: OrcType,
    /// The frame was interrupted (an exception or interrupt): its pc is not
    /// a return address, so it is looked up as is rather than at pc - 1.
    pub signal: bool,
}

impl OrcEntry {
    /// Whether this is the plain call frame every C function starts with:
    /// CFA = SP + 8, the return address on top of the stack.
    pub fn is_function_entry(&self) -> bool {
        self.kind == OrcType::Call && self.sp_reg == OrcReg::Sp && self.sp_offset == 8
    }
}

/// The result of [`OrcTable::self_check`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
pub struct OrcSelfCheck {
    /// Functions sampled.
    pub sampled: usize,
    /// Of those, how many start with a plain call frame.
    pub passed: usize,
}

impl OrcSelfCheck {
    /// At least 80 % of the sampled C functions must start with a call
    /// frame (a few start in assembly or are covered by a hint).
    pub fn ok(&self) -> bool {
        self.sampled > 0 && self.passed * 5 >= self.sampled * 4
    }
}

/// A sorted ORC table, of the vmlinux or of a module.
#[derive(Debug)]
pub struct OrcTable {
    /// (absolute ip, index into `entries`) sorted by ip.
    ips: Vec<(u64, u32)>,
    entries: Vec<OrcEntry>,
    format: OrcFormat,
}

impl OrcTable {
    pub(crate) fn parse(image: &ElfImage) -> Result<Option<OrcTable>, SymbolError> {
        let (Some(ip_sec), Some(ent_sec)) = (image.section(".orc_unwind_ip"), image.section(".orc_unwind")) else {
            return Ok(None);
        };
        let format = OrcFormat::from_header(image.section(".orc_header").map(|s| s.data))?;
        OrcTable::from_raw(ip_sec.addr, ip_sec.data, ent_sec.data, format).map(Some)
    }

    /// Builds a table from the raw `.orc_unwind_ip` bytes (loaded at
    /// `ip_base`) and `.orc_unwind` bytes, in `format`. Used for the vmlinux
    /// and for module tables read from guest memory.
    pub fn from_raw(ip_base: u64, ip_bytes: &[u8], entry_bytes: &[u8], format: OrcFormat) -> Result<Self, SymbolError> {
        let n = ip_bytes.len() / 4;
        if n == 0 {
            return Err(SymbolError::BadOrc { reason: ".orc_unwind_ip is empty".into() });
        }
        if entry_bytes.len() != n * ORC_ENTRY_SIZE {
            return Err(SymbolError::BadOrc {
                reason: format!(
                    ".orc_unwind has {} bytes but .orc_unwind_ip has {n} entries ({} bytes expected)",
                    entry_bytes.len(),
                    n * ORC_ENTRY_SIZE
                ),
            });
        }
        let mut ips = Vec::with_capacity(n);
        for (i, c) in ip_bytes.chunks_exact(4).enumerate() {
            let rel = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let here = ip_base.wrapping_add(4 * i as u64);
            ips.push((here.wrapping_add(rel as i64 as u64), i as u32));
        }
        if !ips.windows(2).all(|w| w[0].0 <= w[1].0) {
            ips.sort_by_key(|&(ip, _)| ip);
        }
        let entries = entry_bytes
            .chunks_exact(ORC_ENTRY_SIZE)
            .map(|c| format.decode(c.try_into().expect("chunks_exact gives 6 bytes")))
            .collect();
        Ok(OrcTable { ips, entries, format })
    }

    /// The format the table was decoded from.
    pub fn format(&self) -> OrcFormat {
        self.format
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ips.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// The entry covering `addr`: the one with the greatest ip `<= addr`.
    pub fn lookup(&self, addr: KernelAddr) -> Option<OrcEntry> {
        self.lookup_with_ip(addr).map(|(_, e)| e)
    }

    /// Like [`OrcTable::lookup`], also returning the ip where the entry starts.
    pub fn lookup_with_ip(&self, addr: KernelAddr) -> Option<(KernelAddr, OrcEntry)> {
        let idx = self.ips.partition_point(|&(ip, _)| ip <= addr.0);
        let (ip, i) = *self.ips.get(idx.checked_sub(1)?)?;
        Some((KernelAddr(ip), *self.entries.get(i as usize)?))
    }

    /// Checks the decoded table against the start addresses of ordinary C
    /// functions (at most `max` of them, spread evenly): each must start
    /// with a plain call frame ([`OrcEntry::is_function_entry`]).
    pub fn self_check(&self, function_starts: &[u64], max: usize) -> OrcSelfCheck {
        let step = (function_starts.len() / max.max(1)).max(1);
        let mut check = OrcSelfCheck { sampled: 0, passed: 0 };
        for &start in function_starts.iter().step_by(step).take(max) {
            check.sampled += 1;
            if self.lookup(KernelAddr(start)).is_some_and(|e| e.is_function_entry()) {
                check.passed += 1;
            }
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(sp_offset: i16, bp_offset: i16, bits: u16) -> [u8; 6] {
        let mut b = [0u8; 6];
        b[0..2].copy_from_slice(&sp_offset.to_le_bytes());
        b[2..4].copy_from_slice(&bp_offset.to_le_bytes());
        b[4..6].copy_from_slice(&bits.to_le_bytes());
        b
    }

    /// The same frame, "CFA = SP + 16, caller's rbp at CFA - 16", in each
    /// format's encoding.
    #[test]
    fn call_frame_in_every_format() {
        let cases = [
            (OrcFormat::EndBit, 5 | (1 << 4)),                    // type 0 = CALL
            (OrcFormat::SignalEndBits, 5 | (1 << 4)),             // type 0 = CALL
            (OrcFormat::TypedEnd, 5 | (1 << 4) | (2 << 8)),       // type 2 = CALL
            (OrcFormat::RenumberedRegs, 3 | (8 << 4) | (2 << 8)), // SP=3, PREV_SP=8
        ];
        for (format, bits) in cases {
            let e = format.decode(&raw(16, -16, bits));
            assert_eq!(
                e,
                OrcEntry {
                    sp_offset: 16,
                    bp_offset: -16,
                    sp_reg: OrcReg::Sp,
                    bp_reg: OrcReg::PrevSp,
                    kind: OrcType::Call,
                    signal: false
                },
                "{format:?}"
            );
        }
    }

    #[test]
    fn the_old_layout_misread_as_new_is_not_a_call_frame() {
        // The 6.12 bug: a 6.4+ CALL entry (type 2) read with the 6.1 layout
        // is REGS_PARTIAL; a 7.1 SP (3) read with classic numbering is DI.
        let e = OrcFormat::EndBit.decode(&raw(8, 0, 5 | (2 << 8)));
        assert_eq!(e.kind, OrcType::RegsPartial);
        let e = OrcFormat::TypedEnd.decode(&raw(8, 0, 3 | (2 << 8)));
        assert_eq!(e.sp_reg, OrcReg::Di);
        assert!(!e.is_function_entry());
        assert!(OrcFormat::RenumberedRegs.decode(&raw(8, 0, 3 | (2 << 8))).is_function_entry());
    }

    #[test]
    fn end_of_stack_undefined_and_signal() {
        // Old layouts: the end bit, and sp_reg UNDEFINED without it.
        assert_eq!(OrcFormat::EndBit.decode(&raw(0, 0, 5 | (1 << 8) | (1 << 10))).kind, OrcType::EndOfStack);
        assert_eq!(OrcFormat::SignalEndBits.decode(&raw(0, 0, 5 | (1 << 11))).kind, OrcType::EndOfStack);
        assert_eq!(OrcFormat::EndBit.decode(&raw(0, 0, 0)).kind, OrcType::Undefined);
        let e = OrcFormat::EndBit.decode(&raw(0, 0, 5 | (2 << 8)));
        assert_eq!((e.kind, e.signal), (OrcType::RegsPartial, true));
        let e = OrcFormat::SignalEndBits.decode(&raw(0, 0, 5 | (1 << 10)));
        assert_eq!((e.kind, e.signal), (OrcType::Call, true));
        // New layouts: explicit types and the signal bit.
        assert_eq!(OrcFormat::TypedEnd.decode(&raw(0, 0, 1 << 8)).kind, OrcType::EndOfStack);
        assert_eq!(OrcFormat::TypedEnd.decode(&raw(0, 0, 0)).kind, OrcType::Undefined);
        let e = OrcFormat::RenumberedRegs.decode(&raw(0, 0, 3 | (3 << 8) | (1 << 11)));
        assert_eq!((e.sp_reg, e.kind, e.signal), (OrcReg::Sp, OrcType::Regs, true));
        assert_eq!(OrcFormat::TypedEnd.decode(&raw(0, 0, 5 | (7 << 8))).kind, OrcType::Other(7));
    }

    #[test]
    fn renumbered_registers() {
        let f = OrcFormat::RenumberedRegs;
        let regs: Vec<OrcReg> = (0..12).map(|n| f.decode(&raw(0, 0, n | (2 << 8))).sp_reg).collect();
        use OrcReg::*;
        assert_eq!(regs, [Undefined, Ax, Dx, Sp, Bp, Di, R10, R13, PrevSp, SpIndirect, BpIndirect, Other(11)]);
        let f = OrcFormat::TypedEnd;
        let regs: Vec<OrcReg> = (0..11).map(|n| f.decode(&raw(0, 0, n | (2 << 8))).sp_reg).collect();
        assert_eq!(regs, [Undefined, PrevSp, Dx, Di, Bp, Sp, R10, R13, BpIndirect, SpIndirect, Other(10)]);
    }

    #[test]
    fn format_from_header() {
        assert_eq!(OrcFormat::from_header(None).unwrap(), OrcFormat::EndBit);
        for (hash, format) in KNOWN_HEADERS {
            assert_eq!(OrcFormat::from_header(Some(hash)).unwrap(), *format);
        }
        let err = OrcFormat::from_header(Some(&[0xab; 20])).unwrap_err().to_string();
        assert!(err.contains("unrecognized .orc_header abab"), "{err}");
        assert!(OrcFormat::from_header(Some(&[0x13; 4])).is_err());
    }

    fn table(format: OrcFormat, entries: &[[u8; 6]], ips: &[u64]) -> OrcTable {
        // .orc_unwind_ip at 0x1000: each s32 relative to its own address.
        let ip_bytes: Vec<u8> = ips
            .iter()
            .enumerate()
            .flat_map(|(i, &ip)| ((ip as i64 - (0x1000 + 4 * i as i64)) as i32).to_le_bytes())
            .collect();
        let entry_bytes: Vec<u8> = entries.iter().flatten().copied().collect();
        OrcTable::from_raw(0x1000, &ip_bytes, &entry_bytes, format).unwrap()
    }

    #[test]
    fn lookup_greatest_le() {
        let e = raw(8, 0, 5);
        let t = table(OrcFormat::EndBit, &[e, e, e], &[0x300, 0x100, 0x200]);
        assert!(t.lookup(KernelAddr(0xff)).is_none());
        assert_eq!(t.lookup_with_ip(KernelAddr(0x100)).unwrap().0, KernelAddr(0x100));
        assert_eq!(t.lookup_with_ip(KernelAddr(0x2ff)).unwrap().0, KernelAddr(0x200));
        assert_eq!(t.lookup_with_ip(KernelAddr(0x1000)).unwrap().0, KernelAddr(0x300));
        assert_eq!(t.format(), OrcFormat::EndBit);
    }

    #[test]
    fn sizes_must_agree() {
        let err = OrcTable::from_raw(0x1000, &[0; 8], &[0; 6], OrcFormat::TypedEnd).unwrap_err().to_string();
        assert!(err.contains("6 bytes but .orc_unwind_ip has 2 entries"), "{err}");
        assert!(OrcTable::from_raw(0x1000, &[], &[], OrcFormat::TypedEnd).is_err());
    }

    #[test]
    fn self_check_catches_a_wrong_format() {
        // Three functions at 0x100, 0x200, 0x300, each starting with a 6.4+
        // CALL frame at SP + 8; one more entry inside each.
        let entry = raw(8, 0, 5 | (2 << 8));
        let inner = raw(16, -16, 5 | (1 << 4) | (2 << 8));
        let ips = [0x100, 0x104, 0x200, 0x204, 0x300, 0x304];
        let entries = [entry, inner, entry, inner, entry, inner];
        let starts = [0x100, 0x200, 0x300];
        let right = table(OrcFormat::TypedEnd, &entries, &ips).self_check(&starts, 100);
        assert_eq!(right, OrcSelfCheck { sampled: 3, passed: 3 });
        assert!(right.ok());
        for wrong in [OrcFormat::EndBit, OrcFormat::RenumberedRegs] {
            let check = table(wrong, &entries, &ips).self_check(&starts, 100);
            assert_eq!(check.passed, 0, "{wrong:?}");
            assert!(!check.ok());
        }
        assert!(!OrcSelfCheck { sampled: 0, passed: 0 }.ok());
        assert_eq!(table(OrcFormat::TypedEnd, &entries, &ips).self_check(&starts, 2).sampled, 2);
    }
}
