//! Instruction encodings ktrace reads or writes: the NOPs a function may
//! start with, and calls.

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
}
