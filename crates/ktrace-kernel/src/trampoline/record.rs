//! Recording matches in the guest: the record routine the entries call on
//! a match, the per-CPU rings it writes, and the records as the host reads
//! them back.
//!
//! The routine runs in whatever context the traced function was called in
//! (interrupts off, NMI, any lock held), so it takes no lock, calls nothing
//! and touches only the current task, per-CPU data through `%gs`, its ring
//! and the stack it runs on:
//!
//! 1. it saves every register and the flags, then picks the ring of the
//!    CPU it runs on (`%gs:cpu_number`; none past the rings: nothing);
//! 2. it reserves a slot with `lock cmpxchg` on the ring's `head`, never
//!    passing `tail + slots`; a full ring counts a drop (`lock incq`);
//! 3. it fills the slot: the time stamp counter, the task, the return
//!    address into the traced function (which names it), the CPU, pid,
//!    tgid and comm, the 15 general registers, the flags, the stack
//!    pointer at the function's entry, and a copy of the stack from there
//!    up to the end of the task's stack (`task->stack + THREAD_SIZE`), at
//!    most the ring's `max_stack` bytes; on any other stack (IRQ,
//!    exception) it copies nothing rather than guess that stack's end;
//! 4. it writes the slot's commit word (`seq + 1`) last: x86 keeps stores
//!    in order, so a reader that sees it sees the slot.
//!
//! The host reads committed slots in order and moves `tail` on.
//!
//! ```text
//! ring:  +0 head  +8 tail  +16 drops  +24 slots  +32 (0)  +40 slot bytes  +48 max stack  +56 CPUs inside  (64 bytes)
//!        then `slots` slots of `slot bytes`
//! slot:  +0 commit  +8 tsc  +16 task  +24 return address  +32 cpu (u32)  +36 stack bytes (u32)
//!        +40 pid  +44 tgid  +48 comm[16]  +64 r15 … rax (15 × 8), rflags  +192 rsp at entry
//!        +256 the stack copy
//! ```

use super::code::Code;
pub use super::layout::{RECORD_CODE as CODE, RECORD_CODE_MAX as CODE_MAX, RECORD_DATA as DATA};

use super::layout::Region;

/// Where in the routine's data (on the hit page, which the guest only
/// reads) the host closes the rings: a CPU that finds a non-zero word there
/// records nothing.
pub const CLOSED: u64 = 32;
/// Where in each ring's header the CPUs inside the routine are counted
/// (`lock inc` once it has its ring, `lock dec` on the way out, before the
/// check of [`CLOSED`]): with the rings closed and every count zero, no
/// CPU is, or will be, writing to them, even one interrupted halfway. A
/// CPU interrupted before its increment finds the rings closed, and its
/// increment and decrement leave the word as it was.
pub const BUSY: u64 = 56;

/// The ring header's size.
pub const RING_HEADER: u64 = 64;
/// The slot header's size: the stack copy follows.
pub const SLOT_HEADER: u64 = 256;

/// What the record routine reads of the kernel: `%gs:` displacements and
/// `task_struct` offsets, and the size of a task's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordParams {
    /// `%gs:` displacement of the current-task pointer.
    pub current_task: i32,
    /// `%gs:` displacement of the CPU number.
    pub cpu_number: i32,
    /// `task_struct.pid`.
    pub pid: i32,
    /// `task_struct.tgid`.
    pub tgid: i32,
    /// `task_struct.comm`.
    pub comm: i32,
    /// `task_struct.stack` (the base of the task's stack).
    pub stack: i32,
    /// `THREAD_SIZE`: the task stack's size.
    pub thread_size: u32,
}

#[cfg(test)]
impl RecordParams {
    /// Constants of the shape a 6.1 kernel has, for tests.
    pub(crate) fn fixture() -> RecordParams {
        RecordParams {
            current_task: 0x1fbc0,
            cpu_number: 0x19160,
            pid: 0x5c0,
            tgid: 0x5c4,
            comm: 0x738,
            stack: 0x20,
            thread_size: 0x4000,
        }
    }
}

/// The rings in guest memory, as the record routine's data says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rings {
    /// The first ring's address in the kernel's direct map.
    pub base: u64,
    /// Bytes of one ring (header and slots).
    pub ring_bytes: u64,
    /// Rings (one per CPU, from CPU 0).
    pub count: u64,
    /// Slots per ring.
    pub slots: u64,
    /// Bytes per slot.
    pub slot_bytes: u64,
}

