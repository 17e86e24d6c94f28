//! Instruction encodings ktrace reads or writes: the NOPs a function may
//! start with, calls, and the instructions of the return to user space
//! through `sysretq`.

/// ftrace's 5-byte NOP (`nopl 0x0(%rax,%rax,1)`), the patchable entry of
/// every traceable function.
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
/// `endbr64`, the indirect-branch landing pad of IBT kernels.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// `call rel32`'s opcode (5 bytes in all).
pub const CALL_REL32: u8 = 0xe8;
/// The opcode of `call r/m64` (`ff /2`: 2, 3, 6 or 7 bytes with its ModRM).
pub const CALL_INDIRECT: u8 = 0xff;
/// `int3`, also the linker's padding between functions.
pub const INT3: u8 = 0xcc;

/// Length of a run of instructions that do nothing (`endbr64`, ftrace's
/// NOP) at the start of `code`, if it starts with one.
pub fn nop_length(code: &[u8]) -> Option<u8> {
    let mut n = 0usize;
    loop {
        if code[n..].starts_with(&ENDBR64) {
            n += ENDBR64.len();
        } else if code[n..].starts_with(&NOP5) {
            n += NOP5.len();
        } else {
            break;
        }
    }
    (n > 0).then_some(n as u8)
}

/// True when the bytes before a return address (`code` ends at it) are a
/// call: `call rel32`, or `call r/m64` with a ModRM whose reg field is 2.
pub fn ends_with_call(code: &[u8]) -> bool {
    let before = |len: usize| code.len().checked_sub(len).map(|at| &code[at..]);
    let direct = before(5).is_some_and(|c| c[0] == CALL_REL32);
    let indirect =
        [2, 3, 6, 7].into_iter().any(|len| before(len).is_some_and(|c| c[0] == CALL_INDIRECT && (c[1] >> 3) & 7 == 2));
    direct || indirect
}

/// `sysretq` (REX.W `sysret`): back to user space at `rcx`, on the stack
/// the kernel left in `rsp`.
pub const SYSRETQ: [u8; 3] = [0x48, 0x0f, 0x07];
/// `swapgs`.
pub const SWAPGS: [u8; 3] = [0x0f, 0x01, 0xf8];
/// `pop %rsp`.
pub const POP_RSP: u8 = 0x5c;
/// `pop %rdi`.
pub const POP_RDI: u8 = 0x5f;
/// `jmp rel8`.
pub const JMP_REL8: u8 = 0xeb;
/// `jmp rel32`.
pub const JMP_REL32: u8 = 0xe9;

/// An instruction the kernel's return to user space through `sysretq`
/// may run after restoring the user's registers (see [`decode_sysret_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysretPath {
    /// `sysretq`.
    Sysretq,
    /// `swapgs`, a NOP, `verw` (buffer clearing) or `lfence`: nothing an
    /// unwind sees.
    NoEffect,
    /// `pop %rdi`.
    PopRdi,
    /// `pop %rsp`: the user stack pointer is the word at SP.
    PopRsp,
    /// `jmp` by this displacement (from the next instruction).
    Jmp(i64),
}

/// The length of a ModRM operand (ModRM byte, SIB, displacement) at the
/// start of `code`.
fn modrm_length(code: &[u8]) -> Option<usize> {
    let m = *code.first()?;
    let (md, rm) = (m >> 6, m & 7);
    if md == 3 {
        return Some(1);
    }
    let sib = rm == 4;
    let base5 = sib && code.get(1)? & 7 == 5;
    let disp = match md {
        0 if rm == 5 || base5 => 4,
        1 => 1,
        2 => 4,
        _ => 0,
    };
    Some(1 + usize::from(sib) + disp)
}

