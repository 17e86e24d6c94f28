//! The trampoline's machine code (x86-64), assembled from a handful of
//! fixed instruction forms, with a listing of what was emitted (for tests
//! against a disassembler).
//!
//! Every byte of the filter body and of the entries is a function of the
//! kernel's layout and the region's address only: the filter's values are
//! data, so writing the trampoline again (a later attach) writes the very
//! same code, and a CPU that is inside it meanwhile runs on unharmed.

use super::layout::{self as at, Region, CONDITION_SIZE};

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

    /// A short jump back to code offset `target`.
    fn emit_jback(&mut self, mnemonic: &'static str, opcode: u8, target: usize) {
        let rel = target as i64 - (self.bytes.len() + 2) as i64;
        self.emit(mnemonic, &[opcode, i8::try_from(rel).expect("short jump within the body") as u8]);
    }

    /// A short conditional jump, patched later by [`Code::land`].
    fn emit_jcc(&mut self, mnemonic: &'static str, opcode: u8) -> usize {
        self.emit(mnemonic, &[opcode, 0]);
        self.bytes.len() - 1
    }

    /// Points the short jump whose rel8 is at `at` here.
    fn land(&mut self, at: usize) {
        let rel = self.bytes.len() - (at + 1);
        self.bytes[at] = i8::try_from(rel).expect("short jump within the body") as u8;
    }
}

