//! The trampoline's machine code (x86-64), assembled from a handful of
//! fixed instruction forms, with a listing of what was emitted (for tests
//! against a disassembler).
//!
//! Every byte of the filter body and of the entries is a function of the
//! kernel's layout and the region's address only: the filter's values are
//! data, so writing the trampoline again (a later attach) writes the very
//! same code, and a CPU that is inside it meanwhile runs on unharmed.

use super::layout::{self as at, Region};

/// One emitted instruction: where, how long, and its mnemonic as GDB prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Offset from the start of the emitted code.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// GDB's mnemonic (AT&T syntax): `push`, `mov`, `jne`, …
    pub mnemonic: &'static str,
}

/// Machine code with its listing.
#[derive(Clone, Debug, Default)]
pub struct Code {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// One entry per instruction.
    pub listing: Vec<Insn>,
}

/// What the filter body reads: kernel constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyParams {
    /// `%gs:` displacement of the current-task pointer.
    pub current_task: i32,
    /// `%gs:` displacement of the CPU number.
    pub cpu_number: i32,
    /// `task_struct.tgid`.
    pub tgid: i32,
    /// `task_struct.comm`.
    pub comm: i32,
}

impl Code {
    pub(super) fn emit(&mut self, mnemonic: &'static str, bytes: &[u8]) {
        self.listing.push(Insn { offset: self.bytes.len(), len: bytes.len(), mnemonic });
        self.bytes.extend_from_slice(bytes);
    }

    /// An instruction ending in a rip-relative disp32 to `target` (an offset
    /// in the region), the code itself starting at region offset `at`.
    fn emit_rip(&mut self, mnemonic: &'static str, prefix: &[u8], at: usize, target: usize) {
        let next = at + self.bytes.len() + prefix.len() + 4;
        let disp = target as i64 - next as i64;
        let mut b = prefix.to_vec();
        b.extend_from_slice(&(disp as i32).to_le_bytes());
        self.emit(mnemonic, &b);
    }

    pub(super) fn emit_d32(&mut self, mnemonic: &'static str, prefix: &[u8], d32: i32) {
        let mut b = prefix.to_vec();
        b.extend_from_slice(&d32.to_le_bytes());
        self.emit(mnemonic, &b);
    }

    /// An instruction ending in a rip-relative disp32 to the absolute
    /// address `target`, the code itself starting at address `at`.
    pub(super) fn emit_abs(&mut self, mnemonic: &'static str, prefix: &[u8], at: u64, target: u64) {
        let next = at + (self.bytes.len() + prefix.len() + 4) as u64;
        let mut b = prefix.to_vec();
        b.extend_from_slice(&rel32(next, target).to_le_bytes());
        self.emit(mnemonic, &b);
    }

    /// [`Code::emit_abs`] with an 8-bit immediate after the disp32 (which
    /// the displacement is then relative to the end of).
    pub(super) fn emit_abs_imm8(&mut self, mnemonic: &'static str, prefix: &[u8], at: u64, target: u64, imm: u8) {
        let next = at + (self.bytes.len() + prefix.len() + 5) as u64;
        let mut b = prefix.to_vec();
        b.extend_from_slice(&rel32(next, target).to_le_bytes());
        b.push(imm);
        self.emit(mnemonic, &b);
    }

    /// A near conditional jump (`0f <opcode> rel32`), pointed later by
    /// [`Code::land32`]; returns where its rel32 is.
    pub(super) fn emit_jcc32(&mut self, mnemonic: &'static str, opcode: u8) -> usize {
        self.emit(mnemonic, &[0x0f, opcode, 0, 0, 0, 0]);
        self.bytes.len() - 4
    }

    /// A near `jmp rel32`, pointed later by [`Code::land32`].
    pub(super) fn emit_jmp32(&mut self) -> usize {
        self.emit("jmp", &[0xe9, 0, 0, 0, 0]);
        self.bytes.len() - 4
    }

