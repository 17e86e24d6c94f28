//! `qXfer:features:read:annex:offset,length`.

use super::check_reply;
use crate::RspError;

/// `qXfer:features:read:<annex>:<off>,<len>`.
pub fn features_read_request(annex: &str, offset: usize, len: usize) -> Vec<u8> {
    format!("qXfer:features:read:{annex}:{offset:x},{len:x}").into_bytes()
}

/// A chunk of a `qXfer` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XferChunk {
    /// The data (un-escaped).
    pub data: Vec<u8>,
    /// `true` for `l` (last chunk), `false` for `m` (more follows).
    pub last: bool,
}

/// Parse a `qXfer` read reply: `m<data>` or `l<data>`.
pub fn parse_xfer_read(reply: &[u8]) -> Result<XferChunk, RspError> {
    let r = check_reply("qXfer", reply)?;
    match r.split_first() {
        Some((b'm', d)) => Ok(XferChunk { data: d.to_vec(), last: false }),
        Some((b'l', d)) => Ok(XferChunk { data: d.to_vec(), last: true }),
        _ => Err(RspError::unexpected("qXfer", r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_xfer_chunks() {
        assert_eq!(features_read_request("target.xml", 0, 0xffb), b"qXfer:features:read:target.xml:0,ffb");
        assert_eq!(parse_xfer_read(b"l<x/>").unwrap(), XferChunk { data: b"<x/>".to_vec(), last: true });
        assert!(!parse_xfer_read(b"m<").unwrap().last);
        assert!(parse_xfer_read(b"l").unwrap().data.is_empty());
    }

    #[test]
    fn invalid_xfer_reply() {
        assert!(parse_xfer_read(b"q").is_err());
        assert!(matches!(parse_xfer_read(b"E00"), Err(RspError::Stub { .. })));
    }
}
