//! QEMU's own queries (`qqemu.*`, `Qqemu.*`): whether the stub can switch
//! `m`/`M` to guest physical addresses, and the switch.

use super::check_reply;
use crate::RspError;

/// `qqemu.Supported`: the QEMU-specific features (`sstepbits;sstep;PhyMemMode`).
pub const SUPPORTED: &[u8] = b"qqemu.Supported";
/// `qqemu.PhyMemMode`: `0` (virtual) or `1` (physical). QEMU keeps the mode
/// across connections, so a client reads it rather than assume it.
pub const PHYS_MODE_QUERY: &[u8] = b"qqemu.PhyMemMode";

/// `Qqemu.PhyMemMode:1` (physical) or `:0` (virtual, through the selected CPU's page tables).
pub fn phys_mode_request(physical: bool) -> Vec<u8> {
    format!("Qqemu.PhyMemMode:{}", u8::from(physical)).into_bytes()
}

/// True when a `qqemu.Supported` reply names `PhyMemMode`. An empty reply
/// (a stub that is not QEMU's) is no support, not an error.
pub fn parse_supports_phys_mode(reply: &[u8]) -> Result<bool, RspError> {
    if reply.is_empty() {
        return Ok(false);
    }
    let reply = check_reply("qqemu.Supported", reply)?;
    Ok(reply.split(|&b| b == b';').any(|f| f == b"PhyMemMode"))
}

/// The mode a `qqemu.PhyMemMode` reply names.
pub fn parse_phys_mode(reply: &[u8]) -> Result<bool, RspError> {
    match check_reply("qqemu.PhyMemMode", reply)? {
        b"0" => Ok(false),
        b"1" => Ok(true),
        other => Err(RspError::unexpected("qqemu.PhyMemMode", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_supported_names_phys_mode() {
        assert!(parse_supports_phys_mode(b"sstepbits;sstep;PhyMemMode").unwrap());
        assert!(!parse_supports_phys_mode(b"sstepbits;sstep").unwrap());
        assert!(!parse_supports_phys_mode(b"").unwrap());
    }

    #[test]
    fn valid_mode_request_and_reply() {
        assert_eq!(phys_mode_request(true), b"Qqemu.PhyMemMode:1");
        assert_eq!(phys_mode_request(false), b"Qqemu.PhyMemMode:0");
        assert!(parse_phys_mode(b"1").unwrap());
        assert!(!parse_phys_mode(b"0").unwrap());
    }

    #[test]
    fn invalid_mode_reply_is_an_error() {
        assert!(parse_phys_mode(b"2").is_err());
        assert!(parse_phys_mode(b"E01").is_err());
    }
}
