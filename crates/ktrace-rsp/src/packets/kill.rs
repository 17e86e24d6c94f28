//! `k`: kill the target (QEMU quits). There is normally no reply.

/// `k`.
pub const KILL: &[u8] = b"k";
