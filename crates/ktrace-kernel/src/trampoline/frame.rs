//! The trampoline's stack effect at each of its instructions, so that an
//! unwind that finds a pc inside it (a CPU stopped there, or interrupted
//! there) steps through it into the patched function, instead of
//! guessing from whatever symbol precedes the padding.
//!
//! Every path into the trampoline starts with the patched site's `call`:
//! the return address into the traced function (site + 5) is on the stack,
//! `depth` bytes above the stack pointer.

use super::code::{self, BodyParams, Code};
use super::layout::{self as at, Region, SLOTS};
use super::record::RecordParams;

/// How a frame is named when its pc is ktrace's own code.
pub const FRAME_NAME: &str = "[ktrace filter]";

/// Where the return address into the traced function is, for each pc of
/// an installed trampoline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameMap {
    region: Region,
    /// `(offset in the body, bytes from the stack pointer to the return
    /// address into the traced function)`, one per body instruction.
    body: Vec<(usize, u64)>,
    /// The same for the conditions' routine.
    conditions: Vec<(usize, u64)>,
    /// The same for the record routine (empty when it cannot be built).
    record: Vec<(usize, u64)>,
}

/// What the unwinder learns at a pc inside the trampoline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrampolineFrame {
    /// Bytes from the stack pointer to the return address into the traced
    /// function: the caller's pc is the word at `sp + depth`, its stack
    /// pointer `sp + depth + 8`.
    pub depth: u64,
    /// Offset of the pc from the trampoline's start (the region base; for
    /// a hit instruction, from the hit page).
    pub offset: u64,
}

impl FrameMap {
    /// The map of the trampoline at `region` with the body `body` assembles to.
    pub fn new(region: Region, body: BodyParams, record: Option<RecordParams>) -> FrameMap {
        let record = record.map(|p| depths(&super::record::routine(&region, p), 8)).unwrap_or_default();
        // Called by the body, which pushed two registers.
        let conditions = depths(&code::conditions(&region), 8 + 16 + 8);
        FrameMap { region, body: depths(&code::body(body, &region), 8), conditions, record }
    }

    /// The region it describes.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The stack effect at `pc`, when `pc` is the trampoline's code.
    pub fn at(&self, pc: u64) -> Option<TrampolineFrame> {
        if !self.region.contains_code(pc) {
            return None;
        }
        let body = self.region.base + at::BODY as u64;
        let entries = self.region.base + at::ENTRIES as u64;
        let entries_end = entries + (SLOTS * at::ENTRY_SIZE) as u64;
        let offset = pc.wrapping_sub(self.region.base);
        // The entries and the hit instructions run with nothing of their
        // own on the stack: the body's call has returned, or not begun.
        if (entries..entries_end).contains(&pc) {
            return Some(TrampolineFrame { depth: 0, offset });
        }
        if (body..entries).contains(&pc) {
            let off = (pc - body) as usize;
            let i = self.body.partition_point(|&(start, _)| start <= off).checked_sub(1)?;
            return Some(TrampolineFrame { depth: self.body[i].1, offset });
        }
        if let Some(off) = self.region.conditions_offset(pc) {
            let i = self.conditions.partition_point(|&(start, _)| start as u64 <= off).checked_sub(1)?;
            return Some(TrampolineFrame { depth: self.conditions[i].1, offset: pc - self.region.hit_page });
        }
        if let Some(off) = self.region.record_offset(pc) {
            // Called from an entry, like the body.
            let i = self.record.partition_point(|&(start, _)| start as u64 <= off).checked_sub(1)?;
            return Some(TrampolineFrame { depth: self.record[i].1, offset: pc - self.region.hit_page });
        }
        Some(TrampolineFrame { depth: 0, offset: pc - self.region.hit_page })
    }
}

