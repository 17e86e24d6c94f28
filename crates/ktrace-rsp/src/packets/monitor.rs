//! `qRcmd,hex`: monitor commands. Output arrives as `O<hex>` packets before
//! the final `OK` (or as a hex reply on its own).

use super::{check_reply, from_hex, to_hex};
use crate::RspError;

/// `qRcmd,<hex(cmd)>`.
pub fn rcmd_request(cmd: &str) -> Vec<u8> {
    format!("qRcmd,{}", to_hex(cmd.as_bytes())).into_bytes()
}

/// One reply packet to `qRcmd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcmdReply {
    /// `O<hex>`: output; more packets follow.
    Output(Vec<u8>),
    /// `OK`: done.
    Done,
    /// Hex output ending the command.
    FinalOutput(Vec<u8>),
}

/// Decode an `O<hex>` console-output packet (used by `qRcmd` and while the
/// target runs).
pub fn parse_console_output(p: &[u8]) -> Option<Vec<u8>> {
    match p {
        [b'O', rest @ ..] if !rest.is_empty() && p != b"OK" => from_hex(rest),
        _ => None,
    }
}

/// Parse one reply packet of `qRcmd`.
pub fn parse_rcmd_reply(reply: &[u8]) -> Result<RcmdReply, RspError> {
    let r = check_reply("qRcmd", reply)?;
    if r == b"OK" {
        return Ok(RcmdReply::Done);
    }
    if let Some(o) = parse_console_output(r) {
        return Ok(RcmdReply::Output(o));
    }
    from_hex(r).map(RcmdReply::FinalOutput).ok_or_else(|| RspError::unexpected("qRcmd", r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_rcmd_replies() {
        assert_eq!(rcmd_request("help"), b"qRcmd,68656c70");
        assert_eq!(parse_rcmd_reply(b"O6869").unwrap(), RcmdReply::Output(b"hi".to_vec()));
        assert_eq!(parse_rcmd_reply(b"OK").unwrap(), RcmdReply::Done);
        assert_eq!(parse_rcmd_reply(b"6869").unwrap(), RcmdReply::FinalOutput(b"hi".to_vec()));
    }

    #[test]
    fn invalid_rcmd_reply() {
        assert!(parse_rcmd_reply(b"Ozz").is_err());
        assert!(matches!(parse_rcmd_reply(b""), Err(RspError::Unsupported { .. })));
    }
}