    /// Points the near jump whose rel32 is at `at` to code offset `target`.
    pub(super) fn land32(&mut self, at: usize, target: usize) {
        let rel = target as i64 - (at + 4) as i64;
        self.bytes[at..at + 4].copy_from_slice(&(rel as i32).to_le_bytes());
    }

    /// A short conditional jump, patched later by [`Code::land`].
    fn emit_jcc(&mut self, mnemonic: &'static str, opcode: u8) -> usize {
        self.emit(mnemonic, &[opcode, 0]);
        self.bytes.len() - 1
    }

    /// Points the short jump whose rel8 is at `at` here.
    fn land(&mut self, at: usize) {
        let rel = self.bytes.len() - (at + 1);
        self.bytes[at] = u8::try_from(rel).expect("short jump within the body");
    }
}

/// The filter body at region offset [`at::BODY`]: called by every entry,
/// it preserves every register, reads the current task and CPU through
/// `%gs`, compares them with the filter data, and returns ZF=1 on a match.
pub fn body(p: BodyParams) -> Code {
    let base = at::BODY;
    let mut c = Code::default();
    let mut misses = Vec::new();
    c.emit("push", &[0x50]); // push %rax
    c.emit("push", &[0x51]); // push %rcx
    c.emit_d32("mov", &[0x65, 0x48, 0x8b, 0x04, 0x25], p.current_task); // mov %gs:d32,%rax
                                                                        // The task pointer: (current & mask) == want.
    c.emit("mov", &[0x48, 0x89, 0xc1]); // mov %rax,%rcx
    c.emit_rip("and", &[0x48, 0x23, 0x0d], base, at::TARGET_MASK);
    c.emit_rip("cmp", &[0x48, 0x3b, 0x0d], base, at::TARGET);
    misses.push(c.emit_jcc("jne", 0x75));
    // tgid.
    c.emit_d32("mov", &[0x8b, 0x88], p.tgid); // mov d32(%rax),%ecx
    c.emit_rip("and", &[0x23, 0x0d], base, at::TGID_MASK);
    c.emit_rip("cmp", &[0x3b, 0x0d], base, at::TGID);
    misses.push(c.emit_jcc("jne", 0x75));
    // comm, two quadwords.
    for half in 0..2 {
        c.emit_d32("mov", &[0x48, 0x8b, 0x88], p.comm + 8 * half as i32); // mov d32(%rax),%rcx
        c.emit_rip("and", &[0x48, 0x23, 0x0d], base, at::COMM_MASK + 8 * half);
        c.emit_rip("cmp", &[0x48, 0x3b, 0x0d], base, at::COMM_WANT + 8 * half);
        misses.push(c.emit_jcc("jne", 0x75));
    }
    // The CPU: its bit in the CPU mask.
    c.emit_d32("mov", &[0x65, 0x8b, 0x0c, 0x25], p.cpu_number); // mov %gs:d32,%ecx
    c.emit_rip("bt", &[0x0f, 0xa3, 0x0d], base, at::CPU_MASK); // bt %ecx,d32(%rip)
    misses.push(c.emit_jcc("jae", 0x73));
    c.emit("cmp", &[0x48, 0x39, 0xe4]); // cmp %rsp,%rsp: ZF=1
    c.emit("pop", &[0x59]);
    c.emit("pop", &[0x58]);
    c.emit("ret", &[0xc3]);
    for m in misses {
        c.land(m);
    }
    c.emit("test", &[0x48, 0x85, 0xe4]); // test %rsp,%rsp: ZF=0
    c.emit("pop", &[0x59]);
    c.emit("pop", &[0x58]);
    c.emit("ret", &[0xc3]);
    debug_assert!(c.bytes.len() <= at::BODY_MAX);
    c
}

/// Entry `slot`, which a patched site calls: run the body, return at once
/// on a miss, go to the slot's hit instruction on a match.
pub fn entry(region: &Region, slot: usize) -> Code {
    let here = region.entry(slot);
    let mut c = Code::default();
    let call = region.base + at::BODY as u64;
    c.emit_d32("call", &[0xe8], rel32(here + 5, call));
    c.emit("jne", &[0x75, 0x05]);
    c.emit_d32("jmp", &[0xe9], rel32(here + 12, region.hit(slot)));
    c.emit("ret", &[0xc3]);
    while c.bytes.len() < at::ENTRY_SIZE {
        c.bytes.push(0x90);
    }
    c
}