/// The filter body at region offset [`at::BODY`]: called by every entry,
/// it preserves every register, reads the current task and CPU through
/// `%gs`, compares them with the filter data, calls [`conditions`] when
/// there are `--if` conditions, and returns ZF=1 on a match.
pub fn body(p: BodyParams, region: &Region) -> Code {
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
    // The `--if` conditions: none, a match; else their routine decides.
    c.emit_abs_imm8("cmpl", &[0x83, 0x3d], region.base + base as u64, region.hit_page + at::CONDITIONS, 0);
    let none = c.emit_jcc("je", 0x74);
    c.emit_abs("call", &[0xe8], region.base + base as u64, region.hit_page + at::CONDITIONS_CODE);
    misses.push(c.emit_jcc("jne", 0x75));
    c.land(none);
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

/// The routine at `hit_page + CONDITIONS_CODE` that evaluates the `--if`
/// conditions (see `condition`), called by the body with `%rax` the task
/// and `%rcx` saved above its return address; returns ZF=1 when all hold,
/// every register but `%rcx` and the flags preserved.
///
/// The argument registers go on the stack as an array, rdi at 0(%rsp) up
/// to r9 at 40(%rsp) (rcx from where the body saved it). Each condition:
/// the operand at offset(base), base %rsp or the task; `and` mask, `xor`
/// bias, `sub` lo; in range when at most span; `xor` invert; false ends
/// the loop with ZF=0. The pops keep the flags.
pub fn conditions(region: &Region) -> Code {
    let at = region.hit_page + at::CONDITIONS_CODE;
    let data = region.hit_page + at::CONDITIONS;
    let mut c = Code::default();
    c.emit("push", &[0x41, 0x51]); // push %r9
    c.emit("push", &[0x41, 0x50]); // push %r8
    c.emit("push", &[0xff, 0x74, 0x24, 0x18]); // push 24(%rsp): the body's saved %rcx
    c.emit("push", &[0x52]); // push %rdx
    c.emit("push", &[0x56]); // push %rsi
    c.emit("push", &[0x57]); // push %rdi
    c.emit_abs("lea", &[0x48, 0x8d, 0x15], at, data + 8); // lea first(%rip),%rdx
    c.emit_abs("mov", &[0x8b, 0x35], at, data); // mov count(%rip),%esi
    let each = c.bytes.len();
    c.emit("mov", &[0x48, 0x89, 0xe1]); // mov %rsp,%rcx
    c.emit("cmpb", &[0x80, 0x3a, 0x00]); // cmpb $0,(%rdx): the kind
    c.emit("cmovne", &[0x48, 0x0f, 0x45, 0xc8]); // cmovne %rax,%rcx: the task
    c.emit("add", &[0x48, 0x03, 0x4a, 0x08]); // add 8(%rdx),%rcx: the offset
    c.emit("mov", &[0x48, 0x8b, 0x09]); // mov (%rcx),%rcx
    c.emit("and", &[0x48, 0x23, 0x4a, 0x10]); // and 16(%rdx),%rcx: mask
    c.emit("xor", &[0x48, 0x33, 0x4a, 0x18]); // xor 24(%rdx),%rcx: bias
    c.emit("sub", &[0x48, 0x2b, 0x4a, 0x20]); // sub 32(%rdx),%rcx: lo
    c.emit("cmp", &[0x48, 0x3b, 0x4a, 0x28]); // cmp 40(%rdx),%rcx: span
    c.emit("seta", &[0x0f, 0x97, 0xc1]); // seta %cl: out of range
    c.emit("xor", &[0x32, 0x4a, 0x01]); // xor 1(%rdx),%cl: invert; ZF=0: false
    let failed = c.emit_jcc("jne", 0x75);
    c.emit("add", &[0x48, 0x83, 0xc2, CONDITION_SIZE as u8]); // add $48,%rdx
    c.emit("dec", &[0xff, 0xce]); // dec %esi: ZF=1 after the last
    c.emit_jback("jne", 0x75, each);
    c.land(failed);
    c.emit("pop", &[0x5f]); // pop %rdi
    c.emit("pop", &[0x5e]); // pop %rsi
    c.emit("pop", &[0x5a]); // pop %rdx
    c.emit("pop", &[0x59]); // pop %rcx
    c.emit("pop", &[0x41, 0x58]); // pop %r8
    c.emit("pop", &[0x41, 0x59]); // pop %r9
    c.emit("ret", &[0xc3]);
    debug_assert!(c.bytes.len() as u64 <= at::CONDITIONS_CODE_MAX);
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

    fn region() -> Region {
        Region { base: 0xffff_ffff_81a1_9040, hit_page: 0xffff_ffff_81a1_b000 }
    }

    fn covers_every_byte(c: &Code) {
        let mut next = 0;
        for i in &c.listing {
            assert_eq!(i.offset, next);
            next += i.len;
        }
        assert_eq!(next, c.bytes.len());
    }

    #[test]
    fn body_fits_and_its_listing_covers_every_byte() {
        let c = body(params(), &region());
        assert!(c.bytes.len() <= at::BODY_MAX, "{} bytes", c.bytes.len());
        covers_every_byte(&c);
        assert!(!c.bytes.contains(&0xcc) || params().comm & 0xff == 0xcc, "no int3 in the code");
        assert_eq!(&c.bytes[..11], &[0x50, 0x51, 0x65, 0x48, 0x8b, 0x04, 0x25, 0xc0, 0xfb, 0x01, 0x00]);
        let r = conditions(&region());
        assert!(r.bytes.len() as u64 <= at::CONDITIONS_CODE_MAX, "{} bytes", r.bytes.len());
        covers_every_byte(&r);
        assert_eq!(r.listing.last().map(|i| i.mnemonic), Some("ret"));
    }

    /// Where each short jump lands.
    fn targets(c: &Code) -> Vec<(&'static str, usize)> {
        c.listing
            .iter()
            .filter(|i| i.mnemonic.starts_with('j') && i.len == 2)
            .map(|i| (i.mnemonic, (i.offset + 2).wrapping_add_signed(c.bytes[i.offset + 1] as i8 as isize)))
            .collect()
    }

    /// The absolute target of the rip-relative disp32 at `disp_at` of `insn`.
    fn rip_target(c: &Code, at: u64, insn: &Insn, disp_at: usize) -> u64 {
        let d = i32::from_le_bytes(c.bytes[insn.offset + disp_at..insn.offset + disp_at + 4].try_into().unwrap());
        (at + (insn.offset + insn.len) as u64).wrapping_add(d as i64 as u64)
    }

    #[test]
    fn body_jumps_land_on_the_match_or_the_miss() {
        let c = body(params(), &region());
        let matched = c.listing.iter().filter(|i| i.mnemonic == "cmp").nth(4).expect("cmp %rsp,%rsp").offset;
        assert_eq!(&c.bytes[matched..matched + 3], &[0x48, 0x39, 0xe4]);
        let missed = c.listing.iter().find(|i| i.mnemonic == "test").expect("miss path").offset;
        let want = [("jne", missed), ("jne", missed), ("jne", missed), ("jne", missed), ("jae", missed)];
        let mut want = want.to_vec();
        want.extend([("je", matched), ("jne", missed)]);
        assert_eq!(targets(&c), want, "task, tgid, comm twice, CPU; no conditions; the conditions");
        // No conditions: the count on the hit page is 0; else their routine.
        let base = region().base + at::BODY as u64;
        let cmpl = c.listing.iter().find(|i| i.mnemonic == "cmpl").unwrap();
        assert_eq!(rip_target(&c, base, cmpl, 2), region().hit_page + at::CONDITIONS, "its imm8 after the disp32");
        assert_eq!(c.bytes[cmpl.offset + cmpl.len - 1], 0);
        let call = c.listing.iter().find(|i| i.mnemonic == "call").unwrap();
        assert_eq!(rip_target(&c, base, call, 1), region().hit_page + at::CONDITIONS_CODE);
    }

    #[test]
    fn the_conditions_routine_loops_over_the_conditions() {
        let r = conditions(&region());
        let at = region().hit_page + at::CONDITIONS_CODE;
        let each = r.listing[8].offset;
        assert_eq!(&r.bytes[each..each + 3], &[0x48, 0x89, 0xe1], "the loop starts at mov %rsp,%rcx");
        let pops = r.listing.iter().position(|i| i.mnemonic == "pop").unwrap();
        assert_eq!(targets(&r), vec![("jne", r.listing[pops].offset), ("jne", each)], "a false one ends it; the next");
        assert_eq!(&r.bytes[r.listing[2].offset..r.listing[2].offset + 4], &[0xff, 0x74, 0x24, 0x18]);
        assert_eq!(rip_target(&r, at, &r.listing[6], 3), region().hit_page + at::CONDITIONS + 8, "lea first");
        assert_eq!(rip_target(&r, at, &r.listing[7], 2), region().hit_page + at::CONDITIONS, "mov count");
        let pushes = r.listing.iter().filter(|i| i.mnemonic == "push").count();
        assert_eq!((pushes, r.listing.iter().filter(|i| i.mnemonic == "pop").count()), (6, 6));
    }

    /// objdump reads the code as the listing says: the same instruction
    /// boundaries and mnemonics (when objdump is installed).
    #[test]
    fn objdump_agrees_with_the_listings() {
        for c in [body(params(), &region()), conditions(&region())] {
            let path = std::env::temp_dir().join(format!("ktrace-code-{}.bin", std::process::id()));
            std::fs::write(&path, &c.bytes).unwrap();
            let out = std::process::Command::new("objdump")
                .args(["-D", "-b", "binary", "-m", "i386:x86-64"])
                .arg(&path)
                .output();
            let _ = std::fs::remove_file(&path);
            let Ok(out) = out else {
                eprintln!("skipping: no objdump");
                return;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let insns: Vec<(usize, String)> = text
                .lines()
                .filter_map(|l| {
                    let mut parts = l.split('\t');
                    let off = usize::from_str_radix(parts.next()?.trim().strip_suffix(':')?, 16).ok()?;
                    let _bytes = parts.next()?;
                    Some((off, parts.next()?.split_whitespace().next()?.to_string()))
                })
                .collect();
            assert_eq!(insns.len(), c.listing.len(), "{text}");
            for (i, (off, m)) in c.listing.iter().zip(&insns) {
                assert_eq!(i.offset, *off, "{text}");
                assert!(m.starts_with(i.mnemonic), "at {off:#x}: objdump's {m} is not {}:\n{text}", i.mnemonic);
            }
        }
    }

    #[test]
    fn rip_relative_operands_reach_the_data() {
        let c = body(params(), &region());
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