/// Decodes the instruction at the start of `code` when it is one the
/// return to user space through `sysretq` runs once the user's registers
/// are back: its kind and length. `None` for any other instruction.
pub fn decode_sysret_path(code: &[u8]) -> Option<(SysretPath, usize)> {
    if code.starts_with(&SYSRETQ) {
        return Some((SysretPath::Sysretq, 3));
    }
    if code.starts_with(&SWAPGS) || code.starts_with(&[0x0f, 0xae, 0xe8]) {
        return Some((SysretPath::NoEffect, 3)); // swapgs, lfence
    }
    match *code.first()? {
        POP_RSP => return Some((SysretPath::PopRsp, 1)),
        POP_RDI => return Some((SysretPath::PopRdi, 1)),
        0x90 => return Some((SysretPath::NoEffect, 1)),
        JMP_REL8 => return Some((SysretPath::Jmp(i64::from(*code.get(1)? as i8)), 2)),
        JMP_REL32 => {
            let rel = i32::from_le_bytes(code.get(1..5)?.try_into().ok()?);
            return Some((SysretPath::Jmp(i64::from(rel)), 5));
        }
        _ => {}
    }
    // Multi-byte NOPs (`0f 1f /0`, with 66/2e prefixes) and `verw` (`0f 00 /5`).
    let prefixes = code.iter().take(6).take_while(|b| matches!(b, 0x66 | 0x2e)).count();
    let rest = &code[prefixes..];
    let reg = |modrm: u8| (modrm >> 3) & 7;
    match rest {
        [0x0f, 0x1f, m, ..] if reg(*m) == 0 => Some((SysretPath::NoEffect, prefixes + 2 + modrm_length(&rest[2..])?)),
        [0x0f, 0x00, m, ..] if reg(*m) == 5 => Some((SysretPath::NoEffect, prefixes + 2 + modrm_length(&rest[2..])?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_nop_runs() {
        assert_eq!(nop_length(&[0x0f, 0x1f, 0x44, 0, 0, 0x55]), Some(5));
        assert_eq!(nop_length(&[0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f, 0x44, 0, 0, 0x55]), Some(9));
        assert_eq!(nop_length(&[0x55, 0x48]), None);
        assert_eq!(nop_length(&[0xe8, 0x8b, 0x31, 0x65, 0xff]), None, "an unpatched call __fentry__ is not a NOP");
        assert_eq!(nop_length(&[0x0f, 0x1f, 0x44, 0x00, 0x00, 0x65, 0xff]), Some(5));
    }

    #[test]
    fn valid_calls_before_a_return_address() {
        assert!(ends_with_call(&[0x90, 0xe8, 1, 2, 3, 4]));
        assert!(ends_with_call(&[0x90, 0xff, 0xd0])); // call *%rax
        assert!(ends_with_call(&[0x90, 0x41, 0xff, 0xd3])); // call *%r11 (REX, then ff d3)
        assert!(!ends_with_call(&[0x90, 0xff, 0xe0])); // jmp *%rax
        assert!(!ends_with_call(&[0x90, 0x90]));
    }

    #[test]
    fn the_return_to_user_space() {
        assert_eq!(decode_sysret_path(&[0x48, 0x0f, 0x07, 0xcc]), Some((SysretPath::Sysretq, 3)));
        assert_eq!(decode_sysret_path(&[0x0f, 0x01, 0xf8]), Some((SysretPath::NoEffect, 3)));
        assert_eq!(decode_sysret_path(&[0x5c]), Some((SysretPath::PopRsp, 1)));
        assert_eq!(decode_sysret_path(&[0xeb, 0x07]), Some((SysretPath::Jmp(7), 2)));
        assert_eq!(decode_sysret_path(&[0xe9, 0xfe, 0xff, 0xff, 0xff]), Some((SysretPath::Jmp(-2), 5)));
        // verw 0x0(%rip); nopl 0x0(%rax,%rax,1); 66 nopw
        assert_eq!(decode_sysret_path(&[0x0f, 0x00, 0x2d, 0, 0, 0, 0]), Some((SysretPath::NoEffect, 7)));
        assert_eq!(decode_sysret_path(&NOP5), Some((SysretPath::NoEffect, 5)));
        assert_eq!(decode_sysret_path(&[0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0]), Some((SysretPath::NoEffect, 9)));
        // mov %rsp,%gs:0x6014 (entry_SYSCALL_64's second instruction) is not on the path.
        assert_eq!(decode_sysret_path(&[0x65, 0x48, 0x89, 0x24, 0x25, 0x14, 0x60, 0, 0]), None);
        assert_eq!(decode_sysret_path(&[0x0f, 0x1f]), None);
    }
}