/// The hit instruction of a slot and the return after it: ktrace's
/// breakpoint sits on the `nop`; without one the pair just returns.
pub const HIT_STUB: [u8; 2] = [0x90, 0xc3];

/// The 5-byte `call` from a patched site at `site` to `target`.
pub fn call_from(site: u64, target: u64) -> [u8; 5] {
    let mut b = [0xe8, 0, 0, 0, 0];
    b[1..].copy_from_slice(&rel32(site + 5, target).to_le_bytes());
    b
}

/// The displacement from the end of an instruction to `target` (both in the
/// kernel's text, so within ±2 GiB).
fn rel32(next: u64, target: u64) -> i32 {
    target.wrapping_sub(next) as i64 as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> BodyParams {
        BodyParams { current_task: 0x1fbc0, cpu_number: 0x19160, tgid: 0x5c8, comm: 0x738 }
    }

    #[test]
    fn body_fits_and_its_listing_covers_every_byte() {
        let c = body(params());
        assert!(c.bytes.len() <= at::BODY_MAX, "{} bytes", c.bytes.len());
        let mut next = 0;
        for i in &c.listing {
            assert_eq!(i.offset, next);
            next += i.len;
        }
        assert_eq!(next, c.bytes.len());
        assert!(!c.bytes.contains(&0xcc) || params().comm & 0xff == 0xcc, "no int3 in the code");
        assert_eq!(&c.bytes[..11], &[0x50, 0x51, 0x65, 0x48, 0x8b, 0x04, 0x25, 0xc0, 0xfb, 0x01, 0x00]);
    }

    #[test]
    fn body_jumps_land_on_the_miss_path() {
        let c = body(params());
        let miss = c.listing.iter().find(|i| i.mnemonic == "test").expect("miss path").offset;
        for i in c.listing.iter().filter(|i| i.mnemonic == "jne" || i.mnemonic == "jae") {
            let rel = c.bytes[i.offset + 1] as usize;
            assert_eq!(i.offset + 2 + rel, miss);
        }
    }

    #[test]
    fn rip_relative_operands_reach_the_data() {
        let c = body(params());
        // and 0x..(%rip),%rcx right after `mov %rax,%rcx` reads TARGET_MASK.
        let and = &c.listing[4];
        assert_eq!(and.mnemonic, "and");
        let disp = i32::from_le_bytes(c.bytes[and.offset + 3..and.offset + 7].try_into().unwrap());
        let next = at::BODY + and.offset + and.len;
        assert_eq!((next as i64 + disp as i64) as usize, at::TARGET_MASK);
    }

    #[test]
    fn entries_call_the_body_and_jump_to_their_hit() {
        let region = Region { base: 0xffff_ffff_81a1_9040, hit_page: 0xffff_ffff_81a1_b000 };
        for slot in [0, 3] {
            let c = entry(&region, slot);
            assert_eq!(c.bytes.len(), at::ENTRY_SIZE);
            let here = region.entry(slot);
            let call = i32::from_le_bytes(c.bytes[1..5].try_into().unwrap());
            assert_eq!((here + 5).wrapping_add(call as i64 as u64), region.base + at::BODY as u64);
            assert_eq!(&c.bytes[5..7], &[0x75, 0x05], "a miss skips the jmp to the ret");
            let jmp = i32::from_le_bytes(c.bytes[8..12].try_into().unwrap());
            assert_eq!((here + 12).wrapping_add(jmp as i64 as u64), region.hit(slot));
            assert_eq!(c.bytes[12], 0xc3);
        }
        let site = 0xffff_ffff_816c_e920;
        let call = call_from(site, region.entry(0));
        assert_eq!(call[0], 0xe8);
        let rel = i32::from_le_bytes(call[1..].try_into().unwrap());
        assert_eq!((site + 5).wrapping_add(rel as i64 as u64), region.entry(0));
    }
}
