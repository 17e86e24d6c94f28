//! The ORC unwind tables (`.orc_unwind_ip` + `.orc_unwind`), Linux 6.1
//! layout (`arch/x86/include/asm/orc_types.h`):
//!
//! ```c
//! struct orc_entry {
//!     s16 sp_offset;
//!     s16 bp_offset;
//!     unsigned sp_reg:4;
//!     unsigned bp_reg:4;
//!     unsigned type:2;
//!     unsigned end:1;
//! } __packed;
//! ```
//!
//! `.orc_unwind_ip[i]` is an `s32` relative to its own address; entry `i`
//! describes the code from that ip up to the next table ip.

use crate::elf::ElfImage;
use crate::{KernelAddr, SymbolError};

/// Size of one `struct orc_entry` in the 6.1 layout.
const ORC_ENTRY_SIZE: usize = 6;

/// A register used as the base of an ORC computation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub enum OrcReg {
    /// No valid base: the unwinder cannot continue (ORC_REG_UNDEFINED).
    Undefined,
    /// The stack pointer of the previous (caller's) frame (ORC_REG_PREV_SP).
    PrevSp,
    /// %rdx (ORC_REG_DX).
    Dx,
    /// %rdi (ORC_REG_DI).
    Di,
    /// %rbp (ORC_REG_BP).
    Bp,
    /// %rsp (ORC_REG_SP).
    Sp,
    /// %r10 (ORC_REG_R10).
    R10,
    /// %r13 (ORC_REG_R13).
    R13,
    /// The value is at memory address %rbp + offset (ORC_REG_BP_INDIRECT).
    BpIndirect,
    /// The value is at memory address %rsp + offset (ORC_REG_SP_INDIRECT).
    SpIndirect,
    /// A register number this crate does not know.
    Other(u8),
}

impl OrcReg {
    fn from_bits(b: u8) -> OrcReg {
        match b {
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

/// What kind of frame the ORC entry describes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub enum OrcType {
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

/// One decoded ORC entry.
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
    /// The end of the stack: the unwinder should stop here (e.g. the
    /// entry code of a user-mode task or the idle task's start).
    pub end: bool,
}

impl OrcEntry {
    /// Decode one 6-byte little-endian 6.1 `struct orc_entry`.
    pub fn decode(b: &[u8; 6]) -> OrcEntry {
        let sp_offset = i16::from_le_bytes([b[0], b[1]]);
        let bp_offset = i16::from_le_bytes([b[2], b[3]]);
        let bits = u16::from_le_bytes([b[4], b[5]]);
        OrcEntry {
            sp_offset,
            bp_offset,
            sp_reg: OrcReg::from_bits((bits & 0xf) as u8),
            bp_reg: OrcReg::from_bits(((bits >> 4) & 0xf) as u8),
            kind: match (bits >> 8) & 0x3 {
                0 => OrcType::Call,
                1 => OrcType::Regs,
                2 => OrcType::RegsPartial,
                n => OrcType::Other(n as u8),
            },
            end: (bits >> 10) & 1 == 1,
        }
    }
}

/// The sorted ORC table of the kernel image.
#[derive(Debug)]
pub struct OrcTable {
    /// (absolute ip, index into `entries`) sorted by ip.
    ips: Vec<(u64, u32)>,
    entries: &'static [u8],
}

impl OrcTable {
    pub(crate) fn parse(image: &ElfImage) -> Result<Option<OrcTable>, SymbolError> {
        let (Some(ip_sec), Some(ent_sec)) = (image.section(".orc_unwind_ip"), image.section(".orc_unwind")) else {
            return Ok(None);
        };
        let n = ip_sec.data.len() / 4;
        if n == 0 {
            return Ok(None);
        }
        if ent_sec.data.len() < n * ORC_ENTRY_SIZE {
            return Err(SymbolError::BadOrc {
                reason: format!(
                    ".orc_unwind has {} bytes but .orc_unwind_ip has {n} entries (expected {} bytes); only the Linux 6.1 layout is supported",
                    ent_sec.data.len(),
                    n * ORC_ENTRY_SIZE
                ),
            });
        }
        let mut ips = Vec::with_capacity(n);
        for (i, c) in ip_sec.data.chunks_exact(4).enumerate() {
            let rel = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let here = ip_sec.addr.wrapping_add(4 * i as u64);
            ips.push((here.wrapping_add(rel as i64 as u64), i as u32));
        }
        if !ips.windows(2).all(|w| w[0].0 <= w[1].0) {
            ips.sort_by_key(|&(ip, _)| ip);
        }
        Ok(Some(OrcTable { ips, entries: ent_sec.data }))
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
        let off = i as usize * ORC_ENTRY_SIZE;
        let raw: &[u8; 6] = self.entries.get(off..off + ORC_ENTRY_SIZE)?.try_into().ok()?;
        Some((KernelAddr(ip), OrcEntry::decode(raw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_call_entry() {
        // sp_offset 16, bp_offset -16, sp_reg SP(5), bp_reg PREV_SP(1), type CALL, end 0
        let bits: u16 = 5 | (1 << 4);
        let mut b = [0u8; 6];
        b[0..2].copy_from_slice(&16i16.to_le_bytes());
        b[2..4].copy_from_slice(&(-16i16).to_le_bytes());
        b[4..6].copy_from_slice(&bits.to_le_bytes());
        let e = OrcEntry::decode(&b);
        assert_eq!(e.sp_offset, 16);
        assert_eq!(e.bp_offset, -16);
        assert_eq!(e.sp_reg, OrcReg::Sp);
        assert_eq!(e.bp_reg, OrcReg::PrevSp);
        assert_eq!(e.kind, OrcType::Call);
        assert!(!e.end);
    }

    #[test]
    fn decode_regs_end() {
        let bits: u16 = 5 | (1 << 8) | (1 << 10);
        let mut b = [0u8; 6];
        b[4..6].copy_from_slice(&bits.to_le_bytes());
        let e = OrcEntry::decode(&b);
        assert_eq!(e.kind, OrcType::Regs);
        assert_eq!(e.bp_reg, OrcReg::Undefined);
        assert!(e.end);
        let bits: u16 = 5 | (2 << 8);
        b[4..6].copy_from_slice(&bits.to_le_bytes());
        assert_eq!(OrcEntry::decode(&b).kind, OrcType::RegsPartial);
    }

    #[test]
    fn lookup_greatest_le() {
        let entries: &'static [u8] = Box::leak(vec![0u8; 18].into_boxed_slice());
        let t = OrcTable { ips: vec![(0x100, 0), (0x200, 1), (0x300, 2)], entries };
        assert!(t.lookup(KernelAddr(0xff)).is_none());
        assert_eq!(t.lookup_with_ip(KernelAddr(0x100)).unwrap().0, KernelAddr(0x100));
        assert_eq!(t.lookup_with_ip(KernelAddr(0x2ff)).unwrap().0, KernelAddr(0x200));
        assert_eq!(t.lookup_with_ip(KernelAddr(0x1000)).unwrap().0, KernelAddr(0x300));
    }
}
