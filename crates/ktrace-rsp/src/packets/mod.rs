//! Request encoders and reply parsers, one module per packet family.
//!
//! Common reply conventions: an empty reply means "unsupported"
//! ([`RspError::Unsupported`]), `E NN` is a stub error ([`RspError::Stub`]);
//! [`check_reply`] maps both.

pub mod breakpoint;
pub mod detach;
pub mod kill;
pub mod memory;
pub mod monitor;
pub mod qemu;
pub mod qsupported;
pub mod registers;
pub mod resume;
pub mod stop;
pub mod thread;
pub mod vcont;
pub mod xfer;

use crate::RspError;
use nom::IResult;

/// Map an empty reply to [`RspError::Unsupported`] and `E NN` / `E.msg` to a
/// stub error; return the reply otherwise.
pub fn check_reply<'a>(request: &str, reply: &'a [u8]) -> Result<&'a [u8], RspError> {
    if reply.is_empty() {
        return Err(RspError::Unsupported { request: request.to_string() });
    }
    if let Some(code) = parse_error(reply) {
        return Err(RspError::Stub { code, request: request.to_string() });
    }
    if let Some(msg) = reply.strip_prefix(b"E.") {
        return Err(RspError::StubMessage {
            message: String::from_utf8_lossy(msg).into_owned(),
            request: request.to_string(),
        });
    }
    Ok(reply)
}

/// `E NN` (exactly three bytes) → `Some(NN)`.
pub fn parse_error(reply: &[u8]) -> Option<u8> {
    match reply {
        [b'E', a, b] => Some(hex_digit(*a)? << 4 | hex_digit(*b)?),
        _ => None,
    }
}

/// Expect exactly `OK`.
pub fn expect_ok(request: &str, reply: &[u8]) -> Result<(), RspError> {
    match check_reply(request, reply)? {
        b"OK" => Ok(()),
        other => Err(RspError::unexpected(request, other)),
    }
}

pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Lower-case hex encoding.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decode a hex string (even length); `None` on any bad digit.
pub fn from_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2).map(|c| Some(hex_digit(c[0])? << 4 | hex_digit(c[1])?)).collect()
}

/// nom: a non-empty hex number (at most 16 digits).
pub(crate) fn hex_u64(i: &[u8]) -> IResult<&[u8], u64> {
    let (rest, digits) = nom::bytes::complete::take_while1(|c: u8| c.is_ascii_hexdigit())(i)?;
    if digits.len() > 16 {
        return Err(nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::TooLarge)));
    }
    let v = digits.iter().fold(0u64, |a, &d| (a << 4) | hex_digit(d).unwrap_or(0) as u64);
    Ok((rest, v))
}

/// nom: exactly two hex digits.
pub(crate) fn hex_byte(i: &[u8]) -> IResult<&[u8], u8> {
    let (rest, d) = nom::bytes::complete::take_while_m_n(2, 2, |c: u8| c.is_ascii_hexdigit())(i)?;
    Ok((rest, hex_digit(d[0]).unwrap_or(0) << 4 | hex_digit(d[1]).unwrap_or(0)))
}

/// Run a nom parser on the whole input.
pub(crate) fn parse_all<'a, T>(
    request: &str,
    input: &'a [u8],
    mut p: impl nom::Parser<&'a [u8], Output = T, Error = nom::error::Error<&'a [u8]>>,
) -> Result<T, RspError> {
    match p.parse(input) {
        Ok((b"", v)) => Ok(v),
        _ => Err(RspError::unexpected(request, input)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_reply_is_unsupported() {
        assert!(matches!(check_reply("x", b""), Err(RspError::Unsupported { .. })));
    }

    #[test]
    fn error_reply_is_typed() {
        assert!(matches!(check_reply("m", b"E14"), Err(RspError::Stub { code: 0x14, .. })));
        assert!(matches!(check_reply("m", b"E.bad"), Err(RspError::StubMessage { .. })));
        assert_eq!(check_reply("m", b"E1").unwrap(), b"E1");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(from_hex(to_hex(&[0, 0xff, 0x12]).as_bytes()).unwrap(), vec![0, 0xff, 0x12]);
        assert_eq!(from_hex(b"abc"), None);
        assert_eq!(from_hex(b"zz"), None);
    }

    #[test]
    fn hex_u64_limits() {
        assert_eq!(hex_u64(b"ffffffff8211ffe0,").unwrap().1, 0xffffffff8211ffe0);
        assert!(hex_u64(b"11111111111111111").is_err());
    }
}