impl Rings {
    /// The largest layout in `len` bytes for `cpus` CPUs with stack copies
    /// of at most `max_stack` bytes; `None` when not even two slots a CPU fit.
    pub fn fit(base: u64, len: u64, cpus: u64, max_stack: u64) -> Option<Rings> {
        let slot_bytes = (SLOT_HEADER + max_stack).next_multiple_of(64);
        let per_cpu = len.checked_div(cpus)?;
        let fit = per_cpu.checked_sub(RING_HEADER)? / slot_bytes;
        if fit < 2 {
            return None;
        }
        // As many as fit: the routine divides (a `div` per record is
        // cheap next to the copy), so no slot is lost to a power of two.
        let slots = fit;
        Some(Rings { base, ring_bytes: RING_HEADER + slots * slot_bytes, count: cpus, slots, slot_bytes })
    }

    /// The most stack bytes a slot holds.
    pub fn max_stack(&self) -> u64 {
        self.slot_bytes - SLOT_HEADER
    }

    /// The address of CPU `cpu`'s ring.
    pub fn ring(&self, cpu: u64) -> u64 {
        self.base + cpu * self.ring_bytes
    }

    /// The address of slot `seq` of the ring at `ring`.
    pub fn slot(&self, ring: u64, seq: u64) -> u64 {
        ring + RING_HEADER + (seq % self.slots) * self.slot_bytes
    }

    /// An empty ring's header.
    pub fn empty_header(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(RING_HEADER as usize);
        for v in [0, 0, 0, self.slots, 0, self.slot_bytes, self.max_stack()] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(RING_HEADER as usize, 0);
        b
    }

    /// The record routine's data (at [`DATA`] on the hit page); with
    /// `no_drop`, a full ring calls [`full_stop`] (where the host holds a
    /// breakpoint and drains) and tries again, instead of counting a drop.
    pub fn data(&self, no_drop: bool) -> Vec<u8> {
        [self.base, self.ring_bytes, self.count, u64::from(no_drop), 0].iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// A ring's header as read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingState {
    /// Slots reserved so far.
    pub head: u64,
    /// Slots the host has read.
    pub tail: u64,
    /// Matches lost because the ring was full.
    pub drops: u64,
}

impl RingState {
    /// Decodes a ring header.
    pub fn decode(b: &[u8]) -> Option<RingState> {
        Some(RingState { head: le(b, 0)?, tail: le(b, 8)?, drops: le(b, 16)? })
    }
}

/// One recorded match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number in its ring.
    pub seq: u64,
    /// The CPU's time stamp counter.
    pub tsc: u64,
    /// The current task (`task_struct` address).
    pub task: u64,
    /// The return address into the traced function (its ftrace site + 5).
    pub return_address: u64,
    /// The CPU it ran on.
    pub cpu: u32,
    /// `task->pid`.
    pub pid: i32,
    /// `task->tgid`.
    pub tgid: i32,
    /// `task->comm`.
    pub comm: [u8; 16],
    /// The general registers at the call, by name as a debugger names them
    /// (`rsp` is the stack pointer at the traced function's entry).
    pub registers: Vec<(&'static str, u64)>,
    /// The stack from `rsp` on.
    pub stack: Vec<u8>,
}

/// The pushed registers, from the lowest address up.
const PUSHED: [&str; 16] =
    ["r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8", "rdi", "rsi", "rbp", "rbx", "rdx", "rcx", "rax", "eflags"];

impl Record {
    /// Decodes a slot; `None` unless it is committed as `seq`.
    pub fn decode(seq: u64, b: &[u8]) -> Option<Record> {
        if le(b, 0)? != seq + 1 {
            return None;
        }
        let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()));
        let stack_len = u32_at(36)? as usize;
        let mut registers: Vec<(&'static str, u64)> =
            PUSHED.iter().enumerate().map(|(i, &n)| Some((n, le(b, 64 + 8 * i)?))).collect::<Option<_>>()?;
        registers.push(("rsp", le(b, 192)?));
        Some(Record {
            seq,
            tsc: le(b, 8)?,
            task: le(b, 16)?,
            return_address: le(b, 24)?,
            cpu: u32_at(32)?,
            pid: u32_at(40)? as i32,
            tgid: u32_at(44)? as i32,
            comm: b.get(48..64)?.try_into().ok()?,
            registers,
            stack: b.get(SLOT_HEADER as usize..SLOT_HEADER as usize + stack_len)?.to_vec(),
        })
    }

