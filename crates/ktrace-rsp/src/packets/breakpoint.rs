//! `Z0`–`Z4` / `z0`–`z4`.

/// Breakpoint and watchpoint types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointKind {
    /// `Z0`: software breakpoint.
    Software,
    /// `Z1`: hardware breakpoint.
    Hardware,
    /// `Z2`: write watchpoint.
    WriteWatch,
    /// `Z3`: read watchpoint.
    ReadWatch,
    /// `Z4`: access watchpoint.
    AccessWatch,
}

impl BreakpointKind {
    fn num(self) -> u8 {
        match self {
            BreakpointKind::Software => 0,
            BreakpointKind::Hardware => 1,
            BreakpointKind::WriteWatch => 2,
            BreakpointKind::ReadWatch => 3,
            BreakpointKind::AccessWatch => 4,
        }
    }
}

/// `Z<t>,addr,kind` (insert). For x86 software breakpoints `len` is 1.
pub fn insert_request(kind: BreakpointKind, addr: u64, len: u32) -> Vec<u8> {
    format!("Z{},{addr:x},{len:x}", kind.num()).into_bytes()
}

/// `z<t>,addr,kind` (remove).
pub fn remove_request(kind: BreakpointKind, addr: u64, len: u32) -> Vec<u8> {
    format!("z{},{addr:x},{len:x}", kind.num()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakpoint_requests_encoded() {
        assert_eq!(insert_request(BreakpointKind::Software, 0xffffffff81a185a0, 1), b"Z0,ffffffff81a185a0,1");
        assert_eq!(remove_request(BreakpointKind::AccessWatch, 0x10, 8), b"z4,10,8");
        assert_eq!(insert_request(BreakpointKind::Hardware, 1, 1), b"Z1,1,1");
    }
}
