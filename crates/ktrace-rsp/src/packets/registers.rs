//! Register packets: `g`/`G` and `p`/`P`.

use super::{check_reply, from_hex, to_hex};
use crate::RspError;

/// `g`.
pub const READ_ALL: &[u8] = b"g";

/// Parse a `g` or `p` reply into raw target-order bytes. `x` digits
/// (unavailable registers) read as zero.
pub fn parse_registers(request: &str, reply: &[u8]) -> Result<Vec<u8>, RspError> {
    let r = check_reply(request, reply)?;
    let cleaned: Vec<u8> = r.iter().map(|&b| if b == b'x' { b'0' } else { b }).collect();
    from_hex(&cleaned).ok_or_else(|| RspError::unexpected(request, r))
}

/// `G hex`.
pub fn write_all_request(data: &[u8]) -> Vec<u8> {
    format!("G{}", to_hex(data)).into_bytes()
}

/// `p n`.
pub fn read_one_request(regnum: u32) -> Vec<u8> {
    format!("p{regnum:x}").into_bytes()
}

/// `P n=hex`.
pub fn write_one_request(regnum: u32, value: &[u8]) -> Vec<u8> {
    format!("P{regnum:x}={}", to_hex(value)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_register_reply() {
        assert_eq!(
            parse_registers("p", b"23d00381ffffffff").unwrap(),
            vec![0x23, 0xd0, 0x03, 0x81, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(parse_registers("p", b"xxxx").unwrap(), vec![0, 0]);
    }

    #[test]
    fn invalid_register_reply() {
        assert!(parse_registers("p", b"E0e").is_err());
        assert!(parse_registers("p", b"123").is_err());
    }

    #[test]
    fn register_requests_encoded() {
        assert_eq!(read_one_request(0x10), b"p10");
        assert_eq!(write_one_request(16, &[1, 2]), b"P10=0102");
        assert_eq!(write_all_request(&[0xab]), b"Gab");
    }
}