    /// A register by name.
    pub fn register(&self, name: &str) -> Option<u64> {
        self.registers.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

fn le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The record routine at `hit_page + CODE`.
pub fn routine(region: &Region, p: RecordParams) -> Code {
    let at = region.hit_page + CODE;
    let data = |off: u64| region.hit_page + DATA + off;
    let mut c = Code::default();
    c.emit("pushf", &[0x9c]);
    for push in PUSH_ORDER {
        c.emit("push", push);
    }
    c.emit("cld", &[0xfc]);
    c.emit_d32("mov", &[0x65, 0x8b, 0x04, 0x25], p.cpu_number); // mov %gs:d32,%eax
    c.emit_abs("cmp", &[0x3b, 0x05], at, data(16)); // cmp count(%rip),%eax
    let no_ring = c.emit_jcc32("jae", 0x83);
    c.emit_abs("imul", &[0x48, 0x0f, 0xaf, 0x05], at, data(8)); // imul ring_bytes(%rip),%rax
    c.emit_abs("add", &[0x48, 0x03, 0x05], at, data(0)); // add base(%rip),%rax
    c.emit("mov", &[0x48, 0x89, 0xc3]); // mov %rax,%rbx: the ring
    c.emit("lock incq", &[0xf0, 0x48, 0xff, 0x43, BUSY as u8]); // lock incq busy(%rbx)
    c.emit_abs_imm8("cmpq", &[0x48, 0x83, 0x3d], at, data(CLOSED), 0); // cmpq $0,closed(%rip)
    let closed = c.emit_jcc32("jne", 0x85);
    let reserve = c.bytes.len();
    c.emit("mov", &[0x48, 0x8b, 0x03]); // mov (%rbx),%rax: head
    c.emit("mov", &[0x48, 0x89, 0xc1]); // mov %rax,%rcx
    c.emit("sub", &[0x48, 0x2b, 0x4b, 0x08]); // sub 8(%rbx),%rcx: head - tail
    c.emit("cmp", &[0x48, 0x3b, 0x4b, 0x18]); // cmp 24(%rbx),%rcx: slots
    let full = c.emit_jcc32("jae", 0x83);
    let reserve_again = reserve;
    c.emit("lea", &[0x48, 0x8d, 0x48, 0x01]); // lea 1(%rax),%rcx
    c.emit("lock cmpxchg", &[0xf0, 0x48, 0x0f, 0xb1, 0x0b]); // lock cmpxchg %rcx,(%rbx)
    let retry = c.emit_jcc32("jne", 0x85);
    c.land32(retry, reserve);
    c.emit("mov", &[0x49, 0x89, 0xc0]); // mov %rax,%r8: seq
    c.emit("xor", &[0x31, 0xd2]); // xor %edx,%edx
    c.emit("divq", &[0x48, 0xf7, 0x73, 0x18]); // divq 24(%rbx): seq % slots in %rdx
    c.emit("mov", &[0x48, 0x89, 0xd0]); // mov %rdx,%rax: slot index
    c.emit("imul", &[0x48, 0x0f, 0xaf, 0x43, 0x28]); // imul 40(%rbx),%rax
    c.emit("lea", &[0x4c, 0x8d, 0x4c, 0x03, 0x40]); // lea 64(%rbx,%rax),%r9: the slot
    c.emit("rdtsc", &[0x0f, 0x31]);
    c.emit("shl", &[0x48, 0xc1, 0xe2, 0x20]); // shl $32,%rdx
    c.emit("or", &[0x48, 0x09, 0xd0]); // or %rdx,%rax
    c.emit("mov", &[0x49, 0x89, 0x41, 0x08]); // mov %rax,8(%r9)
    c.emit_d32("mov", &[0x65, 0x48, 0x8b, 0x04, 0x25], p.current_task); // mov %gs:d32,%rax: task
    c.emit("mov", &[0x49, 0x89, 0x41, 0x10]); // mov %rax,16(%r9)
    c.emit_d32("mov", &[0x48, 0x8b, 0x8c, 0x24], 136); // mov 136(%rsp),%rcx: site + 5
    c.emit("mov", &[0x49, 0x89, 0x49, 0x18]); // mov %rcx,24(%r9)
    c.emit_d32("mov", &[0x65, 0x8b, 0x0c, 0x25], p.cpu_number); // mov %gs:d32,%ecx
    c.emit("mov", &[0x41, 0x89, 0x49, 0x20]); // mov %ecx,32(%r9)
    for (field, slot, wide) in
        [(p.pid, 0x28u8, false), (p.tgid, 0x2c, false), (p.comm, 0x30, true), (p.comm + 8, 0x38, true)]
    {
        match wide {
            false => {
                c.emit_d32("mov", &[0x8b, 0x88], field); // mov d32(%rax),%ecx
                c.emit("mov", &[0x41, 0x89, 0x49, slot]); // mov %ecx,slot(%r9)
            }
            true => {
                c.emit_d32("mov", &[0x48, 0x8b, 0x88], field); // mov d32(%rax),%rcx
                c.emit("mov", &[0x49, 0x89, 0x49, slot]); // mov %rcx,slot(%r9)
            }
        }
    }
    c.emit("lea", &[0x49, 0x8d, 0x79, 0x40]); // lea 64(%r9),%rdi
    c.emit("mov", &[0x48, 0x89, 0xe6]); // mov %rsp,%rsi
    c.emit_d32("mov", &[0xb9], 128); // mov $128,%ecx
    c.emit("rep movsb", &[0xf3, 0xa4]);
    c.emit_d32("lea", &[0x48, 0x8d, 0xb4, 0x24], 144); // lea 144(%rsp),%rsi: rsp at entry
    c.emit_d32("mov", &[0x49, 0x89, 0xb1], 192); // mov %rsi,192(%r9)
    c.emit_d32("mov", &[0x48, 0x8b, 0x88], p.stack); // mov d32(%rax),%rcx: task->stack
    c.emit("mov", &[0x48, 0x89, 0xf2]); // mov %rsi,%rdx
    c.emit("sub", &[0x48, 0x29, 0xca]); // sub %rcx,%rdx: depth into the stack
    c.emit_d32("cmp", &[0x48, 0x81, 0xfa], p.thread_size as i32); // cmp $THREAD_SIZE,%rdx
    let other_stack = c.emit_jcc32("jae", 0x83);
    c.emit_d32("mov", &[0xb9], p.thread_size as i32); // mov $THREAD_SIZE,%ecx
    c.emit("sub", &[0x48, 0x29, 0xd1]); // sub %rdx,%rcx: bytes to the stack's end
    c.emit("cmp", &[0x48, 0x3b, 0x4b, 0x30]); // cmp 48(%rbx),%rcx: max stack
    let fits = c.emit_jcc32("jbe", 0x86);
    c.emit("mov", &[0x48, 0x8b, 0x4b, 0x30]); // mov 48(%rbx),%rcx
    c.land32(fits, c.bytes.len());
    c.emit("mov", &[0x41, 0x89, 0x49, 0x24]); // mov %ecx,36(%r9)
    c.emit_d32("lea", &[0x49, 0x8d, 0xb9], SLOT_HEADER as i32); // lea 256(%r9),%rdi
    c.emit("rep movsb", &[0xf3, 0xa4]);
    let copied = c.emit_jmp32();
    c.land32(other_stack, c.bytes.len());
    c.emit_d32("movl", &[0x41, 0xc7, 0x41, 0x24], 0); // movl $0,36(%r9)
    c.land32(copied, c.bytes.len());
    c.emit("lea", &[0x49, 0x8d, 0x40, 0x01]); // lea 1(%r8),%rax
    c.emit("mov", &[0x49, 0x89, 0x01]); // mov %rax,(%r9): commit
    let done = c.emit_jmp32();
    c.land32(full, c.bytes.len());
    c.emit_abs_imm8("cmpq", &[0x48, 0x83, 0x3d], at, data(24), 0); // cmpq $0,no_drop(%rip)
    let drop = c.emit_jcc32("je", 0x84);
    let stop = c.bytes.len();
    c.emit("call", &[0xe8, 0, 0, 0, 0]);
    let again = c.emit_jmp32();
    c.land32(again, reserve_again);
    c.land32(drop, c.bytes.len());
    c.emit("lock incq", &[0xf0, 0x48, 0xff, 0x43, 0x10]); // lock incq 16(%rbx): a drop
    c.land32(done, c.bytes.len());
    c.land32(closed, c.bytes.len());
    c.emit("lock decq", &[0xf0, 0x48, 0xff, 0x4b, BUSY as u8]); // lock decq busy(%rbx)
    c.land32(no_ring, c.bytes.len());
    for pop in POP_ORDER {
        c.emit("pop", pop);
    }
    c.emit("popf", &[0x9d]);
    c.emit("ret", &[0xc3]);
    // The full-ring stop: `nop; ret`, called with everything saved.
    c.land32(stop + 1, c.bytes.len());
    c.emit("nop", &[0x90]);
    c.emit("ret", &[0xc3]);
    debug_assert!(c.bytes.len() as u64 <= CODE_MAX);
    c
}

/// Entry `slot` of a recording trampoline: run the body, return at once
/// on a miss, call the record routine on a match, then return.
pub fn entry(region: &Region, slot: usize) -> Code {
    let here = region.entry(slot);
    let mut c = Code::default();
    c.emit_abs("call", &[0xe8], here, region.base + super::layout::BODY as u64);
    c.emit("jne", &[0x75, 0x05]);
    c.emit_abs("call", &[0xe8], here, region.hit_page + CODE);
    c.emit("ret", &[0xc3]);
    while c.bytes.len() < super::layout::ENTRY_SIZE {
        c.bytes.push(0x90);
    }
    c
}

/// The offset in [`routine`]'s code of the `nop` a full ring calls with
/// `no_drop` (the host's breakpoint; `ret` follows).
pub fn full_stop(code: &Code) -> usize {
    code.listing.iter().rev().find(|i| i.mnemonic == "nop").map_or(0, |i| i.offset)
}

/// rax, rcx, rdx, rbx, rbp, rsi, rdi, r8–r15: so r15 ends lowest.
const PUSH_ORDER: [&[u8]; 15] = [
    &[0x50],
    &[0x51],
    &[0x52],
    &[0x53],
    &[0x55],
    &[0x56],
    &[0x57],
    &[0x41, 0x50],
    &[0x41, 0x51],
    &[0x41, 0x52],
    &[0x41, 0x53],
    &[0x41, 0x54],
    &[0x41, 0x55],
    &[0x41, 0x56],
    &[0x41, 0x57],
];
const POP_ORDER: [&[u8]; 15] = [
    &[0x41, 0x5f],
    &[0x41, 0x5e],
    &[0x41, 0x5d],
    &[0x41, 0x5c],
    &[0x41, 0x5b],
    &[0x41, 0x5a],
    &[0x41, 0x59],
    &[0x41, 0x58],
    &[0x5f],
    &[0x5e],
    &[0x5d],
    &[0x5b],
    &[0x5a],
    &[0x59],
    &[0x58],
];

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> RecordParams {
        RecordParams::fixture()
    }

    fn region() -> Region {
        Region { base: 0xffff_ffff_81a1_9040, hit_page: 0xffff_ffff_81a1_b000 }
    }

    #[test]
    fn the_routine_fits_and_its_listing_covers_every_byte() {
        let c = routine(&region(), params());
        assert!(c.bytes.len() as u64 <= CODE_MAX, "{} bytes", c.bytes.len());
        let mut next = 0;
        for i in &c.listing {
            assert_eq!(i.offset, next);
            next += i.len;
        }
        assert_eq!(next, c.bytes.len());
        let pushes = c.listing.iter().filter(|i| i.mnemonic.starts_with("push")).count();
        let pops = c.listing.iter().filter(|i| i.mnemonic.starts_with("pop")).count();
        assert_eq!((pushes, pops), (16, 16));
        assert_eq!(c.listing.last().map(|i| i.mnemonic), Some("ret"));
        // The full-ring stop is the `nop; ret` the `call` reaches.
        let stop = full_stop(&c);
        assert_eq!(&c.bytes[stop..], &[0x90, 0xc3]);
        let call = c.listing.iter().find(|i| i.mnemonic == "call").expect("the call to the stop");
        let rel = i32::from_le_bytes(c.bytes[call.offset + 1..call.offset + 5].try_into().unwrap());
        assert_eq!((call.offset + 5) as i64 + rel as i64, stop as i64);
        // The rip-relative operands: the closed word, then the no-drop word
        // (cmpq: disp32 at +3, an imm8 after it).
        let target = |i: &super::super::code::Insn| {
            let disp = i32::from_le_bytes(c.bytes[i.offset + 3..i.offset + 7].try_into().unwrap());
            (region().hit_page + CODE + (i.offset + i.len) as u64).wrapping_add(disp as i64 as u64)
        };
        let data = |off: u64| region().hit_page + DATA + off;
        let cmps: Vec<u64> = c.listing.iter().filter(|i| i.mnemonic == "cmpq").map(target).collect();
        assert_eq!(cmps, [data(CLOSED), data(24)]);
        // The count of CPUs inside, in the ring's header: up once the ring
        // is known, before the closed check; down on every way out that
        // had a ring, right before the pops.
        let at_busy = [0x43, BUSY as u8];
        let inc =
            c.listing.iter().position(|i| i.mnemonic == "lock incq" && c.bytes[i.offset + 3..i.offset + 5] == at_busy);
        let dec = c.listing.iter().position(|i| i.mnemonic == "lock decq").expect("the decrement");
        let inc = inc.expect("the increment");
        assert_eq!(c.listing[inc + 1].mnemonic, "cmpq", "the closed check follows the increment");
        assert_eq!(c.bytes[c.listing[dec].offset + 3..c.listing[dec].offset + 5], [0x4b, BUSY as u8]);
        assert_eq!(c.listing[dec + 1].mnemonic, "pop");
        let closed_jump = &c.listing[inc + 2];
        assert_eq!(closed_jump.mnemonic, "jne");
        let rel = i32::from_le_bytes(c.bytes[closed_jump.offset + 2..closed_jump.offset + 6].try_into().unwrap());
        assert_eq!((closed_jump.offset + closed_jump.len) as i64 + rel as i64, c.listing[dec].offset as i64);
    }

    #[test]
    fn rings_fit_and_slots_decode() {
        let r = Rings::fit(0xffff_8880_0001_0000, 544 << 10, 4, 4096).expect("fits");
        assert_eq!(r.slot_bytes, 4096 + 256);
        assert_eq!(r.slots, ((544 << 10) / 4 - 64) / (4096 + 256), "as many as fit: {r:?}");
        assert!(r.ring(3) + r.ring_bytes <= r.base + (544 << 10));
        assert!(Rings::fit(0, 8192, 4, 4096).is_none(), "not two slots a CPU");
        let mut slot = vec![0u8; 256 + 16];
        slot[0..8].copy_from_slice(&8u64.to_le_bytes());
        slot[16..24].copy_from_slice(&0xffff_8880_0410_0000u64.to_le_bytes());
        slot[32..36].copy_from_slice(&1u32.to_le_bytes());
        slot[36..40].copy_from_slice(&16u32.to_le_bytes());
        slot[40..44].copy_from_slice(&91i32.to_le_bytes());
        slot[48..56].copy_from_slice(b"testprog");
        slot[64 + 8 * 8..64 + 9 * 8].copy_from_slice(&0x1234u64.to_le_bytes()); // rdi
        slot[192..200].copy_from_slice(&0xffff_c900_0040_3f00u64.to_le_bytes());
        slot[256..].fill(0xab);
        assert_eq!(Record::decode(8, &slot), None, "committed as 7, not 8");
        let rec = Record::decode(7, &slot).expect("committed");
        assert_eq!((rec.cpu, rec.pid, &rec.comm[..8]), (1, 91, &b"testprog"[..]));
        assert_eq!(rec.register("rdi"), Some(0x1234));
        assert_eq!(rec.register("rsp"), Some(0xffff_c900_0040_3f00));
        assert_eq!(rec.stack, vec![0xab; 16]);
        let header = r.empty_header();
        assert_eq!(RingState::decode(&header), Some(RingState::default()));
        assert_eq!(u64::from_le_bytes(header[24..32].try_into().unwrap()), r.slots);
    }
}