/// The depth before each instruction of `body`, `start` at its first (8
/// for code an entry calls: its return address is above the site's): it
/// pushes and pops; a jump's target starts with the depth at the jump.
fn depths(body: &Code, start: u64) -> Vec<(usize, u64)> {
    let mut out = Vec::with_capacity(body.listing.len());
    let mut landing = std::collections::HashMap::new();
    let mut depth = start;
    let mut after_ret = false;
    for insn in &body.listing {
        if after_ret {
            depth = landing.get(&insn.offset).copied().unwrap_or(depth);
            after_ret = false;
        }
        out.push((insn.offset, depth));
        match insn.mnemonic {
            "push" | "pushf" => depth += 8,
            "pop" | "popf" => depth -= 8,
            "ret" => after_ret = true,
            // A short jump: its target starts with this depth; after an
            // unconditional one, as after a `ret`, the next instruction is
            // reached only by jumps.
            m if m.starts_with('j') && insn.len == 2 => {
                let rel = body.bytes[insn.offset + 1] as i8 as isize;
                let target = (insn.offset + insn.len).wrapping_add_signed(rel);
                landing.insert(target, depth);
                after_ret = m == "jmp";
            }
            // A call within the code (the record routine's full-ring stop):
            // its target runs with the return address pushed. (The body's
            // call of the conditions' routine leaves the code.)
            "call" if insn.len == 5 => {
                let rel =
                    i32::from_le_bytes(body.bytes[insn.offset + 1..insn.offset + 5].try_into().unwrap_or_default());
                let target = (insn.offset + insn.len).wrapping_add_signed(rel as isize);
                if target < body.bytes.len() {
                    landing.insert(target, depth + 8);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> FrameMap {
        let region = Region { base: 0xffff_ffff_81a1_9040, hit_page: 0xffff_ffff_81a1_b000 };
        FrameMap::new(
            region,
            BodyParams { current_task: 0x1fbc0, cpu_number: 0x19160, tgid: 0x5c8, comm: 0x738 },
            Some(record_params()),
        )
    }

    fn record_params() -> RecordParams {
        RecordParams::fixture()
    }

    #[test]
    fn depths_follow_the_pushes_on_both_paths() {
        let m = map();
        let body = m.region.base + at::BODY as u64;
        let c =
            code::body(BodyParams { current_task: 0x1fbc0, cpu_number: 0x19160, tgid: 0x5c8, comm: 0x738 }, &m.region);
        let depth_of = |i: usize| m.at(body + c.listing[i].offset as u64).expect("in the body").depth;
        assert_eq!(depth_of(0), 8, "at the first push: the entry's return address only");
        assert_eq!(depth_of(1), 16);
        assert_eq!(depth_of(2), 24, "both registers pushed");
        let rets: Vec<usize> = (0..c.listing.len()).filter(|&i| c.listing[i].mnemonic == "ret").collect();
        assert_eq!(rets.len(), 2);
        for r in rets {
            assert_eq!(depth_of(r), 8, "at a ret: back to the entry's return address");
            assert_eq!(depth_of(r - 1), 16);
        }
        let miss = c.listing.iter().position(|i| i.mnemonic == "test").expect("miss path");
        assert_eq!(depth_of(miss), 24, "the miss path starts where the jumps left");
        // Mid-instruction pcs (an interrupt returns to instruction starts,
        // but the map is total over the body).
        assert_eq!(m.at(body + c.listing[2].offset as u64 + 3).unwrap().depth, 24);
    }

    #[test]
    fn the_conditions_routine_holds_its_pushes() {
        let m = map();
        let start = m.region.hit_page + at::CONDITIONS_CODE;
        let c = code::conditions(&m.region);
        let depth_at = |i: usize| m.at(start + c.listing[i].offset as u64).expect("in the routine").depth;
        // The entry's return address, the body's rax and rcx, its call.
        assert_eq!(depth_at(0), 32);
        assert_eq!(depth_at(6), 32 + 48, "the arguments pushed");
        let last = c.listing.len() - 1;
        for i in 6..last - 6 {
            assert_eq!(depth_at(i), 80, "in the loop: {:?}", c.listing[i]);
        }
        assert_eq!(depth_at(last), 32, "at its ret, popped");
        let f = m.at(start + c.listing[9].offset as u64 + 1).unwrap();
        assert_eq!(
            f.offset,
            at::CONDITIONS_CODE + c.listing[9].offset as u64 + 1,
            "mid-instruction, from the hit page"
        );
        // The conditions themselves are data.
        assert_eq!(m.at(m.region.hit_page + at::CONDITIONS), None);
        // The body's call of it and its return.
        let body =
            code::body(BodyParams { current_task: 0x1fbc0, cpu_number: 0x19160, tgid: 0x5c8, comm: 0x738 }, &m.region);
        let call = body.listing.iter().position(|i| i.mnemonic == "call").unwrap();
        let base = m.region.base + at::BODY as u64;
        assert_eq!(m.at(base + body.listing[call].offset as u64).unwrap().depth, 24);
        assert_eq!(m.at(base + body.listing[call + 1].offset as u64).unwrap().depth, 24, "after it returns");
    }

    #[test]
    fn the_record_routine_holds_its_pushes() {
        let m = map();
        let start = m.region.hit_page + super::super::record::CODE;
        assert_eq!(m.at(start).map(|f| f.depth), Some(8), "at pushf: the entry's return address only");
        assert_eq!(m.at(start + 1).map(|f| f.depth), Some(16), "after pushf");
        // After the 15 pushes (7 one-byte, 8 two-byte): flags and 15 registers.
        assert_eq!(m.at(start + 1 + 7 + 16).map(|f| f.depth), Some(8 + 128));
        let code = super::super::record::routine(&m.region, record_params());
        let rets: Vec<u64> = code.listing.iter().filter(|i| i.mnemonic == "ret").map(|i| i.offset as u64).collect();
        assert_eq!(m.at(start + rets[0]).map(|f| f.depth), Some(8), "at the routine's ret");
        let stop = super::super::record::full_stop(&code) as u64;
        assert_eq!(m.at(start + stop).map(|f| f.depth), Some(8 + 128 + 8), "in the full-ring stop");
        assert_eq!(m.at(start + rets[1]).map(|f| f.depth), Some(8 + 128 + 8));
    }

    #[test]
    fn entries_and_hits_hold_only_the_sites_return_address() {
        let m = map();
        for slot in [0, SLOTS - 1] {
            let e = m.region.entry(slot);
            for off in [0, 5, 7, 12] {
                assert_eq!(m.at(e + off).map(|f| f.depth), Some(0));
            }
            let hit = m.at(m.region.hit(slot) + 1).expect("the hit's ret");
            assert_eq!(hit.depth, 0);
            assert_eq!(hit.offset, slot as u64 * 16 + 1);
        }
        assert_eq!(m.at(m.region.base), None, "the header is data");
        assert_eq!(m.at(m.region.base + super::super::REGION_LEN as u64), None);
    }
}
