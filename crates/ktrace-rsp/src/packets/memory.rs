//! Memory packets: `m`/`M` (hex) and `x`/`X` (binary).

use super::{check_reply, from_hex, to_hex};
use crate::RspError;

/// `m addr,len`.
pub fn read_request(addr: u64, len: usize) -> Vec<u8> {
    format!("m{addr:x},{len:x}").into_bytes()
}

/// Parse an `m` reply (hex bytes). A short read is returned as is.
pub fn parse_read(reply: &[u8]) -> Result<Vec<u8>, RspError> {
    let r = check_reply("m", reply)?;
    from_hex(r).ok_or_else(|| RspError::unexpected("m", r))
}

/// `M addr,len:hex`.
pub fn write_request(addr: u64, data: &[u8]) -> Vec<u8> {
    format!("M{addr:x},{:x}:{}", data.len(), to_hex(data)).into_bytes()
}

/// `x addr,len` (binary read; not offered by QEMU 7.2).
pub fn read_binary_request(addr: u64, len: usize) -> Vec<u8> {
    format!("x{addr:x},{len:x}").into_bytes()
}

/// Parse an `x` reply: newer stubs prefix the data with `b`; the payload is
/// already un-escaped by the decoder.
pub fn parse_read_binary(reply: &[u8]) -> Result<Vec<u8>, RspError> {
    let r = check_reply("x", reply)?;
    Ok(r.strip_prefix(b"b").unwrap_or(r).to_vec())
}

/// `X addr,len:binary` (escaping is done by the framing).
pub fn write_binary_request(addr: u64, data: &[u8]) -> Vec<u8> {
    let mut v = format!("X{addr:x},{:x}:", data.len()).into_bytes();
    v.extend_from_slice(data);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_memory_read() {
        assert_eq!(read_request(0xffffffff8211ffe0, 0x800), b"mffffffff8211ffe0,800");
        assert_eq!(parse_read(b"4c696e7578").unwrap(), b"Linux");
    }

    #[test]
    fn invalid_memory_read() {
        assert!(matches!(parse_read(b"E14"), Err(RspError::Stub { code: 0x14, .. })));
        assert!(parse_read(b"4c6").is_err());
        assert!(matches!(parse_read(b""), Err(RspError::Unsupported { .. })));
    }

    #[test]
    fn memory_writes_encoded() {
        assert_eq!(write_request(0x10, &[0xde, 0xad]), b"M10,2:dead");
        assert_eq!(write_binary_request(0x10, b"$"), b"X10,1:$");
        assert_eq!(parse_read_binary(b"babc").unwrap(), b"abc");
    }
}
